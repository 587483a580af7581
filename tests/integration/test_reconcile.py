"""The reconcile sweep against the sandbox: drift across every rule, fixed through the executor."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.cli import main
from guardrails.worker import build_sweep
from tests.integration.conftest import Deployment, deploy

SWEEP_POLICY = """\
version: 1
organization:
  id: {organization_id}
mode: {mode}
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
    must_match_owner: true
    restore_approval: true
exemptions:
  security_roles: [System Administrator]
  mailboxes: [{exempt}]
notifications:
  enabled: true
  sender: guardrails@contoso.com
"""
EXEMPT = "0e0e0e0e-1111-2222-3333-444444444444"
MAILBOXES = 400
DRIFT = 0.05


@pytest.fixture
def tenant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    text = SWEEP_POLICY.replace("{exempt}", EXEMPT)
    yield from deploy("client_secret", tmp_path, monkeypatch, policy_text=text)


def seed(deployment: Deployment) -> dict[str, str]:
    """MAILBOXES users with mailboxes, DRIFT of them drifted in every way; returns
    mailbox id -> how it drifted."""
    dataverse = deployment.sandbox.dataverse
    rng = random.Random(7)
    drifts = {
        "incoming": {"incomingemaildeliverymethod": 3},
        "outgoing": {"outgoingemaildeliverymethod": 1},
        "act": {"actdeliverymethod": 0},
        "address": {"emailaddress": "someone.else@contoso.com"},
    }
    people = dataverse.add_mailboxes(MAILBOXES, email="person{index}@contoso.com")
    drifted: dict[str, str] = {}
    for _user, mailbox_id in people:
        if rng.random() < DRIFT:
            kind = rng.choice(sorted(drifts))
            dataverse.update_mailbox_as(dataverse.system_user_id, mailbox_id, drifts[kind])
            drifted[mailbox_id] = kind
    deployment.sandbox.take()  # the events of the seeding are not delivered: the sweep must find it
    return drifted


def test_a_sweep_fixes_every_drift_once_and_a_second_finds_nothing(tenant: Deployment) -> None:
    deployment = tenant
    drifted = seed(deployment)
    dataverse = deployment.sandbox.dataverse
    # An exempt mailbox that drifted, and an accepted exception an exempt admin made: both stay.
    exempt_box = dataverse.add_mailbox(
        mailboxid=EXEMPT,
        owner_user_id=deployment.user_id,
        emailaddress="adele.exempt@contoso.com",
        incoming=3,
    )
    admin_change = deployment.user_change(
        {"incomingemaildeliverymethod": 0}, by=deployment.admin_id
    )
    deployment.run(admin_change)  # exempt: left alone and recorded as accepted
    dataverse.clear_log()

    summary = build_sweep(deployment.app.worker).run()

    assert summary.fixed == len(drifted) > 0
    assert summary.non_compliant == len(drifted) and summary.failed == 0
    for mailbox_id in drifted:
        row = dataverse.mailbox(mailbox_id)
        assert (row["incomingemaildeliverymethod"], row["outgoingemaildeliverymethod"]) == (2, 2)
        assert row["actdeliverymethod"] == 1
        assert row["emailaddress"].startswith("person") and row["emailrouteraccessapproval"] == 1
    assert dataverse.mailbox(exempt_box)["incomingemaildeliverymethod"] == 3
    assert dataverse.mailbox(deployment.mailbox_id)["incomingemaildeliverymethod"] == 0
    assert dataverse.count("POST", "$batch") >= 1  # the writes went in batches
    single_patches = [
        p for p in deployment.patches() if "emailrouteraccessapproval" not in (p.json or {})
    ]
    assert single_patches == []  # none one by one
    # Owners are looked up by the page, never one request per mailbox.
    assert dataverse.count("GET", "systemusers") <= MAILBOXES // 100 + 2
    owners = {m.to[0] for m in deployment.sandbox.graph.sent}
    assert len(owners) == len(drifted)  # each owner told once

    again = build_sweep(deployment.app.worker).run()
    assert (again.non_compliant, again.fixed) == (0, 0)
    assert again.scanned == MAILBOXES + 3  # every row read again (address rules need it)


def test_writes_fill_each_batch_across_the_look_up_pages(tenant: Deployment) -> None:
    """Drift spread thinly over many rows still goes out in full `$batch`es, not in one small
    batch per look-up page: fewer requests against the service protection limits."""
    from guardrails.reconcile import LOOKUP_PAGE, Sweep

    dataverse = tenant.sandbox.dataverse
    rows = 3 * LOOKUP_PAGE
    drifting = set(range(0, rows, 50))  # 2% of each look-up page: 30 rows in all
    people = dataverse.add_mailboxes(rows, incoming=lambda i: 3 if i in drifting else 2)
    dataverse.clear_log()
    worker = tenant.app.worker
    first = build_sweep(worker).run()
    assert first.fixed == len(drifting) and first.failed == 0
    assert dataverse.count("POST", "$batch") == 1  # 30 writes, one batch of up to 100

    for index in drifting:  # the same rows drift again
        _, mailbox_id = people[index]
        dataverse.update_mailbox_as(dataverse.system_user_id, mailbox_id, {"actdeliverymethod": 0})
    tenant.sandbox.take()
    dataverse.clear_log()
    executor = worker.executor
    sweep = Sweep(
        policy=executor.policy, dataverse=executor.dataverse, executor=executor, batch_size=8
    )
    again = sweep.run()
    assert again.fixed == len(drifting) and again.failed == 0
    assert dataverse.count("POST", "$batch") == 4  # 8 + 8 + 8 + 6


def test_dry_run_finds_and_writes_nothing_and_prints_json(
    tenant: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    drifted = seed(tenant)
    tenant.sandbox.dataverse.clear_log()
    assert main(["reconcile", "--dry-run", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for key in ("scanned", "non_compliant", "fixed", "skipped", "failed", "requests"):
        assert isinstance(printed[key], int)
    assert printed["non_compliant"] == len(drifted) and printed["fixed"] == 0
    assert tenant.sandbox.dataverse.find_requests(method="PATCH") == []
    assert tenant.sandbox.dataverse.count("POST", "$batch") == 0


def test_a_concurrent_change_during_the_batch_is_never_overwritten(tenant: Deployment) -> None:
    """The row changes between the sweep's read and its batch: that write gets its 412 and is
    re-decided alone, with the later writer as the author."""
    deployment = tenant
    drifted = seed(deployment)
    dataverse = deployment.sandbox.dataverse
    target = next(iter(drifted))
    done = []

    def admin_first(pending: object) -> None:
        if not done:
            done.append(True)
            dataverse.update_mailbox_as(deployment.admin_id, target, {"actdeliverymethod": 2})

    remove = dataverse.before_write(admin_first)
    try:
        summary = build_sweep(deployment.app.worker).run()
    finally:
        remove()
    assert dataverse.mailbox(target)["actdeliverymethod"] == 2  # the admin's write stands
    assert summary.failed == 0


def test_the_timer_function_sweeps(tenant: Deployment) -> None:
    drifted = seed(tenant)
    from azure.functions import TimerRequest

    class Tick(TimerRequest):
        @property
        def past_due(self) -> bool:
            return False

    tenant.app.reconcile(Tick())
    rows = [tenant.sandbox.dataverse.mailbox(m) for m in drifted]
    assert all(r["incomingemaildeliverymethod"] == 2 for r in rows)
    (record,) = list(
        tenant.app.worker.state.runs.query("PartitionKey eq @p", parameters={"p": "reconcile"})
    )
    assert record.properties["fixed"] == len(drifted)


def test_the_sweep_waits_out_a_long_retry_after_instead_of_failing(tenant: Deployment) -> None:
    from guardrails.reconcile import Sweep

    drifted = seed(tenant)
    dataverse = tenant.sandbox.dataverse
    dataverse.inject(429, retry_after=45, method="POST", path_contains="$batch")
    waits: list[float] = []
    worker = tenant.app.worker
    sweep = Sweep(
        policy=worker.executor.policy,
        dataverse=worker.executor.dataverse.patient(max_retry_after=300, sleep=waits.append),
        executor=worker.executor,
        runs=worker.state.runs,
    )
    summary = sweep.run()
    # The service's Retry-After, counted from the 429 (the gate opens 45 s after it came in):
    # honoured, not cut short.
    assert any(44 < wait <= 45 for wait in waits)
    assert summary.fixed == len(drifted) and summary.failed == 0


def test_the_sweep_and_the_messages_share_one_whoami(tenant: Deployment) -> None:
    """The sweep's patient copy of the client and the client it came from ask WhoAmI once
    between them, whichever asks first."""
    seed(tenant)
    dataverse = tenant.sandbox.dataverse
    dataverse.clear_log()
    assert tenant.app.worker.executor.dataverse.known_user_id is None  # a cold instance

    build_sweep(tenant.app.worker).run()
    tenant.run(tenant.user_change({"incomingemaildeliverymethod": 3}))

    assert dataverse.count("GET", "WhoAmI") == 1
