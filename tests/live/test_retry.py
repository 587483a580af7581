import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import pytest
import requests

from guardrails.clients.http import ApiClient, RetryPolicy, retry_after_seconds
from guardrails.clients.pacing import Pacer
from guardrails.errors import Throttled


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("", None), ("soon", None)],
)
def test_retry_after_in_seconds(header: str | None, expected: float | None) -> None:
    assert retry_after_seconds(header) == expected


def test_retry_after_as_an_http_date() -> None:
    header = formatdate(time.time() + 30, usegmt=True)
    seconds = retry_after_seconds(header)
    assert seconds is not None
    assert 27 <= seconds <= 30
    assert retry_after_seconds(formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_back_off_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        delays = [policy.delay(attempt, None) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter spreads retries from many workers


def test_the_services_own_wait_wins() -> None:
    assert RetryPolicy().delay(1, 12.5) == 12.5


class Tokens:
    def token(self, scope: str, *, force_refresh: bool = False) -> str:
        return "t"


class Answers(requests.Session):
    """A service that answers from a script, recording when each request was sent."""

    def __init__(self, clock: Callable[[], float], *answers: tuple[int, dict[str, str]]) -> None:
        super().__init__()
        self.clock = clock
        self.answers = list(answers)
        self.sent: list[float] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(self.clock())
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        response = requests.Response()
        response.status_code, response._content = status, b"{}"
        response.headers.update(headers)
        return response


class Clock:
    def __init__(self) -> None:
        self.now = 50.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def client_of(session: requests.Session, clock: Clock) -> ApiClient:
    return ApiClient(
        "https://service.invalid",
        scope="s",
        tokens=Tokens(),
        session=session,
        sleep=clock.sleep,
        pacer=Pacer(clock),
    )


def test_after_a_429_no_request_of_the_client_starts_before_its_retry_after() -> None:
    clock = Clock()
    session = Answers(clock, (429, {"Retry-After": "5"}))
    client = client_of(session, clock)
    assert client.request("GET", "rows").status_code == 200
    assert session.sent == [50.0, 55.0] and clock.slept == [5.0]
    client.patient(max_retry_after=300).request("GET", "rows")  # clones share the gate
    assert session.sent[-1] == 55.0 and clock.slept == [5.0]  # passed: no second wait


def test_a_retry_after_longer_than_the_client_waits_is_raised_and_nothing_sent_early() -> None:
    clock = Clock()
    session = Answers(clock, (429, {"Retry-After": "45"}))
    client = client_of(session, clock)
    with pytest.raises(Throttled) as first:
        client.request("PATCH", "rows(1)", expect=(204,), repeatable=False)
    assert first.value.retry_after == 45.0
    clock.now += 10
    with pytest.raises(Throttled) as second:  # another message, 10 s later
        client.request("GET", "rows")
    assert second.value.retry_after == 35.0 and "not sent" in str(second.value)
    assert session.sent == [50.0] and clock.slept == []
    patient = client.patient(max_retry_after=300)
    assert patient.request("GET", "rows").status_code == 200  # the sweep waits it out
    assert session.sent == [50.0, 95.0]
