"""One structured audit record per message: what was decided, what was written, and why.

The record is built from the typed result (the plan is the audit record); where it goes is a
sink passed in: structlog's JSON lines in the Function App (Application Insights keeps them),
a list in tests, and a durable store later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import structlog

from guardrails.mailbox import webapi_body
from guardrails.outcomes import Result
from guardrails.values import scrub, to_json

AuditSink = Callable[[dict[str, Any]], None]


def audit_record(
    result: Result, *, message_id: str | None, dry_run: bool, duration_ms: float
) -> dict[str, Any]:
    decision = result.decision
    record: dict[str, Any] = {
        "result": type(result).__name__,
        "message_id": message_id,
        "dry_run": dry_run,
        "duration_ms": duration_ms,
    }
    if decision is not None:
        record.update(
            correlation_id=decision.correlation_id,
            mailbox_id=decision.mailbox_id,
            initiating_user_id=decision.initiating_user_id,
            outcome=decision.outcome.value,
            reason=decision.reason,
            rules=sorted({v.rule for v in decision.violations}),
            before={v.column.value: to_json(v.actual) for v in decision.violations},
            after=webapi_body(decision.patch),
            violations=[v.to_dict() for v in decision.violations],
            changed=list(decision.changed),
            unverified=[f.value for f in decision.unverified],
            notes=list(decision.notes),
        )
        if decision.attention:
            record["attention"] = decision.attention
    wrote = getattr(result, "wrote", False)
    record["wrote"] = wrote
    if getattr(result, "replayed", False):
        record["replayed"] = True
    record["notified"] = list(getattr(result, "notified", ()))
    errors = list(getattr(result, "errors", ()))
    if errors:
        record["errors"] = errors
    reason = getattr(result, "reason", None)
    if reason and (decision is None or reason != decision.reason):
        record["result_reason"] = reason
    delay = getattr(result, "delay", None)
    if delay is not None:
        record["retry_after"] = delay
    # Names and addresses come from people and directories: make sure every sink can encode.
    cleaned: dict[str, Any] = scrub(record)
    return cleaned


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines through the standard library, which the Functions host forwards."""
    logging.getLogger("guardrails").setLevel(level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


def structlog_sink(logger: Any = None) -> AuditSink:
    log = logger or structlog.get_logger("guardrails.audit")

    def sink(record: dict[str, Any]) -> None:
        level = "error" if record["result"] == "GiveUp" else "info"
        getattr(log, level)("guardrails.decision", **record)

    return sink
