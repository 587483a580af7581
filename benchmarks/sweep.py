"""The reconcile sweep over large tenants: wall time, requests by kind, and whether the sweep's
peak memory stays flat as the number of mailboxes grows.

    .venv/bin/python -m benchmarks.sweep [--sizes 25000,50000,100000] [--drift 0.05]
                                         [--state child|memory|azurite] [--tracemalloc]
                                         [--quick]

Each size runs in a fresh process of its own, which seeds a tenant (``drift`` of the mailboxes
drifted across every governed column, one exempt) in a sandbox served from a child process
(guardrails.sandbox.child), runs the sweep through the real worker pieces over loopback HTTPS,
runs it again (it must find nothing) and reports. So the sweep process holds the sweep and
nothing else: not the simulators, their 100,000 rows or their request log, whose requests are
counted in the child. Its memory figure is the process's peak RSS during the first sweep
(Linux's VmHWM, reset just before) minus its RSS just before; ``--tracemalloc`` adds the
Python heap's traced peak during the sweep (slower, so a mode of its own).

The guardrail's state (ledger, outbox, accepted values, audit) grows with the rows *fixed*
(about 7 KB each), not with the rows read. In production it lives out of process, in Table
Storage, and so it does here by default: ``--state child`` keeps it in memory in the sandbox
child, and the figure is the sweep's alone. ``--state memory`` holds it in the sweep process
(the figure then grows with the drift); ``--state azurite`` uses the production Table Storage
client against Azurite (faithful, but each of the ~12 state operations per fixed row costs a
few milliseconds there: about ten minutes for the default sizes).

Prints one row per size; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from guardrails.clients.tables import TableStore, storage_settings, table_store
from guardrails.sandbox.child import SandboxChild
from guardrails.sandbox.environment import Sandbox, patched_environ
from guardrails.settings import load_settings
from guardrails.worker import build_sweep, build_worker

REPO = Path(__file__).resolve().parents[1]
SIZES = (25_000, 50_000, 100_000)
QUICK_SIZES = (1_000, 2_000)
POLICY = """\
version: 1
organization: {{id: {organization_id}}}
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address: {{changes: forbidden, must_match_owner: true}}
  server_profile: {{expected: organization_default}}
exemptions:
  mailboxes: [{exempt}]
notifications:
  enabled: true
  sender: guardrails@contoso.com
  throttle: {{max_per_mailbox: 1000}}
"""
EXEMPT = "0e0e0e0e-1111-2222-3333-444444444444"
KINDS = ("incoming", "outgoing", "act", "address", "profile")
_API = "/api/data/v9.2/"
STATES = {
    "child": "in the sandbox child's memory, out of the sweep process (as Table Storage is in "
    "production): not in the figure",
    "memory": "in the sweep process's memory: it grows with the rows fixed ({drift:.0%} of the "
    "mailboxes), not with the rows read, and is in the figure",
    "azurite": "in Azurite through the production Table Storage client: only the client is in "
    "the figure",
}


# -- in the sandbox child ---------------------------------------------------------------------


def _seed(sandbox: Sandbox, mailboxes: int, drift: float) -> dict[str, Any]:
    """The tenant: ``mailboxes`` users with mailboxes, ``drift`` of them drifted (one rule each,
    drawn evenly), and one exempt mailbox that is drifted too and must stay so."""
    rng = random.Random(1)
    drifted = {i: rng.choice(KINDS) for i in range(mailboxes) if rng.random() < drift}
    dataverse = sandbox.dataverse
    started = time.perf_counter()
    people = dataverse.add_mailboxes(
        mailboxes,
        incoming=lambda i: 3 if drifted.get(i) == "incoming" else 2,
        outgoing=lambda i: 1 if drifted.get(i) == "outgoing" else 2,
        act=lambda i: 0 if drifted.get(i) == "act" else 1,
    )
    other_profile = dataverse.add_email_server_profile("Someone's own server")
    for index, kind in drifted.items():  # the two drifts add_mailboxes cannot seed
        _, mailbox_id = people[index]
        if kind == "address":
            change: dict[str, Any] = {"emailaddress": f"x{index}@contoso.com"}
        elif kind == "profile":
            change = {"emailserverprofile@odata.bind": f"/emailserverprofiles({other_profile})"}
        else:
            continue
        dataverse.update_mailbox_as(dataverse.system_user_id, mailbox_id, change)
    owner = dataverse.add_user(fullname="Exempt", internalemailaddress="exempt@contoso.com")
    dataverse.add_mailbox(
        owner_user_id=owner, emailaddress="exempt@contoso.com", incoming=3, mailboxid=EXEMPT
    )
    _forget(sandbox)
    return {
        "organization_id": dataverse.organization_id,
        "drifted": len(drifted),
        "drift_by_rule": dict(sorted(Counter(drifted.values()).items())),
        "seed_s": round(time.perf_counter() - started, 1),
    }


def _forget(sandbox: Sandbox) -> None:
    """Drop the request logs and the queued messages: what follows is counted from zero."""
    sandbox.take()  # nothing is delivered: the sweep must find the drift itself
    for server in (sandbox.dataverse, sandbox.graph, sandbox.identity):
        server.clear_log()


def _requests(sandbox: Sandbox) -> dict[str, int]:
    """Requests since the last :func:`_forget`, by kind: Dataverse's by method and entity set
    (``GET mailboxes`` are the pages, ``GET mailboxes()`` single rows), Graph's and the identity
    platform's in all."""
    kinds: Counter[str] = Counter()
    for request in sandbox.dataverse.requests_log:
        segment = request.path.partition(_API)[2].split("/", 1)[0]
        entity_set, keyed, _ = segment.partition("(")
        kinds[f"{request.method} {entity_set}{'()' if keyed else ''}"] += 1
    kinds["graph"] = len(sandbox.graph.requests_log)
    kinds["identity"] = len(sandbox.identity.requests_log)
    return dict(kinds)


def _mails(sandbox: Sandbox) -> int:
    return len(sandbox.graph.sent)


def _exempt_untouched(sandbox: Sandbox) -> bool:
    return bool(sandbox.dataverse.mailbox(EXEMPT)["incomingemaildeliverymethod"] == 3)


# -- in the sweep process -----------------------------------------------------------------------


def _status_mb(field: str) -> float:
    """A figure of /proc/self/status (VmRSS, VmHWM), in MB."""
    status = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux")
    return int(found.group(1)) / 1024


def _reset_peak_rss() -> None:
    """Set VmHWM (the peak RSS) to the current RSS, so the next peak is the sweep's own."""
    Path("/proc/self/clear_refs").write_text("5")


def run(
    mailboxes: int,
    drift: float,
    *,
    state: str = "child",
    storage: str | None = None,
    trace: bool = False,
) -> dict[str, Any]:
    """One size, swept in this process against a sandbox in a child process.

    ``state`` is where the guardrail's tables are: ``child`` (the sandbox child's memory),
    ``memory`` (this process) or ``azurite`` (Table Storage at the connection string
    ``storage``, in tables of this run's own).
    """
    if (state == "azurite") != (storage is not None):
        raise ValueError("a connection string is for the azurite state, and only for it")
    with SandboxChild() as sandbox, tempfile.TemporaryDirectory() as tmp:
        seeded = sandbox.call(_seed, mailboxes, drift)
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY.format(organization_id=seeded["organization_id"], exempt=EXEMPT))
        environment = sandbox.call(Sandbox.environment, policy)
        if storage is not None:
            environment["GUARDRAILS_STORAGE"] = storage
            environment["GUARDRAILS_TABLE_PREFIX"] = f"sweep{uuid.uuid4().hex[:12]}"
        with patched_environ(environment):
            store = {
                "child": sandbox.table_store,
                "memory": TableStore.in_memory,
                "azurite": lambda: table_store(storage_settings()),
            }[state]()
            worker = build_worker(load_settings(), store=store, scheduler=None, audit=_discard)
            gc.collect()
            rss_before = _status_mb("VmRSS")
            _reset_peak_rss()
            with ExitStack() as tracing:
                if trace:
                    tracemalloc.start()
                    tracing.callback(tracemalloc.stop)
                started, cpu_started = time.perf_counter(), time.process_time()
                first = build_sweep(worker).run()
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                traced_peak = tracemalloc.get_traced_memory()[1] if trace else None
            rss_growth = _status_mb("VmHWM") - rss_before
            requests = sandbox.call(_requests)
            sandbox.call(_forget)
            second = build_sweep(worker).run()
            store.close()
        return {
            "mailboxes": mailboxes,
            "drifted": seeded["drifted"],
            "drift_by_rule": seeded["drift_by_rule"],
            "state": state,
            "seed_s": seeded["seed_s"],
            "sweep_s": round(elapsed, 1),
            "sweep_cpu_s": round(cpu, 1),
            "scanned": first.scanned,
            "fixed": first.fixed,
            "fixed_all": first.fixed == seeded["drifted"],
            "failed": first.failed,
            "dataverse_requests": first.requests,
            "pages": requests.get("GET mailboxes", 0),
            "batches": requests.get("POST $batch", 0),
            "owner_lookups": requests.get("GET systemusers", 0),
            "requests_by_kind": requests,
            "mails": sandbox.call(_mails),
            "rss_before_mb": round(rss_before, 1),
            "peak_rss_growth_mb": round(rss_growth, 1),
            "traced_peak_mb": None if traced_peak is None else round(traced_peak / 2**20, 1),
            "second_run_non_compliant": second.non_compliant,
            "exempt_untouched": sandbox.call(_exempt_untouched),
        }


def _discard(record: dict[str, Any]) -> None:
    """The audit log sink, silenced: printing 5,000 records is not the sweep's work."""


# -- the table of sizes -----------------------------------------------------------------------


def _in_fresh_process(size: int, args: argparse.Namespace, storage: str | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.sweep", "--one", str(size)]
    command += ["--drift", str(args.drift), "--state", args.state]
    if storage is not None:
        command += ["--storage", storage]
    if args.tracemalloc:
        command.append("--tracemalloc")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the sweep of {size:,} mailboxes failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return figures


COLUMNS = (
    ("mailboxes", 9),
    ("drifted", 7),
    ("wall s", 6),
    ("CPU s", 5),
    ("pages", 5),
    ("$batch", 6),
    ("look-ups", 8),
    ("other", 5),
    ("graph", 6),
    ("RSS +MB", 7),
    ("per +1k mbx", 11),
)
LEGEND = (
    "wall s, CPU s: the first sweep's wall time, and the sweep process's CPU time in it (the "
    "simulators' is the child's); pages: GET mailboxes (5,000 rows each); $batch: writes (up to "
    "100 each); look-ups: GET systemusers (100 owners each); other: the rest of Dataverse "
    "(WhoAmI, the organization); graph: notification mail (a draft, then its send); RSS +MB: "
    "peak RSS during the sweep minus RSS just before it; per +1k mbx: how that grows per 1,000 "
    "mailboxes more than the smallest size; traced MB: the Python heap's peak during the sweep"
)


def _cells(figures: dict[str, Any], first: dict[str, Any] | None) -> list[str]:
    """One size's row: the COLUMNS, then the traced peak (if measured) and the checks."""
    kinds: dict[str, int] = figures["requests_by_kind"]
    named = figures["pages"] + figures["batches"] + figures["owner_lookups"]
    other = sum(v for k, v in kinds.items() if k not in ("graph", "identity")) - named
    per_1000 = "-"
    if first is not None and figures["mailboxes"] != first["mailboxes"]:
        extra = (figures["mailboxes"] - first["mailboxes"]) / 1000
        growth = figures["peak_rss_growth_mb"] - first["peak_rss_growth_mb"]
        per_1000 = f"{growth * 1024 / extra:+.1f} KB"
    checks = (
        figures["fixed_all"]
        and figures["failed"] == 0
        and figures["second_run_non_compliant"] == 0
        and figures["exempt_untouched"]
    )
    cells = [
        f"{figures['mailboxes']:,}",
        f"{figures['drifted']:,}",
        f"{figures['sweep_s']:.1f}",
        f"{figures['sweep_cpu_s']:.1f}",
        str(figures["pages"]),
        str(figures["batches"]),
        str(figures["owner_lookups"]),
        str(other),
        str(kinds["graph"]),
        f"{figures['peak_rss_growth_mb']:.1f}",
        per_1000,
    ]
    if figures["traced_peak_mb"] is not None:
        cells.append(f"{figures['traced_peak_mb']:.1f}")
    return [*cells, "ok" if checks else "FAILED"]


def _line(cells: list[str], widths: list[int]) -> str:
    return " ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))


def _table(args: argparse.Namespace, sizes: tuple[int, ...]) -> None:
    print("state:", STATES[args.state].format(drift=args.drift))
    titles = [title for title, _ in COLUMNS] + (["traced MB"] if args.tracemalloc else [])
    widths = [width for _, width in COLUMNS] + ([9] if args.tracemalloc else [])
    print(_line([*titles, "checks"], [*widths, 6]), flush=True)
    with ExitStack() as stack:
        storage: str | None = None
        if args.state == "azurite":
            from tests.azurite.server import Azurite, azurite_table

            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            port, started_in = stack.enter_context(azurite_table(log_dir))
            storage = Azurite("127.0.0.1", port, "http", started_in).connection_string
        first: dict[str, Any] | None = None
        for size in sizes:
            figures = _in_fresh_process(size, args, storage)
            print(_line(_cells(figures, first), [*widths, 6]), flush=True)
            first = first or figures
    print(textwrap.fill(LEGEND, 100))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--drift", type=float, default=0.05)
    parser.add_argument("--state", choices=tuple(STATES), default="child")
    parser.add_argument("--tracemalloc", action="store_true", help="also the traced heap peak")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a size, in this process
    parser.add_argument("--storage", help=argparse.SUPPRESS)  # its state's connection string
    args = parser.parse_args()
    if args.one is not None:
        figures = run(
            args.one, args.drift, state=args.state, storage=args.storage, trace=args.tracemalloc
        )
        print(json.dumps(figures))
        return
    sizes = QUICK_SIZES if args.quick else tuple(int(s) for s in args.sizes.split(","))
    _table(args, sizes)


if __name__ == "__main__":
    main()
