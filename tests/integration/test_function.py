"""function_app.mailbox_guardrail, called as the Functions host calls it."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardrails.errors import ConfigurationError
from guardrails.mailbox import GUARDRAIL_TAG
from guardrails.sandbox.dataverse import PendingWrite
from guardrails.sandbox.messages import mailbox_message, oversize, to_body
from guardrails.settlement import Record, Schedule
from tests.broker import TestBroker
from tests.integration.conftest import (
    Deployment,
    audit_records,
    deploy,
    load_function_app,
    service_bus_message,
)

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared/reference/dataverse-samples"


def test_violating_update_is_reverted_with_one_patch_and_one_mail(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.audit")
    message = deployment.user_change({"incomingemaildeliverymethod": 3})
    version = message.write.versionnumber

    deployment.run(message)

    (patch,) = deployment.patches()
    assert patch.json == {"incomingemaildeliverymethod": 2}  # only the violating column
    assert patch.headers["if-match"] == f'W/"{version}"'  # the row version the message carried
    assert patch.query["tag"] == GUARDRAIL_TAG
    assert patch.status == 200  # the row comes back: a following conditional write needs its ETag
    assert deployment.row()["incomingemaildeliverymethod"] == 2
    # No read was needed: the message carried the row version and the changed values.
    assert deployment.sandbox.dataverse.count("GET", "mailboxes") == 0
    # The client's own count agrees: WhoAmI once, the initiator and owner (one user, with
    # roles for the exemption check), and the write.
    assert deployment.app.worker.executor.dataverse.request_counts == {
        "GET WhoAmI": 1,
        "GET systemusers": 2,
        "PATCH mailboxes": 1,
    }

    (mail,) = deployment.sandbox.graph.sent
    assert mail.sender == "guardrails@contoso.com"
    assert mail.to == ["adele@contoso.com"]  # the owner's directory address
    assert mail.cc == ["secops@contoso.com"]
    assert "Forward Mailbox" in (mail.html or "")

    # MSAL went to the local HTTPS token endpoint once per resource, not per request.
    resources = sorted(t.resource.rstrip("/") for t in deployment.sandbox.identity.issued_tokens)
    assert resources == sorted([deployment.sandbox.dataverse.url, deployment.sandbox.graph.url])

    (record,) = audit_records(caplog)
    assert record["outcome"] == "violation"
    assert record["result"] == "Done"
    assert record["wrote"] is True
    assert record["message_id"] == message.message_id
    assert record["mailbox_id"] == deployment.mailbox_id
    assert record["initiating_user_id"] == deployment.user_id
    assert record["rules"] == ["delivery_methods"]
    assert record["before"] == {"incomingemaildeliverymethod": 3}
    assert record["after"] == {"incomingemaildeliverymethod": 2}
    assert record["correlation_id"]
    assert record["duration_ms"] >= 0


def test_compliant_message_writes_and_sends_nothing(deployment: Deployment) -> None:
    deployment.sandbox.dataverse.update_mailbox_as(
        deployment.user_id, deployment.mailbox_id, {"incomingemaildeliverymethod": 3}
    )
    deployment.sandbox.take()  # that change was already dealt with elsewhere
    message = deployment.user_change({"incomingemaildeliverymethod": 2})

    deployment.run(message)

    assert deployment.patches() == []
    assert deployment.sandbox.graph.sent == []


@pytest.mark.parametrize("echo_tag", [True, False], ids=["tag-echoed", "tag-not-echoed"])
def test_own_write_coming_back_causes_no_second_patch(
    echo_tag: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for deployment in deploy("client_secret", tmp_path, monkeypatch, echo_tag=echo_tag):
        deployment.run(deployment.user_change({"emailaddress": "megan.ceo@contoso.com"}))
        (revert,) = deployment.patches()
        assert revert.json == {"emailaddress": "adele@contoso.com"}
        (returning,) = deployment.sandbox.take()  # Dataverse posts the guardrail's own write
        assert returning.write.user_id == deployment.sandbox.app_user_id

        deployment.run(returning)

        assert len(deployment.patches()) == 1
        assert len(deployment.sandbox.graph.sent) == 1


def _run_while_someone_changes(
    deployment: Deployment, changes: dict[str, int], *, by: str | None = None
) -> None:
    """A user's forbidden change; someone (the admin by default) changes the row between the
    guardrail's read and its write (the simulator runs the hook inside the guardrail's PATCH,
    before If-Match)."""
    dataverse = deployment.sandbox.dataverse
    message = deployment.user_change({"incomingemaildeliverymethod": 3})

    def steps_in(pending: PendingWrite) -> None:
        remove()
        dataverse.update_mailbox_as(by or deployment.admin_id, deployment.mailbox_id, changes)

    remove = dataverse.before_write(steps_in)
    deployment.run(message)


def test_concurrent_admin_change_to_the_same_column_is_not_overwritten(
    secret_deployment: Deployment,
) -> None:
    deployment = secret_deployment
    _run_while_someone_changes(deployment, {"incomingemaildeliverymethod": 0})

    (stale,) = deployment.patches()
    assert stale.status == 412
    # Read again, decided again, and left the admin's value alone.
    assert deployment.sandbox.dataverse.count("GET", "mailboxes") == 1
    assert deployment.row()["incomingemaildeliverymethod"] == 0
    assert deployment.sandbox.graph.sent == []  # nothing was changed back, nobody to tell


def test_exempt_admin_setting_the_users_own_value_is_not_reverted(
    secret_deployment: Deployment,
) -> None:
    """The same-value race: the admin sets exactly what the user had. The row cannot tell the
    two apart, so the later writer is taken as the author: an exempt admin's value stands, and
    nobody is told of a revert that did not happen."""
    deployment = secret_deployment
    _run_while_someone_changes(deployment, {"incomingemaildeliverymethod": 3})

    (stale,) = deployment.patches()
    assert stale.status == 412
    assert deployment.row()["incomingemaildeliverymethod"] == 3
    assert deployment.sandbox.graph.sent == []


def test_concurrent_change_to_another_column_keeps_it_and_reverts_only_the_violation(
    secret_deployment: Deployment,
) -> None:
    deployment = secret_deployment
    colleague, _ = deployment.sandbox.add_person("Alex Wilber", "alex@contoso.com")
    _run_while_someone_changes(deployment, {"actdeliverymethod": 0}, by=colleague)

    stale, fresh = deployment.patches()
    assert (stale.status, fresh.status) == (412, 200)
    assert fresh.json == {"incomingemaildeliverymethod": 2}
    assert fresh.headers["if-match"] != stale.headers["if-match"]
    row = deployment.row()
    assert row["incomingemaildeliverymethod"] == 2
    assert row["actdeliverymethod"] == 0  # the other change is untouched (its own event decides)


def test_oversize_message_reads_the_row_then_decides(secret_deployment: Deployment) -> None:
    deployment = secret_deployment
    message = deployment.user_change({"incomingemaildeliverymethod": 3})
    trimmed = oversize(json.loads(message.body))
    assert "InputParameters" not in trimmed

    deployment.run(service_bus_message(to_body(trimmed), {"MessageMaxSizeExceeded": True}))

    dataverse = deployment.sandbox.dataverse
    assert dataverse.count("GET", "mailboxes") == 1
    (patch,) = deployment.patches()
    assert patch.json == {"incomingemaildeliverymethod": 2}
    assert deployment.row()["incomingemaildeliverymethod"] == 2


def test_exempt_admin_change_is_left_alone(secret_deployment: Deployment) -> None:
    deployment = secret_deployment
    deployment.run(
        deployment.user_change({"outgoingemaildeliverymethod": 1}, by=deployment.admin_id)
    )
    assert deployment.patches() == []
    assert deployment.row()["outgoingemaildeliverymethod"] == 1


def test_audit_mode_records_and_tells_admins_but_never_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.audit")
    for deployment in deploy("client_secret", tmp_path, monkeypatch, mode="audit"):
        deployment.run(deployment.user_change({"incomingemaildeliverymethod": 3}))
        assert deployment.patches() == []
        (mail,) = deployment.sandbox.graph.sent
        assert mail.to == ["secops@contoso.com"]
        (record,) = audit_records(caplog)
        assert record["outcome"] == "violation"
        assert record["wrote"] is False
        assert record["after"] == {}


def test_expired_token_is_refreshed_once(secret_deployment: Deployment) -> None:
    deployment = secret_deployment
    deployment.run(deployment.user_change({"incomingemaildeliverymethod": 3}))
    requested = deployment.sandbox.identity.token_requests
    deployment.sandbox.identity.revoke_all()

    deployment.run(deployment.user_change({"outgoingemaildeliverymethod": 0}))

    statuses = [r.status for r in deployment.sandbox.dataverse.requests_log]
    assert statuses.count(401) == 1
    # The forced refresh drops the app's cached tokens for every resource, so Graph gets a
    # fresh token too, without a 401 of its own.
    assert deployment.sandbox.identity.token_requests == requested + 2
    graph_statuses = [r.status for r in deployment.sandbox.graph.requests_log]
    assert graph_statuses == [201, 202, 201, 202]  # a draft, then its send, per notification
    assert deployment.row()["outgoingemaildeliverymethod"] == 2


def test_throttling_is_waited_out_when_short(secret_deployment: Deployment) -> None:
    deployment = secret_deployment
    message = deployment.user_change({"incomingemaildeliverymethod": 3})
    deployment.sandbox.dataverse.inject(429, retry_after=0.2, method="PATCH")

    deployment.run(message)

    statuses = [p.status for p in deployment.patches()]
    assert statuses == [429, 200]


def test_long_throttling_schedules_a_byte_identical_copy_when_the_service_asked(
    secret_deployment: Deployment, broker: TestBroker
) -> None:
    deployment = secret_deployment
    message = deployment.user_change({"incomingemaildeliverymethod": 3})
    deployment.sandbox.dataverse.inject(429, retry_after=120, method="PATCH")

    before = datetime.now(UTC)
    handled = deployment.run(message)

    assert isinstance(handled.action, Schedule)  # completed: no delivery burnt waiting
    assert deployment.waits == []  # 120 s is not waited out inside the function
    (copy,) = broker.scheduled(os.environ["SERVICEBUS_QUEUE"])
    assert copy.body == message.body
    assert copy.message_id == message.message_id
    assert copy.application_properties["attempt"] == 2
    due = copy.scheduled_enqueue_time
    assert due is not None
    assert before + timedelta(seconds=120) <= due <= datetime.now(UTC) + timedelta(seconds=181)
    assert deployment.row()["incomingemaildeliverymethod"] == 3  # not yet: the copy will do it


def test_a_message_held_back_by_a_running_retry_after_is_not_sent_and_spends_no_attempt(
    secret_deployment: Deployment, broker: TestBroker
) -> None:
    deployment = secret_deployment
    first = deployment.user_change({"incomingemaildeliverymethod": 3})
    deployment.sandbox.dataverse.inject(429, retry_after=120, method="PATCH")
    deployment.run(first)  # throttled: every request of the app user waits 120 s now
    second = deployment.user_change({"outgoingemaildeliverymethod": 1})
    sent = len(deployment.sandbox.dataverse.requests_log)

    handled = deployment.run(second)

    assert isinstance(handled.action, Schedule)
    assert len(deployment.sandbox.dataverse.requests_log) == sent  # nothing sent early
    copies = broker.scheduled(os.environ["SERVICEBUS_QUEUE"])
    (copy,) = [c for c in copies if c.message_id == second.message_id]
    assert copy.application_properties["attempt"] == 1  # held back, not tried: none spent


def test_server_error_is_retried_with_back_off(secret_deployment: Deployment) -> None:
    deployment = secret_deployment
    message = deployment.user_change({"incomingemaildeliverymethod": 3})
    deployment.sandbox.dataverse.inject(503, method="PATCH")

    deployment.run(message)

    assert [p.status for p in deployment.patches()] == [503, 200]


def test_message_in_binary_xml_is_recorded_with_the_fix_and_completed(
    secret_deployment: Deployment,
) -> None:
    body = b"@\x16RemoteExecutionContext\x08\x13http://schemas.microsoft.com/xrm/2011/Contracts\x01"
    handled = secret_deployment.run(service_bus_message(body))
    # Completed, not raised: a message that can never succeed must not burn deliveries.
    assert isinstance(handled.action, Record)
    assert "messageformat = 2" in handled.action.reason
    (failure,) = secret_deployment.failures()
    assert failure.body == body and "messageformat = 2" in failure.reason
    assert secret_deployment.sandbox.dataverse.requests_log == []


def test_message_from_another_organization_is_recorded_not_retried(
    secret_deployment: Deployment,
) -> None:
    message = secret_deployment.user_change({"incomingemaildeliverymethod": 3})
    foreign = message.body.replace(
        secret_deployment.sandbox.dataverse.organization_id.encode(),
        b"00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
    )
    handled = secret_deployment.run(service_bus_message(foreign))
    assert isinstance(handled.action, Record)
    (failure,) = secret_deployment.failures()
    assert "organization 00aa00aa" in failure.reason and failure.body == foreign
    assert secret_deployment.patches() == []


def test_other_tables_events_complete_without_calls(secret_deployment: Deployment) -> None:
    for path in sorted(SAMPLES.glob("*.json")):
        secret_deployment.run(service_bus_message(path.read_bytes()))
    assert secret_deployment.sandbox.dataverse.requests_log == []


def test_deleted_mailbox_completes_quietly(
    secret_deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.audit")
    deployment = secret_deployment
    message = deployment.user_change({"incomingemaildeliverymethod": 3})
    trimmed = oversize(json.loads(message.body))
    trimmed["PrimaryEntityId"] = "0b0b0b0b-0000-4000-8000-000000000000"
    deployment.run(service_bus_message(to_body(trimmed)))
    assert deployment.patches() == []
    (record,) = audit_records(caplog)
    assert record["result"] == "NothingToDo"
    assert record["mailbox_id"] == "0b0b0b0b-0000-4000-8000-000000000000"
    assert "no longer exists" in record["result_reason"]


def test_start_up_lists_every_settings_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATAVERSE_URL", "SERVICEBUS_QUEUE", "SERVICEBUS", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GUARDRAILS_POLICY", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("GRAPH_URL", "http://graph.example")
    with pytest.raises(ConfigurationError) as caught:
        load_function_app()
    text = str(caught.value)
    for fragment in ("DATAVERSE_URL", "GRAPH_URL", "GUARDRAILS_POLICY", "SERVICEBUS_QUEUE"):
        assert fragment in text


def test_start_up_reports_policy_errors_with_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for deployment in deploy("client_secret", tmp_path, monkeypatch):
        policy = tmp_path / "policy.yaml"
        policy.write_text(policy.read_text().replace("mode: enforce", "mode: enforced"))
        with pytest.raises(ConfigurationError, match=r"policy\.yaml:5:7: mode"):
            load_function_app()
        assert deployment.sandbox.identity.token_requests == 0  # start-up did no network I/O


def test_created_mailbox_is_compared_with_the_defaults(
    secret_deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.audit")
    deployment = secret_deployment
    sandbox = deployment.sandbox
    user_id, mailbox_id = sandbox.add_person("New Hire", "new.hire@contoso.com", outgoing=1)
    row = sandbox.dataverse.mailbox(mailbox_id)
    created = mailbox_message(
        message="Create",
        mailbox_id=mailbox_id,
        organization_id=sandbox.dataverse.organization_id,
        user_id="a0a0a0a0-0000-4000-8000-000000000000",  # the system, creating the user
        changes={
            "name": "New Hire",
            "emailaddress": row["emailaddress"],
            "incomingemaildeliverymethod": 2,
            "outgoingemaildeliverymethod": 1,
            "actdeliverymethod": 1,
            "regardingobjectid": ("systemuser", user_id),
            "ownerid": user_id,
        },
    )

    deployment.run(service_bus_message(to_body(created)))

    assert sandbox.dataverse.count("GET", "mailboxes") == 1  # no row version: read for the ETag
    (patch,) = deployment.patches()
    assert patch.json == {"outgoingemaildeliverymethod": 2}
    assert patch.headers["if-match"] == f'W/"{row["versionnumber"]}"'
    (mail,) = sandbox.graph.sent
    assert mail.to == ["new.hire@contoso.com"]
    # The creator could not be read (so could prove no exemption); that is recorded, and the
    # revert went ahead.
    (record,) = audit_records(caplog)
    assert record["result"] == "Done"
    assert "a0a0a0a0-0000-4000-8000-000000000000 could not be read" in record["errors"][0]
