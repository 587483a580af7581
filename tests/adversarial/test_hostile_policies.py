"""Hostile policy files: each is refused with one located problem, fast and in little memory.

`policies/` holds one file per attack on the policy loader (YAML bombs, tags, numbers, encodings,
sizes, template injection) and `policies/expected.yaml` says what each tries and the exact
`LINE:COLUMN: message` it must give. A file without an expectation fails the run, and so does an
expectation without a file. Every file goes through `load_policy` (as the function does at
start-up) under tracemalloc, and through `guardrails policy validate` (as an admin does).
"""

from __future__ import annotations

import string
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrails.cli import main
from guardrails.policy import Policy, PolicyError, PolicyIssue, load_policy, parse_policy

POLICIES = Path(__file__).parent / "policies"
EXPECTED_FILE = POLICIES / "expected.yaml"
EXAMPLE_POLICY = Path(__file__).parents[2] / "examples" / "policy.yaml"

# A resource bound, not a benchmark: the alias bomb took over 3 GiB and 20 s before.
PEAK_BYTES = 50 * 1024 * 1024
CPU_SECONDS = 10.0


@dataclass(frozen=True)
class Expected:
    line: int
    column: int
    fragment: str

    @classmethod
    def parse(cls, text: str) -> Expected:
        line, column, fragment = text.split(":", 2)
        return cls(int(line), int(column), fragment.strip())

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.fragment}"


def _expectations() -> dict[str, tuple[str, list[Expected]]]:
    data = yaml.safe_load(EXPECTED_FILE.read_text(encoding="utf-8"))
    result = {}
    for name, entry in data.items():
        expect = entry["expect"]
        texts = [expect] if isinstance(expect, str) else expect
        result[name] = (entry["tried"], [Expected.parse(text) for text in texts])
    return result


EXPECTED = _expectations()
FILES = sorted(path.name for path in POLICIES.iterdir() if path != EXPECTED_FILE)


@dataclass(frozen=True)
class Outcome:
    issues: list[PolicyIssue] | None  # None: the policy was accepted
    peak_bytes: int
    cpu_seconds: float


def _load_measured(path: Path) -> Outcome:
    already = tracemalloc.is_tracing()
    if not already:
        tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.process_time()
    try:
        load_policy(path)
        issues = None
    except PolicyError as exc:
        issues = exc.issues
    finally:
        elapsed = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
        if not already:
            tracemalloc.stop()
    return Outcome(issues, peak, elapsed)


def _expected(name: str) -> list[Expected]:
    if name not in EXPECTED:
        pytest.fail(f"{name} has no expectation in {EXPECTED_FILE.name}; add what it must give")
    return EXPECTED[name][1]


def _held(issues: list[PolicyIssue] | None, expected: list[Expected]) -> list[str]:
    """What did not hold, as sentences (empty when everything held)."""
    if issues is None:
        return ["the policy was accepted"]
    problems = []
    if len(issues) != len(expected):
        problems.append(f"{len(issues)} problem(s), expected {len(expected)}: {issues}")
    for issue, want in zip(issues, expected, strict=False):
        if (issue.line, issue.column) != (want.line, want.column):
            problems.append(f"at {issue.line}:{issue.column}, expected {want.line}:{want.column}")
        if want.fragment not in issue.message:
            problems.append(f"message {issue.message!r} lacks {want.fragment!r}")
    return problems


def test_every_hostile_file_has_an_expectation_and_every_expectation_a_file() -> None:
    assert sorted(EXPECTED) == FILES


@pytest.mark.parametrize("name", FILES)
def test_hostile_policy_is_refused_where_it_is_wrong_in_bounded_memory(name: str) -> None:
    expected = _expected(name)
    outcome = _load_measured(POLICIES / name)
    assert _held(outcome.issues, expected) == []
    assert outcome.issues is not None
    assert all(issue.file == str(POLICIES / name) for issue in outcome.issues)
    assert outcome.peak_bytes < PEAK_BYTES, f"{outcome.peak_bytes / 2**20:.1f} MiB"
    assert outcome.cpu_seconds < CPU_SECONDS, f"{outcome.cpu_seconds:.1f} s"
    for issue in outcome.issues:
        # Nothing from the file reaches the admin's terminal unescaped, and nothing huge.
        assert issue.message.isprintable(), issue.message
        assert len(issue.message) <= 600


@pytest.mark.parametrize("name", FILES)
def test_policy_validate_reports_it_as_file_line_column_without_a_traceback(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _expected(name)
    path = POLICIES / name
    assert main(["policy", "validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == len(expected) + 1
    for text, want in zip(lines, expected, strict=False):
        assert text.startswith(f"{path}:{want.line}:{want.column}: "), text[:200]
        assert want.fragment in text
    assert lines[-1] == f"{len(expected)} problem(s); the policy was not used."


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes the document would have with every alias written out (never expanded)."""
    if id(node) not in memo:
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        memo[id(node)] = 1 + sum(_expanded_size(child, memo) for child in children)
    return memo[id(node)]


@pytest.mark.parametrize(
    ("name", "at_least"), [("alias-bomb.yaml", 10**9), ("merge-key-bomb.yaml", 10**8)]
)
def test_the_bombs_are_real_bombs(name: str, at_least: int) -> None:
    # Composing shares aliased nodes, so counting here costs nothing; building them did not.
    node = yaml.compose((POLICIES / name).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    assert node is not None
    assert _expanded_size(node, {}) >= at_least


def test_summary_of_what_was_tried_and_what_held(capsys: pytest.CaptureFixture[str]) -> None:
    lines = []
    failed = []
    for name in FILES:
        tried, expected = EXPECTED.get(name, ("(no expectation)", []))
        outcome = _load_measured(POLICIES / name)
        problems = _held(outcome.issues, expected) if expected else ["no expectation"]
        first = str(outcome.issues[0]).removeprefix(str(POLICIES) + "/") if outcome.issues else ""
        verdict = "HELD" if not problems else "FAILED: " + "; ".join(problems)
        lines.append(
            f"{name}: tried {tried} -> {verdict} "
            f"[{outcome.peak_bytes / 2**20:.1f} MiB, {outcome.cpu_seconds:.2f} s] {first[:160]}"
        )
        if problems:
            failed.append(name)
    with capsys.disabled():
        print(f"\nhostile policies: {len(FILES)} files")
        for line in lines:
            print(line)
    assert failed == []


# --- beyond the folder: arbitrary text and bytes never escape as anything but PolicyError ------

YAML_ALPHABET = string.ascii_letters[:6] + string.digits + " \t\n:-?[]{},&*!|>'\"%@`#<=.~_\\/+"


def _parse(text: str) -> Policy | PolicyError:
    try:
        return parse_policy(text, "fuzz.yaml")
    except PolicyError as exc:
        return exc


def _parses_or_refuses(text: str) -> None:
    result = _parse(text)  # anything but PolicyError escapes and fails the test
    if isinstance(result, PolicyError):
        assert result.issues
        assert all(issue.line >= 1 and issue.column >= 1 for issue in result.issues)
    else:
        assert isinstance(result, Policy)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=YAML_ALPHABET, max_size=300))
def test_arbitrary_yaml_like_text_is_a_policy_or_located_problems(text: str) -> None:
    _parses_or_refuses(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_unicode_is_a_policy_or_located_problems(text: str) -> None:
    _parses_or_refuses(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.integers(min_value=0, max_value=EXAMPLE_POLICY.stat().st_size),
    junk=st.binary(min_size=1, max_size=40),
    cut=st.booleans(),
)
def test_the_example_policy_with_bytes_spliced_in_loads_or_is_refused(
    position: int, junk: bytes, cut: bool
) -> None:
    original = EXAMPLE_POLICY.read_bytes()
    data = original[:position] + junk + original[position + (len(junk) if cut else 0) :]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "policy.yaml"
        path.write_bytes(data)
        try:
            load_policy(path)
            issues: list[PolicyIssue] = []
        except PolicyError as exc:
            issues = exc.issues or [PolicyIssue(0, 0, "PolicyError without issues")]
        assert all(str(issue).startswith(f"{path}:") for issue in issues)
