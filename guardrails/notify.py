"""The notification a person receives: rendered from the policy's template, every value escaped.

Admins write the template; people (and whatever they typed into their mailbox row) supply the
values, so every value is HTML-escaped and the template has placeholders, not logic.
"""

from __future__ import annotations

import html
import string
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from guardrails.engine import Decision
from guardrails.mailbox import COLUMN_LABELS, describe
from guardrails.policy.model import Notifications

DEFAULT_TEMPLATE = (
    resources.files("guardrails").joinpath("templates/notification.html").read_text("utf-8")
)


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


def _violations_html(decision: Decision) -> str:
    rows = []
    for violation in decision.violations:
        restored = (
            f"changed back to {describe(violation.column, violation.expected)}"
            if violation.enforced and violation.column in decision.patch
            else "recorded, not changed"
        )
        rows.append(
            "<li><b>"
            + html.escape(COLUMN_LABELS[violation.column])
            + "</b>: "
            + html.escape(describe(violation.column, violation.actual))
            + " &rarr; "
            + html.escape(restored)
            + "</li>"
        )
    return "<ul>" + "".join(rows) + "</ul>"


def render(
    decision: Decision,
    settings: Notifications,
    *,
    owner_name: str | None,
    owner_email: str | None,
    initiator: str | None,
    organization_name: str | None,
    mailbox_name: str | None,
    wrote: bool,
) -> tuple[str, str]:
    """(subject, html body)."""
    action = (
        "Changes made to your Dynamics 365 mailbox settings were not allowed and have been "
        "changed back."
        if wrote
        else "Changes made to a Dynamics 365 mailbox were found that the organization's "
        "policy does not allow."
    )
    values = {
        "mailbox_name": mailbox_name or decision.mailbox_id or "",
        "mailbox_id": decision.mailbox_id or "",
        "owner_name": owner_name or "",
        "owner_email": owner_email or "",
        "initiator": initiator or "",
        "organization_name": organization_name or "your organization",
        "action": action,
        "correlation_id": decision.correlation_id or "",
    }
    escaped = {key: html.escape(value) for key, value in values.items()}
    body = string.Template(settings.template or DEFAULT_TEMPLATE).safe_substitute(
        escaped, violations=_violations_html(decision)
    )
    # The subject is plain text: unescaped values, and never a line break.
    subject = string.Template(settings.subject).safe_substitute(values, violations="")
    return " ".join(subject.split()), body


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
