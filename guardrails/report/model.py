"""The report's pure core: what one mailbox row shows, and the counts over a tenant.

A row is checked with `decide_row`, the decision the sweep uses, so the report shows exactly what
the guardrail would put back. Apart from the policy it looks for **hijack suspects**: an Approved
mailbox whose address is not its owner's own (`own_addresses`: the owner's primary email or
sign-in name, a queue's own address), which is how one person's mail is pulled into another's
mailbox whoever set it up and whenever. No I/O here: rows and directory facts come in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from guardrails.engine import Fact, Facts, Outcome, decide_row, own_addresses
from guardrails.mailbox import Column, MailboxState
from guardrails.policy import Policy
from guardrails.values import EntityReference, Value, to_json

APPROVED = 1
APPROVAL_LABELS = {0: "Empty", 1: "Approved", 2: "Pending Approval", 3: "Rejected"}
HIJACK_RULE = "hijack_suspect"
NO_BUSINESS_UNIT = "(no business unit)"


def approval_label(approval: int | None) -> str | None:
    if approval is None:
        return None
    return APPROVAL_LABELS.get(approval, str(approval))


def plain(value: Value) -> object:
    """A governed column's value as JSON and CSV carry it: a lookup as its id."""
    if isinstance(value, EntityReference):
        return value.id
    return to_json(value)


@dataclass(frozen=True, slots=True)
class Person:
    """Whom a row points at, as people read it: a user, or for a queue mailbox the queue."""

    id: str | None
    name: str | None = None
    email: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"id": self.id, "name": self.name, "email": self.email}


@dataclass(frozen=True, slots=True)
class MailboxRow:
    """One mailbox row as read: the state decisions use, and what the report shows beside it."""

    state: MailboxState
    modified_on: str | None = None
    business_unit: str | None = None
    # Dataverse's formatted values: names for when the directory does not know the id.
    modified_by_name: str | None = None
    regarding_name: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One column the policy wants otherwise: what is there, and what a revert would write."""

    rule: str
    column: Column
    actual: Value
    expected: Value  # None when no safe value is known (an address nobody vouches for)
    enforced: bool
    message: str


@dataclass(frozen=True, slots=True)
class Hijack:
    """An Approved address that is not the mailbox's own."""

    address: str
    own: str | None  # the owner's primary address (the queue's), None when it has none


@dataclass(frozen=True, slots=True)
class MailboxFindings:
    """One row under one policy."""

    mailbox_id: str
    outcome: Outcome
    reason: str
    findings: tuple[Finding, ...] = ()
    hijack: Hijack | None = None
    unverified: tuple[Fact, ...] = ()

    @property
    def non_compliant(self) -> bool:
        return self.outcome is Outcome.VIOLATION

    @property
    def rules(self) -> frozenset[str]:
        return frozenset(finding.rule for finding in self.findings)


def hijack_suspect(state: MailboxState, facts: Facts) -> Hijack | None:
    """The Satya case, found in place: approved, and the address is not the mailbox's own.

    Only user and queue mailboxes have an owner to compare with; a row whose owner the
    directory does not know (None from `own_addresses`) is not judged here.
    """
    address = state.values.get(Column.EMAIL)
    regarding = state.regarding
    if state.approval != APPROVED or not isinstance(address, str) or not address:
        return None
    if regarding is None or regarding.logical_name not in ("systemuser", "queue"):
        return None
    own = own_addresses(facts, regarding)
    if own is None or address.lower() in own[0]:
        return None
    return Hijack(address=address, own=own[1])


def findings(state: MailboxState, policy: Policy, facts: Facts) -> MailboxFindings:
    """What `policy` would change on this row as it stands, and whether it is a hijack suspect."""
    decision = decide_row(state, policy, facts)
    return MailboxFindings(
        mailbox_id=state.mailbox_id,
        outcome=decision.outcome,
        reason=decision.reason,
        findings=tuple(
            Finding(v.rule, v.column, v.actual, v.expected, v.enforced, v.message)
            for v in decision.violations
        ),
        hijack=hijack_suspect(state, facts),
        unverified=decision.unverified,
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """A mailbox the report lists: non-compliant under a policy, or a hijack suspect."""

    row: MailboxRow
    owner: Person
    modified_by: Person
    current: MailboxFindings
    candidate: MailboxFindings | None = None

    @property
    def mailbox_id(self) -> str:
        return self.row.state.mailbox_id

    @property
    def name(self) -> str:
        return self.row.state.name or ""

    @property
    def hijack(self) -> Hijack | None:
        return self.current.hijack

    @property
    def business_unit(self) -> str:
        return self.row.business_unit or NO_BUSINESS_UNIT


@dataclass(slots=True)
class Tally:
    """Counts for one policy: mailboxes per rule and per business unit, findings per column."""

    non_compliant: int = 0
    ignored: int = 0  # an exempt mailbox, or out of the policy's scope
    unverified: int = 0  # a fact the decision needed was not known
    by_rule: Counter[str] = field(default_factory=Counter)
    by_column: Counter[str] = field(default_factory=Counter)
    by_business_unit: Counter[str] = field(default_factory=Counter)

    def seen(self, result: MailboxFindings) -> None:
        """Any row read (listed or not)."""
        self.ignored += result.outcome is Outcome.IGNORED
        self.unverified += bool(result.unverified)

    def add(self, result: MailboxFindings, business_unit: str) -> None:
        """A listed row."""
        if not result.non_compliant:
            return
        self.non_compliant += 1
        self.by_rule.update(result.rules)
        self.by_column.update(finding.column.value for finding in result.findings)
        self.by_business_unit[business_unit] += 1

    def to_dict(self) -> dict[str, object]:
        return {
            "non_compliant": self.non_compliant,
            "ignored": self.ignored,
            "unverified": self.unverified,
            "by_rule": dict(sorted(self.by_rule.items())),
            "by_column": dict(sorted(self.by_column.items())),
            "by_business_unit": dict(sorted(self.by_business_unit.items())),
        }


@dataclass(slots=True)
class Summary:
    """The counts over every row read; `candidate` only for a policy preview."""

    scanned: int = 0
    hijack_suspects: int = 0
    hijack_by_business_unit: Counter[str] = field(default_factory=Counter)
    # Rows whose owner (or queue) the directory does not hold: not judged as hijack suspects.
    owner_not_found: int = 0
    current: Tally = field(default_factory=Tally)
    candidate: Tally | None = None
    # Preview: mailboxes the candidate flags that the current policy does not, and the reverse.
    newly_non_compliant: int = 0
    no_longer_non_compliant: int = 0

    def add(self, entry: Entry) -> None:
        """A listed mailbox."""
        unit = entry.business_unit
        self.current.add(entry.current, unit)
        if entry.hijack is not None:
            self.hijack_suspects += 1
            self.hijack_by_business_unit[unit] += 1
        if entry.candidate is not None and self.candidate is not None:
            self.candidate.add(entry.candidate, unit)
            before, after = entry.current.non_compliant, entry.candidate.non_compliant
            self.newly_non_compliant += after and not before
            self.no_longer_non_compliant += before and not after

    def business_units(self) -> list[str]:
        """Every business unit with something to show, in name order."""
        units = set(self.current.by_business_unit) | set(self.hijack_by_business_unit)
        if self.candidate is not None:
            units |= set(self.candidate.by_business_unit)
        return sorted(units, key=str.lower)


@dataclass(frozen=True, slots=True)
class Report:
    """A whole report: where it was read, by which policies, the counts, and the listed rows."""

    organization_id: str
    dataverse_url: str
    policy: str
    generated_at: str
    accepted_values: str  # consulted, or why not
    summary: Summary
    entries: tuple[Entry, ...]
    candidate_policy: str | None = None

    @property
    def preview(self) -> bool:
        return self.candidate_policy is not None


def entry_order(entry: Entry) -> tuple[bool, str, str]:
    """Hijack suspects first, then by mailbox name."""
    return (entry.hijack is None, entry.name.lower(), entry.mailbox_id)
