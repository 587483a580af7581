"""`guardrails audit`: the stored audit trail, filtered and printed as a table, JSON or CSV.

CSV cells are defused against formula injection (a leading = + - @ is quoted away): mailbox
addresses and names in these records are typed by users.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

COLUMNS = (
    "decided_at",
    "message_id",
    "mailbox_id",
    "result",
    "outcome",
    "wrote",
    "notified",
    "reason",
)


def parse_since(text: str) -> datetime:
    """ISO 8601, `Z` included; a time without a zone is taken as UTC."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _cell(value: Any) -> str:
    text = (
        ", ".join(map(str, value))
        if isinstance(value, list)
        else ""
        if value is None
        else str(value)
    )
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render_records(
    records: Iterable[dict[str, Any]], fmt: str, write: Callable[[str], None]
) -> int:
    items = list(records)
    if fmt == "json":
        write(json.dumps(items, indent=2, default=str))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        for record in items:
            writer.writerow([_cell(record.get(column)) for column in COLUMNS])
        write(buffer.getvalue().rstrip("\n"))
    else:
        for record in items:
            write(
                f"{record.get('decided_at', '?')}  {record.get('outcome', '?'):<10} "
                f"{record.get('result', '?'):<12} mailbox {record.get('mailbox_id') or '-'}"
                f"  wrote={record.get('wrote')}  {_cell(record.get('reason'))[:120]}"
            )
        write(f"{len(items)} record(s)")
    return len(items)
