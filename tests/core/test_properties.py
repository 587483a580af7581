"""Property-based: whatever arrives, parse_message and decide return, never raise."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from functools import cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrails.cli import render_text
from guardrails.engine import Decision, Facts, UserFacts, decide
from guardrails.mailbox import Column, MailboxState
from guardrails.message import ExecutionContext, Rejection, parse_message
from guardrails.policy import Policy
from guardrails.sandbox.messages import oversize, to_body
from guardrails.values import EntityReference

from .conftest import (
    CONTRACTS_NS,
    GUARDRAIL_USER,
    MAILBOX_ID,
    ORG,
    OWNER,
    PROFILE,
    QUEUE,
    ROLE_ID,
    SAMPLE_NAMES,
    USER,
    USER_MAILBOX,
    example_messages,
    mailbox,
    make_policy,
    sample_json,
)

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEWER = settings(SETTINGS, max_examples=150)

ALL_FEATURES = """
  delivery_methods:
    mode: audit
    incoming_email: server_side_sync
    outgoing_email: organization_default
    appointments_contacts_tasks: 1
  email_address:
    changes: forbidden
    allowed_domains: [contoso.com, .Fabrikam.com]
    must_match_owner: true
    restore_approval: true
  server_profile:
    expected: organization_default
"""
ALL_FEATURES_EXTRA = f"""
mode: enforce
scope: {{scope}}
exemptions:
  users: [admin@contoso.com, 88aa88aa-bb99-cc00-dd11-22ee22ee22ee]
  security_roles: [System Administrator, {ROLE_ID}]
  mailboxes: [99bb99bb-cc00-dd11-ee22-33ff33ff33ff]
notifications:
  enabled: true
  sender: guardrails@contoso.com
  notify_owner: true
  extra_recipients: [secops@contoso.com]
  subject: "Mailbox {{{{ mailbox_name }}}} changed back"
  template: "<p>{{{{ owner_name }}}}</p>{{{{ violations }}}} $5"
  throttle: {{max_per_mailbox: 2, window: 30m}}
"""


@cache
def policy_for(org: str, scope: str = "user_mailboxes") -> Policy:
    return make_policy(ALL_FEATURES, ALL_FEATURES_EXTRA.replace("{scope}", scope), org=org)


FACTS = st.sampled_from(
    [
        None,
        Facts(),
        Facts(
            guardrail_user_id=GUARDRAIL_USER,
            initiator=UserFacts(
                id=USER, email="user@contoso.com", role_names=frozenset({"salesperson"})
            ),
            owner=UserFacts(id=OWNER, email="owner@contoso.com", name="Owner"),
            organization_defaults={
                Column.INCOMING: 2,
                Column.OUTGOING: 2,
                Column.ACT: 1,
                Column.SERVER_PROFILE: PROFILE,
            },
        ),
        Facts(
            initiator=UserFacts(id=USER, role_ids=frozenset({ROLE_ID})),
            owner=UserFacts(id=USER, email=None),
            organization_defaults={},
        ),
    ]
)
STATES = st.sampled_from(
    [
        None,
        MailboxState(MAILBOX_ID, {}),
        MailboxState(
            MAILBOX_ID,
            {
                Column.INCOMING: 3,
                Column.OUTGOING: 1,
                Column.ACT: 0,
                Column.EMAIL: "x@evil.com",
                Column.SERVER_PROFILE: EntityReference("emailserverprofile", QUEUE),
            },
            etag='W/"1"',
            regarding=EntityReference("systemuser", OWNER),
            owner=EntityReference("systemuser", OWNER),
        ),
        MailboxState(
            MAILBOX_ID,
            {Column.INCOMING: None, Column.EMAIL: None, Column.SERVER_PROFILE: None},
            regarding=EntityReference("queue", QUEUE),
            owner=EntityReference("team", QUEUE),
        ),
    ]
)
SCOPES = st.sampled_from(["user_mailboxes", "queue_mailboxes", "all"])

TYPE_NAMES = [
    f"{kind}:{CONTRACTS_NS}"
    for kind in (
        "OptionSetValue",
        "Money",
        "EntityReference",
        "Entity",
        "EntityCollection",
        "QueryExpression",
    )
] + ["Guid:#System", "DateTime:#System", "OptionSetValue", ""]
KEYS = [
    "__type",
    "__value",
    "Value",
    "Id",
    "LogicalName",
    "Name",
    "Attributes",
    "FormattedValues",
    "Entities",
    "EntityName",
    "RowVersion",
    "key",
    "value",
    "Target",
    "tag",
    "regardingobjectid",
    "ownerid",
    "name",
    *[column.value for column in Column],
]
STRINGS = [
    "mailbox",
    "systemuser",
    "queue",
    "emailserverprofile",
    "mailbox-guardrails",
    "AsynchronousStepPrimaryName",
    "/Date(1506409448000-0700)/",
    "/Date(99999999999999999999)/",
    "/Date(-62135596800001)/",
    "sNaN",
    "NaN",
    "Infinity",
    "1e999999",
    MAILBOX_ID,
    ORG,
    USER,
    OWNER,
    "ceo@contoso.com",
    "",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(STRINGS + TYPE_NAMES)
)
keys = st.sampled_from(KEYS) | st.text(max_size=6)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    pairs = st.lists(st.fixed_dictionaries({"key": keys, "value": children}), max_size=4)
    typed = st.fixed_dictionaries(
        {"__type": st.sampled_from(TYPE_NAMES)},
        optional={
            "Value": children,
            "__value": children,
            "Id": children,
            "LogicalName": children,
            "Name": children,
            "Attributes": pairs | children,
            "Entities": st.lists(children, max_size=3) | children,
            "FormattedValues": pairs,
        },
    )
    return (
        st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5) | pairs | typed
    )


json_values = st.recursive(scalars, _extend, max_leaves=12)


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8")


def _check(result: object, policy: Policy, facts: Facts | None, state: MailboxState | None) -> None:
    assert isinstance(result, ExecutionContext | Rejection)
    decision = decide(result, policy, facts, state)
    assert isinstance(decision, Decision)
    json.dumps(decision.to_dict())
    render_text("message.json", decision, io.StringIO())
    if isinstance(result, Rejection):
        assert decision.reason == result.reason


# --- arbitrary input ----------------------------------------------------------------------------

PREFIXES = st.sampled_from(
    [b"", b"\xef\xbb\xbf", b"{", b'{"MessageName":', b"[", b"@", b"V", b"<", b"\xff\xfe", b" \n"]
)
CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "application/msbin1", "application/xml", "text/plain", ""]
)


@SETTINGS
@given(prefix=PREFIXES, data=st.binary(max_size=600), content_type=CONTENT_TYPES)
def test_arbitrary_bytes_never_raise(prefix: bytes, data: bytes, content_type: str | None) -> None:
    result = parse_message(prefix + data, {}, content_type)
    _check(result, policy_for(ORG), None, None)


@SETTINGS
@given(value=json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    _check(parse_message(_encode(value)), policy_for(ORG), None, None)


CONTEXT_KEYS = {
    "InputParameters": json_values,
    "PreEntityImages": json_values,
    "PostEntityImages": json_values,
    "SharedVariables": json_values,
    "ParentContext": json_values,
    "OwningExtension": json_values,
    "OperationCreatedOn": json_values,
    "InitiatingUserId": st.sampled_from([USER, GUARDRAIL_USER, None]) | json_values,
    "CorrelationId": json_values,
    "Mode": json_values,
}


@FEWER
@given(
    message=st.sampled_from(["Create", "Update", "Delete", "SetState"]),
    entity=st.sampled_from(["mailbox", "contact"]),
    org=st.sampled_from([ORG, ORG.upper(), "not-a-guid"]),
    rest=st.fixed_dictionaries({}, optional=CONTEXT_KEYS),
    facts=FACTS,
    state=STATES,
    scope=SCOPES,
)
def test_arbitrary_context_shaped_json_never_raises(
    message: str,
    entity: str,
    org: str,
    rest: dict[str, Any],
    facts: Facts | None,
    state: MailboxState | None,
    scope: str,
) -> None:
    value = {
        "MessageName": message,
        "PrimaryEntityName": entity,
        "PrimaryEntityId": MAILBOX_ID,
        "OrganizationId": org,
        **rest,
    }
    _check(parse_message(_encode(value)), policy_for(ORG, scope), facts, state)


# --- mutated real messages ----------------------------------------------------------------------


def _mailbox_corpus() -> list[dict[str, Any]]:
    update = mailbox(
        changes={"incomingemaildeliverymethod": 3, "emailaddress": "ceo@contoso.com"},
        before={
            "incomingemaildeliverymethod": 2,
            "emailaddress": "owner@contoso.com",
            "emailserverprofile": PROFILE,
            "ownerid": OWNER,
            **USER_MAILBOX,
        },
        tag="other",
        row_version=1,
    )
    create = mailbox(
        message="Create",
        changes={
            "incomingemaildeliverymethod": 1,
            "outgoingemaildeliverymethod": 0,
            "actdeliverymethod": 2,
            "emailaddress": "x@fabrikam.com",
            "emailserverprofile": PROFILE,
            **USER_MAILBOX,
        },
    )
    queue = mailbox(
        changes={"emailserverprofile": QUEUE}, before={"regardingobjectid": ("queue", QUEUE)}
    )
    return [update, create, queue, oversize(update)]


def _corpus() -> list[tuple[str, dict[str, Any]]]:
    items = [(name, sample_json(name)) for name in SAMPLE_NAMES]
    items += [(path.name, json.loads(path.read_bytes())) for path in example_messages()]
    items += [(f"built-{i}", data) for i, data in enumerate(_mailbox_corpus())]
    return items


CORPUS = _corpus()
ORIGINALS = st.sampled_from(range(len(CORPUS)))


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, (*path, index))


def _parent_of(root: Any, path: tuple[Any, ...]) -> Any:
    node = root
    for step in path[:-1]:
        node = node[step]
    return node


def _original(data: st.DataObject) -> tuple[dict[str, Any], str, bool]:
    _, original = CORPUS[data.draw(ORIGINALS, label="message")]
    document = copy.deepcopy(original)
    as_mailbox = data.draw(st.booleans(), label="relabel as a mailbox event")
    if as_mailbox:
        document["PrimaryEntityName"] = "mailbox"
    org = original["OrganizationId"]
    return document, str(org).lower(), as_mailbox


def _run(body: bytes, org: str, data: st.DataObject) -> None:
    facts = data.draw(FACTS, label="facts")
    state = data.draw(STATES, label="state")
    scope = data.draw(SCOPES, label="scope")
    _check(parse_message(body), policy_for(org, scope), facts, state)


@FEWER
@given(data=st.data())
def test_dropping_keys_never_raises(data: st.DataObject) -> None:
    document, org, _ = _original(data)
    for _ in range(data.draw(st.integers(1, 6), label="drops")):
        paths = [p for p in _paths(document) if p and isinstance(_parent_of(document, p), dict)]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="drop")
        del _parent_of(document, path)[path[-1]]
    _run(_encode(document), org, data)


@FEWER
@given(data=st.data())
def test_replacing_values_never_raises(data: st.DataObject) -> None:
    document, org, _ = _original(data)
    for _ in range(data.draw(st.integers(1, 4), label="replacements")):
        paths = [p for p in _paths(document) if p]
        path = data.draw(st.sampled_from(paths), label="replace")
        _parent_of(document, path)[path[-1]] = data.draw(json_values, label="with")
    _run(_encode(document), org, data)


@SETTINGS
@given(data=st.data())
def test_truncating_never_raises(data: st.DataObject) -> None:
    document, org, _ = _original(data)
    body = to_body(document)
    cut = data.draw(st.integers(0, len(body)), label="cut")
    _run(body[:cut], org, data)


@SETTINGS
@given(data=st.data())
def test_flipping_bytes_never_raises(data: st.DataObject) -> None:
    document, org, _ = _original(data)
    body = bytearray(to_body(document))
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        index = data.draw(st.integers(0, len(body) - 1), label="at")
        body[index] ^= data.draw(st.integers(1, 255), label="mask")
    _run(bytes(body), org, data)


@FEWER
@given(data=st.data())
def test_unmutated_corpus_always_parses(data: st.DataObject) -> None:
    document, org, as_mailbox = _original(data)
    result = parse_message(to_body(document))
    assert isinstance(result, ExecutionContext)
    _run(to_body(document), org, data)
    if not as_mailbox and document["PrimaryEntityName"] != "mailbox":
        assert decide(result, policy_for(org)).reason.startswith("Not a mailbox event")
