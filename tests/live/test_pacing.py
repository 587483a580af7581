"""The pacer on an injected clock: the gate after a 429, the pace learnt from it, its lapse.

Nothing here sleeps: the fake clock moves only when the pacer sleeps, so every wait is exact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from guardrails.clients.pacing import (
    DATAVERSE_BUDGET,
    Budget,
    BudgetHeaders,
    GateClosed,
    Pacer,
)

PATIENCE = 20.0


class Clock:
    """Time that passes only when someone sleeps; `during` runs once, mid-sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.during: Callable[[], None] | None = None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds
        action, self.during = self.during, None
        if action is not None:
            action()


def send(
    pacer: Pacer,
    clock: Clock,
    count: int,
    *,
    every: float,
    remaining: int | None,
    countdown: bool = False,
) -> None:
    """`count` requests answered one after another, `every` seconds apart, each reporting
    `remaining` requests left (one fewer each time with `countdown`)."""
    for index in range(count):
        started = pacer.admit(clock.sleep, PATIENCE)
        clock.now = max(clock.now, started) + every
        left = None if remaining is None else float(remaining - index * countdown)
        pacer.admitted(started, Budget(requests=left))


def burst_into_the_limit(pacer: Pacer, clock: Clock, *, headers: bool) -> float:
    """100 requests in one second into a limit of 100 per 3 s; returns the reopening time."""
    start = clock.now
    send(pacer, clock, 100, every=0.01, remaining=99 if headers else None, countdown=True)
    pacer.throttled(2.0, Budget(requests=0.0) if headers else Budget())
    assert clock.now == pytest.approx(start + 1.0)
    return clock.now + 2.0


def test_no_limit_near_costs_nothing() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    send(pacer, clock, 500, every=0.001, remaining=5000)
    assert clock.slept == [] and pacer.interval is None


def test_a_429_holds_every_request_until_its_retry_after_has_passed() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    pacer.throttled(5.0, Budget())
    assert pacer.admit(clock.sleep, PATIENCE) == 1005.0
    assert clock.slept == [5.0]
    assert pacer.admit(clock.sleep, PATIENCE) == 1005.0  # passed: no second wait
    assert clock.slept == [5.0]


def test_a_retry_after_longer_than_the_caller_waits_is_raised_not_cut_short() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    pacer.throttled(45.0, Budget())
    with pytest.raises(GateClosed) as closed:
        pacer.admit(clock.sleep, PATIENCE)
    assert closed.value.wait == 45.0 and clock.slept == []
    assert pacer.admit(clock.sleep, 60.0) == 1045.0  # a more patient caller waits it out


def test_a_429_arriving_while_a_request_waits_for_its_slot_is_waited_out_too() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    opens = burst_into_the_limit(pacer, clock, headers=True)
    assert pacer.admit(clock.sleep, PATIENCE) == opens  # the first paced request
    clock.during = lambda: pacer.throttled(1.0, Budget(requests=0.0))  # another thread's 429
    started = pacer.admit(clock.sleep, PATIENCE)
    assert started >= opens + 1.0  # never before the newer Retry-After


def test_with_budget_headers_the_rate_is_learnt_from_the_first_429() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    opens = burst_into_the_limit(pacer, clock, headers=True)
    # 100 requests (99 left after the first) from 1000.0 until the reopening at 1003.0.
    assert pacer.interval == pytest.approx(3.0 / 100)
    starts = [pacer.admit(clock.sleep, PATIENCE) for _ in range(4)]
    assert starts == pytest.approx([opens, opens + 0.03, opens + 0.06, opens + 0.09])


def test_the_pace_settles_where_the_budget_keeps_two_percent_unspent() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    burst_into_the_limit(pacer, clock, headers=True)
    # A whole window paced, and the server still reports 40 of 99 left: 59 were spent in it,
    # where 98% of 99 could be.
    send(pacer, clock, 102, every=0.0, remaining=40)
    faster = 0.03 / (99 * 0.98 / 59)
    assert pacer.interval == pytest.approx(faster)
    # Spending all of it, the pace slows down again.
    send(pacer, clock, 200, every=0.0, remaining=0)
    assert pacer.interval == pytest.approx(faster / 0.98)


def test_the_correction_reads_the_most_spent_late_in_the_window() -> None:
    """Early in the window the service still counts the burst that ran into the limit; later the
    reports jitter with the requests in flight: the lowest late report is the one that counts."""
    clock = Clock()
    pacer = Pacer(clock)
    burst_into_the_limit(pacer, clock, headers=True)
    reports = [0] * 45 + [20, 40] * 30  # 0.03 s apart: the first 45 within half the window
    for remaining in reports:
        pacer.admitted(pacer.admit(clock.sleep, PATIENCE), Budget(requests=float(remaining)))
    assert pacer.interval == pytest.approx(0.03 / (99 * 0.98 / (99 - 20)))


def test_a_429_while_paced_slows_the_pace_once_per_event() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    burst_into_the_limit(pacer, clock, headers=True)
    send(pacer, clock, 20, every=0.0, remaining=5)
    for _ in range(8):  # the requests in flight with it are refused together
        pacer.throttled(1.0, Budget(requests=0.0))
    assert pacer.interval == pytest.approx(0.03 / 0.95)


def test_a_429_with_budget_to_spare_is_not_about_the_rate() -> None:
    """E.g. the concurrency limit: waited out, but no pace is learnt from it."""
    clock = Clock()
    pacer = Pacer(clock)
    send(pacer, clock, 100, every=0.01, remaining=999)
    pacer.throttled(1.0, Budget(requests=899.0))
    assert pacer.interval is None
    assert pacer.admit(clock.sleep, PATIENCE) == pytest.approx(1002.0)


def test_without_headers_the_rate_comes_from_a_whole_throttled_cycle() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    opens = burst_into_the_limit(pacer, clock, headers=False)
    assert pacer.interval is None  # one 429 says nothing about the rate: only waited out
    # Released together at the reopening, the requests run into the limit again.
    send(pacer, clock, 100, every=0.01, remaining=None)
    pacer.throttled(2.0, Budget())
    assert pacer.interval == pytest.approx((opens + 3.0 - opens) / 100)
    first, second = (pacer.admit(clock.sleep, PATIENCE) for _ in range(2))
    assert second - first == pytest.approx(0.03)  # spread, not released at once


def test_a_pause_ends_the_cycle_so_a_later_429_is_only_waited_out() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    burst_into_the_limit(pacer, clock, headers=False)
    send(pacer, clock, 10, every=0.01, remaining=None)
    clock.now += 30.0  # nothing to do for a while
    send(pacer, clock, 10, every=0.01, remaining=None)
    pacer.throttled(1.0, Budget())
    assert pacer.interval is None


def test_a_rate_slower_than_one_request_a_second_is_not_paced() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    pacer.throttled(1.0, Budget())
    send(pacer, clock, 3, every=0.5, remaining=None)
    pacer.throttled(9.0, Budget())  # 3 requests in a 10.5 s cycle
    assert pacer.interval is None


def test_the_pace_lapses_once_a_whole_window_passed_without_it_holding_anything_back() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    burst_into_the_limit(pacer, clock, headers=True)
    send(pacer, clock, 5, every=0.0, remaining=50)
    assert pacer.interval is not None
    clock.now += 3.5  # longer than the learnt window, and nobody waited for a slot
    slept = len(clock.slept)
    send(pacer, clock, 50, every=0.0, remaining=50)
    assert pacer.interval is None and len(clock.slept) == slept


def test_a_clock_that_does_not_move_does_not_make_the_waits_grow() -> None:
    """An injected sleep that does not move the clock (tests, the chaos broker) must not push
    every later slot further out."""
    clock = Clock()
    pacer = Pacer(clock)
    burst_into_the_limit(pacer, clock, headers=True)
    pacer.admit(clock.sleep, PATIENCE)
    waits: list[float] = []
    for _ in range(50):
        pacer.admit(waits.append, PATIENCE)
    assert max(waits) == pytest.approx(0.03)


def test_threads_share_one_gate_and_one_pace() -> None:
    clock = Clock()
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:  # each thread wakes when its own sleep is over (the clock never goes back)
            clock.now += seconds

    pacer = Pacer(clock)
    opens = burst_into_the_limit(pacer, clock, headers=True)
    starts: list[float] = []

    def work() -> None:
        for _ in range(50):
            started = pacer.admit(sleep, PATIENCE)
            pacer.admitted(started, Budget(requests=10.0))
            with lock:
                starts.append(started)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(starts) == 400 and min(starts) >= opens  # none before the Retry-After
    assert pacer.interval is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7999", 7999.0),
        ("1,200.00", 1200.0),
        (" 12 ", 12.0),
        ("-3", 0.0),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_budget_values_as_dataverse_sends_them(value: str, expected: float | None) -> None:
    budget = Budget.read(DATAVERSE_BUDGET, {DATAVERSE_BUDGET.requests: value})
    assert budget.requests == expected and budget.time is None


def test_budget_headers_are_read_only_for_a_service_that_has_them() -> None:
    headers = {"x-remaining": "5", "x-time": "1.5"}
    assert Budget.read(None, headers) == Budget()
    assert Budget.read(BudgetHeaders("x-remaining", "x-time"), headers) == Budget(5.0, 1.5)
