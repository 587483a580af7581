"""`guardrails report` against the sandbox over real HTTPS: table, JSON and CSV on the same data.

The report must find every drifting mailbox and every hijack suspect, say exactly what a revert
would write, and send nothing but GETs.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from guardrails.clients.tables import TableStore, storage_settings, table_store
from guardrails.engine import Facts, QueueFacts, UserFacts
from guardrails.mailbox import Column, MailboxState
from guardrails.report import reader
from guardrails.report.connect import connection, dataverse_client
from guardrails.report.model import hijack_suspect
from guardrails.report.render import CSV_HEADER, csv_cell
from guardrails.state.accepted import AcceptedValues
from guardrails.values import EntityReference
from tests.azurite.plugin import Azurite
from tests.report.conftest import (
    BULK,
    HOSTILE_CSV,
    HOSTILE_HTML,
    HOSTILE_TERMINAL,
    Tenant,
    json_report,
    run_report,
)

ELSEWHERE = "00aa00aa-bb11-cc22-dd33-44ee44ee44ee"  # another organization
MAILBOX_KEYS = [
    "mailbox_id",
    "mailbox_name",
    "owner",
    "findings",
    "approval",
    "modified_by",
    "modified_on",
    "hijack_suspect",
]
# (who, column, actual, expected): every rule's drift, with what a revert would write.
DRIFT = {
    ("Megan Bowen", "incomingemaildeliverymethod", 3, 2),
    ("Diego Siciliani", "incomingemaildeliverymethod", 3, 2),
    ("Alex Wilber", "outgoingemaildeliverymethod", 1, 2),
    (HOSTILE_HTML, "outgoingemaildeliverymethod", 1, 2),
    (HOSTILE_TERMINAL, "outgoingemaildeliverymethod", 0, 2),
    ("Lee Gu", "actdeliverymethod", 2, 1),
    (HOSTILE_CSV, "actdeliverymethod", 0, 1),
    ("Nestor Wilke", "emailaddress", "nestor@fabrikam.com", "nestor@contoso.com"),
}


def _profile_drift(tenant: Tenant) -> tuple[str, str, str, str]:
    return ("Pradeep Gupta", "emailserverprofile", tenant.other_profile, tenant.default_profile)


def _findings(
    tenant: Tenant, mailboxes: list[dict[str, object]], key: str
) -> set[tuple[object, ...]]:
    found = set()
    for mailbox in mailboxes:
        who = tenant.name_of(str(mailbox["mailbox_id"]))
        for finding in mailbox[key]:  # type: ignore[attr-defined]
            found.add((who, finding["column"], finding["actual"], finding["expected"]))
    return found


def test_json_lists_every_drift_and_both_hijack_suspects(
    report_env: Tenant, tmp_path: Path
) -> None:
    tenant = report_env
    writes_before = len(tenant.sandbox.dataverse.writes)
    log_before = len(tenant.non_get_requests())
    data = json_report(tmp_path / "report.json")

    assert list(data) == ["summary", "mailboxes"]
    mailboxes = data["mailboxes"]
    for mailbox in mailboxes:
        assert list(mailbox) == MAILBOX_KEYS
        assert list(mailbox["owner"]) == ["id", "name", "email"]
        for finding in mailbox["findings"]:
            assert list(finding) == ["column", "actual", "expected"]
    assert _findings(tenant, mailboxes, "findings") == DRIFT | {_profile_drift(tenant)}

    suspects = {tenant.name_of(m["mailbox_id"]): m for m in mailboxes if m["hijack_suspect"]}
    assert set(suspects) == {"Adele Vance", "Support"}
    # Listed first, found in place: compliant under this policy, approved, made by an admin.
    assert [m["hijack_suspect"] for m in mailboxes[:2]] == [True, True]
    adele = suspects["Adele Vance"]
    assert adele["findings"] == []
    assert adele["approval"] == "Approved"
    assert adele["owner"] == {
        "id": tenant.users["Adele Vance"],
        "name": "Adele Vance",
        "email": "adele@contoso.com",
    }
    assert adele["modified_by"] == {
        "id": tenant.users["Isaiah Langer"],
        "name": "Isaiah Langer",
        "email": "isaiah@contoso.com",
    }
    assert adele["modified_on"].endswith("Z")
    assert suspects["Support"]["owner"]["email"] == "support@contoso.com"
    # Nestor's outside address is not approved: a finding, not a suspect. Exempt: not listed.
    listed = {tenant.name_of(m["mailbox_id"]) for m in mailboxes}
    assert "Exempt Mailbox" not in listed
    assert not any(m["hijack_suspect"] for m in mailboxes if m["mailbox_name"] == "Nestor Wilke")

    summary = data["summary"]
    people = 15  # 13 people, Satya and Isaiah included, plus the two queues
    assert summary["scanned"] == people + BULK
    assert summary["non_compliant"] == 9
    assert summary["hijack_suspects"] == 2
    assert summary["ignored"] == 3  # the exempt mailbox and the two queue mailboxes
    assert summary["unverified"] == 0
    assert summary["by_rule"] == {"delivery_methods": 7, "email_address": 1, "server_profile": 1}
    assert summary["by_column"]["incomingemaildeliverymethod"] == 2
    assert summary["by_business_unit"] == {"Contoso": 8, "Sales": 1}
    assert summary["hijack_suspects_by_business_unit"] == {"Contoso": 2}
    assert summary["organization_id"] == tenant.sandbox.dataverse.organization_id
    assert summary["accepted_values"].startswith("not consulted: no storage is configured")
    assert "preview" not in summary

    # Read-only: the sandbox saw GETs only, and no row changed.
    assert len(tenant.non_get_requests()) == log_before
    assert len(tenant.sandbox.dataverse.writes) == writes_before


def test_csv_has_a_row_per_finding_and_per_suspect_with_formulas_defused(
    report_env: Tenant, tmp_path: Path
) -> None:
    code, text = run_report(tmp_path / "report.csv", "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_HEADER
    records = [dict(zip(CSV_HEADER, row, strict=True)) for row in rows[1:]]
    assert len(records) == 9 + 2  # nine findings, two suspects
    hijacks = [r for r in records if r["rule"] == "hijack_suspect"]
    assert {(r["mailbox_name"], r["actual"], r["expected"]) for r in hijacks} == {
        ("Adele Vance", "satya@contoso.com", "adele@contoso.com"),
        ("Support", "ceo@contoso.com", "support@contoso.com"),
    }
    assert all(r["hijack_suspect"] == "yes" and r["approval"] == "Approved" for r in hijacks)
    findings = [r for r in records if r["rule"] != "hijack_suspect"]
    assert {r["policy"] for r in findings} == {"current"}
    megan = next(r for r in findings if r["mailbox_name"] == "Megan Bowen")
    assert (megan["column"], megan["actual"], megan["expected"]) == (
        "incomingemaildeliverymethod",
        "3",
        "2",
    )
    assert megan["business_unit"] == "Sales"
    hostile = [r for r in records if "HYPERLINK" in r["mailbox_name"]]
    assert [r["mailbox_name"] for r in hostile] == ["'" + HOSTILE_CSV]
    assert hostile[0]["owner_name"] == "'" + HOSTILE_CSV
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in records for cell in r.values())


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(start: str) -> None:
    assert csv_cell(f"{start}SUM(A1:A9)") == f"'{start}SUM(A1:A9)"


def test_csv_cells_left_alone_when_harmless() -> None:
    assert csv_cell("adele@contoso.com") == "adele@contoso.com"
    assert csv_cell(3) == 3
    assert csv_cell(None) == ""


def test_table_lists_suspects_first_and_escapes_terminal_controls(
    report_env: Tenant, tmp_path: Path
) -> None:
    code, text = run_report(tmp_path / "report.txt", "--format", "table")
    assert code == 0
    assert "\x1b" not in text
    assert "Evil \\x1b[2J\\x1b[31mred" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("MAILBOX"))
    first_rows = [line for line in lines[header + 1 :] if not line.startswith(" ")][:2]
    assert all(line.rstrip().endswith("YES") for line in first_rows)
    assert any(line.startswith("Adele Vance") for line in first_rows)
    assert (
        "    hijack suspect: approved address satya@contoso.com, the owner's is "
        "adele@contoso.com" in lines
    )
    assert "    Incoming email: Forward Mailbox (3) -> Server-Side Synchronization (2)" in lines
    assert "Scanned 55 mailboxes" in text
    assert "  by business unit: Contoso 8, Sales 1" in lines


def test_preview_shows_the_candidates_findings_beside_the_current(
    report_env: Tenant, tmp_path: Path
) -> None:
    tenant = report_env
    data = json_report(tmp_path / "preview.json", "--policy", str(tenant.candidate))
    mailboxes = data["mailboxes"]
    for mailbox in mailboxes:
        assert list(mailbox) == [*MAILBOX_KEYS, "candidate_findings"]
    current = _findings(tenant, mailboxes, "findings")
    candidate = _findings(tenant, mailboxes, "candidate_findings")
    adele = ("Adele Vance", "emailaddress", "satya@contoso.com", "adele@contoso.com")
    assert current == DRIFT | {_profile_drift(tenant)}
    assert candidate == DRIFT | {adele}  # must_match_owner catches it; the profile is ungoverned
    preview = data["summary"]["preview"]
    assert preview["policy"] == str(tenant.candidate)
    assert preview["non_compliant"] == 9
    assert preview["newly_non_compliant"] == 1  # Adele
    assert preview["no_longer_non_compliant"] == 1  # Pradeep
    assert preview["by_rule"] == {"delivery_methods": 7, "email_address": 2}
    assert data["summary"]["policy"] == str(tenant.current)

    candidate_args = ("--policy", str(tenant.candidate))
    code, text = run_report(tmp_path / "preview.csv", "--format", "csv", *candidate_args)
    assert code == 0
    policies = [row[CSV_HEADER.index("policy")] for row in csv.reader(io.StringIO(text))][1:]
    assert policies.count("current") == 9 and policies.count("candidate") == 9


def test_reader_streams_pages_and_reads_the_directory_in_bulk(tenant: Tenant) -> None:
    env = tenant.environment
    from guardrails.sandbox.environment import patched_environ

    with patched_environ({"REQUESTS_CA_BUNDLE": env["REQUESTS_CA_BUNDLE"]}):
        client, _ = dataverse_client(connection(env))
        dataverse = tenant.sandbox.dataverse
        before = dataverse.count("GET", "mailboxes")
        rows = reader.mailbox_rows(client, page_size=10)
        first = next(rows)
        assert dataverse.count("GET", "mailboxes") == before + 1  # one page, not the table
        total = 1 + sum(1 for _ in rows)
        assert total == len(dataverse.mailboxes())
        assert dataverse.count("GET", "mailboxes") == before + math.ceil(total / 10)
        assert first.state.mailbox_id and first.modified_on and first.business_unit
        # Both annotations asked for came back: whose mailbox (by kind) and the unit's name.
        assert first.state.regarding is not None
        assert first.state.regarding.logical_name in ("systemuser", "queue")
        assert first.business_unit in ("Contoso", "Sales")
        pages = [r for r in dataverse.requests_log if r.path.endswith("/mailboxes")][-2:]
        assert "$skiptoken" in pages[-1].query
        assert pages[-1].header("prefer").startswith("odata.maxpagesize=10,")

        users_before = dataverse.count("GET", "systemusers")
        directory = reader.directory(client, page_size=25)
        users = len(directory.users)
        assert users == len(tenant.users) + BULK + 2  # SYSTEM and the guardrail's app user
        assert dataverse.count("GET", "systemusers") == users_before + math.ceil(users / 25)
        assert (
            directory.queues[
                tenant.sandbox.dataverse.mailbox(tenant.mailboxes["Support"])[
                    "_regardingobjectid_value"
                ]
            ].email
            == "support@contoso.com"
        )


def test_accepted_values_are_not_drift_when_storage_is_configured(
    report_env: Tenant, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = report_env
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("GUARDRAILS_TABLE_PREFIX", azurite.unique_prefix())
    # What the function recorded when an exempt administrator set Diego's forwarding.
    store: TableStore = table_store(storage_settings())
    AcceptedValues(store.table("Accepted")).record(
        tenant.mailboxes["Diego Siciliani"],
        {Column.INCOMING: 3},
        by=tenant.users["Isaiah Langer"],
        reason="exempt user's change",
    )
    data = json_report(tmp_path / "report.json")
    listed = {tenant.name_of(m["mailbox_id"]) for m in data["mailboxes"]}
    assert "Diego Siciliani" not in listed
    assert "Megan Bowen" in listed  # the same drift, not accepted, is still reported
    assert data["summary"]["non_compliant"] == 8
    assert data["summary"]["accepted_values"].startswith("consulted")


def test_a_policy_for_another_organization_is_refused(
    report_env: Tenant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.yaml"
    text = report_env.current.read_text()
    other.write_text(text.replace(report_env.sandbox.dataverse.organization_id, ELSEWHERE))
    code, _ = run_report(tmp_path / "report.json", "--format", "json", "--policy", str(other))
    assert code == 2
    assert f"governs organization {ELSEWHERE}" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_missing_settings_are_listed_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\norganization:\n  id: 00aa00aa-bb11-cc22-dd33-44ee44ee44ee\n"
        "rules:\n  delivery_methods:\n    incoming_email: server_side_sync\n"
    )
    for name in ("DATAVERSE_URL", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GUARDRAILS_POLICY", str(policy))
    monkeypatch.setenv("AZURE_CLIENT_ID", "not-a-guid")
    monkeypatch.setenv("GUARDRAILS_HTTP_TIMEOUT", "0")
    code, _ = run_report(tmp_path / "report.json", "--format", "json")
    assert code == 2
    err = capsys.readouterr().err
    assert "DATAVERSE_URL is not set" in err
    assert "AZURE_CLIENT_ID must be an application (client) id GUID" in err
    assert "GUARDRAILS_HTTP_TIMEOUT must be seconds" in err


# -- the hijack test itself, row by row -----------------------------------------------------------

OWNER = "66aa66aa-bb77-cc88-dd99-00ee00ee00ee"
QUEUE = "22cc22cc-dd33-ee44-ff55-66aa66aa66aa"
ADELE = UserFacts(OWNER, email="Adele@Contoso.com", upn="adele@contoso.onmicrosoft.com")


def _row(address: str | None, approval: int | None, kind: str = "systemuser") -> MailboxState:
    regarding = EntityReference(kind, QUEUE if kind == "queue" else OWNER)
    return MailboxState(
        mailbox_id="5b1a3e3c-9a0e-4f43-8a4c-7f0a8f6c1d01",
        values={Column.EMAIL: address},
        regarding=regarding,
        approval=approval,
    )


@pytest.mark.parametrize(
    ("address", "approval", "suspect"),
    [
        ("satya@contoso.com", 1, True),
        ("satya@contoso.com", 2, False),  # pending approval: server-side sync does not use it
        ("satya@contoso.com", None, False),  # approval not read: not judged
        ("ADELE@contoso.com", 1, False),  # the owner's own, whatever the case
        ("adele@contoso.onmicrosoft.com", 1, False),  # the sign-in name is the owner's too
        (None, 1, False),
        ("", 1, False),
    ],
)
def test_hijack_suspect_for_a_user_mailbox(
    address: str | None, approval: int | None, suspect: bool
) -> None:
    found = hijack_suspect(_row(address, approval), Facts(owner=ADELE))
    assert (found is not None) is suspect
    if found is not None:
        assert (found.address, found.own) == (address, "Adele@Contoso.com")


def test_hijack_suspect_for_a_queue_mailbox_compares_with_the_queues_address() -> None:
    queue = QueueFacts(QUEUE, name="Support", email="support@contoso.com")
    assert hijack_suspect(_row("support@contoso.com", 1, "queue"), Facts(queue=queue)) is None
    found = hijack_suspect(_row("ceo@contoso.com", 1, "queue"), Facts(queue=queue))
    assert found is not None and found.own == "support@contoso.com"
    # A queue without an address of its own owns none: any approved address is suspect.
    bare = QueueFacts(QUEUE, name="Support")
    assert hijack_suspect(_row("support@contoso.com", 1, "queue"), Facts(queue=bare)) is not None


def test_an_owner_the_directory_does_not_hold_is_not_judged() -> None:
    assert hijack_suspect(_row("satya@contoso.com", 1), Facts()) is None


def test_scan_names_a_lookup_read_without_its_logical_name_by_the_directory() -> None:
    """Should the service leave out the lookup's annotation, the hijack is still found."""
    from guardrails.policy import parse_policy
    from guardrails.report.model import MailboxRow
    from guardrails.report.scan import Directory, scan

    policy = parse_policy(
        f"version: 1\norganization: {{id: {ELSEWHERE}}}\n"
        "rules:\n  delivery_methods: {incoming_email: server_side_sync}\n"
    )
    bare = MailboxState(
        mailbox_id="5b1a3e3c-9a0e-4f43-8a4c-7f0a8f6c1d01",
        values={Column.EMAIL: "satya@contoso.com", Column.INCOMING: 2},
        regarding=EntityReference("", OWNER),  # `_regardingobjectid_value` alone
        approval=1,
    )
    directory = Directory(users={OWNER: ADELE})

    def no_defaults() -> dict[Column, int | str]:
        raise AssertionError("the policy needs no organization defaults")

    summary, entries = scan(
        [MailboxRow(bare, business_unit="Contoso")],
        directory,
        policy,
        organization_defaults=no_defaults,
    )
    assert (summary.scanned, summary.hijack_suspects, summary.owner_not_found) == (1, 1, 0)
    (entry,) = entries
    assert entry.row.state.regarding == EntityReference("systemuser", OWNER)
    assert entry.owner.email == "Adele@Contoso.com"
    assert entry.hijack is not None and entry.hijack.own == "Adele@Contoso.com"
