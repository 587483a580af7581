"""What each outcome means for the Service Bus message: one pure function, policy as data.

The executor says what happened (done, nothing to do, retry later, give up); this module alone
decides what that means for the message, in a fixed order (dramatiq's Retries middleware is the
model):

1. done or nothing to do -> complete the message;
2. give up -> record it (raw body and reason, where `guardrails dlq` shows it) and complete:
   a message that can never succeed must not burn Service Bus deliveries;
3. retry later, past the cap on attempts or on age -> the same as give up, with why (a message
   held back without being tried, by a Retry-After still running, spends no attempt: only
   its age bounds it, so a storm of 429s cannot use up its attempts);
4. retry later with a short wait (the service's Retry-After, or the first back-off step, up to
   `in_process_wait`) -> wait inside this invocation and try again; the message lock is renewed
   by the host meanwhile;
5. retry later with a long wait -> schedule a byte-identical copy of the message, due when the
   service asked (never before its Retry-After, at most a minute after it) or, with no
   Retry-After (an outage), on an exponential back-off from 30 s; the attempt number travels in
   the copy's application property `attempt`; then complete the original.

Nothing here does I/O or reads the clock: the worker passes the attempt, the age and a random
source in, so every branch is tested as a plain function.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from guardrails.outcomes import Done, GiveUp, NothingToDo, Result, RetryLater

ATTEMPT_PROPERTY = "attempt"
FIRST_ENQUEUED_PROPERTY = "first-enqueued"


@dataclass(frozen=True, slots=True)
class SettlementPolicy:
    """Retry policy as data; every number has a setting (see `guardrails.settings`)."""

    # Waits up to this are spent inside the invocation (GUARDRAILS_LONG_WAIT_THRESHOLD).
    in_process_wait: float = 30.0
    # In-process tries of one delivery, and the time they may take together, before a wait is
    # scheduled instead: well inside host.json's functionTimeout (5 min), since each try may
    # itself spend HTTP retries and timeouts.
    in_process_tries: int = 3
    in_process_budget: float = 90.0
    # After this many scheduled attempts, or this age, a transient failure is given up on.
    max_attempts: int = 12
    max_age: float = 24 * 3600.0
    # Back-off for an outage (no Retry-After): 30 s, 60 s, 120 s, ... up to `outage_max`.
    outage_base: float = 30.0
    outage_max: float = 3600.0
    # A scheduled copy is due at Retry-After plus up to this much jitter (spreads a burst).
    retry_after_slack: float = 60.0


@dataclass(frozen=True, slots=True)
class Complete:
    """Settle the message as done."""

    reason: str


@dataclass(frozen=True, slots=True)
class WaitAndRetry:
    """Wait `delay` seconds in this invocation, then process the message again."""

    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class Schedule:
    """Send a byte-identical copy due in `delay` seconds with `attempt`, then complete."""

    delay: float
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Record:
    """Never going to succeed as it is: keep the body and the reason for an admin, complete."""

    reason: str
    code: str


Action = Complete | WaitAndRetry | Schedule | Record


def outage_delay(attempt: int, policy: SettlementPolicy, rng: random.Random) -> float:
    """Exponential from `outage_base`, capped, with up to 20% jitter so a fleet spreads out."""
    base: float = min(policy.outage_max, policy.outage_base * 2.0 ** max(0, attempt - 1))
    return base * (1.0 + rng.random() * 0.2)


def settle(
    result: Result,
    *,
    attempt: int,
    age: float,
    tries: int,
    policy: SettlementPolicy,
    rng: random.Random,
    elapsed: float = 0.0,
) -> Action:
    """The one place an outcome becomes an action on the message.

    `attempt` counts deliveries of this body across scheduled copies (1 for the original),
    `age` is seconds since the first copy was enqueued, `tries` counts in-process tries in this
    invocation and `elapsed` the seconds this invocation has run.
    """
    if isinstance(result, Done | NothingToDo):
        return Complete(getattr(result, "reason", "") or "done")
    if isinstance(result, GiveUp):
        return Record(result.reason, "permanent")
    assert isinstance(result, RetryLater)
    if (attempt >= policy.max_attempts and result.attempted) or age >= policy.max_age:
        return Record(
            f"gave up after {attempt} attempt(s) over {age / 60:.0f} min: {result.reason}",
            "exhausted",
        )
    asked = result.delay
    first_step = asked if asked is not None else policy.outage_base / 8
    if tries < policy.in_process_tries and first_step <= policy.in_process_wait:
        wait = asked if asked is not None else first_step * (1.0 + rng.random() * 0.2)
        if elapsed + wait <= policy.in_process_budget:
            return WaitAndRetry(wait, result.reason)
    if asked is not None:
        delay = asked + rng.random() * policy.retry_after_slack
    else:
        delay = outage_delay(attempt, policy, rng)
    return Schedule(delay, attempt + 1 if result.attempted else attempt, result.reason)
