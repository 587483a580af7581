"""Durable state in Table Storage: what survives a crash, a redelivery and a second instance.

Each module owns one table and one job: the message ledger and notification outbox
(`ledger`), the notification throttle shared by all instances (`throttle`), the values the
guardrail accepted per mailbox (`accepted`), and the audit trail and the record of messages that
could not be processed (`records`). `State` bundles them over one `TableStore`, so production
(Azure Table Storage), the tests (Azurite) and the demo (in memory) differ only in the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from guardrails.clients.tables import Table, TableStore
from guardrails.state.accepted import AcceptedValues
from guardrails.state.ledger import Ledger
from guardrails.state.records import AuditTrail, FailureLog
from guardrails.state.throttle import SharedThrottle


@dataclass(frozen=True, slots=True)
class State:
    ledger: Ledger
    throttle: SharedThrottle
    accepted: AcceptedValues
    audit: AuditTrail
    failures: FailureLog
    runs: Table  # one record per reconcile run (counts, duration, errors)

    @classmethod
    def over(
        cls,
        store: TableStore,
        *,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.time,
    ) -> State:
        """Every table of the app in `store`; `limit` per `window` seconds is the throttle.

        `clock` (epoch seconds) times leases and the throttle's window."""
        return cls(
            ledger=Ledger(store.table("Ledger"), clock=clock),
            throttle=SharedThrottle(
                store.table("Throttle"), limit=limit, window=window, clock=clock
            ),
            accepted=AcceptedValues(store.table("Accepted")),
            audit=AuditTrail(store.table("Audit")),
            failures=FailureLog(store.table("Failures")),
            runs=store.table("Runs"),
        )


__all__ = ["AcceptedValues", "AuditTrail", "FailureLog", "Ledger", "SharedThrottle", "State"]
