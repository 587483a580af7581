"""The mailbox table as the guardrail sees it: governed columns, their values, and events on rows.

Column names are Dataverse's logical names because they are the wire format; readable names for
the policy YAML and for people live next to them here, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain
from types import MappingProxyType
from typing import NamedTuple

from guardrails.message import ExecutionContext
from guardrails.values import Entity, EntityReference, OptionSetValue, Value

MAILBOX = "mailbox"
GUARDRAIL_TAG = "mailbox-guardrails"


class Column(StrEnum):
    INCOMING = "incomingemaildeliverymethod"
    OUTGOING = "outgoingemaildeliverymethod"
    ACT = "actdeliverymethod"
    EMAIL = "emailaddress"
    SERVER_PROFILE = "emailserverprofile"


GOVERNED: tuple[Column, ...] = tuple(Column)
DELIVERY_COLUMNS: tuple[Column, ...] = (Column.INCOMING, Column.OUTGOING, Column.ACT)

# Per column, because the same number means different things: 0 is "None" for incoming and
# outgoing email but "Dynamics 365 for Outlook" for appointments, contacts and tasks.
DELIVERY_METHODS: Mapping[Column, Mapping[str, int]] = {
    Column.INCOMING: {"none": 0, "outlook": 1, "server_side_sync": 2, "forward_mailbox": 3},
    Column.OUTGOING: {"none": 0, "outlook": 1, "server_side_sync": 2},
    Column.ACT: {"outlook": 0, "server_side_sync": 1, "none": 2},
}
_LABELS = {
    "none": "None",
    "outlook": "Dynamics 365 for Outlook",
    "server_side_sync": "Server-Side Synchronization",
    "forward_mailbox": "Forward Mailbox",
}
COLUMN_LABELS: Mapping[Column, str] = {
    Column.INCOMING: "Incoming email",
    Column.OUTGOING: "Outgoing email",
    Column.ACT: "Appointments, contacts and tasks",
    Column.EMAIL: "Email address",
    Column.SERVER_PROFILE: "Server profile",
}


# The default of an event's column maps: shared, so it must be read-only.
_NONE: Mapping[Column, Value] = MappingProxyType({})

_DELIVERY_NAMES: Mapping[Column, Mapping[int, str]] = {
    column: {number: name for name, number in names.items()}
    for column, names in DELIVERY_METHODS.items()
}


def delivery_name(column: Column, number: int) -> str:
    return _DELIVERY_NAMES[column].get(number, str(number))


def describe(column: Column, value: Value) -> str:
    """A value as a person reads it, e.g. 'Forward Mailbox (3)'."""
    if column in DELIVERY_METHODS and isinstance(value, int):
        name = delivery_name(column, value)
        return f"{_LABELS.get(name, 'unknown')} ({value})"
    if isinstance(value, EntityReference):
        return value.name or value.id
    return "(empty)" if value in (None, "") else str(value)


def normalize(column: Column, value: Value) -> Value:
    """The comparable form of a governed column's value (choices as int, addresses as typed)."""
    if isinstance(value, OptionSetValue):
        return value.value
    if column is Column.SERVER_PROFILE and isinstance(value, EntityReference):
        return EntityReference(value.logical_name, value.id.lower(), value.name)
    return value


@dataclass(frozen=True, slots=True)
class MailboxState:
    """A mailbox row as read from Dataverse: the governed columns plus what decisions need."""

    mailbox_id: str
    values: Mapping[Column, Value]
    etag: str | None = None
    regarding: EntityReference | None = None
    owner: EntityReference | None = None
    name: str | None = None
    # Who wrote the row last (`modifiedby`), and its version: after a 412 they say whose change
    # won, and after a lost answer whether the row is what the guardrail wrote.
    modified_by: str | None = None
    version: str | None = None
    # emailrouteraccessapproval: 1 Approved; None when not read.
    approval: int | None = None


class MailboxEvent(NamedTuple):
    """What a Create or Update message says about one mailbox row.

    A NamedTuple (a plain immutable record, made for every message): a tuple is built in one
    step where a frozen dataclass sets each field in turn.
    """

    message: str
    mailbox_id: str
    organization_id: str
    correlation_id: str | None = None
    initiating_user_id: str | None = None
    # Governed columns the caller set, with the values they set.
    changed: Mapping[Column, Value] = _NONE
    # Governed columns' values before the change, where a pre image carries them.
    previous: Mapping[Column, Value] = _NONE
    regarding: EntityReference | None = None
    owner: EntityReference | None = None
    name: str | None = None
    row_version: str | None = None
    # The `tag` shared variables anywhere in the context chain. Any caller can set a tag, so it
    # is shown in notes and traces but never decides anything.
    tags: frozenset[str] = frozenset()
    # Every InitiatingUserId in the context and its ParentContext chain: the guardrail's own
    # writes are recognised by these (compared with its WhoAmI), never by a tag.
    initiators: frozenset[str] = frozenset()
    # The message does not say what changed (oversize, or no Target): read the row.
    incomplete: bool = False


def _full_images(images: Mapping[str, Entity]) -> list[Entity]:
    # The automatic AsynchronousStepPrimaryName image holds only the key and the name.
    return [images[key] for key in images if key != "AsynchronousStepPrimaryName"]


def _sent_columns(context: ExecutionContext, target: Entity) -> set[str]:
    """Columns the caller really sent: the original request's Target when there is one."""
    parent = context.parent
    while parent is not None:
        parent_target = parent.target
        if (
            isinstance(parent_target, Entity)
            and parent_target.logical_name == target.logical_name
            and parent_target.id == target.id
        ):
            return set(parent_target.attributes)
        parent = parent.parent
    return set(target.attributes)


def _chain(context: ExecutionContext) -> list[ExecutionContext]:
    chain: list[ExecutionContext] = []
    current: ExecutionContext | None = context
    while current is not None:
        chain.append(current)
        current = current.parent
    return chain


def _tags(chain: list[ExecutionContext]) -> frozenset[str]:
    tags = (c.shared_variables.get("tag") for c in chain)
    return frozenset(tag for tag in tags if isinstance(tag, str))


def _initiators(chain: list[ExecutionContext]) -> frozenset[str]:
    return frozenset(c.initiating_user_id for c in chain if c.initiating_user_id)


def _lookup(column: str, sources: list[Mapping[str, Value]]) -> EntityReference | None:
    for source in sources:
        value = source.get(column)
        if isinstance(value, EntityReference):
            return value
    return None


def _carrying(column: Column, images: list[Entity]) -> Entity | None:
    """The first image that carries the column: the only one whose value is read."""
    return next((image for image in images if column in image.attributes), None)


def mailbox_event(context: ExecutionContext) -> MailboxEvent:
    """The mailbox-level view of a Create or Update context on the mailbox table.

    Only what this view reads is decoded (see `Pairs`): a malformed value it reads raises
    ContractError, which `decide` turns into the message's rejection.
    """
    target = context.target
    pre = _full_images(context.pre_images)
    post = _full_images(context.post_images)
    row_version = None
    incomplete = context.oversize or not isinstance(target, Entity)
    changed: dict[Column, Value] = {}
    previous: dict[Column, Value] = {}
    sources: list[Mapping[str, Value]] = []
    if isinstance(target, Entity):
        row_version = target.row_version
        sources.append(target.attributes)
        sent = _sent_columns(context, target)
        for column in GOVERNED:
            if column not in target.attributes or column not in sent:
                continue
            new = normalize(column, target.attributes[column])
            before = _carrying(column, pre)
            if before is not None:
                previous[column] = normalize(column, before.attributes[column])
                if previous[column] == new and context.message_name == "Update":
                    continue
            changed[column] = new
    sources.extend(image.attributes for image in (*post, *pre))
    # The automatic AsynchronousStepPrimaryName image holds the row's primary name (only that):
    # it is read last, only when no other image has the name.
    named = chain(sources, (image.attributes for image in context.post_images.values()))
    name = next((text for s in named if isinstance(text := s.get("name"), str)), None)
    contexts = _chain(context)
    return MailboxEvent(
        message=context.message_name,
        mailbox_id=context.primary_entity_id,
        organization_id=context.organization_id,
        correlation_id=context.correlation_id,
        initiating_user_id=context.initiating_user_id,
        changed=changed,
        previous=previous,
        regarding=_lookup("regardingobjectid", sources),
        owner=_lookup("ownerid", sources),
        name=name,
        row_version=row_version,
        tags=_tags(contexts),
        initiators=_initiators(contexts),
        incomplete=incomplete,
    )


def webapi_body(patch: Mapping[Column, Value]) -> dict[str, object]:
    """The PATCH body that writes `patch`: choices as numbers, lookups as @odata.bind."""
    body: dict[str, object] = {}
    for column, value in patch.items():
        if isinstance(value, EntityReference):
            body[f"{column.value}@odata.bind"] = f"/{value.logical_name}s({value.id})"
        elif isinstance(value, OptionSetValue):
            body[column.value] = value.value
        else:
            body[column.value] = value
    return body


def patch_from_body(body: Mapping[str, object]) -> dict[Column, Value]:
    """`webapi_body` read back (a stored plan): numbers and text as they are, binds as lookups."""
    patch: dict[Column, Value] = {}
    for key, value in body.items():
        name, _, annotation = key.partition("@")
        column = Column(name)
        if annotation == "odata.bind" and isinstance(value, str):
            entity_set, _, rest = value.strip("/").partition("(")
            patch[column] = EntityReference(entity_set.removesuffix("s"), rest.rstrip(")"))
        else:
            patch[column] = value  # type: ignore[assignment]
    return patch
