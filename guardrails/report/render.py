"""The report as JSON, CSV and a plain-text table (the HTML page is `html.py`).

Mailbox names and addresses are typed by users, so every renderer treats them as hostile: the
table shows control characters as escapes (no terminal escape sequences get through), CSV
cells that a spreadsheet would run as a formula are defused, JSON is escaped by the encoder.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Iterator
from typing import Any, TextIO

from guardrails.mailbox import COLUMN_LABELS, describe
from guardrails.report.model import (
    HIJACK_RULE,
    Entry,
    Finding,
    MailboxFindings,
    Report,
    Tally,
    approval_label,
    plain,
)

CSV_HEADER = (
    "mailbox_id",
    "mailbox_name",
    "owner_id",
    "owner_name",
    "owner_email",
    "business_unit",
    "policy",
    "rule",
    "column",
    "actual",
    "expected",
    "enforced",
    "approval",
    "modified_by",
    "modified_on",
    "hijack_suspect",
)
# What a spreadsheet reads as the start of a formula (or, after a tab/CR, may).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# -- JSON -----------------------------------------------------------------------------------------


def _finding_json(finding: Finding) -> dict[str, object]:
    return {
        "column": finding.column.value,
        "actual": plain(finding.actual),
        "expected": plain(finding.expected),
    }


def entry_json(entry: Entry, *, preview: bool) -> dict[str, object]:
    data: dict[str, object] = {
        "mailbox_id": entry.mailbox_id,
        "mailbox_name": entry.row.state.name,
        "owner": entry.owner.to_dict(),
        "findings": [_finding_json(f) for f in entry.current.findings],
        "approval": approval_label(entry.row.state.approval),
        "modified_by": entry.modified_by.to_dict(),
        "modified_on": entry.row.modified_on,
        "hijack_suspect": entry.hijack is not None,
    }
    if preview:
        candidate = entry.candidate.findings if entry.candidate else ()
        data["candidate_findings"] = [_finding_json(f) for f in candidate]
    return data


def summary_json(report: Report) -> dict[str, object]:
    summary = report.summary
    data: dict[str, object] = {
        "generated_at": report.generated_at,
        "organization_id": report.organization_id,
        "dataverse_url": report.dataverse_url,
        "policy": report.policy,
        "scanned": summary.scanned,
        "hijack_suspects": summary.hijack_suspects,
        **summary.current.to_dict(),
        "hijack_suspects_by_business_unit": dict(sorted(summary.hijack_by_business_unit.items())),
        "owner_not_found": summary.owner_not_found,
        "accepted_values": report.accepted_values,
    }
    if summary.candidate is not None:
        data["preview"] = {
            "policy": report.candidate_policy,
            **summary.candidate.to_dict(),
            "newly_non_compliant": summary.newly_non_compliant,
            "no_longer_non_compliant": summary.no_longer_non_compliant,
        }
    return data


def write_json(report: Report, out: TextIO) -> None:
    document = {
        "summary": summary_json(report),
        "mailboxes": [entry_json(e, preview=report.preview) for e in report.entries],
    }
    json.dump(document, out, indent=2)
    out.write("\n")


# -- CSV ------------------------------------------------------------------------------------------


def csv_cell(value: object) -> object:
    """A cell as written: text a spreadsheet would run as a formula gets a leading quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def csv_rows(report: Report) -> Iterator[list[object]]:
    """One row per finding (per policy in a preview), and one per hijack suspicion."""
    for entry in report.entries:
        state, owner = entry.row.state, entry.owner
        before = [entry.mailbox_id, state.name, owner.id, owner.name, owner.email]
        before.append(entry.row.business_unit)
        after = [
            approval_label(state.approval),
            entry.modified_by.name or entry.modified_by.id,
            entry.row.modified_on,
            "yes" if entry.hijack else "no",
        ]
        results: list[tuple[str, MailboxFindings | None]] = [("current", entry.current)]
        if report.preview:
            results.append(("candidate", entry.candidate))
        for label, result in results:
            for finding in result.findings if result else ():
                what = [finding.rule, finding.column.value]
                values = [plain(finding.actual), plain(finding.expected), finding.enforced]
                yield [*before, label, *what, *values, *after]
        if entry.hijack is not None:
            hijack = [HIJACK_RULE, "emailaddress", entry.hijack.address, entry.hijack.own, ""]
            yield [*before, "", *hijack, *after]


def write_csv(report: Report, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for row in csv_rows(report):
        writer.writerow([csv_cell(cell) for cell in row])


# -- table ----------------------------------------------------------------------------------------


def printable(text: object) -> str:
    """Text for a terminal: control characters (escape sequences among them) as escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _fit(text: str, width: int) -> str:
    if _width(text) <= width:
        return text + " " * (width - _width(text))
    cut = text
    while _width(cut) > width - 1:
        cut = cut[:-1]
    return cut + "…" + " " * (width - 1 - _width(cut))


def describe_finding(finding: Finding) -> str:
    label = COLUMN_LABELS[finding.column]
    actual = describe(finding.column, finding.actual)
    if finding.expected is None:
        return f"{label}: {actual} (no safe value known)"
    return f"{label}: {actual} -> {describe(finding.column, finding.expected)}"


def _counts(tally: Tally) -> list[str]:
    return [
        "  by rule: " + (_pairs(tally.by_rule) or "-"),
        "  by column: " + (_pairs(tally.by_column) or "-"),
        "  by business unit: " + (_pairs(tally.by_business_unit) or "-"),
    ]


def _pairs(counts: Any) -> str:
    return ", ".join(f"{printable(k)} {v}" for k, v in sorted(counts.items()))


def write_table(report: Report, out: TextIO) -> None:
    summary = report.summary
    lines = [
        f"Mailbox compliance report for {report.dataverse_url} ({report.organization_id}), "
        f"{report.generated_at}",
        f"Scanned {summary.scanned} mailboxes under {printable(report.policy)}: "
        f"{summary.current.non_compliant} non-compliant, {summary.hijack_suspects} hijack "
        f"suspect(s), {summary.current.ignored} exempt or out of scope.",
        *_counts(summary.current),
    ]
    if summary.candidate is not None:
        lines += [
            f"Candidate {printable(report.candidate_policy)}: "
            f"{summary.candidate.non_compliant} non-compliant "
            f"({summary.newly_non_compliant} newly, {summary.no_longer_non_compliant} no longer).",
            *_counts(summary.candidate),
        ]
    if summary.owner_not_found:
        lines.append(f"{summary.owner_not_found} mailbox(es) whose owner the directory lacks.")
    lines += [f"Accepted values: {report.accepted_values}", ""]
    out.write("\n".join(lines) + "\n")
    columns = [("MAILBOX", 28), ("OWNER", 28), ("BUSINESS UNIT", 16), ("APPROVAL", 16)]
    columns += [("MODIFIED BY", 22), ("MODIFIED ON", 20), ("HIJACK", 6)]
    out.write(" ".join(_fit(name, width) for name, width in columns).rstrip() + "\n")
    for entry in report.entries:
        owner = entry.owner.email or entry.owner.name or entry.owner.id or ""
        cells = [
            entry.name or entry.mailbox_id,
            owner,
            entry.row.business_unit or "",
            approval_label(entry.row.state.approval) or "",
            entry.modified_by.name or entry.modified_by.id or "",
            entry.row.modified_on or "",
            "YES" if entry.hijack else "",
        ]
        row = " ".join(_fit(printable(c), w) for c, (_, w) in zip(cells, columns, strict=True))
        out.write(row.rstrip() + "\n")
        for line in _details(entry, preview=report.preview):
            out.write(f"    {printable(line)}\n")
    if not report.entries:
        out.write("(nothing to report)\n")


def _details(entry: Entry, *, preview: bool) -> Iterator[str]:
    if entry.hijack is not None:
        own = entry.hijack.own or "(none known)"
        yield f"hijack suspect: approved address {entry.hijack.address}, the owner's is {own}"
    prefix = "current: " if preview else ""
    for finding in entry.current.findings:
        yield prefix + describe_finding(finding)
    if preview and entry.candidate is not None:
        for finding in entry.candidate.findings:
            yield "candidate: " + describe_finding(finding)
