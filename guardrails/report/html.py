"""The report as one self-contained HTML page for a security team (template in `page.py`).

Jinja2 renders it with autoescaping on, from plain values prepared here: a mailbox name such as
`<img src=x onerror=alert(1)>` is shown as those characters. The stylesheet and the script are
constants, let through by the page's Content-Security-Policy by their SHA-256 alone.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from typing import Any, TextIO

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

from guardrails.mailbox import COLUMN_LABELS, Column, describe
from guardrails.report.model import Entry, Finding, Report, approval_label
from guardrails.report.page import SCRIPT, STYLE, TEMPLATE


def _sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


CSP = (
    f"default-src 'none'; style-src '{_sha256(STYLE)}'; script-src '{_sha256(SCRIPT)}'; "
    "img-src 'none'; base-uri 'none'; form-action 'none'"
)
_ENVIRONMENT = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
_PAGE = _ENVIRONMENT.from_string(TEMPLATE)


def _findings(findings: tuple[Finding, ...]) -> list[dict[str, object]]:
    return [
        {
            "label": COLUMN_LABELS[f.column],
            "actual": describe(f.column, f.actual),
            "expected": "no safe value known"
            if f.expected is None
            else describe(f.column, f.expected),
            "enforced": f.enforced,
        }
        for f in findings
    ]


def _entry(entry: Entry) -> dict[str, object]:
    owner = entry.owner
    regarding = entry.row.state.regarding
    hijack = entry.hijack
    return {
        "id": entry.mailbox_id,
        "name": entry.name,
        "owner_name": owner.name or owner.id,
        "owner_email": owner.email,
        "queue": regarding is not None and regarding.logical_name == "queue",
        "business_unit": entry.business_unit,
        "findings": _findings(entry.current.findings),
        "candidate": _findings(entry.candidate.findings) if entry.candidate else [],
        "approval": approval_label(entry.row.state.approval),
        "modified_by": entry.modified_by.name or entry.modified_by.id or "",
        "modified_on": entry.row.modified_on or "",
        "modified_on_text": (entry.row.modified_on or "").replace("T", " "),
        "hijack": {"address": hijack.address, "own": hijack.own} if hijack else None,
    }


def _rows(current: Counter[str], candidate: Counter[str] | None) -> list[dict[str, object]]:
    names = sorted(set(current) | set(candidate or ()))
    return [
        {
            "name": name,
            "label": _column_label(name),
            "current": current[name],
            "candidate": (candidate or Counter())[name],
        }
        for name in names
    ]


def _column_label(name: str) -> str:
    column = Column._value2member_map_.get(name)
    return COLUMN_LABELS[Column(name)] if column is not None else name


def context(report: Report) -> dict[str, Any]:
    summary = report.summary
    candidate = summary.candidate
    units = [
        {
            "name": unit,
            "current": summary.current.by_business_unit[unit],
            "hijack": summary.hijack_by_business_unit[unit],
            "candidate": candidate.by_business_unit[unit] if candidate else 0,
        }
        for unit in summary.business_units()
    ]
    return {
        "csp": CSP,
        "style": Markup(STYLE),  # noqa: S704 - a constant, allowed by its hash
        "script": Markup(SCRIPT),  # noqa: S704 - a constant, allowed by its hash
        "dataverse_url": report.dataverse_url,
        "organization_id": report.organization_id,
        "generated_at": report.generated_at,
        "policy": report.policy,
        "candidate_policy": report.candidate_policy,
        "preview": report.preview,
        "accepted_values": report.accepted_values,
        "scanned": summary.scanned,
        "hijack_suspects": summary.hijack_suspects,
        "owner_not_found": summary.owner_not_found,
        "current": summary.current,
        "candidate": candidate,
        "newly": summary.newly_non_compliant,
        "no_longer": summary.no_longer_non_compliant,
        "rules": _rows(summary.current.by_rule, candidate.by_rule if candidate else None),
        "columns": _rows(summary.current.by_column, candidate.by_column if candidate else None),
        "units": units,
        "entries": [_entry(entry) for entry in report.entries],
    }


def render_html(report: Report) -> str:
    return _PAGE.render(context(report))


def write_html(report: Report, out: TextIO) -> None:
    out.write(render_html(report))
