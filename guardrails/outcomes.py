"""What became of a message, as data: done, nothing to do, retry at a time, give up with a reason.

The executor returns one of these; one place (settlement) decides what each means for the
Service Bus message, and the audit record is built from it. Kept apart from the executor so that
the audit, settlement and the sweep can use them without importing the executor.
"""

from __future__ import annotations

from dataclasses import dataclass

from guardrails.engine import Decision


@dataclass(frozen=True, slots=True)
class Done:
    """The decision was carried out (a write, a notification, or both)."""

    decision: Decision
    wrote: bool = False
    notified: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    # True when this delivery found the work already finished (a redelivery, a retry copy, a
    # duplicate post): the record repeats what was done, and nothing was done again.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class NothingToDo:
    decision: Decision | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RetryLater:
    """May succeed later (throttling, an outage).

    `delay` is the wait the service asked for (its Retry-After), or None when it asked for none
    (an outage, a timeout): settlement then backs off on its own schedule. `attempted` is False
    when nothing was tried (held back by a Retry-After still running): no attempt is spent.
    """

    reason: str
    delay: float | None = None
    decision: Decision | None = None
    attempted: bool = True


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Can never succeed as it is; `reason` says what a person must change."""

    reason: str
    decision: Decision | None = None


Result = Done | NothingToDo | RetryLater | GiveUp
