"""Each benchmark at a small size: it must still run and still measure the right thing.

Timings are printed by the benchmarks themselves and never asserted here: what is asserted is
that the run did its job (every drift fixed, a second sweep finding nothing, the exempt mailbox
untouched), so a broken benchmark fails the test command instead of printing nonsense.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_the_storm_benchmark_loses_nothing_under_the_limits() -> None:
    from benchmarks.storm import run as storm

    figures = storm(120, 4, 60, 1.0, 0.0)
    assert figures["compliant_at_end"] == 120 and figures["lost"] == 0
    assert figures["requests_per_change"] == 3.0
