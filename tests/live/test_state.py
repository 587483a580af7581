"""The durable state over both stores: the ledger's recovery points, the outbox, the shared
throttle, accepted values, the audit trail and the failure log."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from guardrails.clients.tables import (
    EntityChanged,
    EntityExists,
    TableStore,
    storage_settings,
    table_store,
)
from guardrails.mailbox import Column
from guardrails.state import State
from guardrails.state.ledger import Ledger, Notice, Sending, Step, message_key
from guardrails.state.throttle import SharedThrottle
from guardrails.values import EntityReference
from tests.azurite.plugin import Azurite

MAILBOX = "5b1a3e3c-9a0e-4f43-8a4c-7f0a8f6c1d01"
PLAN = {"outcome": "violation", "reason": "Reverting", "patch": {"incomingemaildeliverymethod": 2}}


@pytest.fixture(params=["memory", "azurite"])
def store(request: pytest.FixtureRequest, table_prefix: str) -> Iterator[TableStore]:
    if request.param == "memory":
        yield TableStore.in_memory(prefix=table_prefix)
        return
    azurite: Azurite = request.getfixturevalue("azurite")
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "GUARDRAILS_TABLE_PREFIX": table_prefix,
    }
    built = table_store(storage_settings(env))
    yield built
    built.close()


@pytest.fixture
def state(store: TableStore) -> State:
    return State.over(store, limit=2, window=3600)


def notice(key: str) -> Notice:
    return Notice(
        key=key,
        state=Sending.PENDING,
        etag="",
        internet_message_id=f"<{key[:20]}@contoso.com>",
        sender="guardrails@contoso.com",
        to=("adele@contoso.com",),
        cc=("secops@contoso.com",),
        subject="changed back",
        html="<p>changed back</p>",
    )


def test_the_key_is_the_body(state: State) -> None:
    assert message_key(b"same") == message_key(b"same") != message_key(b"other")


def test_claim_is_first_writer_wins(state: State) -> None:
    ledger = state.ledger
    key = message_key(b"body")
    first = ledger.claim(key, holder="a", message_id="m1", mailbox_id=MAILBOX, plan=PLAN)
    assert first.step is Step.DECIDED and first.plan == PLAN
    with pytest.raises(EntityExists):
        ledger.claim(key, holder="b", message_id="m1", mailbox_id=MAILBOX, plan=PLAN)
    again = ledger.get(key)
    assert again is not None and again.holder == "a"
    assert ledger.lease_left(again, holder="b") > 0
    assert ledger.lease_left(again, holder="a") == 0


def test_recovery_points_and_the_outbox_commit_together(state: State) -> None:
    ledger = state.ledger
    key = message_key(b"revert")
    progress = ledger.claim(key, holder="a", message_id="m", mailbox_id=MAILBOX, plan=PLAN)
    progress = ledger.writing(progress, etag='W/"7"')
    assert progress.step is Step.WRITING and progress.write_etag == 'W/"7"'
    progress, owed = ledger.written(
        progress, wrote=True, version="8", plan=PLAN, notice=notice(key)
    )
    assert progress.step is Step.WRITTEN and progress.wrote and progress.written_version == "8"
    assert owed is not None and owed.state is Sending.PENDING
    stored = ledger.notice(key)
    assert (
        stored is not None and stored.to == ("adele@contoso.com",) and stored.html.startswith("<p>")
    )
    progress = ledger.approval(progress, outcome="restored")
    progress = ledger.done(progress, notified=("adele@contoso.com",), errors=())
    final = ledger.get(key)
    assert final is not None
    assert (final.step, final.wrote, final.approval, final.notified) == (
        Step.DONE,
        True,
        "restored",
        ("adele@contoso.com",),
    )


def test_a_stale_transition_loses(state: State) -> None:
    ledger = state.ledger
    key = message_key(b"race")
    progress = ledger.claim(key, holder="a", message_id="m", mailbox_id=MAILBOX, plan=PLAN)
    ledger.take_over(progress, holder="b")  # someone else moved it on
    with pytest.raises(EntityChanged):
        ledger.writing(progress, etag='W/"1"')


def test_written_without_outbox_when_nobody_is_told(state: State) -> None:
    ledger = state.ledger
    key = message_key(b"quiet")
    progress = ledger.claim(key, holder="a", message_id=None, mailbox_id=MAILBOX, plan=PLAN)
    progress, owed = ledger.written(progress, wrote=True, version="2", plan=PLAN, notice=None)
    assert owed is None and ledger.notice(key) is None


def test_only_one_attempt_claims_the_send(state: State) -> None:
    ledger = state.ledger
    key = message_key(b"send")
    progress = ledger.claim(key, holder="a", message_id=None, mailbox_id=MAILBOX, plan=PLAN)
    _, owed = ledger.written(progress, wrote=True, version="2", plan=PLAN, notice=notice(key))
    assert owed is not None
    mine = ledger.sending(owed)
    with pytest.raises(EntityChanged):
        ledger.sending(owed)  # the same pending row, seen by a second attempt
    assert ledger.sent(mine).state is Sending.SENT
    stored = ledger.notice(key)
    assert stored is not None and stored.state is Sending.SENT


def test_the_throttle_is_shared_by_every_instance(store: TableStore) -> None:
    table = store.table("Throttle")
    now = [1_000.0]
    instances = [SharedThrottle(table, limit=3, window=60, clock=lambda: now[0]) for _ in range(4)]
    admitted: list[bool] = []
    lock = threading.Lock()

    def ask(throttle: SharedThrottle) -> None:
        result = throttle.allow(MAILBOX)
        with lock:
            admitted.append(result)

    threads = [threading.Thread(target=ask, args=(t,)) for t in instances * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted.count(True) == 3  # exactly the limit, across instances and races
    now[0] += 61
    assert instances[0].allow(MAILBOX) is True  # the window moved on


def test_accepted_values_merge_per_column(state: State) -> None:
    accepted = state.accepted
    assert accepted.get(MAILBOX) == {}
    accepted.record(MAILBOX, {Column.INCOMING: 3}, by="admin", reason="exempt role")
    profile = EntityReference("emailserverprofile", "44ee44ee-ff55-aa66-bb77-88cc88cc88cc")
    accepted.record(MAILBOX, {Column.SERVER_PROFILE: profile}, by="guardrail", reason="reverted")
    values = accepted.get(MAILBOX)
    assert values[Column.INCOMING].value == 3 and values[Column.INCOMING].by == "admin"
    assert values[Column.SERVER_PROFILE].value == profile


def test_audit_trail_reads_back_by_time_mailbox_and_outcome(state: State) -> None:
    audit = state.audit
    long_ago = datetime.now(UTC) - timedelta(days=3)
    audit.append({"message_id": "old", "mailbox_id": MAILBOX, "outcome": "violation"}, at=long_ago)
    audit.append(
        {"message_id": "new", "mailbox_id": MAILBOX, "outcome": "violation", "wrote": True}
    )
    audit.append({"message_id": "other", "mailbox_id": "x", "outcome": "compliant"})
    recent = list(audit.query(since=datetime.now(UTC) - timedelta(hours=1)))
    assert {r["message_id"] for r in recent} == {"new", "other"}
    by_mailbox = list(audit.query(since=long_ago - timedelta(seconds=1), mailbox_id=MAILBOX))
    assert [r["message_id"] for r in by_mailbox] == ["old", "new"]
    assert [r["message_id"] for r in audit.query(outcome="compliant")] == ["other"]
    assert all(r["decided_at"].endswith("Z") for r in recent)


def test_failures_keep_the_body_byte_for_byte(state: State) -> None:
    failures = state.failures
    body = bytes(range(256)) * 1500  # 384 KB of every byte value, over several chunks
    key = message_key(body)
    failures.record(
        key,
        body,
        message_id="m-1",
        reason="not JSON",
        code="permanent",
        properties={"attempt": 3},
        attempt=3,
    )
    failures.record(  # the same body again: one entry, the latest reason
        key,
        body,
        message_id="m-1",
        reason="still not JSON",
        code="permanent",
        properties={},
        attempt=4,
    )
    (entry,) = list(failures.entries())
    assert entry.body == body and entry.reason == "still not JSON" and entry.attempts == 4
    assert failures.find("m-1") == [entry]
    assert failures.find(key) == [entry]
    failures.remove(key)
    assert list(failures.entries()) == []


def test_a_ledger_over_a_closed_port_is_a_transient_failure() -> None:
    from guardrails.clients.tables import StoreUnavailable
    from tests.azurite.plugin import free_port

    port = free_port()
    env = {
        "AzureWebJobsStorage": (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
    }
    ledger = Ledger(table_store(storage_settings(env)).table("Ledger"))
    with pytest.raises(StoreUnavailable) as caught:
        ledger.get(message_key(b"x"))
    assert caught.value.retryable


def test_a_compliant_change_never_touches_the_ledger() -> None:
    """Only violations are claimed, so a compliant change needs no ledger read (the hot path)."""
    from guardrails.clients.dataverse import DataverseClient
    from guardrails.clients.http import new_session
    from guardrails.clients.tables import MemoryTable, StoreRejected
    from guardrails.executor import Executor
    from guardrails.outcomes import NothingToDo
    from guardrails.sandbox.messages import mailbox_message, to_body
    from tests.core.conftest import ORG, make_policy

    class NoLedger(MemoryTable):
        def get(self, partition_key: str, row_key: str) -> None:  # type: ignore[override]
            raise StoreRejected("the ledger was read", table=self.name)

    class NoTokens:
        def token(self, scope: str, *, force_refresh: bool = False) -> str:
            raise AssertionError("a compliant change asked for a token")

    store = TableStore(
        lambda name: NoLedger(name) if name.endswith("Ledger") else MemoryTable(name)
    )
    records: list[dict[str, object]] = []
    executor = Executor(
        policy=make_policy(),
        dataverse=DataverseClient(
            "https://dataverse.invalid", tokens=NoTokens(), session=new_session()
        ),
        mailer=None,
        audit=records.append,
        state=State.over(store, limit=3, window=3600),
    )
    body = to_body(
        mailbox_message(
            message="Update",
            mailbox_id=MAILBOX,
            organization_id=ORG,
            user_id="11bb11bb-cc22-dd33-ee44-55ff55ff55ff",
            changes={"incomingemaildeliverymethod": 2},
            before={"incomingemaildeliverymethod": 3, "regardingobjectid": ("systemuser", MAILBOX)},
        )
    )
    result = executor.process(body)
    assert isinstance(result, NothingToDo) and result.decision is not None
    assert result.decision.outcome.value == "compliant"
    assert [r["outcome"] for r in records] == ["compliant"]  # still audited
