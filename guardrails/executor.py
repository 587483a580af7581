"""Applies a decision: looks up what it lacked, writes only the difference, tells the owner.

The same path serves enforcement and dry run: the plan is computed identically and the audit
record is written either way; dry run only skips the write and the mail. Results are typed
(Done, NothingToDo, RetryLater, GiveUp) so the caller chooses how to settle the message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from guardrails.audit import AuditSink, audit_record
from guardrails.clients.dataverse import DataverseClient, etag_for
from guardrails.clients.graph import Mail
from guardrails.engine import Decision, Fact, Facts, Outcome, UserFacts, decide, own_addresses
from guardrails.errors import (
    AuthenticationError,
    GuardrailsError,
    NotFound,
    PreconditionFailed,
    ServiceError,
)
from guardrails.mailbox import GUARDRAIL_TAG, Column, MailboxState, webapi_body
from guardrails.message import DEFAULT_MAX_BODY_BYTES, ExecutionContext, Rejection, parse_message
from guardrails.notify import NotificationThrottle, recipients
from guardrails.outcomes import DEFAULT_RETRY_DELAY, Done, GiveUp, NothingToDo, Result, RetryLater
from guardrails.policy.model import Policy
from guardrails.render import render
from guardrails.values import EntityReference

APPROVED = 1


class Mailer(Protocol):
    def send_mail(self, mail: Mail) -> None: ...


@dataclass(slots=True)
class _Attempt:
    """What one message has gathered so far; lives only while that message is processed."""

    context: ExecutionContext
    facts: Facts
    state: MailboxState | None = None
    errors: list[str] = field(default_factory=list)


class Executor:
    def __init__(
        self,
        *,
        policy: Policy,
        dataverse: DataverseClient,
        mailer: Mailer | None,
        audit: AuditSink,
        throttle: NotificationThrottle | None = None,
        dry_run: bool = False,
        max_conflicts: int = 3,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.dataverse = dataverse
        self.mailer = mailer
        self.audit = audit
        limits = policy.notifications.throttle
        self.throttle = throttle or NotificationThrottle(
            limits.max_per_mailbox, limits.window_seconds
        )
        self.dry_run = dry_run
        self.max_conflicts = max_conflicts
        self.max_body_bytes = max_body_bytes
        self.clock = clock

    def process(
        self,
        body: bytes,
        *,
        message_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> Result:
        started = self.clock()
        try:
            parsed = parse_message(body, properties, content_type, max_bytes=self.max_body_bytes)
            result = self._run(parsed)
        except Exception as exc:
            # parse and decide are total, so this is a defect or an edge client raising an
            # error it should have typed; either way the message is recorded, not lost.
            result = RetryLater(
                f"unexpected {type(exc).__name__} while handling the message (a defect; "
                f"please report it): {str(exc)[:300]}"
            )
        self.audit(
            audit_record(
                result,
                message_id=message_id,
                dry_run=self.dry_run,
                duration_ms=round((self.clock() - started) * 1000, 1),
            )
        )
        return result

    def _run(self, parsed: ExecutionContext | Rejection) -> Result:
        decision = decide(parsed, self.policy)  # offline first: most messages end here
        if decision.outcome is Outcome.REJECTED:
            return GiveUp(decision.reason, decision)
        if not isinstance(parsed, ExecutionContext) or decision.event is None:
            return NothingToDo(decision, decision.reason)  # not a governed mailbox event
        try:
            return self._enforce(parsed)
        except NotFound as exc:
            return NothingToDo(
                decision, f"A row this needs no longer exists in Dataverse: {exc.message}"
            )
        except (AuthenticationError, ServiceError) as exc:
            if exc.retryable:
                delay = getattr(exc, "retry_after", None) or DEFAULT_RETRY_DELAY
                return RetryLater(str(exc), delay, decision)
            return GiveUp(str(exc), decision)

    def _enforce(self, context: ExecutionContext) -> Result:
        attempt = _Attempt(context, Facts(guardrail_user_id=self.dataverse.whoami().user_id))
        decision = self._decide(attempt)
        if decision.outcome is not Outcome.VIOLATION:
            return NothingToDo(decision, decision.reason)
        wrote = False
        written: MailboxState | None = None
        if decision.patch and not self.dry_run:
            decision, written = self._write(attempt, decision)
            wrote = written is not None
            if decision.outcome is not Outcome.VIOLATION:
                return NothingToDo(decision, decision.reason)
        if written is not None and decision.restore_approval:
            self._restore_approval(attempt, written)
        notified = self._notify(attempt, decision, wrote=wrote)
        return Done(decision, wrote=wrote, notified=notified, errors=tuple(attempt.errors))

    def _restore_approval(self, attempt: _Attempt, written: MailboxState) -> None:
        """Re-approve the address the guardrail wrote back, and only while it is still there.

        Approval lets server-side sync bring that address's mail into Dataverse, so it is given
        only to an address that is the mailbox's own (the owner's directory address or sign-in
        name, a queue's address), in a PATCH of its own (as approval requires) conditional on the
        row being exactly as checked: a user who changes the address again in between gets a 412,
        not an approval.
        """
        mailbox_id = attempt.context.primary_entity_id
        try:
            state = written if written.etag else self.dataverse.get_mailbox(mailbox_id)
            for _ in range(self.max_conflicts):
                own = own_addresses(attempt.facts, state.regarding)
                address = state.values.get(Column.EMAIL)
                if own is None or not isinstance(address, str) or address.lower() not in own[0]:
                    attempt.errors.append(
                        "approval not restored: the address on the row is no longer the "
                        "mailbox's own"
                    )
                    return
                if state.approval == APPROVED:
                    return
                try:
                    self.dataverse.update_mailbox(
                        mailbox_id, {"emailrouteraccessapproval": APPROVED}, etag=state.etag or "*"
                    )
                    return
                except PreconditionFailed:
                    state = self.dataverse.get_mailbox(mailbox_id)
            attempt.errors.append("approval not restored: the row kept changing")
        except GuardrailsError as exc:
            # The revert stands and a redelivery would find nothing to do: record, don't retry.
            attempt.errors.append(f"restoring approval failed: {exc}")

    def _decide(self, attempt: _Attempt) -> Decision:
        """Decide, look up what the decision could not verify, decide again (bounded)."""
        decision = decide(attempt.context, self.policy, attempt.facts, attempt.state)
        for _ in range(len(Fact)):
            if not self._resolve(attempt, decision):
                break
            decision = decide(attempt.context, self.policy, attempt.facts, attempt.state)
        return decision

    def _resolve(self, attempt: _Attempt, decision: Decision) -> bool:
        """Look up the facts `decision` lacked; False when nothing more can be learned."""
        learned = False
        for fact in decision.unverified:
            facts = attempt.facts
            initiator_id = attempt.context.initiating_user_id
            if fact is Fact.MAILBOX_STATE and attempt.state is None:
                attempt.state = self.dataverse.get_mailbox(attempt.context.primary_entity_id)
            elif fact is Fact.INITIATOR and facts.initiator is None and initiator_id:
                initiator = self._user(attempt, initiator_id, with_roles=True)
                attempt.facts = replace(facts, initiator=initiator)
            elif fact is Fact.OWNER and self._owner_unknown(attempt, decision):
                self._owner(attempt, decision)
            elif fact is Fact.QUEUE and facts.queue is None:
                regarding = self._regarding(attempt, decision)
                if regarding is None or regarding.logical_name != "queue":
                    continue
                attempt.facts = replace(facts, queue=self.dataverse.get_queue(regarding.id))
            elif fact is Fact.ORGANIZATION_DEFAULTS and facts.organization_defaults is None:
                defaults = self.dataverse.organization_defaults()
                attempt.facts = replace(facts, organization_defaults=defaults)
            else:
                continue
            learned = True
        return learned

    @staticmethod
    def _regarding(attempt: _Attempt, decision: Decision) -> EntityReference | None:
        if attempt.state is not None and attempt.state.regarding is not None:
            return attempt.state.regarding
        return decision.event.regarding if decision.event else None

    @staticmethod
    def _owner_unknown(attempt: _Attempt, decision: Decision) -> bool:
        owner = attempt.facts.owner
        return decision.owner_user_id is not None and (
            owner is None or owner.id != decision.owner_user_id
        )

    def _owner(self, attempt: _Attempt, decision: Decision) -> UserFacts | None:
        """The mailbox's owner, looked up once per message and kept in the facts."""
        if decision.owner_user_id is not None and self._owner_unknown(attempt, decision):
            owner = self._user(attempt, decision.owner_user_id)
            attempt.facts = replace(attempt.facts, owner=owner)
        return attempt.facts.owner

    def _user(self, attempt: _Attempt, user_id: str, *, with_roles: bool = False) -> UserFacts:
        """A user, or one known only by id: someone Dataverse cannot show proves no exemption
        and has no address to mail, but must not stop the revert."""
        try:
            return self.dataverse.get_user(user_id, with_roles=with_roles)
        except NotFound as exc:
            attempt.errors.append(f"user {user_id} could not be read: {exc.message}")
            return UserFacts(id=user_id)

    def _write(self, attempt: _Attempt, decision: Decision) -> tuple[Decision, MailboxState | None]:
        """PATCH with If-Match; on 412 read the row, decide again, and retry (bounded).

        Returns the row as the write left it (None when nothing was written)."""
        mailbox_id = attempt.context.primary_entity_id
        event = decision.event
        if attempt.state is not None and attempt.state.etag:
            etag = attempt.state.etag
        elif event is not None and event.row_version and not event.incomplete:
            etag = etag_for(event.row_version)
        else:
            decision, etag = self._reread(attempt)
        for _ in range(self.max_conflicts):
            if not decision.patch:
                return decision, None
            try:
                written = self.dataverse.update_mailbox(
                    mailbox_id, webapi_body(decision.patch), etag=etag, tag=GUARDRAIL_TAG
                )
                return decision, written
            except PreconditionFailed:
                # Someone changed the row since: never overwrite blindly, look again.
                decision, etag = self._reread(attempt)
        raise _Conflict(mailbox_id, self.max_conflicts)

    def _reread(self, attempt: _Attempt) -> tuple[Decision, str]:
        """Read the row as it is now and decide again on it; its ETag guards the next write."""
        state = self.dataverse.get_mailbox(attempt.context.primary_entity_id)
        attempt.state = state
        return self._decide(attempt), state.etag or "*"

    def _notify(self, attempt: _Attempt, decision: Decision, *, wrote: bool) -> tuple[str, ...]:
        settings = self.policy.notifications
        if not settings.enabled or self.mailer is None or settings.sender is None or self.dry_run:
            return ()
        owner = self._owner(attempt, decision) if decision.notify_owner else attempt.facts.owner
        to = recipients(decision, owner.email if owner else None)
        if to is None:
            return ()
        mailbox_id = decision.mailbox_id or ""
        if not self.throttle.allow(mailbox_id):
            return ()
        initiator = attempt.facts.initiator
        subject, html = render(
            decision,
            settings,
            owner_name=owner.name if owner else None,
            owner_email=owner.email if owner else None,
            initiator=(initiator.name or initiator.email) if initiator else None,
            organization_name=self.policy.organization.name,
            # The name as Dataverse has it; the message's copy only when the row was not read.
            mailbox_name=(attempt.state.name if attempt.state else None)
            or (decision.event.name if decision.event else None),
            wrote=wrote,
        )
        mail = Mail(sender=settings.sender, to=to.to, cc=to.cc, subject=subject, html=html)
        try:
            self.mailer.send_mail(mail)
        except GuardrailsError as exc:
            # The revert stands; a redelivery would find the row compliant and not mail again,
            # so the failure is recorded rather than retried.
            attempt.errors.append(f"notification failed: {exc}")
            return ()
        return (*to.to, *to.cc)


class _Conflict(ServiceError):
    """The row kept changing under the guardrail; try the whole message again later."""

    retryable = True

    def __init__(self, mailbox_id: str, attempts: int) -> None:
        super().__init__(
            "Dataverse",
            f"mailbox {mailbox_id} changed during each of {attempts} attempts to write it",
            status=412,
        )
