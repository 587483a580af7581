"""`guardrails evaluate`: offline replay of captured message bodies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardrails.cli import main

from .conftest import EXAMPLE_MESSAGES_DIR, EXAMPLE_POLICY, MAILBOX_ID, USER, example_messages

EXPECTED_MESSAGES = [
    "back-to-server-side-sync.json",
    "create-with-outlook.json",
    "email-address-to-ceo.json",
    "forward-mailbox.json",
    "oversize-update.json",
]


def _sections(out: str) -> dict[str, str]:
    """Text output -> {file name: its block}."""
    sections: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if not line.startswith(" "):
            current = Path(line).name
            sections[current] = ""
        else:
            assert current is not None
            sections[current] += line + "\n"
    return sections


def _evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["evaluate", "--policy", str(EXAMPLE_POLICY), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_example_messages_exist() -> None:
    assert [p.name for p in example_messages()] == EXPECTED_MESSAGES


def test_text_output_for_the_example_messages(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _evaluate(capsys, *(str(p) for p in example_messages()))
    assert code == 0
    assert err == ""
    sections = _sections(out)
    assert list(sections) == EXPECTED_MESSAGES

    forward = sections["forward-mailbox.json"]
    assert "violation:" in forward
    assert "Forward Mailbox (3)" in forward
    assert f"mailbox {MAILBOX_ID}, changed by {USER}" in forward
    assert "[delivery_methods, enforce]" in forward
    assert 'would write: {"incomingemaildeliverymethod": 2}' in forward

    oversize = sections["oversize-update.json"]
    assert "not verifiable offline:" in oversize
    verifiable_line = next(line for line in oversize.splitlines() if "not verifiable" in line)
    assert "mailbox_state" in verifiable_line
    assert "must be read" in oversize
    assert "would write" not in oversize

    email = sections["email-address-to-ceo.json"]
    assert "[email_address, enforce]" in email
    assert "the address to restore is the owner's own, looked up in Dataverse" in email
    assert "not verifiable offline: mailbox_state, initiator" in email

    create = sections["create-with-outlook.json"]
    assert 'would write: {"outgoingemaildeliverymethod": 2}' in create

    back = sections["back-to-server-side-sync.json"]
    assert "compliant:" in back
    assert "would write" not in back


def test_json_output_for_the_example_messages(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _evaluate(capsys, "--format", "json", *(str(p) for p in example_messages()))
    assert code == 0
    assert err == ""
    records = {Path(r["message"]).name: r for r in map(json.loads, out.splitlines())}
    assert list(records) == EXPECTED_MESSAGES
    assert records["forward-mailbox.json"]["outcome"] == "violation"
    assert records["forward-mailbox.json"]["patch"] == {"incomingemaildeliverymethod": 2}
    assert records["oversize-update.json"]["outcome"] != "violation"
    assert "mailbox_state" in records["oversize-update.json"]["unverified"]
    assert records["back-to-server-side-sync.json"]["outcome"] == "compliant"
    for record in records.values():
        assert record["mailbox_id"] == MAILBOX_ID
        assert record["entity"] == "mailbox"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_unreadable_file_fails_but_others_are_evaluated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    missing = tmp_path / "missing.json"
    directory = tmp_path / "a-directory.json"
    directory.mkdir()
    forward = EXAMPLE_MESSAGES_DIR / "forward-mailbox.json"
    oversize = EXAMPLE_MESSAGES_DIR / "oversize-update.json"
    code, out, err = _evaluate(
        capsys, "--format", fmt, str(missing), str(forward), str(directory), str(oversize)
    )
    assert code != 0
    err_lines = err.splitlines()
    assert any(line.startswith(f"{missing}: cannot read") for line in err_lines), err
    assert any(line.startswith(f"{directory}: cannot read") for line in err_lines), err
    assert str(forward) in out
    assert str(oversize) in out
    assert str(missing) not in out
    if fmt == "json":
        assert len(out.splitlines()) == 2


def test_bad_bodies_are_reported_not_crashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "binary.bin"
    binary.write_bytes(
        b"@\x16RemoteExecutionContext\x08\x30http://schemas.microsoft.com/xrm/2011/Contracts"
    )
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    code, out, err = _evaluate(capsys, "--format", "json", str(binary), str(empty))
    assert code == 0  # a rejected message is an outcome, not a CLI failure
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["outcome"] for r in records] == ["rejected", "rejected"]
    assert "messageformat = 2" in records[0]["reason"]
    assert err == ""


def test_invalid_policy_stops_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules: {}\n", encoding="utf-8")
    code = main(
        ["evaluate", "--policy", str(policy), str(EXAMPLE_MESSAGES_DIR / "forward-mailbox.json")]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert f"{policy}:" in err
    assert "the policy was not used" in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "evaluate" in capsys.readouterr().out


def test_hostile_text_never_stops_evaluate(tmp_path: Path) -> None:
    """Finding 5: a lone surrogate reached the text output and stopped the run. Each file is
    reported, whatever its bytes and whatever its name, and the run carries on after it."""
    import subprocess
    import sys

    from guardrails.sandbox.messages import to_body

    from .conftest import mailbox

    data = mailbox(changes={"emailaddress": "x@contoso.com"})
    surrogate = tmp_path / "surrogate.json"
    surrogate.write_bytes(to_body(data).replace(b"x@contoso.com", b"x\\udc80@contoso.com"))
    strange_name = tmp_path / "caf\udce9.json"  # a file name that is not UTF-8
    try:
        strange_name.write_bytes(to_body(data))
    except (UnicodeEncodeError, OSError):
        strange_name = surrogate
    last = tmp_path / "z-last.json"
    last.write_bytes(to_body(data))
    command = [sys.executable, "-m", "guardrails", "evaluate", "--policy", str(EXAMPLE_POLICY)]
    files = [str(surrogate), str(strange_name), "/nonexistent/missing.json", str(last)]
    for fmt in ("text", "json"):
        done = subprocess.run(
            [*command, "--format", fmt, *files],
            capture_output=True,
            env={"PYTHONIOENCODING": "utf-8", "PATH": "/usr/bin:/bin"},
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
        out = done.stdout.decode("utf-8")
        assert "Traceback" not in done.stderr.decode("utf-8", "replace")
        assert done.returncode == 1  # the missing file
        assert "z-last.json" in out  # the run went on after every hostile file
        assert out.count("violation") >= 3
