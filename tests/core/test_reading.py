"""A decision reads a few values of a message; only those are decoded, and as strictly as ever.

A message carries every column of its images, FormattedValues, and a second full context (the
ParentContext). What the decision reads (the changed governed columns and their previous values,
regarding, owner, name, the tags, ids, row version) passes the one decoder when read, and a
malformed one refuses the message with the same reason a parse gives. Anything else may be
malformed without cost or consequence: it is never decoded. On well-formed messages, reading only
what is used decides exactly as reading everything first does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from guardrails.engine import Outcome, decide
from guardrails.message import ExecutionContext
from guardrails.policy import Policy
from guardrails.sandbox.messages import PRE_IMAGE, to_body
from guardrails.values import Entity, EntityCollection, Value

from .conftest import (
    OWNER,
    SAMPLE_NAMES,
    USER_MAILBOX,
    as_mailbox_event,
    dumps,
    mailbox,
    make_policy,
    parse_ok,
    rejected_when_decided,
    sample_bytes,
    sample_id,
    set_attribute,
    target_of,
    wrong_shape,
)

PRE = f"body.PreEntityImages[{PRE_IMAGE}].Attributes"
TARGET = "body.InputParameters[Target].Attributes"
DEEP = "__DEEP__"
CORRELATION = "0d0d0d0d-1111-2222-3333-444444444444"
TOO_DEEP = "The body nests JSON deeper than any Dataverse message does"


def _base() -> dict[str, Any]:
    """A violating Update whose decision reads a value of every kind."""
    return mailbox(
        changes={"incomingemaildeliverymethod": 3},
        before={
            "incomingemaildeliverymethod": 2,
            "ownerid": OWNER,
            "name": "Adele Vance",
            **USER_MAILBOX,
        },
        row_version=42,
        tag="mailbox-guardrails",
        correlation_id=CORRELATION,
    )


def _pre(data: dict[str, Any]) -> dict[str, Any]:
    image: dict[str, Any] = data["PreEntityImages"][0]["value"]
    return image


def _value(entity: dict[str, Any], key: str) -> Any:
    return next(pair["value"] for pair in entity["Attributes"] if pair["key"] == key)


def _body(edit: Callable[[dict[str, Any]], None]) -> bytes:
    data = _base()
    edit(data)
    # json.dumps cannot nest this deep itself: the deep value is put into the text.
    return to_body(data).replace(f'"{DEEP}"'.encode(), b"[" * 400 + b"]" * 400, 1)


def _set(path: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Any:
    return lambda data: set_attribute(path(data), key, value)


def _edit(path: Callable[[dict[str, Any]], Any], key: str, value: Any) -> Any:
    return lambda data: path(data).__setitem__(key, value)


def _parent(data: dict[str, Any]) -> dict[str, Any]:
    parent: dict[str, Any] = data["ParentContext"]
    return parent


def _name_only_in_the_primary_name_image(data: dict[str, Any]) -> None:
    pre = _pre(data)
    pre["Attributes"] = [pair for pair in pre["Attributes"] if pair["key"] != "name"]
    data["PostEntityImages"][0]["value"]["Id"] = "not-a-guid"


READ = [
    pytest.param(
        _edit(lambda d: _value(target_of(d), "incomingemaildeliverymethod"), "Value", "3"),
        f"{TARGET}[incomingemaildeliverymethod].Value",
        "expected an integer, found str",
        id="changed-column",
    ),
    pytest.param(
        _edit(lambda d: _value(_pre(d), "incomingemaildeliverymethod"), "Value", True),
        f"{PRE}[incomingemaildeliverymethod].Value",
        "expected an integer, found bool",
        id="previous-value",
    ),
    pytest.param(
        _edit(lambda d: _value(_pre(d), "regardingobjectid"), "Id", "not-a-guid"),
        f"{PRE}[regardingobjectid].Id",
        "expected a GUID, found 'not-a-guid'",
        id="regarding-id",
    ),
    pytest.param(
        _edit(lambda d: _value(_pre(d), "ownerid"), "LogicalName", None),
        f"{PRE}[ownerid].LogicalName",
        "expected a string, found null",
        id="owner-table",
    ),
    pytest.param(
        _set(_pre, "name", {"__type": "OptionSetValue:x", "Value": "x"}),
        f"{PRE}[name].Value",
        "expected an integer, found str",
        id="name",
    ),
    pytest.param(
        _edit(lambda d: d, "PreEntityImages", [{"key": "Image", "value": []}]),
        "body.PreEntityImages[Image]",
        "expected an Entity object, found list",
        id="pre-image-not-an-entity",
    ),
    pytest.param(
        _name_only_in_the_primary_name_image,
        "body.PostEntityImages[AsynchronousStepPrimaryName].Id",
        "expected a GUID, found 'not-a-guid'",
        id="primary-name-image-when-it-alone-has-the-name",
    ),
    pytest.param(
        _edit(lambda d: d, "SharedVariables", [{"key": "tag", "value": {"__type": "Money:x"}}]),
        "body.SharedVariables[tag].Value",
        "expected a number, found null",
        id="tag",
    ),
    pytest.param(
        _edit(
            _parent,
            "SharedVariables",
            [{"key": "tag", "value": {"__type": "Money:x", "Value": "lots"}}],
        ),
        "body.ParentContext.SharedVariables[tag].Value",
        "expected a number, found 'lots'",
        id="parent-tag",
    ),
]


@pytest.mark.parametrize(("edit", "path", "problem"), READ)
def test_a_malformed_value_the_decision_reads_refuses_the_message(
    edit: Callable[[dict[str, Any]], None], path: str, problem: str
) -> None:
    decision = rejected_when_decided(_body(edit))
    assert decision.reason == wrong_shape(path, problem)


def test_a_value_the_decision_reads_nested_too_deep_is_the_deep_nesting_rejection() -> None:
    decision = rejected_when_decided(_body(_set(_pre, "regardingobjectid", DEEP)))
    assert decision.reason.startswith(TOO_DEEP)


NOT_READ = [
    pytest.param(_edit(lambda d: _value(target_of(d), "modifiedby"), "Id", [1]), id="modifiedby"),
    pytest.param(_set(_pre, "modifiedon", {"__type": "OptionSetValue:x"}), id="unread-column"),
    pytest.param(_set(_pre, "description", DEEP), id="unread-column-nested-too-deep"),
    pytest.param(_edit(target_of, "FormattedValues", "oops"), id="formatted-values"),
    pytest.param(
        _edit(lambda d: _value(target_of(_parent(d)), "incomingemaildeliverymethod"), "Value", "3"),
        id="parent-target-value",
    ),
    pytest.param(
        _edit(
            lambda d: _parent(d)["InputParameters"][1],
            "value",
            {"__type": "EntityReference:x", "Id": "no", "LogicalName": "x"},
        ),
        id="parent-parameter",
    ),
    pytest.param(
        _edit(lambda d: d["PostEntityImages"][0]["value"], "FormattedValues", [{"v": 1}]),
        id="post-image-formatted-values",
    ),
    pytest.param(
        _set(lambda d: d["PostEntityImages"][0]["value"], "mailboxid", {"__type": "Money:x"}),
        id="primary-name-image-column",
    ),
    pytest.param(
        _edit(lambda d: d["PostEntityImages"][0]["value"], "Id", "not-a-guid"),
        id="primary-name-image-not-needed-for-the-name",
    ),
    pytest.param(_edit(lambda d: d, "OperationId", "not-a-guid"), id="operation-id"),
    pytest.param(_edit(lambda d: d["OwningExtension"], "Id", "not-a-guid"), id="owning-extension"),
]


@pytest.mark.parametrize("edit", NOT_READ)
def test_a_malformed_value_the_decision_does_not_read_changes_nothing(
    edit: Callable[[dict[str, Any]], None],
) -> None:
    # Were the value decoded, the message would be refused: the decision is the clean one's.
    policy = make_policy()
    clean = decide(parse_ok(_body(lambda data: None)), policy)
    assert clean.outcome is Outcome.VIOLATION
    assert decide(parse_ok(_body(edit)), policy).to_dict() == clean.to_dict()


def _read_value(value: Value) -> None:
    if isinstance(value, Entity):
        _read_entity(value)
    elif isinstance(value, EntityCollection):
        for entity in value.entities:
            _read_entity(entity)


def _read_entity(entity: Entity) -> None:
    dict(entity.formatted_values)
    for value in dict(entity.attributes).values():
        _read_value(value)


def _read_everything(context: ExecutionContext) -> None:
    """Decode every value of the context (raising ContractError at the first malformed one)."""
    for value in (*context.input_parameters.values(), *context.shared_variables.values()):
        _read_value(value)
    for image in (*context.pre_images.values(), *context.post_images.values()):
        _read_entity(image)
    _ = (context.operation_id, context.request_id, context.owning_extension)
    if context.parent is not None:
        _read_everything(context.parent)


REAL = [
    *(pytest.param(sample_bytes(n), id=sample_id(n)) for n in SAMPLE_NAMES),
    *(
        pytest.param(dumps(as_mailbox_event(n)), id=f"as-mailbox-{sample_id(n)}")
        for n in SAMPLE_NAMES
    ),
]


@pytest.mark.parametrize("body", REAL)
@pytest.mark.parametrize("policy", [make_policy(), make_policy(extra="scope: all")])
def test_real_samples_decide_as_if_every_value_were_read_first(body: bytes, policy: Policy) -> None:
    eager = parse_ok(body)
    _read_everything(eager)  # every value of the real samples is well-formed
    lazy = decide(parse_ok(body), policy)
    assert lazy.outcome is not Outcome.REJECTED
    assert lazy.to_dict() == decide(eager, policy).to_dict()


def test_a_value_read_twice_is_decoded_once() -> None:
    context = parse_ok(_body(lambda data: None))
    target = context.target
    assert isinstance(target, Entity)
    first = target.attributes["incomingemaildeliverymethod"]
    assert target.attributes["incomingemaildeliverymethod"] is first
    assert dict(target.attributes)["incomingemaildeliverymethod"] is first
