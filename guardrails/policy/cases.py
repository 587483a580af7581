"""`guardrails policy test`: a policy's own unit tests, as admins write them.

A folder holds one YAML file per case: a mailbox change and the decision the policy must reach.

    name: A user forwards their mailbox
    change:
      by: {email: adele@contoso.com}             # id, email, name, upn, roles, guardrail: true
      mailbox: {owner_email: adele@contoso.com}  # id, name, regarding: user|queue, owner_id
      columns:
        incomingemaildeliverymethod: {from: server_side_sync, to: forward_mailbox}
    expect:
      outcome: violation                         # compliant, violation, ignored, rejected
      columns: [incomingemaildeliverymethod]     # the violating columns
      patch: {incomingemaildeliverymethod: 2}    # what a revert writes ({} for nothing)
      reason_contains: Forward Mailbox

Instead of `change`, `message: captured.json` replays a Service Bus body. `facts` is what
Dataverse would answer when asked: `owner` and `queue` (the directory entry: email, upn, name),
`initiator` (for a message), `row` (the row's other governed columns), `organization_defaults`,
`accepted`. What a case does not state stays unknown, as offline, and shows as not verified.

A change becomes the message Dataverse would post (the async Update context with its original
request and the `guardrails_pre` pre image) and goes through the parser and the engine, looking
up facts as the executor does. People and mailboxes without ids get stable ones from their
addresses, so `by` and `mailbox` with the same address are the same user. The policy is the
case's `policy` (next to the case), else `--policy`, else policy.yaml in the folder or next to it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from guardrails.engine import Decision, Fact, Facts, QueueFacts, UserFacts, decide
from guardrails.mailbox import DELIVERY_METHODS, MAILBOX, Column, MailboxState
from guardrails.message import parse_message
from guardrails.policy.loader import PolicyError, load_policy
from guardrails.policy.model import Policy
from guardrails.values import EntityReference, Value, is_guid

MAX_CASE_BYTES = 64 * 1024
CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
_NAMESPACE = uuid.UUID("6f1d3c2e-8a4b-4e0f-9c7d-5b2a1e3f4d60")
_CREATED_ON = "/Date(1795167000000)/"
Scalar = StrictInt | StrictStr | None


def stable_id(kind: str, key: str) -> str:
    """The id a case gives someone it names only by address (the same address, the same id)."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{key.strip().lower()}"))


GUARDRAIL_USER_ID = stable_id("user", "# mailbox guardrails")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PersonSpec(_Strict):
    id: str | None = None
    email: str | None = None
    name: str | None = None
    upn: str | None = None
    roles: list[str] = []
    disabled: bool = False
    guardrail: bool = False  # the guardrail's own application user


class MailboxSpec(_Strict):
    id: str | None = None
    name: str | None = None
    regarding: Literal["user", "queue"] = "user"
    owner_id: str | None = None
    owner_email: str | None = None  # whose mailbox it is, by address (the queue's, for a queue)


class ColumnChange(_Strict):
    before: Scalar = Field(None, alias="from")
    to: Scalar = None


class ChangeSpec(_Strict):
    message: Literal["Update", "Create"] = "Update"
    by: PersonSpec
    mailbox: MailboxSpec = MailboxSpec()
    columns: dict[Column, ColumnChange]
    tag: str | None = None


class QueueSpec(_Strict):
    email: str | None = None
    name: str | None = None


class FactsSpec(_Strict):
    initiator: PersonSpec | None = None
    owner: PersonSpec | None = None
    queue: QueueSpec | None = None
    row: dict[Column, Scalar] = {}
    organization_defaults: dict[Column, Scalar] | None = None
    accepted: dict[Column, Scalar] | None = None


class ExpectSpec(_Strict):
    outcome: Literal["compliant", "violation", "ignored", "rejected"]
    columns: list[Column] | None = None
    patch: dict[Column, Scalar] | None = None
    reason_contains: Annotated[str, Field(min_length=1)] | None = None
    unverified: list[Fact] | None = None


class CaseSpec(_Strict):
    name: str
    description: str | None = None
    policy: str | None = None
    message: str | None = None
    change: ChangeSpec | None = None
    facts: FactsSpec = FactsSpec()
    expect: ExpectSpec

    @model_validator(mode="after")
    def _one_source(self) -> CaseSpec:
        if (self.message is None) == (self.change is None):
            raise ValueError("give exactly one of 'message' (a captured body) and 'change'")
        if self.change is not None and self.facts.initiator is not None:
            raise ValueError("with a 'change', who made it is 'change.by', not 'facts.initiator'")
        return self


class CaseError(ValueError):
    """A case that cannot be run as written."""


# -- values -------------------------------------------------------------------------------------


def column_value(column: Column, raw: Scalar) -> Value:
    """A value as a case writes it: delivery methods by name or number, a profile by id."""
    if raw is None:
        return None
    if column in DELIVERY_METHODS:
        if isinstance(raw, int):
            return raw
        names = DELIVERY_METHODS[column]
        if raw not in names:
            raise CaseError(f"{column.value}: {raw!r} is not one of {', '.join(names)}")
        return names[raw]
    if column is Column.SERVER_PROFILE:
        if not is_guid(raw):
            raise CaseError(f"{column.value}: a server profile is given by its id, not {raw!r}")
        return EntityReference("emailserverprofile", str(raw).lower())
    if not isinstance(raw, str):
        raise CaseError(f"{column.value}: an address is text, not {raw!r}")
    return raw


def _values(raw: Mapping[Column, Scalar]) -> dict[Column, Value]:
    return {column: column_value(column, value) for column, value in raw.items()}


def _plain(value: Value) -> object:
    return value.id if isinstance(value, EntityReference) else value


# -- the message Dataverse would post -------------------------------------------------------------


def _reference(logical_name: str, entity_id: str) -> dict[str, Any]:
    return {
        "__type": f"EntityReference:{CONTRACTS}",
        "Id": entity_id,
        "KeyAttributes": [],
        "LogicalName": logical_name,
        "Name": None,
        "RowVersion": None,
    }


def _encode(key: str, value: Any) -> Any:
    if value is None or key not in Column._value2member_map_:
        return value
    column = Column(key)
    if column in DELIVERY_METHODS:
        return {"__type": f"OptionSetValue:{CONTRACTS}", "Value": value}
    if isinstance(value, EntityReference):
        return _reference(value.logical_name, value.id)
    return value


def _entity(
    mailbox_id: str, attributes: Mapping[str, Any], *, typed: bool, version: str | None = None
) -> dict[str, Any]:
    entity = {
        "Attributes": [{"key": k, "value": _encode(k, v)} for k, v in attributes.items()],
        "EntityState": None,
        "FormattedValues": [],
        "Id": mailbox_id,
        "KeyAttributes": [],
        "LogicalName": MAILBOX,
        "RelatedEntities": [],
        "RowVersion": version,
    }
    return {"__type": f"Entity:{CONTRACTS}", **entity} if typed else entity


@dataclass(frozen=True, slots=True)
class MessageIds:
    """The ids a built message carries."""

    mailbox: str
    initiator: str
    regarding: EntityReference
    organization: str
    correlation: str


def _context(ids: MessageIds, message: str, stage: int, **parts: Any) -> dict[str, Any]:
    return {
        "BusinessUnitId": stable_id("businessunit", "root"),
        "CorrelationId": ids.correlation,
        "Depth": 1,
        "InitiatingUserId": ids.initiator,
        "InputParameters": parts["inputs"],
        "IsExecutingOffline": False,
        "IsInTransaction": stage == 30,
        "IsOfflinePlayback": False,
        "IsolationMode": 1,
        "MessageName": message,
        "Mode": 1,
        "OperationCreatedOn": _CREATED_ON,
        "OperationId": stable_id("operation", f"{ids.correlation}:{stage}"),
        "OrganizationId": ids.organization,
        "OrganizationName": "policy test",
        "OutputParameters": [{"key": "id", "value": ids.mailbox}] if message == "Create" else [],
        "ParentContext": parts.get("parent"),
        "PostEntityImages": parts.get("post", []),
        "PreEntityImages": parts.get("pre", []),
        "PrimaryEntityId": ids.mailbox,
        "PrimaryEntityName": MAILBOX,
        "SecondaryEntityName": "none",
        "SharedVariables": parts.get("shared", []),
        "Stage": stage,
        "UserId": ids.initiator,
    }


def change_message(
    change: ChangeSpec, ids: MessageIds, row: Mapping[Column, Value]
) -> dict[str, Any]:
    """The async (stage 40) context of the change, with its original request as ParentContext
    and the registered pre image (an Update's), as Dataverse's service endpoint posts it."""
    sent: dict[str, Any] = {c.value: column_value(c, v.to) for c, v in change.columns.items()}
    regarding = ids.regarding
    if change.message == "Create":
        sent["regardingobjectid"] = _reference(regarding.logical_name, regarding.id)
    sent["mailboxid"] = ids.mailbox
    # The async Target also carries columns the caller did not send.
    modifiedby = _reference("systemuser", ids.initiator)
    target = {**sent, "modifiedon": _CREATED_ON, "modifiedby": modifiedby}
    target["modifiedonbehalfby"] = None
    shared = [{"key": "tag", "value": change.tag}] if change.tag else []
    parent = _context(
        ids,
        change.message,
        30,
        inputs=[{"key": "Target", "value": _entity(ids.mailbox, sent, typed=True)}],
        shared=[{"key": "IsAutoTransact", "value": True}, *shared],
    )
    pre: list[dict[str, Any]] = []
    if change.message == "Update":
        before: dict[str, Any] = {c.value: v for c, v in row.items()}
        for column, values in change.columns.items():
            before[column.value] = column_value(column, values.before)
        before["regardingobjectid"] = _reference(regarding.logical_name, regarding.id)
        pre = [{"key": "guardrails_pre", "value": _entity(ids.mailbox, before, typed=False)}]
    name = change.mailbox.name or "Mailbox"
    post = [
        {
            "key": "AsynchronousStepPrimaryName",
            "value": _entity(ids.mailbox, {"name": name, "mailboxid": ids.mailbox}, typed=False),
        }
    ]
    return _context(
        ids,
        change.message,
        40,
        inputs=[{"key": "Target", "value": _entity(ids.mailbox, target, typed=True, version="1")}],
        parent=parent,
        pre=pre,
        post=post,
    )


# -- running a case -------------------------------------------------------------------------------


def _user(person: PersonSpec, user_id: str) -> UserFacts:
    roles = frozenset(role.lower() for role in person.roles)
    return UserFacts(
        id=user_id,
        email=person.email,
        name=person.name,
        upn=person.upn,
        role_ids=frozenset(role for role in roles if is_guid(role)),
        role_names=roles,
        disabled=person.disabled,
        interactive=not person.disabled and not person.guardrail,
    )


def _person_id(person: PersonSpec) -> str:
    if person.id:
        return person.id.lower()
    if person.guardrail:
        return GUARDRAIL_USER_ID
    return stable_id("user", person.email or person.name or "someone")


def _regarding(mailbox: MailboxSpec) -> EntityReference:
    queue = mailbox.regarding == "queue"
    key = mailbox.owner_id or stable_id(
        "queue" if queue else "user", mailbox.owner_email or "owner"
    )
    return EntityReference("queue" if queue else "systemuser", key.lower())


@dataclass
class _Known:
    """What Dataverse would answer, per the case; handed out when a decision asks."""

    case: CaseSpec
    state: MailboxState | None = None
    initiator: PersonSpec | None = None

    def learn(self, decision: Decision, facts: Facts) -> Facts | None:
        learned = facts
        spec = self.case.facts
        for fact in decision.unverified:
            if fact is Fact.INITIATOR and facts.initiator is None and self.initiator:
                initiator = decision.initiating_user_id or _person_id(self.initiator)
                learned = replace(learned, initiator=_user(self.initiator, initiator))
            elif fact is Fact.OWNER and facts.owner is None and spec.owner is not None:
                owner_id = decision.owner_user_id or _person_id(spec.owner)
                learned = replace(learned, owner=_user(spec.owner, owner_id))
            elif fact is Fact.QUEUE and facts.queue is None and spec.queue is not None:
                regarding = self.state.regarding if self.state else None
                if regarding is None and decision.event is not None:
                    regarding = decision.event.regarding
                if regarding is not None:
                    queue = QueueFacts(regarding.id, spec.queue.name, spec.queue.email)
                    learned = replace(learned, queue=queue)
            elif (
                fact is Fact.ORGANIZATION_DEFAULTS
                and facts.organization_defaults is None
                and spec.organization_defaults is not None
            ):
                defaults = _defaults(spec.organization_defaults)
                learned = replace(learned, organization_defaults=defaults)
            elif fact is Fact.ACCEPTED and facts.accepted is None:
                learned = replace(learned, accepted=_values(spec.accepted or {}))
        return None if learned is facts else learned


def _defaults(raw: Mapping[Column, Scalar]) -> dict[Column, int | str]:
    """Settings > Email: delivery methods as numbers, the server profile as its id."""
    defaults: dict[Column, int | str] = {}
    for column, value in _values(raw).items():
        if isinstance(value, EntityReference):
            defaults[column] = value.id
        elif isinstance(value, int):
            defaults[column] = value
    return defaults


def _state(
    mailbox_id: str, regarding: EntityReference | None, row: dict[Column, Value]
) -> MailboxState:
    owner = regarding if regarding and regarding.logical_name == "systemuser" else None
    return MailboxState(mailbox_id=mailbox_id, values=row, regarding=regarding, owner=owner)


def evaluate_case(case: CaseSpec, path: Path, policy: Policy) -> Decision:
    """Parse, decide, look up what the case knows, decide again: the executor's loop, offline."""
    row = _values(case.facts.row)
    change = case.change
    if change is not None:
        regarding = _regarding(change.mailbox)
        mailbox_id = (change.mailbox.id or stable_id("mailbox", regarding.id)).lower()
        ids = MessageIds(
            mailbox=mailbox_id,
            initiator=_person_id(change.by),
            regarding=regarding,
            organization=policy.organization.id,
            correlation=stable_id("correlation", f"{path.name}:{case.name}"),
        )
        after = {**row, **{c: column_value(c, v.to) for c, v in change.columns.items()}}
        known = _Known(case, _state(mailbox_id, regarding, after), change.by)
        body = json.dumps(change_message(change, ids, row)).encode("utf-8")
    else:
        assert case.message is not None
        message_path = path.parent / case.message
        try:
            body = message_path.read_bytes()
        except OSError as exc:
            raise CaseError(f"cannot read the message {message_path}: {exc.strerror}") from exc
        known = _Known(case, None, case.facts.initiator)
    context = parse_message(body)
    facts = Facts(guardrail_user_id=GUARDRAIL_USER_ID)
    state: MailboxState | None = None
    decision = decide(context, policy, facts, state)
    for _ in range(len(Fact)):
        read = state
        if Fact.MAILBOX_STATE in decision.unverified and state is None:
            read = known.state or _message_state(decision, row)
        learned = known.learn(decision, facts)
        if learned is None and read is state:
            break
        facts, state = learned or facts, read
        decision = decide(context, policy, facts, state)
    return decision


def _message_state(decision: Decision, row: dict[Column, Value]) -> MailboxState | None:
    """For a captured message, the row: the message's own view of it, plus `facts.row`."""
    event = decision.event
    if event is None or not decision.mailbox_id:
        return None
    return _state(decision.mailbox_id, event.regarding, {**row, **event.changed})


def differences(case: CaseSpec, decision: Decision) -> list[str]:
    expect = case.expect
    problems: list[str] = []
    if decision.outcome.value != expect.outcome:
        problems.append(f"outcome: expected {expect.outcome}, got {decision.outcome.value}")
    if expect.columns is not None:
        wanted = sorted(c.value for c in expect.columns)
        got = sorted(v.column.value for v in decision.violations)
        if wanted != got:
            problems.append(f"columns: expected {wanted}, got {got}")
    if expect.patch is not None:
        wanted_patch = {c.value: _plain(v) for c, v in _values(expect.patch).items()}
        got_patch = {c.value: _plain(v) for c, v in decision.patch.items()}
        if wanted_patch != got_patch:
            problems.append(
                f"patch: expected {json.dumps(wanted_patch)}, got {json.dumps(got_patch)}"
            )
    if expect.reason_contains and expect.reason_contains.lower() not in decision.reason.lower():
        problems.append(f"reason: expected it to contain {expect.reason_contains!r}")
    if expect.unverified is not None:
        wanted_facts = sorted(f.value for f in expect.unverified)
        got_facts = sorted(f.value for f in decision.unverified)
        if wanted_facts != got_facts:
            problems.append(f"unverified: expected {wanted_facts}, got {got_facts}")
    return problems


@dataclass
class CaseResult:
    path: Path
    name: str
    problems: list[str] = field(default_factory=list)
    decision: Decision | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and not self.problems


def load_case(path: Path) -> CaseSpec:
    data = path.read_bytes()
    if len(data) > MAX_CASE_BYTES:
        raise CaseError(f"over {MAX_CASE_BYTES // 1024} KiB; a case is a short description")
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CaseError(f"not YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise CaseError("a case is a YAML mapping with name, change (or message) and expect")
    try:
        return CaseSpec.model_validate(raw)
    except ValidationError as exc:
        issues = [
            f"{'.'.join(str(part) for part in error['loc']) or '(case)'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise CaseError("; ".join(issues)) from exc


def case_files(directory: Path) -> list[Path]:
    files = [*directory.glob("*.yaml"), *directory.glob("*.yml")]
    return sorted(path for path in files if path.name not in ("policy.yaml", "policy.yml"))


def default_policy(directory: Path) -> Path | None:
    for candidate in (directory / "policy.yaml", directory.parent / "policy.yaml"):
        if candidate.is_file():
            return candidate
    return None


class _Policies:
    def __init__(self, fallback: Path | None) -> None:
        self.fallback = fallback
        self.loaded: dict[Path, Policy] = {}

    def for_case(self, case: CaseSpec, path: Path) -> Policy:
        where = path.parent / case.policy if case.policy else self.fallback
        if where is None:
            raise CaseError("no policy: name one in the case, pass --policy, or add policy.yaml")
        key = where.resolve()
        if key not in self.loaded:
            try:
                self.loaded[key] = load_policy(where)
            except PolicyError as exc:
                raise CaseError(f"the policy {where} is not valid:\n{exc}") from exc
        return self.loaded[key]


def run_case(path: Path, policies: _Policies) -> CaseResult:
    try:
        case = load_case(path)
    except (CaseError, OSError) as exc:
        return CaseResult(path, path.stem, error=f"invalid case: {exc}")
    try:
        decision = evaluate_case(case, path, policies.for_case(case, path))
    except CaseError as exc:
        return CaseResult(path, case.name, error=str(exc))
    return CaseResult(path, case.name, differences(case, decision), decision)


def run_cases(directory: Path, policy: Path | None, out: TextIO) -> int:
    """Run every case in `directory`; PASS/FAIL per case with the difference. 0 when all pass."""
    if not directory.is_dir():
        out.write(f"{directory}: not a folder of policy test cases\n")
        return 1
    files = case_files(directory)
    if not files:
        out.write(f"{directory}: no cases (*.yaml) found\n")
        return 1
    policies = _Policies(policy or default_policy(directory))
    results = [run_case(path, policies) for path in files]
    for result in results:
        status = "PASS" if result.passed else ("ERROR" if result.error else "FAIL")
        out.write(f"{status:<5} {result.path.name}: {result.name}")
        unverified = result.decision.unverified if result.decision else ()
        if result.passed and unverified:
            out.write(f" (not verified: {', '.join(f.value for f in unverified)})")
        out.write("\n")
        for line in [*result.problems, *(result.error.splitlines() if result.error else [])]:
            out.write(f"      {line}\n")
        if result.problems and result.decision is not None:
            out.write(f"      the decision: {result.decision.reason}\n")
    failed = sum(not result.passed for result in results)
    out.write(f"{len(results) - failed} passed, {failed} failed ({directory})\n")
    return 1 if failed else 0
