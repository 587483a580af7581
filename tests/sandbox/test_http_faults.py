"""Fault injection of the sandbox servers: a flaky cloud as a real ``requests`` client meets it.

Every fault kind runs against every simulator (Dataverse, Graph, identity) over HTTPS with a short
client timeout. The point of each test is what the *server* did while the client saw an error:
a dropped answer after a committed write must leave the write committed and its event published.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from guardrails.sandbox import (
    DataverseSimulator,
    GraphSimulator,
    IdentitySimulator,
    SandboxServer,
    SandboxTLS,
    WriteEvent,
)
from guardrails.sandbox.http import CHAOS_KINDS

pytestmark = pytest.mark.integration

TENANT = "11111111-1111-1111-1111-111111111111"
CLIENT = "77777777-7777-7777-7777-777777777777"
SECRET = "fault-secret"
# Connecting (TCP and TLS) may take its time on a busy machine; reading the answer gets 0.3 s,
# far longer than the simulators need and far shorter than an injected delay.
TIMEOUT = (5.0, 0.3)
DELAY = 0.8
SIMULATORS = ("dataverse", "graph", "identity")
Timeout = float | tuple[float, float]


@dataclass
class Target:
    """One simulator, a request that makes it act, and a way to count that it did."""

    name: str
    server: SandboxServer
    send: Callable[[requests.Session, Timeout], requests.Response]
    acted: Callable[[], int]
    ok_status: int
    events: list[WriteEvent]

    def wait_acted(self, expected: int, within: float = 5.0) -> int:
        deadline = time.monotonic() + within
        while self.acted() < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.acted()


@pytest.fixture(scope="module")
def tls() -> Iterator[SandboxTLS]:
    with SandboxTLS() as sandbox_tls:
        yield sandbox_tls


@pytest.fixture
def session(tls: SandboxTLS, monkeypatch: pytest.MonkeyPatch) -> Iterator[requests.Session]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_bundle_path()))
    with requests.Session() as http:
        yield http


def _dataverse(tls: SandboxTLS) -> Target:
    dv = DataverseSimulator(tls)
    dv.add_user(fullname="# Guardrails", internalemailaddress=None, applicationid=CLIENT)
    user = dv.add_user(fullname="Alice", internalemailaddress="alice@contoso.com")
    mailbox = dv.add_mailbox(owner_user_id=user, emailaddress="alice@contoso.com")
    events: list[WriteEvent] = []
    dv.add_write_listener(events.append)
    toggle = [2, 3]  # the row starts at 2: the first write sets 3

    def send(http: requests.Session, timeout: Timeout) -> requests.Response:
        toggle.reverse()  # each write really changes the row
        return http.patch(
            f"{dv.api_url}/mailboxes({mailbox})",
            json={"incomingemaildeliverymethod": toggle[0]},
            headers={"Authorization": f"Bearer {CLIENT}"},
            timeout=timeout,
        )

    return Target("dataverse", dv, send, lambda: len(dv.writes), 204, events)


def _graph(tls: SandboxTLS) -> Target:
    graph = GraphSimulator(tls)
    body = {
        "message": {
            "subject": "Your mailbox settings were restored",
            "body": {"contentType": "HTML", "content": "<p>Hello</p>"},
            "toRecipients": [{"emailAddress": {"address": "alice@contoso.com"}}],
        },
        "saveToSentItems": False,
    }

    def send(http: requests.Session, timeout: Timeout) -> requests.Response:
        return http.post(
            f"{graph.url}/v1.0/users/guardrails@contoso.com/sendMail",
            json=body,
            headers={"Authorization": "Bearer token"},
            timeout=timeout,
        )

    return Target("graph", graph, send, lambda: len(graph.sent), 202, [])


def _identity(tls: SandboxTLS) -> Target:
    idp = IdentitySimulator(tls)
    idp.register_app(TENANT, CLIENT, secret=SECRET)

    def send(http: requests.Session, timeout: Timeout) -> requests.Response:
        return http.post(
            idp.token_endpoint(TENANT),
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT,
                "client_secret": SECRET,
                "scope": "https://contoso.crm.dynamics.com/.default",
            },
            timeout=timeout,
        )

    return Target("identity", idp, send, lambda: len(idp.issued_tokens), 200, [])


_FACTORIES = {"dataverse": _dataverse, "graph": _graph, "identity": _identity}


@pytest.fixture(params=SIMULATORS)
def target(request: pytest.FixtureRequest, tls: SandboxTLS) -> Iterator[Target]:
    built = _FACTORIES[request.param](tls)
    try:
        yield built
    finally:
        built.server.close()
        assert built.server.errors == [], built.server.errors


def _still_serves(target: Target, http: requests.Session, acted_before: int) -> None:
    """The connection thread survived the fault: a normal request is answered and acted on."""
    response = target.send(http, 5)
    assert response.status_code == target.ok_status, response.text
    assert target.acted() == acted_before + 1
    assert target.server.requests_log[-1].fault is None


def test_reset_before_drops_the_connection_without_acting(
    target: Target, session: requests.Session
) -> None:
    target.server.inject(reset_before=True)
    with pytest.raises(requests.ConnectionError) as raised:
        target.send(session, TIMEOUT)
    assert not isinstance(raised.value, requests.Timeout)
    time.sleep(0.1)
    assert target.acted() == 0
    assert target.events == []
    (recorded,) = target.server.requests_log
    assert (recorded.status, recorded.fault, recorded.handled_status) == (0, "reset_before", None)
    _still_serves(target, session, 0)


def test_reset_after_commits_but_loses_the_answer(
    target: Target, session: requests.Session
) -> None:
    target.server.inject(reset_after=True)
    with pytest.raises(requests.ConnectionError) as raised:
        target.send(session, TIMEOUT)
    assert not isinstance(raised.value, requests.Timeout)
    assert target.acted() == 1  # acted before the connection was dropped
    (recorded,) = target.server.requests_log
    assert (recorded.status, recorded.fault, recorded.handled_status) == (
        0,
        "reset_after",
        target.ok_status,
    )
    if target.name == "dataverse":
        dv = target.server
        assert isinstance(dv, DataverseSimulator)
        (event,) = target.events
        assert event.source == "webapi"
        assert event.changes == {"incomingemaildeliverymethod": 3}
        assert dv.mailboxes()[0]["incomingemaildeliverymethod"] == 3
    _still_serves(target, session, 1)


def test_delay_before_the_client_gives_up_and_the_server_still_acts(
    target: Target, session: requests.Session
) -> None:
    target.server.inject(delay_before=DELAY)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        target.send(session, TIMEOUT)
    assert time.monotonic() - started < DELAY
    assert target.acted() == 0  # still waiting
    assert target.wait_acted(1) == 1
    assert time.monotonic() - started >= DELAY
    if target.name == "dataverse":
        assert len(target.events) == 1
    (recorded,) = target.server.requests_log
    assert (recorded.fault, recorded.status) == ("delay_before", target.ok_status)
    _still_serves(target, session, 1)


def test_delay_after_times_out_a_request_that_took_effect(
    target: Target, session: requests.Session
) -> None:
    target.server.inject(delay_after=DELAY)
    with pytest.raises(requests.Timeout):
        target.send(session, TIMEOUT)
    assert target.acted() == 1  # acted before the delay started
    if target.name == "dataverse":
        (event,) = target.events
        assert event.changes == {"incomingemaildeliverymethod": 3}
    (recorded,) = target.server.requests_log
    assert (recorded.fault, recorded.handled_status) == ("delay_after", target.ok_status)
    _still_serves(target, session, 1)


def test_status_fault_before_acting(target: Target, session: requests.Session) -> None:
    target.server.inject(503, retry_after=4)
    response = target.send(session, TIMEOUT)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "4"
    assert response.json()  # the service's own error shape
    assert target.acted() == 0
    (recorded,) = target.server.requests_log
    assert (recorded.status, recorded.fault, recorded.handled_status) == (503, "503", None)
    _still_serves(target, session, 0)


def test_status_fault_after_acting_is_a_gateway_error_on_a_committed_request(
    target: Target, session: requests.Session
) -> None:
    target.server.inject(503, after=True)
    response = target.send(session, TIMEOUT)
    assert response.status_code == 503
    assert target.acted() == 1
    assert len(target.events) == (1 if target.name == "dataverse" else 0)
    (recorded,) = target.server.requests_log
    assert (recorded.status, recorded.fault, recorded.handled_status) == (
        503,
        "503_after",
        target.ok_status,
    )
    _still_serves(target, session, 1)


def test_throttling_fault_carries_retry_after(target: Target, session: requests.Session) -> None:
    target.server.inject(429, retry_after=2, times=2)
    assert target.server.pending_faults == 2
    for _ in range(2):
        response = target.send(session, TIMEOUT)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"
    assert target.server.pending_faults == 0
    assert target.acted() == 0
    _still_serves(target, session, 0)


def test_many_drops_leave_the_server_healthy(target: Target, session: requests.Session) -> None:
    target.server.inject(reset_before=True, times=10)
    target.server.inject(reset_after=True, times=10)
    failures = 0
    for _ in range(20):
        try:
            target.send(session, TIMEOUT)
        except requests.ConnectionError:
            failures += 1
    assert failures == 20
    assert target.acted() == 10
    _still_serves(target, session, 10)


def test_chaos_is_deterministic_for_a_seed_and_counts_add_up(
    target: Target, session: requests.Session
) -> None:
    kinds = ("reset_before", "reset_after", "delay_before", "429", 503, "503_after")

    def run(seed: int) -> tuple[list[str], dict[str, int], Counter[str | None], int]:
        target.server.clear_log()
        acted_before = target.acted()
        target.server.chaos(0.5, kinds=kinds, seed=seed, retry_after=(1, 5), delay=(0.4, 0.5))
        outcomes: list[str] = []
        for _ in range(24):
            try:
                outcomes.append(str(target.send(session, TIMEOUT).status_code))
            except requests.Timeout:
                outcomes.append("timeout")
            except requests.ConnectionError:
                outcomes.append("dropped")
        counts = target.server.chaos_counts
        target.server.clear_faults()
        # A delayed request acts (and is logged) after the client gave up: wait for it.
        stopped = counts.get("reset_before", 0) + counts.get("429", 0) + counts.get("503", 0)
        target.wait_acted(acted_before + 24 - stopped)
        deadline = time.monotonic() + 5
        while len(target.server.requests_log) < 24 and time.monotonic() < deadline:
            time.sleep(0.02)
        faults = Counter(r.fault for r in target.server.requests_log)
        return outcomes, counts, faults, target.acted() - acted_before

    first = run(seed=11)
    second = run(seed=11)
    other = run(seed=12)
    assert first[:3] == second[:3]
    assert first[0] != other[0]
    outcomes, counts, faults, acted = first
    assert sum(faults.values()) == 24
    assert sum(counts.values()) == 24 - faults[None] > 0
    assert {k: v for k, v in faults.items() if k is not None} == counts
    assert set(counts) <= {"reset_before", "reset_after", "delay_before", "429", "503", "503_after"}
    assert outcomes.count("dropped") == counts.get("reset_before", 0) + counts.get("reset_after", 0)
    assert outcomes.count("timeout") == counts.get("delay_before", 0)
    assert outcomes.count("429") == counts.get("429", 0)
    assert outcomes.count("503") == counts.get("503", 0) + counts.get("503_after", 0)
    assert outcomes.count(str(target.ok_status)) == faults[None]
    # The server acted exactly on the requests chaos did not stop before acting.
    assert acted == 24 - counts.get("reset_before", 0) - counts.get("429", 0) - counts.get("503", 0)
    if target.name == "dataverse":
        # Every committed PATCH published its event, whatever the client saw.
        assert len(target.events) == target.acted()
    assert not target.server.chaos_active
    _still_serves(target, session, target.acted())


def test_chaos_with_the_default_kinds_only_hits_matching_requests(
    tls: SandboxTLS, session: requests.Session
) -> None:
    target = _graph(tls)
    try:
        target.server.chaos(1.0, seed=3, method="POST", path_contains="/sendMail", delay=(0, 0))
        missing = session.get(
            f"{target.server.url}/v1.0/users/guardrails@contoso.com/messages",
            headers={"Authorization": "Bearer token"},
            timeout=TIMEOUT,
        )
        assert missing.status_code == 200  # not matched: no fault
        for _ in range(30):
            with contextlib.suppress(requests.RequestException):
                target.send(session, TIMEOUT)
        counts = target.server.chaos_counts
        assert sum(counts.values()) == 30  # rate 1.0: every matching request
        assert set(counts) <= set(CHAOS_KINDS)
        assert len(counts) >= 4
        target.server.chaos(0.0, seed=3)
        assert target.send(session, TIMEOUT).status_code == 202
        assert target.server.chaos_counts == {}
    finally:
        target.server.close()
        assert target.server.errors == []


def test_delay_before_does_not_act_when_the_server_closes_meanwhile(
    tls: SandboxTLS, session: requests.Session
) -> None:
    target = _graph(tls)
    target.server.inject(delay_before=10)
    failures: list[BaseException] = []

    def call() -> None:
        try:
            target.send(session, 5)
        except requests.RequestException as exc:
            failures.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.2)
    started = time.monotonic()
    target.server.close()
    worker.join(timeout=5)
    assert time.monotonic() - started < 5
    assert len(failures) == 1
    assert target.acted() == 0
    (recorded,) = target.server.requests_log
    assert (recorded.status, recorded.fault) == (0, "delay_before")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"status": 503, "reset_after": True}, "exactly one"),
        ({"reset_before": True, "after": True}, "after=True"),
        ({"delay_after": 1.0, "retry_after": 2}, "status fault"),
        ({"delay_before": -1.0}, "negative"),
        ({"status": 503, "times": 0}, "times"),
    ],
)
def test_inject_rejects_ambiguous_faults(
    tls: SandboxTLS, kwargs: dict[str, Any], message: str
) -> None:
    with GraphSimulator(tls) as graph:
        with pytest.raises(ValueError, match=message):
            graph.inject(**kwargs)
        assert graph.pending_faults == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 1.5}, "rate"),
        ({"rate": 0.5, "kinds": ["explode"]}, "unknown chaos kind"),
        ({"rate": 0.5, "kinds": [200]}, "unknown chaos kind"),
        ({"rate": 0.5, "kinds": []}, "at least one"),
        ({"rate": 0.5, "delay": (2, 1)}, "ranges"),
    ],
)
def test_chaos_rejects_bad_arguments(tls: SandboxTLS, kwargs: dict[str, Any], message: str) -> None:
    with GraphSimulator(tls) as graph:
        with pytest.raises(ValueError, match=message):
            graph.chaos(**kwargs)
        assert not graph.chaos_active
