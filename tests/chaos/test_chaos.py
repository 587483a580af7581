"""Chaos: thousands of violating changes through the real worker with faults at every edge.

What runs is what production runs: `build_worker` with the MSAL token provider, the Dataverse and
Graph clients over HTTPS (the sandbox), the ledger in Azurite (the real azure-data-tables SDK),
and Service Bus through the real azure-servicebus SDK against the AMQP test broker, with a
Functions-host stand-in that settles like `autoCompleteMessages` (return: complete, raise:
abandon; the broker redelivers and dead-letters past maxDeliveryCount).

Faults: the sandbox's seeded chaos on Dataverse, Graph and the token endpoint (429 with
Retry-After up to four minutes, 500/503, connection resets before and after the server acted,
answers slower than the client's timeout before and after acting), the table store failing
before and after acting, exempt administrators writing the same row during the guardrail's
revert (412 races, same value and other columns), and the worker process crashing between any
two steps (a fresh, cold worker takes over; the message is redelivered).

Time is the broker's clock: waits and back-off move it on, so hours of retries take seconds.
At the end the test prints the table from the delivery issue for itself; every row must be 0.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from azure.data.tables import TableServiceClient
from azure.functions.servicebus import ServiceBusMessage as FunctionsMessage

from guardrails.clients.servicebus import QueueClient, servicebus_settings
from guardrails.clients.tables import (
    AzureTable,
    Entity,
    FilterValue,
    Operation,
    StoreUnavailable,
    Table,
    TableStore,
    UpdateMode,
)
from guardrails.sandbox.dataverse import PendingWrite
from guardrails.sandbox.environment import Sandbox, patched_environ
from guardrails.settings import load_settings
from guardrails.worker import Worker, build_worker
from tests.azurite.plugin import Azurite
from tests.broker import FunctionsHost, TestBroker

MESSAGES = int(os.environ.get("GUARDRAILS_CHAOS_MESSAGES", "2000"))
SEED = int(os.environ.get("GUARDRAILS_CHAOS_SEED", "20261130"))
QUEUE = "chaos-mailbox-events"
CEO = "satya@contoso.com"
HTTP_FAULT_RATE = 0.08
STORE_FAULT_RATE = 0.02
CRASH_RATE = 0.004
ADMIN_RACE_RATE = 0.02
POLICY = """\
version: 1
organization:
  id: {organization_id}
mode: enforce
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
  throttle:
    max_per_mailbox: 100
    window: 1h
"""
T = TypeVar("T")


class Crash(BaseException):
    """The worker process dies here: nothing after this line of the invocation runs."""


class FaultyTable:
    """A real table whose answers sometimes fail, or are lost after the write happened, and
    where the process sometimes dies just before or just after an operation."""

    def __init__(self, inner: Table, chaos: Chaos) -> None:
        self._inner = inner
        self._chaos = chaos

    @property
    def name(self) -> str:
        return self._inner.name

    def _call(self, operation: Callable[[], T]) -> T:
        fault = self._chaos.store_fault()
        if fault in ("crash_before",):
            raise Crash(fault)
        if fault == "store_before":
            raise StoreUnavailable("injected: unavailable", table=self.name)
        result = operation()
        if fault == "store_after":
            raise StoreUnavailable("injected: the answer was lost", table=self.name)
        if fault == "crash_after":
            raise Crash(fault)
        return result

    def create(self, entity: Entity) -> str:
        return self._call(lambda: self._inner.create(entity))

    def get(self, partition_key: str, row_key: str) -> Entity | None:
        return self._call(lambda: self._inner.get(partition_key, row_key))

    def update(self, entity: Entity, *, etag: str, mode: UpdateMode = UpdateMode.MERGE) -> str:
        return self._call(lambda: self._inner.update(entity, etag=etag, mode=mode))

    def upsert(self, entity: Entity, *, mode: UpdateMode = UpdateMode.MERGE) -> str:
        return self._call(lambda: self._inner.upsert(entity, mode=mode))

    def delete(self, partition_key: str, row_key: str, *, etag: str | None = None) -> None:
        self._call(lambda: self._inner.delete(partition_key, row_key, etag=etag))

    def query(
        self,
        filter: str,
        *,
        parameters: Mapping[str, FilterValue] | None = None,
        select: Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> Iterator[Entity]:
        rows = self._call(
            lambda: list(
                self._inner.query(filter, parameters=parameters, select=select, page_size=page_size)
            )
        )
        return iter(rows)

    def transact(self, operations: Sequence[Operation]) -> list[str | None]:
        return self._call(lambda: self._inner.transact(operations))


class Chaos:
    """Seeded decisions shared by every fault point, and what they injected."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.calm = False  # set once the traffic is over: the verdict reads the store unfaulted

    def roll(self) -> float:
        with self._lock:
            return self._rng.random()

    def store_fault(self) -> str | None:
        if self.calm:
            return None
        roll = self.roll()
        edges = (
            (STORE_FAULT_RATE / 2, "store_before"),
            (STORE_FAULT_RATE, "store_after"),
            (STORE_FAULT_RATE + CRASH_RATE / 2, "crash_before"),
            (STORE_FAULT_RATE + CRASH_RATE, "crash_after"),
        )
        for edge, kind in edges:
            if roll < edge:
                self.count(kind)
                return kind
        return None

    def count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1


def _reverted_after_an_admin(
    writes: Sequence[Any], mailbox_id: str, app_user: str, admins: Sequence[str]
) -> bool:
    """Whether a revert by the guardrail (an approval restore aside) landed after an exempt
    administrator's write to the mailbox."""
    mine = [w for w in writes if w.mailbox_id == mailbox_id]
    admin_versions = [w.versionnumber for w in mine if w.user_id in admins]
    reverts = [
        w.versionnumber
        for w in mine
        if w.user_id == app_user and set(w.requested) - {"emailrouteraccessapproval"}
    ]
    return bool(admin_versions and reverts) and max(reverts) > min(admin_versions)


def faulty_store(azurite: Azurite, chaos: Chaos) -> TableStore:
    service = TableServiceClient.from_connection_string(
        azurite.connection_string, retry_total=0, connection_timeout=3, read_timeout=5
    )
    return TableStore(
        lambda name: FaultyTable(AzureTable(service, name), chaos),
        prefix=azurite.unique_prefix(),
        close=service.close,
    )


def test_chaos(azurite: Azurite, broker: TestBroker, tmp_path: Path) -> None:
    chaos = Chaos(SEED)
    rng = random.Random(SEED + 1)
    broker.declare_queue(QUEUE, max_delivery_count=10, lock_duration=300)
    clock = broker.clock
    with Sandbox(credential="client_secret") as sandbox:
        dataverse, graph = sandbox.dataverse, sandbox.graph
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(organization_id=dataverse.organization_id))
        env = sandbox.environment(policy, queue=QUEUE)
        env.update(
            {
                "SERVICEBUS": broker.connection_string,
                "GUARDRAILS_HTTP_TIMEOUT": "0.5",
            }
        )
        people = dataverse.add_mailboxes(MESSAGES, email="user{index}@contoso.com")
        sandbox.add_person("Satya (CEO)", CEO)
        admins = [
            sandbox.add_person(
                f"Admin {i}", f"admin{i}@contoso.com", roles=("System Administrator",)
            )[0]
            for i in range(3)
        ]
        with patched_environ(env):
            settings = load_settings()
            store = faulty_store(azurite, chaos)
            queue = QueueClient(
                servicebus_settings(env),
                clock=lambda: datetime.fromtimestamp(clock.now(), UTC),
            )
            audit: list[dict[str, Any]] = []
            audit_lock = threading.Lock()

            def record(entry: dict[str, Any]) -> None:
                with audit_lock:
                    audit.append(entry)

            def cold_worker() -> Worker:
                return build_worker(
                    settings,
                    store=store,
                    scheduler=queue,
                    audit=record,
                    sleep=broker.advance,
                    clock=clock.now,
                )

            worker = [cold_worker()]

            def handler(message: FunctionsMessage) -> None:
                try:
                    worker[0].handle(
                        message.get_body(),
                        message_id=message.message_id,
                        properties=message.application_properties,
                        content_type=message.content_type,
                        enqueued_time=message.enqueued_time_utc,
                    )
                except Crash as crash:
                    chaos.count("crashes")
                    worker[0] = cold_worker()  # a new instance: no caches, no leases held
                    raise RuntimeError(f"the worker crashed ({crash})") from None

            # The users' changes: delivery methods moved away from server-side sync, and
            # addresses pointed at the CEO's.
            changed: dict[str, dict[str, Any]] = {}
            kinds = Counter()
            for user_id, mailbox_id in people:
                roll = rng.random()
                if roll < 0.3:
                    changes: dict[str, Any] = {"emailaddress": CEO}
                    kinds["email"] += 1
                elif roll < 0.55:
                    changes = {"incomingemaildeliverymethod": 3}
                    kinds["incoming"] += 1
                elif roll < 0.8:
                    changes = {"outgoingemaildeliverymethod": 1}
                    kinds["outgoing"] += 1
                else:
                    changes = {"actdeliverymethod": 0, "incomingemaildeliverymethod": 0}
                    kinds["act+incoming"] += 1
                dataverse.update_mailbox_as(user_id, mailbox_id, changes)
                changed[mailbox_id] = changes
            app_user = sandbox.app_user_id
            admin_touched: dict[str, datetime] = {}

            def admin_races(pending: PendingWrite) -> None:
                """An exempt admin writes the row inside the guardrail's revert (a 412 race)."""
                if pending.user_id != app_user or "emailrouteraccessapproval" in pending.changes:
                    return
                if pending.mailbox_id in admin_touched or chaos.roll() >= ADMIN_RACE_RATE:
                    return
                user_changes = changed.get(pending.mailbox_id, {})
                same_value = chaos.roll() < 0.5 and user_changes
                race = dict(user_changes) if same_value else {"actdeliverymethod": 2}
                admin_touched[pending.mailbox_id] = datetime.now(UTC)
                chaos.count("admin_same_value" if same_value else "admin_other_column")
                dataverse.update_mailbox_as(rng.choice(admins), pending.mailbox_id, race)

            remove_race = dataverse.before_write(admin_races)
            kinds_faulted = (
                "reset_before",
                "reset_after",
                "delay_before",
                "delay_after",
                "429",
                "500",
                "503",
                "503_after",
            )
            dataverse.chaos(
                HTTP_FAULT_RATE,
                kinds=kinds_faulted,
                seed=SEED,
                retry_after=(1, 240),
                delay=(0.6, 0.8),
            )
            graph.chaos(
                HTTP_FAULT_RATE,
                kinds=kinds_faulted,
                seed=SEED + 2,
                retry_after=(1, 240),
                delay=(0.6, 0.8),
            )
            sandbox.identity.chaos(
                0.02, kinds=("reset_before", "503", "delay_after"), seed=SEED + 3, delay=(0.6, 0.8)
            )

            published = 0
            with FunctionsHost(
                broker.connection_string, QUEUE, handler, broker=broker, max_concurrent_calls=4
            ) as host:
                for _ in range(200):
                    outbox = sandbox.take()
                    for message in outbox:
                        broker.publish(
                            QUEUE,
                            message.body,
                            message_id=message.message_id,
                            application_properties={
                                str(k): v for k, v in message.properties.items()
                            },
                            content_type="application/json",
                        )
                    published += len(outbox)
                    host.run_until_idle(timeout=900)
                    if (
                        not sandbox.outbox
                        and not broker.messages(QUEUE)
                        and not broker.scheduled(QUEUE)
                    ):
                        break
                invocations = list(host.invocations)
            remove_race()
            for server in (dataverse, graph, sandbox.identity):
                server.clear_faults()
            chaos.calm = True

        # -- the verdict ---------------------------------------------------------------------
        rows = {mailbox_id: dataverse.mailbox(mailbox_id) for _, mailbox_id in people}
        owner_of = {mailbox_id: user_id for user_id, mailbox_id in people}
        owner_email = {
            mailbox_id: dataverse.user(user_id)["internalemailaddress"]
            for user_id, mailbox_id in people
        }
        reverts: dict[str, int] = defaultdict(int)
        for write in dataverse.writes:
            if write.user_id == app_user and set(write.requested) - {"emailrouteraccessapproval"}:
                reverts[write.mailbox_id] += 1
        mails: dict[str, int] = defaultdict(int)
        for mail in graph.sent:
            for address in mail.to:
                mails[address.lower()] += 1
        last_record: dict[str, dict[str, Any]] = {}
        user_keys: dict[str, str] = {}
        defects = [e for e in audit if str(e.get("result_reason", "")).startswith("unexpected ")]
        for entry in defects[:5]:
            print(f"\n  defect: {entry.get('result_reason')}")
        for entry in audit:
            mailbox_id = entry.get("mailbox_id")
            if mailbox_id and entry.get("initiating_user_id") == owner_of.get(mailbox_id):
                user_keys[mailbox_id] = entry["message_key"]
            last_record[entry["message_key"]] = entry

        def explain(mailbox_id: str) -> None:
            """What happened to one mailbox, printed when it fails a row of the table."""
            print(f"\n  mailbox {mailbox_id}: changed {changed[mailbox_id]}")
            for write in dataverse.writes:
                if write.mailbox_id == mailbox_id:
                    who = "guardrail" if write.user_id == app_user else write.user_id
                    print(f"    v{write.versionnumber} by {who}: {write.requested}")
            for entry in audit:
                if entry.get("mailbox_id") == mailbox_id:
                    print(
                        f"    audit {entry['message_key'][:8]} {entry['result']} "
                        f"{entry.get('outcome')} wrote={entry.get('wrote')} "
                        f"{entry.get('result_reason') or entry.get('reason')}"[:300]
                    )

        table: Counter[str] = Counter()
        for _, mailbox_id in people:
            row = rows[mailbox_id]
            own = owner_email[mailbox_id].lower()
            violating = (
                row["incomingemaildeliverymethod"] != 2
                or row["outgoingemaildeliverymethod"] != 2
                or row["actdeliverymethod"] != 1
                or (row["emailaddress"] or "").lower() != own
            )
            raced = mailbox_id in admin_touched
            if violating and not raced:
                table["mailbox left violating"] += 1
            if mails[own] > 1:
                table["notification sent twice"] += 1
            if reverts[mailbox_id] >= 1 and mails[own] == 0:
                table["notification never sent"] += 1
                explain(mailbox_id)
            if reverts[mailbox_id] > 1:
                table["mailbox written more than once for one change"] += 1
            if (
                "emailaddress" in changed[mailbox_id]
                and not raced
                and row["emailrouteraccessapproval"] != 1
            ):
                table["approval not restored after a reverted address"] += 1
            if raced and _reverted_after_an_admin(dataverse.writes, mailbox_id, app_user, admins):
                # An admin's write must stand: no revert may land after it. (The race hook can
                # fire on a guardrail write that follows its landed revert, e.g. a redelivered
                # attempt's 412: the admin's write then follows the revert, and the owner was
                # rightly told of the revert.)
                table["an administrator's later change reverted"] += 1
                explain(mailbox_id)
            key = user_keys.get(mailbox_id)
            record = last_record.get(key or "")
            if record is None:
                table["user change with no audit record"] += 1
            elif bool(record.get("wrote")) != (reverts[mailbox_id] >= 1):
                table["audit record wrong"] += 1
        dead = broker.dead_letters(QUEUE)
        table["messages dead-lettered by Service Bus"] = len(dead)
        left = broker.messages(QUEUE) + broker.scheduled(QUEUE) + broker.locked(QUEUE)
        table["messages neither completed nor recorded"] = len(left)
        table["unexpected errors (defects)"] = len(defects)
        failures = list(store.table("Failures").query(""))

        outcomes = Counter(i.outcome for i in invocations)
        print(
            f"\nchaos: {MESSAGES} violating changes ({dict(kinds)}), {published} messages published"
        )
        print(
            f"  invocations: {len(invocations)} {dict(outcomes)}; "
            f"failures recorded: {len(failures)}"
        )
        injected = {
            "dataverse": dataverse.chaos_counts,
            "graph": graph.chaos_counts,
            "identity": sandbox.identity.chaos_counts,
            "store+crash+races": dict(chaos.counts),
        }
        total = sum(sum(c.values()) for c in injected.values())
        print(f"  faults injected: {total} {injected}")
        print(f"  {'what happened':<52} how often")
        names = [
            "mailbox left violating",
            "notification sent twice",
            "notification never sent",
            "approval not restored after a reverted address",
            "an administrator's later change reverted",
            "audit record wrong",
            "mailbox written more than once for one change",
            "user change with no audit record",
            "messages dead-lettered by Service Bus",
            "messages neither completed nor recorded",
            "unexpected errors (defects)",
        ]
        for name in names:
            print(f"  {name:<52} {table[name]}")
        assert all(table[name] == 0 for name in names), dict(table)
        for failure in failures:  # recorded with a reason an admin can act on
            assert failure.properties.get("reason"), failure
