"""The pure core per message: parse + decide, against `json.loads` of the same bytes.

    .venv/bin/python benchmarks/core.py [--bodies 200] [--rounds 15] [--quick] [--profile]

The bodies are what a Dataverse service endpoint posts for an asynchronous Update of a mailbox
row (built with `guardrails.sandbox.messages`): the Target, the ParentContext carrying the
original request, the registered pre image (the governed columns, regarding, owner, name), the
automatic AsynchronousStepPrimaryName post image, and FormattedValues as Dataverse adds them for
choices, lookups and dates; about 8 KB each, every one with its own ids. Half change a column to
what the policy wants (compliant), half to what it forbids (a violation).

Each round times `json.loads` over every body and then `decide(parse_message(body), policy)` over
the same bodies (the executor's offline first pass); the two alternate round by round and the
medians are compared. With --profile, cProfile shows where parse + decide spend their time.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from guardrails.engine import Decision, decide
from guardrails.message import parse_message
from guardrails.policy import Policy, parse_policy
from guardrails.sandbox.messages import mailbox_message, to_body

GOAL_RATIO = 2.0
ORGANIZATION_ID = "6f2c3b1a-9d8e-4f7a-b6c5-d4e3f2a1b0c9"
POLICY = f"""\
version: 1
organization: {{id: {ORGANIZATION_ID}, name: Contoso}}
mode: enforce
scope: user_mailboxes
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
  subject: "Your Dynamics 365 mailbox settings were changed back"
"""
_CHOICE_LABELS = {
    "incomingemaildeliverymethod": {2: "Server-Side Synchronization or Email Router", 3: "Forward"},
    "outgoingemaildeliverymethod": {2: "Server-Side Synchronization or Email Router"},
    "actdeliverymethod": {1: "Server-Side Synchronization"},
}
_LOOKUP_NAMES = {
    "ownerid": "Adele Vance",
    "modifiedby": "Adele Vance",
    "regardingobjectid": "Adele Vance",
    "emailserverprofile": "Microsoft Exchange Online",
}


def _formatted(pairs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """FormattedValues as Dataverse adds them: choice labels, lookup names, local dates."""
    shown: list[dict[str, str]] = []
    for pair in pairs:
        key, value = pair["key"], pair["value"]
        if key in _CHOICE_LABELS and isinstance(value, dict):
            label = _CHOICE_LABELS[key].get(value["Value"], str(value["Value"]))
            shown.append({"key": key, "value": label})
        elif key in _LOOKUP_NAMES and value is not None:
            shown.append({"key": key, "value": _LOOKUP_NAMES[key]})
        elif key == "modifiedon":
            shown.append({"key": key, "value": "10/3/2025 4:12 PM"})
    return shown


def _with_formatted_values(context: dict[str, Any]) -> dict[str, Any]:
    entities = [
        pair["value"]
        for pairs in (context["InputParameters"], context["PreEntityImages"])
        for pair in pairs
        if isinstance(pair["value"], dict) and "Attributes" in pair["value"]
    ]
    parent = context.get("ParentContext")
    if parent is not None:
        entities.extend(
            pair["value"]
            for pair in parent["InputParameters"]
            if isinstance(pair["value"], dict) and "Attributes" in pair["value"]
        )
    for entity in entities:
        entity["FormattedValues"] = _formatted(entity["Attributes"])
    return context


def bodies(count: int) -> list[tuple[str, bytes]]:
    """(kind, body): alternately a compliant and a violating Update of a mailbox."""
    made: list[tuple[str, bytes]] = []
    now = datetime(2025, 10, 3, 16, 12, tzinfo=UTC)
    for index in range(count):
        mailbox_id, user_id, profile_id = (str(uuid.uuid4()) for _ in range(3))
        before = {
            "incomingemaildeliverymethod": 2,
            "outgoingemaildeliverymethod": 2,
            "actdeliverymethod": 1,
            "emailaddress": f"adele.vance{index}@contoso.com",
            "emailserverprofile": profile_id,
            "regardingobjectid": ("systemuser", user_id),
            "ownerid": user_id,
            "name": f"Adele Vance {index}",
        }
        violating = index % 2 == 1
        changes = (
            {"incomingemaildeliverymethod": 3}
            if violating
            else {"outgoingemaildeliverymethod": 2, "actdeliverymethod": 1}
        )
        context = mailbox_message(
            message="Update",
            mailbox_id=mailbox_id,
            organization_id=ORGANIZATION_ID,
            user_id=user_id,
            changes=changes,
            before=before,
            row_version=7_400_000 + index,
            mailbox_name=f"Adele Vance {index}",
            organization_name="Contoso",
            now=now + timedelta(seconds=index),
        )
        body = to_body(_with_formatted_values(context))
        made.append(("violating" if violating else "compliant", body))
    return made


def _round(work: Callable[[bytes], object], items: list[bytes]) -> float:
    started = time.perf_counter()
    for body in items:
        work(body)
    return (time.perf_counter() - started) / len(items)


def _core(policy: Policy) -> Callable[[bytes], Decision]:
    def work(body: bytes) -> Decision:
        return decide(parse_message(body), policy)

    return work


def _profile(work: Callable[[bytes], object], items: list[bytes], limit: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        for body in items:
            work(body)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bodies", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="20 bodies, 3 rounds")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the core")
    args = parser.parse_args()
    count, rounds = (20, 3) if args.quick else (max(2, args.bodies), max(1, args.rounds))
    policy = parse_policy(POLICY)
    made = bodies(count)
    core = _core(policy)
    outcomes = Counter(f"{kind} -> {core(body).outcome.value}" for kind, body in made)
    sizes = [len(body) for _, body in made]
    print(
        f"bodies: {count} async mailbox Updates, {min(sizes)}-{max(sizes)} bytes "
        f"(mean {statistics.mean(sizes) / 1024:.1f} KB); "
        f"decisions: {dict(sorted(outcomes.items()))}"
    )
    for kind in ("compliant", "violating", "all"):
        items = [body for k, body in made if kind in ("all", k)]
        for body in items[:3]:  # warm caches and the policy's lazy parts
            core(body)
            json.loads(body)
        loads: list[float] = []
        ours: list[float] = []
        for _ in range(rounds):
            loads.append(_round(json.loads, items))
            ours.append(_round(core, items))
        base, mine = statistics.median(loads) * 1e6, statistics.median(ours) * 1e6
        print(
            f"core ({kind}): parse + decide {mine:.0f} us vs json.loads {base:.0f} us per "
            f"message = {mine / base:.2f}x (goal <= {GOAL_RATIO}x)"
        )
    if args.profile:
        print(_profile(core, [body for _, body in made], 25))


if __name__ == "__main__":
    main()
