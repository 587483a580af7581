"""`guardrails register` and `unregister`: the Dataverse side of a deployment, as code.

What the guardrail needs from Dataverse (dataverse-facts.md §4) is computed from the policy and
the queue (:func:`desired`), compared with what Dataverse holds (:func:`read_registration`) by a
pure planner (:func:`plan_registration`), and only the difference is written
(:func:`apply_plan`), in the manner of GitHub's safe-settings: a second run writes nothing, and a
registration that drifted (a step made synchronous in the Plug-in Registration Tool, a column
dropped from the image) is put back in place, keeping its ids.

Everything register creates carries :data:`MARKER` in its ``description``; that is how it finds
its own rows again, and :func:`plan_unregistration` removes exactly those. Rows it did not create
are never changed; when they would interfere (another endpoint posting mailbox changes to the
same queue, someone else's step on the guardrail's endpoint) the plan says so.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import requests

from guardrails.clients.http import ApiClient
from guardrails.errors import GuardrailsError, NotFound, OutcomeUnknown, PermanentServiceError
from guardrails.mailbox import GOVERNED, Column
from guardrails.policy.model import Policy

MARKER = "[mailbox-guardrails]"
DESCRIPTION = f"Posts mailbox changes to the Mailbox Guardrails queue. {MARKER}"
ENDPOINT_NAME = "Mailbox Guardrails"
PRE_IMAGE_ALIAS = "guardrails_pre"  # the key of the pre image in PreEntityImages
MESSAGES = ("Create", "Update")
# What the decisions need besides the governed columns: whose mailbox it is, and its name.
IMAGE_EXTRA = ("regardingobjectid", "ownerid", "name")
# Contract 6 (Queue, persistent) is what the Plug-in Registration Tool writes for a queue; the
# legacy 2 is also a queue. Which one Dataverse keeps is unconfirmed: either reads as a queue.
QUEUE_CONTRACT = 6
QUEUE_CONTRACTS = frozenset({2, 6})
# Without these the key that was written belongs to another rule or queue: it must be written too.
_KEYED = ("authtype", "namespaceaddress", "path", "saskeyname")
ENDPOINT_COLUMNS = (
    "serviceendpointid",
    "name",
    "description",
    "contract",
    "connectionmode",
    "authtype",
    "namespaceaddress",
    "namespaceformat",
    "path",
    "saskeyname",
    "messageformat",
    "userclaim",
    "createdon",
)
STEP_COLUMNS = (
    "sdkmessageprocessingstepid",
    "name",
    "description",
    "mode",
    "stage",
    "rank",
    "supporteddeployment",
    "asyncautodelete",
    "filteringattributes",
    "statecode",
    "statuscode",
    "_eventhandler_value",
    "_sdkmessageid_value",
    "_sdkmessagefilterid_value",
    "createdon",
)
IMAGE_COLUMNS = (
    "sdkmessageprocessingstepimageid",
    "name",
    "description",
    "entityalias",
    "imagetype",
    "messagepropertyname",
    "attributes",
    "_sdkmessageprocessingstepid_value",
    "createdon",
)
_JSON = {"Content-Type": "application/json"}
_ENTITY_ID = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")


class RegistrationError(GuardrailsError):
    """The registration cannot be read or applied; the text says what to do."""


# -- typed values --------------------------------------------------------------------------------


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    KEEP = "keep"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Ref:
    """A row created earlier in the same plan, by its key."""

    key: str


@dataclass(frozen=True, slots=True)
class Bind:
    """A lookup written as ``nav@odata.bind``: an existing row's id, or a row the plan creates."""

    entity_set: str
    target: str | Ref

    def path(self, ids: Mapping[str, str]) -> str:
        target = self.target
        row_id = ids[target.key] if isinstance(target, Ref) else target
        return f"/{self.entity_set}({row_id})"

    def __str__(self) -> str:
        target = self.target
        shown = f"<{target.key}>" if isinstance(target, Ref) else target
        return f"/{self.entity_set}({shown})"


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that is written but never printed (the SAS key)."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "(secret)"


Value = str | int | bool | None | Bind | Secret


@dataclass(frozen=True, slots=True)
class Change:
    """One row: created, changed (``values`` are the differing columns, ``was`` their current
    values), kept as it is, or deleted."""

    action: Action
    entity_set: str
    key: str
    name: str
    id: str | None = None
    values: Mapping[str, Value] = field(default_factory=dict)
    was: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return _KINDS.get(self.entity_set, self.entity_set)

    def summary(self) -> str:
        if self.action is Action.UPDATE:
            return ", ".join(
                f"{column}: (secret) written"
                if isinstance(value, Secret)
                else f"{column}: {_shown(self.was.get(column))} -> {_shown(value)}"
                for column, value in self.values.items()
            )
        if self.action is Action.CREATE:
            return ", ".join(f"{column}={_shown(value)}" for column, value in self.values.items())
        return ""

    def to_dict(self) -> dict[str, object]:
        return {
            "action": self.action.value,
            "kind": self.kind,
            "name": self.name,
            "id": self.id,
            "set": {column: _json(value) for column, value in self.values.items()},
            "was": {
                column: self.was.get(column)
                for column, value in self.values.items()
                if not isinstance(value, Secret)
            }
            if self.action is Action.UPDATE
            else {},
        }

    def row(self) -> tuple[str, ...]:
        return (self.action.value, self.kind, self.name, self.id or "(new)", self.summary())


_KINDS = {
    "serviceendpoints": "service endpoint",
    "sdkmessageprocessingsteps": "step",
    "sdkmessageprocessingstepimages": "step image",
}


def _shown(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _json(value: Value) -> object:
    if isinstance(value, Bind | Secret):
        return str(value)
    return value


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run would do, in the order it would do it; `problems` keep it from being applied."""

    changes: tuple[Change, ...]
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def writes(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action is not Action.KEEP)

    def to_dict(self) -> dict[str, object]:
        return {
            "changes": [c.to_dict() for c in self.changes],
            "notes": list(self.notes),
            "problems": list(self.problems),
        }


@dataclass(frozen=True, slots=True)
class Target:
    """What the registration should be: where Dataverse posts, and which columns matter."""

    namespace: str  # sb://<namespace>.servicebus.windows.net/
    queue: str
    sas_key_name: str
    columns: tuple[str, ...]  # the policy's governed columns: the Update step's filter
    sas_key: str | None = field(default=None, repr=False)
    rotate_key: bool = False

    @property
    def image_attributes(self) -> tuple[str, ...]:
        return (*self.columns, *(c for c in IMAGE_EXTRA if c not in self.columns))


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    values: Mapping[str, Any]

    def get(self, column: str) -> Any:
        return self.values.get(column)

    @property
    def ours(self) -> bool:
        return MARKER in str(self.values.get("description") or "")

    @property
    def name(self) -> str:
        return str(self.values.get("name") or self.id)


@dataclass(frozen=True, slots=True)
class Registration:
    """What Dataverse holds: the Create/Update messages and their mailbox filters, every service
    endpoint, the steps on those filters or on any endpoint, and those steps' images."""

    message_ids: Mapping[str, str]
    filter_ids: Mapping[str, str]
    endpoints: tuple[Row, ...] = ()
    steps: tuple[Row, ...] = ()
    images: tuple[Row, ...] = ()

    def message_of(self, step: Row) -> str | None:
        message_id = str(step.get("_sdkmessageid_value") or "").lower()
        return next((m for m, i in self.message_ids.items() if i == message_id), None)


def governed_columns(policy: Policy) -> tuple[str, ...]:
    """The columns a policy governs, in the mailbox table's order: the Update step's filter."""
    rules = policy.rules
    columns: set[Column] = set()
    if rules.delivery_methods is not None:
        columns.update(rules.delivery_methods.expected())
    if rules.email_address is not None:
        columns.add(Column.EMAIL)
    if rules.server_profile is not None:
        columns.add(Column.SERVER_PROFILE)
    return tuple(column.value for column in GOVERNED if column in columns)


def normalize_namespace(text: str) -> str:
    """``sb://<host>/`` from ``sb://host/``, ``sb://host`` or ``host``; ValueError otherwise."""
    value = text.strip()
    if "://" not in value:
        value = f"sb://{value}"
    parts = urlsplit(value)
    host = parts.hostname or ""
    if parts.scheme.lower() != "sb" or "." not in host or parts.path.strip("/") or parts.query:
        raise ValueError(
            f"the namespace must look like sb://<namespace>.servicebus.windows.net/, found '{text}'"
        )
    port = f":{parts.port}" if parts.port else ""
    return f"sb://{host.lower()}{port}/"


# -- planning (pure) -----------------------------------------------------------------------------


def _endpoint_values(target: Target) -> dict[str, Value]:
    return {
        "name": ENDPOINT_NAME,
        "description": DESCRIPTION,
        "contract": QUEUE_CONTRACT,
        "connectionmode": 1,  # Normal
        "authtype": 2,  # SAS key
        "namespaceaddress": target.namespace,
        "namespaceformat": 2,  # Namespace Address
        "path": target.queue,
        "saskeyname": target.sas_key_name,
        "messageformat": 2,  # JSON: the only format the guardrail reads
        "userclaim": 2,  # UserId
    }


def _step_values(
    message: str, target: Target, endpoint: str | Ref, actual: Registration
) -> dict[str, Value]:
    values: dict[str, Value] = {
        "name": f"{ENDPOINT_NAME}: {message} of mailbox",
        "description": DESCRIPTION,
        "mode": 1,  # asynchronous: only committed changes, never recalled
        "stage": 40,  # post-operation
        "rank": 1,
        "supporteddeployment": 0,  # server only
        "asyncautodelete": True,  # delete the system job when it succeeds
        "eventhandler_serviceendpoint@odata.bind": Bind("serviceendpoints", endpoint),
        "sdkmessageid@odata.bind": Bind("sdkmessages", actual.message_ids[message]),
        "sdkmessagefilterid@odata.bind": Bind("sdkmessagefilters", actual.filter_ids[message]),
    }
    if message == "Update":
        values["filteringattributes"] = ",".join(target.columns)
    return values


def _image_values(target: Target, step: str | Ref) -> dict[str, Value]:
    return {
        "name": PRE_IMAGE_ALIAS,
        "description": DESCRIPTION,
        "entityalias": PRE_IMAGE_ALIAS,
        "imagetype": 0,  # pre image
        "messagepropertyname": "Target",
        "attributes": ",".join(target.image_attributes),
        "sdkmessageprocessingstepid@odata.bind": Bind("sdkmessageprocessingsteps", step),
    }


def _column_set(value: object) -> frozenset[str]:
    return frozenset(p.strip().lower() for p in str(value or "").split(",") if p.strip())


def _same(column: str, current: Any, wanted: Value) -> bool:
    """Whether a column already holds what is wanted (as Dataverse reads it back)."""
    if isinstance(wanted, Bind):
        bound = wanted.target
        return isinstance(bound, str) and str(current or "").lower() == bound.lower()
    if column == "contract" and wanted in QUEUE_CONTRACTS:
        return current in QUEUE_CONTRACTS
    if column in ("filteringattributes", "attributes"):
        return _column_set(current) == _column_set(wanted)
    if column == "namespaceaddress":
        return str(current or "").strip().lower().rstrip("/") == str(wanted).lower().rstrip("/")
    if column == "path":
        return str(current or "").strip().lower() == str(wanted).lower()
    return bool(current == wanted)


def _read_name(column: str) -> str:
    """The column a bind's value is read back from: eventhandler_serviceendpoint@odata.bind
    -> _eventhandler_value."""
    if not column.endswith("@odata.bind"):
        return column
    nav = column.removesuffix("@odata.bind")
    return "_eventhandler_value" if nav.startswith("eventhandler_") else f"_{nav}_value"


def _reconcile(
    entity_set: str,
    key: str,
    wanted: Mapping[str, Value],
    current: Row | None,
    *,
    create_only: Iterable[str] = (),
    update_only: Mapping[str, Value] | None = None,
) -> Change:
    """One row's change: create it with `wanted`, or write the columns that differ from it
    (`create_only` columns are not compared, `update_only` ones are not sent on create)."""
    if current is None:
        return Change(Action.CREATE, entity_set, key, str(wanted["name"]), values=dict(wanted))
    skip = set(create_only)
    compared = {**wanted, **(update_only or {})}
    differing = {
        column: value
        for column, value in compared.items()
        if column not in skip and not _same(column, current.get(_read_name(column)), value)
    }
    if not differing:
        return Change(Action.KEEP, entity_set, key, current.name, current.id)
    was = {column: current.get(_read_name(column)) for column in differing}
    return Change(
        Action.UPDATE, entity_set, key, current.name, current.id, values=differing, was=was
    )


def _oldest(rows: Sequence[Row]) -> tuple[Row | None, list[Row]]:
    ordered = sorted(rows, key=lambda r: (str(r.get("createdon") or ""), r.id))
    return (ordered[0] if ordered else None), ordered[1:]


def _endpoint_change(target: Target, endpoint: Row | None, problems: list[str]) -> Change:
    """The endpoint's change, with the SAS key when it must be written: on create, with
    --rotate-key, and when the namespace, queue, key name or authentication change (the key
    goes with them). Dataverse never returns the key, so it is never compared."""
    base = _reconcile("serviceendpoints", "endpoint", _endpoint_values(target), endpoint)
    values = dict(base.values)
    if endpoint is None:
        why = "create the service endpoint"
    elif target.rotate_key:
        why = "rotate the key"
    elif any(column in values for column in _KEYED):
        why = "change the endpoint's namespace, queue, key name or authentication"
    else:
        return base
    if not target.sas_key:
        problems.append(
            f"the SAS key is needed to {why} (Dataverse never returns it): pass --sas-key or "
            "set DATAVERSE_SAS_KEY"
        )
        return base
    values["saskey"] = Secret(target.sas_key)
    action = Action.UPDATE if base.action is Action.KEEP else base.action
    return Change(action, base.entity_set, base.key, base.name, base.id, values, base.was)


def plan_registration(target: Target, actual: Registration) -> Plan:
    """The changes that make Dataverse hold exactly the desired registration (pure)."""
    problems: list[str] = []
    endpoint, extra_endpoints = _oldest([e for e in actual.endpoints if e.ours])
    changes = [_endpoint_change(target, endpoint, problems)]
    endpoint_ref: str | Ref = endpoint.id if endpoint is not None else Ref("endpoint")

    kept_steps: dict[str, Row | None] = {}
    for message in MESSAGES:
        step, _ = _oldest([s for s in actual.steps if s.ours and actual.message_of(s) == message])
        kept_steps[message] = step
        changes.append(
            _reconcile(
                "sdkmessageprocessingsteps",
                f"step:{message}",
                _step_values(message, target, endpoint_ref, actual),
                step,
                update_only={"statecode": 0, "statuscode": 1},  # enabled
            )
        )
    kept = {s.id for s in kept_steps.values() if s is not None}
    extra_steps = [s for s in actual.steps if s.ours and s.id not in kept]

    update_step = kept_steps["Update"]
    step_ref: str | Ref = update_step.id if update_step is not None else Ref("step:Update")
    image, _ = _oldest(
        [i for i in actual.images if i.ours and update_step and _parent(i) == update_step.id]
    )
    changes.append(
        _reconcile(
            "sdkmessageprocessingstepimages",
            "image:Update",
            _image_values(target, step_ref),
            image,
            create_only=("sdkmessageprocessingstepid@odata.bind",),
        )
    )
    extra_images = [i for i in actual.images if i.ours and (image is None or i.id != image.id)]
    notes = _foreign_notes(target, actual, endpoint, kept_steps)
    unused = _unused_endpoints(actual, extra_endpoints, notes)
    changes.extend(_deletions(extra_images, extra_steps, unused))
    return Plan(tuple(changes), tuple(notes), tuple(problems))


def _unused_endpoints(
    actual: Registration, endpoints: Sequence[Row], notes: list[str]
) -> list[Row]:
    """The endpoints no step register did not create uses; the others are kept, and said."""
    unused: list[Row] = []
    for endpoint in endpoints:
        users = [
            s
            for s in actual.steps
            if not s.ours and str(s.get("_eventhandler_value") or "").lower() == endpoint.id
        ]
        if users:
            names = ", ".join(f"'{s.name}' ({s.id})" for s in users)
            notes.append(
                f"service endpoint '{endpoint.name}' ({endpoint.id}) is kept: step(s) {names}, "
                "not created by register, still use it"
            )
        else:
            unused.append(endpoint)
    return unused


def _parent(image: Row) -> str:
    return str(image.get("_sdkmessageprocessingstepid_value") or "").lower()


def _deletions(
    images: Sequence[Row], steps: Sequence[Row], endpoints: Sequence[Row]
) -> list[Change]:
    """Images, then steps, then endpoints: children before what they hang on."""
    ordered = [
        *(("sdkmessageprocessingstepimages", i) for i in images),
        *(("sdkmessageprocessingsteps", s) for s in steps),
        *(("serviceendpoints", e) for e in endpoints),
    ]
    return [
        Change(Action.DELETE, entity_set, row.id, row.name, row.id) for entity_set, row in ordered
    ]


def _foreign_notes(
    target: Target,
    actual: Registration,
    endpoint: Row | None,
    kept_steps: Mapping[str, Row | None],
) -> list[str]:
    """Rows register did not create that affect the guardrail: said, never touched."""
    notes: list[str] = []
    same_queue = {
        e.id
        for e in actual.endpoints
        if not e.ours and str(e.get("path") or "").strip().lower() == target.queue.lower()
    }
    mailbox_filters = {f.lower() for f in actual.filter_ids.values()}
    for step in actual.steps:
        if step.ours:
            continue
        handler = str(step.get("_eventhandler_value") or "").lower()
        if endpoint is not None and handler == endpoint.id:
            notes.append(
                f"step '{step.name}' ({step.id}) uses the guardrail's service endpoint but was not "
                "created by register: left alone"
            )
        elif handler in same_queue and (
            str(step.get("_sdkmessagefilterid_value") or "").lower() in mailbox_filters
        ):
            notes.append(
                f"step '{step.name}' ({step.id}) also posts mailbox changes to queue "
                f"'{target.queue}' (not created by register, left alone): every change would "
                "arrive twice; remove it once this registration works"
            )
    update_step = kept_steps.get("Update")
    for image in actual.images:
        if not image.ours and update_step is not None and _parent(image) == update_step.id:
            notes.append(
                f"step image '{image.name}' ({image.id}) on the guardrail's Update step was not "
                "created by register: left alone"
            )
    return notes


def plan_unregistration(actual: Registration) -> Plan:
    """Delete exactly what register created (pure); a marked endpoint that someone else's step
    still uses is kept, and said."""
    notes: list[str] = []
    ours_steps = [s for s in actual.steps if s.ours]
    ours_step_ids = {s.id for s in ours_steps}
    images = [i for i in actual.images if i.ours]
    for image in actual.images:
        if not image.ours and _parent(image) in ours_step_ids:
            notes.append(
                f"step image '{image.name}' ({image.id}) was not created by register, but goes "
                "with the guardrail's step it belongs to"
            )
    endpoints = _unused_endpoints(actual, [e for e in actual.endpoints if e.ours], notes)
    return Plan(tuple(_deletions(images, ours_steps, endpoints)), tuple(notes))


# -- reading and applying (Web API) --------------------------------------------------------------


def read_collection(
    client: ApiClient, path: str, params: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every row of a collection read, following @odata.nextLink until it is absent."""
    rows: list[dict[str, Any]] = []
    response = client.request(
        "GET", path, params=params, headers={"Prefer": "odata.maxpagesize=500"}
    )
    while True:
        body = response.json()
        rows.extend(r for r in body.get("value", []) if isinstance(r, dict))
        link = body.get("@odata.nextLink")
        if not isinstance(link, str):
            return rows
        relative = link.removeprefix(client.base_url).lstrip("/")
        response = client.request("GET", relative, headers={"Prefer": "odata.maxpagesize=500"})


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _any_of(column: str, ids: Iterable[str]) -> str:
    return " or ".join(f"{column} eq {i}" for i in sorted(set(ids)))


def _rows(data: Iterable[Mapping[str, Any]], key: str) -> tuple[Row, ...]:
    return tuple(
        Row(str(r[key]).lower(), {k: v for k, v in r.items() if not k.startswith("@")})
        for r in data
    )


def read_registration(client: ApiClient) -> Registration:
    """The registration as Dataverse holds it (see :class:`Registration`)."""
    messages = read_collection(
        client,
        "sdkmessages",
        {
            "$select": "sdkmessageid,name",
            "$filter": " or ".join(f"name eq {_quoted(m)}" for m in MESSAGES),
        },
    )
    message_ids = {str(r["name"]): str(r["sdkmessageid"]).lower() for r in messages}
    missing = [m for m in MESSAGES if m not in message_ids]
    if missing:
        raise RegistrationError(f"Dataverse has no SDK message named {', '.join(missing)}")
    filters = read_collection(
        client,
        "sdkmessagefilters",
        {
            "$select": "sdkmessagefilterid,_sdkmessageid_value",
            "$filter": f"primaryobjecttypecode eq 'mailbox' and "
            f"({_any_of('_sdkmessageid_value', message_ids.values())})",
        },
    )
    filter_ids: dict[str, str] = {}
    for row in filters:
        message = next(
            (m for m, i in message_ids.items() if i == str(row["_sdkmessageid_value"]).lower()),
            None,
        )
        if message is not None:
            filter_ids[message] = str(row["sdkmessagefilterid"]).lower()
    if len(filter_ids) != len(MESSAGES):
        raise RegistrationError("Dataverse has no Create and Update message filters for mailbox")
    endpoints = _rows(
        read_collection(client, "serviceendpoints", {"$select": ",".join(ENDPOINT_COLUMNS)}),
        "serviceendpointid",
    )
    conditions = [_any_of("_sdkmessagefilterid_value", filter_ids.values())]
    if endpoints:
        conditions.append(_any_of("_eventhandler_value", (e.id for e in endpoints)))
    steps = _rows(
        read_collection(
            client,
            "sdkmessageprocessingsteps",
            {"$select": ",".join(STEP_COLUMNS), "$filter": " or ".join(conditions)},
        ),
        "sdkmessageprocessingstepid",
    )
    images: tuple[Row, ...] = ()
    if steps:
        images = _rows(
            read_collection(
                client,
                "sdkmessageprocessingstepimages",
                {
                    "$select": ",".join(IMAGE_COLUMNS),
                    "$filter": _any_of("_sdkmessageprocessingstepid_value", (s.id for s in steps)),
                },
            ),
            "sdkmessageprocessingstepimageid",
        )
    return Registration(message_ids, filter_ids, endpoints, steps, images)


def created_id(response: requests.Response) -> str:
    """The new row's id from a create's ``OData-EntityId`` header."""
    match = _ENTITY_ID.search(response.headers.get("OData-EntityId", ""))
    if match is None:
        raise RegistrationError("Dataverse created a row but sent no OData-EntityId header")
    return match.group(1).lower()


def _body(change: Change, ids: Mapping[str, str]) -> dict[str, object]:
    body: dict[str, object] = {}
    for column, value in change.values.items():
        if isinstance(value, Bind):
            body[column] = value.path(ids)
        elif isinstance(value, Secret):
            body[column] = value.value
        else:
            body[column] = value
    return body


def apply_plan(client: ApiClient, plan: Plan) -> dict[str, str]:
    """Write a plan's changes in order; returns the ids of the rows it created or kept."""
    if plan.problems:
        raise RegistrationError("; ".join(plan.problems))
    ids: dict[str, str] = {}
    for change in plan.changes:
        try:
            _apply(client, change, ids)
        except PermanentServiceError as exc:
            if exc.status != 403:
                raise
            raise RegistrationError(
                f"Dataverse refused to {change.action.value} {change.kind} '{change.name}': "
                f"{exc.message} Sign in as an administrator (--device-code), or with a "
                "deployment principal whose application user may change the registration; the "
                "guardrail's own role is not meant to"
            ) from exc
    return ids


def _apply(client: ApiClient, change: Change, ids: dict[str, str]) -> None:
    if change.action is Action.KEEP:
        assert change.id is not None
        ids[change.key] = change.id
    elif change.action is Action.CREATE:
        try:
            response = client.request(
                "POST",
                change.entity_set,
                json=_body(change, ids),
                headers=_JSON,
                expect=(204, 201),
                repeatable=False,
            )
        except OutcomeUnknown as exc:
            raise RegistrationError(
                f"creating {change.kind} '{change.name}' may or may not have happened "
                f"({exc.message}); run the command again: it finds what it created"
            ) from exc
        ids[change.key] = created_id(response)
    elif change.action is Action.UPDATE:
        assert change.id is not None
        client.request(
            "PATCH",
            f"{change.entity_set}({change.id})",
            json=_body(change, ids),
            headers={**_JSON, "If-Match": "*"},
            expect=(204, 200),
        )
        ids[change.key] = change.id
    else:
        with contextlib.suppress(NotFound):  # already gone: what was wanted
            client.request("DELETE", f"{change.entity_set}({change.id})", expect=(204,))
