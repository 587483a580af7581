"""`guardrails dlq` and `guardrails audit` against Azurite and the AMQP test broker (real SDKs)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from guardrails.cli import main
from guardrails.clients.tables import storage_settings, table_store
from guardrails.state import State
from guardrails.state.ledger import message_key
from tests.azurite.plugin import Azurite
from tests.broker import TestBroker

QUEUE = "admin-events"


@pytest.fixture
def state(azurite: Azurite, broker: TestBroker, monkeypatch: pytest.MonkeyPatch) -> State:
    prefix = azurite.unique_prefix()
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "GUARDRAILS_TABLE_PREFIX": prefix,
        "SERVICEBUS": broker.connection_string,
        "SERVICEBUS_QUEUE": QUEUE,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    broker.declare_queue(QUEUE, max_delivery_count=1)
    return State.over(table_store(storage_settings(env)), limit=3, window=3600)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dead_letter_one(broker: TestBroker, body: bytes, message_id: str) -> None:
    """A message Service Bus dead-letters itself (max delivery count 1, one abandon)."""
    from azure.servicebus import ServiceBusClient

    broker.publish(QUEUE, body, message_id=message_id, application_properties={"attempt": 3})
    with (
        ServiceBusClient.from_connection_string(broker.connection_string) as client,
        client.get_queue_receiver(QUEUE, max_wait_time=2) as receiver,
    ):
        (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        receiver.abandon_message(message)
    assert [m.message_id for m in broker.dead_letters(QUEUE)] == [message_id]


def test_dlq_lists_both_sources_then_resubmits_and_purges(
    state: State, broker: TestBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = b'{"not": "a context"}'
    state.failures.record(
        message_key(recorded),
        recorded,
        message_id="mine-1",
        reason="The body is a JSON object without MessageName",
        code="permanent",
        properties={"attempt": 2},
        attempt=2,
    )
    dead_letter_one(broker, b"dead body", "sb-1")

    code, out, _ = run(capsys, "dlq", "list", "--format", "json")
    assert code == 0
    entries = {e["message_id"]: e for e in json.loads(out)}
    assert set(entries) == {"mine-1", "sb-1"}
    assert entries["mine-1"]["source"] == "guardrail"
    assert "MessageName" in entries["mine-1"]["description"]
    assert entries["sb-1"]["source"] == "servicebus"
    assert entries["sb-1"]["reason"] == "MaxDeliveryCountExceeded"

    code, out, _ = run(capsys, "dlq", "show", "mine-1")
    assert code == 0 and json.loads(out)[0]["body"] == recorded.decode()

    code, out, _ = run(capsys, "dlq", "resubmit", "mine-1")
    assert code == 0 and "resubmitted mine-1" in out
    (back,) = broker.messages(QUEUE)
    assert back.body == recorded and "attempt" not in back.application_properties
    code, out, _ = run(capsys, "dlq", "list", "--format", "json")
    assert [e["message_id"] for e in json.loads(out)] == ["sb-1"]

    code, out, _ = run(capsys, "dlq", "resubmit", "--all")
    assert code == 0 and "resubmitted sb-1" in out
    assert sorted(m.message_id or "" for m in broker.messages(QUEUE)) == ["mine-1", "sb-1"]
    assert broker.dead_letters(QUEUE) == []

    state.failures.record(
        "k", b"x", message_id="m", reason="r", code="permanent", properties={}, attempt=1
    )
    code, out, _ = run(capsys, "dlq", "purge", "--yes")
    assert code == 0 and "removed 1" in out
    code, out, _ = run(capsys, "dlq", "list")
    assert "Nothing failed" in out


def test_resubmitting_an_unknown_id_says_so(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "dlq", "resubmit", "nope")
    assert code == 1 and "nothing to resubmit" in err


def test_audit_reads_the_trail_back_filtered(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    old = datetime.now(UTC) - timedelta(days=2)
    state.audit.append(
        {"message_id": "a", "mailbox_id": "m1", "outcome": "violation", "wrote": True}, at=old
    )
    state.audit.append({"message_id": "b", "mailbox_id": "m1", "outcome": "compliant"})
    state.audit.append(
        {"message_id": "c", "mailbox_id": "m2", "outcome": "violation", "reason": "=cmd|x"}
    )
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out, _ = run(capsys, "audit", "--since", since, "--format", "json")
    assert code == 0
    assert {r["message_id"] for r in json.loads(out)} == {"b", "c"}
    code, out, _ = run(
        capsys, "audit", "--since", old.isoformat(), "--mailbox", "m1", "--format", "json"
    )
    assert [r["message_id"] for r in json.loads(out)] == ["a", "b"]
    assert json.loads(out)[0]["wrote"] is True
    code, out, _ = run(
        capsys, "audit", "--outcome", "violation", "--format", "csv", "--since", since
    )
    lines = out.splitlines()
    assert lines[0].startswith("decided_at,message_id")
    assert "'=cmd|x" in lines[1]  # defused: a spreadsheet would run it
