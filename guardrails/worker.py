"""The Service Bus message handler: runs the executor and carries out what settlement decides.

The classic Functions binding completes a message when the function returns and abandons it when
the function raises (Service Bus then redelivers it, and dead-letters it after the queue's max
delivery count, without a reason). So the worker returns for every outcome it has dealt with:

- done, nothing to do: return (completed);
- a short wait: wait here and try again, inside the same invocation;
- a long wait: schedule a byte-identical copy with the azure-servicebus SDK, then return;
- permanent: record the raw body and the reason in the failure log (`guardrails dlq list`),
  then return, so a message that can never succeed burns no deliveries.

It raises only when it could not do that (the store or Service Bus is unreachable): then the
message is redelivered, and if that keeps failing Service Bus dead-letters it, where
`guardrails dlq` shows it too. Nothing is lost either way.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from guardrails.audit import AuditSink, configure_logging, structlog_sink
from guardrails.clients.auth import MsalTokenProvider, TokenProvider
from guardrails.clients.dataverse import DataverseClient
from guardrails.clients.graph import GraphClient
from guardrails.clients.http import RetryPolicy, new_session
from guardrails.clients.pacing import Pacer
from guardrails.clients.servicebus import QueueClient, servicebus_settings
from guardrails.clients.tables import TableStore, storage_settings, table_store
from guardrails.errors import ConfigurationError, GuardrailsError, ServiceError
from guardrails.executor import Executor
from guardrails.outcomes import Result
from guardrails.policy import PolicyError, load_policy
from guardrails.settings import Settings, load_settings
from guardrails.settlement import (
    ATTEMPT_PROPERTY,
    FIRST_ENQUEUED_PROPERTY,
    Action,
    Record,
    Schedule,
    SettlementPolicy,
    WaitAndRetry,
    settle,
)
from guardrails.state import State
from guardrails.state.ledger import message_key

if TYPE_CHECKING:
    from guardrails.reconcile import Sweep

_log = structlog.get_logger("guardrails.worker")


class RetryableFailure(GuardrailsError):
    """Raised so the Functions host abandons the message and Service Bus delivers it again."""


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of one delivery: the executor's last result and what was done about it."""

    result: Result
    action: Action


class Scheduler(Protocol):
    def schedule(
        self,
        body: bytes,
        *,
        delay: float,
        message_id: str | None,
        properties: Mapping[str, Any],
        content_type: str | None,
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class Worker:
    executor: Executor
    state: State
    scheduler: Scheduler | None
    policy: SettlementPolicy = field(default_factory=SettlementPolicy)
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    rng: random.Random = field(default_factory=random.Random)

    def handle(
        self,
        body: bytes,
        *,
        message_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        enqueued_time: datetime | None = None,
    ) -> Handled:
        properties = {_name(key): value for key, value in (properties or {}).items()}
        attempt = _attempt(properties)
        first = _first_enqueued(properties, enqueued_time or self.now())
        tries = 0
        started = self.now()
        holder = self.state.ledger.new_holder()
        while True:
            tries += 1
            result = self.executor.process(
                body,
                message_id=message_id,
                properties=properties,
                content_type=content_type,
                holder=holder,
            )
            age = max(0.0, (self.now() - first).total_seconds())
            action = settle(
                result,
                attempt=attempt,
                age=age,
                tries=tries,
                policy=self.policy,
                rng=self.rng,
                elapsed=(self.now() - started).total_seconds(),
            )
            if isinstance(action, WaitAndRetry):
                self.sleep(action.delay)
                continue
            if isinstance(action, Schedule):
                self._schedule(body, action, message_id, properties, content_type, first)
            elif isinstance(action, Record):
                self._record(body, action, message_id, properties, attempt)
            return Handled(result, action)

    def _schedule(
        self,
        body: bytes,
        action: Schedule,
        message_id: str | None,
        properties: Mapping[str, Any],
        content_type: str | None,
        first: datetime,
    ) -> None:
        if self.scheduler is None:
            raise RetryableFailure(f"{action.reason} (no scheduler: redelivered instead)")
        copy = {
            **properties,
            ATTEMPT_PROPERTY: action.attempt,
            FIRST_ENQUEUED_PROPERTY: first.isoformat(),
        }
        try:
            sequence = self.scheduler.schedule(
                body,
                delay=action.delay,
                message_id=message_id,
                properties=copy,
                content_type=content_type,
            )
        except ServiceError as exc:
            raise RetryableFailure(f"could not schedule a retry ({exc}); {action.reason}") from exc
        _log.info(
            "guardrails.retry_scheduled",
            message_id=message_id,
            attempt=action.attempt,
            delay_s=round(action.delay, 1),
            sequence_number=sequence,
            reason=action.reason,
        )

    def _record(
        self,
        body: bytes,
        action: Record,
        message_id: str | None,
        properties: Mapping[str, Any],
        attempt: int,
    ) -> None:
        try:
            self.state.failures.record(
                message_key(body),
                body,
                message_id=message_id,
                reason=action.reason,
                code=action.code,
                properties=properties,
                attempt=attempt,
            )
        except ServiceError as exc:
            raise RetryableFailure(f"could not record a failure ({exc}); {action.reason}") from exc
        _log.error(
            "guardrails.failure_recorded",
            message_id=message_id,
            code=action.code,
            reason=action.reason,
            fix="see `guardrails dlq list`; after fixing the cause, `guardrails dlq resubmit`",
        )


def _name(key: object) -> str:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


def _attempt(properties: Mapping[str, Any]) -> int:
    raw = properties.get(ATTEMPT_PROPERTY, 1)
    try:
        return max(1, min(int(raw), 10_000))
    except (TypeError, ValueError):
        return 1


def _first_enqueued(properties: Mapping[str, Any], default: datetime) -> datetime:
    raw = properties.get(FIRST_ENQUEUED_PROPERTY)
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            return default
        if parsed.tzinfo is not None and parsed <= default:
            return parsed
    return default if default.tzinfo else default.replace(tzinfo=UTC)


def build_worker(
    settings: Settings,
    *,
    store: TableStore,
    scheduler: Scheduler | None,
    tokens: TokenProvider | None = None,
    audit: AuditSink | None = None,
    retry: RetryPolicy | None = None,
    dry_run: bool = False,
    settlement: SettlementPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> Worker:
    """Everything the worker needs, wired once per process; clients are immutable after this.

    `sleep` and `clock` are the worker's time: its waits, its retries' due times, and each
    client's gate and pace after a 429 (a Retry-After is waited out on the clock `sleep` moves).
    """
    policy = load_policy(settings.policy_path)
    session = new_session(settings.http_timeout)
    tokens = tokens or MsalTokenProvider(
        settings.credentials, session=session, timeout=settings.http_timeout
    )
    dataverse = DataverseClient(
        settings.dataverse_url,
        tokens=tokens,
        session=session,
        timeout=settings.http_timeout,
        retry=retry,
        sleep=sleep,
        pacer=Pacer(clock),
    )
    graph = GraphClient(
        settings.graph_url,
        scope=settings.graph_scope,
        tokens=tokens,
        session=session,
        timeout=settings.http_timeout,
        retry=retry,
        sleep=sleep,
        pacer=Pacer(clock),
    )
    limits = policy.notifications.throttle
    state = State.over(
        store, limit=limits.max_per_mailbox, window=limits.window_seconds, clock=clock
    )
    executor = Executor(
        policy=policy,
        dataverse=dataverse,
        mailer=graph,
        audit=audit or structlog_sink(),
        state=state,
        dry_run=dry_run,
        max_body_bytes=settings.max_body_bytes,
    )
    return Worker(
        executor,
        state,
        scheduler,
        settlement or settings.settlement,
        sleep=sleep,
        now=lambda: datetime.fromtimestamp(clock(), UTC),
    )


def worker_from_environment(app_root: Path) -> Worker:
    """Start-up: every settings and policy problem in one error, before any message arrives.

    Nothing here touches the network: tables are created on first use and the Service Bus link
    opens when the first retry is scheduled.
    """
    configure_logging()
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = load_settings(app_root=app_root)
    except ConfigurationError as exc:
        problems.extend(exc.problems)
    store: TableStore | None = None
    try:
        store = table_store(storage_settings(os.environ))
    except ConfigurationError as exc:
        problems.extend(exc.problems)
    queue: QueueClient | None = None
    try:
        queue = QueueClient(servicebus_settings(os.environ))
    except ConfigurationError as exc:
        problems.extend(p for p in exc.problems if p not in problems)
    if settings is not None and store is not None and queue is not None:
        try:
            return build_worker(
                settings,
                store=store,
                scheduler=queue,
                dry_run=os.environ.get("GUARDRAILS_DRY_RUN", "").lower() == "true",
            )
        except PolicyError as exc:
            problems.extend(f"policy: {issue}" for issue in exc.issues)
        except ConfigurationError as exc:
            problems.extend(exc.problems)
    raise ConfigurationError(problems)


def build_sweep(
    worker: Worker,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Sweep:
    """The reconcile sweep over the worker's own executor: one code path for events and sweeps."""
    from guardrails.reconcile import Sweep

    executor = worker.executor
    return Sweep(
        policy=executor.policy,
        # Pages and batches wait out any 429 (up to five minutes each) rather than failing the run.
        dataverse=executor.dataverse.patient(max_retry_after=300.0),
        executor=executor,
        runs=worker.state.runs,
        dry_run=dry_run,
        progress=progress,
    )
