import time
from email.utils import formatdate

import pytest

from guardrails.clients.http import RetryPolicy, retry_after_seconds


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


def test_after_a_429_every_thread_of_the_client_holds_back() -> None:
    """One throttled answer makes the client's other requests wait the Retry-After too."""
    import requests as requests_lib

    from guardrails.clients.http import ApiClient

    class Tokens:
        def token(self, scope: str, *, force_refresh: bool = False) -> str:
            return "t"

    slept: list[float] = []
    client = ApiClient(
        "https://dataverse.invalid",
        scope="s",
        tokens=Tokens(),
        session=requests_lib.Session(),
        sleep=slept.append,
    )
    client._open_at = time.monotonic() + 5.0  # as a 429 with Retry-After 5 sets it
    client._hold_back()
    assert len(slept) == 1 and 4.0 < slept[0] <= 5.0
    client._hold_back()  # the gate was passed: a later request does not wait again
    assert len(slept) == 1
