"""Fuzzing the whole offline path: parse -> decide -> audit record -> notification -> evaluate.

At least 10,000 bodies, generated from the real Dataverse samples and from real-shaped mailbox
messages by seeded mutations (bytes and JSON structure, with the values an attacker would pick),
must each end as a decision or a typed rejection, and every output built from them must encode.
The run prints how many bodies it tried, how they ended, and the slowest one's time.
"""

from __future__ import annotations

import copy
import io
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from guardrails.audit import audit_record
from guardrails.cli import render_text
from guardrails.engine import Decision, Facts, Outcome, QueueFacts, UserFacts, decide
from guardrails.mailbox import Column, MailboxState
from guardrails.message import Rejection, parse_message
from guardrails.outcomes import Done, GiveUp, NothingToDo, Result
from guardrails.policy import Policy
from guardrails.render import render
from guardrails.sandbox.messages import to_body
from guardrails.values import EntityReference, scrub
from tests.core.conftest import (
    GUARDRAIL_USER,
    MAILBOX_ID,
    OWNER,
    QUEUE,
    SAMPLE_NAMES,
    USER,
    as_mailbox_event,
    mailbox,
    make_policy,
    sample_bytes,
)

BODIES = 10_000
SEED = 20261130
HOSTILE_STRINGS = [
    "",
    "x" * 5000,
    "\ud800",
    "a\udc80b",
    "\r\nX-Injected: 1",
    "11bb11bb-cc22-dd33-ee44-55ff55ff55ff)/systemuserroles_association?$select=name&x=(",
    "/Date(" + "9" * 5000 + ")/",
    "/Date(-99999999999999999)/",
    '"><script>alert(1)</script>',
    "{{7*7}}",
    "javascript:alert(1)",
    "mailbox-guardrails",
    "\u2028\u2029",
    "\x00",
    "ceo@contoso.com",
]
HOSTILE_VALUES: list[Any] = [
    *HOSTILE_STRINGS,
    None,
    True,
    -1,
    2**63,
    10**400,
    1e308,
    [],
    {},
    [[[[[]]]]],
    {"__type": "OptionSetValue:x", "Value": "3"},
    {"__type": "OptionSetValue:x", "Value": 10**30},
    {"__type": "Money:x", "Value": "NaN"},
    {"__type": "EntityReference:x", "Id": "not-a-guid", "LogicalName": "systemuser"},
    {"__type": "EntityReference:x", "Id": OWNER, "LogicalName": "queue"},
    {"__type": "Entity:x", "Attributes": "oops"},
    {"__type": "EntityCollection:x", "Entities": [{"Attributes": []}]},
    {"key": "tag", "value": "mailbox-guardrails"},
]
FULL_RULES = """
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: organization_default
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
    allowed_domains: [contoso.com]
    must_match_owner: true
    restore_approval: true
  server_profile:
    expected: organization_default
"""
NOTIFY = """scope: all
exemptions:
  users: [exempt@contoso.com]
  security_roles: [System Administrator]
notifications:
  enabled: true
  sender: guardrails@contoso.com
  extra_recipients: [secops@contoso.com]
"""


def seeds() -> list[dict[str, Any]]:
    """Real samples (relabelled as mailbox events too) and real-shaped mailbox messages."""
    found: list[dict[str, Any]] = []
    for name in SAMPLE_NAMES:
        found.append(json.loads(sample_bytes(name).decode("utf-8-sig")))
        found.append(as_mailbox_event(name))
    before = {
        "incomingemaildeliverymethod": 2,
        "emailaddress": "adele@contoso.com",
        "regardingobjectid": ("systemuser", OWNER),
    }
    for changes in (
        {"incomingemaildeliverymethod": 3},
        {"emailaddress": "ceo@contoso.com"},
        {"outgoingemaildeliverymethod": 1, "actdeliverymethod": 0},
        {"emailserverprofile": "44ee44ee-ff55-aa66-bb77-88cc88cc88cc"},
    ):
        found.append(mailbox(changes=changes, before=before, row_version=42))
        found.append(mailbox(message="Create", changes={**changes, **before}))
        found.append(
            mailbox(changes=changes, before={**before, "regardingobjectid": ("queue", QUEUE)})
        )
    return found


def _containers(node: Any, depth: int = 0) -> Iterator[tuple[Any, Any]]:
    """(container, key) pairs for every value in a JSON tree."""
    if depth > 12:
        return
    if isinstance(node, dict):
        for key in list(node):
            yield node, key
            yield from _containers(node[key], depth + 1)
    elif isinstance(node, list):
        for index in range(len(node)):
            yield node, index
            yield from _containers(node[index], depth + 1)


def mutate_json(rng: random.Random, data: dict[str, Any]) -> bytes:
    tree = copy.deepcopy(data)
    places = list(_containers(tree))
    for _ in range(rng.randint(1, 4)):
        if not places:
            break
        container, key = rng.choice(places)
        if isinstance(container, dict) and key not in container:
            continue  # removed by an earlier mutation of this body
        action = rng.random()
        if action < 0.6:
            container[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        elif action < 0.75 and isinstance(container, dict):
            container.pop(key, None)
        elif action < 0.9:
            nested: Any = container[key]
            for _ in range(rng.choice((2, 50, 900))):
                nested = [nested]
            container[key] = nested
        elif isinstance(container, dict):
            container[rng.choice(HOSTILE_STRINGS)] = container.get(key)
    try:
        text = json.dumps(tree, ensure_ascii=rng.random() < 0.5, allow_nan=True)
    except RecursionError:  # deeper than json.dumps goes: build the deep body by hand
        return b'{"MessageName": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    if rng.random() < 0.1:
        text = text.replace("0", "NaN", 1)
    return text.encode("utf-8", "surrogatepass")


def mutate_bytes(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    choice = rng.random()
    if choice < 0.3 and data:
        return bytes(data[: rng.randrange(len(data))])  # truncated
    if choice < 0.6:
        for _ in range(rng.randint(1, 16)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if choice < 0.8:
        prefix = rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"@\x02\x0bRemoteExecutionContext", b""])
        return prefix + bytes(data)
    return bytes(data) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def directory(text: str) -> str:
    """A directory value as the Dataverse client hands it over (lone surrogates replaced)."""
    cleaned: str = scrub(text)
    return cleaned


def facts_for(rng: random.Random) -> tuple[Facts, MailboxState | None]:
    owner = UserFacts(id=OWNER, email="adele@contoso.com", upn="adele@contoso.com")
    initiator = UserFacts(id=USER, email=directory(rng.choice(HOSTILE_STRINGS)))
    facts = Facts(
        guardrail_user_id=GUARDRAIL_USER,
        initiator=initiator,
        owner=owner,
        queue=QueueFacts(id=QUEUE, name='"><b>q', email="q@contoso.com", owner_user_id=OWNER),
        organization_defaults={Column.OUTGOING: 2},
    )
    if rng.random() < 0.5:
        return facts, None
    state = MailboxState(
        mailbox_id=MAILBOX_ID,
        values={Column.EMAIL: directory(rng.choice(HOSTILE_STRINGS)), Column.INCOMING: 3},
        etag='W/"5"',
        regarding=EntityReference(rng.choice(["systemuser", "queue"]), rng.choice([OWNER, QUEUE])),
        name=directory(rng.choice(HOSTILE_STRINGS)),
    )
    return facts, state


def run_everything(body: bytes, policy: Policy, facts: Facts, state: MailboxState | None) -> str:
    """Every output the offline path builds from one body; returns how it ended."""
    parsed = parse_message(body, max_bytes=600_000)
    offline = decide(parsed, policy)
    live = decide(parsed, policy, facts, state)
    for decision in (offline, live):
        result: Result
        if decision.outcome is Outcome.REJECTED:
            result = GiveUp(decision.reason, decision)
        elif decision.outcome is Outcome.VIOLATION:
            result = Done(decision, wrote=True, notified=("a@contoso.com",))
        else:
            result = NothingToDo(decision, decision.reason)
        record = audit_record(result, message_id="m", dry_run=False, duration_ms=1.0)
        json.dumps(record, ensure_ascii=False).encode("utf-8")
        _render(decision, policy, facts, state)
        text = io.StringIO()
        render_text("fuzz.json", decision, text)
        text.getvalue().encode("utf-8")
        json.dumps(decision.to_dict(), ensure_ascii=False).encode("utf-8")
    return "rejection" if isinstance(parsed, Rejection) else live.outcome.value


def _render(decision: Decision, policy: Policy, facts: Facts, state: MailboxState | None) -> None:
    if decision.outcome is not Outcome.VIOLATION:
        return
    subject, html = render(
        decision,
        policy.notifications,
        owner_name=facts.initiator.email if facts.initiator else None,
        owner_email="adele@contoso.com",
        initiator=facts.initiator.email if facts.initiator else None,
        organization_name="Contoso",
        mailbox_name=state.name if state else None,
        wrote=True,
    )
    subject.encode("utf-8")
    html.encode("utf-8")
    assert "\n" not in subject and "\r" not in subject


def test_ten_thousand_hostile_bodies_end_as_decisions_or_rejections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(SEED)
    policies = [make_policy(), make_policy(FULL_RULES, NOTIFY)]
    originals = seeds()
    mutations: list[Callable[[dict[str, Any]], bytes]] = [
        lambda data: mutate_json(rng, data),
        lambda data: mutate_bytes(rng, to_body(data)),
        lambda data: mutate_bytes(rng, mutate_json(rng, data)),
    ]
    endings: Counter[str] = Counter()
    slowest = (0.0, b"")
    for _ in range(BODIES):
        body = rng.choice(mutations)(rng.choice(originals))
        facts, state = facts_for(rng)
        started = time.perf_counter()
        endings[run_everything(body, rng.choice(policies), facts, state)] += 1
        elapsed = time.perf_counter() - started
        if elapsed > slowest[0]:
            slowest = (elapsed, body)
    assert sum(endings.values()) == BODIES
    assert endings["rejection"] > 0 and endings["violation"] > 0  # the mix reached both ends
    with capsys.disabled():
        print(
            f"\nfuzz: {BODIES} bodies, 0 unhandled exceptions; endings {dict(endings)}; "
            f"slowest {slowest[0] * 1000:.1f} ms ({len(slowest[1])} bytes)"
        )
