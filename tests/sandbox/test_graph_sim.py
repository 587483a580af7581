"""The Microsoft Graph mail simulator (sendMail, drafts), driven over real HTTPS with requests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from guardrails.sandbox import GraphSimulator, IdentitySimulator, SandboxTLS
from guardrails.sandbox.environment import CLIENT_ID, Sandbox

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


# -- drafts: exactly-once notifications -----------------------------------------------------------

NOTICE_ID = "<guardrails.3f2a9c.mailbox-1@contoso.com>"


def draft(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": "Your mailbox settings were restored",
        "body": {"contentType": "HTML", "content": "<p>Hello Alice</p>"},
        "toRecipients": [{"emailAddress": {"address": "alice@contoso.com"}}],
        "ccRecipients": [{"emailAddress": {"address": "it@contoso.com"}}],
        "internetMessageId": NOTICE_ID,
    }
    body.update(overrides)
    return body


def messages_url(graph: GraphSimulator, sender: str = SENDER) -> str:
    return f"{graph.url}/v1.0/users/{sender}/messages"


def find(graph: GraphSimulator, session: requests.Session, message_id: str) -> list[Any]:
    response = session.get(
        messages_url(graph),
        params={
            "$filter": f"internetMessageId eq '{message_id}'",
            "$select": "id,isDraft,internetMessageId",
        },
    )
    assert response.status_code == 200, response.text
    found: list[Any] = response.json()["value"]
    return found


def test_draft_then_send_is_delivered_once_and_moves_to_sent_items(
    graph: GraphSimulator, session: requests.Session
) -> None:
    created = session.post(messages_url(graph), json=draft())
    assert created.status_code == 201, created.text
    message = created.json()
    assert message["isDraft"] is True
    assert message["internetMessageId"] == NOTICE_ID
    assert message["subject"] == "Your mailbox settings were restored"
    assert message["body"] == {"contentType": "html", "content": "<p>Hello Alice</p>"}
    assert message["toRecipients"][0]["emailAddress"]["address"] == "alice@contoso.com"
    assert message["@odata.context"].endswith("/messages/$entity")
    assert graph.sent == []  # a draft is not sent
    draft_id = message["id"]

    assert find(graph, session, NOTICE_ID) == [
        {
            "@odata.etag": message["@odata.etag"],
            "id": draft_id,
            "isDraft": True,
            "internetMessageId": NOTICE_ID,
        }
    ]

    sent = session.post(f"{messages_url(graph)}/{draft_id}/send")
    assert sent.status_code == 202
    assert sent.content == b""
    (mail,) = graph.sent
    assert mail.via == "draft"
    assert mail.sender == SENDER
    assert mail.subject == "Your mailbox settings were restored"
    assert mail.html == "<p>Hello Alice</p>"
    assert mail.to == ["alice@contoso.com"]
    assert mail.cc == ["it@contoso.com"]
    assert mail.internet_message_id == NOTICE_ID

    (sent_item,) = find(graph, session, NOTICE_ID)
    assert sent_item["isDraft"] is False
    assert sent_item["id"] != draft_id  # Sent Items holds it under a new id
    assert sent_item["id"] == mail.message_id

    again = session.post(f"{messages_url(graph)}/{draft_id}/send")
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "ErrorItemNotFound"
    assert session.get(f"{messages_url(graph)}/{draft_id}").status_code == 404
    assert len(graph.sent) == 1

    read = session.get(f"{messages_url(graph)}/{sent_item['id']}")
    assert read.status_code == 200
    assert read.json()["isDraft"] is False
    assert read.json()["sentDateTime"]
    assert read.json()["from"] == {"emailAddress": {"name": SENDER, "address": SENDER}}
    resend_sent = session.post(f"{messages_url(graph)}/{sent_item['id']}/send")
    assert resend_sent.status_code == 400
    assert len(graph.sent) == 1
    assert [m.folder for m in graph.messages(SENDER)] == ["sentitems"]


def test_internet_message_id_is_not_unique_and_the_filter_returns_every_match(
    graph: GraphSimulator, session: requests.Session
) -> None:
    first = session.post(messages_url(graph), json=draft()).json()
    second = session.post(messages_url(graph), json=draft()).json()
    other = session.post(messages_url(graph), json=draft(internetMessageId="<other@contoso.com>"))
    assert other.status_code == 201
    found = find(graph, session, NOTICE_ID)
    assert {m["id"] for m in found} == {first["id"], second["id"]}
    assert all(m["isDraft"] for m in found)
    assert session.post(f"{messages_url(graph)}/{first['id']}/send").status_code == 202
    assert sorted(m["isDraft"] for m in find(graph, session, NOTICE_ID)) == [False, True]
    # Exchange compares the string case-insensitively.
    assert len(find(graph, session, NOTICE_ID.upper())) == 2
    assert len(graph.drafts(SENDER)) == 2


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("guardrails.1@contoso.com", "InvalidInternetMessageId"),
        ("<guardrails.1>", "InvalidInternetMessageId"),
        ("<two words@contoso.com>", "InvalidInternetMessageId"),
        ("<a@b@c>", "InvalidInternetMessageId"),
        ("", "InvalidInternetMessageId"),
        (42, "RequestBodyRead"),
    ],
)
def test_internet_message_id_must_be_a_message_id(
    graph: GraphSimulator, session: requests.Session, value: object, code: str
) -> None:
    response = session.post(messages_url(graph), json=draft(internetMessageId=value))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert graph.messages() == []
    assert session.post(send_url(graph), json=message(internetMessageId=value)).status_code == 400
    assert graph.sent == []


def test_draft_without_internet_message_id_gets_one(
    graph: GraphSimulator, session: requests.Session
) -> None:
    body = draft()
    del body["internetMessageId"]
    created = session.post(messages_url(graph), json=body).json()
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", created["internetMessageId"])
    assert find(graph, session, created["internetMessageId"])[0]["id"] == created["id"]


def test_draft_without_recipients_can_be_saved_but_not_sent(
    graph: GraphSimulator, session: requests.Session
) -> None:
    created = session.post(
        messages_url(graph), json=draft(toRecipients=[], ccRecipients=None)
    ).json()
    response = session.post(f"{messages_url(graph)}/{created['id']}/send")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ErrorInvalidRecipients"
    assert graph.sent == []
    assert find(graph, session, NOTICE_ID)[0]["isDraft"] is True


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "BadRequest"),
        (b"[]", "BadRequest"),
        (b'{"subject": "x", "saveToSentItems": false}', "RequestBodyRead"),
        (b'{"subject": 1}', "RequestBodyRead"),
        (b'{"toRecipients": [{"address": "a@b.com"}]}', "ErrorInvalidRecipients"),
    ],
)
def test_invalid_drafts_are_400(
    graph: GraphSimulator, session: requests.Session, payload: bytes, code: str
) -> None:
    response = session.post(
        messages_url(graph), data=payload, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert graph.messages() == []


def test_send_mail_keeps_a_sent_items_copy_unless_told_not_to(
    graph: GraphSimulator, session: requests.Session
) -> None:
    saved = message(internetMessageId="<saved@contoso.com>")["message"]
    assert session.post(send_url(graph), json={"message": saved}).status_code == 202
    unsaved = message(internetMessageId="<unsaved@contoso.com>")["message"]
    assert (
        session.post(
            send_url(graph), json={"message": unsaved, "saveToSentItems": False}
        ).status_code
        == 202
    )
    first, second = graph.sent
    assert first.via == second.via == "sendMail"
    assert first.internet_message_id == "<saved@contoso.com>"
    assert first.message_id is not None
    assert second.message_id is None
    assert [m["id"] for m in find(graph, session, "<saved@contoso.com>")] == [first.message_id]
    assert find(graph, session, "<unsaved@contoso.com>") == []


def test_messages_from_another_mailbox_are_not_found(
    graph: GraphSimulator, session: requests.Session
) -> None:
    graph.mailboxes = {SENDER, "other@contoso.com"}
    created = session.post(messages_url(graph), json=draft()).json()
    other = messages_url(graph, "other@contoso.com")
    assert session.post(f"{other}/{created['id']}/send").status_code == 404
    assert session.get(f"{other}/{created['id']}").status_code == 404
    assert find(graph, session, NOTICE_ID)[0]["id"] == created["id"]
    unknown = session.post(messages_url(graph, "nobody@contoso.com"), json=draft())
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "ErrorInvalidUser"


def test_list_query_options(graph: GraphSimulator, session: requests.Session) -> None:
    for index in range(12):
        body = draft(internetMessageId=f"<n{index}@contoso.com>", subject=f"Notice {index}")
        assert session.post(messages_url(graph), json=body).status_code == 201
    first = session.get(messages_url(graph), params={"$select": "subject"}).json()
    assert len(first["value"]) == 10  # Graph's default page
    assert set(first["value"][0]) == {"@odata.etag", "id", "subject"}
    rest = session.get(first["@odata.nextLink"]).json()
    assert len(rest["value"]) == 2
    assert "@odata.nextLink" not in rest
    subjects = {m["subject"] for m in first["value"] + rest["value"]}
    assert subjects == {f"Notice {i}" for i in range(12)}
    both = session.get(
        messages_url(graph),
        params={
            "$filter": "(internetMessageId eq '<n1@contoso.com>' or "
            "internetMessageId eq '<n2@contoso.com>') and isDraft eq true",
            "$top": "5",
        },
    ).json()["value"]
    assert {m["internetMessageId"] for m in both} == {"<n1@contoso.com>", "<n2@contoso.com>"}

    bad_select = session.get(messages_url(graph), params={"$select": "id,nosuch"})
    assert bad_select.status_code == 400
    assert bad_select.json()["error"]["code"] == "RequestBroker--ParseUri"
    for bad in (
        "startswith(subject,'N')",
        "internetMessageId ne '<n1@contoso.com>'",
        "isDraft eq 'true'",
        "internetMessageId eq",
    ):
        response = session.get(messages_url(graph), params={"$filter": bad})
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "ErrorInvalidUrlQueryFilter"
    assert session.get(messages_url(graph), params={"$top": "0"}).status_code == 400
    assert session.get(messages_url(graph), params={"$orderby": "subject"}).status_code == 400


def test_application_permissions_are_enforced_once_granted(
    graph: GraphSimulator, session: requests.Session
) -> None:
    graph.grant(CLIENT, "Mail.Send")
    denied = session.post(messages_url(graph), json=draft())
    assert denied.status_code == 403
    assert denied.json()["error"] == {
        "code": "ErrorAccessDenied",
        "message": "Access is denied. Check credentials and try again.",
        "innerError": denied.json()["error"]["innerError"],
    }
    assert session.get(messages_url(graph)).status_code == 403  # reading needs Mail.Read*
    assert session.post(send_url(graph), json=message()).status_code == 202
    assert graph.messages() == []  # the sendMail copy only; no draft was created
    graph.clear_sent()

    graph.grant(CLIENT, "Mail.ReadWrite")
    created = session.post(messages_url(graph), json=draft())
    assert created.status_code == 201
    assert len(find(graph, session, NOTICE_ID)) == 1

    graph.revoke(CLIENT, "Mail.Send")
    assert session.post(f"{messages_url(graph)}/{created.json()['id']}/send").status_code == 403
    assert session.post(send_url(graph), json=message()).status_code == 403
    assert graph.sent == []

    graph.revoke(CLIENT)
    graph.grant(CLIENT, "Mail.ReadBasic.All")
    assert len(find(graph, session, NOTICE_ID)) == 1
    assert session.post(messages_url(graph), json=draft()).status_code == 403
    assert graph.permissions == {CLIENT: {"Mail.ReadBasic.All"}}


def test_sandbox_grants_the_app_send_and_drafts() -> None:
    with Sandbox() as sandbox:
        assert sandbox.graph.permissions == {CLIENT_ID.lower(): {"Mail.Send", "Mail.ReadWrite"}}
