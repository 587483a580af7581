"""Applies a decision durably: looks up what it lacked, writes only the difference, tells the owner.

The same path serves enforcement and dry run: the plan is computed identically and the audit
record is written either way; dry run only skips the write and the mail. Results are typed
(Done, NothingToDo, RetryLater, GiveUp); settlement decides what they mean for the message.

Every step that has an effect outside this process is recorded in the ledger first, keyed by
the message body, so a redelivery resumes where the last attempt stopped:

- a write is recorded as `writing` before the PATCH; after a lost answer, the row is checked
  (is it what the guardrail wrote, written by the guardrail?) before anything is written again;
- a 412 from someone else's write is re-read and re-decided, with that writer as the author of
  the values now on the row when they are an exempt person at a keyboard;
- the notification is rendered once into the outbox together with the `written` step, and sent
  by a client-chosen message id, so an owner is told exactly once per revert.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from guardrails.audit import AuditSink, audit_record
from guardrails.clients.dataverse import DataverseClient, etag_for
from guardrails.clients.graph import Mail
from guardrails.clients.tables import EntityChanged, EntityExists
from guardrails.engine import (
    Decision,
    Fact,
    Facts,
    Outcome,
    UserFacts,
    decide,
    own_addresses,
    row_context,
)
from guardrails.errors import (
    AuthenticationError,
    HeldBack,
    NotFound,
    OutcomeUnknown,
    PermanentServiceError,
    PreconditionFailed,
    ServiceError,
)
from guardrails.mailbox import GUARDRAIL_TAG, Column, MailboxState, normalize, webapi_body
from guardrails.message import DEFAULT_MAX_BODY_BYTES, ExecutionContext, Rejection, parse_message
from guardrails.notify import recipients
from guardrails.outcomes import Done, GiveUp, NothingToDo, Result, RetryLater
from guardrails.policy.model import Policy
from guardrails.render import render
from guardrails.state import State
from guardrails.state.ledger import Notice, Progress, Sending, Step, message_key
from guardrails.values import EntityReference

APPROVED = 1
T = TypeVar("T")
# How long a message waits after a token was refused: long enough for someone to fix a secret.
CONFIGURATION_RETRY_DELAY = 300.0


class Mailer(Protocol):
    def send_once(self, mail: Mail, *, internet_message_id: str, uncertain: bool) -> None: ...


@dataclass(slots=True)
class _Attempt:
    """What one message has gathered so far; lives only while that message is processed."""

    context: ExecutionContext
    key: str
    holder: str
    facts: Facts
    message_id: str | None = None
    state: MailboxState | None = None
    progress: Progress | None = None
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RowClaim:
    """A drifted row claimed in the ledger, its write recorded as `writing`, awaiting the
    answer of the `$batch` that carries it."""

    attempt: _Attempt
    decision: Decision
    state: MailboxState
    started: float


class _Busy(ServiceError):
    """Another attempt holds this message's lease; try again when it runs out."""

    retryable = True


class Executor:
    def __init__(
        self,
        *,
        policy: Policy,
        dataverse: DataverseClient,
        mailer: Mailer | None,
        audit: AuditSink,
        state: State,
        dry_run: bool = False,
        max_conflicts: int = 3,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.dataverse = dataverse
        self.mailer = mailer
        self.audit = audit
        self.state = state
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
        holder: str | None = None,
    ) -> Result:
        """Handle one delivery. `holder` names the invocation (the worker keeps it across its
        in-process tries, so a retry resumes its own lease rather than waiting it out)."""
        started = self.clock()
        key = message_key(body)
        try:
            parsed = parse_message(body, properties, content_type, max_bytes=self.max_body_bytes)
            result = self._run(parsed, key, message_id, holder or self.state.ledger.new_holder())
        except Exception as exc:  # a defect must still end with a record and a reason
            # parse and decide are total, so this is a defect or an edge client raising an
            # error it should have typed; either way the message is recorded, not lost.
            result = RetryLater(
                f"unexpected {type(exc).__name__} while handling the message (a defect; "
                f"please report it): {str(exc)[:300]}"
            )
        return self._emit(result, key=key, message_id=message_id, started=started)

    def _emit(
        self,
        result: Result,
        *,
        key: str,
        message_id: str | None,
        started: float,
        source: str = "event",
        dry_run: bool | None = None,
    ) -> Result:
        """The audit record of one outcome: logged, and stored in the audit trail."""
        record = audit_record(
            result,
            message_id=message_id,
            dry_run=self.dry_run if dry_run is None else dry_run,
            duration_ms=round((self.clock() - started) * 1000, 1),
        )
        record["message_key"] = key
        record["source"] = source
        self.audit(record)
        try:
            self.state.audit.append(record)
        except ServiceError as exc:
            # The record is logged; the stored copy is retried with the message (the ledger
            # makes the retry a no-op for Dataverse and Graph).
            if isinstance(result, Done | NothingToDo):
                return RetryLater(f"the audit trail could not be stored: {exc}", exc.retry_after)
        return result

    # -- rows, for the reconcile sweep ------------------------------------------------------

    def claim_row(self, state: MailboxState, facts: Facts, decision: Decision) -> RowClaim | Result:
        """Start fixing a drifted row the sweep found: claim it in the ledger (keyed by the row
        and its version, so a second sweep over the same drift is recognised) and record the
        write about to be sent in a `$batch`. A row already under way elsewhere, or already
        fixed, comes back as a Result (finished through the single-row path if need be)."""
        started = self.clock()
        key = message_key(f"row:{state.mailbox_id}:{state.version or state.etag}".encode())
        attempt = _Attempt(
            row_context(state.mailbox_id, self.policy),
            key,
            self.state.ledger.new_holder(),
            replace(facts, guardrail_user_id=self.dataverse.whoami().user_id),
            state=state,
        )

        def claim() -> RowClaim | Result:
            resumed = self._resume(attempt)
            if resumed is not None:
                return resumed
            self._claim(attempt, decision)
            assert attempt.progress is not None
            attempt.progress = self.state.ledger.writing(attempt.progress, etag=state.etag or "*")
            return RowClaim(attempt, decision, state, started)

        outcome = self._guarded(claim, decision)
        if isinstance(outcome, RowClaim):
            return outcome
        return self._emit(outcome, key=key, message_id=None, started=started, source="reconcile")

    def finish_row(self, claim: RowClaim, written: MailboxState | None, *, status: int) -> Result:
        """Carry a row on after its `$batch` answer: a success goes on to approval, the
        notification and the audit record like an event's revert; a 412 or a lost answer is
        settled by reading the row, as after any single write."""
        attempt, decision = claim.attempt, claim.decision

        def finish() -> Result:
            if status in (200, 204):
                state = written or self.dataverse.get_mailbox(claim.state.mailbox_id)
                return self._after_write(attempt, decision, state)
            if status not in (0, 412):
                return GiveUp(f"Dataverse refused the write (HTTP {status})", decision)
            state = self.dataverse.get_mailbox(claim.state.mailbox_id)
            if self._is_our_write(attempt, state, decision):
                return self._after_write(attempt, decision, state)
            attempt.state = state
            again = (
                self._redecide_after_conflict(attempt, state)
                if status == 412
                else self._decide(attempt)
            )
            if again.outcome is not Outcome.VIOLATION or not again.patch:
                return self._stand_down(attempt, again)
            again, rewritten = self._write(attempt, again)
            if again.outcome is not Outcome.VIOLATION:
                return self._stand_down(attempt, again)
            return self._after_write(attempt, again, rewritten)

        result = self._guarded(finish, decision)
        assert not isinstance(result, RowClaim)
        return self._emit(
            result, key=attempt.key, message_id=None, started=claim.started, source="reconcile"
        )

    def record_row(self, decision: Decision, result: Result, *, dry_run: bool) -> Result:
        """The audit record of a row the sweep found and left as it is (dry run, audit mode)."""
        key = message_key(f"row:{decision.mailbox_id}".encode())
        return self._emit(
            result,
            key=key,
            message_id=None,
            started=self.clock(),
            source="reconcile",
            dry_run=dry_run,
        )

    def _guarded(self, step: Callable[[], T], decision: Decision) -> T | Result:
        """A step's service errors as outcomes: the one place they become Results."""
        try:
            return step()
        except NotFound as exc:
            return NothingToDo(
                decision, f"A row this needs no longer exists in Dataverse: {exc.message}"
            )
        except AuthenticationError as exc:
            # A refused token is configuration (a wrong or expired secret, a missing application
            # user): waiting here cannot help, a person must act. An unreachable token endpoint
            # is an outage like any other.
            delay = None if exc.transient else CONFIGURATION_RETRY_DELAY
            return RetryLater(str(exc), delay, decision)
        except HeldBack as exc:
            return RetryLater(str(exc), exc.retry_after, decision, attempted=False)
        except ServiceError as exc:
            if exc.retryable:
                return RetryLater(str(exc), exc.retry_after, decision)
            return GiveUp(str(exc), decision)

    # -- deciding ------------------------------------------------------------------------------

    def _run(
        self, parsed: ExecutionContext | Rejection, key: str, message_id: str | None, holder: str
    ) -> Result:
        # Offline first: most messages end here. Once WhoAmI is known, the guardrail's own
        # writes are recognised here too, without a request.
        known = Facts(guardrail_user_id=self.dataverse.known_user_id)
        decision = decide(parsed, self.policy, known)
        if decision.outcome is Outcome.REJECTED:
            return GiveUp(decision.reason, decision)
        if not isinstance(parsed, ExecutionContext) or decision.event is None:
            return NothingToDo(decision, decision.reason)  # not a governed mailbox event
        if decision.outcome is Outcome.COMPLIANT and not decision.unverified:
            # Settled without a fact to look up, so never claimed in the ledger either: a
            # compliant change costs no Dataverse request and no ledger read.
            return NothingToDo(decision, decision.reason)
        return self._guarded(lambda: self._enforce(parsed, key, message_id, holder), decision)

    def _enforce(
        self, context: ExecutionContext, key: str, message_id: str | None, holder: str
    ) -> Result:
        attempt = _Attempt(
            context,
            key,
            holder,
            Facts(guardrail_user_id=self.dataverse.whoami().user_id),
            message_id,
        )
        if not self.dry_run:
            resumed = self._resume(attempt)
            if resumed is not None:
                return resumed
        decision = self._decide(attempt)
        if decision.outcome is not Outcome.VIOLATION:
            return self._stand_down(attempt, decision)
        if self.dry_run:
            return Done(decision, wrote=False)
        self._claim(attempt, decision)
        written: MailboxState | None = None
        if decision.patch:
            decision, written = self._write(attempt, decision)
            if decision.outcome is not Outcome.VIOLATION:
                return self._stand_down(attempt, decision)
        return self._after_write(attempt, decision, written)

    def _stand_down(self, attempt: _Attempt, decision: Decision) -> NothingToDo:
        """Nothing (more) to write: an exempt user's change is accepted, a claimed message is
        marked done, so a redelivery finds it finished."""
        self._accept_exemption(attempt, decision)
        if attempt.progress is not None:
            self.state.ledger.done(attempt.progress, notified=(), errors=())
        return NothingToDo(decision, decision.reason)

    def _resume(self, attempt: _Attempt) -> Result | None:
        """Continue from the ledger: None when there is nothing to resume (decide afresh)."""
        ledger = self.state.ledger
        progress = ledger.get(attempt.key)
        if progress is None:
            return None
        plan = Decision.from_dict(progress.plan) if progress.plan else None
        if progress.step is Step.DONE:
            reason = (
                "Already handled (a redelivery, a scheduled retry or a duplicate post of the "
                "same event); nothing was done again."
            )
            if plan is None or plan.outcome is not Outcome.VIOLATION:
                return NothingToDo(plan, reason)
            return Done(
                replace(plan, notes=(*plan.notes, reason)),
                wrote=progress.wrote,
                notified=progress.notified,
                errors=progress.errors,
                replayed=True,
            )
        wait = ledger.lease_left(progress, holder=attempt.holder)
        if wait > 0:
            raise _Busy(
                "Table Storage", "another attempt is handling this message", retry_after=wait
            )
        attempt.progress = ledger.take_over(progress, holder=attempt.holder)
        if plan is None or plan.outcome is not Outcome.VIOLATION:
            return None
        if progress.step is Step.WRITTEN:
            if plan.restore_approval and progress.wrote and progress.approval is None:
                self._learn(attempt, plan)  # approval checks the owner's directory entry
            return self._after_write(attempt, plan, None)
        if progress.step is Step.WRITING:
            # An earlier PATCH may have committed with its answer lost: look before writing.
            state = self.dataverse.get_mailbox(attempt.context.primary_entity_id)
            attempt.state = state
            if self._is_our_write(attempt, state, plan):
                self._learn(attempt, plan)
                return self._after_write(attempt, plan, state)
            if state.etag != progress.write_etag:
                # The write met someone else's (a 412 whose handling was cut short): decide as
                # after any conflict, with that writer as the author of what is on the row.
                self._attribute_to_last_writer(attempt, state)
        return None

    def _decide(self, attempt: _Attempt) -> Decision:
        """Decide, look up what the decision could not verify, decide again (bounded)."""
        decision = decide(attempt.context, self.policy, attempt.facts, attempt.state)
        for _ in range(len(Fact)):
            if not self._resolve(attempt, decision):
                break
            decision = decide(attempt.context, self.policy, attempt.facts, attempt.state)
        return decision

    def _learn(self, attempt: _Attempt, plan: Decision) -> None:
        """The facts a resumed plan's later steps need (approval checks the owner)."""
        self._decide(attempt)
        if plan.owner_user_id and self._owner_unknown(attempt, plan):
            self._owner(attempt, plan)

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
            elif fact is Fact.ACCEPTED and facts.accepted is None:
                accepted = self.state.accepted.get(attempt.context.primary_entity_id)
                values = {column: item.value for column, item in accepted.items()}
                attempt.facts = replace(facts, accepted=values)
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
            return UserFacts(id=user_id, interactive=False)

    # -- the ledger ---------------------------------------------------------------------------

    def _claim(self, attempt: _Attempt, decision: Decision) -> None:
        ledger = self.state.ledger
        plan = decision.to_dict()
        if attempt.progress is not None:
            attempt.progress = ledger.decided(attempt.progress, plan=plan)
            return
        try:
            attempt.progress = ledger.claim(
                attempt.key,
                holder=attempt.holder,
                message_id=attempt.message_id,
                mailbox_id=decision.mailbox_id,
                plan=plan,
            )
        except EntityExists as exc:
            # The same body is being handled elsewhere right now (a duplicate post).
            raise _Busy(
                "Table Storage", "another attempt claimed this message", retry_after=ledger.lease
            ) from exc

    def _accept_exemption(self, attempt: _Attempt, decision: Decision) -> None:
        """An exempt user's governed change is an accepted exception, not drift."""
        event = decision.event
        if self.dry_run or decision.exempted_by is None or event is None or not event.changed:
            return
        self.state.accepted.record(
            attempt.context.primary_entity_id,
            dict(event.changed),
            by=decision.exempted_by,
            reason=decision.reason,
        )

    # -- writing ------------------------------------------------------------------------------

    def _write(self, attempt: _Attempt, decision: Decision) -> tuple[Decision, MailboxState | None]:
        """PATCH with If-Match; on 412 read the row and find out why before anything else.

        Returns the decision (re-made after a conflict) and the row as the write left it."""
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
            assert attempt.progress is not None
            attempt.progress = self.state.ledger.writing(attempt.progress, etag=etag)
            try:
                written = self.dataverse.update_mailbox(
                    mailbox_id, webapi_body(decision.patch), etag=etag, tag=GUARDRAIL_TAG
                )
                return decision, written
            except (PreconditionFailed, OutcomeUnknown) as exc:
                # Find out what happened before acting again: the write may have committed.
                state = self.dataverse.get_mailbox(mailbox_id)
                if self._is_our_write(attempt, state, decision):
                    return decision, state
                if isinstance(exc, OutcomeUnknown) and state.etag == etag:
                    continue  # it did not reach the row: the same write, still conditional
                # Someone else wrote the row meanwhile: never overwrite blindly, decide again
                # on the row as it is, with that writer as the author of what is on it.
                attempt.state = state
                decision = self._redecide_after_conflict(attempt, state)
                etag = state.etag or "*"
        raise _Conflict(mailbox_id, self.max_conflicts)

    def _is_our_write(self, attempt: _Attempt, state: MailboxState, plan: Decision) -> bool:
        """The row holds exactly what the plan writes, and the guardrail wrote it last."""
        if not plan.patch or state.modified_by != attempt.facts.guardrail_user_id:
            return False
        return all(
            column in state.values and normalize(column, state.values[column]) == value
            for column, value in plan.patch.items()
        )

    def _redecide_after_conflict(self, attempt: _Attempt, state: MailboxState) -> Decision:
        self._attribute_to_last_writer(attempt, state)
        return self._decide(attempt)

    def _attribute_to_last_writer(self, attempt: _Attempt, state: MailboxState) -> None:
        """After a conflict, the row's last writer is the author of the values now on it."""
        writer_id = state.modified_by
        facts = attempt.facts
        if writer_id and writer_id not in (
            attempt.context.initiating_user_id,
            facts.guardrail_user_id,
        ):
            writer = self._user(attempt, writer_id, with_roles=True)
            attempt.facts = replace(facts, last_writer=writer)

    def _reread(self, attempt: _Attempt) -> tuple[Decision, str]:
        """Read the row as it is now and decide again on it; its ETag guards the next write."""
        state = self.dataverse.get_mailbox(attempt.context.primary_entity_id)
        attempt.state = state
        return self._decide(attempt), state.etag or "*"

    # -- after the write ----------------------------------------------------------------------

    def _after_write(
        self, attempt: _Attempt, decision: Decision, written: MailboxState | None
    ) -> Result:
        ledger = self.state.ledger
        progress = attempt.progress
        assert progress is not None
        notice: Notice | None
        if progress.step is Step.WRITTEN:
            notice = ledger.notice(attempt.key)
        else:
            wrote = written is not None
            notice = self._notice(attempt, decision, wrote=wrote)
            try:
                progress, notice = ledger.written(
                    progress,
                    wrote=wrote,
                    version=written.version if written else None,
                    plan=decision.to_dict(),
                    notice=notice,
                )
            except (EntityChanged, EntityExists) as exc:
                raise _Busy(
                    "Table Storage", "another attempt moved this message on", retry_after=1.0
                ) from exc
            if wrote:
                self.state.accepted.record(
                    attempt.context.primary_entity_id,
                    decision.patch,
                    by=attempt.facts.guardrail_user_id,
                    reason="reverted by the guardrail",
                )
        if progress.wrote and decision.restore_approval and progress.approval is None:
            outcome = self._restore_approval(attempt, written)
            progress = ledger.approval(progress, outcome=outcome)
        notified = self._send(notice) if notice is not None else ()
        if progress.approval and progress.approval != "restored":
            attempt.errors.append(progress.approval)
        errors = tuple(attempt.errors)
        ledger.done(progress, notified=notified, errors=errors)
        return Done(decision, wrote=progress.wrote, notified=notified, errors=errors)

    def _restore_approval(self, attempt: _Attempt, written: MailboxState | None) -> str:
        """Re-approve the address the guardrail wrote back, and only while it is still there.

        Approval lets server-side sync bring that address's mail into Dataverse, so it is given
        only to an address that is the mailbox's own (the owner's directory address or sign-in
        name, a queue's address), in a PATCH of its own (as approval requires) conditional on the
        row being exactly as checked: a user who changes the address again in between gets a 412,
        not an approval. Returns what happened, for the ledger.
        """
        mailbox_id = attempt.context.primary_entity_id
        try:
            state = written if written and written.etag else self.dataverse.get_mailbox(mailbox_id)
            for _ in range(self.max_conflicts):
                own = own_addresses(attempt.facts, state.regarding)
                address = state.values.get(Column.EMAIL)
                if own is None or not isinstance(address, str) or address.lower() not in own[0]:
                    return (
                        "approval not restored: the address on the row is no longer the "
                        "mailbox's own"
                    )
                if state.approval == APPROVED:
                    return "restored"
                try:
                    self.dataverse.update_mailbox(
                        mailbox_id, {"emailrouteraccessapproval": APPROVED}, etag=state.etag or "*"
                    )
                    return "restored"
                except PreconditionFailed:
                    state = self.dataverse.get_mailbox(mailbox_id)
            return "approval not restored: the row kept changing"
        except PermanentServiceError as exc:
            # The revert stands; a missing privilege will not pass with a retry.
            return f"restoring approval failed: {exc}"

    def _notice(self, attempt: _Attempt, decision: Decision, *, wrote: bool) -> Notice | None:
        """The notification this revert owes, rendered once; None when nobody is to be told."""
        settings = self.policy.notifications
        if not settings.enabled or self.mailer is None or settings.sender is None:
            return None
        owner = self._owner(attempt, decision) if decision.notify_owner else attempt.facts.owner
        to = recipients(decision, owner.email if owner else None)
        if to is None:
            return None
        if not self.state.throttle.allow(decision.mailbox_id or attempt.context.primary_entity_id):
            attempt.errors.append("notification throttled (policy notifications.throttle)")
            return None
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
        domain = settings.sender.rpartition("@")[2]
        return Notice(
            key=attempt.key,
            state=Sending.PENDING,
            etag="",
            internet_message_id=f"<{attempt.key[:40]}.guardrails@{domain}>",
            sender=settings.sender,
            to=to.to,
            cc=to.cc,
            subject=subject,
            html=html,
        )

    def _send(self, notice: Notice) -> tuple[str, ...]:
        """Send the outbox's notification at most once; a lost answer is looked up, not resent."""
        everyone = (*notice.to, *notice.cc)
        if notice.state is Sending.SENT:
            return everyone
        assert self.mailer is not None
        uncertain = notice.state is Sending.SENDING
        if not uncertain:
            try:
                notice = self.state.ledger.sending(notice)
            except EntityChanged as exc:
                raise _Busy(
                    "Table Storage", "another attempt is sending this notification", retry_after=5.0
                ) from exc
        mail = Mail(
            sender=notice.sender,
            to=notice.to,
            cc=notice.cc,
            subject=notice.subject,
            html=notice.html,
        )
        try:
            self.mailer.send_once(
                mail, internet_message_id=notice.internet_message_id, uncertain=uncertain
            )
        except PermanentServiceError as exc:
            # e.g. Mail.Send missing: recorded; the revert stands and the ledger keeps the mail
            # (resubmitting the message from `guardrails dlq` sends it once this is fixed).
            raise _NotificationRefused(exc) from exc
        self.state.ledger.sent(notice)
        return everyone


class _NotificationRefused(PermanentServiceError):
    def __init__(self, cause: ServiceError) -> None:
        super().__init__(
            cause.service,
            f"the revert stands, but the notification was refused: {cause.message}",
            status=cause.status,
            code=cause.code,
        )


class _Conflict(ServiceError):
    """The row kept changing under the guardrail; try the whole message again later."""

    retryable = True

    def __init__(self, mailbox_id: str, attempts: int) -> None:
        super().__init__(
            "Dataverse",
            f"mailbox {mailbox_id} changed during each of {attempts} attempts to write it",
            status=412,
        )
