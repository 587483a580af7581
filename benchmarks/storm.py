"""A storm: thousands of violating changes at once, under Dataverse's service protection limits.

    .venv/bin/python -m benchmarks.storm [--changes 10000] [--workers 8] [--limit 600 --window 5]
                                         [--latency 0.02] [--no-budget-headers] [--quick]

Every change is a different user's (the worst case: each costs the initiator's user and roles
look-ups plus the revert, 3 requests). The sandbox enforces a scaled request-count window
(`--limit` requests per `--window` seconds per user: Dataverse's 6,000 per 300 s, scaled so that
the storm's 30,000 requests pass through fifty windows in about four minutes, with its 52
concurrent requests) and answers every request after `--latency` seconds. `--workers` threads
play the function's concurrent invocations (`maxConcurrentCalls` x instances), sharing one client
as one instance's invocations do. The figure is the time until every mailbox is compliant against
the least the limit allows (requests / limit rate): the goal is at least 90% of the limit-bound
throughput, with nothing lost and every 429's Retry-After honoured (pinned by
tests/live/test_retry_pacing.py). The run is limit-bound only while the limit rate is well below
the concurrency-bound rate (workers / latency) and what this process can serve (about 250
requests a second on the 2-core build machine under load): the first is printed.
`--no-budget-headers` leaves out the remaining-budget headers, for the client's fallback.
Notifications are off: Graph has limits of its own, measured elsewhere. Prints figures; asserts
nothing.
"""

from __future__ import annotations

import argparse
import queue
import tempfile
import threading
import time
from pathlib import Path

from guardrails.clients.tables import TableStore
from guardrails.sandbox.environment import QueuedMessage, Sandbox, patched_environ
from guardrails.settings import load_settings
from guardrails.settlement import Schedule
from guardrails.worker import build_worker

POLICY = """\
version: 1
organization: {{id: {organization_id}}}
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
exemptions:
  security_roles: [System Administrator]
"""


def run(
    changes: int,
    workers: int,
    limit: int,
    window: float,
    latency: float,
    *,
    report_budget: bool = True,
) -> dict[str, object]:
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        dataverse = sandbox.dataverse
        people = dataverse.add_mailboxes(changes)
        for user_id, mailbox_id in people:
            dataverse.update_mailbox_as(user_id, mailbox_id, {"incomingemaildeliverymethod": 3})
        work: queue.Queue[QueuedMessage] = queue.Queue()
        for message in sandbox.take():
            work.put(message)
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY.format(organization_id=dataverse.organization_id))
        with patched_environ(sandbox.environment(policy)):
            worker = build_worker(
                load_settings(), store=TableStore.in_memory(), scheduler=None, audit=lambda r: None
            )
            worker.executor.dataverse.whoami()  # warm: the token and WhoAmI, before the clock
            dataverse.set_service_protection(limit, window, report_budget=report_budget)
            for server in (dataverse, sandbox.graph, sandbox.identity):
                server.latency = latency
            dataverse.clear_log()
            lost: list[str] = []
            started = time.perf_counter()

            def play() -> None:
                while True:
                    try:
                        message = work.get_nowait()
                    except queue.Empty:
                        return
                    handled = worker.handle(
                        message.body, message_id=message.message_id, properties=message.properties
                    )
                    if isinstance(handled.action, Schedule):
                        # No Service Bus here: the copy is the same message, due later.
                        time.sleep(min(handled.action.delay, window))
                        work.put(message)
                    elif handled.result.__class__.__name__ not in ("Done", "NothingToDo"):
                        lost.append(f"{message.message_id}: {handled.action}")

            threads = [threading.Thread(target=play) for _ in range(workers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            log = dataverse.requests_log
        accepted = [r for r in log if r.status != 429]
        throttled = [r for r in log if r.status == 429]
        compliant = sum(
            1
            for _, mailbox_id in people
            if dataverse.mailbox(mailbox_id)["incomingemaildeliverymethod"] == 2
        )
    rate = limit / window
    # The sliding window lets the first `limit` requests through at once; the rest at `rate`.
    minimum = max(0, len(accepted) - limit) / rate
    # Little's law: `workers` requests in flight, each `latency` long (and some client time).
    concurrency_bound = round(workers / latency) if latency > 0 else None
    limit_bound = concurrency_bound is None or rate <= concurrency_bound / 2
    return {
        "changes": changes,
        "workers": workers,
        "limit": f"{limit} requests / {window} s per user ({rate:.0f}/s), 52 concurrent",
        "budget_headers": report_budget,
        "latency_ms": latency * 1000,
        "concurrency_bound_per_s": concurrency_bound or "none (no latency)",
        "bound_by": "the limit" if limit_bound else "concurrency (too close to the limit)",
        "requests_accepted": len(accepted),
        "requests_per_change": round(len(accepted) / changes, 2),
        "throttled_429": len(throttled),
        "elapsed_s": round(elapsed, 1),
        "limit_bound_minimum_s": round(minimum, 1),
        "fraction_of_limit_throughput": round(minimum / elapsed, 3),
        "compliant_at_end": compliant,
        "lost": len(lost),
        "goal": ">= 0.90 of the limit-bound throughput, nothing lost, every 429 honoured",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--no-budget-headers", action="store_true")
    parser.add_argument("--quick", action="store_true", help="300 changes")
    args = parser.parse_args()
    changes = 300 if args.quick else args.changes
    figures = run(
        changes,
        args.workers,
        args.limit,
        args.window,
        args.latency,
        report_budget=not args.no_budget_headers,
    )
    for key, value in figures.items():
        print(f"{key:<32} {value}")


if __name__ == "__main__":
    main()
