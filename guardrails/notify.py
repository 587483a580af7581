"""Who is told about a decision: the owner at their directory address, and the admins.

What the mail says is `guardrails.render`; how often a mailbox's owner is told is the shared
throttle in `guardrails.state.throttle`.
"""

from __future__ import annotations

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
