"""The notification a person receives: rendered from the policy's template, every value escaped.

Admins write the template; people (and whatever they typed into their mailbox row) supply the
values, so every value is HTML-escaped and the template has placeholders, not logic.
"""

from __future__ import annotations

import html
import string
from importlib import resources

from guardrails.engine import Decision
from guardrails.mailbox import COLUMN_LABELS, describe
from guardrails.policy.model import Notifications

DEFAULT_TEMPLATE = (
    resources.files("guardrails").joinpath("templates/notification.html").read_text("utf-8")
)


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
