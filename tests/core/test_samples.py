"""Every real Dataverse payload parses, and the worker calls each one "not a mailbox event"."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from guardrails.cli import main
from guardrails.engine import Outcome, decide

from .conftest import (
    EXAMPLE_POLICY,
    REPO,
    SAMPLE_NAMES,
    SAMPLES,
    SAMPLES_DIR,
    parse_ok,
    sample_bytes,
    sample_id,
    sample_path,
)

JSON_KEYS = {"message", "outcome", "reason", "mailbox_id", "violations", "patch"}


def test_the_shared_samples_are_present() -> None:
    # Fails (never skips) when ../shared is not checked out beside the repository.
    assert SAMPLES_DIR.is_dir(), f"{SAMPLES_DIR} is missing"
    assert sorted(p.name for p in SAMPLES_DIR.glob("*.json")) == SAMPLE_NAMES


@pytest.mark.parametrize("name", SAMPLE_NAMES, ids=sample_id)
def test_sample_parses_to_an_execution_context(name: str) -> None:
    message, entity, entity_id, org, initiator, correlation = SAMPLES[name]
    context = parse_ok(sample_bytes(name))
    assert context.message_name == message
    assert context.primary_entity_name == entity
    assert context.primary_entity_id == entity_id
    assert context.organization_id == org
    assert context.initiating_user_id == initiator
    assert context.correlation_id == correlation
    assert context.oversize is False
    assert context.stage == 40
    assert context.depth == 1
    assert context.parent is not None
    assert context.parent.stage == 30
    assert context.parent.message_name == message
    assert context.operation_created_on is not None
    assert context.target is not None


@pytest.mark.parametrize("name", SAMPLE_NAMES, ids=sample_id)
def test_sample_is_not_a_mailbox_event(name: str, example_policy) -> None:
    message, entity, *_ = SAMPLES[name]
    decision = decide(parse_ok(sample_bytes(name)), example_policy)
    assert decision.outcome is Outcome.IGNORED
    assert decision.reason.startswith("Not a mailbox event")
    assert f"{message} of {entity}" in decision.reason
    assert decision.violations == ()
    assert decision.patch == {}
    assert decision.unverified == ()


def _check_json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == len(SAMPLE_NAMES)
    records = [json.loads(line) for line in lines]
    for record, name in zip(records, SAMPLE_NAMES, strict=True):
        assert set(record) >= JSON_KEYS
        assert record["message"] == str(sample_path(name))
        assert record["outcome"] == "ignored"
        assert record["reason"].startswith("Not a mailbox event")
        assert record["mailbox_id"] == SAMPLES[name][2]
        assert record["violations"] == []
        assert record["patch"] == {}
    return records


def test_cli_evaluate_json_over_all_samples(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", "--policy", str(EXAMPLE_POLICY), "--format", "json"]
    code = main([*args, *(str(sample_path(name)) for name in SAMPLE_NAMES)])
    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    _check_json_lines(out)


def test_cli_evaluate_json_over_all_samples_in_a_subprocess() -> None:
    assert SAMPLES_DIR.is_dir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardrails",
            "evaluate",
            "--policy",
            str(EXAMPLE_POLICY),
            "--format",
            "json",
            *(str(sample_path(name)) for name in SAMPLE_NAMES),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    _check_json_lines(result.stdout)
