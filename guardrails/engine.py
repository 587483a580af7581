"""The decision: (message, current row if known, policy, facts) -> what to do and why.

Pure and total: no I/O, no exceptions for any input the parser accepts. What the engine cannot
know offline (the owner's directory address, the initiator's roles, the organization's defaults,
the row itself) it names in `unverified`; the executor looks those up and decides again, and
offline replay reports them as not verifiable rather than guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from guardrails.mailbox import (
    COLUMN_LABELS,
    DELIVERY_COLUMNS,
    GOVERNED,
    GUARDRAIL_TAG,
    MAILBOX,
    Column,
    MailboxEvent,
    MailboxState,
    describe,
    mailbox_event,
    patch_from_body,
    webapi_body,
)
from guardrails.message import ExecutionContext, Rejection, malformed
from guardrails.policy.model import ORGANIZATION_DEFAULT, Mode, Policy, Scope
from guardrails.values import ContractError, EntityReference, Value, from_json, to_json

GOVERNED_MESSAGES = frozenset({"Create", "Update", "Reconcile"})


class Outcome(StrEnum):
    COMPLIANT = "compliant"
    VIOLATION = "violation"
    IGNORED = "ignored"
    REJECTED = "rejected"


class Fact(StrEnum):
    """Something a decision needed but was not given."""

    MAILBOX_STATE = "mailbox_state"
    INITIATOR = "initiator"
    OWNER = "owner"
    QUEUE = "queue"
    ORGANIZATION_DEFAULTS = "organization_defaults"
    ACCEPTED = "accepted"


@dataclass(frozen=True, slots=True)
class UserFacts:
    id: str
    email: str | None = None  # the primary email (internalemailaddress)
    name: str | None = None
    upn: str | None = None  # the sign-in name (domainname)
    role_ids: frozenset[str] = frozenset()
    role_names: frozenset[str] = frozenset()  # lower-cased
    disabled: bool = False
    # accessmode Read-Write (0) or Administrative (1): a person at a keyboard. The platform's
    # own principals (SYSTEM, server-side sync, non-interactive application users) are not.
    interactive: bool = True


@dataclass(frozen=True, slots=True)
class QueueFacts:
    """A queue as Dataverse has it: its own address, and the person answerable for it."""

    id: str
    name: str | None = None
    email: str | None = None
    # The owning user, or for a team-owned queue the team's administrator.
    owner_user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """What the executor looked up; None means not known (offline, or not needed yet)."""

    guardrail_user_id: str | None = None
    initiator: UserFacts | None = None
    owner: UserFacts | None = None
    queue: QueueFacts | None = None
    # Who wrote the row after the event, learnt from a conflicting write (a 412): when that
    # person is an enabled, interactive, exempt user, their value stands even if it equals the
    # user's. Only set after a conflict: server-side sync rewrites mailbox rows all the time, as
    # SYSTEM, and that must never count as an administrator's decision.
    last_writer: UserFacts | None = None
    # Values the guardrail accepted for this mailbox (an exempt user's change, a revert): a row
    # read for an incomplete message keeps them rather than treating them as drift.
    accepted: Mapping[Column, Value] | None = None
    # Delivery-method columns -> int, and Column.SERVER_PROFILE -> the profile's id.
    organization_defaults: Mapping[Column, int | str] | None = None


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    column: Column
    actual: Value
    expected: Value  # what a revert writes; None when no safe value is known
    enforced: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "column": self.column.value,
            "actual": to_json(self.actual),
            "expected": to_json(self.expected),
            "enforced": self.enforced,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Violation:
        return cls(
            rule=str(data["rule"]),
            column=Column(data["column"]),
            actual=from_json(data.get("actual")),
            expected=from_json(data.get("expected")),
            enforced=bool(data.get("enforced")),
            message=str(data.get("message", "")),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The plan and the audit record in one: what was seen, what would change, and why."""

    outcome: Outcome
    reason: str
    mailbox_id: str | None = None
    message_name: str | None = None
    entity: str | None = None
    organization_id: str | None = None
    correlation_id: str | None = None
    initiating_user_id: str | None = None
    owner_user_id: str | None = None
    violations: tuple[Violation, ...] = ()
    # Only the enforced violations' columns, with the values a revert writes.
    patch: Mapping[Column, Value] = field(default_factory=dict)
    restore_approval: bool = False
    notify_owner: bool = False
    notify_also: tuple[str, ...] = ()
    unverified: tuple[Fact, ...] = ()
    notes: tuple[str, ...] = ()
    # Set when a violation cannot be put right by the guardrail (no safe value is known): the
    # admins are told that the mailbox needs a person.
    attention: str | None = None
    # The governed columns the caller changed (kept apart from the event so a stored plan has it).
    changed: tuple[str, ...] = ()
    # For an IGNORED decision: the user whose exemption let the change stand.
    exempted_by: str | None = None
    event: MailboxEvent | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "mailbox_id": self.mailbox_id,
            "message_name": self.message_name,
            "entity": self.entity,
            "organization_id": self.organization_id,
            "correlation_id": self.correlation_id,
            "initiating_user_id": self.initiating_user_id,
            "owner_user_id": self.owner_user_id,
            "violations": [v.to_dict() for v in self.violations],
            "patch": webapi_body(self.patch),
            "restore_approval": self.restore_approval,
            "notify_owner": self.notify_owner,
            "notify_also": list(self.notify_also),
            "unverified": [fact.value for fact in self.unverified],
            "notes": list(self.notes),
            "attention": self.attention,
            "changed": list(self.changed),
            "exempted_by": self.exempted_by,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        """The plan back from its stored form (the ledger keeps `to_dict()`); no event."""
        return cls(
            outcome=Outcome(data["outcome"]),
            reason=str(data.get("reason", "")),
            mailbox_id=data.get("mailbox_id"),
            message_name=data.get("message_name"),
            entity=data.get("entity"),
            organization_id=data.get("organization_id"),
            correlation_id=data.get("correlation_id"),
            initiating_user_id=data.get("initiating_user_id"),
            owner_user_id=data.get("owner_user_id"),
            violations=tuple(Violation.from_dict(v) for v in data.get("violations", ())),
            patch=patch_from_body(data.get("patch") or {}),
            restore_approval=bool(data.get("restore_approval")),
            notify_owner=bool(data.get("notify_owner")),
            notify_also=tuple(data.get("notify_also", ())),
            unverified=tuple(Fact(f) for f in data.get("unverified", ())),
            notes=tuple(data.get("notes", ())),
            attention=data.get("attention"),
            changed=tuple(data.get("changed", ())),
            exempted_by=data.get("exempted_by"),
        )


def own_addresses(
    facts: Facts, regarding: EntityReference | None
) -> tuple[frozenset[str], str | None] | None:
    """The addresses that are a mailbox's own, lower-cased, and the one a revert restores.

    A user mailbox owns its owner's primary email (`internalemailaddress`) and sign-in name
    (`domainname`): the test Dataverse applies to self-approval. A queue mailbox owns its queue's
    address. The second item is the primary email (or the queue's address). None when the
    directory facts for `regarding` are not known yet.
    """
    if regarding is None or regarding.logical_name not in ("systemuser", "queue"):
        return frozenset(), None
    if regarding.logical_name == "queue":
        queue = facts.queue
        if queue is None or queue.id != regarding.id:
            return None
        return frozenset({queue.email.lower()} if queue.email else ()), queue.email
    owner = facts.owner
    if owner is None or owner.id != regarding.id:
        return None
    own = frozenset(address.lower() for address in (owner.email, owner.upn) if address)
    return own, owner.email


# Nothing looked up yet (Facts are immutable, so one instance serves every offline decision).
_NO_FACTS = Facts()


def reject(rejection: Rejection) -> Decision:
    return Decision(Outcome.REJECTED, rejection.reason)


def decide(
    context: ExecutionContext | Rejection,
    policy: Policy,
    facts: Facts | None = None,
    state: MailboxState | None = None,
) -> Decision:
    if isinstance(context, Rejection):
        return reject(context)
    return _Decider(context, policy, facts or _NO_FACTS, state).run()


RECONCILE = "Reconcile"


def row_context(mailbox_id: str, policy: Policy) -> ExecutionContext:
    """The context of a check without a message: a mailbox row as it stands, every governed
    column under review (as for a message too large to carry the row)."""
    return ExecutionContext(
        message_name=RECONCILE,
        primary_entity_name=MAILBOX,
        primary_entity_id=mailbox_id,
        organization_id=policy.organization.id,
        oversize=True,
    )


def decide_row(state: MailboxState, policy: Policy, facts: Facts | None = None) -> Decision:
    """Is this row, as it stands, what the policy wants? The sweep's and the report's decision.

    The same rules as for an event, on every governed column: nobody initiated anything, so no
    user exemption applies; an exempt mailbox is left alone, and a value the guardrail recorded
    as accepted (an exempt user's change) is not drift. `changes: forbidden` is about changes,
    so a row is only held to `allowed_domains` and `must_match_owner`.
    """
    return decide(row_context(state.mailbox_id, policy), policy, facts, state)


class _Decider:
    def __init__(
        self, context: ExecutionContext, policy: Policy, facts: Facts, state: MailboxState | None
    ) -> None:
        self.context = context
        self.policy = policy
        self.facts = facts
        self.state = state
        self.unverified: list[Fact] = []
        self.notes: list[str] = []
        self.attention: str | None = None
        self.event: MailboxEvent | None = None

    def need(self, fact: Fact) -> None:
        if fact not in self.unverified:
            self.unverified.append(fact)

    def decision(self, outcome: Outcome, reason: str, **kwargs: Any) -> Decision:
        context = self.context
        return Decision(
            outcome=outcome,
            reason=reason,
            mailbox_id=context.primary_entity_id or None,
            message_name=context.message_name,
            entity=context.primary_entity_name,
            organization_id=context.organization_id,
            correlation_id=context.correlation_id,
            initiating_user_id=context.initiating_user_id,
            owner_user_id=self.owner_user_id(),
            unverified=tuple(self.unverified),
            notes=tuple(self.notes),
            attention=self.attention,
            changed=tuple(sorted(c.value for c in self.event.changed)) if self.event else (),
            event=self.event,
            **kwargs,
        )

    def owner_user_id(self) -> str | None:
        """Who answers for this mailbox: its regarding user, or for a queue the queue's owning
        user (a team-owned queue's team administrator), once the queue has been looked up."""
        regarding = self.regarding()
        if regarding is None:
            owner = self.owner()
            return owner.id if owner is not None and owner.logical_name == "systemuser" else None
        if regarding.logical_name == "systemuser":
            return regarding.id
        queue = self.queue_facts(regarding)
        return queue.owner_user_id if queue is not None else None

    def queue_facts(self, regarding: EntityReference) -> QueueFacts | None:
        queue = self.facts.queue
        if regarding.logical_name != "queue" or queue is None or queue.id != regarding.id:
            return None
        return queue

    def regarding(self) -> EntityReference | None:
        if self.state is not None and self.state.regarding is not None:
            return self.state.regarding
        return self.event.regarding if self.event else None

    def owner(self) -> EntityReference | None:
        if self.state is not None and self.state.owner is not None:
            return self.state.owner
        return self.event.owner if self.event else None

    def run(self) -> Decision:
        context, policy = self.context, self.policy
        if context.primary_entity_name != MAILBOX:
            return self.decision(
                Outcome.IGNORED,
                f"Not a mailbox event ({context.message_name} of {context.primary_entity_name}).",
            )
        # Nothing is done with other tables' events, whichever organization sent them.
        if context.organization_id != policy.organization.id:
            return self.decision(
                Outcome.REJECTED,
                f"The message is from organization {context.organization_id or '(none)'}"
                f" ({context.organization_name or 'unnamed'}), but this policy governs "
                f"{policy.organization.id}. Point this organization's service endpoint at its "
                "own queue, or deploy a policy for it.",
            )
        if context.message_name not in GOVERNED_MESSAGES:
            return self.decision(
                Outcome.IGNORED, f"{context.message_name} of a mailbox is not governed."
            )
        try:
            self.event = event = mailbox_event(context)
        except (ContractError, RecursionError) as exc:
            # A value the decision reads is malformed: the same rejection as a parse finds.
            return reject(malformed(exc))
        early = self.not_governed(event)
        if early is not None:
            return early
        return self.evaluate(event)

    def not_governed(self, event: MailboxEvent) -> Decision | None:
        """What is decided before any rule: the guardrail's own write, an exempt mailbox."""
        # Recognised by who made the change, never by what the message says about itself: any
        # caller can put the guardrail's tag on a request.
        if self.facts.guardrail_user_id in event.initiators:
            return self.decision(Outcome.IGNORED, "The guardrail's own write.")
        if GUARDRAIL_TAG in event.tags:
            self.notes.append(
                f"The request carries the tag '{GUARDRAIL_TAG}', but it was not made by the "
                "guardrail's application user; the tag exempts nothing."
            )
        if event.mailbox_id in self.policy.exemptions.mailboxes:
            return self.decision(Outcome.IGNORED, "The mailbox is exempt.")
        return None

    def exemption(self, event: MailboxEvent) -> Decision | None:
        """A violation by an exempt user (or overwritten by one after a conflict) stands."""
        initiator = event.initiating_user_id
        why = self.exempt(initiator, self.facts.initiator, need=Fact.INITIATOR)
        if why is not None:
            return self.decision(Outcome.IGNORED, why, exempted_by=initiator)
        writer = self.facts.last_writer
        if (
            writer is not None
            and writer.id != initiator
            and writer.id != self.facts.guardrail_user_id
            and writer.interactive
        ):
            why = self.exempt(writer.id, writer, need=None)
            if why is not None:
                return self.decision(
                    Outcome.IGNORED,
                    f"The row was written again after this change, and that write stands: {why}",
                    exempted_by=writer.id,
                )
        return None

    def exempt(
        self, user_id: str | None, user: UserFacts | None, *, need: Fact | None
    ) -> str | None:
        """Why a change by this user is not governed, or None (asking for `need` if unknown)."""
        exemptions = self.policy.exemptions
        if user_id is not None and user_id in exemptions.users:
            return f"Changed by exempt user {user_id}."
        needs_lookup = exemptions.security_roles or any("@" in u for u in exemptions.users)
        if not needs_lookup or user_id is None:
            return None
        if user is None:
            if need is not None:
                self.need(need)
            return None
        for address in (user.email, user.upn):
            if address is not None and address.lower() in exemptions.users:
                return f"Changed by exempt user {address}."
        for role in exemptions.security_roles:
            if role.lower() in user.role_ids or role.lower() in user.role_names:
                return f"Changed by {user.email or user.id}, who holds exempt role '{role}'."
        return None

    def in_scope(self) -> str | None:
        """None when governed, else why not."""
        scope = self.policy.scope
        if scope is Scope.ALL:
            return None
        regarding = self.regarding()
        if regarding is None:
            self.need(Fact.MAILBOX_STATE)
            return None
        is_queue = regarding.logical_name == "queue"
        if scope is Scope.USER_MAILBOXES and is_queue:
            return "A queue mailbox; the policy governs user mailboxes only."
        if scope is Scope.QUEUE_MAILBOXES and not is_queue:
            return "A user mailbox; the policy governs queue mailboxes only."
        return None

    def subjects(self, event: MailboxEvent) -> dict[Column, Value]:
        """The governed columns this event is about, with their current values."""
        state = self.state
        current: Mapping[Column, Value] = state.values if state is not None else {}
        if event.incomplete:
            if state is None:
                self.need(Fact.MAILBOX_STATE)
                self.notes.append(
                    "The message does not carry the row (over 192 KB, or no Target): "
                    "the row must be read from Dataverse."
                )
            accepted = self.facts.accepted
            kept = {
                column: value
                for column, value in current.items()
                if accepted and column in accepted and accepted[column] == value
            }
            for column, value in kept.items():
                self.notes.append(
                    f"{column.value} is {describe(column, value)}, a value the guardrail accepted "
                    "earlier (an exempt user's change): not drift."
                )
            return {c: current[c] for c in GOVERNED if c in current and c not in kept}
        if event.message == "Create":
            subjects: dict[Column, Value] = {}
            for column in GOVERNED:
                if column in current:
                    subjects[column] = current[column]
                elif column in event.changed:
                    subjects[column] = event.changed[column]
                elif self.governs(column):
                    self.need(Fact.MAILBOX_STATE)
            return subjects
        subjects = {}
        for column, value in event.changed.items():
            if column in current and current[column] != value:
                # A later change owns this column now; its own event decides about it.
                self.notes.append(
                    f"{column.value} changed again since this event "
                    f"({describe(column, value)} -> {describe(column, current[column])})."
                )
                continue
            subjects[column] = value
        return subjects

    def governs(self, column: Column) -> bool:
        rules = self.policy.rules
        if column in DELIVERY_COLUMNS:
            return (
                rules.delivery_methods is not None and column in rules.delivery_methods.expected()
            )
        if column is Column.EMAIL:
            return rules.email_address is not None and (
                bool(rules.email_address.allowed_domains) or rules.email_address.must_match_owner
            )
        return rules.server_profile is not None

    def evaluate(self, event: MailboxEvent) -> Decision:
        out_of_scope = self.in_scope()
        if out_of_scope:
            return self.decision(Outcome.IGNORED, out_of_scope)
        subjects = self.subjects(event)
        violations: list[Violation] = []
        for column, value in subjects.items():
            violation = self.check(event, column, value)
            if violation is not None:
                violations.append(violation)
        if violations and event.incomplete and self.state and self.facts.accepted is None:
            self.need(Fact.ACCEPTED)  # a value an exempt user set earlier is not drift
        if not violations:
            if not subjects and not event.incomplete:
                reason = "No governed column changed."
            elif self.unverified:
                reason = "No violation found in what could be checked; see unverified."
            else:
                reason = "The governed columns have the organization's values."
            return self.decision(Outcome.COMPLIANT, reason)
        return self.violation(event, violations)

    def violation(self, event: MailboxEvent, violations: list[Violation]) -> Decision:
        """The violation's plan, unless an exempt user made the change.

        Only a violation asks whose change it was (a compliant change needs no exemption, so the
        initiator is never looked up for it); the plan is made after that question so that its
        `unverified` says when the initiator must be looked up.
        """
        patch = {v.column: v.expected for v in violations if v.enforced and v.expected is not None}
        email_rule = self.policy.rules.email_address
        notifications = self.policy.notifications
        enforced = any(v.enforced for v in violations)
        notify_owner = notifications.enabled and notifications.notify_owner and enforced
        regarding = self.regarding()
        queue_unknown = (
            regarding is not None
            and regarding.logical_name == "queue"
            and self.queue_facts(regarding) is None
        )
        if notify_owner and queue_unknown:
            self.need(Fact.QUEUE)  # the queue's owner is the one to tell
        exempted = self.exemption(event)
        if exempted is not None:
            return exempted
        summary = "; ".join(v.message for v in violations)
        action = "Reverting" if patch else "Recording"
        return self.decision(
            Outcome.VIOLATION,
            f"{action}: {summary}",
            violations=tuple(violations),
            patch=patch,
            restore_approval=bool(
                email_rule and email_rule.restore_approval and Column.EMAIL in patch
            ),
            notify_owner=notify_owner,
            notify_also=notifications.extra_recipients if notifications.enabled else (),
        )

    def check(self, event: MailboxEvent, column: Column, value: Value) -> Violation | None:
        if column in DELIVERY_COLUMNS:
            return self.check_delivery(column, value)
        if column is Column.SERVER_PROFILE:
            return self.check_server_profile(value)
        return self.check_email(event, value)

    def organization_default(self, column: Column) -> int | str | None:
        defaults = self.facts.organization_defaults
        if defaults is None or column not in defaults:
            self.need(Fact.ORGANIZATION_DEFAULTS)
            return None
        return defaults[column]

    def check_delivery(self, column: Column, value: Value) -> Violation | None:
        rule = self.policy.rules.delivery_methods
        expected = rule.expected().get(column) if rule is not None else None
        if rule is None or expected is None:
            return None
        if expected == ORGANIZATION_DEFAULT:
            expected = self.organization_default(column)
            if expected is None:
                return None
        if value == expected:
            return None
        return Violation(
            rule="delivery_methods",
            column=column,
            actual=value,
            expected=expected,
            enforced=self.policy.mode_of(rule) is Mode.ENFORCE,
            message=f"{COLUMN_LABELS[column]} set to {describe(column, value)}; "
            f"the organization uses {describe(column, expected)}",
        )

    def check_server_profile(self, value: Value) -> Violation | None:
        rule = self.policy.rules.server_profile
        if rule is None:
            return None
        expected_id: str | int | None = rule.expected
        if expected_id == ORGANIZATION_DEFAULT:
            expected_id = self.organization_default(Column.SERVER_PROFILE)
            if expected_id is None:
                return None
        actual_id = value.id if isinstance(value, EntityReference) else None
        if actual_id == str(expected_id).lower():
            return None
        expected = EntityReference("emailserverprofile", str(expected_id).lower())
        return Violation(
            rule="server_profile",
            column=Column.SERVER_PROFILE,
            actual=value,
            expected=expected,
            enforced=self.policy.mode_of(rule) is Mode.ENFORCE,
            message=f"Server profile set to {describe(Column.SERVER_PROFILE, value)}; "
            f"the organization uses {expected.id}",
        )

    def own_addresses(self, *, trusted: bool) -> tuple[frozenset[str], str | None] | None:
        """This mailbox's own addresses (see `own_addresses`), or None after asking for facts.

        With `trusted`, whose mailbox it is comes only from the row read from Dataverse, never
        from the message, because the address it yields is written and approved.
        """
        if trusted and self.state is None:
            self.need(Fact.MAILBOX_STATE)
            return None
        regarding = self.state.regarding if trusted and self.state else self.regarding()
        if regarding is None and self.state is None:
            self.need(Fact.MAILBOX_STATE)
            return None
        own = own_addresses(self.facts, regarding)
        if own is None:
            assert regarding is not None
            self.need(Fact.QUEUE if regarding.logical_name == "queue" else Fact.OWNER)
        return own

    def domain_problem(self, text: str) -> str | None:
        rule = self.policy.rules.email_address
        assert rule is not None
        domain = text.rpartition("@")[2].lower()
        if rule.allowed_domains and domain not in rule.allowed_domains:
            return f"{domain or 'an empty address'} is not an allowed domain"
        return None

    def email_problems(self, address: Value) -> list[str]:
        rule = self.policy.rules.email_address
        assert rule is not None
        text = address if isinstance(address, str) else ""
        problems = [problem for problem in (self.domain_problem(text),) if problem]
        if rule.must_match_owner:
            own = self.own_addresses(trusted=False)
            if own is not None and text.lower() not in own[0]:
                home = own[1] or "(none known)"
                problems.append(f"it is not the owner's address {home}")
        return problems

    def revert_address(self, event: MailboxEvent, changed: bool) -> str | None:
        """The address a revert writes: the previous one if it is the mailbox's own, else the
        owner's primary email (a queue's address); never a value only the message vouches for."""
        own = self.own_addresses(trusted=True)
        if own is None:
            return None
        owned, home = own
        candidates: list[str] = []
        previous = event.previous.get(Column.EMAIL) if changed else None
        if isinstance(previous, str) and previous.lower() in owned:
            candidates.append(previous)
        if home:
            candidates.append(home)
        for candidate in candidates:
            if self.domain_problem(candidate) is None:
                return candidate
        self.attention = (
            "no address of the mailbox's own owner is known or allowed, so the guardrail wrote "
            "no address: the mailbox needs a person to set it"
        )
        return None

    def check_email(self, event: MailboxEvent, value: Value) -> Violation | None:
        rule = self.policy.rules.email_address
        if rule is None:
            return None
        problems = []
        changed = (
            event.message == "Update" and not event.incomplete and Column.EMAIL in event.changed
        )
        if changed and rule.changes == "forbidden":
            problems.append("email address changes are not allowed")
        problems += self.email_problems(value)
        if not problems:
            return None
        expected = self.revert_address(event, changed)
        if expected is not None:
            reverts = ""
        elif self.attention is None and any(
            fact in self.unverified for fact in (Fact.MAILBOX_STATE, Fact.OWNER, Fact.QUEUE)
        ):
            reverts = " (the address to restore is the owner's own, looked up in Dataverse)"
        else:
            reverts = " (no safe address is known to revert to)"
        return Violation(
            rule="email_address",
            column=Column.EMAIL,
            actual=value,
            expected=expected,
            enforced=self.policy.mode_of(rule) is Mode.ENFORCE,
            message=f"Email address set to {describe(Column.EMAIL, value)}: "
            + ", ".join(problems)
            + reverts,
        )
