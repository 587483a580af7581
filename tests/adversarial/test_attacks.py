"""Attacks on the live path, through the function as the Functions host calls it.

An ordinary user (their own mailbox row, any query string) and a queue sender (any message body)
try to talk the guardrail out of its job or into doing theirs. After every message an invariant
is checked on the row itself: the guardrail never approves an address that is not the mailbox's
own, and every violation ends reverted. Each test prints what it tried and what held.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardrails.mailbox import GUARDRAIL_TAG
from guardrails.sandbox.environment import QueuedMessage
from guardrails.sandbox.messages import mailbox_message, to_body
from guardrails.settlement import Record
from tests.integration.conftest import Deployment, deploy, service_bus_message

POLICY = """\
version: 1
organization:
  id: {organization_id}
mode: {mode}
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
    restore_approval: true
exemptions:
  security_roles: [System Administrator]
notifications:
  enabled: true
  sender: guardrails@contoso.com
  extra_recipients: [secops@contoso.com]
"""
OWN = "adele@contoso.com"
CEO = "satya@contoso.com"
HELD: list[str] = []


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    yield from deploy("client_secret", tmp_path, monkeypatch, policy_text=POLICY)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if HELD:
        print("\nadversarial live path, what was tried and what held:")
        for line in HELD:
            print(f"  held: {line}")


def approved_only_if_own(target: Deployment) -> None:
    row = target.row()
    if row["emailrouteraccessapproval"] == 1:
        assert row["emailaddress"].lower() == OWN, row


def run_quietly(target: Deployment, message: QueuedMessage) -> None:
    """Run a message, then check the approval invariant on the row."""
    target.run(message)
    approved_only_if_own(target)


def test_a_user_sending_the_guardrails_tag_is_still_reverted(target: Deployment) -> None:
    dataverse = target.sandbox.dataverse
    target.sandbox.take()
    dataverse.update_mailbox_as(
        target.user_id, target.mailbox_id, {"incomingemaildeliverymethod": 3}, tag=GUARDRAIL_TAG
    )
    (message,) = target.sandbox.take()
    assert GUARDRAIL_TAG.encode() in message.body  # the tag reached the message
    target.run(message)
    assert target.row()["incomingemaildeliverymethod"] == 2
    HELD.append("PATCH ?tag=mailbox-guardrails by a user: reverted anyway")


@pytest.mark.parametrize("steps", [(CEO, "x@contoso.com"), (CEO, "x@contoso.com", "y@evil.com")])
def test_address_hijack_in_every_delivery_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: tuple[str, ...]
) -> None:
    orders = list(itertools.permutations(range(len(steps))))
    for order in orders:
        folder = tmp_path / "-".join(map(str, order))
        folder.mkdir()
        with pytest.MonkeyPatch.context() as patch:
            for target in deploy(
                "client_secret", tmp_path / "-".join(map(str, order)), patch, policy_text=POLICY
            ):
                messages = [target.user_change({"emailaddress": step}) for step in steps]
                for index in (*order, order[0]):  # every order, then one redelivery
                    run_quietly(target, messages[index])
                row = target.row()
                assert row["emailaddress"].lower() == OWN, (order, row)
                assert row["emailrouteraccessapproval"] == 1
                assert not any(
                    p.json.get("emailaddress", OWN).lower() != OWN
                    for p in target.patches()
                    if p.json and p.json.get("emailaddress")
                )
    HELD.append(
        f"{len(steps)}-step address change, {len(orders)} delivery orders + redelivery: "
        "ended on the owner's own address, never approved anything else"
    )


def forged(target: Deployment, **overrides: Any) -> QueuedMessage:
    """A message a queue sender built by hand for Adele's mailbox."""
    dataverse = target.sandbox.dataverse
    data = mailbox_message(
        message="Update",
        mailbox_id=target.mailbox_id,
        organization_id=dataverse.organization_id,
        user_id=target.user_id,
        changes=overrides.pop("changes", {"emailaddress": "x@contoso.com"}),
        before=overrides.pop(
            "before", {"emailaddress": CEO, "regardingobjectid": ("systemuser", target.admin_id)}
        ),
        row_version=dataverse.mailbox(target.mailbox_id)["versionnumber"],
    )
    data.update(overrides)
    body = to_body(data)
    write = target.sandbox.dataverse.writes[-1] if target.sandbox.dataverse.writes else None
    return QueuedMessage("forged", body, {}, write)  # type: ignore[arg-type]


def test_a_forged_pre_image_and_owner_cannot_choose_the_address_written(
    target: Deployment,
) -> None:
    run_quietly(target, forged(target))
    row = target.row()
    assert row["emailaddress"].lower() == OWN  # never the forged pre image's CEO address
    HELD.append("forged pre image (CEO's address) and forged regarding: wrote only the owner's own")


@pytest.mark.parametrize(
    "key", ["PrimaryEntityId", "InitiatingUserId", "OrganizationId", "CorrelationId"]
)
def test_forged_ids_reach_no_url(target: Deployment, key: str) -> None:
    hostile = f"{target.mailbox_id})/systemuserroles_association?$select=name&x=("
    message = forged(target, **{key: hostile})
    dataverse = target.sandbox.dataverse
    dataverse.clear_log()
    handled = target.run(message)
    assert isinstance(handled.action, Record) and "GUID" in handled.action.reason
    assert all("systemuserroles_association" not in r.target for r in dataverse.requests_log)
    assert all("$select=name&x" not in r.target for r in dataverse.requests_log)
    HELD.append(f"non-GUID {key}: rejected with a reason, no request carried it")


def test_a_forged_row_version_cannot_inject_a_header(target: Deployment) -> None:
    data = json.loads(forged(target).body)
    for pair in data["InputParameters"]:
        if pair["key"] == "Target":
            pair["value"]["RowVersion"] = "1\r\nX-Injected: yes"
    message = QueuedMessage("forged", json.dumps(data).encode(), {}, None)  # type: ignore[arg-type]
    handled = target.run(message)
    assert isinstance(handled.action, Record) and "RowVersion" in handled.action.reason
    assert all("x-injected" not in r.headers for r in target.sandbox.dataverse.requests_log)
    HELD.append("CR/LF in RowVersion: rejected, no request carried it")


def test_a_hostile_body_ends_with_an_audit_record(
    target: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.integration.conftest import audit_records

    caplog.set_level(logging.INFO, logger="guardrails.audit")
    bodies = (b"{" * 100_000, b'{"Depth": NaN}', b"\x00" * 10, b"x" * 600_000)
    for body in bodies:
        assert isinstance(target.run(service_bus_message(body)).action, Record)
    records = audit_records(caplog)
    assert len(records) == 4
    assert sorted(f.body for f in target.failures()) == sorted(bodies)  # kept for `dlq`
    assert all(record["outcome"] == "rejected" and record["reason"] for record in records)
    HELD.append("deep nesting, NaN, NUL bytes, 600 KB: each a rejection with an audit record")
