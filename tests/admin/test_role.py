"""`guardrails role`: the least-privilege role, printed per policy and created via the Web API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.admin.role import PRIVILEGES, ROLE_NAME, Need, privileges_for
from guardrails.cli import main
from guardrails.policy import parse_policy
from guardrails.sandbox.environment import GUARDRAIL_ROLE, Sandbox

pytestmark = pytest.mark.integration

ORGANIZATION = "00aa00aa-bb11-cc22-dd33-44ee44ee44ee"
WORKER = {
    "prvReadMailbox",
    "prvWriteMailbox",
    "prvReadUser",
    "prvReadRole",
    "prvReadOrganization",
}
DOCTOR = {
    "prvReadServiceEndpoint",
    "prvReadSdkMessageProcessingStep",
    "prvReadSdkMessageProcessingStepImage",
    "prvReadSdkMessage",
    "prvReadSdkMessageFilter",
}


def _policy(rules: str, scope: str = "user_mailboxes") -> str:
    return f"version: 1\norganization:\n  id: {ORGANIZATION}\nscope: {scope}\nrules:\n{rules}"


def test_the_role_without_a_policy_is_every_privilege_at_global_depth(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["role", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed] == [p.name for p in PRIVILEGES]
    assert {p["depth"] for p in listed} == {"Global"}
    assert all(len(p["why"]) > 20 for p in listed)
    assert {p["name"] for p in listed if p["needed"] == "always"} == WORKER
    assert {p["name"] for p in listed if p["needed"] == "doctor"} == DOCTOR
    assert main(["role"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["privilege", "depth", "needed", "why"]
    assert table[1].startswith("prvReadMailbox  ")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            _policy("  delivery_methods:\n    incoming_email: server_side_sync\n"),
            WORKER | DOCTOR,
        ),
        (
            _policy("  email_address:\n    changes: forbidden\n    restore_approval: true\n"),
            WORKER | DOCTOR | {"prvApproveRejectEmailAddress"},
        ),
        (
            _policy("  server_profile:\n    expected: organization_default\n", scope="all"),
            WORKER
            | DOCTOR
            | {"prvReadQueue", "prvReadTeam", "prvAppendMailbox", "prvAppendToEmailServerProfile"},
        ),
    ],
    ids=["delivery methods", "restore approval", "server profile for queues too"],
)
def test_a_policy_needs_only_what_its_rules_use(
    policy: str, expected: set[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert {p.name for p in privileges_for(parse_policy(policy))} == expected
    assert {p.name for p in privileges_for(parse_policy(policy), doctor=False)} == expected - DOCTOR
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    assert main(["role", "--policy", str(path), "--format", "json"]) == 0
    assert {p["name"] for p in json.loads(capsys.readouterr().out)} == expected


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Sandbox]:
    with Sandbox() as org:
        for key, value in org.admin_environment().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("GUARDRAILS_POLICY", raising=False)
        yield org


def test_every_privilege_exists_in_dataverse_and_the_sandbox_role_is_this_one(
    sandbox: Sandbox,
) -> None:
    assert {p.name for p in PRIVILEGES} <= set(sandbox.dataverse.privilege_names())
    assert sandbox.dataverse.role_privileges(GUARDRAIL_ROLE) == {
        p.name: p.depth for p in PRIVILEGES
    }
    assert GUARDRAIL_ROLE == ROLE_NAME


def test_create_makes_the_role_then_only_completes_it(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    dv = sandbox.dataverse
    name = "Mailbox Guardrails (production)"
    assert main(["role", "--create", "--name", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"created role '{name}' (")
    assert out.count("  added ") == len(PRIVILEGES)
    assert dv.role_privileges(name) == {p.name: "Global" for p in PRIVILEGES}

    assert main(["role", "--create", "--name", name]) == 0
    assert "it already holds every privilege: nothing written" in capsys.readouterr().out
    posts = len(dv.find_requests(method="POST"))

    dv.set_role_privileges(
        name,
        {
            **{p.name: p.depth for p in PRIVILEGES if p.name != "prvWriteMailbox"},
            "prvReadMailbox": "Local",  # too shallow: raised to Global
            "prvDeleteMailbox": "Global",  # not needed: said, left alone
        },
    )
    assert main(["role", "--create", "--name", name, "--format", "json"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["created"] is False
    assert [p["name"] for p in outcome["added"]] == ["prvReadMailbox", "prvWriteMailbox"]
    assert outcome["extra"] == ["prvDeleteMailbox"]
    assert [r.path.rsplit("/", 1)[-1] for r in dv.find_requests(method="POST")[posts:]] == [
        "Microsoft.Dynamics.CRM.AddPrivilegesRole"
    ]
    assert dv.role_privileges(name) == {
        **{p.name: "Global" for p in PRIVILEGES},
        "prvDeleteMailbox": "Global",
    }


def test_the_role_for_a_policy_leaves_out_what_it_does_not_use(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(_policy("  delivery_methods:\n    incoming_email: server_side_sync\n"))
    assert main(["role", "--create", "--name", "Narrow", "--policy", str(path)]) == 0
    capsys.readouterr()
    assert set(sandbox.dataverse.role_privileges("Narrow")) == WORKER | DOCTOR


def test_the_app_itself_may_not_create_roles(
    sandbox: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in sandbox.environment(tmp_path / "policy.yaml").items():
        if key.startswith("AZURE_"):
            monkeypatch.setenv(key, value)
    assert main(["role", "--create", "--name", "Escalation"]) == 1
    assert "missing prvCreateRole privilege" in capsys.readouterr().err
    with pytest.raises(KeyError):
        sandbox.dataverse.role_privileges("Escalation")


def test_needs_follow_the_policy_rules() -> None:
    policy = parse_policy(_policy("  email_address:\n    changes: forbidden\n"))
    assert Need.RESTORE_APPROVAL not in {p.needed for p in privileges_for(policy)}
    assert {p.needed for p in privileges_for(None)} == set(Need)
