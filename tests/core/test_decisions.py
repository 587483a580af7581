"""Decisions on real-shaped mailbox messages (guardrails.sandbox.messages) under YAML policies."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from guardrails.engine import Decision, Fact, Facts, Outcome, QueueFacts, UserFacts, decide
from guardrails.mailbox import Column, MailboxState
from guardrails.message import ExecutionContext, parse_message
from guardrails.sandbox.messages import to_body
from guardrails.values import EntityReference

from .conftest import (
    ACCOUNT_DELETE,
    BASELINE_RULES,
    COMPLIANT,
    EXAMPLE_MESSAGES_DIR,
    GUARDRAIL_USER,
    MAILBOX_ID,
    ORG,
    OTHER_ORG,
    OTHER_PROFILE,
    OWNER,
    PROFILE,
    QUEUE,
    QUEUE_MAILBOX,
    ROLE_ID,
    SAMPLE_NAMES,
    USER,
    USER_MAILBOX,
    as_mailbox_event,
    decide_mailbox,
    dumps,
    mailbox,
    make_policy,
    parse_ok,
    sample_id,
    target_of,
)

FORWARD = {"incomingemaildeliverymethod": 3}
BEFORE = {**COMPLIANT, **USER_MAILBOX}
OWNER_FACTS = UserFacts(id=OWNER, email="owner@contoso.com")


def trusted(address: str, owner: UserFacts = OWNER_FACTS) -> dict[str, Any]:
    """What the executor learns before writing an address: the row (whose mailbox it really is)
    and the owner's directory entry."""
    state = MailboxState(
        mailbox_id=MAILBOX_ID,
        values={Column.EMAIL: address},
        etag='W/"7"',
        regarding=EntityReference("systemuser", OWNER),
    )
    return {"facts": Facts(owner=owner), "state": state}


def _only(decision: Decision) -> Any:
    assert len(decision.violations) == 1, decision.violations
    return decision.violations[0]


# --- delivery methods ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        (Column.INCOMING, 3, 2),
        (Column.INCOMING, 1, 2),
        (Column.INCOMING, 0, 2),
        (Column.OUTGOING, 1, 2),
        (Column.OUTGOING, 0, 2),
        (Column.ACT, 0, 1),
        (Column.ACT, 2, 1),
    ],
)
def test_delivery_method_violation(baseline, column: Column, value: int, expected: int) -> None:
    decision = decide_mailbox(baseline, changes={column.value: value}, before=BEFORE)
    assert decision.outcome is Outcome.VIOLATION
    violation = _only(decision)
    assert violation.rule == "delivery_methods"
    assert violation.column is column
    assert violation.actual == value
    assert violation.expected == expected
    assert violation.enforced is True
    assert decision.patch == {column: expected}
    assert decision.to_dict()["patch"] == {column.value: expected}
    assert decision.unverified == ()
    assert decision.reason.startswith("Reverting")


def test_forward_mailbox_by_a_non_exempt_user(baseline) -> None:
    decision = decide_mailbox(baseline, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.VIOLATION
    violation = _only(decision)
    assert (violation.rule, violation.column, violation.actual, violation.expected) == (
        "delivery_methods",
        Column.INCOMING,
        3,
        2,
    )
    assert "Forward Mailbox (3)" in violation.message
    assert decision.to_dict()["patch"] == {"incomingemaildeliverymethod": 2}
    record = decision.to_dict()
    assert record["mailbox_id"] == MAILBOX_ID
    assert record["organization_id"] == ORG
    assert record["initiating_user_id"] == USER
    assert record["owner_user_id"] == OWNER
    assert record["violations"] == [
        {
            "rule": "delivery_methods",
            "column": "incomingemaildeliverymethod",
            "actual": 3,
            "expected": 2,
            "enforced": True,
            "message": violation.message,
        }
    ]
    json.dumps(record)


def test_readable_names_in_the_policy_mean_the_numbers() -> None:
    policy = make_policy(
        "\n  delivery_methods:\n    incoming_email: forward_mailbox\n    outgoing_email: outlook\n"
        "    appointments_contacts_tasks: none\n"
    )
    decision = decide_mailbox(
        policy,
        changes={"incomingemaildeliverymethod": 2, "outgoingemaildeliverymethod": 2},
        before=USER_MAILBOX,
    )
    assert decision.to_dict()["patch"] == {
        "incomingemaildeliverymethod": 3,
        "outgoingemaildeliverymethod": 1,
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"incomingemaildeliverymethod": 2},
        {"outgoingemaildeliverymethod": 2},
        {"actdeliverymethod": 1},
        {
            "incomingemaildeliverymethod": 2,
            "outgoingemaildeliverymethod": 2,
            "actdeliverymethod": 1,
        },
    ],
)
def test_change_back_to_compliant_values(baseline, changes: dict[str, int]) -> None:
    before = {
        **BEFORE,
        "incomingemaildeliverymethod": 3,
        "outgoingemaildeliverymethod": 1,
        "actdeliverymethod": 0,
    }
    decision = decide_mailbox(baseline, changes=changes, before=before)
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.violations == ()
    assert decision.patch == {}
    assert decision.to_dict()["patch"] == {}
    assert not decision.patch


def test_the_back_to_compliant_example_message(baseline) -> None:
    body = (EXAMPLE_MESSAGES_DIR / "back-to-server-side-sync.json").read_bytes()
    decision = decide(parse_ok(body), baseline)
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.patch == {}


def test_update_touching_no_governed_column(baseline) -> None:
    decision = decide_mailbox(baseline, changes={"name": "Renamed"}, before=BEFORE)
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.reason == "No governed column changed."


# --- email address -------------------------------------------------------------------------------


def test_email_address_change_is_not_written_back_from_the_message_alone(baseline) -> None:
    decision = decide_mailbox(baseline, changes={"emailaddress": "ceo@contoso.com"}, before=BEFORE)
    assert decision.outcome is Outcome.VIOLATION
    assert decision.patch == {}
    assert Fact.MAILBOX_STATE in decision.unverified


def test_email_address_change_is_reverted_to_the_owners_pre_image(baseline) -> None:
    decision = decide_mailbox(
        baseline,
        **trusted("ceo@contoso.com"),
        changes={"emailaddress": "ceo@contoso.com"},
        before=BEFORE,
    )
    assert decision.outcome is Outcome.VIOLATION
    violation = _only(decision)
    assert violation.rule == "email_address"
    assert violation.column is Column.EMAIL
    assert violation.actual == "ceo@contoso.com"
    assert violation.expected == "owner@contoso.com"
    assert violation.enforced is True
    assert decision.to_dict()["patch"] == {"emailaddress": "owner@contoso.com"}
    assert decision.restore_approval is False


def test_email_address_change_without_pre_image(baseline) -> None:
    offline = decide_mailbox(baseline, changes={"emailaddress": "ceo@contoso.com"})
    assert offline.outcome is Outcome.VIOLATION
    violation = _only(offline)
    assert violation.expected is None
    assert violation.to_dict()["expected"] is None
    assert "looked up in Dataverse" in violation.message
    assert offline.patch == {}
    assert offline.to_dict()["patch"] == {}
    live = decide_mailbox(
        baseline, **trusted("ceo@contoso.com"), changes={"emailaddress": "ceo@contoso.com"}
    )
    assert live.patch == {Column.EMAIL: "owner@contoso.com"}  # the owner's directory address


def test_restore_approval_after_reverting_an_address() -> None:
    policy = make_policy("\n  email_address:\n    restore_approval: true\n")
    decision = decide_mailbox(
        policy,
        **trusted("ceo@contoso.com"),
        changes={"emailaddress": "ceo@contoso.com"},
        before=BEFORE,
    )
    assert decision.restore_approval is True
    no_revert = decide_mailbox(policy, changes={"emailaddress": "ceo@contoso.com"})
    assert no_revert.restore_approval is False


def test_email_changes_allowed() -> None:
    policy = make_policy("\n  email_address:\n    changes: allowed\n")
    decision = decide_mailbox(policy, changes={"emailaddress": "ceo@contoso.com"}, before=BEFORE)
    assert decision.outcome is Outcome.COMPLIANT


def test_the_email_example_message(baseline) -> None:
    body = (EXAMPLE_MESSAGES_DIR / "email-address-to-ceo.json").read_bytes()
    context = parse_ok(body)
    offline = decide(context, baseline)
    assert offline.outcome is Outcome.VIOLATION
    assert offline.patch == {}  # the address to restore needs the row and the directory
    assert Fact.MAILBOX_STATE in offline.unverified
    event = offline.event
    assert event is not None and event.regarding is not None
    adele = UserFacts(id=event.regarding.id, email="adele@contoso.com")
    state = MailboxState(
        mailbox_id=context.primary_entity_id,
        values={Column.EMAIL: event.changed[Column.EMAIL]},
        etag='W/"1"',
        regarding=event.regarding,
    )
    live = decide(context, baseline, Facts(owner=adele), state)
    assert live.to_dict()["patch"] == {"emailaddress": "adele@contoso.com"}


# --- exemptions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("listed", [USER, USER.upper()])
def test_exempt_user_by_id(listed: str) -> None:
    policy = make_policy(extra=f"exemptions:\n  users: [{listed}]\n")
    decision = decide_mailbox(policy, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.IGNORED
    assert USER in decision.reason
    assert decision.patch == {}


@pytest.mark.parametrize("email", ["admin@contoso.com", "Admin@Contoso.com"])
def test_exempt_user_by_email(email: str) -> None:
    policy = make_policy(extra="exemptions:\n  users: [ADMIN@contoso.com]\n")
    facts = Facts(initiator=UserFacts(id=USER, email=email))
    decision = decide_mailbox(policy, facts, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.IGNORED
    assert decision.unverified == ()


def test_exempt_user_by_sign_in_name() -> None:
    # Admins often know each other by UPN, which need not be the primary email.
    policy = make_policy(extra="exemptions:\n  users: [admin@contoso.onmicrosoft.com]\n")
    facts = Facts(
        initiator=UserFacts(id=USER, email="admin@contoso.com", upn="Admin@contoso.onmicrosoft.com")
    )
    decision = decide_mailbox(policy, facts, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.IGNORED
    assert "admin@contoso.onmicrosoft.com" in decision.reason.lower()
    not_listed = Facts(initiator=UserFacts(id=USER, email="admin@contoso.com", upn="x@y.com"))
    assert decide_mailbox(policy, not_listed, changes=FORWARD, before=BEFORE).outcome is (
        Outcome.VIOLATION
    )


@pytest.mark.parametrize(
    ("listed", "user"),
    [
        pytest.param(
            "System Administrator",
            UserFacts(id=USER, role_names=frozenset({"system administrator"})),
            id="role-name-lower-cased-as-UserFacts-documents",
        ),
        pytest.param(
            "system administrator",
            UserFacts(id=USER, role_names=frozenset({"system administrator"})),
            id="role-name-lower-case-in-policy",
        ),
        pytest.param(ROLE_ID, UserFacts(id=USER, role_ids=frozenset({ROLE_ID})), id="role-id"),
        pytest.param(
            ROLE_ID.upper(),
            UserFacts(id=USER, role_ids=frozenset({ROLE_ID})),
            id="role-id-upper-case-in-policy",
        ),
    ],
)
def test_exempt_by_security_role(listed: str, user: UserFacts) -> None:
    policy = make_policy(extra=f"exemptions:\n  security_roles: ['{listed}']\n")
    decision = decide_mailbox(policy, Facts(initiator=user), changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.IGNORED
    assert "exempt role" in decision.reason
    assert decision.patch == {}


def test_example_policy_exempts_system_administrators(example_policy) -> None:
    # The example policy lists "System Administrator"; UserFacts carries role names lower-cased.
    facts = Facts(initiator=UserFacts(id=USER, role_names=frozenset({"system administrator"})))
    decision = decide_mailbox(example_policy, facts, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.IGNORED


@pytest.mark.parametrize(
    "exemptions",
    [
        "exemptions:\n  security_roles: [System Administrator]\n",
        "exemptions:\n  users: [admin@contoso.com]\n",
    ],
)
def test_role_or_email_exemptions_without_initiator_facts(exemptions: str) -> None:
    policy = make_policy(extra=exemptions)
    decision = decide_mailbox(policy, changes=FORWARD, before=BEFORE)
    assert Fact.INITIATOR in decision.unverified
    assert decision.outcome is Outcome.VIOLATION  # a plan, to be confirmed once looked up


def test_initiator_known_and_not_exempt() -> None:
    policy = make_policy(extra="exemptions:\n  security_roles: [System Administrator]\n")
    facts = Facts(initiator=UserFacts(id=USER, email="u@contoso.com", role_names=frozenset()))
    decision = decide_mailbox(policy, facts, changes=FORWARD, before=BEFORE)
    assert Fact.INITIATOR not in decision.unverified
    assert decision.outcome is Outcome.VIOLATION
    assert decision.to_dict()["patch"] == {"incomingemaildeliverymethod": 2}


def test_id_exemptions_need_no_lookup() -> None:
    policy = make_policy(extra=f"exemptions:\n  users: [{GUARDRAIL_USER}]\n")
    decision = decide_mailbox(policy, changes=FORWARD, before=BEFORE)
    assert Fact.INITIATOR not in decision.unverified
    assert decision.outcome is Outcome.VIOLATION


# --- the guardrail's own writes ------------------------------------------------------------------


def test_a_tag_in_the_parent_is_noted_but_exempts_nothing(baseline) -> None:
    decision = decide_mailbox(baseline, changes=FORWARD, before=BEFORE, tag="mailbox-guardrails")
    assert decision.outcome is Outcome.VIOLATION
    assert any("exempts nothing" in note for note in decision.notes)


def test_a_tag_at_the_top_level_exempts_nothing(baseline) -> None:
    built = mailbox(changes=FORWARD, before=BEFORE)
    built["SharedVariables"].append({"key": "tag", "value": "mailbox-guardrails"})
    decision = decide(parse_ok(to_body(built)), baseline)
    assert decision.outcome is Outcome.VIOLATION


def test_own_write_is_recognised_by_the_initiating_user(baseline) -> None:
    decision = decide_mailbox(
        baseline, Facts(guardrail_user_id=USER), changes=FORWARD, before=BEFORE
    )
    assert decision.outcome is Outcome.IGNORED
    assert decision.reason == "The guardrail's own write."


def test_other_tags_are_not_the_guardrail(baseline) -> None:
    decision = decide_mailbox(baseline, changes=FORWARD, before=BEFORE, tag="someone-else")
    assert decision.outcome is Outcome.VIOLATION


def test_own_write_by_the_guardrail_user(baseline) -> None:
    facts = Facts(guardrail_user_id=GUARDRAIL_USER)
    decision = decide_mailbox(baseline, facts, changes=FORWARD, before=BEFORE, user=GUARDRAIL_USER)
    assert decision.outcome is Outcome.IGNORED
    assert decision.reason == "The guardrail's own write."
    other = decide_mailbox(baseline, facts, changes=FORWARD, before=BEFORE, user=USER)
    assert other.outcome is Outcome.VIOLATION


# --- mailbox exemptions, other messages, other organizations ----------------------------------


@pytest.mark.parametrize("listed", [MAILBOX_ID, MAILBOX_ID.upper()])
def test_exempt_mailbox(listed: str) -> None:
    policy = make_policy(extra=f"exemptions:\n  mailboxes: [{listed}]\n")
    decision = decide_mailbox(policy, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.IGNORED
    assert decision.reason == "The mailbox is exempt."


def test_delete_of_a_mailbox_is_ignored(baseline) -> None:
    data = as_mailbox_event(ACCOUNT_DELETE)
    for context in (data, data["ParentContext"]):
        target_of(context)["LogicalName"] = "mailbox"
    context = parse_ok(dumps(data))
    assert isinstance(context.target, EntityReference)
    decision = decide(context, baseline)
    assert decision.outcome is Outcome.IGNORED
    assert decision.reason == "Delete of a mailbox is not governed."


@pytest.mark.parametrize("message", ["Delete", "Assign", "SetState", "Retrieve"])
def test_other_messages_of_a_mailbox_are_ignored(baseline, message: str) -> None:
    built = mailbox(changes=FORWARD, before=BEFORE)
    built["MessageName"] = message
    decision = decide(parse_ok(to_body(built)), baseline)
    assert decision.outcome is Outcome.IGNORED
    assert decision.patch == {}


@pytest.mark.parametrize("name", SAMPLE_NAMES, ids=sample_id)
def test_real_samples_as_mailbox_events(baseline, name: str) -> None:
    # Real shapes relabelled as this organization's mailbox events: no governed column is in them.
    decision = decide(parse_ok(dumps(as_mailbox_event(name))), baseline)
    assert decision.outcome in {Outcome.COMPLIANT, Outcome.IGNORED}
    assert decision.violations == ()
    assert decision.patch == {}


def test_other_organizations_mailbox_event_is_rejected(baseline) -> None:
    decision = decide_mailbox(baseline, changes=FORWARD, before=BEFORE, org=OTHER_ORG)
    assert decision.outcome is Outcome.REJECTED
    assert OTHER_ORG in decision.reason
    assert ORG in decision.reason
    assert decision.patch == {}


def test_organization_ids_compare_case_insensitively(baseline) -> None:
    decision = decide_mailbox(baseline, changes=FORWARD, before=BEFORE, org=ORG.upper())
    assert decision.outcome is Outcome.VIOLATION


# --- Create --------------------------------------------------------------------------------------


def test_create_is_compared_with_the_policy(baseline) -> None:
    decision = decide_mailbox(
        baseline,
        message="Create",
        changes={
            "incomingemaildeliverymethod": 2,
            "outgoingemaildeliverymethod": 1,
            "actdeliverymethod": 0,
            "emailaddress": "adele@contoso.com",
            **USER_MAILBOX,
        },
    )
    assert decision.outcome is Outcome.VIOLATION
    assert {v.column for v in decision.violations} == {Column.OUTGOING, Column.ACT}
    assert decision.to_dict()["patch"] == {
        "outgoingemaildeliverymethod": 2,
        "actdeliverymethod": 1,
    }
    assert decision.unverified == ()


def test_compliant_create(baseline) -> None:
    decision = decide_mailbox(baseline, message="Create", changes={**COMPLIANT, **USER_MAILBOX})
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.unverified == ()


def test_create_missing_governed_columns_needs_the_row(baseline) -> None:
    decision = decide_mailbox(baseline, message="Create", changes={**FORWARD, **USER_MAILBOX})
    assert Fact.MAILBOX_STATE in decision.unverified
    assert decision.to_dict()["patch"] == {"incomingemaildeliverymethod": 2}


def test_create_missing_a_governed_server_profile_needs_the_row() -> None:
    policy = make_policy(f"\n  server_profile:\n    expected: {PROFILE}\n")
    decision = decide_mailbox(policy, message="Create", changes={**COMPLIANT, **USER_MAILBOX})
    assert Fact.MAILBOX_STATE in decision.unverified


def test_create_example_message(baseline) -> None:
    body = (EXAMPLE_MESSAGES_DIR / "create-with-outlook.json").read_bytes()
    decision = decide(parse_ok(body), baseline)
    assert decision.to_dict()["patch"] == {"outgoingemaildeliverymethod": 2}


# --- per-rule mode and notifications -------------------------------------------------------------

AUDITED_DELIVERY = """
  delivery_methods:
    mode: audit
    incoming_email: server_side_sync
  email_address:
    changes: forbidden
"""
NOTIFY = """
mode: enforce
notifications:
  enabled: true
  sender: guardrails@contoso.com
  extra_recipients: [secops@contoso.com, it@contoso.com]
"""


def test_audit_rule_under_an_enforcing_policy() -> None:
    policy = make_policy(AUDITED_DELIVERY, NOTIFY)
    decision = decide_mailbox(policy, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.VIOLATION
    violation = _only(decision)
    assert violation.enforced is False
    assert violation.expected == 2  # what a revert would write, recorded for the audit
    assert decision.patch == {}
    assert decision.to_dict()["patch"] == {}
    assert decision.reason.startswith("Recording")
    assert decision.notify_owner is False
    assert decision.notify_also == ("secops@contoso.com", "it@contoso.com")


def test_audit_and_enforced_violations_together() -> None:
    policy = make_policy(AUDITED_DELIVERY, NOTIFY)
    decision = decide_mailbox(
        policy,
        **trusted("ceo@contoso.com"),
        changes={**FORWARD, "emailaddress": "ceo@contoso.com"},
        before=BEFORE,
    )
    by_column = {v.column: v for v in decision.violations}
    assert by_column[Column.INCOMING].enforced is False
    assert by_column[Column.EMAIL].enforced is True
    assert decision.to_dict()["patch"] == {"emailaddress": "owner@contoso.com"}
    assert decision.notify_owner is True
    assert decision.notify_also == ("secops@contoso.com", "it@contoso.com")


def test_enforcing_rule_under_an_audit_policy() -> None:
    rules = "\n  delivery_methods:\n    mode: enforce\n    incoming_email: server_side_sync\n"
    policy = make_policy(rules, "mode: audit\n")
    decision = decide_mailbox(policy, changes=FORWARD, before=BEFORE)
    assert _only(decision).enforced is True
    assert decision.to_dict()["patch"] == {"incomingemaildeliverymethod": 2}


def test_audit_policy_writes_nothing() -> None:
    policy = make_policy(extra="mode: audit\n")
    decision = decide_mailbox(policy, changes={**FORWARD, "emailaddress": "x@y.com"}, before=BEFORE)
    assert decision.outcome is Outcome.VIOLATION
    assert all(not v.enforced for v in decision.violations)
    assert decision.patch == {}


def test_notifications_disabled(baseline) -> None:
    decision = decide_mailbox(baseline, changes=FORWARD, before=BEFORE)
    assert decision.notify_owner is False
    assert decision.notify_also == ()


def test_notify_owner_off() -> None:
    policy = make_policy(extra=NOTIFY + "  notify_owner: false\n")
    decision = decide_mailbox(policy, changes=FORWARD, before=BEFORE)
    assert decision.notify_owner is False
    assert decision.notify_also == ("secops@contoso.com", "it@contoso.com")


# --- scope ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "before", "governed"),
    [
        ("user_mailboxes", QUEUE_MAILBOX, False),
        ("all", QUEUE_MAILBOX, True),
        ("queue_mailboxes", QUEUE_MAILBOX, True),
        ("user_mailboxes", USER_MAILBOX, True),
        ("all", USER_MAILBOX, True),
        ("queue_mailboxes", USER_MAILBOX, False),
    ],
)
def test_scope(scope: str, before: dict[str, Any], governed: bool) -> None:
    policy = make_policy(extra=f"scope: {scope}\n")
    decision = decide_mailbox(policy, changes=FORWARD, before={**COMPLIANT, **before})
    if governed:
        assert decision.outcome is Outcome.VIOLATION
        assert decision.to_dict()["patch"] == {"incomingemaildeliverymethod": 2}
    else:
        assert decision.outcome is Outcome.IGNORED
        assert "mailbox" in decision.reason
        assert decision.patch == {}
    assert Fact.MAILBOX_STATE not in decision.unverified


@pytest.mark.parametrize("scope", ["user_mailboxes", "queue_mailboxes"])
def test_unknown_regarding_needs_the_row(scope: str) -> None:
    policy = make_policy(extra=f"scope: {scope}\n")
    decision = decide_mailbox(policy, changes=FORWARD, before={"incomingemaildeliverymethod": 2})
    assert Fact.MAILBOX_STATE in decision.unverified


def test_unknown_regarding_is_fine_for_all_mailboxes() -> None:
    policy = make_policy(extra="scope: all\n")
    decision = decide_mailbox(policy, changes=FORWARD, before={"incomingemaildeliverymethod": 2})
    assert Fact.MAILBOX_STATE not in decision.unverified
    assert decision.outcome is Outcome.VIOLATION


def test_scope_from_the_row_read() -> None:
    state = MailboxState(
        MAILBOX_ID, {Column.INCOMING: 3}, regarding=EntityReference("queue", QUEUE)
    )
    decision = decide_mailbox(make_policy(), state=state, changes=FORWARD)
    assert decision.outcome is Outcome.IGNORED


# --- organization defaults -----------------------------------------------------------------------

ORG_DEFAULT_RULES = """
  delivery_methods:
    incoming_email: organization_default
    outgoing_email: organization_default
  server_profile:
    expected: organization_default
"""
ORG_DEFAULT_CHANGES = {
    "incomingemaildeliverymethod": 3,
    "outgoingemaildeliverymethod": 1,
    "emailserverprofile": OTHER_PROFILE,
}


def test_organization_defaults_unknown_offline() -> None:
    decision = decide_mailbox(
        make_policy(ORG_DEFAULT_RULES), changes=ORG_DEFAULT_CHANGES, before=BEFORE
    )
    assert Fact.ORGANIZATION_DEFAULTS in decision.unverified
    assert decision.violations == ()
    assert decision.patch == {}
    assert decision.outcome is not Outcome.VIOLATION


def test_organization_defaults_given() -> None:
    facts = Facts(
        organization_defaults={
            Column.INCOMING: 2,
            Column.OUTGOING: 2,
            Column.SERVER_PROFILE: PROFILE,
        }
    )
    decision = decide_mailbox(
        make_policy(ORG_DEFAULT_RULES), facts, changes=ORG_DEFAULT_CHANGES, before=BEFORE
    )
    assert decision.outcome is Outcome.VIOLATION
    assert Fact.ORGANIZATION_DEFAULTS not in decision.unverified
    assert decision.to_dict()["patch"] == {
        "incomingemaildeliverymethod": 2,
        "outgoingemaildeliverymethod": 2,
        "emailserverprofile@odata.bind": f"/emailserverprofiles({PROFILE})",
    }


def test_organization_defaults_match() -> None:
    facts = Facts(
        organization_defaults={
            Column.INCOMING: 3,
            Column.OUTGOING: 1,
            Column.SERVER_PROFILE: OTHER_PROFILE,
        }
    )
    decision = decide_mailbox(
        make_policy(ORG_DEFAULT_RULES), facts, changes=ORG_DEFAULT_CHANGES, before=BEFORE
    )
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.unverified == ()


def test_organization_defaults_partly_known() -> None:
    facts = Facts(organization_defaults={Column.INCOMING: 2})
    decision = decide_mailbox(
        make_policy(ORG_DEFAULT_RULES), facts, changes=ORG_DEFAULT_CHANGES, before=BEFORE
    )
    assert Fact.ORGANIZATION_DEFAULTS in decision.unverified
    assert decision.to_dict()["patch"] == {"incomingemaildeliverymethod": 2}


# --- owner's address and allowed domains ---------------------------------------------------------

OWNER_RULES = "\n  email_address:\n    changes: allowed\n    must_match_owner: true\n"


def test_must_match_owner_offline() -> None:
    decision = decide_mailbox(
        make_policy(OWNER_RULES), changes={"emailaddress": "ceo@contoso.com"}, before=BEFORE
    )
    assert Fact.OWNER in decision.unverified
    assert decision.violations == ()


def test_must_match_owner_mismatch() -> None:
    owner = UserFacts(id=OWNER, email="Owner.Real@contoso.com")
    decision = decide_mailbox(
        make_policy(OWNER_RULES),
        **trusted("ceo@contoso.com", owner),
        changes={"emailaddress": "ceo@contoso.com"},
        before=BEFORE,
    )
    assert decision.outcome is Outcome.VIOLATION
    violation = _only(decision)
    assert violation.rule == "email_address"
    assert violation.expected == "Owner.Real@contoso.com"
    assert "owner" in violation.message
    assert decision.to_dict()["patch"] == {"emailaddress": "Owner.Real@contoso.com"}
    assert Fact.OWNER not in decision.unverified


def test_must_match_owner_match_ignores_case() -> None:
    facts = Facts(owner=UserFacts(id=OWNER, email="Owner@Contoso.com"))
    decision = decide_mailbox(
        make_policy(OWNER_RULES),
        facts,
        changes={"emailaddress": "owner@contoso.com"},
        before=BEFORE,
    )
    assert decision.outcome is Outcome.COMPLIANT


def test_owner_facts_for_another_user_do_not_count() -> None:
    facts = Facts(owner=UserFacts(id=USER, email="user@contoso.com"))
    decision = decide_mailbox(
        make_policy(OWNER_RULES), facts, changes={"emailaddress": "ceo@contoso.com"}, before=BEFORE
    )
    assert Fact.OWNER in decision.unverified
    assert decision.violations == ()


def test_must_match_owner_on_a_queue_mailbox_means_the_queues_own_address() -> None:
    policy = make_policy(OWNER_RULES, "scope: all\n")
    queue = QueueFacts(id=QUEUE, name="Support", email="support@contoso.com", owner_user_id=OWNER)
    before = {**COMPLIANT, **QUEUE_MAILBOX, "ownerid": OWNER}
    offline = decide_mailbox(policy, changes={"emailaddress": "q@contoso.com"}, before=before)
    assert Fact.QUEUE in offline.unverified
    ok = decide_mailbox(
        policy, Facts(queue=queue), changes={"emailaddress": "Support@contoso.com"}, before=before
    )
    assert ok.outcome is Outcome.COMPLIANT
    state = MailboxState(
        mailbox_id=MAILBOX_ID,
        values={Column.EMAIL: "q@contoso.com"},
        etag='W/"3"',
        regarding=EntityReference("queue", QUEUE),
    )
    wrong = decide_mailbox(
        policy, Facts(queue=queue), state, changes={"emailaddress": "q@contoso.com"}, before=before
    )
    assert wrong.patch == {Column.EMAIL: "support@contoso.com"}


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("x@contoso.com", True),
        ("X@CONTOSO.COM", True),
        ("x@fabrikam.com", True),
        ("x@evil.com", False),
        ("x@contoso.com.evil.com", False),
        ("x@sub.contoso.com", False),
        ("", False),
    ],
)
def test_allowed_domains(address: str, allowed: bool) -> None:
    policy = make_policy(
        "\n  email_address:\n    changes: allowed\n"
        "    allowed_domains: [contoso.com, Fabrikam.COM]\n"
    )
    decision = decide_mailbox(
        policy, **trusted(address), changes={"emailaddress": address}, before=BEFORE
    )
    if allowed:
        assert decision.outcome is Outcome.COMPLIANT
    else:
        violation = _only(decision)
        assert "not an allowed domain" in violation.message
        assert violation.expected == "owner@contoso.com"  # the previous, allowed address
        assert decision.to_dict()["patch"] == {"emailaddress": "owner@contoso.com"}


def test_allowed_domains_on_create_without_a_safe_address() -> None:
    policy = make_policy("\n  email_address:\n    allowed_domains: [contoso.com]\n")
    decision = decide_mailbox(
        policy,
        message="Create",
        changes={**COMPLIANT, "emailaddress": "a@evil.com", **USER_MAILBOX},
    )
    violation = _only(decision)
    assert violation.expected is None
    assert decision.patch == {}


# --- server profile ------------------------------------------------------------------------------


@pytest.mark.parametrize("expected", [PROFILE, PROFILE.upper()])
def test_server_profile_patch_is_an_odata_bind(expected: str) -> None:
    policy = make_policy(f"\n  server_profile:\n    expected: {expected}\n")
    decision = decide_mailbox(
        policy,
        changes={"emailserverprofile": OTHER_PROFILE},
        before={**BEFORE, "emailserverprofile": PROFILE},
    )
    assert decision.outcome is Outcome.VIOLATION
    violation = _only(decision)
    assert violation.rule == "server_profile"
    assert violation.expected == EntityReference("emailserverprofile", PROFILE)
    assert decision.to_dict()["patch"] == {
        "emailserverprofile@odata.bind": f"/emailserverprofiles({PROFILE})"
    }


def test_server_profile_compliant() -> None:
    policy = make_policy(f"\n  server_profile:\n    expected: {PROFILE.upper()}\n")
    decision = decide_mailbox(
        policy,
        changes={"emailserverprofile": PROFILE},
        before={**BEFORE, "emailserverprofile": OTHER_PROFILE},
    )
    assert decision.outcome is Outcome.COMPLIANT


def test_server_profile_cleared() -> None:
    policy = make_policy(f"\n  server_profile:\n    expected: {PROFILE}\n")
    decision = decide_mailbox(
        policy,
        changes={"emailserverprofile": None},
        before={**BEFORE, "emailserverprofile": PROFILE},
    )
    violation = _only(decision)
    assert violation.actual is None
    assert decision.to_dict()["patch"] == {
        "emailserverprofile@odata.bind": f"/emailserverprofiles({PROFILE})"
    }


# --- the row as read now (MailboxState) ----------------------------------------------------------


def _state(**values: Any) -> MailboxState:
    return MailboxState(
        mailbox_id=MAILBOX_ID,
        values={Column(key): value for key, value in values.items()},
        etag='W/"468027"',
        regarding=EntityReference("systemuser", OWNER),
    )


def test_changed_again_since_is_not_reverted(baseline) -> None:
    state = _state(incomingemaildeliverymethod=1)
    decision = decide_mailbox(baseline, state=state, changes=FORWARD, before=BEFORE)
    assert decision.patch == {}
    assert decision.violations == ()
    assert decision.outcome is not Outcome.VIOLATION
    assert any("incomingemaildeliverymethod" in note and "again" in note for note in decision.notes)


def test_already_reverted_is_compliant(baseline) -> None:
    # Redelivery after the revert: the row already holds the policy's value.
    state = _state(incomingemaildeliverymethod=2)
    decision = decide_mailbox(baseline, state=state, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.patch == {}
    assert decision.unverified == ()


def test_compliant_event_and_compliant_row(baseline) -> None:
    state = _state(incomingemaildeliverymethod=2)
    decision = decide_mailbox(
        baseline,
        state=state,
        changes={"incomingemaildeliverymethod": 2},
        before={**BEFORE, "incomingemaildeliverymethod": 3},
    )
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.notes == ()


def test_row_still_violating_is_reverted(baseline) -> None:
    state = _state(incomingemaildeliverymethod=3)
    decision = decide_mailbox(baseline, state=state, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.VIOLATION
    assert decision.to_dict()["patch"] == {"incomingemaildeliverymethod": 2}
    assert decision.notes == ()


def test_create_uses_the_row_over_the_message(baseline) -> None:
    state = _state(
        incomingemaildeliverymethod=2,
        outgoingemaildeliverymethod=2,
        actdeliverymethod=1,
        emailaddress="owner@contoso.com",
    )
    decision = decide_mailbox(
        baseline, state=state, message="Create", changes={**FORWARD, **USER_MAILBOX}
    )
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.unverified == ()


def test_decision_is_deterministic(baseline) -> None:
    context: ExecutionContext = parse_ok(to_body(mailbox(changes=FORWARD, before=BEFORE)))
    first = decide(context, baseline)
    second = decide(copy.deepcopy(context), baseline)
    assert first == second
    assert first.to_dict() == second.to_dict()


# --- values no real message carries must not break a decision ------------------------------------


@pytest.mark.parametrize("amount", ["sNaN", "NaN", "-sNaN", "Infinity"])
def test_money_special_values_in_a_governed_column(baseline, amount: str) -> None:
    built = mailbox(changes=FORWARD, before=BEFORE)
    money = {"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": amount}
    for entity in (target_of(built), target_of(built["ParentContext"])):
        for pair in entity["Attributes"]:
            if pair["key"] == "incomingemaildeliverymethod":
                pair["value"] = money
    for pair in built["PreEntityImages"][0]["value"]["Attributes"]:
        if pair["key"] == "incomingemaildeliverymethod":
            pair["value"] = dict(money)
    result = parse_message(to_body(built))
    decision = decide(result, baseline)  # must not raise
    assert decision.outcome in set(Outcome)


# --- the plan survives being stored ------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        FORWARD,
        {"emailaddress": "ceo@contoso.com"},
        {"emailserverprofile": OTHER_PROFILE, "actdeliverymethod": 0},
    ],
)
def test_a_decision_round_trips_through_its_stored_form(changes: dict[str, Any]) -> None:
    policy = make_policy(
        BASELINE_RULES + f"  server_profile:\n    expected: {PROFILE}\n",
        "notifications:\n  enabled: true\n  sender: g@contoso.com\n",
    )
    decision = decide_mailbox(policy, **trusted("ceo@contoso.com"), changes=changes, before=BEFORE)
    assert decision.outcome is Outcome.VIOLATION
    stored = json.loads(json.dumps(decision.to_dict()))
    assert Decision.from_dict(stored) == decision
    assert Decision.from_dict(stored).changed == tuple(sorted(changes))


# --- API economy: a compliant change looks nobody up --------------------------------------------


def test_a_compliant_change_needs_no_lookup_of_who_made_it() -> None:
    policy = make_policy(extra="exemptions:\n  security_roles: [System Administrator]\n")
    decision = decide_mailbox(
        policy, changes={"incomingemaildeliverymethod": 2}, before={**BEFORE, **FORWARD}
    )
    assert decision.outcome is Outcome.COMPLIANT
    assert decision.unverified == ()  # no initiator, no roles: zero Dataverse requests


def test_a_violation_asks_who_made_it_before_it_is_reverted() -> None:
    policy = make_policy(extra="exemptions:\n  security_roles: [System Administrator]\n")
    decision = decide_mailbox(policy, changes=FORWARD, before=BEFORE)
    assert decision.outcome is Outcome.VIOLATION
    assert Fact.INITIATOR in decision.unverified
    admin = UserFacts(id=USER, role_names=frozenset({"system administrator"}))
    exempt = decide_mailbox(policy, Facts(initiator=admin), changes=FORWARD, before=BEFORE)
    assert exempt.outcome is Outcome.IGNORED and exempt.exempted_by == USER
