"""Every benchmark, one after another, each in a fresh process, with its goal beside it.

    .venv/bin/python benchmarks/run_all.py [--quick]

`--quick` runs each at a small size (what the test command does so they cannot rot). The full
run takes about fifteen minutes on two cores (the storm is bound by its scaled limits). Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS: list[tuple[str, list[str], list[str], str]] = [
    # (name, full arguments, quick arguments, goal)
    (
        "coldstart",
        [],
        ["--quick"],
        "import + start-up <= 1.3x the bare dependencies; peak < 100 MB",
    ),
    ("core", [], ["--quick"], "parse + decide <= 2x json.loads of the same bodies"),
    (
        "economy",
        [],
        ["--quick"],
        "0 requests per compliant change, 1 write per violation, 1 token and 1 WhoAmI",
    ),
    ("storm", [], ["--quick"], ">= 0.90 of the limit-bound throughput, nothing lost"),
    ("sweep", [], ["--quick"], "100,000 mailboxes: all drift fixed, memory flat in the mailboxes"),
    ("latency", [], ["--messages", "20"], "a revert well within a second of the message"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for name, full, quick, goal in BENCHMARKS:
        print(f"== {name}  (goal: {goal})", flush=True)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full)],
            check=False,
            cwd=HERE.parent,
        )
        elapsed = time.perf_counter() - started
        print(f"   ({name} ran {elapsed:.1f} s, exit {done.returncode})\n", flush=True)


if __name__ == "__main__":
    main()
