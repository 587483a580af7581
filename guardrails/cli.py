"""The admin's command line: validate a policy, print its schema, replay captured messages, demo."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from guardrails.engine import Decision, decide
from guardrails.errors import AuthenticationError, ConfigurationError, ServiceError
from guardrails.message import parse_message
from guardrails.policy import PolicyError, load_policy
from guardrails.policy.loader import schema_json

if TYPE_CHECKING:  # the admin commands' clients load only when an admin command runs
    from guardrails.admin.dlq import DeadLetters
    from guardrails.clients.tables import TableStore


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
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (ServiceError, AuthenticationError, ValueError) as exc:
        print(f"guardrails: {exc}", file=sys.stderr)
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
    docs = policy_commands.add_parser("docs", help="print the policy reference (docs/policy.md)")
    docs.set_defaults(handler=_policy_docs)

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

    reconcile = commands.add_parser(
        "reconcile",
        help="sweep every mailbox the policy may object to and fix what events missed "
        "(the function's settings: DATAVERSE_URL, credentials, storage)",
    )
    reconcile.add_argument("--dry-run", action="store_true", help="find and record, write nothing")
    reconcile.add_argument("--format", choices=("table", "json"), default="table")
    reconcile.set_defaults(handler=_reconcile)

    _dlq_parser(commands)
    from guardrails.report import add_commands as add_report_commands  # argparse only

    add_report_commands(commands, policy_commands)  # `report` and `policy test`
    audit = commands.add_parser(
        "audit",
        help="read the stored audit trail (AzureWebJobsStorage or GUARDRAILS_STORAGE)",
    )
    audit.add_argument("--since", help="ISO 8601, e.g. 2026-11-30T08:00:00Z (default: 7 days)")
    audit.add_argument("--mailbox", help="a mailbox id")
    audit.add_argument("--outcome", choices=("compliant", "violation", "ignored", "rejected"))
    audit.add_argument("--format", choices=("table", "json", "csv"), default="table")
    audit.set_defaults(handler=_audit)
    from guardrails.admin.commands import add_commands as add_admin_commands  # argparse only

    add_admin_commands(commands)  # register, unregister, doctor, role
    return parser


def _dlq_parser(commands: Any) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="messages that did not succeed: the guardrail's failure log and the queue's "
        "dead-letter queue (SERVICEBUS or SERVICEBUS__fullyQualifiedNamespace, SERVICEBUS_QUEUE)",
    )
    sub = dlq.add_subparsers(title="dlq commands")
    listing = sub.add_parser("list", help="every message that did not succeed")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(handler=_dlq_list)
    show = sub.add_parser("show", help="one message, with its properties and body")
    show.add_argument("message_id", metavar="MESSAGE_ID")
    show.set_defaults(handler=_dlq_show)
    resubmit = sub.add_parser("resubmit", help="send the original body back to the queue")
    which = resubmit.add_mutually_exclusive_group(required=True)
    which.add_argument("message_id", nargs="?", metavar="MESSAGE_ID")
    which.add_argument("--all", action="store_true", help="every entry")
    resubmit.set_defaults(handler=_dlq_resubmit)
    purge = sub.add_parser("purge", help="remove every entry (asks first on a terminal)")
    purge.add_argument("--yes", action="store_true", help="do not ask")
    purge.set_defaults(handler=_dlq_purge)


def _print(text: str) -> int:
    print(text)
    return 0


def _policy_docs(args: argparse.Namespace) -> int:
    from guardrails.policy.docs import policy_reference

    sys.stdout.write(policy_reference())
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


def _dead_letters() -> DeadLetters:
    from guardrails.admin.dlq import DeadLetters
    from guardrails.clients.servicebus import QueueClient, servicebus_settings
    from guardrails.state.records import FailureLog

    failures = FailureLog(_store().table("Failures"))
    try:
        queue: QueueClient | None = QueueClient(servicebus_settings(os.environ))
    except ConfigurationError as exc:
        print(
            "note: the queue's dead-letter queue is not read (" + "; ".join(exc.problems) + ")",
            file=sys.stderr,
        )
        queue = None
    return DeadLetters(failures, queue)


def _store() -> TableStore:
    from guardrails.clients.tables import storage_settings, table_store

    return table_store(storage_settings(os.environ))


def _dlq_list(args: argparse.Namespace) -> int:
    from guardrails.admin.dlq import render_entries

    render_entries(_dead_letters().entries(), args.format, print)
    return 0


def _dlq_show(args: argparse.Namespace) -> int:
    found = _dead_letters().find(args.message_id)
    if not found:
        print(f"no entry with message id or key {args.message_id}", file=sys.stderr)
        return 1
    print(json.dumps([entry.to_dict(with_body=True) for entry in found], indent=2))
    return 0


def _dlq_resubmit(args: argparse.Namespace) -> int:
    sent = _dead_letters().resubmit(None if args.all else args.message_id)
    for entry in sent:
        print(f"resubmitted {entry.message_id or entry.key} ({entry.source})")
    if not sent:
        print("nothing to resubmit", file=sys.stderr)
        return 0 if args.all else 1
    return 0


def _dlq_purge(args: argparse.Namespace) -> int:
    if not args.yes and sys.stdin.isatty():
        answer = input("Remove every failed and dead-lettered message for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
    print(f"removed {_dead_letters().purge()} message(s)")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from guardrails.admin.audit_query import parse_since, render_records
    from guardrails.state.records import AuditTrail

    since = parse_since(args.since) if args.since else None
    trail = AuditTrail(_store().table("Audit"))
    records = trail.query(since=since, mailbox_id=args.mailbox, outcome=args.outcome)
    render_records(records, args.format, print)
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from guardrails.worker import build_sweep, worker_from_environment

    worker = worker_from_environment(Path.cwd())
    if args.format == "json" or not sys.stdout.isatty():
        summary = build_sweep(worker, dry_run=args.dry_run).run()
    else:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()
        ) as bar:
            task = bar.add_task("scanning mailboxes", total=None)

            def progress(scanned: int, fixed: int) -> None:
                bar.update(task, description=f"scanned {scanned}, fixed {fixed}")

            summary = build_sweep(worker, dry_run=args.dry_run, progress=progress).run()
    data = summary.to_dict()
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        for error in summary.errors:
            print(f"error: {error}")
        print(
            f"scanned {data['scanned']}, non-compliant {data['non_compliant']}, fixed "
            f"{data['fixed']}, skipped {data['skipped']}, failed {data['failed']}, "
            f"requests {data['requests']}{' (dry run: nothing written)' if args.dry_run else ''}"
        )
    return 1 if summary.failed else 0


def _demo(args: argparse.Namespace) -> int:
    from guardrails.sandbox.demo import run_demo

    return run_demo(sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
