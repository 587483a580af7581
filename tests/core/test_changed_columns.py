"""guardrails.mailbox.mailbox_event: which governed columns the caller really changed."""

from __future__ import annotations

from typing import Any

import pytest

from guardrails.mailbox import Column, mailbox_event
from guardrails.sandbox.messages import encode, to_body
from guardrails.values import EntityReference

from .conftest import (
    CUSTOMACTIVITY,
    MAILBOX_ID,
    ORG,
    OTHER_PROFILE,
    OWNER,
    PROFILE,
    QUEUE,
    USER,
    USER_MAILBOX,
    as_mailbox_event,
    dumps,
    entity_reference,
    mailbox,
    option,
    parse_ok,
    set_attribute,
    target_of,
)


def _event(built: dict[str, Any]):
    return mailbox_event(parse_ok(to_body(built)))


def test_audit_columns_in_the_async_target_are_not_changes() -> None:
    built = mailbox(
        changes={"incomingemaildeliverymethod": 3}, before={"incomingemaildeliverymethod": 2}
    )
    target_columns = {pair["key"] for pair in target_of(built)["Attributes"]}
    assert {"modifiedon", "modifiedby", "modifiedonbehalfby"} <= target_columns
    event = _event(built)
    assert event.changed == {Column.INCOMING: 3}
    assert event.previous == {Column.INCOMING: 2}
    assert event.message == "Update"
    assert event.mailbox_id == MAILBOX_ID
    assert event.organization_id == ORG
    assert event.initiating_user_id == USER
    assert event.incomplete is False


@pytest.mark.parametrize(
    ("column", "raw"),
    [
        (Column.OUTGOING, option(1)),
        (Column.ACT, option(0)),
        (Column.EMAIL, "computed@contoso.com"),
        (Column.SERVER_PROFILE, entity_reference("emailserverprofile", PROFILE)),
    ],
)
def test_only_columns_in_the_parent_target_count(column: Column, raw: Any) -> None:
    # The stage-40 Target carries a governed column the caller did not send (e.g. computed).
    built = mailbox(changes={"incomingemaildeliverymethod": 3})
    set_attribute(target_of(built), column.value, raw)
    event = _event(built)
    assert event.changed == {Column.INCOMING: 3}
    assert column not in event.changed


def test_without_a_parent_the_target_is_what_was_sent() -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 3})
    built["ParentContext"] = None
    set_attribute(target_of(built), "outgoingemaildeliverymethod", option(1))
    event = _event(built)
    assert event.changed == {Column.INCOMING: 3, Column.OUTGOING: 1}


def test_parent_for_another_row_is_not_used() -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 3})
    target_of(built["ParentContext"])["Id"] = "00000000-0000-0000-0000-000000000001"
    set_attribute(target_of(built), "outgoingemaildeliverymethod", option(1))
    event = _event(built)
    assert event.changed == {Column.INCOMING: 3, Column.OUTGOING: 1}


def test_set_state_shaped_parent_falls_back_to_the_target() -> None:
    # The custom activity sample as a mailbox event: its parent is SetState-shaped (no Target).
    data = as_mailbox_event(CUSTOMACTIVITY)
    set_attribute(target_of(data), "incomingemaildeliverymethod", option(3))
    event = mailbox_event(parse_ok(dumps(data)))
    assert event.changed == {Column.INCOMING: 3}
    assert event.previous == {}
    # The automatic image carries only the name and the key; the "Image" pre image is a full one.
    assert event.regarding == EntityReference(
        "new_otherentity", "8b1579d9-7e63-ef11-9e4a-00155d0001ea"
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("incomingemaildeliverymethod", 3),
        ("outgoingemaildeliverymethod", 1),
        ("actdeliverymethod", 0),
        ("emailaddress", "me@contoso.com"),
        ("emailserverprofile", PROFILE),
    ],
)
def test_same_value_as_the_pre_image_is_not_a_change(column: str, value: Any) -> None:
    built = mailbox(
        changes={column: value, "incomingemaildeliverymethod": 3}
        if column != "incomingemaildeliverymethod"
        else {column: value},
        before={"incomingemaildeliverymethod": 2, column: value},
    )
    event = _event(built)
    assert Column(column) not in event.changed
    assert Column(column) in event.previous
    if column != "incomingemaildeliverymethod":
        assert event.changed == {Column.INCOMING: 3}  # the real change next to it still counts


def test_same_lookup_with_a_name_and_other_case_is_not_a_change() -> None:
    built = mailbox(changes={"emailserverprofile": PROFILE}, before={"emailserverprofile": PROFILE})
    image = built["PreEntityImages"][0]["value"]
    set_attribute(
        image,
        "emailserverprofile",
        entity_reference("emailserverprofile", PROFILE.upper(), "Exchange"),
    )
    event = _event(built)
    assert event.changed == {}
    assert event.previous[Column.SERVER_PROFILE] == EntityReference("emailserverprofile", PROFILE)


def test_different_lookup_is_a_change() -> None:
    built = mailbox(
        changes={"emailserverprofile": OTHER_PROFILE}, before={"emailserverprofile": PROFILE}
    )
    event = _event(built)
    assert event.changed == {
        Column.SERVER_PROFILE: EntityReference("emailserverprofile", OTHER_PROFILE)
    }
    assert event.previous == {Column.SERVER_PROFILE: EntityReference("emailserverprofile", PROFILE)}


def test_no_pre_image_every_sent_column_counts() -> None:
    built = mailbox(
        changes={
            "incomingemaildeliverymethod": 2,
            "outgoingemaildeliverymethod": 2,
            "actdeliverymethod": 1,
            "emailaddress": "me@contoso.com",
            "emailserverprofile": PROFILE,
            "name": "not governed",
        }
    )
    assert built["PreEntityImages"] == []
    event = _event(built)
    assert event.changed == {
        Column.INCOMING: 2,
        Column.OUTGOING: 2,
        Column.ACT: 1,
        Column.EMAIL: "me@contoso.com",
        Column.SERVER_PROFILE: EntityReference("emailserverprofile", PROFILE),
    }
    assert event.previous == {}


def test_pre_image_without_the_column_counts_as_changed() -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 2}, before={"emailaddress": "a@b.com"})
    event = _event(built)
    assert event.changed == {Column.INCOMING: 2}
    assert event.previous == {}


def test_pre_image_only_columns_are_not_changes() -> None:
    built = mailbox(
        changes={"incomingemaildeliverymethod": 3},
        before={"incomingemaildeliverymethod": 2, "outgoingemaildeliverymethod": 1, **USER_MAILBOX},
    )
    event = _event(built)
    assert event.changed == {Column.INCOMING: 3}
    assert event.previous == {Column.INCOMING: 2}


def test_choices_are_compared_as_numbers() -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 3})
    value = _event(built).changed[Column.INCOMING]
    assert value == 3
    assert type(value) is int


def test_create_counts_every_sent_governed_column() -> None:
    built = mailbox(
        message="Create",
        changes={"incomingemaildeliverymethod": 2, "actdeliverymethod": 0, "name": "Adele"},
    )
    event = _event(built)
    assert event.message == "Create"
    assert event.changed == {Column.INCOMING: 2, Column.ACT: 0}


def test_the_automatic_image_is_not_a_full_image() -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 3})
    auto = built["PostEntityImages"][0]
    assert auto["key"] == "AsynchronousStepPrimaryName"
    set_attribute(auto["value"], "regardingobjectid", encode("regardingobjectid", ("queue", QUEUE)))
    # A pre image under the automatic name is not a full image either.
    built["PreEntityImages"] = [
        {
            "key": "AsynchronousStepPrimaryName",
            "value": {
                "Attributes": [{"key": "incomingemaildeliverymethod", "value": option(3)}],
                "Id": MAILBOX_ID,
                "LogicalName": "mailbox",
            },
        }
    ]
    event = _event(built)
    assert event.regarding is None
    assert event.previous == {}
    assert event.changed == {Column.INCOMING: 3}


def test_regarding_and_owner_from_the_pre_image() -> None:
    built = mailbox(
        changes={"incomingemaildeliverymethod": 3},
        before={**USER_MAILBOX, "ownerid": OWNER},
    )
    event = _event(built)
    assert event.regarding == EntityReference("systemuser", OWNER)
    assert event.owner == EntityReference("systemuser", OWNER)


def test_row_version_from_the_target() -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 3}, row_version=468026)
    assert _event(built).row_version == "468026"


@pytest.mark.parametrize(
    ("top", "parent", "expected"),
    [
        (None, None, set()),
        ("mailbox-guardrails", None, {"mailbox-guardrails"}),
        (None, "mailbox-guardrails", {"mailbox-guardrails"}),
        ("a", "b", {"a", "b"}),
    ],
)
def test_tags_from_shared_variables(
    top: str | None, parent: str | None, expected: set[str]
) -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 3}, tag=parent)
    if top is not None:
        built["SharedVariables"].append({"key": "tag", "value": top})
    assert _event(built).tags == frozenset(expected)


def test_non_text_tag_is_ignored() -> None:
    built = mailbox(changes={"incomingemaildeliverymethod": 3})
    built["SharedVariables"].append({"key": "tag", "value": 5})
    assert _event(built).tags == frozenset()
