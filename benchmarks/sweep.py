"""The reconcile sweep over a large tenant in the sandbox: wall time, requests, peak memory.

    .venv/bin/python benchmarks/sweep.py [--mailboxes 100000] [--drift 0.05]

Seeds the mailboxes (5% drifted across every governed column, some exempt), runs the sweep
through the real worker pieces (state in memory, Dataverse and Graph over loopback HTTPS), runs
it again (it must find nothing), and prints the figures. Peak memory is the process's peak RSS
growth during the first sweep: it should stay flat as the number of mailboxes grows. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

from guardrails.clients.tables import TableStore
from guardrails.sandbox.environment import Sandbox, patched_environ
from guardrails.settings import load_settings
from guardrails.worker import build_sweep, build_worker

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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(mailboxes: int, drift: float) -> dict[str, object]:
    rng = random.Random(1)
    kinds = ("incoming", "outgoing", "act", "address", "profile")
    drifted = {i: rng.choice(kinds) for i in range(mailboxes) if rng.random() < drift}
    values = {
        "incoming": lambda i: 3 if drifted.get(i) == "incoming" else 2,
        "outgoing": lambda i: 1 if drifted.get(i) == "outgoing" else 2,
        "act": lambda i: 0 if drifted.get(i) == "act" else 1,
    }
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        sandbox.take()  # nothing is delivered: the sweep must find the drift itself
        dataverse = sandbox.dataverse
        started = time.perf_counter()
        people = dataverse.add_mailboxes(
            mailboxes, incoming=values["incoming"], outgoing=values["outgoing"], act=values["act"]
        )
        other_profile = dataverse.add_email_server_profile("Someone's own server")
        for index, kind in drifted.items():  # the two drifts add_mailboxes cannot seed
            _, mailbox_id = people[index]
            if kind == "address":
                dataverse.update_mailbox_as(
                    dataverse.system_user_id, mailbox_id, {"emailaddress": f"x{index}@contoso.com"}
                )
            elif kind == "profile":
                dataverse.update_mailbox_as(
                    dataverse.system_user_id,
                    mailbox_id,
                    {"emailserverprofile@odata.bind": f"/emailserverprofiles({other_profile})"},
                )
        owner = dataverse.add_user(fullname="Exempt", internalemailaddress="exempt@contoso.com")
        dataverse.add_mailbox(
            owner_user_id=owner, emailaddress="exempt@contoso.com", incoming=3, mailboxid=EXEMPT
        )
        seeded = time.perf_counter() - started
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY.format(organization_id=dataverse.organization_id, exempt=EXEMPT))
        with patched_environ(sandbox.environment(policy)):
            worker = build_worker(
                load_settings(), store=TableStore.in_memory(), scheduler=None, audit=lambda r: None
            )
            dataverse.clear_log()
            rss_before = _rss_mb()
            started = time.perf_counter()
            first = build_sweep(worker).run()
            elapsed = time.perf_counter() - started
            rss_growth = _rss_mb() - rss_before
            pages = dataverse.count("GET", "mailboxes")
            batches = dataverse.count("POST", "$batch")
            lookups = dataverse.count("GET", "systemusers")
            sandbox.take()
            second = build_sweep(worker).run()
            exempt_untouched = dataverse.mailbox(EXEMPT)["incomingemaildeliverymethod"] == 3
        mails = len(sandbox.graph.sent)
    return {
        "mailboxes": mailboxes,
        "drifted": len(drifted),
        "drift_by_rule": dict(sorted(Counter(drifted.values()).items())),
        "seed_s": round(seeded, 1),
        "sweep_s": round(elapsed, 1),
        "scanned": first.scanned,
        "fixed": first.fixed,
        "fixed_all": first.fixed == len(drifted),
        "failed": first.failed,
        "dataverse_requests": first.requests,
        "pages": pages,
        "batches": batches,
        "owner_lookups": lookups,
        "mails": mails,
        "peak_rss_growth_mb": round(rss_growth, 1),
        "second_run_non_compliant": second.non_compliant,
        "exempt_untouched": exempt_untouched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument("--drift", type=float, default=0.05)
    args = parser.parse_args()
    figures = run(args.mailboxes, args.drift)
    for key, value in figures.items():
        print(f"{key:<26} {value}")


if __name__ == "__main__":
    main()
