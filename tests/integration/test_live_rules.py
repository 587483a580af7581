"""Rules that need live look-ups, dry run, and failures after the decision."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.outcomes import Done
from guardrails.sandbox.dataverse import PendingWrite
from guardrails.settlement import Record, Schedule
from tests.broker import TestBroker
from tests.integration.conftest import Deployment, audit_records, deploy, service_bus_message

LIVE_POLICY = """\
version: 1
organization:
  id: {organization_id}
mode: {mode}
rules:
  delivery_methods:
    incoming_email: organization_default
    outgoing_email: organization_default
    appointments_contacts_tasks: organization_default
  email_address:
    changes: allowed
    must_match_owner: true
    restore_approval: true
  server_profile:
    expected: organization_default
notifications:
  enabled: true
  sender: guardrails@contoso.com
"""


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    yield from deploy("client_secret", tmp_path, monkeypatch, policy_text=LIVE_POLICY)


def test_organization_defaults_are_read_from_dataverse_and_cached(live: Deployment) -> None:
    dataverse = live.sandbox.dataverse
    dataverse.set_email_settings(2, 2, 0)  # this organization keeps activities in Outlook
    live.run(live.user_change({"actdeliverymethod": 2}))
    (patch,) = live.patches()
    assert patch.json == {"actdeliverymethod": 0}

    live.run(live.user_change({"incomingemaildeliverymethod": 3}))
    assert live.patches()[-1].json == {"incomingemaildeliverymethod": 2}
    assert dataverse.count("GET", "organizations") == 1  # cached between messages


def test_address_must_be_the_owners_directory_address(live: Deployment) -> None:
    live.run(live.user_change({"emailaddress": "megan.ceo@contoso.com"}))
    address, approval = live.patches()
    assert address.json == {"emailaddress": "adele@contoso.com"}
    assert approval.json == {"emailrouteraccessapproval": 1}
    row = live.row()
    # Conditional on the version the guardrail's own revert produced, never `*`.
    assert approval.headers["if-match"] == f'W/"{row["versionnumber"] - 1}"'

    assert row["emailaddress"] == "adele@contoso.com"
    assert row["emailrouteraccessapproval"] == 1
    (mail,) = live.sandbox.graph.sent
    assert mail.to == ["adele@contoso.com"]


def test_changing_to_the_owners_own_address_is_compliant(live: Deployment) -> None:
    dataverse = live.sandbox.dataverse
    dataverse.update_mailbox_as(live.admin_id, live.mailbox_id, {"emailaddress": "old@contoso.com"})
    live.run(live.user_change({"emailaddress": "adele@contoso.com"}))
    assert live.patches() == []


def test_server_profile_follows_the_organization_default(live: Deployment) -> None:
    dataverse = live.sandbox.dataverse
    default = dataverse.add_email_server_profile("Exchange Online")
    other = dataverse.add_email_server_profile("Someone's IMAP server")
    dataverse.set_default_email_server_profile(default)
    live.run(live.user_change({"emailserverprofile@odata.bind": f"/emailserverprofiles({other})"}))
    (patch,) = live.patches()
    assert patch.json == {"emailserverprofile@odata.bind": f"/emailserverprofiles({default})"}
    assert live.row()["_emailserverprofile_value"] == default


def test_dry_run_decides_and_records_but_writes_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.audit")
    monkeypatch.setenv("GUARDRAILS_DRY_RUN", "true")
    for deployment in deploy("client_secret", tmp_path, monkeypatch):
        deployment.run(deployment.user_change({"incomingemaildeliverymethod": 3}))
        assert deployment.patches() == []
        assert deployment.sandbox.graph.sent == []
        (record,) = audit_records(caplog)
        assert record["dry_run"] is True
        assert record["outcome"] == "violation"
        assert record["after"] == {"incomingemaildeliverymethod": 2}  # what it would write
        assert record["wrote"] is False


def test_graph_outage_after_the_revert_is_retried_and_the_owner_told_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.audit")
    for deployment in deploy("client_secret", tmp_path, monkeypatch):
        deployment.sandbox.graph.inject(500, times=4)  # one whole round of HTTP retries fails
        handled = deployment.run(deployment.user_change({"incomingemaildeliverymethod": 3}))
        assert deployment.row()["incomingemaildeliverymethod"] == 2
        assert len(deployment.waits) == 1  # waited in process once, then Graph answered
        assert isinstance(handled.result, Done)
        assert len(deployment.patches()) == 1  # the revert was not repeated by the retry
        (mail,) = deployment.sandbox.graph.sent
        assert mail.to == ["adele@contoso.com"]
        first, second = audit_records(caplog)
        assert first["result"] == "RetryLater" and "HTTP 500" in first["result_reason"]
        assert second["result"] == "Done" and second["wrote"] is True
        assert second["notified"] == ["adele@contoso.com", "secops@contoso.com"]


def test_permanent_dataverse_refusal_gives_up_with_the_service_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for deployment in deploy("client_secret", tmp_path, monkeypatch):
        message = deployment.user_change({"incomingemaildeliverymethod": 3})
        deployment.sandbox.dataverse.inject(
            403,
            method="PATCH",
            body={
                "error": {
                    "code": "0x80040220",
                    "message": "Principal user is missing prvWriteMailbox",
                }
            },
        )
        handled = deployment.run(message)
        assert isinstance(handled.action, Record)
        (failure,) = deployment.failures()
        assert "prvWriteMailbox" in failure.reason


def test_token_refused_even_when_fresh_is_retried_later_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: TestBroker
) -> None:
    for deployment in deploy("client_secret", tmp_path, monkeypatch):
        message = deployment.user_change({"incomingemaildeliverymethod": 3})
        dataverse = deployment.sandbox.dataverse
        validator = dataverse.token_validator
        dataverse.token_validator = lambda token: None  # e.g. consent revoked
        handled = deployment.run(message)
        statuses = [r.status for r in dataverse.requests_log]
        assert statuses == [401, 401]  # exactly one refresh, then it stops
        # Configuration needs a person: no waiting in process, a copy in five minutes or more.
        assert isinstance(handled.action, Schedule) and handled.action.delay >= 300
        assert deployment.waits == []
        (copy,) = broker.scheduled(os.environ["SERVICEBUS_QUEUE"])
        dataverse.token_validator = validator  # the admin fixes it
        again = deployment.run(
            service_bus_message(copy.body, copy.application_properties, copy.message_id)
        )
        assert isinstance(again.result, Done)
        assert deployment.row()["incomingemaildeliverymethod"] == 2


def test_refused_approval_restore_is_recorded_and_the_revert_stands(
    live: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.audit")
    dataverse = live.sandbox.dataverse
    message = live.user_change({"emailaddress": "megan.ceo@contoso.com"})

    def refuse_the_next_write(pending: PendingWrite) -> None:
        remove()  # inside the revert's PATCH: the approval PATCH that follows is refused
        dataverse.inject(
            403,
            method="PATCH",
            body={
                "error": {"code": "0x80040220", "message": "missing prvApproveRejectEmailAddress"}
            },
        )

    remove = dataverse.before_write(refuse_the_next_write)
    live.run(message)

    assert [p.status for p in live.patches()] == [200, 403]
    assert live.row()["emailaddress"] == "adele@contoso.com"
    (record,) = audit_records(caplog)
    assert record["result"] == "Done"
    assert "restoring approval failed" in record["errors"][0]
    assert "prvApproveRejectEmailAddress" in record["errors"][0]
    assert record["notified"] == ["adele@contoso.com"]


def test_no_approval_when_the_address_changes_again_before_it(live: Deployment) -> None:
    """A user who swaps in an executive's address between the revert and the approval gets a
    412 on the approval, and the guardrail does not approve what is now on the row."""
    dataverse = live.sandbox.dataverse
    message = live.user_change({"emailaddress": "megan.ceo@contoso.com"})
    writes = 0

    def swap_before_the_approval(pending: PendingWrite) -> None:
        nonlocal writes
        writes += 1
        if "emailrouteraccessapproval" in pending.changes and writes == 2:
            dataverse.update_mailbox_as(
                live.user_id, live.mailbox_id, {"emailaddress": "megan.ceo@contoso.com"}
            )

    remove = dataverse.before_write(swap_before_the_approval)
    try:
        live.run(message)
    finally:
        remove()
    row = live.row()
    assert row["emailaddress"] == "megan.ceo@contoso.com"  # the user's second change, pending
    assert row["emailrouteraccessapproval"] != 1  # and not approved by the guardrail
    approvals = [p for p in live.patches() if "emailrouteraccessapproval" in (p.json or {})]
    assert [p.status for p in approvals] == [412]
