"""Dataverse requests per message on a realistic mix, against the naive read-compare-write.

    .venv/bin/python benchmarks/economy.py [--messages 1000] [--users 200] [--violating 0.1]

`--messages` user changes over `--users` users (a user changes their mailbox several times),
`--violating` of them forbidden; every change's message, and the guardrail's own writes coming
back, go through the real worker (state in memory; Dataverse, Graph and the token endpoint over
loopback HTTPS). The naive pattern (read the row, compare, write) costs 2 requests per message.
Prints figures with their goals; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter
from pathlib import Path

from guardrails.clients.tables import TableStore
from guardrails.sandbox.environment import Sandbox, patched_environ
from guardrails.settings import load_settings
from guardrails.worker import build_worker

POLICY = """\
version: 1
organization: {{id: {organization_id}}}
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address: {{changes: forbidden}}
exemptions:
  security_roles: [System Administrator]
notifications:
  enabled: true
  sender: guardrails@contoso.com
  throttle: {{max_per_mailbox: 1000}}
"""


def run(messages: int, users: int, violating: float) -> dict[str, object]:
    rng = random.Random(3)
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        dataverse = sandbox.dataverse
        people = dataverse.add_mailboxes(users)
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY.format(organization_id=dataverse.organization_id))
        with patched_environ(sandbox.environment(policy)):
            worker = build_worker(
                load_settings(), store=TableStore.in_memory(), scheduler=None, audit=lambda r: None
            )
            tokens_before = sandbox.identity.token_requests
            dataverse.clear_log()
            kinds: Counter[str] = Counter()
            handled = 0
            for _ in range(messages):
                user_id, mailbox_id = rng.choice(people)
                bad = rng.random() < violating
                column = rng.choice(("incomingemaildeliverymethod", "outgoingemaildeliverymethod"))
                # A compliant change: a governed column set to what the policy wants (or left).
                value = (3 if column.startswith("incoming") else 1) if bad else 2
                dataverse.update_mailbox_as(user_id, mailbox_id, {column: value, "name": "x"})
                kinds["violating" if bad else "compliant"] += 1
                while True:  # the change's message, then the guardrail's own writes coming back
                    queued = sandbox.take()
                    if not queued:
                        break
                    for message in queued:
                        worker.handle(
                            message.body,
                            message_id=message.message_id,
                            properties=message.properties,
                        )
                        handled += 1
            log = dataverse.requests_log
            by_kind = Counter(f"{r.method} {r.path.split('/v9.2/')[-1].split('(')[0]}" for r in log)
            tokens = sandbox.identity.token_requests - tokens_before
    total = len(log)
    return {
        "user_changes": messages,
        "messages_handled": handled,
        "violating": kinds["violating"],
        "compliant": kinds["compliant"],
        "dataverse_requests": total,
        "requests_per_user_change": round(total / messages, 3),
        "naive_requests_per_change": 2,
        "ratio_vs_naive": round(total / (2 * messages), 3),
        "by_kind": dict(sorted(by_kind.items())),
        "whoami": by_kind.get("GET WhoAmI", 0),
        "token_requests": tokens,
        "writes_per_violation": round(
            by_kind.get("PATCH mailboxes", 0) / max(1, kinds["violating"]), 3
        ),
        "user_lookups": by_kind.get("GET systemusers", 0),
        "distinct_users": users,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--violating", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="100 changes over 20 users")
    args = parser.parse_args()
    messages, users = (100, 20) if args.quick else (args.messages, args.users)
    figures = run(messages, users, args.violating)
    for key, value in figures.items():
        print(f"{key:<28} {value}")
    print(
        "goals: 0 requests for a compliant change; 1 write per violation; owner and role "
        "look-ups at most once per distinct user per cache lifetime (5 min); one token and one "
        "WhoAmI per instance"
    )


if __name__ == "__main__":
    main()
