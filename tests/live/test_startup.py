"""Start-up imports what the first message needs; the rest waits for the path that needs it.

Each case starts the app in a fresh interpreter with the example settings (other tests' imports
would hide what start-up itself imports) and reads back which modules it holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.coldstart import example_environment

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_POLICY = (REPO / "examples" / "policy.yaml").read_text("utf-8")
# What only some paths need: a scheduled retry, table access (azure-core comes with any Azure
# SDK), a notification or a template, a client certificate, the nightly sweep, a refused
# credential.
FIRST_USE = (
    "azure.servicebus",
    "azure.data.tables",
    "azure.core",
    "jinja2",
    "cryptography",
    "guardrails.reconcile",
    "guardrails.clients.dataverse_bulk",
    "guardrails.clients.auth_fixes",
)
TEMPLATE_LINE = "  # template: |\n"
SUBJECT_LINE = '  subject: "Your Dynamics 365 mailbox settings were changed back"\n'
_CHILD = """\
import gc, json, sys
try:
    import function_app
except Exception as exc:
    print(json.dumps({"error": str(exc), "collecting": gc.isenabled()}))
else:
    worker = type(function_app.worker).__name__
    print(json.dumps({
        "modules": sorted(sys.modules),
        "worker": worker,
        "collecting": gc.isenabled(),
        "frozen": gc.get_freeze_count(),
    }))
"""


def _start(tmp_path: Path, policy: str) -> dict[str, object]:
    """Start the app on `policy`; what it imported, or the start-up error."""
    path = tmp_path / "policy.yaml"
    path.write_text(policy, "utf-8")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=example_environment(path, tmp_path / "pycache"),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    started: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return started


def test_the_example_start_up_builds_the_worker_and_leaves_the_rest_for_first_use(
    tmp_path: Path,
) -> None:
    started = _start(tmp_path, EXAMPLE_POLICY)
    assert started["worker"] == "Worker"
    modules = started["modules"]
    assert isinstance(modules, list) and "guardrails.executor" in modules
    assert [name for name in FIRST_USE if name in modules] == []
    # The collector, paused while start-up built what lives as long as the process, runs again,
    # and what start-up built is frozen out of its way.
    assert started["collecting"] is True
    assert isinstance(started["frozen"], int) and started["frozen"] > 10_000


def _with(line: str, replacement: str) -> str:
    assert line in EXAMPLE_POLICY
    return EXAMPLE_POLICY.replace(line, replacement, 1)


def test_a_custom_template_is_checked_at_start_up(tmp_path: Path) -> None:
    started = _start(tmp_path, _with(TEMPLATE_LINE, '  template: "<p>Hi {{ owner_name }}</p>"\n'))
    assert started["worker"] == "Worker"
    modules = started["modules"]
    assert isinstance(modules, list) and "jinja2" in modules  # the template check reads it


@pytest.mark.parametrize(
    ("line", "replacement", "where"),
    [
        (
            TEMPLATE_LINE,
            '  template: "<p onclick=\\"{{ owner_name }}\\">"\n',
            ":60:13: notifications.template: ",
        ),
        (
            SUBJECT_LINE,
            '  subject: "By {{ initiator.__class__ }}"\n',
            ":57:12: notifications.subject: ",
        ),
    ],
)
def test_a_broken_template_still_stops_start_up_with_its_place(
    tmp_path: Path, line: str, replacement: str, where: str
) -> None:
    started = _start(tmp_path, _with(line, replacement))
    error = started.get("error")
    assert isinstance(error, str), started
    assert f"policy.yaml{where}" in error, error
    assert started["collecting"] is True  # a failed start-up leaves the collector running
