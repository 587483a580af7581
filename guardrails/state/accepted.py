"""The values the guardrail accepted for each mailbox, so later checks tell exception from drift.

Two things are recorded: a governed value an exempt user set (an accepted exception: the sweep
and later checks leave it alone), and the state the guardrail itself reverted a column to. Only
the columns a change really touched are recorded, never the whole row, so an exempt
administrator renaming a mailbox does not bless a violation someone else left on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from guardrails.clients.tables import Entity, EntityChanged, EntityExists, StoreUnavailable, Table
from guardrails.mailbox import Column
from guardrails.values import Value, from_json, to_json

_ROW = "accepted"
_RACES = 8


@dataclass(frozen=True, slots=True)
class Accepted:
    """One column's accepted value: what, set by whom, and why it was accepted."""

    value: Value
    by: str | None
    reason: str
    at: str


class AcceptedValues:
    def __init__(self, table: Table) -> None:
        self._table = table

    def get(self, mailbox_id: str) -> dict[Column, Accepted]:
        entity = self._table.get(mailbox_id, _ROW)
        if entity is None:
            return {}
        raw = entity.properties.get("columns")
        stored = json.loads(raw) if isinstance(raw, str) else {}
        return {
            Column(name): Accepted(
                from_json(item["value"]), item.get("by"), item["reason"], item["at"]
            )
            for name, item in stored.items()
            if name in Column._value2member_map_
        }

    def all(self) -> dict[str, dict[Column, Value]]:
        """Every mailbox's accepted values (the sweep loads them once per run; only mailboxes
        an exempt user changed, or the guardrail reverted, have any)."""
        found: dict[str, dict[Column, Value]] = {}
        for entity in self._table.query("RowKey eq @row", parameters={"row": _ROW}):
            raw = entity.properties.get("columns")
            stored = json.loads(raw) if isinstance(raw, str) else {}
            found[entity.partition_key] = {
                Column(name): from_json(item["value"])
                for name, item in stored.items()
                if name in Column._value2member_map_
            }
        return found

    def record(
        self, mailbox_id: str, values: Mapping[Column, Value], *, by: str | None, reason: str
    ) -> None:
        """Merge `values` into the mailbox's accepted values (etag-conditional, so concurrent
        records of different columns both survive)."""
        if not values:
            return
        now = datetime.now(UTC).isoformat()
        for _ in range(_RACES):
            current = self._table.get(mailbox_id, _ROW)
            raw = current.properties.get("columns") if current else None
            stored = json.loads(raw) if isinstance(raw, str) else {}
            for column, value in values.items():
                stored[column.value] = {
                    "value": to_json(value),
                    "by": by,
                    "reason": reason,
                    "at": now,
                }
            entity = Entity(mailbox_id, _ROW, {"columns": json.dumps(stored, sort_keys=True)})
            try:
                if current is None:
                    self._table.create(entity)
                else:
                    assert current.etag is not None
                    self._table.update(entity, etag=current.etag)
                return
            except (EntityExists, EntityChanged):
                continue
        raise StoreUnavailable(
            f"kept changing during {_RACES} attempts to record accepted values",
            table=self._table.name,
            partition_key=mailbox_id,
            row_key=_ROW,
        )
