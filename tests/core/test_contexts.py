"""Execution contexts: messages, parents, images, tolerated shapes, encodings."""

from __future__ import annotations

import copy
import json

import pytest

from guardrails.mailbox import Column, mailbox_event
from guardrails.message import ExecutionContext
from guardrails.sandbox.messages import PRE_IMAGE, to_body
from guardrails.values import Entity, EntityReference, OptionSetValue

from .conftest import (
    ACCOUNT_DELETE,
    ACCOUNT_NON_ASCII,
    AGENT_CREATE,
    AGENT_UPDATE,
    CONTACT_UPDATE,
    CUSTOMACTIVITY,
    MAILBOX_ID,
    SAMPLE_NAMES,
    SHAREPOINT,
    USER,
    USER_MAILBOX,
    dumps,
    mailbox,
    parse_ok,
    sample_bytes,
    sample_id,
    sample_json,
)

OPTIONAL_KEYS = [
    "BusinessUnitId",
    "CorrelationId",
    "Depth",
    "InitiatingUserAgent",
    "InitiatingUserAzureActiveDirectoryObjectId",
    "InitiatingUserId",
    "IsExecutingOffline",
    "IsInTransaction",
    "IsOfflinePlayback",
    "IsolationMode",
    "Mode",
    "OperationCreatedOn",
    "OperationId",
    "OrganizationName",
    "OutputParameters",
    "OwningExtension",
    "ParentContext",
    "PostEntityImages",
    "PreEntityImages",
    "RequestId",
    "SecondaryEntityName",
    "SharedVariables",
    "Stage",
    "UserAzureActiveDirectoryObjectId",
    "UserId",
]


def _context(name: str) -> ExecutionContext:
    return parse_ok(sample_bytes(name))


@pytest.mark.parametrize(
    ("name", "message", "target_type"),
    [
        (AGENT_CREATE, "Create", Entity),
        (AGENT_UPDATE, "Update", Entity),
        (ACCOUNT_DELETE, "Delete", EntityReference),
    ],
)
def test_create_update_delete(name: str, message: str, target_type: type) -> None:
    context = _context(name)
    assert context.message_name == message
    assert isinstance(context.target, target_type)


def test_delete_target_is_an_entity_reference() -> None:
    context = _context(ACCOUNT_DELETE)
    assert context.target == EntityReference("account", "01b5eeb5-455e-ee11-be6f-000d3a1aaa29")
    assert context.user_id == "c852a69d-c65d-4311-9033-6b727da8a6de"
    assert context.initiating_user_id == "3a4c38d3-fc8e-eb11-b1ac-000d3a197cea"
    assert context.pre_images == {}
    assert context.mode == 0


def test_parent_context_holds_the_original_request() -> None:
    context = _context(CONTACT_UPDATE)
    assert context.mode == 1
    assert context.stage == 40
    parent = context.parent
    assert parent is not None
    assert parent.stage == 30
    assert parent.message_name == "Update"
    assert parent.parent is None
    parent_target = parent.target
    assert isinstance(parent_target, Entity)
    assert set(parent_target.attributes) == {"firstname", "contactid"}
    assert parent_target.attributes["firstname"] == "James"
    assert parent.input_parameters["SuppressDuplicateDetection"] is False
    # The async Target carries more than the caller sent.
    target = context.target
    assert isinstance(target, Entity)
    assert {"modifiedon", "modifiedby"} <= set(target.attributes)


def test_set_state_shaped_parent_in_the_custom_activity_sample() -> None:
    context = _context(CUSTOMACTIVITY)
    parent = context.parent
    assert parent is not None
    assert parent.target is None
    assert dict(parent.input_parameters) == {
        "EntityMoniker": EntityReference("new_customactivity", context.primary_entity_id),
        "State": OptionSetValue(3),
        "Status": OptionSetValue(4),
    }
    assert parent.shared_variables == {"IsAutoTransact": True}
    assert context.input_parameters["parentExecutionId"] == "1ede9b8e-fdad-4116-9706-d21cd5e30eea"


def test_owning_extension() -> None:
    context = _context(CUSTOMACTIVITY)
    assert context.owning_extension == EntityReference(
        "sdkmessageprocessingstep", "66f73381-973e-ef11-9e49-00155d0001ea"
    )


def test_pre_image_by_its_registered_alias_in_a_sample() -> None:
    context = _context(CUSTOMACTIVITY)
    assert set(context.pre_images) == {"Image"}
    image = context.pre_images["Image"]
    assert image.attributes["statecode"] == OptionSetValue(0)
    assert image.attributes["description"] == "asdf"
    assert set(context.post_images) == {"AsynchronousStepPrimaryName"}
    assert set(context.post_images["AsynchronousStepPrimaryName"].attributes) == {
        "subject",
        "activityid",
    }


def test_post_image_by_its_registered_alias_in_a_sample() -> None:
    context = _context(SHAREPOINT)
    assert set(context.post_images) == {"PostImage", "AsynchronousStepPrimaryName"}
    assert context.post_images["PostImage"].attributes["relativeurl"] is not None


def test_pre_image_from_the_builder() -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 3}, before={"emailaddress": "a@b.com"})
    context = parse_ok(to_body(built))
    assert set(context.pre_images) == {PRE_IMAGE} == {"guardrails_pre"}
    assert context.pre_images[PRE_IMAGE].attributes["emailaddress"] == "a@b.com"


@pytest.mark.parametrize("alias", ["guardrails_pre", "Image", "PreImage", "before", "x y"])
def test_any_pre_image_alias_is_a_full_image(alias: str) -> None:
    built = mailbox(
        changes={"incomingemaildeliverymethod": 3},
        before={"incomingemaildeliverymethod": 2, **USER_MAILBOX},
    )
    built["PreEntityImages"][0]["key"] = alias
    context = parse_ok(to_body(built))
    assert set(context.pre_images) == {alias}
    event = mailbox_event(context)
    assert event.previous == {Column.INCOMING: 2}
    assert event.regarding is not None
    assert event.regarding.logical_name == "systemuser"


def test_unknown_top_level_keys_are_tolerated() -> None:
    data = sample_json(CONTACT_UPDATE)
    extra = copy.deepcopy(data)
    extra["SomethingNewIn2030"] = {"nested": [1, 2, {"x": None}]}
    extra["AnotherFlag"] = True
    extra["ParentContext"]["ParentOnlyKey"] = "value"
    assert parse_ok(dumps(extra)) == parse_ok(dumps(data))


def test_old_shape_without_initiating_user_agent() -> None:
    data = sample_json(CONTACT_UPDATE)
    assert "InitiatingUserAgent" not in data
    assert "UserAzureActiveDirectoryObjectId" not in data
    context = parse_ok(dumps(data))
    assert context.request_id is None
    assert context.user_id == USER.lower()


@pytest.mark.parametrize("key", OPTIONAL_KEYS)
def test_missing_optional_key_is_tolerated(key: str) -> None:
    data = sample_json(AGENT_UPDATE)
    del data[key]
    context = parse_ok(dumps(data))
    assert context.message_name == "Update"
    assert context.primary_entity_id == "3d1feef9-604d-ef11-bfe3-6045bd03d9d8"
    assert context.oversize is False
    assert isinstance(context.target, Entity)


@pytest.mark.parametrize("name", SAMPLE_NAMES, ids=sample_id)
def test_utf8_with_bom(name: str) -> None:
    body = sample_bytes(name)
    assert not body.startswith(b"\xef\xbb\xbf")
    context = parse_ok(b"\xef\xbb\xbf" + body)
    assert context == parse_ok(body)


def test_non_ascii_text_from_the_sample() -> None:
    data = sample_json(ACCOUNT_NON_ASCII)
    raw_names = {
        pair["key"]: pair["value"]
        for pair in data["InputParameters"][0]["value"]["Attributes"]
        if pair["key"] in {"name", "new_name"}
    }
    target = _context(ACCOUNT_NON_ASCII).target
    assert isinstance(target, Entity)
    for key, value in raw_names.items():
        assert target.attributes[key] == value
        assert any(ord(ch) > 127 for ch in target.attributes[key])  # type: ignore[union-attr]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_non_ascii_text_in_a_mailbox_message(ensure_ascii: bool) -> None:
    name = "Zoë Ångström – 東京 📫"
    address = "zoë@exämple.com"
    built = mailbox(
        changes={"emailaddress": address},
        before={"emailaddress": "z@example.com"},
        mailbox_name=name,
    )
    built["PostEntityImages"][0]["value"]["Attributes"][0]["value"] = name
    body = json.dumps(built, ensure_ascii=ensure_ascii).encode("utf-8")
    context = parse_ok(body)
    target = context.target
    assert isinstance(target, Entity)
    assert target.attributes["emailaddress"] == address
    assert context.post_images["AsynchronousStepPrimaryName"].attributes["name"] == name
    assert mailbox_event(context).changed == {Column.EMAIL: address}


def test_guids_are_lower_cased() -> None:
    data = sample_json(AGENT_UPDATE)
    for key in ("PrimaryEntityId", "OrganizationId", "InitiatingUserId", "UserId", "CorrelationId"):
        data[key] = data[key].upper()
    context = parse_ok(dumps(data))
    assert context.primary_entity_id == "3d1feef9-604d-ef11-bfe3-6045bd03d9d8"
    assert context.organization_id == "6042beb1-a93a-ef11-8e4b-00224802c699"
    assert context.initiating_user_id == "d89254ff-9438-ef11-a315-000d3a5a54dc"
    assert context.correlation_id == "e1bcd028-ae87-4ca6-af27-a17ee680dbc9"


def test_builder_message_is_real_shaped() -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 3})
    reference_keys = set(sample_json(AGENT_UPDATE))
    assert set(built) == reference_keys
    context = parse_ok(to_body(built))
    assert context.primary_entity_name == "mailbox"
    assert context.primary_entity_id == MAILBOX_ID
    assert context.stage == 40
    assert context.mode == 1
    assert context.parent is not None
    assert context.parent.stage == 30
    assert set(context.post_images) == {"AsynchronousStepPrimaryName"}
