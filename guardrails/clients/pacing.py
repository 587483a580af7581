"""Pacing under a service's request limits, shared by every thread of one client.

Dataverse limits each user per web server with a sliding window (by default 6,000 requests and
1,200 s of execution time per 300 s) and answers 429 with a whole-second ``Retry-After`` once the
window is full. A 429 is always honoured: no request of the client starts before its Retry-After
has passed (the *gate*). But running into the limit again and again costs more than the wait the
window needs: the Retry-After is rounded up, so every thread sits idle for up to a second the
window would already admit, and released all at once the threads fill the window in a burst and
run into it again. So after a 429 the client *paces*: it spaces request starts at the rate the
limit allows, which keeps the window just short of full.

The rate is learnt from what the service says, best source first:

* With remaining-budget headers (Dataverse's ``x-ms-ratelimit-burst-remaining-xrm-requests`` and
  ``x-ms-ratelimit-time-remaining-xrm-requests``): the budget's size is the largest remaining
  value seen plus one, and at the 429 the window holds that many of this client's latest
  requests, so the rate is that count over the time from the oldest of them to the reopening (a
  lower bound: the window cannot be longer). Once a window has been paced, the remaining budget
  in steady state is ``size - rate * window``, which gives the exact rate: the pace is corrected
  towards leaving 2% of the budget unspent. Microsoft documents these headers as meant for
  debugging, per web server; so they only steer the pace between 429s, never the gate, and a
  wrong value costs at worst a 429 that is honoured and learnt from.
* Without them: the rate over a whole throttled cycle, the requests admitted between one
  reopening and the next over the time between the two (again a lower bound), learnt at the
  second 429 of a busy stretch; the first is only waited out.

Pacing costs nothing when no limit is near: it starts at a 429 and lapses once a whole window has
passed without the pace holding anything back.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# The pace aims to leave this share of the budget unspent: room for the requests in flight and
# for other clients of the same user.
_HEADROOM = 0.02
# A 429 while paced slows the pace down to this share.
_SLOWER = 0.95
# A pause this long (seconds) ends a busy stretch: a cycle across it says nothing about the rate.
_PAUSE = 1.0
# Most recent admitted request starts kept; enough for Dataverse's default 6,000 per window.
_HISTORY = 10_000
# The slowest pace (seconds between requests). Dataverse allows at least 20 requests a second
# per user and web server; a slower rate can only come from a window that was mis-measured (or a
# 429 that was not about the rate), and pacing on it would cost more than the 429s it avoids.
_SLOWEST = 1.0


@dataclass(frozen=True, slots=True)
class BudgetHeaders:
    """Response headers in which a service reports what is left of the user's limits."""

    requests: str
    time: str


DATAVERSE_BUDGET = BudgetHeaders(
    requests="x-ms-ratelimit-burst-remaining-xrm-requests",
    time="x-ms-ratelimit-time-remaining-xrm-requests",
)


@dataclass(frozen=True, slots=True)
class Budget:
    """What one response said is left: requests and execution time (None when not said)."""

    requests: float | None = None
    time: float | None = None

    @classmethod
    def read(cls, names: BudgetHeaders | None, headers: Mapping[str, str]) -> Budget:
        if names is None:
            return _NO_BUDGET
        return cls(_amount(headers.get(names.requests)), _amount(headers.get(names.time)))


_NO_BUDGET = Budget()


def _amount(value: str | None) -> float | None:
    """A remaining amount as sent ("5832", "1,200.00"); None when absent or not a number."""
    if value is None:
        return None
    try:
        amount = float(value.strip().replace(",", ""))
    except ValueError:
        return None
    return max(0.0, amount) if math.isfinite(amount) else None


class GateClosed(Exception):
    """The service's Retry-After is still running, for longer than the caller waits in-process."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"throttled for another {wait:.1f} s")
        self.wait = wait


class _Level:
    """One budget as reported: the latest remaining value, the largest ever seen, and the lowest
    since the pace was last corrected."""

    __slots__ = ("largest", "latest", "lowest")

    def __init__(self) -> None:
        self.latest: float | None = None
        self.largest = 0.0
        self.lowest: float | None = None

    def note(self, value: float | None) -> None:
        if value is not None:
            self.latest = value
            self.largest = max(self.largest, value)
            self.lowest = value if self.lowest is None else min(self.lowest, value)

    def correction(self) -> float | None:
        """How much faster the pace may go (below 1: slower) for this budget to settle at the
        headroom, and start measuring afresh. In steady state ``size - remaining`` is what the
        pace spends per window; the lowest remaining value (the most spent) is taken, so that
        the requests in flight, which make the reports jitter, cannot push it over the limit."""
        lowest, self.lowest = self.lowest, None
        if lowest is None or self.largest <= 0:
            return None
        spent = self.largest - lowest
        target = self.largest * (1 - _HEADROOM)
        return 2.0 if spent <= 0 else min(2.0, max(0.5, target / spent))


class Pacer:
    """The gate and the pace of one client (one service, one user), safe across threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open_at = 0.0  # no request starts before this (the latest Retry-After)
        self._gate = 0  # bumped by every 429: slots reserved before it are void
        self._interval: float | None = None  # seconds between request starts; None: not pacing
        self._next = 0.0  # the earliest start of the next paced request
        self._window = 0.0  # the longest the service's window can be, as learnt
        self._held = False  # the pace held a request back since it last changed
        self._waiting = 0  # threads sleeping until their paced slot
        self._changed_at = 0.0
        self._reopened: float | None = None  # the last reopening of this busy stretch
        self._last_start = -math.inf
        self._admitted: deque[float] = deque(maxlen=_HISTORY)
        self._requests = _Level()
        self._time = _Level()

    @property
    def interval(self) -> float | None:
        """Seconds between request starts while pacing, None when not pacing (for tests)."""
        with self._lock:
            return self._interval

    def admit(self, sleep: Callable[[float], None], patience: float) -> float:
        """Wait until a request may start; returns when it may, as a clock reading.

        Raises GateClosed, without waiting, when a Retry-After has longer to run than
        `patience`: the caller hands the wait on instead of sending early.
        """
        slot_gate: int | None = None
        while True:
            with self._lock:
                now = self._clock()
                opens = self._open_at
                gated = opens > now
                if gated:
                    wait = opens - now
                elif slot_gate == self._gate:
                    self._last_start = now
                    return now
                else:
                    slot_gate = self._gate
                    wait = self._reserve(now)
            if gated and wait > patience:
                raise GateClosed(wait)
            if wait > 0:
                try:
                    sleep(wait)
                finally:
                    if not gated:
                        with self._lock:
                            self._waiting -= 1
            if gated:
                with self._lock:
                    # Waited out. An injected sleep may not move the clock: pass the gate once.
                    if self._open_at == opens:
                        self._open_at = 0.0

    def _reserve(self, now: float) -> float:
        if now - self._last_start > _PAUSE:
            self._reopened = None  # a pause: the busy stretch is over
        if self._interval is None:
            return 0.0
        if self._next < now - self._window:
            self._interval = None  # the pace held nothing back for a whole window: the limit
            return 0.0  # is not near any more
        # The threads still waiting hold the slots up to `_next`, each one interval after the
        # other, the first not yet due: so `_next` is never further ahead than this. (It would
        # be, and every request wait longer and longer, under an injected sleep that does not
        # move the clock.)
        slot = max(now, min(self._next, now + (self._waiting + 1) * self._interval))
        self._next = slot + self._interval
        if slot > now:
            self._held = True
            self._waiting += 1
        return slot - now

    def admitted(self, started: float, budget: Budget) -> None:
        """A response other than 429 to a request that started at `started`."""
        with self._lock:
            self._admitted.append(started)
            self._requests.note(budget.requests)
            self._time.note(budget.time)
            self._correct()

    def throttled(self, retry_after: float, budget: Budget) -> None:
        """A 429: close the gate for `retry_after` and learn the rate the limit allows."""
        with self._lock:
            self._requests.note(budget.requests)
            self._time.note(budget.time)
            now = self._clock()
            # The requests that were in flight with it are answered 429 too: one event.
            fresh = self._open_at <= now
            self._open_at = max(self._open_at, now + retry_after)
            self._gate += 1
            if fresh:
                self._learn(self._open_at)
            self._next = self._open_at
            self._last_start = self._open_at

    def _learn(self, opens: float) -> None:
        latest = self._requests.latest
        if latest is not None and latest > self._requests.largest * _HEADROOM:
            learnt = None  # budget to spare: a limit other than the request count (concurrency)
        elif self._interval is not None:
            # Paced, and still a 429: the pace was a little fast (requests bunched up in
            # flight, or another client of the user joined). Slow down, and keep correcting.
            learnt = self._interval / _SLOWER, self._window
        else:
            learnt = self._from_budget(opens) or self._from_cycle(opens)
        if learnt is not None and learnt[0] <= _SLOWEST:
            self._interval, self._window = learnt
            self._changed_at = opens
            self._held = False
        self._reopened = opens

    def _from_budget(self, opens: float) -> tuple[float, float] | None:
        """At a 429 for the request count the window holds the budget's size of this client's
        latest requests (of its own at most): their rate up to the reopening."""
        size = int(self._requests.largest) + 1
        if self._requests.latest is None or size < 2 or len(self._admitted) < size:
            return None
        window = opens - self._admitted[-size]
        return window / size, window

    def _from_cycle(self, opens: float) -> tuple[float, float] | None:
        """The requests admitted between the last reopening and this one, over that time."""
        reopened = self._reopened
        if reopened is None or reopened >= opens:
            return None
        count = sum(1 for started in self._admitted if started >= reopened)
        return ((opens - reopened) / count, opens - reopened) if count else None

    def _correct(self) -> None:
        """Once a whole window has been paced (and the pace held requests back), move the pace
        towards leaving the headroom of every reported budget unspent. Only the second half of
        the window is measured: in the first, the service's window still holds requests sent
        before the pace changed (the burst that ran into the limit, after a 429)."""
        if self._interval is None or not self._held:
            return
        elapsed = self._clock() - self._changed_at
        if elapsed < self._window / 2:
            self._requests.lowest = self._time.lowest = None
            return
        if elapsed < self._window:
            return
        factors = [
            f for f in (self._requests.correction(), self._time.correction()) if f is not None
        ]
        if not factors:
            return
        self._interval = min(_SLOWEST, self._interval / min(factors))
        self._changed_at = self._clock()
        self._held = False
