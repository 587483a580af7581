"""The Azure templates, checked offline.

- checkov on infra/ (the root .checkov.yaml: Bicep, the project's checks in infra/checks) passes,
  every custom check and every core built-in check (HTTPS only, minimum TLS, FTPS, Key Vault
  recovery) ran and passed, and every skipped built-in check is skipped for a stated reason and
  would fail without the skip;
- the deliberately broken copy in infra/tests/broken fails each custom check it breaks;
- the values the templates share with host.json agree (lock duration, delivery count, and the
  instance ceiling against Dataverse's concurrency limit);
- .funcignore leaves the app and only the app in the deployment package;
- azure-functions-doctor finds no failure in that package with the templates beside it.

checkov and azure-functions-doctor run from their own venv, .tools/iac-venv, which `make test`
and `make infra-check` build; without it the tests that run them skip (and fail under CI).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MODULES = INFRA / "modules"
BROKEN = INFRA / "tests" / "broken"
CHECKS_DIR = INFRA / "checks"
HOST_JSON = ROOT / "host.json"
TOOLS_BIN = ROOT / ".tools" / "iac-venv" / "bin"
CHECKOV = TOOLS_BIN / "checkov"
DOCTOR = TOOLS_BIN / "azure-functions-doctor"

CUSTOM_CHECKS = {f"CKV_GR_{n}" for n in range(1, 8)}
# checkov's built-in checks that are never skipped (ids from checkov's arm/checks/resource):
CORE_CHECKS = {
    "CKV_AZURE_3": "storage accepts HTTPS only",
    "CKV_AZURE_14": "web app redirects HTTP to HTTPS",
    "CKV_AZURE_70": "function app is only accessible over HTTPS",
    "CKV_AZURE_153": "app service (slot) redirects HTTP to HTTPS",
    "CKV_AZURE_15": "web app minimum TLS",
    "CKV_AZURE_145": "function app minimum TLS",
    "CKV_AZURE_44": "storage account minimum TLS",
    "CKV_AZURE_78": "FTP deployments disabled",
    "CKV_AZURE_42": "key vault is recoverable",
    "CKV_AZURE_110": "key vault purge protection",
    "CKV_AZURE_111": "key vault soft delete",
}
# Dataverse service protection: concurrent requests per user (all instances share one user).
DATAVERSE_CONCURRENT_REQUESTS_PER_USER = 52
BROKEN_MARK = "// BROKEN"


def _tool(path: Path) -> Path:
    if not path.is_file():
        message = (
            f"{path.relative_to(ROOT)} is missing: the infrastructure tools venv is not built "
            "(`make test` or `make infra-check` builds .tools/iac-venv)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _tool_env(home: Path) -> dict[str, str]:
    # A throw-away HOME keeps a developer's ~/.checkov.yaml out of the run.
    return {**os.environ, "HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}


def _checkov(args: list[str], cwd: Path, home: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(_tool(CHECKOV)), *args, "--output", "json"],
        cwd=cwd,
        env=_tool_env(home),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr}"
    report = json.loads(proc.stdout)
    # One framework gives one report; keep the Bicep one if several come back.
    if isinstance(report, list):
        report = next(r for r in report if r.get("check_type") == "bicep")
    report["returncode"] = proc.returncode
    return report


def _results(report: dict[str, Any], kind: str) -> set[tuple[str, str]]:
    return {(r["check_id"], r["resource"]) for r in report["results"][f"{kind}_checks"]}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def infra_report(home: Path) -> dict[str, Any]:
    """`checkov -d infra` from the repository root, as `make infra-check` runs it."""
    return _checkov(["-d", "infra"], cwd=ROOT, home=home)


@pytest.fixture(scope="module")
def broken_report(home: Path) -> dict[str, Any]:
    """The broken copy, scanned from its own folder so the root config (which skips it) is not
    read; the custom checks are named explicitly."""
    return _checkov(
        [
            "--framework",
            "bicep",
            "-d",
            ".",
            "--external-checks-dir",
            str(CHECKS_DIR),
            "--skip-download",
            "--check",
            ",".join(sorted(CUSTOM_CHECKS)),
        ],
        cwd=BROKEN,
        home=home,
    )


# --- checkov on the real templates ---------------------------------------------------------------


def test_checkov_passes_on_infra(infra_report: dict[str, Any]) -> None:
    summary = infra_report["summary"]
    failed = sorted(_results(infra_report, "failed"))
    assert summary["failed"] == 0, f"checkov failures: {failed}"
    assert summary["parsing_errors"] == 0, infra_report["results"].get("parsing_errors")
    assert infra_report["returncode"] == 0
    assert summary["passed"] > 0
    # The broken copy is not part of the normal run.
    scanned = {r["file_path"] for r in infra_report["results"]["passed_checks"]}
    assert not any("tests/broken" in path for path in scanned), scanned


def test_every_custom_check_ran_and_passed(infra_report: dict[str, Any]) -> None:
    passed = _results(infra_report, "passed")
    assert {check for check, _ in passed if check.startswith("CKV_GR_")} == CUSTOM_CHECKS
    # The TLS check covers all three resources that carry a minimum TLS version.
    tls_resources = {res.rsplit(".", 1)[0] for check, res in passed if check == "CKV_GR_3"}
    assert tls_resources == {
        "Microsoft.Storage/storageAccounts",
        "Microsoft.ServiceBus/namespaces",
        "Microsoft.Web/sites",
    }


def test_core_checks_ran_and_passed(infra_report: dict[str, Any]) -> None:
    passed = {check for check, _ in _results(infra_report, "passed")}
    missing = {check: what for check, what in CORE_CHECKS.items() if check not in passed}
    assert not missing, f"core checks that did not run and pass: {missing}"


# --- the skip list ---------------------------------------------------------------------------


def _skip_entries() -> list[tuple[str, str]]:
    """(check id, reason comment) for every skip-check entry of .checkov.yaml."""
    text = (ROOT / ".checkov.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    entries: list[tuple[str, str]] = []
    for check in config.get("skip-check") or []:
        line = re.search(rf"^\s*-\s*{re.escape(check)}\s*(#.*)?$", text, re.MULTILINE)
        assert line is not None, f"{check}: not a one-line list entry in .checkov.yaml"
        entries.append((check, (line.group(1) or "").lstrip("#").strip()))
    return entries


def test_every_skipped_check_has_a_reason_and_no_core_check_is_skipped() -> None:
    entries = _skip_entries()
    assert entries, ".checkov.yaml skips nothing: drop this test's expectation or the key"
    for check, reason in entries:
        assert len(reason) >= 20, f"{check}: skipped without a reason comment on its line"
        assert check not in CORE_CHECKS, f"{check} ({CORE_CHECKS[check]}) must never be skipped"
        assert not check.startswith("CKV_GR_"), f"{check}: the project's own check is skipped"


def test_every_skipped_check_would_fail_without_the_skip(home: Path, tmp_path: Path) -> None:
    """A skip that no longer hides a failure is stale: remove it."""
    skipped = [check for check, _ in _skip_entries()]
    report = _checkov(
        [
            "--framework",
            "bicep",
            "-d",
            str(INFRA),
            "--skip-path",
            "tests/broken",
            "--skip-download",
            "--check",
            ",".join(skipped),
        ],
        cwd=tmp_path,
        home=home,
    )
    failing = {check for check, _ in _results(report, "failed")}
    assert set(skipped) <= failing, f"skipped but passing: {sorted(set(skipped) - failing)}"


# --- the broken copy -------------------------------------------------------------------------


def test_broken_copy_fails_each_broken_check(broken_report: dict[str, Any]) -> None:
    failed = _results(broken_report, "failed")
    expected = {
        ("CKV_GR_1", "Microsoft.ServiceBus/namespaces/queues.queue"),
        ("CKV_GR_2", "Microsoft.ServiceBus/namespaces/queues/authorizationRules.dataverseSendRule"),
        ("CKV_GR_3", "Microsoft.Web/sites.app"),
        ("CKV_GR_4", "Microsoft.Web/sites.app"),
        ("CKV_GR_5", "Microsoft.Web/sites.app"),
        ("CKV_GR_6", "Microsoft.ServiceBus/namespaces/queues.queue"),
        ("CKV_GR_7", "Microsoft.Web/sites.app"),
    }
    assert expected <= failed, f"not failed: {sorted(expected - failed)}"
    assert broken_report["summary"]["parsing_errors"] == 0
    # Only what was broken fails: the namespace's TLS 1.2 is intact in the copy.
    assert ("CKV_GR_3", "Microsoft.ServiceBus/namespaces.namespace") in _results(
        broken_report, "passed"
    )


@pytest.mark.parametrize("name", sorted(p.name for p in (BROKEN / "modules").glob("*.bicep")))
def test_broken_copy_differs_only_in_marked_lines(name: str) -> None:
    original = (MODULES / name).read_text(encoding="utf-8").splitlines()
    broken = (BROKEN / "modules" / name).read_text(encoding="utf-8").splitlines()
    matcher = difflib.SequenceMatcher(a=original, b=broken, autojunk=False)
    changed: list[str] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        assert tag != "delete", f"{name}: lines {i1 + 1}-{i2} of the original are missing"
        changed.extend(broken[j1:j2])
    assert changed, f"{name}: the broken copy breaks nothing"
    unmarked = [line for line in changed if BROKEN_MARK not in line]
    assert not unmarked, (
        f"infra/tests/broken/modules/{name} differs from infra/modules/{name} in unmarked lines "
        f"(copy the module again and re-apply the {BROKEN_MARK} lines): {unmarked}"
    )


# --- values shared with host.json ------------------------------------------------------------


def _host() -> dict[str, Any]:
    host: dict[str, Any] = json.loads(HOST_JSON.read_text(encoding="utf-8"))
    return host


def _timespan_seconds(value: str) -> float:
    """host.json's [d.]hh:mm:ss[.fff]."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", value)
    assert match, f"not a timespan: {value}"
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _iso_duration_seconds(value: str) -> float:
    """Bicep's ISO 8601 PT..H..M..S (Service Bus durations under a day)."""
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", value)
    assert match and any(match.groups()), f"not an ISO 8601 time duration: {value}"
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def _param(path: Path, name: str) -> tuple[str, dict[str, str]]:
    """A Bicep parameter's default (as written) and its one-line decorators."""
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"((?:^@.*\n)*)^param\s+{name}\s+\w+\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    assert match, f"{path.relative_to(ROOT)}: no param {name} with a default"
    decorators = dict(re.findall(r"^@(\w+)\((.*)\)\s*$", match.group(1), re.MULTILINE))
    return match.group(2), decorators


def _queue_properties() -> str:
    text = (MODULES / "servicebus.bicep").read_text(encoding="utf-8")
    match = re.search(
        r"resource \w+ 'Microsoft\.ServiceBus/namespaces/queues@[^']+' = \{(.*?)\n\}", text, re.S
    )
    assert match, "modules/servicebus.bicep declares no queue"
    return match.group(1)


def test_queue_lock_duration_matches_host_json() -> None:
    lock = re.search(r"^\s*lockDuration:\s*'([^']+)'", _queue_properties(), re.MULTILINE)
    assert lock, "the queue's lockDuration is not a literal"
    host = _host()
    renewal = host["extensions"]["serviceBus"]["maxAutoLockRenewalDuration"]
    timeout = host["functionTimeout"]
    assert (
        _iso_duration_seconds(lock.group(1))
        == _timespan_seconds(renewal)
        == _timespan_seconds(timeout)
    ), f"lockDuration {lock.group(1)}, maxAutoLockRenewalDuration {renewal}, timeout {timeout}"


def test_max_delivery_count_defaults_within_5_to_10() -> None:
    assert re.search(r"^\s*maxDeliveryCount:\s*maxDeliveryCount\s*$", _queue_properties(), re.M)
    for path in (INFRA / "main.bicep", MODULES / "servicebus.bicep"):
        default, decorators = _param(path, "maxDeliveryCount")
        assert 5 <= int(default) <= 10, f"{path.name}: maxDeliveryCount defaults to {default}"
        assert decorators.get("minValue") == "5", f"{path.name}: @minValue(5) missing"
        assert decorators.get("maxValue") == "10", f"{path.name}: @maxValue(10) missing"


def test_instance_ceiling_stays_under_dataverse_concurrency_limit() -> None:
    per_instance = _host()["extensions"]["serviceBus"]["maxConcurrentCalls"]
    for path in (INFRA / "main.bicep", MODULES / "functionapp.bicep"):
        default, decorators = _param(path, "maximumInstanceCount")
        ceiling = int(decorators["maxValue"])
        assert int(default) <= ceiling
        assert ceiling * per_instance < DATAVERSE_CONCURRENT_REQUESTS_PER_USER, (
            f"{path.name}: up to {ceiling} instances x maxConcurrentCalls {per_instance} can "
            f"exceed Dataverse's {DATAVERSE_CONCURRENT_REQUESTS_PER_USER} concurrent requests"
        )
    scale = (MODULES / "functionapp.bicep").read_text(encoding="utf-8")
    assert re.search(r"^\s*maximumInstanceCount:\s*maximumInstanceCount\s*$", scale, re.M)


# --- the deployment package ------------------------------------------------------------------


def _funcignore_patterns() -> list[str]:
    lines = (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    # The matcher below implements the plain gitignore subset; keep the file within it.
    unsupported = [p for p in patterns if p.startswith("!") or "**" in p]
    assert not unsupported, f".funcignore patterns the package check cannot follow: {unsupported}"
    return patterns


def _ignored(relative: str, is_dir: bool, patterns: list[str]) -> bool:
    """gitignore rules: a trailing / matches directories only; a pattern with a / inside is
    matched against the path from the root, one without against the name at any depth."""
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/") and not is_dir:
            continue
        core = pattern.strip("/")
        subject = relative if "/" in core else name
        if fnmatch.fnmatchcase(subject, core):
            return True
    return False


def _package_files() -> Iterator[str]:
    """Files of the deployment package: the repository root less what .funcignore excludes."""
    patterns = _funcignore_patterns()
    for directory, dirs, files in os.walk(ROOT):
        base = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else f"{base}/"
        dirs[:] = sorted(d for d in dirs if not _ignored(prefix + d, True, patterns))
        for name in sorted(files):
            if not _ignored(prefix + name, False, patterns):
                yield prefix + name


def test_funcignore_leaves_the_app_and_only_the_app() -> None:
    patterns = _funcignore_patterns()
    for required in ("tests/", "benchmarks/", "guardrails/sandbox/", "infra/", ".tools/"):
        assert required in patterns, f".funcignore does not exclude {required}"
    package = set(_package_files())
    for excluded in ("tests/", "benchmarks/", "examples/", "guardrails/sandbox/", "infra/"):
        leaked = sorted(path for path in package if path.startswith(excluded))
        assert not leaked, f"deployment package includes {excluded}: {leaked[:5]}"
    assert not [p for p in package if "__pycache__" in p or p.startswith((".venv/", ".tools/"))]
    for required_file in ("function_app.py", "host.json", "requirements.txt"):
        assert required_file in package
    assert "guardrails/worker.py" in package
    assert any(p.startswith("guardrails/templates/") for p in package)


# --- azure-functions-doctor ------------------------------------------------------------------


def _stage_app(stage: Path) -> None:
    """The deployment package, with the templates beside it so the doctor sees the hosting plan.

    The doctor reads every *.bicep under its path and would take the broken copy's settings for
    the app's, so it gets this stage rather than the repository root.
    """
    for relative in _package_files():
        target = stage / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    # The doctor checks that the project has a .funcignore (the package itself need not).
    shutil.copy2(ROOT / ".funcignore", stage / ".funcignore")
    (stage / "infra" / "modules").mkdir(parents=True)
    shutil.copy2(INFRA / "main.bicep", stage / "infra" / "main.bicep")
    for module in MODULES.glob("*.bicep"):
        shutil.copy2(module, stage / "infra" / "modules" / module.name)


def _doctor_items(report: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for section in report["results"]:
        for item in section.get("items", []):
            yield {"category": section.get("category"), **item}


def test_azure_functions_doctor_finds_no_failure(home: Path, tmp_path: Path) -> None:
    doctor = _tool(DOCTOR)
    stage = tmp_path / "app"
    _stage_app(stage)
    python_version, _ = _param(MODULES / "functionapp.bicep", "pythonVersion")
    proc = subprocess.run(
        [
            str(doctor),
            "doctor",
            "--path",
            str(stage),
            "--format",
            "json",
            "--profile",
            "full",
            "--hosting-plan",
            "flex-consumption",
            "--target-python",
            python_version.strip("'"),
        ],
        cwd=tmp_path,
        env=_tool_env(home),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    report = json.loads(proc.stdout)
    failures = [i for i in _doctor_items(report) if i["status"] == "fail"]
    assert not failures, json.dumps(failures, indent=1)
    assert proc.returncode == 0, proc.stderr
    assert report["metadata"]["programming_model"] == "v2"
    statuses = {i["rule_id"]: i["status"] for i in _doctor_items(report)}
    # What the templates must tell it: no Flex-deprecated settings, and the trigger's connection
    # resolves to the identity-based SERVICEBUS__* settings.
    assert statuses["check_flex_deprecated_settings"] == "pass"
    assert statuses["check_binding_connection_resolution"] == "pass"
