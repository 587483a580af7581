"""The audit trail and the failure log: what was decided, and what could not be processed.

Audit records are partitioned by the UTC day they were decided on, with row keys that sort by
time, so `guardrails audit --since` reads only the days it needs. Every record is also logged
(Application Insights keeps it); this table is the copy an admin can query without a workspace.

A failure is a message that will never succeed as it is (not JSON, another organization, ids
that are not GUIDs, retries exhausted). It is kept with its raw body, byte for byte, split over
binary properties, so `guardrails dlq resubmit` can send exactly what arrived once the cause is
fixed; one row per body, so a redelivery of the same body records once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from guardrails.clients.tables import Entity, Table

_CHUNK = 60 * 1024  # under the 64 KiB a binary property holds
_MAX_CHUNKS = 15  # 900 KiB: above the largest body the worker reads, under the 1 MiB entity
_FAILURES = "failures"
_RECORD_LIMIT = 30_000  # characters of JSON kept whole; a longer record keeps its summary


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


class AuditTrail:
    def __init__(self, table: Table) -> None:
        self._table = table

    def append(self, record: Mapping[str, Any], *, at: datetime | None = None) -> None:
        """Store one audit record (the same dict that is logged)."""
        moment = at or datetime.now(UTC)
        text = json.dumps(record, sort_keys=True, default=str)
        if len(text) > _RECORD_LIMIT:
            summary = {k: record.get(k) for k in _SUMMARY_FIELDS}
            text = json.dumps({**summary, "truncated": True}, default=str)
        row_key = f"{moment.strftime('%H%M%S%f')}-{uuid.uuid4().hex[:12]}"
        self._table.upsert(
            Entity(
                _day(moment),
                row_key,
                {
                    "decided_at": moment,
                    "message_id": _text(record.get("message_id")),
                    "mailbox_id": _text(record.get("mailbox_id")),
                    "outcome": _text(record.get("outcome")),
                    "result": _text(record.get("result")),
                    "wrote": bool(record.get("wrote")),
                    "record": text,
                },
            )
        )

    def query(
        self,
        *,
        since: datetime | None = None,
        mailbox_id: str | None = None,
        outcome: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Records decided at or after `since` (default: the last 7 days), oldest first."""
        start = since or datetime.now(UTC) - timedelta(days=7)
        clauses = ["PartitionKey ge @day", "decided_at ge @since"]
        parameters: dict[str, str | datetime] = {"day": _day(start), "since": start}
        if mailbox_id:
            clauses.append("mailbox_id eq @mailbox")
            parameters["mailbox"] = mailbox_id.lower()
        if outcome:
            clauses.append("outcome eq @outcome")
            parameters["outcome"] = outcome
        for entity in self._table.query(" and ".join(clauses), parameters=parameters):
            raw = entity.properties.get("record")
            record = json.loads(raw) if isinstance(raw, str) else {}
            record.setdefault("decided_at", _iso(entity.properties.get("decided_at")))
            yield record


_SUMMARY_FIELDS = (
    "result",
    "message_id",
    "mailbox_id",
    "outcome",
    "reason",
    "wrote",
    "notified",
    "errors",
    "correlation_id",
    "initiating_user_id",
)


@dataclass(frozen=True, slots=True)
class Failure:
    """A message the guardrail gave up on, as `guardrails dlq` lists it."""

    key: str
    message_id: str | None
    reason: str
    code: str
    recorded_at: datetime | None
    body: bytes
    properties: dict[str, Any]
    attempts: int


class FailureLog:
    def __init__(self, table: Table) -> None:
        self._table = table

    def record(
        self,
        key: str,
        body: bytes,
        *,
        message_id: str | None,
        reason: str,
        code: str,
        properties: Mapping[str, Any],
        attempt: int,
    ) -> None:
        """Keep the body whole with the reason; recording the same body again replaces it."""
        chunks = [body[i : i + _CHUNK] for i in range(0, len(body), _CHUNK)][:_MAX_CHUNKS]
        values: dict[str, Any] = {
            "message_id": _text(message_id),
            "reason": reason[:20_000],
            "code": code,
            "recorded_at": datetime.now(UTC),
            "size": len(body),
            "chunks": len(chunks),
            "attempt": attempt,
            "properties": json.dumps({str(k): str(v) for k, v in properties.items()})[:20_000],
        }
        values.update({f"body{i}": chunk for i, chunk in enumerate(chunks)})
        self._table.upsert(Entity(_FAILURES, key, values))

    def entries(self) -> Iterator[Failure]:
        for entity in self._table.query("PartitionKey eq @p", parameters={"p": _FAILURES}):
            yield _failure(entity)

    def get(self, key: str) -> Failure | None:
        entity = self._table.get(_FAILURES, key)
        return _failure(entity) if entity is not None else None

    def find(self, message_id: str) -> list[Failure]:
        """Failures by Service Bus message id or by key (ids need not be unique)."""
        by_key = self.get(message_id) if message_id else None
        if by_key is not None:
            return [by_key]
        return [f for f in self.entries() if f.message_id == message_id]

    def remove(self, key: str) -> None:
        self._table.delete(_FAILURES, key)


def _failure(entity: Entity) -> Failure:
    props = entity.properties
    count = props.get("chunks")
    parts = [props.get(f"body{i}") for i in range(count if isinstance(count, int) else 0)]
    raw_properties = props.get("properties")
    recorded = props.get("recorded_at")
    attempt = props.get("attempt")
    return Failure(
        key=entity.row_key,
        message_id=_text(props.get("message_id")),
        reason=str(props.get("reason", "")),
        code=str(props.get("code", "")),
        recorded_at=recorded if isinstance(recorded, datetime) else None,
        body=b"".join(part for part in parts if isinstance(part, bytes)),
        properties=json.loads(raw_properties) if isinstance(raw_properties, str) else {},
        attempts=attempt if isinstance(attempt, int) else 1,
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _iso(value: object) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else None
