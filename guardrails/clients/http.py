"""One request path for every service: token, timeout, 401 refresh, back-off, typed errors.

Retry policy is data (RetryPolicy), and errors are types that say whether a retry can help. A
wait longer than the policy allows in-process is not slept through: it surfaces as Throttled with
the service's Retry-After, for the caller to reschedule without holding the message lock. A 429
closes a gate for every thread of the client and sets a pace (guardrails.clients.pacing).
"""

from __future__ import annotations

import copy
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import requests

from guardrails.clients.auth import TokenProvider
from guardrails.clients.pacing import Budget, BudgetHeaders, GateClosed, Pacer
from guardrails.errors import (
    AuthenticationError,
    HeldBack,
    NotFound,
    OutcomeUnknown,
    PermanentServiceError,
    PreconditionFailed,
    ServiceError,
    Throttled,
    TransientServiceError,
)

if TYPE_CHECKING:
    from requests.sessions import _Settings

_TRANSIENT_STATUS = frozenset({408, 500, 502, 503, 504})
# Visible ASCII and spaces only: a header value with CR/LF or other controls would split the
# request (or make `requests` raise); such a value never leaves this process.
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]*$")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    # Retry-After up to this is waited out in-process; longer is handed to the caller.
    max_retry_after: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        backoff: float = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return backoff * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not security


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class ApiClient:
    """Base of the Dataverse and Graph clients; immutable once built, safe across threads."""

    service = "service"
    # Response headers reporting the remaining service protection budget, when the service has them.
    budget_headers: BudgetHeaders | None = None

    def __init__(
        self,
        base_url: str,
        *,
        scope: str,
        tokens: TokenProvider,
        session: requests.Session,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        default_headers: Mapping[str, str] | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._scope = scope
        self._tokens = tokens
        self._session = session
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._headers = dict(default_headers or {})
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        # After a 429 no thread of this client sends before the service's Retry-After has
        # passed, then they resume paced: one pacer per user (clients of the same user may
        # share one), shared by clones (`patient`).
        self._pacer = pacer or Pacer()

    @property
    def request_counts(self) -> Mapping[str, int]:
        """Requests sent, by 'METHOD first-path-segment' (for benchmarks and tests)."""
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, method: str, path: str) -> None:
        path = path.removeprefix(self.base_url + "/")
        segment = path.split("?", 1)[0].split("(", 1)[0].split("/", 1)[0]
        with self._counts_lock:
            self._counts[f"{method} {segment}"] += 1

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
        repeatable: bool = True,
        data: bytes | None = None,
    ) -> requests.Response:
        """Send one request, refreshing the token once on 401 and retrying what may pass.

        A request that is not `repeatable` (a conditional write) is retried only when the
        service said it did not act (429); any other failure may have come after the write
        happened, so it is raised as `OutcomeUnknown` for the caller to look before acting again.
        """
        # An absolute URL of this service (an @odata.nextLink) is followed unchanged.
        url = path if path.startswith(self.base_url + "/") else f"{self.base_url}/{path}"
        for name, value in (headers or {}).items():
            if not _HEADER_VALUE.match(value):
                raise PermanentServiceError(
                    self.service,
                    f"refusing to send header {name} with a control character in its value",
                    method=method,
                    url=url,
                )
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            started = self._admit(method, url)
            token = self._tokens.token(self._scope, force_refresh=refreshed)
            all_headers = {**self._headers, **(headers or {}), "Authorization": f"Bearer {token}"}
            self._count(method, path)
            throttled_for: float | None = None
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    headers=all_headers,
                    timeout=self._timeout,
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                error: ServiceError = TransientServiceError(
                    self.service, f"{type(exc).__name__}: {exc}", method=method, url=url
                )
            else:
                budget = Budget.read(self.budget_headers, response.headers)
                if response.status_code != 429:
                    self._pacer.admitted(started, budget)
                if response.status_code in expect:
                    return response
                if response.status_code == 401:
                    if refreshed:
                        raise _refused(self.service, response)
                    refreshed = True  # the token may have been revoked or rotated: once
                    attempt -= 1
                    continue
                error = self.error(response, method, url)
                if isinstance(error, Throttled):
                    throttled_for = self._retry.delay(attempt, error.retry_after)
                    self._pacer.throttled(throttled_for, budget)
            if not repeatable and error.retryable and throttled_for is None:
                raise OutcomeUnknown(error)
            if not error.retryable or attempt >= self._retry.max_attempts:
                raise error
            if throttled_for is not None:
                if throttled_for > self._retry.max_retry_after:
                    raise error
                continue  # the gate holds this thread, like every other, until it has passed
            wait = self._retry.delay(attempt, error.retry_after)
            if wait > self._retry.max_retry_after:
                raise error
            self._sleep(wait)

    def _admit(self, method: str, url: str) -> float:
        """Wait for the gate and the pace; a Retry-After longer than this client waits is not
        waited (nor cut short by sending): it is raised as Throttled, nothing sent."""
        try:
            return self._pacer.admit(self._sleep, self._retry.max_retry_after)
        except GateClosed as closed:
            raise HeldBack(
                self.service,
                f"not sent: throttled for another {closed.wait:.1f} s",
                retry_after=closed.wait,
                method=method,
                url=url,
            ) from None

    def patient(
        self,
        *,
        max_retry_after: float,
        max_attempts: int = 8,
        sleep: Callable[[float], None] | None = None,
    ) -> Self:
        """The same client (session, tokens, caches, counts) waiting out longer Retry-Afters
        itself: for the sweep, which holds no message lock and must honour every 429."""
        clone = copy.copy(self)
        clone._retry = replace(
            self._retry, max_retry_after=max_retry_after, max_attempts=max_attempts
        )
        if sleep is not None:
            clone._sleep = sleep
        return clone

    def error(self, response: requests.Response, method: str, url: str) -> ServiceError:
        code, message = _error_body(response)
        status = response.status_code
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        kwargs: dict[str, Any] = {"status": status, "code": code, "method": method, "url": url}
        if status == 429:
            return Throttled(self.service, message, retry_after=retry_after, **kwargs)
        if status == 404:
            return NotFound(self.service, message, **kwargs)
        if status == 412:
            return PreconditionFailed(self.service, message, **kwargs)
        if status in _TRANSIENT_STATUS:
            return TransientServiceError(self.service, message, retry_after=retry_after, **kwargs)
        return PermanentServiceError(self.service, message, **kwargs)


def _refused(service: str, response: requests.Response) -> AuthenticationError:
    code, message = _error_body(response)
    return AuthenticationError(
        f"{service} refused a freshly issued token ({message}); check the app's permissions "
        "(for Dataverse: an application user with a security role in this environment)",
        code=code,
    )


def _error_body(response: requests.Response) -> tuple[str | None, str]:
    """Dataverse's and Graph's error bodies share one shape: {"error": {"code", "message"}}."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        code = error.get("code")
        message = error.get("message")
        return (str(code) if code else None), str(message or response.reason or "error")
    text = response.text.strip()[:500]
    return None, text or str(response.reason or f"HTTP {response.status_code}")


class _TimeoutSession(requests.Session):
    """A session whose every request has a timeout, including those MSAL sends through it."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._default_timeout = timeout
        self.headers["User-Agent"] = "mailbox-guardrails"
        self._environment: dict[tuple[str, str], _Settings] = {}

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._default_timeout
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(
        self,
        url: str | bytes | None,
        proxies: MutableMapping[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: str | tuple[str, str] | None,
    ) -> _Settings:
        """Proxy variables and the CA bundle, read from the environment once per origin.

        `requests` reads every environment variable for the proxy settings on each request,
        about a tenth of a request's cost in this process; a running host's environment does not
        change. Explicit per-request settings (none of this project's calls have any) are
        merged afresh.
        """
        if proxies or stream is not None or verify is not None or cert is not None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url.decode() if isinstance(url, bytes) else str(url))
        origin = (parts.scheme, parts.netloc)
        settings = self._environment.get(origin)
        if settings is None:
            settings = super().merge_environment_settings(url, {}, None, None, None)
            self._environment[origin] = settings
        fresh = settings.copy()
        fresh["proxies"] = dict(settings["proxies"])  # `send` may add to it
        return fresh


def new_session(timeout: float = 30.0) -> requests.Session:
    return _TimeoutSession(timeout)
