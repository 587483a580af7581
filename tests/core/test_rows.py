"""decide_row: a mailbox row as it stands, checked without a message (the sweep, the report)."""

from __future__ import annotations

from guardrails.engine import Fact, Facts, Outcome, QueueFacts, UserFacts, decide_row
from guardrails.mailbox import Column, MailboxState
from guardrails.values import EntityReference

from .conftest import MAILBOX_ID, OWNER, QUEUE, make_policy

OWNER_RULES = """
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
    must_match_owner: true
"""
ADELE = UserFacts(id=OWNER, email="adele@contoso.com", upn="adele@contoso.onmicrosoft.com")


def row(regarding: str = "systemuser", **values: object) -> MailboxState:
    columns = {
        Column.INCOMING: 2,
        Column.OUTGOING: 2,
        Column.ACT: 1,
        Column.EMAIL: "adele@contoso.com",
    }
    columns.update({Column(k): v for k, v in values.items()})  # type: ignore[misc]
    return MailboxState(
        mailbox_id=MAILBOX_ID,
        values=columns,
        etag='W/"9"',
        regarding=EntityReference(regarding, QUEUE if regarding == "queue" else OWNER),
        name="Adele Vance",
    )


def test_a_compliant_row_is_compliant() -> None:
    decision = decide_row(row(), make_policy(OWNER_RULES), Facts(owner=ADELE))
    assert decision.outcome is Outcome.COMPLIANT


def test_drift_in_every_governed_column_is_found_and_the_patch_written_from_policy() -> None:
    state = row(incomingemaildeliverymethod=3, actdeliverymethod=0, emailaddress="x@contoso.com")
    decision = decide_row(state, make_policy(OWNER_RULES), Facts(owner=ADELE, accepted={}))
    assert decision.outcome is Outcome.VIOLATION
    assert decision.patch == {
        Column.INCOMING: 2,
        Column.ACT: 1,
        Column.EMAIL: "adele@contoso.com",
    }


def test_without_the_directory_the_address_is_not_judged() -> None:
    decision = decide_row(row(emailaddress="x@contoso.com"), make_policy(OWNER_RULES))
    assert Fact.OWNER in decision.unverified and decision.violations == ()


def test_an_accepted_exception_is_not_drift() -> None:
    state = row(incomingemaildeliverymethod=3)
    facts = Facts(owner=ADELE, accepted={Column.INCOMING: 3})
    decision = decide_row(state, make_policy(OWNER_RULES), facts)
    assert decision.outcome is Outcome.COMPLIANT
    assert any("accepted" in note for note in decision.notes)
    asks = decide_row(state, make_policy(OWNER_RULES), Facts(owner=ADELE))
    assert Fact.ACCEPTED in asks.unverified  # a violation is checked against accepted values


def test_exempt_mailboxes_and_scope_are_respected() -> None:
    exempt = make_policy(OWNER_RULES, f"exemptions:\n  mailboxes: [{MAILBOX_ID}]\n")
    assert decide_row(row(incomingemaildeliverymethod=3), exempt).outcome is Outcome.IGNORED
    queue_row = row("queue", incomingemaildeliverymethod=3)
    assert decide_row(queue_row, make_policy(OWNER_RULES)).outcome is Outcome.IGNORED
    everyone = make_policy(OWNER_RULES, "scope: all\n")
    queue = QueueFacts(id=QUEUE, email="support@contoso.com", owner_user_id=OWNER)
    decision = decide_row(
        row("queue", emailaddress="support@contoso.com"), everyone, Facts(queue=queue, accepted={})
    )
    assert decision.outcome is Outcome.COMPLIANT


def test_changes_forbidden_does_not_hold_a_row_to_its_history() -> None:
    policy = make_policy("\n  email_address:\n    changes: forbidden\n")
    decision = decide_row(row(emailaddress="someone@contoso.com"), policy)
    assert decision.outcome is Outcome.COMPLIANT
