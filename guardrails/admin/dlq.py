"""`guardrails dlq`: everything that did not succeed, from both places it can be.

- `guardrail`: messages the worker recorded itself as never going to succeed (not JSON, another
  organization, ids that are not GUIDs, retries exhausted), with the raw body and the reason;
  they were completed on the queue so they burn no deliveries.
- `servicebus`: the queue's dead-letter sub-queue: what Service Bus dead-lettered itself (after
  `maxDeliveryCount`, when the worker could not even record a failure, or messages expired).

`resubmit` sends the original body back to the queue, then removes the entry: if the removal is
lost the entry is shown again, and resubmitting it twice is harmless (the ledger recognises the
body). Application properties the worker added for scheduled retries are dropped, so a
resubmitted message starts with a fresh attempt count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from guardrails.clients.servicebus import DeadLetter, QueueClient
from guardrails.settlement import ATTEMPT_PROPERTY, FIRST_ENQUEUED_PROPERTY
from guardrails.state.records import Failure, FailureLog

GUARDRAIL = "guardrail"
SERVICEBUS = "servicebus"
_RETRY_PROPERTIES = {ATTEMPT_PROPERTY, FIRST_ENQUEUED_PROPERTY}


@dataclass(frozen=True, slots=True)
class Entry:
    """One message that did not succeed, whichever place holds it."""

    message_id: str | None
    source: str
    reason: str
    description: str
    when: datetime | None
    size: int
    key: str | None  # the guardrail's own key (SHA-256 of the body); None for Service Bus
    sequence_number: int | None
    body: bytes
    properties: dict[str, Any]
    content_type: str | None = None

    def to_dict(self, *, with_body: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "source": self.source,
            "reason": self.reason,
            "description": self.description,
            "when": self.when.isoformat().replace("+00:00", "Z") if self.when else None,
            "size": self.size,
            "key": self.key,
            "sequence_number": self.sequence_number,
        }
        if with_body:
            data["properties"] = self.properties
            data["body"] = self.body.decode("utf-8", "backslashreplace")
        return data


def _from_failure(failure: Failure) -> Entry:
    return Entry(
        message_id=failure.message_id,
        source=GUARDRAIL,
        reason=failure.code,
        description=failure.reason,
        when=failure.recorded_at,
        size=len(failure.body),
        key=failure.key,
        sequence_number=None,
        body=failure.body,
        properties=failure.properties,
    )


def _from_dead_letter(letter: DeadLetter) -> Entry:
    return Entry(
        message_id=letter.message_id,
        source=SERVICEBUS,
        reason=letter.reason or "(none)",
        description=letter.description or "",
        when=letter.enqueued_at,
        size=len(letter.body),
        key=None,
        sequence_number=letter.sequence_number,
        body=letter.body,
        properties=letter.properties,
        content_type=letter.content_type,
    )


class DeadLetters:
    def __init__(self, failures: FailureLog, queue: QueueClient | None) -> None:
        self._failures = failures
        self._queue = queue

    def entries(self) -> list[Entry]:
        found = [_from_failure(failure) for failure in self._failures.entries()]
        if self._queue is not None:
            found.extend(_from_dead_letter(letter) for letter in self._queue.dead_letters())
        return found

    def find(self, message_id: str) -> list[Entry]:
        return [e for e in self.entries() if message_id in (e.message_id, e.key)]

    def resubmit(self, message_id: str | None) -> list[Entry]:
        """Send back the entries with this id (every entry when None); returns what was sent."""
        if self._queue is None:
            raise ValueError("resubmitting needs the Service Bus connection (SERVICEBUS...)")
        queue = self._queue
        sent: list[Entry] = []
        for failure in list(self._failures.entries()):
            entry = _from_failure(failure)
            if message_id is None or message_id in (entry.message_id, entry.key):
                self._send(entry)
                self._failures.remove(failure.key)
                sent.append(entry)

        def wanted(letter: DeadLetter) -> bool:
            return message_id is None or letter.message_id == message_id

        for letter in queue.take_dead_letters(wanted):
            entry = _from_dead_letter(letter)
            self._send(entry)  # completed (removed) by take_dead_letters after this returns
            sent.append(entry)
        return sent

    def purge(self) -> int:
        removed = 0
        for failure in list(self._failures.entries()):
            self._failures.remove(failure.key)
            removed += 1
        if self._queue is not None:
            removed += sum(1 for _ in self._queue.take_dead_letters(lambda _letter: True))
        return removed

    def _send(self, entry: Entry) -> None:
        assert self._queue is not None
        properties = {k: v for k, v in entry.properties.items() if k not in _RETRY_PROPERTIES}
        properties.pop("DeadLetterReason", None)
        properties.pop("DeadLetterErrorDescription", None)
        self._queue.send(
            entry.body,
            message_id=entry.message_id,
            properties=properties,
            content_type=entry.content_type or "application/json",
        )


def render_entries(entries: Iterable[Entry], fmt: str, write: Callable[[str], None]) -> None:
    items = list(entries)
    if fmt == "json":
        write(json.dumps([entry.to_dict() for entry in items], indent=2))
        return
    if not items:
        write("Nothing failed: no recorded failures and no dead-lettered messages.")
        return
    for entry in items:
        when = entry.when.isoformat(timespec="seconds") if entry.when else "?"
        write(
            f"{entry.message_id or '(no id)'}  [{entry.source}] {when}  {entry.reason}: "
            f"{_one_line(entry.description)}"
        )
    write(f"{len(items)} message(s). Fix the cause, then: guardrails dlq resubmit MESSAGE_ID")


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
