"""The Dataverse client under the simulator's service protection limits, over loopback HTTPS.

Several threads share one client, as the function's concurrent invocations do. Whatever the
pace, no request may start while a Retry-After the client was given is still running; with the
remaining-budget headers the client learns the pace at the first 429, without them over a whole
throttled cycle, and either way every request gets through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from guardrails.clients.auth import MsalTokenProvider
from guardrails.clients.dataverse import DataverseClient
from guardrails.clients.pacing import DATAVERSE_BUDGET, Budget, Pacer
from guardrails.errors import Throttled
from guardrails.sandbox.environment import Sandbox, patched_environ
from guardrails.settings import load_settings

pytestmark = pytest.mark.integration

THREADS = 4
PER_THREAD = 15  # 60 requests against 20 per second


@dataclass(frozen=True)
class Exchange:
    started: float
    answered: float
    status: int
    retry_after: float | None
    budget: str | None


class Recording(requests.Session):
    """Records every Dataverse request: when it left, when and how it was answered."""

    def __init__(self, api: str) -> None:
        super().__init__()
        self.api = api
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        response = super().request(method, url, *args, **kwargs)
        if str(url).startswith(self.api):
            retry_after = response.headers.get("Retry-After")
            exchange = Exchange(
                started,
                time.monotonic(),
                response.status_code,
                float(retry_after) if retry_after else None,
                response.headers.get(DATAVERSE_BUDGET.requests),
            )
            with self._lock:
                self.exchanges.append(exchange)
        return response


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    with Sandbox() as box, patched_environ(box.environment(policy)):
        yield box


class Watched(Pacer):
    """The pacer, watched: when each request was let through, when each 429 was taken in."""

    def __init__(self) -> None:
        super().__init__()
        self.admissions: list[float] = []
        self.gates: list[tuple[float, float]] = []  # (taken in, at the earliest reopening)

    def admit(self, sleep: Callable[[float], None], patience: float) -> float:
        started = super().admit(sleep, patience)  # the clock when it was let through
        self.admissions.append(started)
        return started

    def throttled(self, retry_after: float, budget: Budget) -> None:
        earliest = time.monotonic() + retry_after
        super().throttled(retry_after, budget)
        self.gates.append((time.monotonic(), earliest))


def client_for(sandbox: Sandbox) -> tuple[DataverseClient, Recording, Watched]:
    settings = load_settings()
    session = Recording(sandbox.dataverse.api_url)
    pacer = Watched()
    client = DataverseClient(
        settings.dataverse_url,
        tokens=MsalTokenProvider(settings.credentials, session=session, timeout=10),
        session=session,
        timeout=10,
        pacer=pacer,
    )
    client.whoami()  # the token, before the limits
    return client, session, pacer


def storm(client: DataverseClient) -> list[int]:
    statuses: list[int] = []

    def work() -> None:
        for _ in range(PER_THREAD):
            statuses.append(client.request("GET", "WhoAmI").status_code)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def assert_every_retry_after_honoured(pacer: Watched, exchanges: list[Exchange]) -> None:
    """Once the client has taken a 429 in, none of its threads starts a request before the
    Retry-After has passed. (A request let through a moment before, while the 429 was on its
    way, is not early: nothing could have known.)"""
    assert len(pacer.gates) == sum(e.status == 429 for e in exchanges) > 0
    for taken_in, reopens in pacer.gates:
        early = [a for a in pacer.admissions if taken_in < a < reopens]
        assert early == [], f"{len(early)} requests let through during a Retry-After"


@pytest.mark.parametrize("report_budget", [True, False], ids=["budget-headers", "no-headers"])
def test_threads_sharing_a_client_pace_to_the_limit_and_honour_every_429(
    sandbox: Sandbox, report_budget: bool
) -> None:
    client, session, pacer = client_for(sandbox)
    sandbox.dataverse.set_service_protection(20, 1.0, report_budget=report_budget)

    statuses = storm(client)

    assert statuses == [200] * THREADS * PER_THREAD
    exchanges = session.exchanges[1:]  # after the warm-up
    assert sandbox.dataverse.throttled_count == sum(e.status == 429 for e in exchanges)
    assert_every_retry_after_honoured(pacer, exchanges)
    assert all((e.budget is not None) is report_budget for e in exchanges)
    assert pacer.interval is not None  # learnt: paced, not released all at once


def test_a_long_retry_after_is_handed_back_without_sending(sandbox: Sandbox) -> None:
    client, session, _ = client_for(sandbox)
    sandbox.dataverse.inject(429, retry_after=45, path_contains="WhoAmI")
    with pytest.raises(Throttled):
        client.request("GET", "WhoAmI")
    with pytest.raises(Throttled) as second:
        client.request("GET", f"mailboxes({sandbox.app_user_id})")
    assert second.value.retry_after is not None and 40 < second.value.retry_after <= 45
    assert [e.status for e in session.exchanges[1:]] == [429]  # the second was never sent
