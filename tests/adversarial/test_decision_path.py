"""Findings 1-5 of the security review, each reproduced against the pure decision path.

Every test here failed on the code before the hardening: a forged tag exempted a change, the
pre image's address was written back and approved, ids from the message reached URLs, and some
bodies raised instead of ending as a decision or a rejection.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from guardrails.engine import Fact, Facts, Outcome, UserFacts, decide
from guardrails.mailbox import GUARDRAIL_TAG, Column, MailboxState
from guardrails.message import ExecutionContext, Rejection, parse_message
from guardrails.sandbox.messages import to_body
from guardrails.values import EntityReference
from tests.core.conftest import (
    GUARDRAIL_USER,
    MAILBOX_ID,
    OWNER,
    USER,
    USER_MAILBOX,
    mailbox,
    make_policy,
    rejected_when_decided,
    target_of,
    walk_contexts,
)

CEO = "c0c0c0c0-1111-2222-3333-444444444444"
CEO_ADDRESS = "satya@contoso.com"
OWNER_ADDRESS = "adele@contoso.com"
OWNER_FACTS = UserFacts(id=OWNER, email=OWNER_ADDRESS, upn="adele@contoso.onmicrosoft.com")
RESTORING = make_policy(
    """
  delivery_methods:
    incoming_email: server_side_sync
  email_address:
    changes: forbidden
    restore_approval: true
"""
)


def owner_row(address: str, *, regarding: str = OWNER) -> MailboxState:
    """The row as Dataverse has it: its regarding user is the truth, not the message's claim."""
    return MailboxState(
        mailbox_id=MAILBOX_ID,
        values={Column.EMAIL: address},
        etag='W/"900"',
        regarding=EntityReference("systemuser", regarding),
        owner=EntityReference("systemuser", regarding),
        name="Adele Vance",
    )


def context_of(data: dict[str, Any]) -> ExecutionContext:
    parsed = parse_message(to_body(data))
    assert isinstance(parsed, ExecutionContext), parsed
    return parsed


# --- finding 1: the loop guard trusted the tag ------------------------------------------------


def test_a_users_own_tag_does_not_exempt_their_change() -> None:
    data = mailbox(
        changes={"incomingemaildeliverymethod": 3},
        before={"incomingemaildeliverymethod": 2, **USER_MAILBOX},
        tag=GUARDRAIL_TAG,
    )
    decision = decide(context_of(data), RESTORING, Facts(guardrail_user_id=GUARDRAIL_USER))
    assert decision.outcome is Outcome.VIOLATION
    assert decision.patch == {Column.INCOMING: 2}


def test_the_tag_alone_exempts_nothing_offline_either() -> None:
    data = mailbox(
        changes={"incomingemaildeliverymethod": 3},
        before={"incomingemaildeliverymethod": 2, **USER_MAILBOX},
        tag=GUARDRAIL_TAG,
    )
    assert decide(context_of(data), RESTORING).outcome is Outcome.VIOLATION


def test_own_write_is_recognised_by_the_initiating_user_anywhere_in_the_chain() -> None:
    data = mailbox(
        changes={"incomingemaildeliverymethod": 2},
        before={"incomingemaildeliverymethod": 3, **USER_MAILBOX},
    )
    # A plug-in running as another user carried the guardrail's write down the pipeline.
    data["InitiatingUserId"] = USER
    data["ParentContext"]["InitiatingUserId"] = GUARDRAIL_USER
    decision = decide(context_of(data), RESTORING, Facts(guardrail_user_id=GUARDRAIL_USER))
    assert decision.outcome is Outcome.IGNORED
    assert "own write" in decision.reason


# --- findings 2 and 3: the address written back came from the message -------------------------


def address_change(previous: str, new: str, *, regarding: str = OWNER) -> ExecutionContext:
    return context_of(
        mailbox(
            changes={"emailaddress": new},
            before={"emailaddress": previous, "regardingobjectid": ("systemuser", regarding)},
        )
    )


def test_two_step_hijack_reverts_to_the_owners_address_not_the_executives() -> None:
    # Step 1 set the CEO's address; step 2 changes it again. Step 2's pre image is the CEO's.
    context = address_change(CEO_ADDRESS, "anything@contoso.com")
    facts = Facts(guardrail_user_id=GUARDRAIL_USER, owner=OWNER_FACTS)
    decision = decide(context, RESTORING, facts, owner_row("anything@contoso.com"))
    assert decision.outcome is Outcome.VIOLATION
    assert decision.patch == {Column.EMAIL: OWNER_ADDRESS}
    assert decision.restore_approval  # the owner's own address may be approved


def test_pre_image_address_is_kept_when_it_is_the_owners_own() -> None:
    upn = "adele@contoso.onmicrosoft.com"
    context = address_change(upn.upper(), "someone@contoso.com")
    facts = Facts(guardrail_user_id=GUARDRAIL_USER, owner=OWNER_FACTS)
    decision = decide(context, RESTORING, facts, owner_row("someone@contoso.com"))
    assert decision.patch == {Column.EMAIL: upn.upper()}
    assert decision.restore_approval


def test_forged_regarding_in_the_message_does_not_pick_whose_address_is_written() -> None:
    # A queue sender claims the mailbox belongs to the CEO; the row says it is Adele's.
    context = address_change(CEO_ADDRESS, "x@contoso.com", regarding=CEO)
    ceo = UserFacts(id=CEO, email=CEO_ADDRESS)
    offline = decide(context, RESTORING, Facts(guardrail_user_id=GUARDRAIL_USER, owner=ceo))
    assert Column.EMAIL not in offline.patch
    assert Fact.MAILBOX_STATE in offline.unverified
    facts = Facts(guardrail_user_id=GUARDRAIL_USER, owner=OWNER_FACTS)
    live = decide(context, RESTORING, facts, owner_row("x@contoso.com"))
    assert live.owner_user_id == OWNER
    assert live.patch == {Column.EMAIL: OWNER_ADDRESS}


def test_no_owner_address_means_no_address_written_and_a_human_is_asked() -> None:
    context = address_change(CEO_ADDRESS, "x@contoso.com")
    nobody = UserFacts(id=OWNER)  # the owner has no directory address
    facts = Facts(guardrail_user_id=GUARDRAIL_USER, owner=nobody)
    policy = make_policy(
        "\n  email_address:\n    changes: forbidden\n    restore_approval: true\n",
        "notifications:\n  enabled: true\n  sender: g@contoso.com\n"
        "  extra_recipients: [secops@contoso.com]\n",
    )
    decision = decide(context, policy, facts, owner_row("x@contoso.com"))
    assert decision.outcome is Outcome.VIOLATION
    assert Column.EMAIL not in decision.patch
    assert not decision.restore_approval
    assert decision.attention is not None and "needs" in decision.attention
    assert decision.notify_also == ("secops@contoso.com",)


# --- finding 4: ids and headers from the message ----------------------------------------------

HOSTILE_ID = "11bb11bb-cc22-dd33-ee44-55ff55ff55ff)/systemuserroles_association?$select=name&x=("


@pytest.mark.parametrize(
    "key", ["PrimaryEntityId", "InitiatingUserId", "UserId", "OrganizationId", "CorrelationId"]
)
def test_a_non_guid_id_makes_the_message_a_rejection(key: str) -> None:
    data = mailbox(changes={"incomingemaildeliverymethod": 3}, before=USER_MAILBOX)
    data[key] = HOSTILE_ID
    result = parse_message(to_body(data))
    assert isinstance(result, Rejection)
    assert key in result.reason and "GUID" in result.reason


def test_a_non_guid_id_in_the_parent_context_is_rejected_too() -> None:
    data = mailbox(changes={"incomingemaildeliverymethod": 3}, before=USER_MAILBOX)
    data["ParentContext"]["InitiatingUserId"] = HOSTILE_ID
    assert isinstance(parse_message(to_body(data)), Rejection)


def test_a_non_guid_lookup_id_is_rejected() -> None:
    # The lookup is decoded when the decision reads it, and the message is refused there.
    data = mailbox(
        changes={"incomingemaildeliverymethod": 3},
        before={"regardingobjectid": ("systemuser", OWNER)},
    )
    pre = data["PreEntityImages"][0]["value"]
    for pair in pre["Attributes"]:
        if pair["key"] == "regardingobjectid":
            pair["value"]["Id"] = HOSTILE_ID
    decision = rejected_when_decided(to_body(data), RESTORING)
    assert "PreEntityImages[guardrails_pre].Attributes[regardingobjectid].Id" in decision.reason
    assert "GUID" in decision.reason


@pytest.mark.parametrize("version", ["1\r\nX-Evil: yes", 'W/"1"', "12a", "-5", "9" * 40])
def test_a_row_version_that_is_not_a_number_is_rejected(version: str) -> None:
    data = mailbox(changes={"incomingemaildeliverymethod": 3}, before=USER_MAILBOX)
    target_of(data)["RowVersion"] = version
    result = parse_message(to_body(data))
    assert isinstance(result, Rejection)
    assert "RowVersion" in result.reason


# --- finding 5: bodies that raised --------------------------------------------------------------


def test_a_date_with_thousands_of_digits_is_not_a_crash() -> None:
    data = mailbox(changes={"incomingemaildeliverymethod": 3}, before=USER_MAILBOX)
    data["OperationCreatedOn"] = "/Date(" + "9" * 5000 + ")/"
    for context in walk_contexts(data):
        context["OperationCreatedOn"] = "/Date(" + "1" * 4500 + ")/"
    result = parse_message(to_body(data))
    assert isinstance(result, ExecutionContext | Rejection)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_a_rejection(constant: str) -> None:
    data = mailbox(changes={"incomingemaildeliverymethod": 3}, before=USER_MAILBOX)
    text = to_body(data).decode()
    text = text.replace('"Depth": 1', f'"Depth": {constant}', 1)
    result = parse_message(text.encode())
    assert isinstance(result, Rejection)
    assert constant.lstrip("-") in result.reason


def test_nan_in_the_pre_image_is_a_rejection() -> None:
    data = mailbox(
        changes={"incomingemaildeliverymethod": 3},
        before={"incomingemaildeliverymethod": 2, **USER_MAILBOX},
    )
    pre = copy.deepcopy(data)
    pre["PreEntityImages"][0]["value"]["Attributes"].append({"key": "x", "value": "NaNPLACE"})
    body = json.dumps(pre).replace('"NaNPLACE"', "NaN").encode()
    assert isinstance(parse_message(body), Rejection)


def test_lone_surrogates_are_replaced_so_every_output_can_encode_them() -> None:
    data = mailbox(changes={"emailaddress": "x@contoso.com"}, before=USER_MAILBOX)
    body = json.dumps(data).replace("x@contoso.com", "x\\ud800@contoso.com").encode()
    context = parse_message(body)
    assert isinstance(context, ExecutionContext)
    decision = decide(context, RESTORING)
    json.dumps(decision.to_dict(), ensure_ascii=False).encode("utf-8")  # must not raise


def test_a_body_over_the_size_limit_is_rejected_unread() -> None:
    body = b"{" + b" " * 2_000_000 + b"}"
    result = parse_message(body, max_bytes=1_000_000)
    assert isinstance(result, Rejection)
    assert "1000000" in result.reason.replace(",", "")


@pytest.mark.parametrize("field", ["PrimaryEntityId", "RowVersion"])
def test_a_trailing_newline_does_not_pass_as_a_guid_or_a_row_version(field: str) -> None:
    """Python's `$` matches before a final newline: `id\\n` and `123\\n` must still be refused,
    or the newline would reach a URL or an If-Match header."""
    data = mailbox(changes={"incomingemaildeliverymethod": 3}, before=USER_MAILBOX)
    if field == "RowVersion":
        target_of(data)["RowVersion"] = "123\n"
    else:
        data[field] = MAILBOX_ID + "\n"
    result = parse_message(to_body(data))
    assert isinstance(result, Rejection), result
    assert field in result.reason
