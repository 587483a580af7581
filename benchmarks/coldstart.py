"""Cold start: importing the function app and building its worker, against the bare dependencies.

    .venv/bin/python benchmarks/coldstart.py [--runs 15] [--quick]

Each run is a fresh interpreter that times one import statement: either the function app
(`import function_app`, which also builds the worker: settings, policy load, clients) or the
dependencies alone (`azure.functions`, `requests`, `msal`, `pydantic`, `structlog`, `yaml`).
The sides alternate, so a busy machine slows both alike, and the medians are compared.
Start-up pauses the garbage collector (function_app.py says why), which also spares the
dependencies' own collections; a third side imports the bare dependencies with the collector
paused as well, and the like-for-like ratio against it is printed beside the goal's. The
app's settings are those of local.settings.json.example with the example policy; start-up touches
no network. Byte code is compiled once, before the timed runs, into a private cache (nothing is
written to the repository), so both sides load compiled modules as a deployed app does.

Also printed: the app's peak RSS, what start-up still imports beyond the dependencies (from
`-X importtime`), which optional SDKs start-up leaves unimported, and what importing those
costs on the first message that needs them (tests/integration run first messages through
function_app against the sandbox, Azurite and the test broker). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BARE = ("azure.functions", "requests", "msal", "pydantic", "structlog", "yaml")
# Imported only on the paths that need them: a scheduled retry, the first table access (azure-core
# with it, as with any Azure SDK), the first notification (or a policy with a template, or with a
# '{' in its subject), a client certificate, the timer's sweep, the command line.
DEFERRED = (
    "azure.servicebus",
    "azure.data.tables",
    "azure.core",
    "jinja2",
    "cryptography",
    "guardrails.reconcile",
    "rich",
    "email.parser",
)
GOAL_RATIO = 1.3
GOAL_RSS_MB = 100.0

_CHILD = """\
import resource, sys, time
started, cpu = time.perf_counter(), time.process_time()
{pause}import {modules}
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import json
figures = {{"ms": elapsed * 1000, "cpu_ms": cpu * 1000, "rss_mb": rss_mb}}
if {check_app}:
    from guardrails.worker import Worker
    figures["usable"] = isinstance(function_app.worker, Worker)
    figures["not_imported"] = [m for m in {deferred!r} if m not in sys.modules]
if {check_app} and not {importtime}:
    started = time.perf_counter()
    for name in {deferred!r}:
        __import__(name)
    figures["deferred_ms"] = (time.perf_counter() - started) * 1000
print(json.dumps(figures))
"""


def example_environment(policy: Path, cache: Path) -> dict[str, str]:
    """The environment of a fresh process with the example settings and `policy`, its byte code
    cached under `cache` (tests/live/test_startup.py starts the app in it too)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "AZURE_", "GUARDRAILS_", "SERVICEBUS", "DATAVERSE"))
        and key not in {"AzureWebJobsStorage", "GRAPH_URL"}
    }
    example = json.loads((REPO / "local.settings.json.example").read_text("utf-8"))["Values"]
    env.update({key: value for key, value in example.items() if value})
    env.update(
        {
            "AZURE_CLIENT_SECRET": "not-a-secret",
            "GUARDRAILS_POLICY": str(policy),
            "SERVICEBUS": "Endpoint=sb://contoso.servicebus.windows.net/;"
            "SharedAccessKeyName=listen;SharedAccessKey=bm90LWEta2V5",
            "PYTHONPYCACHEPREFIX": str(cache),
            "PYTHONHASHSEED": "0",
        }
    )
    return env


def _run(
    side: str, env: dict[str, str], *, importtime: bool = False
) -> tuple[dict[str, object], str]:
    app = side == "app"
    code = _CHILD.format(
        pause="import gc; gc.disable(); " if side == "bare-paused" else "",
        modules="function_app" if app else ", ".join(BARE),
        check_app=app,
        deferred=DEFERRED,
        importtime=importtime,
    )
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the {side} run failed:\n{done.stderr[-3000:]}")
    figures: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures, done.stderr


def _self_times(importtime: str) -> dict[str, int]:
    """Module -> its own import time in microseconds, from `-X importtime` output."""
    times: dict[str, int] = {}
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.split(":", 1)[1].split("|")
        # A submodule imported before its package is listed twice (once for each part).
        times[name.strip()] = times.get(name.strip(), 0) + int(own)
    return times


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in {"azure", "guardrails"} else parts[0]


def _profile(env: dict[str, str], runs: int) -> Counter[str]:
    """Per package, the fastest self time over `runs` profiled runs of what the app imports
    beyond the bare dependencies (the minimum filters out a busy machine)."""
    app: dict[str, int] = {}
    bare: set[str] = set()
    for _ in range(runs):
        _, profile = _run("app", env, importtime=True)
        for name, own in _self_times(profile).items():
            app[name] = min(own, app.get(name, own))
        _, profile = _run("bare", env, importtime=True)
        bare.update(_self_times(profile))
    by_package: Counter[str] = Counter()
    for name, own in app.items():
        if name not in bare:
            by_package[_package(name)] += own
    return by_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each side")
    parser.add_argument("--quick", action="store_true", help="3 runs of each side")
    args = parser.parse_args()
    runs = 3 if args.quick else max(1, args.runs)
    sides = ("app", "bare", "bare-paused")
    wall: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    rss: dict[str, list[float]] = {side: [] for side in sides}
    deferred: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text((REPO / "examples" / "policy.yaml").read_text("utf-8"), "utf-8")
        env = example_environment(policy, Path(tmp) / "pycache")
        _run("bare", env)  # compiles byte code for both sides, untimed
        first, _ = _run("app", env)
        for index in range(runs):
            for side in sides if index % 2 == 0 else sides[::-1]:
                figures, _ = _run(side, env)
                wall[side].append(float(str(figures["ms"])))
                cpu[side].append(float(str(figures["cpu_ms"])))
                rss[side].append(float(str(figures["rss_mb"])))
                if side == "app":
                    deferred.append(float(str(figures["deferred_ms"])))
        by_package = _profile(env, 1 if args.quick else 3)
    app_ms, bare_ms = statistics.median(wall["app"]), statistics.median(wall["bare"])
    app_cpu, bare_cpu = statistics.median(cpu["app"]), statistics.median(cpu["bare"])
    print(f"runs per side: {runs}, alternating; medians")
    print(
        f"cold start: {app_ms:.0f} ms vs bare deps {bare_ms:.0f} ms = {app_ms / bare_ms:.2f}x "
        f"(goal <= {GOAL_RATIO}x); peak RSS {max(rss['app']):.0f} MB (goal < {GOAL_RSS_MB:.0f} MB)"
    )
    print(
        f"cold start CPU time: {app_cpu:.0f} ms vs bare deps {bare_cpu:.0f} ms = "
        f"{app_cpu / bare_cpu:.2f}x (the process's own CPU time: less sensitive to a busy machine)"
    )
    paused = statistics.median(wall["bare-paused"])
    print(
        f"like for like: the bare deps imported with the collector paused too (as start-up pauses "
        f"it) take {paused:.0f} ms: {app_ms / paused:.2f}x"
    )
    print(
        f"  spread (wall): app {min(wall['app']):.0f}-{max(wall['app']):.0f} ms, "
        f"bare {min(wall['bare']):.0f}-{max(wall['bare']):.0f} ms; "
        f"bare deps peak RSS {max(rss['bare']):.0f} MB"
    )
    print(f"worker built at start-up: {first['usable']}")
    not_imported = first["not_imported"]
    assert isinstance(not_imported, list)
    print(f"left for first use: {', '.join(not_imported) or '(none)'}")
    print(f"importing them on first use: {statistics.median(deferred):.0f} ms (median)")
    print(
        f"start-up beyond the bare deps (-X importtime self times, fastest of runs): "
        f"{sum(by_package.values()) / 1000:.0f} ms"
    )
    for package, own in by_package.most_common(12):
        print(f"  {own / 1000:6.1f} ms  {package}")


if __name__ == "__main__":
    main()
