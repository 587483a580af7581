"""The Microsoft Graph ``sendMail`` simulator, driven over real HTTPS with ``requests``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from guardrails.sandbox import GraphSimulator, IdentitySimulator, SandboxTLS

pytestmark = pytest.mark.integration

TENANT = "11111111-1111-1111-1111-111111111111"
CLIENT = "44444444-4444-4444-4444-444444444444"
SENDER = "guardrails@contoso.com"


def message(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message": {
            "subject": "Your mailbox settings were restored",
            "body": {"contentType": "HTML", "content": "<p>Hello Alice</p>"},
            "toRecipients": [{"emailAddress": {"address": "alice@contoso.com"}}],
            "ccRecipients": [{"emailAddress": {"address": "it@contoso.com", "name": "IT"}}],
        },
        "saveToSentItems": False,
    }
    body["message"].update(overrides)
    return body


@pytest.fixture(scope="module")
def tls() -> Iterator[SandboxTLS]:
    with SandboxTLS() as sandbox_tls:
        yield sandbox_tls


@pytest.fixture
def idp(tls: SandboxTLS) -> Iterator[IdentitySimulator]:
    with IdentitySimulator(tls) as simulator:
        simulator.register_app(TENANT, CLIENT, secret="s")
        yield simulator


@pytest.fixture
def graph(
    tls: SandboxTLS, idp: IdentitySimulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GraphSimulator]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_bundle_path()))
    with GraphSimulator(tls, mailboxes=[SENDER.upper()]) as simulator:
        simulator.token_validator = idp.validator(simulator.url)
        yield simulator
        assert simulator.errors == [], simulator.errors


@pytest.fixture
def session(idp: IdentitySimulator, graph: GraphSimulator) -> Iterator[requests.Session]:
    with requests.Session() as http:
        token = http.post(
            idp.token_endpoint(TENANT),
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT,
                "client_secret": "s",
                "scope": f"{graph.url}/.default",
            },
            timeout=5,
        ).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        yield http


def send_url(graph: GraphSimulator, sender: str = SENDER) -> str:
    return f"{graph.url}/v1.0/users/{sender}/sendMail"


def test_send_mail_is_accepted_and_recorded(
    graph: GraphSimulator, session: requests.Session
) -> None:
    response = session.post(send_url(graph), json=message())
    assert response.status_code == 202
    assert response.content == b""
    assert response.headers["request-id"]
    (mail,) = graph.sent
    assert mail.sender == SENDER
    assert mail.subject == "Your mailbox settings were restored"
    assert mail.content_type == "HTML"
    assert mail.html == mail.content == "<p>Hello Alice</p>"
    assert mail.to == ["alice@contoso.com"]
    assert mail.cc == ["it@contoso.com"]
    assert mail.bcc == []
    assert mail.save_to_sent_items is False
    assert mail.raw == message()
    (recorded,) = graph.requests_log
    assert recorded.status == 202
    assert recorded.json == message()
    graph.clear_sent()
    assert graph.sent == []


def test_text_body_has_no_html(graph: GraphSimulator, session: requests.Session) -> None:
    body = message(body={"contentType": "text", "content": "plain"})
    assert session.post(send_url(graph), json=body).status_code == 202
    assert graph.sent[0].html is None
    assert graph.sent[0].content == "plain"


def test_missing_or_invalid_token_is_401(
    graph: GraphSimulator, idp: IdentitySimulator, session: requests.Session
) -> None:
    anonymous = requests.post(send_url(graph), json=message(), timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert anonymous.json()["error"]["message"] == "Access token is empty."
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")

    idp.revoke_all()
    revoked = session.post(send_url(graph), json=message())
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert graph.sent == []


def test_without_validator_any_bearer_is_accepted(graph: GraphSimulator) -> None:
    graph.token_validator = None
    response = requests.post(
        send_url(graph), json=message(), headers={"Authorization": "Bearer anything"}, timeout=5
    )
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "BadRequest"),
        (b"", "BadRequest"),
        (b"[]", "BadRequest"),
        (b'{"saveToSentItems": false}', "ErrorInvalidRequest"),
    ],
)
def test_unreadable_bodies_are_400(
    graph: GraphSimulator, session: requests.Session, payload: bytes, code: str
) -> None:
    response = session.post(
        send_url(graph), data=payload, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert graph.sent == []


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"toRecipients": [], "ccRecipients": []}, "ErrorInvalidRecipients"),
        (
            {"toRecipients": [{"emailAddress": {"address": "not-an-address"}}]},
            "ErrorInvalidRecipients",
        ),
        ({"toRecipients": [{"address": "alice@contoso.com"}]}, "ErrorInvalidRecipients"),
        ({"toRecipients": "alice@contoso.com"}, "RequestBodyRead"),
        ({"body": {"contentType": "Markdown", "content": "x"}}, "RequestBodyRead"),
        ({"subject": 42}, "RequestBodyRead"),
    ],
)
def test_invalid_messages_are_400(
    graph: GraphSimulator, session: requests.Session, overrides: dict[str, Any], code: str
) -> None:
    response = session.post(send_url(graph), json=message(**overrides))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert graph.sent == []


def test_no_recipients_message(graph: GraphSimulator, session: requests.Session) -> None:
    response = session.post(send_url(graph), json=message(toRecipients=[], ccRecipients=None))
    assert "contains no recipients" in response.json()["error"]["message"]


def test_unknown_sender_is_404(graph: GraphSimulator, session: requests.Session) -> None:
    response = session.post(send_url(graph, "nobody@contoso.com"), json=message())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ErrorInvalidUser"
    assert "nobody@contoso.com" in response.json()["error"]["message"]


def test_unknown_paths_and_methods(graph: GraphSimulator, session: requests.Session) -> None:
    assert session.get(f"{graph.url}/v1.0/me").status_code == 400
    assert session.get(send_url(graph)).status_code == 405


def test_injected_throttling(graph: GraphSimulator, session: requests.Session) -> None:
    graph.inject(429, retry_after=3, path_contains="/sendMail")
    throttled = session.post(send_url(graph), json=message())
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "3"
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert graph.sent == []
    graph.inject(503, body={"error": {"code": "custom", "message": "down"}})
    down = session.post(send_url(graph), json=message())
    assert down.status_code == 503
    assert down.json() == {"error": {"code": "custom", "message": "down"}}
    assert session.post(send_url(graph), json=message()).status_code == 202
    assert [r.status for r in graph.requests_log] == [429, 503, 202]
    assert len(graph.sent) == 1
