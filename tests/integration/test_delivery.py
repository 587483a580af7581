"""Delivery guarantees on the live path: a lost answer, a redelivery, a cold start.

Each test reproduces one way the previous worker lost or duplicated work, through the function
as the host calls it, against the sandbox (answers dropped after the server acted), Azurite and
the AMQP test broker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.outcomes import Done, NothingToDo
from tests.integration.conftest import (
    Deployment,
    deploy,
    load_function_app,
    service_bus_message,
)

RESTORING = """\
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
notifications:
  enabled: true
  sender: guardrails@contoso.com
"""


@pytest.fixture
def restoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    yield from deploy("client_secret", tmp_path, monkeypatch, policy_text=RESTORING)


def test_a_redelivery_after_success_writes_and_mails_nothing_again(
    secret_deployment: Deployment,
) -> None:
    deployment = secret_deployment
    message = deployment.user_change({"incomingemaildeliverymethod": 3})
    first = deployment.run(message)
    again = deployment.run(message)  # Service Bus delivers it once more (lock lost, say)
    assert isinstance(first.result, Done) and first.result.wrote
    # The record of the redelivery repeats what was done (wrote, notified) and says it was a
    # replay: nothing was done again.
    assert isinstance(again.result, Done) and again.result.replayed
    assert again.result.wrote and again.result.notified == first.result.notified
    assert any("Already handled" in note for note in again.result.decision.notes)
    assert len(deployment.patches()) == 1
    assert len(deployment.sandbox.graph.sent) == 1


def test_a_lost_patch_answer_is_recognised_as_the_guardrails_own_write(
    restoring: Deployment,
) -> None:
    """The PATCH commits and its answer is lost. A conditional write is never repeated blindly:
    the row is read, holds exactly what was written, by the guardrail, so it counts as written:
    the owner is told and approval restored."""
    deployment = restoring
    message = deployment.user_change({"emailaddress": "megan.ceo@contoso.com"})
    dataverse = deployment.sandbox.dataverse
    dataverse.inject(reset_after=True, method="PATCH")
    handled = deployment.run(message)
    assert isinstance(handled.result, Done)
    assert handled.result.wrote is True  # the audit says what happened
    address, approval = deployment.patches()
    assert address.status == 0 and address.handled_status == 200  # committed, answer lost
    assert approval.json == {"emailrouteraccessapproval": 1}
    row = deployment.row()
    assert row["emailaddress"] == "adele@contoso.com"
    assert row["emailrouteraccessapproval"] == 1
    (mail,) = deployment.sandbox.graph.sent
    assert mail.to == ["adele@contoso.com"]


def test_every_answer_lost_is_resolved_by_reading_the_row_not_by_writing_again(
    restoring: Deployment,
) -> None:
    """The PATCH commits, its answer is lost, and so is every read that would tell: the next
    try finds `writing` in the ledger, reads the row, sees the guardrail's own write, and goes
    on to the mail without a second PATCH."""
    deployment = restoring
    message = deployment.user_change({"incomingemaildeliverymethod": 3})
    dataverse = deployment.sandbox.dataverse
    dataverse.inject(reset_after=True, method="PATCH")
    dataverse.inject(reset_before=True, method="GET", path_contains="mailboxes(", times=4)
    handled = deployment.run(message)
    assert isinstance(handled.result, Done) and handled.result.wrote
    assert len(deployment.waits) == 1  # one in-process wait between the two tries
    committed = [p for p in deployment.patches() if p.handled_status in (200, 204)]
    assert len(committed) == 1  # written exactly once
    assert deployment.row()["incomingemaildeliverymethod"] == 2
    assert len(deployment.sandbox.graph.sent) == 1


def test_a_lost_send_answer_does_not_mail_twice(secret_deployment: Deployment) -> None:
    deployment = secret_deployment
    deployment.sandbox.graph.inject(reset_after=True, path_contains="/send")
    handled = deployment.run(deployment.user_change({"incomingemaildeliverymethod": 3}))
    assert isinstance(handled.result, Done)
    assert len(deployment.sandbox.graph.sent) == 1
    assert handled.result.notified == ("adele@contoso.com", "secops@contoso.com")


def test_a_lost_draft_answer_does_not_mail_twice(secret_deployment: Deployment) -> None:
    deployment = secret_deployment
    deployment.sandbox.graph.inject(reset_after=True, method="POST", path_contains="/messages")
    handled = deployment.run(deployment.user_change({"incomingemaildeliverymethod": 3}))
    assert isinstance(handled.result, Done)
    assert len(deployment.sandbox.graph.sent) == 1


def test_a_send_that_failed_midway_is_looked_up_before_sending_again(
    secret_deployment: Deployment,
) -> None:
    """The send went out but every answer was lost, so the attempt ends unsure; the next one
    finds the sent copy by its internetMessageId and does not send again."""
    deployment = secret_deployment
    graph = deployment.sandbox.graph
    graph.inject(reset_after=True, path_contains="/send", times=4)
    message = deployment.user_change({"incomingemaildeliverymethod": 3})
    deployment.run(message)
    again = deployment.run(message)
    assert isinstance(again.result, Done | NothingToDo)
    assert len(graph.sent) == 1


def test_eight_messages_at_a_cold_instance_fetch_one_token_and_one_whoami(
    secret_deployment: Deployment,
) -> None:
    deployment = secret_deployment
    sandbox = deployment.sandbox
    people = [sandbox.add_person(f"User {i}", f"user{i}@contoso.com") for i in range(8)]
    messages = []
    for user_id, mailbox_id in people:
        sandbox.take()
        sandbox.dataverse.update_mailbox_as(user_id, mailbox_id, {"actdeliverymethod": 0})
        messages.extend(sandbox.take())
    deployment.app = load_function_app()  # a cold instance: nothing cached yet
    tokens_before = sandbox.identity.token_requests
    sandbox.dataverse.clear_log()
    barrier = threading.Barrier(len(messages))

    def deliver(body: bytes, message_id: str) -> None:
        barrier.wait()
        deployment.app.mailbox_guardrail(service_bus_message(body, None, message_id))

    threads = [threading.Thread(target=deliver, args=(m.body, m.message_id)) for m in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sandbox.dataverse.count("GET", "WhoAmI") == 1
    # One token for Dataverse and one for Graph, however many messages arrived at once.
    assert sandbox.identity.token_requests - tokens_before == 2
    assert all(sandbox.dataverse.mailbox(m)["actdeliverymethod"] == 1 for _, m in people)


def test_an_unreachable_table_store_is_an_outage_like_any_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state's store down: nothing is written blind, the message is retried later."""
    from guardrails.settlement import Schedule
    from tests.azurite.plugin import free_port

    monkeypatch.setenv(
        "AzureWebJobsStorage",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"TableEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;",
    )
    for deployment in deploy("client_secret", tmp_path, monkeypatch):
        handled = deployment.run(deployment.user_change({"incomingemaildeliverymethod": 3}))
        assert isinstance(handled.action, Schedule)  # a copy for later; nothing burnt, nothing lost
        assert "Table Storage" in handled.action.reason
        assert deployment.patches() == []  # no write without the ledger's record of it
