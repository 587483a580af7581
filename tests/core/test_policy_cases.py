"""`guardrails policy test`: a policy's own test cases, run as an admin (and CI) runs them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from guardrails.cli import main
from guardrails.mailbox import Column, mailbox_event
from guardrails.message import ExecutionContext, parse_message
from guardrails.policy.cases import (
    ChangeSpec,
    MessageIds,
    change_message,
    column_value,
    stable_id,
)
from guardrails.sandbox.messages import mailbox_message, to_body
from guardrails.values import EntityReference
from tests.core.conftest import EXAMPLE_POLICY, EXAMPLES

CASES = EXAMPLES / "policy-tests"


def _run(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["policy", "test", *args])
    return code, capsys.readouterr().out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A policy next to an empty folder of cases, as examples/ has them."""
    shutil.copy(EXAMPLE_POLICY, tmp_path / "policy.yaml")
    cases = tmp_path / "cases"
    cases.mkdir()
    return cases


def test_the_example_policys_own_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(str(CASES), capsys=capsys)
    files = sorted(path.name for path in CASES.glob("*.yaml"))
    assert len(files) >= 8
    assert code == 0, out
    assert [line.split(":")[0] for line in out.splitlines()[:-1]] == [
        f"PASS  {name}" for name in files
    ]
    assert out.splitlines()[-1] == f"{len(files)} passed, 0 failed ({CASES})"
    # The case without the owner's directory entry says what it could not verify.
    assert "address-to-ceo-owner-unknown.yaml" in out and "(not verified: owner)" in out


FORWARD = """\
name: {name}
change:
  by: {{email: {by}{roles}}}
  mailbox: {{owner_email: adele@contoso.com}}
  columns:
    incomingemaildeliverymethod: {{from: server_side_sync, to: forward_mailbox}}
expect:
{expect}
"""


def _case(
    folder: Path,
    file: str,
    *,
    name: str = "case",
    by: str = "adele@contoso.com",
    roles: str = "",
    expect: str = "  outcome: violation",
) -> Path:
    path = folder / file
    path.write_text(FORWARD.format(name=name, by=by, roles=roles, expect=expect))
    return path


def test_a_failing_case_shows_the_difference_and_exits_1(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _case(folder, "a-pass.yaml", name="reverted", expect="  outcome: violation")
    _case(
        folder,
        "b-fail.yaml",
        name="an admin, they thought",
        by="isaiah@contoso.com",  # but without the role
        expect=("  outcome: ignored\n  columns: []\n  patch: {}\n  reason_contains: exempt role"),
    )
    code, out = _run(str(folder), capsys=capsys)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "PASS  a-pass.yaml: reverted"
    assert lines[1] == "FAIL  b-fail.yaml: an admin, they thought"
    assert "      outcome: expected ignored, got violation" in lines
    assert "      columns: expected [], got ['incomingemaildeliverymethod']" in lines
    assert '      patch: expected {}, got {"incomingemaildeliverymethod": 2}' in lines
    assert "      reason: expected it to contain 'exempt role'" in lines
    assert any(line.startswith("      the decision: Reverting: Incoming email") for line in lines)
    assert lines[-1] == f"1 passed, 1 failed ({folder})"


def test_the_same_case_passes_once_the_initiator_holds_the_role(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _case(
        folder,
        "admin.yaml",
        by="isaiah@contoso.com",
        roles=", roles: [system administrator]",  # role names match without regard to case
        expect="  outcome: ignored\n  patch: {}\n  reason_contains: exempt role",
    )
    assert _run(str(folder), capsys=capsys)[0] == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "name: x\nchange:\n  by: {email: a@contoso.com}\n  colums: {}\n"
            "expect: {outcome: compliant}\n",
            "change.colums: Extra inputs are not permitted",
        ),
        (
            "name: x\nexpect: {outcome: compliant}\n",
            "give exactly one of 'message' (a captured body) and 'change'",
        ),
        (
            "name: x\nchange:\n  by: {}\n  columns: {incoming: {to: 3}}\n"
            "expect: {outcome: violation}\n",
            "change.columns.incoming.[key]: Input should be",
        ),
        (
            "name: x\nchange:\n  by: {}\n  columns:\n"
            "    incomingemaildeliverymethod: {to: forward}\nexpect: {outcome: violation}\n",
            "incomingemaildeliverymethod: 'forward' is not one of none, outlook, server_side_sync, "
            "forward_mailbox",
        ),
        (
            "name: x\nmessage: missing.json\nexpect: {outcome: violation}\n",
            "cannot read the message",
        ),
        (
            "name: x\nchange:\n  by: {}\n  columns: {}\nfacts: {initiator: {roles: [x]}}\n"
            "expect: {outcome: compliant}\n",
            "with a 'change', who made it is 'change.by', not 'facts.initiator'",
        ),
        ("- just\n- a list\n", "a case is a YAML mapping"),
        ("name: [unclosed\n", "not YAML"),
    ],
)
def test_a_case_that_cannot_run_is_an_error_that_says_why(
    folder: Path, text: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "broken.yaml").write_text(text)
    code, out = _run(str(folder), capsys=capsys)
    assert code == 1
    assert out.startswith("ERROR broken.yaml: ")
    assert problem in out


def test_no_cases_or_no_folder_fails(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(str(folder), capsys=capsys) == (1, f"{folder}: no cases (*.yaml) found\n")
    missing = tmp_path / "nowhere"
    assert _run(str(missing), capsys=capsys)[0] == 1


ORGANIZATION_DEFAULT_POLICY = """\
version: 1
organization: {id: 00aa00aa-bb11-cc22-dd33-44ee44ee44ee}
rules:
  delivery_methods: {outgoing_email: organization_default}
"""


def test_policy_from_the_case_or_the_command_line_and_facts_from_the_case(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The organization's defaults are only known when the case states them."""
    (tmp_path / "org-default.yaml").write_text(ORGANIZATION_DEFAULT_POLICY)
    change = (
        "change:\n  by: {email: adele@contoso.com}\n  mailbox: {owner_email: adele@contoso.com}\n"
        "  columns: {outgoingemaildeliverymethod: {from: 2, to: 1}}\n"
    )
    (folder / "known.yaml").write_text(
        "name: known\npolicy: ../org-default.yaml\n"
        + change
        + "facts:\n  organization_defaults: {outgoingemaildeliverymethod: server_side_sync}\n"
        "expect: {outcome: violation, patch: {outgoingemaildeliverymethod: 2}}\n"
    )
    (folder / "unknown.yaml").write_text(
        "name: unknown\n"
        + change
        + "expect: {outcome: compliant, unverified: [organization_defaults]}\n"
    )
    code, out = _run(str(folder), "--policy", str(tmp_path / "org-default.yaml"), capsys=capsys)
    assert code == 0, out
    assert "PASS  unknown.yaml: unknown (not verified: organization_defaults)" in out


def test_a_captured_message_case(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = EXAMPLES / "messages" / "email-address-to-ceo.json"
    (folder / "captured.yaml").write_text(
        f"name: captured\nmessage: {message}\n"
        "facts:\n  initiator: {roles: [Salesperson]}\n"
        "  owner: {email: adele@contoso.com}\n"
        "expect: {outcome: violation, patch: {emailaddress: adele@contoso.com}}\n"
    )
    code, out = _run(str(folder), capsys=capsys)
    assert code == 0, out


# -- the change as a message ------------------------------------------------------------------


def _parsed(body: bytes) -> ExecutionContext:
    context = parse_message(body)
    assert isinstance(context, ExecutionContext), context
    return context


@pytest.mark.parametrize("message", ["Update", "Create"])
def test_a_described_change_becomes_the_message_the_sandbox_posts(message: str) -> None:
    """The case builder and the sandbox's Dataverse model agree on what the engine sees."""
    columns: dict[str, Any] = {
        "incomingemaildeliverymethod": {"from": 2, "to": 3},
        "emailaddress": {"from": "adele@contoso.com", "to": "satya@contoso.com"},
    }
    change = ChangeSpec.model_validate(
        {
            "message": message,
            "by": {"email": "adele@contoso.com"},
            "mailbox": {"owner_email": "adele@contoso.com", "name": "Adele Vance"},
            "columns": columns,
            "tag": "somebody",
        }
    )
    owner = stable_id("user", "adele@contoso.com")  # also the initiator: her own mailbox
    ids = MessageIds(
        mailbox=stable_id("mailbox", owner),
        initiator=stable_id("user", "adele@contoso.com"),
        regarding=EntityReference("systemuser", owner),
        organization="00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
        correlation=stable_id("correlation", "x"),
    )
    row = {Column.OUTGOING: 2, Column.ACT: 1}
    ours = _parsed(to_body(change_message(change, ids, row)))
    changes = {name: values["to"] for name, values in columns.items()}
    before = {name: values["from"] for name, values in columns.items()}
    before.update({"outgoingemaildeliverymethod": 2, "actdeliverymethod": 1})
    before["regardingobjectid"] = ("systemuser", owner)
    if message == "Create":
        changes["regardingobjectid"] = ("systemuser", owner)
    theirs = _parsed(
        to_body(
            mailbox_message(
                message=message,
                mailbox_id=ids.mailbox,
                organization_id=ids.organization,
                user_id=ids.initiator,
                changes=changes,
                before=before,
                row_version=1,
                tag="somebody",
                mailbox_name="Adele Vance",
                correlation_id=ids.correlation,
            )
        )
    )
    ours_event, theirs_event = mailbox_event(ours), mailbox_event(theirs)
    assert ours_event == theirs_event
    assert ours_event.changed == {Column.INCOMING: 3, Column.EMAIL: "satya@contoso.com"}
    assert ours_event.regarding == EntityReference("systemuser", owner)
    if message == "Update":
        assert ours_event.previous[Column.EMAIL] == "adele@contoso.com"
    assert (ours.stage, ours.parent.stage if ours.parent else None) == (40, 30)


def test_values_by_name_or_number() -> None:
    assert column_value(Column.INCOMING, "forward_mailbox") == 3
    assert column_value(Column.ACT, "server_side_sync") == 1  # not 2: numbers differ per column
    assert column_value(Column.ACT, 0) == 0
    profile = "44ee44ee-ff55-aa66-bb77-88cc88cc88cc"
    assert column_value(Column.SERVER_PROFILE, profile.upper()) == EntityReference(
        "emailserverprofile", profile
    )
