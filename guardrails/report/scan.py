"""One pass over a tenant's mailbox rows: every row checked under the current policy (and a
candidate's, for a preview), the counts kept, only the rows worth listing held.

Memory: the rows stream through; what stays is the directory (users and queues by id, loaded
once) and the listed entries. Facts a decision lacks are looked up here, as the executor does:
the organization's email settings once, a mailbox's accepted values only for a row that shows
drift (one storage read each, and none without storage: then nothing counts as accepted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from guardrails.engine import Fact, Facts, QueueFacts, UserFacts
from guardrails.mailbox import Column, MailboxState
from guardrails.policy import Policy
from guardrails.report.model import (
    Entry,
    MailboxFindings,
    MailboxRow,
    Person,
    Summary,
    Tally,
    entry_order,
    findings,
)
from guardrails.values import EntityReference, Value

AcceptedLookup = Callable[[str], Mapping[Column, Value]]
DefaultsLookup = Callable[[], Mapping[Column, int | str]]


@dataclass(frozen=True, slots=True)
class Directory:
    """The directory entries decisions compare with: users and queues by lower-case id."""

    users: Mapping[str, UserFacts] = field(default_factory=dict)
    queues: Mapping[str, QueueFacts] = field(default_factory=dict)

    def regarding(self, state: MailboxState) -> MailboxState:
        """The row with whose mailbox it is named by kind: a lookup read without its logical
        name (the annotation not sent) is a user's or a queue's by the directory's ids."""
        regarding = state.regarding
        if regarding is None or regarding.logical_name in ("systemuser", "queue"):
            return state
        kind = "systemuser" if regarding.id in self.users else None
        kind = "queue" if regarding.id in self.queues else kind
        if kind is None:
            return state
        named = EntityReference(kind, regarding.id, regarding.name)
        return replace(state, regarding=named)

    def facts_for(self, state: MailboxState) -> Facts:
        regarding = state.regarding
        if regarding is None:
            return Facts()
        if regarding.logical_name == "queue":
            return Facts(queue=self.queues.get(regarding.id))
        return Facts(owner=self.users.get(regarding.id))

    def knows(self, regarding: EntityReference | None) -> bool:
        if regarding is None or regarding.logical_name not in ("systemuser", "queue"):
            return True  # nobody to know
        table: Mapping[str, object] = (
            self.queues if regarding.logical_name == "queue" else self.users
        )
        return regarding.id in table

    def owner(self, row: MailboxRow) -> Person:
        regarding = row.state.regarding
        if regarding is None:
            return Person(None)
        if regarding.logical_name == "queue":
            queue = self.queues.get(regarding.id)
            if queue is not None:
                return Person(queue.id, queue.name, queue.email)
        else:
            user = self.users.get(regarding.id)
            if user is not None:
                return Person(user.id, user.name, user.email)
        return Person(regarding.id, row.regarding_name)

    def user(self, user_id: str | None, name: str | None = None) -> Person:
        user = self.users.get(user_id) if user_id else None
        if user is None:
            return Person(user_id, name)
        return Person(user.id, user.name or name, user.email)


class _Facts:
    """Looks up what a decision could not verify, each kind at most once per row."""

    def __init__(self, accepted: AcceptedLookup | None, defaults: DefaultsLookup) -> None:
        self._accepted = accepted
        self._defaults_lookup = defaults
        self._defaults: Mapping[Column, int | str] | None = None

    def resolve(self, result: MailboxFindings, facts: Facts) -> Facts | None:
        learned = facts
        if Fact.ORGANIZATION_DEFAULTS in result.unverified and facts.organization_defaults is None:
            if self._defaults is None:
                self._defaults = self._defaults_lookup()
            learned = replace(learned, organization_defaults=self._defaults)
        if Fact.ACCEPTED in result.unverified and facts.accepted is None:
            accepted = self._accepted(result.mailbox_id) if self._accepted else {}
            learned = replace(learned, accepted=accepted)
        return None if learned is facts else learned


def _check(
    state: MailboxState, policy: Policy, facts: Facts, lookups: _Facts
) -> tuple[MailboxFindings, Facts]:
    """The row under `policy`, and the facts as learned (a preview's second policy reuses them:
    one storage read per mailbox at most)."""
    result = findings(state, policy, facts)
    for _ in range(len(Fact)):
        more = lookups.resolve(result, facts)
        if more is None:
            break
        facts = more
        result = findings(state, policy, facts)
    return result, facts


def scan(
    rows: Iterable[MailboxRow],
    directory: Directory,
    policy: Policy,
    candidate: Policy | None = None,
    *,
    accepted: AcceptedLookup | None = None,
    organization_defaults: DefaultsLookup,
) -> tuple[Summary, list[Entry]]:
    """Check every row; the counts, and the entries (hijack suspects first, then by name).

    Listed mailboxes are kept by id (a row met twice, having moved between pages, is listed
    once, as last read), and the counts about them are taken from that listing at the end.
    """
    lookups = _Facts(accepted, organization_defaults)
    summary = Summary(candidate=Tally() if candidate is not None else None)
    listed: dict[str, Entry] = {}
    for row in rows:
        state = directory.regarding(row.state)
        if state is not row.state:
            row = replace(row, state=state)
        summary.scanned += 1
        if not directory.knows(state.regarding):
            summary.owner_not_found += 1
        facts = directory.facts_for(state)
        current, facts = _check(state, policy, facts, lookups)
        summary.current.seen(current)
        other = None
        if candidate is not None and summary.candidate is not None:
            other, _ = _check(state, candidate, facts, lookups)
            summary.candidate.seen(other)
        if current.non_compliant or current.hijack or (other is not None and other.non_compliant):
            owner = directory.owner(row)
            modified_by = directory.user(state.modified_by, row.modified_by_name)
            listed[state.mailbox_id] = Entry(row, owner, modified_by, current, other)
    for entry in listed.values():
        summary.add(entry)
    return summary, sorted(listed.values(), key=entry_order)
