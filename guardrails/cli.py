"""The admin's command line: validate a policy, print its schema, replay captured messages, demo."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from guardrails.engine import Decision, decide
from guardrails.message import parse_message
from guardrails.policy import PolicyError, load_policy
from guardrails.policy.loader import schema_json


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever a message or a file name holds, printing it must not stop the command.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = _parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args))
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s); the policy was not used.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardrails",
        description="Keep Dataverse mailbox rows the way the organization configured them.",
    )
    commands = parser.add_subparsers(title="commands")

    policy = commands.add_parser("policy", help="validate a policy or print its JSON Schema")
    policy_commands = policy.add_subparsers(title="policy commands")
    validate = policy_commands.add_parser("validate", help="check a policy file; exit 1 if invalid")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=_validate)
    schema = policy_commands.add_parser("schema", help="print the policy's JSON Schema")
    schema.set_defaults(handler=lambda _args: _print(schema_json()))

    evaluate = commands.add_parser(
        "evaluate",
        help="replay captured Service Bus message bodies through a policy (no network)",
    )
    evaluate.add_argument("--policy", type=Path, required=True)
    evaluate.add_argument("--format", choices=("text", "json"), default="text")
    evaluate.add_argument("messages", nargs="+", type=Path, metavar="MESSAGE_FILE")
    evaluate.set_defaults(handler=_evaluate)

    demo = commands.add_parser("demo", help="run the whole flow against a local sandbox")
    demo.set_defaults(handler=_demo)
    return parser


def _print(text: str) -> int:
    print(text)
    return 0


def _validate(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)
    rules = [name for name, rule in policy.rules if rule is not None]
    print(
        f"{args.file}: valid ({policy.mode.value} mode, scope {policy.scope.value}, "
        f"rules: {', '.join(rules)})"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    failed = 0
    for path in args.messages:
        name = _printable(str(path))
        try:
            body = path.read_bytes()
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            failed += 1
            continue
        try:
            decision = decide(parse_message(body), policy)
        except Exception as exc:  # one bad file must not hide the others
            print(f"{name}: could not be evaluated ({type(exc).__name__}: {exc})", file=sys.stderr)
            failed += 1
            continue
        if args.format == "json":
            print(json.dumps({"message": name, **decision.to_dict()}))
        else:
            render_text(name, decision, sys.stdout)
    return 1 if failed else 0


def _printable(text: str) -> str:
    """A file name as text that any output encodes (undecodable bytes shown as escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def render_text(source: str, decision: Decision, out: TextIO) -> None:
    out.write(f"{source}\n  {decision.outcome.value}: {decision.reason}\n")
    if decision.mailbox_id and decision.entity == "mailbox":
        out.write(f"  mailbox {decision.mailbox_id}")
        if decision.initiating_user_id:
            out.write(f", changed by {decision.initiating_user_id}")
        out.write("\n")
    for violation in decision.violations:
        mode = "enforce" if violation.enforced else "audit"
        out.write(f"  - [{violation.rule}, {mode}] {violation.message}\n")
    if decision.patch:
        out.write(f"  would write: {json.dumps(decision.to_dict()['patch'])}\n")
    for note in decision.notes:
        out.write(f"  note: {note}\n")
    if decision.unverified:
        facts = ", ".join(f.value for f in decision.unverified)
        out.write(f"  not verifiable offline: {facts}\n")


def _demo(args: argparse.Namespace) -> int:
    from guardrails.sandbox.demo import run_demo

    return run_demo(sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
