"""The reconcile sweep: finds what events missed and puts it right through the same executor.

Events can be missed (the function was down, a message was dead-lettered, the step was
disabled, a mailbox drifted before the guardrail existed), so a timer and `guardrails reconcile`
read every mailbox the policy might object to and decide on each row with `decide_row`, the
event path's decider. Violations are written in `$batch` requests, each operation conditional on
the row's ETag, and every fixed mailbox then goes through the executor's own after-write path:
the ledger, the outbox, accepted values and the audit record, exactly as for an event.

The work is bounded and polite: rows are streamed page by page (memory flat in the number of
mailboxes), owners are looked up a page at a time, writes wait until they fill a `$batch` (drift
spread thinly over many pages still goes out in full batches, at most one batch held back), one
request is in flight at a time (far below Dataverse's 52 concurrent requests), and every 429 is
waited out as the service asks. A run record (counts, duration, errors) is written even when the
run fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from guardrails.clients import dataverse_bulk as bulk
from guardrails.clients.dataverse import DataverseClient
from guardrails.clients.tables import Entity, Table
from guardrails.engine import Decision, Facts, Outcome, decide_row
from guardrails.errors import ServiceError
from guardrails.executor import Executor, RowClaim
from guardrails.mailbox import Column, MailboxState, webapi_body
from guardrails.outcomes import Done, GiveUp, Result, RetryLater
from guardrails.policy.model import ORGANIZATION_DEFAULT, Policy

DEFAULT_BATCH = 100  # writes per $batch
LOOKUP_PAGE = 500  # rows decided together: their owners are looked up in a few requests

# A row to fix: as read, the facts it was decided on, and the decision.
Fix = tuple[MailboxState, Facts, Decision]


@dataclass(slots=True)
class SweepSummary:
    """What a run found and did; the JSON keys are the contract of `--format json`."""

    run_id: str
    dry_run: bool
    scanned: int = 0
    non_compliant: int = 0
    fixed: int = 0
    skipped: int = 0
    failed: int = 0
    requests: int = 0
    started: str = ""
    finished: str = ""
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift_filter(policy: Policy, defaults: dict[Column, int | str] | None) -> str | None:
    """The OData `$filter` that finds rows the delivery and profile rules may object to.

    None means every mailbox must be read: address rules (allowed domains, the owner's own
    address) cannot be expressed in a filter, and the rows are checked one by one.
    """
    rules = policy.rules
    email = rules.email_address
    if email is not None and (email.allowed_domains or email.must_match_owner):
        return None
    clauses: list[str] = []
    if rules.delivery_methods is not None:
        for column, expected in rules.delivery_methods.expected().items():
            value = (
                defaults.get(column) if expected == ORGANIZATION_DEFAULT and defaults else expected
            )
            if isinstance(value, int):
                clauses.append(f"{column.value} ne {value}")
    profile = rules.server_profile
    if profile is not None:
        wanted = profile.expected
        if wanted == ORGANIZATION_DEFAULT:
            wanted = str(defaults.get(Column.SERVER_PROFILE, "")) if defaults else ""
        if wanted:
            clauses.append(f"_emailserverprofile_value ne {wanted}")
    if not clauses:
        return None
    return " or ".join(clauses)


class Sweep:
    def __init__(
        self,
        *,
        policy: Policy,
        dataverse: DataverseClient,
        executor: Executor,
        runs: Table | None = None,
        batch_size: int = DEFAULT_BATCH,
        page_size: int = bulk.MAX_PAGE_SIZE,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.policy = policy
        self.dataverse = dataverse
        self.executor = executor
        self.runs = runs
        self.batch_size = batch_size
        self.page_size = page_size
        self.dry_run = dry_run
        self.progress = progress

    def run(self) -> SweepSummary:
        summary = SweepSummary(run_id=uuid.uuid4().hex, dry_run=self.dry_run)
        summary.started = datetime.now(UTC).isoformat()
        counted = sum(self.dataverse.request_counts.values())
        try:
            self._sweep(summary)
        except ServiceError as exc:
            summary.errors.append(f"the sweep stopped: {exc}")
            raise
        finally:
            summary.requests = sum(self.dataverse.request_counts.values()) - counted
            summary.finished = datetime.now(UTC).isoformat()
            self._record(summary)
        return summary

    # -- the run ------------------------------------------------------------------------------

    def _sweep(self, summary: SweepSummary) -> None:
        defaults = self._defaults()
        accepted = self.executor.state.accepted.all()
        base = Facts(
            guardrail_user_id=self.dataverse.whoami().user_id, organization_defaults=defaults
        )
        rows = bulk.iter_mailboxes(
            self.dataverse, filter=drift_filter(self.policy, defaults), page_size=self.page_size
        )
        pending: list[Fix] = []
        for page in _pages(rows, LOOKUP_PAGE):
            summary.scanned += len(page)
            pending += self._decide(page, base, accepted, summary)
            pending = self._write_full_batches(pending, summary)
            if self.progress is not None:
                self.progress(summary.scanned, summary.fixed)
        if pending:
            self._write(pending, summary)

    def _defaults(self) -> dict[Column, int | str] | None:
        rules = self.policy.rules
        wants = (
            rules.delivery_methods is not None
            and ORGANIZATION_DEFAULT in rules.delivery_methods.expected().values()
        ) or (
            rules.server_profile is not None
            and rules.server_profile.expected == ORGANIZATION_DEFAULT
        )
        return self.dataverse.organization_defaults() if wants else None

    def _decide(
        self,
        page: list[MailboxState],
        base: Facts,
        accepted: dict[str, dict[Column, Any]],
        summary: SweepSummary,
    ) -> list[Fix]:
        """Decide a page of rows; returns those to write (none in a dry run: recorded here)."""
        owners = bulk.users(
            self.dataverse,
            (
                s.regarding.id
                for s in page
                if s.regarding and s.regarding.logical_name == "systemuser"
            ),
        )
        queue_ids = [
            s.regarding.id for s in page if s.regarding and s.regarding.logical_name == "queue"
        ]
        queues = bulk.queues(self.dataverse, queue_ids) if queue_ids else {}
        to_write: list[Fix] = []
        for state in page:
            facts = _facts_for(state, base, owners, queues, accepted)
            decision = decide_row(state, self.policy, facts)
            if decision.outcome is not Outcome.VIOLATION:
                continue
            summary.non_compliant += 1
            if not decision.patch:
                summary.skipped += 1  # audit mode, or no safe value: recorded, not written
                self.executor.record_row(decision, Done(decision, wrote=False), dry_run=True)
                continue
            to_write.append((state, facts, decision))
        if self.dry_run:
            for _, _, decision in to_write:
                self.executor.record_row(decision, Done(decision, wrote=False), dry_run=True)
                summary.skipped += 1
            return []
        return to_write

    def _write_full_batches(self, pending: list[Fix], summary: SweepSummary) -> list[Fix]:
        """Write the rows that fill whole batches; returns the rest, to wait for more."""
        full = len(pending) - len(pending) % self.batch_size
        for start in range(0, full, self.batch_size):
            self._write(pending[start : start + self.batch_size], summary)
        return pending[full:]

    def _write(self, to_write: list[Fix], summary: SweepSummary) -> None:
        """Claim each row in the ledger, write them in one `$batch`, then finish each one
        through the executor (a 412 goes back through the executor's single-row path)."""
        claimed: list[RowClaim] = []
        for state, facts, decision in to_write:
            claim = self.executor.claim_row(state, facts, decision)
            if isinstance(claim, RowClaim):
                claimed.append(claim)
            else:
                self._count(claim, summary)  # already handled, or busy elsewhere
        if not claimed:
            return
        writes = [
            bulk.BatchWrite(c.state.mailbox_id, webapi_body(c.decision.patch), c.state.etag or "*")
            for c in claimed
        ]
        try:
            outcomes = bulk.batch_update(self.dataverse, writes)
        except ServiceError as exc:
            # The batch's fate is unknown: each row is finished by reading it (the ledger says
            # `writing`), which is what the executor does after any lost answer.
            outcomes = [bulk.BatchOutcome(0, None, str(exc)) for _ in claimed]
        for claim, outcome in zip(claimed, outcomes, strict=True):
            self._count(
                self.executor.finish_row(claim, outcome.state, status=outcome.status), summary
            )

    def _count(self, result: Result, summary: SweepSummary) -> None:
        if isinstance(result, Done) and result.wrote and not result.replayed:
            summary.fixed += 1
        elif isinstance(result, GiveUp | RetryLater):
            summary.failed += 1
            summary.errors.append(getattr(result, "reason", "")[:300])
        else:
            summary.skipped += 1

    def _record(self, summary: SweepSummary) -> None:
        """The run record: kept even when the run failed (a run that left no trace is a gap)."""
        if self.runs is None:
            return
        values = {k: v for k, v in summary.to_dict().items() if k != "errors"}
        values["errors"] = "\n".join(summary.errors)[:30_000]
        try:
            self.runs.upsert(Entity("reconcile", summary.run_id, values))
        except ServiceError as exc:
            summary.errors.append(f"the run record could not be stored: {exc}")


def _pages(rows: Iterator[MailboxState], size: int) -> Iterator[list[MailboxState]]:
    page: list[MailboxState] = []
    for row in rows:
        page.append(row)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _facts_for(
    state: MailboxState,
    base: Facts,
    owners: dict[str, Any],
    queues: dict[str, Any],
    accepted: dict[str, dict[Column, Any]],
) -> Facts:
    regarding = state.regarding
    owner = (
        owners.get(regarding.id) if regarding and regarding.logical_name == "systemuser" else None
    )
    queue = queues.get(regarding.id) if regarding and regarding.logical_name == "queue" else None
    return replace(
        base, owner=owner, queue=queue, accepted=dict(accepted.get(state.mailbox_id, {}))
    )
