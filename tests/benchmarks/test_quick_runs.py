"""Each benchmark at a small size: it must still run and still measure the right thing.

Timings are printed by the benchmarks themselves and never asserted here: what is asserted is
that the run did its job (every drift fixed, a second sweep finding nothing, the exempt mailbox
untouched), so a broken benchmark fails the test command instead of printing nonsense.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.sweep import run as sweep

REPO = Path(__file__).resolve().parents[2]


def test_the_sweep_benchmark_fixes_every_rule_and_a_second_run_finds_nothing() -> None:
    figures = sweep(2000, 0.05)
    assert figures["fixed_all"] is True and figures["failed"] == 0
    assert figures["second_run_non_compliant"] == 0
    assert figures["exempt_untouched"] is True
    drift = figures["drift_by_rule"]
    assert isinstance(drift, dict) and set(drift) == {
        "act",
        "address",
        "incoming",
        "outgoing",
        "profile",
    }
    assert figures["batches"] >= 1 and figures["pages"] >= 1
    assert figures["state"] == "child"  # the state is out of the measured process by default


@pytest.mark.parametrize("state", ["memory", "azurite"])
def test_the_sweep_benchmark_can_keep_the_state_elsewhere(
    state: str, request: pytest.FixtureRequest
) -> None:
    storage = request.getfixturevalue("azurite").connection_string if state == "azurite" else None
    figures = sweep(300, 0.05, state=state, storage=storage)
    assert figures["state"] == state and figures["fixed_all"] is True
    assert figures["second_run_non_compliant"] == 0 and figures["exempt_untouched"] is True


def test_the_sweep_benchmark_prints_a_row_per_size_each_swept_in_a_fresh_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.sweep", "--quick"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("state: in the sandbox child's memory"), done.stdout
    lines = done.stdout.splitlines()
    assert lines[1].split()[:2] == ["mailboxes", "drifted"], done.stdout
    rows = [line.split() for line in lines[2:4]]
    assert [(row[0], row[-1]) for row in rows] == [("1,000", "ok"), ("2,000", "ok")]
    for row in rows:
        pages, batches, lookups = map(int, row[4:7])
        assert pages >= 1 and batches >= 1 and lookups >= 1


def test_the_latency_benchmark_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "latency.py"), "--messages", "5"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "violating update (revert)" in done.stdout and "compliant update" in done.stdout


def test_the_economy_benchmark_counts_requests_per_message() -> None:
    from benchmarks.economy import run as economy

    figures = economy(100, 20, 0.1)
    by_kind = figures["by_kind"]
    assert isinstance(by_kind, dict)
    assert figures["whoami"] == 1 and figures["token_requests"] == 2
    assert figures["writes_per_violation"] == 1.0
    # Compliant changes cost nothing: every request is WhoAmI, a user look-up or a revert.
    assert set(by_kind) <= {"GET WhoAmI", "GET systemusers", "PATCH mailboxes"}


@pytest.mark.parametrize("report_budget", [True, False], ids=["budget-headers", "no-headers"])
def test_the_storm_benchmark_loses_nothing_under_the_limits(report_budget: bool) -> None:
    from benchmarks.storm import run as storm

    figures = storm(120, 4, 60, 1.0, 0.0, report_budget=report_budget)
    assert figures["compliant_at_end"] == 120 and figures["lost"] == 0
    assert figures["requests_per_change"] == 3.0
    assert figures["budget_headers"] is report_budget
    assert figures["throttled_429"] != 0  # it did run into the limit


def _quick(script: str) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cold_start_benchmark_runs_and_leaves_the_sdks_for_first_use() -> None:
    out = _quick("coldstart.py")
    assert re.search(
        r"^cold start: \d+ ms vs bare deps \d+ ms = [\d.]+x \(goal <= 1\.3x\); "
        r"peak RSS \d+ MB \(goal < 100 MB\)$",
        out,
        re.MULTILINE,
    ), out
    assert re.search(r"^cold start CPU time: \d+ ms vs bare deps \d+ ms = [\d.]+x", out, re.M)
    assert re.search(r"^like for like: .* take \d+ ms: [\d.]+x$", out, re.M), out
    # Start-up built the worker without importing what only a scheduled retry, a table access,
    # a notification, a client certificate or the sweep needs.
    assert "worker built at start-up: True" in out
    left = (
        "azure.servicebus, azure.data.tables, azure.core, jinja2, cryptography, "
        "guardrails.reconcile"
    )
    assert f"left for first use: {left}\n" in out, out


def test_the_core_benchmark_runs_on_compliant_and_violating_bodies() -> None:
    out = _quick("core.py")
    assert "decisions: {'compliant -> compliant': 10, 'violating -> violation': 10}" in out
    for kind in ("compliant", "violating", "all"):
        assert re.search(
            rf"^core \({kind}\): parse \+ decide \d+ us vs json\.loads \d+ us per message = "
            r"[\d.]+x \(goal <= 2\.0x\)$",
            out,
            re.MULTILINE,
        ), out
