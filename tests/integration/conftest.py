"""The deployed function against the loopback sandbox: real HTTPS, real MSAL, real settings."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from azure.functions.servicebus import ServiceBusMessage

from guardrails.sandbox.environment import Credential, QueuedMessage, Sandbox
from guardrails.state.records import Failure
from guardrails.worker import Handled, Worker
from tests.azurite.plugin import Azurite
from tests.broker import TestBroker

POLICY = """\
version: 1
organization:
  id: {organization_id}
  name: Contoso
mode: {mode}
scope: user_mailboxes
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
exemptions:
  security_roles: [System Administrator]
notifications:
  enabled: true
  sender: guardrails@contoso.com
  extra_recipients: [secops@contoso.com]
"""


@pytest.fixture(autouse=True)
def durable_state(azurite: Azurite, broker: TestBroker, monkeypatch: pytest.MonkeyPatch) -> str:
    """The function's state in Azurite, in tables of this test's own (as AzureWebJobsStorage),
    and its Service Bus connection (for scheduled retries) on the AMQP test broker."""
    prefix = azurite.unique_prefix()
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("GUARDRAILS_TABLE_PREFIX", prefix)
    monkeypatch.setenv("SERVICEBUS", broker.connection_string)
    return prefix


def service_bus_message(
    body: bytes, properties: Mapping[str, Any] | None = None, message_id: str | None = None
) -> ServiceBusMessage:
    return ServiceBusMessage(
        body=body,
        message_id=message_id or str(uuid.uuid4()),
        application_properties=dict(properties or {}),
        user_properties=dict(properties or {}),
        content_type="application/json",
        delivery_count=1,
    )


@dataclass
class Deployment:
    sandbox: Sandbox
    app: ModuleType
    user_id: str
    mailbox_id: str
    admin_id: str
    waits: list[float]

    def run(self, message: QueuedMessage | ServiceBusMessage) -> Handled:
        """The function as the host calls it; returns what the worker did (for assertions)."""
        if isinstance(message, QueuedMessage):
            message = service_bus_message(message.body, message.properties, message.message_id)
        worker = self.app.worker
        recorder = _Recorder(worker)
        self.app.worker = recorder
        try:
            self.app.mailbox_guardrail(message)
        finally:
            self.app.worker = worker
        return recorder.handled[0]

    def failures(self) -> list[Failure]:
        """What the guardrail recorded as never going to succeed (`guardrails dlq list`)."""
        return list(self.app.worker.state.failures.entries())

    def user_change(self, changes: Mapping[str, Any], *, by: str | None = None) -> QueuedMessage:
        """A person's change in Dataverse, and the one message its service endpoint posts."""
        self.sandbox.take()  # messages of earlier writes are not this test's business
        self.sandbox.dataverse.update_mailbox_as(by or self.user_id, self.mailbox_id, changes)
        (message,) = self.sandbox.take()
        return message

    def patches(self) -> list[Any]:
        return self.sandbox.dataverse.find_requests(method="PATCH")

    def row(self) -> dict[str, Any]:
        return self.sandbox.dataverse.mailbox(self.mailbox_id)


class _Recorder:
    """Stands in for function_app.worker during one call, keeping what the worker returned."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.handled: list[Handled] = []

    def handle(self, *args: Any, **kwargs: Any) -> Handled:
        result = self.worker.handle(*args, **kwargs)
        self.handled.append(result)
        return result


def load_function_app() -> ModuleType:
    """Import function_app.py afresh, as the Functions host does at start-up."""
    sys.modules.pop("function_app", None)
    return importlib.import_module("function_app")


def deploy(
    credential: Credential,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    mode: str = "enforce",
    echo_tag: bool = True,
    policy_text: str = POLICY,
) -> Iterator[Deployment]:
    """A sandbox organization and the function app configured for it, as the host loads it."""
    with Sandbox(credential=credential, echo_tag=echo_tag) as sandbox:
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            policy_text.format(organization_id=sandbox.dataverse.organization_id, mode=mode)
        )
        for key, value in sandbox.environment(policy).items():
            if key == "SERVICEBUS" and os.environ.get(key):
                continue  # the test broker's, set by `durable_state`
            monkeypatch.setenv(key, value)
        user_id, mailbox_id = sandbox.add_person("Adele Vance", "adele@contoso.com")
        admin_id, _ = sandbox.add_person(
            "Isaiah Langer", "isaiah@contoso.com", roles=("System Administrator",)
        )
        app = load_function_app()
        # In-process waits are recorded, not slept: the tests assert on them.
        waits: list[float] = []
        app.worker = dataclasses.replace(app.worker, sleep=waits.append)
        yield Deployment(sandbox, app, user_id, mailbox_id, admin_id, waits)


@pytest.fixture(params=["client_secret", "certificate", "managed_identity"])
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    yield from deploy(request.param, tmp_path, monkeypatch)


@pytest.fixture
def secret_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    yield from deploy("client_secret", tmp_path, monkeypatch)


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    records = []
    for record in caplog.records:
        if record.name == "guardrails.audit":
            records.append(json.loads(record.getMessage()))
    return records
