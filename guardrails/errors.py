"""Exceptions as types that say whether trying again can help (dramatiq's model).

A service's error body is kept whole (status, OData or Graph code, message) so that the audit
record and a dead-letter reason can say exactly what the service answered.
"""

from __future__ import annotations


class GuardrailsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(GuardrailsError):
    """Settings are missing or invalid; `problems` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"Mailbox Guardrails is not configured correctly ({len(problems)} problem(s)):\n{lines}"
        )


class AuthenticationError(GuardrailsError):
    """No token could be had. `transient` when the token endpoint could not be reached or
    failed (5xx): that may pass by itself. Otherwise it is configuration (a wrong or expired
    secret, consent missing, no application user) and needs a person."""

    retryable = True

    def __init__(self, message: str, *, code: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


class ServiceError(GuardrailsError):
    """A service (Dataverse, Graph) answered with an error, or could not be reached."""

    retryable = False

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.service = service
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.method = method
        self.url = url
        where = f"{method} {url}: " if method and url else ""
        status_text = f"HTTP {status}" if status is not None else "no response"
        code_text = f" {code}" if code else ""
        super().__init__(f"{service} {where}{status_text}{code_text}: {message}")


class TransientServiceError(ServiceError):
    """Throttling, a server error, a timeout or a dropped connection: later may work."""

    retryable = True


class OutcomeUnknown(TransientServiceError):
    """A write that may or may not have happened (its answer was lost, or a gateway failed after
    the service may have acted). Never repeated blindly: the caller looks at the row first."""

    def __init__(self, cause: ServiceError) -> None:
        super().__init__(
            cause.service,
            f"the outcome is unknown ({cause.message})",
            status=cause.status,
            code=cause.code,
            method=cause.method,
            url=cause.url,
        )


class Throttled(TransientServiceError):
    """429: the service protection limits; `retry_after` is the service's own wait in seconds."""


class HeldBack(Throttled):
    """Not sent: a Retry-After the service gave this client (for another request) still runs for
    longer than the caller waits in-process. Nothing was attempted, so a message held back
    spends none of its attempts."""


class PermanentServiceError(ServiceError):
    """The request itself is wrong (400, 403, ...): repeating it cannot help."""


class NotFound(PermanentServiceError):
    """404: the row does not exist (deleted since the event, or a wrong id)."""


class PreconditionFailed(ServiceError):
    """412: the row changed since it was read; read again and decide again."""


class PermanentFailure(GuardrailsError):
    """A message that can never be processed; the text is the reason an admin reads."""
