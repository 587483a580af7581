"""Settlement: every outcome maps to exactly one action, in dramatiq's fixed order."""

from __future__ import annotations

import random

import pytest

from guardrails.engine import Decision, Outcome
from guardrails.outcomes import Done, GiveUp, NothingToDo, RetryLater
from guardrails.settlement import (
    Complete,
    Record,
    Schedule,
    SettlementPolicy,
    WaitAndRetry,
    outage_delay,
    settle,
)

POLICY = SettlementPolicy()
DECISION = Decision(Outcome.VIOLATION, "Reverting")


def run(result: object, *, attempt: int = 1, age: float = 0.0, tries: int = 1) -> object:
    return settle(
        result,  # type: ignore[arg-type]
        attempt=attempt,
        age=age,
        tries=tries,
        policy=POLICY,
        rng=random.Random(7),
    )


def test_done_and_nothing_to_do_complete() -> None:
    assert isinstance(run(Done(DECISION, wrote=True)), Complete)
    assert isinstance(run(NothingToDo(DECISION, "compliant")), Complete)


def test_give_up_is_recorded_at_once_without_burning_deliveries() -> None:
    action = run(GiveUp("The body is Binary XML; set message format JSON"))
    assert action == Record("The body is Binary XML; set message format JSON", "permanent")


def test_a_short_retry_after_is_waited_out_in_process() -> None:
    action = run(RetryLater("429", 4.0))
    assert action == WaitAndRetry(4.0, "429")


@pytest.mark.parametrize("asked", [31.0, 120.0, 600.0])
def test_a_long_retry_after_is_scheduled_not_before_and_at_most_a_minute_after(
    asked: float,
) -> None:
    for seed in range(200):
        action = settle(
            RetryLater("429", asked),
            attempt=3,
            age=60.0,
            tries=1,
            policy=POLICY,
            rng=random.Random(seed),
        )
        assert isinstance(action, Schedule)
        assert asked <= action.delay <= asked + 60.0
        assert action.attempt == 4


def test_an_outage_is_tried_in_process_then_scheduled_with_back_off() -> None:
    first = run(RetryLater("503", None), tries=1)
    assert isinstance(first, WaitAndRetry) and 3.75 <= first.delay <= 4.5
    exhausted_in_process = run(RetryLater("503", None), tries=POLICY.in_process_tries)
    assert isinstance(exhausted_in_process, Schedule)
    assert 30.0 <= exhausted_in_process.delay <= 36.0
    later = run(RetryLater("503", None), attempt=4, tries=POLICY.in_process_tries)
    assert isinstance(later, Schedule) and 240.0 <= later.delay <= 288.0


def test_outage_back_off_is_capped() -> None:
    rng = random.Random(1)
    assert all(outage_delay(n, POLICY, rng) <= POLICY.outage_max * 1.2 for n in range(1, 60))


def test_past_the_attempt_cap_or_the_age_cap_it_is_given_up_with_why() -> None:
    capped = run(RetryLater("503", None), attempt=POLICY.max_attempts)
    assert isinstance(capped, Record) and capped.code == "exhausted"
    assert "503" in capped.reason and f"{POLICY.max_attempts} attempt" in capped.reason
    old = run(RetryLater("429", 5.0), attempt=2, age=POLICY.max_age)
    assert isinstance(old, Record) and old.code == "exhausted"


def test_in_process_waits_stop_at_the_invocation_budget() -> None:
    action = settle(
        RetryLater("429", 20.0),
        attempt=1,
        age=0.0,
        tries=1,
        policy=POLICY,
        rng=random.Random(1),
        elapsed=POLICY.in_process_budget - 10.0,
    )
    assert isinstance(action, Schedule)  # waiting here would outlive the budget


def test_a_message_held_back_by_a_running_retry_after_spends_no_attempt() -> None:
    """Nothing was sent (another request's Retry-After still runs): the copy keeps its attempt
    number, even at the cap, so a storm cannot use up a message's attempts; age still bounds it."""
    held = RetryLater("not sent: throttled for another 200 s", 200.0, attempted=False)
    action = run(held, attempt=POLICY.max_attempts, age=3600.0)
    assert isinstance(action, Schedule)
    assert action.attempt == POLICY.max_attempts and action.delay >= 200.0
    too_old = run(held, attempt=1, age=POLICY.max_age)
    assert isinstance(too_old, Record) and too_old.code == "exhausted"
