"""The command line of `guardrails register`, `unregister`, `doctor` and `role`.

Every option falls back to an environment variable (named in `--help`), so the Function App's own
settings drive them. Plans, checks and privileges are data, printed by :func:`render` as a table
or as JSON. The modules behind the commands load only when one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from guardrails.errors import ConfigurationError

if TYPE_CHECKING:
    from guardrails.admin.register import Plan, Target
    from guardrails.clients.dataverse import DataverseClient

# The doctor's checks, in the order they run (guardrails.admin.doctor.CHECKS, kept equal there).
CHECK_NAMES = (
    "settings",
    "policy",
    "token",
    "dataverse",
    "organization",
    "privileges",
    "endpoint",
    "create-step",
    "update-step",
    "pre-image",
    "graph",
    "servicebus",
    "storage",
)


class Renderable(Protocol):
    def row(self) -> tuple[str, ...]: ...

    def to_dict(self) -> dict[str, object]: ...


def render(
    items: Sequence[Renderable],
    headers: Sequence[str],
    fmt: str,
    out: Callable[[str], None] = print,
) -> None:
    """Items as aligned columns (the last column wraps freely) or as a JSON list."""
    if fmt == "json":
        out(json.dumps([item.to_dict() for item in items], indent=2))
        return
    rows = [tuple(headers), *(item.row() for item in items)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out("  ".join([*cells, row[-1]]).rstrip())


def _env(name: str) -> str:
    return f"(default: ${name})"


def _sign_in_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sign-in (the app's credentials unless --device-code)")
    group.add_argument(
        "--dataverse-url", help=f"the environment's root URL {_env('DATAVERSE_URL')}"
    )
    group.add_argument(
        "--device-code",
        action="store_true",
        help="sign in as an administrator with a device code, instead of with AZURE_TENANT_ID, "
        "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH",
    )
    group.add_argument(
        "--admin-client-id",
        help="with --device-code: the client id of a public client app registration "
        f"{_env('GUARDRAILS_ADMIN_CLIENT_ID')}",
    )
    group.add_argument("--tenant", help=f"with --device-code: the tenant {_env('AZURE_TENANT_ID')}")


def add_commands(subparsers: Any) -> None:
    """Add `register`, `unregister`, `doctor` and `role` to the CLI's subcommands."""
    register = subparsers.add_parser(
        "register",
        help="create or correct the Dataverse registration (service endpoint, steps, pre image)",
        description="Create or update, idempotently, the service endpoint (JSON, SAS key, the "
        "queue), the asynchronous post-operation Create and Update steps on mailbox, and the "
        "Update step's pre image. Only differences are written; a second run writes nothing.",
    )
    register.add_argument(
        "--namespace",
        help="sb://NAMESPACE.servicebus.windows.net/ (default: "
        "$SERVICEBUS__fullyQualifiedNamespace, else the Endpoint in $SERVICEBUS)",
    )
    register.add_argument("--queue", help=f"the queue {_env('SERVICEBUS_QUEUE')}")
    register.add_argument(
        "--sas-key-name",
        help=f"the queue's Send-only SAS rule {_env('DATAVERSE_SAS_KEY_NAME')}",
    )
    register.add_argument(
        "--sas-key",
        help="its key; needed to create the endpoint and with --rotate-key "
        f"{_env('DATAVERSE_SAS_KEY')} (prefer the variable: arguments are visible to others)",
    )
    register.add_argument(
        "--rotate-key", action="store_true", help="write the SAS key even if nothing else changed"
    )
    register.add_argument(
        "--policy",
        type=Path,
        help=f"the policy, for the governed columns {_env('GUARDRAILS_POLICY')}",
    )
    register.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    register.add_argument("--format", choices=("table", "json"), default="table")
    _sign_in_options(register)
    register.set_defaults(handler=_register)

    unregister = subparsers.add_parser(
        "unregister",
        help="remove exactly what register created (nothing else)",
    )
    unregister.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    unregister.add_argument("--format", choices=("table", "json"), default="table")
    _sign_in_options(unregister)
    unregister.set_defaults(handler=_unregister)

    doctor = subparsers.add_parser(
        "doctor",
        help="check a deployment end to end (reads only); exit 1 if anything fails",
        description="Runs every check with the app's own settings and prints pass or fail and "
        f"the fix for each. Checks: {', '.join(CHECK_NAMES)}.",
    )
    doctor.add_argument("--format", choices=("table", "json"), default="table")
    doctor.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=CHECK_NAMES,
        metavar="NAME",
        help="skip a check that cannot reach its service from here (repeatable), e.g. "
        "servicebus, graph, storage",
    )
    doctor.set_defaults(handler=_doctor)

    role = subparsers.add_parser(
        "role",
        help="the least-privilege security role for the application user (print or --create)",
    )
    role.add_argument(
        "--policy",
        type=Path,
        help="only what this policy needs (default: every privilege, or $GUARDRAILS_POLICY "
        "when set)",
    )
    role.add_argument("--create", action="store_true", help="create or complete it in Dataverse")
    role.add_argument("--name", default="Mailbox Guardrails", help="the role's name")
    role.add_argument("--format", choices=("table", "json"), default="table")
    _sign_in_options(role)
    role.set_defaults(handler=_role)


# -- handlers ------------------------------------------------------------------------------------


def _client(args: argparse.Namespace, env: Mapping[str, str]) -> DataverseClient:
    from guardrails.admin.signin import token_provider
    from guardrails.clients.dataverse import DataverseClient
    from guardrails.clients.http import new_session

    url = (args.dataverse_url or env.get("DATAVERSE_URL", "")).strip().rstrip("/")
    if not url.startswith("https://"):
        raise ConfigurationError(
            ["the Dataverse URL is not set: --dataverse-url or DATAVERSE_URL (an https URL)"]
        )
    session = new_session(30.0)
    tokens = token_provider(
        env,
        session=session,
        device_code=args.device_code,
        admin_client_id=args.admin_client_id,
        tenant=args.tenant,
        prompt=lambda text: print(text, file=sys.stderr),
    )
    return DataverseClient(url, tokens=tokens, session=session)


def _namespace(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    if args.namespace:
        return str(args.namespace)
    namespace = env.get("SERVICEBUS__fullyQualifiedNamespace", "").strip()
    if namespace:
        return namespace
    for part in env.get("SERVICEBUS", "").split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "endpoint" and value.strip():
            return value.strip()
    return None


def target_from(args: argparse.Namespace, env: Mapping[str, str]) -> Target:
    """The registration's target from the options and their environment fallbacks."""
    from guardrails.admin.register import Target, governed_columns, normalize_namespace
    from guardrails.policy import load_policy

    problems: list[str] = []
    namespace = _namespace(args, env)
    if namespace is None:
        problems.append(
            "the namespace is not set: --namespace, SERVICEBUS__fullyQualifiedNamespace or "
            "SERVICEBUS"
        )
    else:
        try:
            namespace = normalize_namespace(namespace)
        except ValueError as exc:
            problems.append(str(exc))
    queue = (args.queue or env.get("SERVICEBUS_QUEUE", "")).strip()
    if not queue:
        problems.append("the queue is not set: --queue or SERVICEBUS_QUEUE")
    key_name = (args.sas_key_name or env.get("DATAVERSE_SAS_KEY_NAME", "")).strip()
    if not key_name:
        problems.append(
            "the SAS key name is not set: --sas-key-name or DATAVERSE_SAS_KEY_NAME (the queue's "
            "Send-only rule, e.g. dataverse-send)"
        )
    if problems:
        raise ConfigurationError(problems)
    policy = load_policy(args.policy or Path(env.get("GUARDRAILS_POLICY") or "policy.yaml"))
    assert namespace is not None
    return Target(
        namespace=namespace,
        queue=queue,
        sas_key_name=key_name,
        columns=governed_columns(policy),
        sas_key=(args.sas_key or env.get("DATAVERSE_SAS_KEY", "")).strip() or None,
        rotate_key=args.rotate_key,
    )


def _show_plan(plan: Plan, fmt: str, *, dry_run: bool) -> None:
    from guardrails.admin.register import Action

    if fmt == "json":
        print(json.dumps({**plan.to_dict(), "dry_run": dry_run}, indent=2))
        return
    render(plan.changes, ("action", "kind", "name", "id", "what"), "table")
    for note in plan.notes:
        print(f"note: {note}")
    for problem in plan.problems:
        print(f"cannot apply: {problem}", file=sys.stderr)
    writes = len(plan.writes)
    kept = sum(1 for c in plan.changes if c.action is Action.KEEP)
    if plan.problems:
        return
    if dry_run:
        print(f"dry run: {writes} change(s) planned, {kept} left alone; nothing written")
    elif writes:
        print(f"done: {writes} change(s) written, {kept} left alone")
    else:
        print(f"nothing to change: {kept} row(s) already as wanted")


def _register(args: argparse.Namespace) -> int:
    from guardrails.admin.register import plan_registration, read_registration

    env = os.environ
    target = target_from(args, env)
    client = _client(args, env)
    return _run_plan(client, lambda: plan_registration(target, read_registration(client)), args)


def _unregister(args: argparse.Namespace) -> int:
    from guardrails.admin.register import plan_unregistration, read_registration

    client = _client(args, os.environ)
    return _run_plan(client, lambda: plan_unregistration(read_registration(client)), args)


def _run_plan(client: DataverseClient, make: Callable[[], Plan], args: argparse.Namespace) -> int:
    from guardrails.admin.register import RegistrationError, apply_plan

    try:
        plan = make()
        if not args.dry_run and not plan.problems:
            apply_plan(client, plan)
    except RegistrationError as exc:
        print(f"guardrails: {exc}", file=sys.stderr)
        return 1
    _show_plan(plan, args.format, dry_run=args.dry_run)
    return 1 if plan.problems else 0


def _doctor(args: argparse.Namespace) -> int:
    from guardrails.admin.doctor import run_doctor

    checks = run_doctor(os.environ, skip=args.skip)
    render(checks, ("result", "check", "detail", "fix"), args.format)
    failed = [c.name for c in checks if not c.ok and not c.detail.startswith("not checked")]
    unchecked = [c.name for c in checks if not c.ok and c.name not in failed]
    if args.format == "table":
        summary = f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all passed"
        if unchecked:
            summary += f"; not checked: {', '.join(unchecked)}"
        print(summary)
    return 1 if failed or unchecked else 0


def _role(args: argparse.Namespace) -> int:
    from guardrails.admin.role import create_role, privileges_for
    from guardrails.policy import load_policy

    path = args.policy or os.environ.get("GUARDRAILS_POLICY")
    privileges = privileges_for(load_policy(path) if path else None)
    if not args.create:
        render(privileges, ("privilege", "depth", "needed", "why"), args.format)
        return 0
    outcome = create_role(_client(args, os.environ), privileges, name=args.name)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "role_id": outcome.role_id,
                    "created": outcome.created,
                    "added": [p.to_dict() for p in outcome.added],
                    "extra": list(outcome.extra),
                },
                indent=2,
            )
        )
        return 0
    verb = "created" if outcome.created else "found"
    print(f"{verb} role '{args.name}' ({outcome.role_id})")
    for privilege in outcome.added:
        print(f"  added {privilege.name} ({privilege.depth}): {privilege.why}")
    if not outcome.added:
        print("  it already holds every privilege: nothing written")
    for name in outcome.extra:
        print(f"  note: it also holds {name}, which the guardrail does not need (left alone)")
    print("Assign it to the application user (Power Platform admin center > Application users).")
    return 0
