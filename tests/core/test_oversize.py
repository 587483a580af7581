"""Messages over 192 KB: Dataverse drops the bulky parts; the row must be read instead."""

from __future__ import annotations

from typing import Any

import pytest

from guardrails.engine import Fact, Outcome, decide
from guardrails.mailbox import Column, MailboxState, mailbox_event
from guardrails.message import OVERSIZE_PROPERTY
from guardrails.sandbox.messages import oversize, to_body
from guardrails.values import EntityReference

from .conftest import (
    EXAMPLE_MESSAGES_DIR,
    MAILBOX_ID,
    OWNER,
    USER_MAILBOX,
    mailbox,
    make_policy,
    parse_ok,
)


def _built() -> dict[str, Any]:
    return mailbox(
        changes={"incomingemaildeliverymethod": 3},
        before={"incomingemaildeliverymethod": 2, **USER_MAILBOX},
    )


def _check_needs_the_row(decision) -> None:
    assert Fact.MAILBOX_STATE in decision.unverified
    assert any("must be read" in note for note in decision.notes), decision.notes
    assert decision.patch == {}
    assert decision.violations == ()


def test_oversize_body_without_input_parameters() -> None:
    body = to_body(oversize(_built()))
    context = parse_ok(body)
    assert context.oversize is True
    assert context.primary_entity_id == MAILBOX_ID
    assert context.input_parameters == {}
    assert context.parent is None
    assert context.pre_images == {}
    assert context.post_images == {}
    assert mailbox_event(context).incomplete is True
    _check_needs_the_row(decide(context, make_policy()))


@pytest.mark.parametrize(
    "properties",
    [
        {OVERSIZE_PROPERTY: True},
        {"MessageMaxSizeExceeded": "true"},
        {"messagemaxsizeexceeded": 1},
        {"http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName": "mailbox",
         "MessageMaxSizeExceeded": True},
    ],
)  # fmt: skip
def test_oversize_application_property(properties: dict[str, Any]) -> None:
    # Even a body that still has its parts is treated as incomplete when Dataverse says so.
    context = parse_ok(to_body(_built()), properties=properties)
    assert context.oversize is True
    _check_needs_the_row(decide(context, make_policy()))


def test_other_properties_do_not_mean_oversize() -> None:
    properties = {"http://schemas.microsoft.com/xrm/2011/Claims/RequestName": "Update"}
    context = parse_ok(to_body(_built()), properties=properties)
    assert context.oversize is False
    assert decide(context, make_policy()).outcome is Outcome.VIOLATION


def test_oversize_example_message() -> None:
    context = parse_ok((EXAMPLE_MESSAGES_DIR / "oversize-update.json").read_bytes())
    assert context.oversize is True
    _check_needs_the_row(decide(context, make_policy()))


def test_oversize_with_the_row_read() -> None:
    context = parse_ok(to_body(oversize(_built())))
    state = MailboxState(
        mailbox_id=MAILBOX_ID,
        values={Column.INCOMING: 3, Column.OUTGOING: 2, Column.ACT: 1, Column.EMAIL: "a@b.com"},
        etag='W/"468026"',
        regarding=EntityReference("systemuser", OWNER),
    )
    decision = decide(context, make_policy(), state=state)
    assert Fact.MAILBOX_STATE not in decision.unverified
    assert decision.outcome is Outcome.VIOLATION
    assert decision.to_dict()["patch"] == {"incomingemaildeliverymethod": 2}
    # An oversize message cannot say the address changed: the address rule has nothing to revert.
    assert [v.column for v in decision.violations] == [Column.INCOMING]


def test_oversize_with_a_compliant_row() -> None:
    context = parse_ok(to_body(oversize(_built())))
    state = MailboxState(
        mailbox_id=MAILBOX_ID,
        values={Column.INCOMING: 2, Column.OUTGOING: 2, Column.ACT: 1},
        regarding=EntityReference("systemuser", OWNER),
    )
    decision = decide(context, make_policy(), state=state)
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.unverified == ()
    assert decision.patch == {}
