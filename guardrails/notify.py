"""Who is told about a decision, and how often: recipients and the per-mailbox throttle.

What the mail says is `guardrails.render`; this module only decides who gets it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from guardrails.engine import Decision


@dataclass(frozen=True, slots=True)
class Recipients:
    to: tuple[str, ...]
    cc: tuple[str, ...]


def recipients(decision: Decision, owner_email: str | None) -> Recipients | None:
    """The owner at their directory address (never the address typed into the row), plus admins.

    Without an owner to write to (audit mode, a queue mailbox), the admins become the recipients.
    """
    to = [owner_email] if decision.notify_owner and owner_email else []
    others = [a for a in decision.notify_also if a.lower() not in {t.lower() for t in to}]
    if not to:
        to, others = others, []
    return Recipients(tuple(to), tuple(others)) if to else None


class NotificationThrottle:
    """At most `limit` notifications per mailbox per window (in memory, per worker)."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._sent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, mailbox_id: str) -> bool:
        now = self._clock()
        with self._lock:
            sent = self._sent.setdefault(mailbox_id, deque())
            while sent and sent[0] <= now - self._window:
                sent.popleft()
            if len(sent) >= self._limit:
                return False
            sent.append(now)
            return True
