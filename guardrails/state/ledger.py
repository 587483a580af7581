"""Each message's progress, and the notification it owes: so nothing is done twice or lost.

A message is known by the SHA-256 of its body, so a Service Bus redelivery, a scheduled retry
copy and a second post of the same event by Dataverse are all recognised as the same work. Its
ledger row moves through recovery points (Stripe's idempotency keys are the model):

    decided -> writing -> written -> done

`writing` is recorded *before* the PATCH, with the ETag it is conditional on: if the answer is
lost, the next attempt knows a write may have happened and checks the row before acting again.
`written` is recorded together with the outbox row (one transaction, one partition), so the owner
is owed exactly one notification per revert. The outbox row moves pending -> sending -> sent;
`sending` likewise says "a send may have happened: look before sending again".

Every transition is etag-conditional; `EntityChanged` means another instance moved the row first.
A lease (renewed at each transition) keeps a second instance from working on the same message at
the same time; correctness does not depend on it, only on the conditional transitions.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from guardrails.clients.tables import Create, Entity, Table, Update

LEDGER_ROW = "message"
OUTBOX_ROW = "notification"
DEFAULT_LEASE = 60.0


class Step(StrEnum):
    DECIDED = "decided"  # claimed; the guardrail has written nothing yet
    WRITING = "writing"  # a PATCH was sent; its outcome is not known until looked at
    WRITTEN = "written"  # the write is known to have committed (or none was needed)
    DONE = "done"  # every step finished; a redelivery has nothing to do


class Sending(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # a send was attempted; whether it went out is not known yet
    SENT = "sent"


def message_key(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Progress:
    """The ledger row of one message."""

    key: str
    step: Step
    etag: str
    holder: str
    lease_until: float
    message_id: str | None = None
    mailbox_id: str | None = None
    plan: Mapping[str, Any] = field(default_factory=dict)  # Decision.to_dict()
    wrote: bool = False
    write_etag: str | None = None  # the If-Match of the write in flight (step writing)
    written_version: str | None = None
    approval: str | None = None  # what became of restoring approval, once tried
    notified: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Notice:
    """The outbox row: one notification, rendered once, sent at most once."""

    key: str
    state: Sending
    etag: str
    internet_message_id: str
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    html: str


class Ledger:
    def __init__(
        self,
        table: Table,
        *,
        lease: float = DEFAULT_LEASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._lease = lease
        self._clock = clock

    @property
    def lease(self) -> float:
        return self._lease

    def new_holder(self) -> str:
        return uuid.uuid4().hex

    # -- the ledger row ----------------------------------------------------------------------

    def get(self, key: str) -> Progress | None:
        entity = self._table.get(key, LEDGER_ROW)
        return _progress(entity) if entity is not None else None

    def claim(
        self,
        key: str,
        *,
        holder: str,
        message_id: str | None,
        mailbox_id: str | None,
        plan: Mapping[str, Any],
    ) -> Progress:
        """Start the work; `EntityExists` when another attempt already started it."""
        entity = self._entity(
            key,
            step=Step.DECIDED,
            holder=holder,
            message_id=message_id,
            mailbox_id=mailbox_id,
            plan=json.dumps(plan, default=str),
        )
        etag = self._table.create(entity)
        return _progress(_with_etag(entity, etag))

    def take_over(self, progress: Progress, *, holder: str) -> Progress:
        """Hold the lease of a row whose last holder stopped (crashed, or its lease ran out)."""
        return self._move(progress, holder=holder)

    def lease_left(self, progress: Progress, *, holder: str) -> float:
        """Seconds until another holder's lease runs out (0 when free or ours)."""
        if progress.holder == holder:
            return 0.0
        return max(0.0, progress.lease_until - self._clock())

    def decided(self, progress: Progress, *, plan: Mapping[str, Any]) -> Progress:
        return self._move(progress, step=Step.DECIDED, plan=json.dumps(plan, default=str))

    def writing(self, progress: Progress, *, etag: str) -> Progress:
        return self._move(progress, step=Step.WRITING, write_etag=etag)

    def written(
        self,
        progress: Progress,
        *,
        wrote: bool,
        version: str | None,
        plan: Mapping[str, Any],
        notice: Notice | None,
    ) -> tuple[Progress, Notice | None]:
        """The write committed (or none was needed): record it and the notification it owes,
        in one transaction, so neither exists without the other."""
        entity = self._entity(
            progress.key,
            step=Step.WRITTEN,
            holder=progress.holder,
            wrote=wrote,
            written_version=version,
            plan=json.dumps(plan, default=str),
        )
        operations: list[Create | Update] = [Update(entity, etag=progress.etag)]
        if notice is not None:
            operations.append(Create(_notice_entity(notice, Sending.PENDING)))
        etags = self._table.transact(operations)
        moved = _progress(_merge(progress, entity, etags[0]))
        if notice is None:
            return moved, None
        assert etags[1] is not None
        return moved, _with_state(notice, Sending.PENDING, etags[1])

    def approval(self, progress: Progress, *, outcome: str) -> Progress:
        return self._move(progress, approval=outcome)

    def done(
        self, progress: Progress, *, notified: tuple[str, ...], errors: tuple[str, ...]
    ) -> Progress:
        return self._move(
            progress,
            step=Step.DONE,
            notified=json.dumps(list(notified)),
            errors=json.dumps(list(errors)),
        )

    # -- the outbox row ----------------------------------------------------------------------

    def notice(self, key: str) -> Notice | None:
        entity = self._table.get(key, OUTBOX_ROW)
        return _notice(entity) if entity is not None else None

    def sending(self, notice: Notice) -> Notice:
        """Claim the send: only one attempt moves pending -> sending (etag-conditional)."""
        etag = self._table.update(_notice_entity(notice, Sending.SENDING), etag=notice.etag)
        return _with_state(notice, Sending.SENDING, etag)

    def sent(self, notice: Notice) -> Notice:
        etag = self._table.update(_notice_entity(notice, Sending.SENT), etag=notice.etag)
        return _with_state(notice, Sending.SENT, etag)

    # -- internals ----------------------------------------------------------------------------

    def _entity(self, key: str, *, holder: str, **values: Any) -> Entity:
        props: dict[str, Any] = {
            "holder": holder,
            "lease_until": float(self._clock() + self._lease),
            "updated": datetime.now(UTC),
        }
        for name, value in values.items():
            props[name] = value.value if isinstance(value, StrEnum) else value
        return Entity(key, LEDGER_ROW, props)

    def _move(self, progress: Progress, **values: Any) -> Progress:
        holder = values.pop("holder", progress.holder)
        entity = self._entity(progress.key, holder=holder, **values)
        etag = self._table.update(entity, etag=progress.etag)
        return _progress(_merge(progress, entity, etag))


def _merge(progress: Progress, entity: Entity, etag: str | None) -> Entity:
    """The row after a MERGE of `entity` into what `progress` was read from."""
    base: dict[str, Any] = {
        "step": progress.step.value,
        "holder": progress.holder,
        "lease_until": progress.lease_until,
        "message_id": progress.message_id,
        "mailbox_id": progress.mailbox_id,
        "plan": json.dumps(dict(progress.plan), default=str),
        "wrote": progress.wrote,
        "write_etag": progress.write_etag,
        "written_version": progress.written_version,
        "approval": progress.approval,
        "notified": json.dumps(list(progress.notified)),
        "errors": json.dumps(list(progress.errors)),
    }
    base.update({k: v for k, v in entity.properties.items() if v is not None})
    assert etag is not None
    return Entity(progress.key, LEDGER_ROW, base, etag)


def _with_etag(entity: Entity, etag: str) -> Entity:
    return Entity(entity.partition_key, entity.row_key, entity.properties, etag)


def _progress(entity: Entity) -> Progress:
    p = entity.properties
    plan = p.get("plan")
    notified = p.get("notified")
    errors = p.get("errors")
    lease = p.get("lease_until")
    assert entity.etag is not None
    return Progress(
        key=entity.partition_key,
        step=Step(str(p.get("step", Step.DECIDED.value))),
        etag=entity.etag,
        holder=str(p.get("holder", "")),
        lease_until=float(lease) if isinstance(lease, int | float) else 0.0,
        message_id=_str(p.get("message_id")),
        mailbox_id=_str(p.get("mailbox_id")),
        plan=json.loads(plan) if isinstance(plan, str) else {},
        wrote=bool(p.get("wrote")),
        write_etag=_str(p.get("write_etag")),
        written_version=_str(p.get("written_version")),
        approval=_str(p.get("approval")),
        notified=tuple(json.loads(notified)) if isinstance(notified, str) else (),
        errors=tuple(json.loads(errors)) if isinstance(errors, str) else (),
    )


def _notice_entity(notice: Notice, state: Sending) -> Entity:
    return Entity(
        notice.key,
        OUTBOX_ROW,
        {
            "state": state.value,
            "internet_message_id": notice.internet_message_id,
            "sender": notice.sender,
            "to": json.dumps(list(notice.to)),
            "cc": json.dumps(list(notice.cc)),
            "subject": notice.subject,
            "html": notice.html,
            "updated": datetime.now(UTC),
        },
    )


def _notice(entity: Entity) -> Notice:
    p = entity.properties
    assert entity.etag is not None
    return Notice(
        key=entity.partition_key,
        state=Sending(str(p.get("state"))),
        etag=entity.etag,
        internet_message_id=str(p.get("internet_message_id")),
        sender=str(p.get("sender")),
        to=tuple(json.loads(str(p.get("to", "[]")))),
        cc=tuple(json.loads(str(p.get("cc", "[]")))),
        subject=str(p.get("subject", "")),
        html=str(p.get("html", "")),
    )


def _with_state(notice: Notice, state: Sending, etag: str | None) -> Notice:
    assert etag is not None
    return Notice(
        notice.key,
        state,
        etag,
        notice.internet_message_id,
        notice.sender,
        notice.to,
        notice.cc,
        notice.subject,
        notice.html,
    )


def _str(value: object) -> str | None:
    return None if value is None else str(value)
