"""Per-message latency and Dataverse requests per message, through the worker, on the sandbox.

    .venv/bin/python benchmarks/latency.py [--messages 200] [--latency 0.05]

`--latency` adds that many seconds to every sandbox response, to stand in for the network
between an Azure Function and Dataverse. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from guardrails.clients.tables import TableStore
from guardrails.sandbox.environment import QueuedMessage, Sandbox, patched_environ
from guardrails.settings import load_settings
from guardrails.worker import Worker, build_worker

POLICY = """\
version: 1
organization: {{id: {organization_id}}}
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address: {{changes: forbidden}}
notifications:
  enabled: true
  sender: guardrails@contoso.com
  throttle: {{max_per_mailbox: 1000}}
"""


def _timed(worker: Worker, message: QueuedMessage, sandbox: Sandbox) -> tuple[float, list[str]]:
    before = len(sandbox.dataverse.requests_log)
    started = time.perf_counter()
    worker.handle(message.body, message_id=message.message_id, properties=message.properties)
    elapsed = time.perf_counter() - started
    sent = sandbox.dataverse.requests_log[before:]
    return elapsed, [f"{r.method} {r.path.split('/v9.2/')[-1].split('(')[0]}" for r in sent]


def _report(name: str, samples: list[tuple[float, list[str]]]) -> None:
    times = sorted(t * 1000 for t, _ in samples)
    kinds = Counter(kind for _, sent in samples for kind in sent)
    per_message = {kind: round(count / len(samples), 2) for kind, count in sorted(kinds.items())}
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    print(
        f"{name:<27} n={len(times):<4} p50={statistics.median(times):6.1f} ms  "
        f"p95={p95:6.1f} ms  max={times[-1]:6.1f} ms  Dataverse/message: {per_message or 0}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY.format(organization_id=sandbox.dataverse.organization_id))
        people = [
            sandbox.add_person(f"User {i}", f"user{i}@contoso.com") for i in range(args.messages)
        ]
        with patched_environ(sandbox.environment(policy)):
            # State in memory: this measures the function's own work and Dataverse's share.
            worker = build_worker(
                load_settings(),
                store=TableStore.in_memory(),
                scheduler=None,
                audit=lambda record: None,
            )
            first_user, first_box = people[0]
            sandbox.dataverse.update_mailbox_as(first_user, first_box, {"actdeliverymethod": 1})
            warm = sandbox.take()[0]  # the first message pays for tokens, WhoAmI and TLS set-up
            cold = _timed(worker, warm, sandbox)
            sandbox.take()
            for server in (sandbox.dataverse, sandbox.graph, sandbox.identity):
                server.latency = args.latency
            violating, own, compliant = [], [], []
            for user_id, mailbox_id in people:
                sandbox.dataverse.update_mailbox_as(
                    user_id, mailbox_id, {"incomingemaildeliverymethod": 3}
                )
                (message,) = sandbox.take()
                violating.append(_timed(worker, message, sandbox))
                (returning,) = sandbox.take()
                own.append(_timed(worker, returning, sandbox))
                sandbox.dataverse.update_mailbox_as(
                    user_id, mailbox_id, {"outgoingemaildeliverymethod": 2}
                )
                (noop,) = sandbox.take()
                compliant.append(_timed(worker, noop, sandbox))
    print(f"sandbox latency per response: {args.latency * 1000:.0f} ms")
    print(f"first message (tokens, WhoAmI, TLS): {cold[0] * 1000:.1f} ms, requests {cold[1]}")
    print("(each message below is from a different user, so the owner look-up is never cached)")
    _report("violating update (revert)", violating)
    _report("guardrail's own write", own)
    _report("compliant update", compliant)


if __name__ == "__main__":
    main()
