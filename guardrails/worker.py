"""The Service Bus message handler: builds the executor from settings and settles by result.

Until durable settlement arrives (delivery-guarantees issue), settlement uses what the classic
Functions binding offers: returning completes the message, raising abandons it so Service Bus
redelivers it, and after the queue's max delivery count dead-letters it. A message that can
never succeed raises PermanentFailure with the reason an admin acts on, logged on every attempt.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrails.audit import AuditSink, configure_logging, structlog_sink
from guardrails.clients.auth import MsalTokenProvider, TokenProvider
from guardrails.clients.dataverse import DataverseClient
from guardrails.clients.graph import GraphClient
from guardrails.clients.http import RetryPolicy, new_session
from guardrails.errors import ConfigurationError, GuardrailsError, PermanentFailure
from guardrails.executor import Executor
from guardrails.outcomes import Done, GiveUp, NothingToDo, Result, RetryLater
from guardrails.policy import PolicyError, load_policy
from guardrails.settings import Settings, load_settings


class RetryableFailure(GuardrailsError):
    """Raised so the Functions host abandons the message and Service Bus delivers it again."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(f"{reason} (retry in about {delay:.0f} s)")
        self.delay = delay


@dataclass(frozen=True, slots=True)
class Worker:
    executor: Executor

    def handle(
        self,
        body: bytes,
        *,
        message_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> Result:
        result = self.executor.process(
            body, message_id=message_id, properties=properties, content_type=content_type
        )
        if isinstance(result, RetryLater):
            raise RetryableFailure(result.reason, result.delay)
        if isinstance(result, GiveUp):
            raise PermanentFailure(result.reason)
        assert isinstance(result, Done | NothingToDo)
        return result


def build_worker(
    settings: Settings,
    *,
    tokens: TokenProvider | None = None,
    audit: AuditSink | None = None,
    retry: RetryPolicy | None = None,
    dry_run: bool = False,
) -> Worker:
    """Everything the worker needs, wired once per process; clients are immutable after this."""
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
    )
    graph = GraphClient(
        settings.graph_url,
        scope=settings.graph_scope,
        tokens=tokens,
        session=session,
        timeout=settings.http_timeout,
        retry=retry,
    )
    executor = Executor(
        policy=policy,
        dataverse=dataverse,
        mailer=graph,
        audit=audit or structlog_sink(),
        dry_run=dry_run,
        max_body_bytes=settings.max_body_bytes,
    )
    return Worker(executor)


def worker_from_environment(app_root: Path) -> Worker:
    """Start-up: every settings and policy problem in one error, before any message arrives."""
    configure_logging()
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = load_settings(app_root=app_root)
    except ConfigurationError as exc:
        problems.extend(exc.problems)
    if settings is not None:
        try:
            return build_worker(
                settings, dry_run=os.environ.get("GUARDRAILS_DRY_RUN", "").lower() == "true"
            )
        except PolicyError as exc:
            problems.extend(f"policy: {issue}" for issue in exc.issues)
        except ConfigurationError as exc:
            problems.extend(exc.problems)
    raise ConfigurationError(problems)
