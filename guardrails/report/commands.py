"""`guardrails report` and `guardrails policy test` on the command line.

Only argparse is imported here: the Dataverse client, MSAL and Jinja2 load when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

FORMATS = ("table", "json", "csv", "html")


def add_commands(commands: Any, policy_commands: Any) -> None:
    """Add `report` to the top-level commands and `test` to the `policy` commands."""
    report = commands.add_parser(
        "report",
        help="read-only compliance report: every non-compliant mailbox and every hijack suspect "
        "(DATAVERSE_URL and AZURE_* settings; storage, if set, for accepted values)",
    )
    report.add_argument("--format", choices=FORMATS, default="table")
    report.add_argument("--output", type=Path, metavar="FILE", help="write here, not to stdout")
    report.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="a candidate policy: what it would change, beside the current policy's findings "
        "(the current policy: GUARDRAILS_POLICY, else ./policy.yaml)",
    )
    report.set_defaults(handler=_report)

    test = policy_commands.add_parser(
        "test", help="run a policy's own test cases (a folder of YAML files); exit 1 on a failure"
    )
    test.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=Path("policy-tests"),
        metavar="DIR",
        help="a folder of case files, one YAML file per case (default: policy-tests)",
    )
    test.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the policy under test, for cases that name none (default: policy.yaml in DIR, "
        "else next to DIR)",
    )
    test.set_defaults(handler=_policy_test)


def _report(args: argparse.Namespace) -> int:
    from guardrails.report.run import run

    return run(args.format, args.output, args.policy, os.environ, sys.stdout, sys.stderr)


def _policy_test(args: argparse.Namespace) -> int:
    from guardrails.policy.cases import run_cases

    return run_cases(args.directory, args.policy, sys.stdout)
