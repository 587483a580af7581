"""A stand-in for Microsoft Graph mail, the guardrail's way of telling users what changed.

Two ways to send exist here, each validated the way Graph and Exchange Online validate it (bearer
token, application permission, known sender mailbox, recipients, body shape) so that a malformed
notification fails in tests as it would in production:

* ``POST /v1.0/users/{sender}/sendMail`` (``Mail.Send``): sent at once;
* drafts, which make a notification exactly-once across lost answers:
  ``POST /v1.0/users/{sender}/messages`` (``Mail.ReadWrite``) creates a draft in Drafts, with a
  client-chosen ``internetMessageId``; ``POST .../messages/{id}/send`` (``Mail.Send``) sends it,
  which moves it to Sent Items under a NEW id (the draft's id then answers 404
  ``ErrorItemNotFound``); ``GET .../messages?$filter=internetMessageId eq '<...>'``
  (``Mail.Read``/``Mail.ReadBasic.All``/``Mail.ReadWrite``) finds drafts and sent items alike.
  Exchange does not make ``internetMessageId`` unique: two drafts may share one.

Everything sent is kept in :attr:`GraphSimulator.sent`, whichever way it was sent.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from guardrails.sandbox.http import (
    Request,
    Response,
    SandboxServer,
    empty_response,
    json_response,
)
from guardrails.sandbox.tls import SandboxTLS

__all__ = ["GraphSimulator", "MailboxMessage", "SentMail"]

TokenValidator = Callable[[str], object]
MAIL_SEND = "Mail.Send"
MAIL_READ_WRITE = "Mail.ReadWrite"
_READ_PERMISSIONS = ("Mail.ReadBasic.All", "Mail.Read", "Mail.ReadWrite")
# RFC 5322 msg-id: "<" id-left "@" id-right ">", no spaces or further angle brackets.
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
_DEFAULT_TOP = 10
_MAX_TOP = 1000


@dataclass(frozen=True)
class SentMail:
    """One message Graph accepted (202)."""

    sender: str
    subject: str
    content_type: str
    content: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    save_to_sent_items: bool | None
    raw: dict[str, Any]
    internet_message_id: str | None = None
    message_id: str | None = None  # the Sent Items copy's id, when one was saved
    via: str = "sendMail"  # or "draft"

    @property
    def html(self) -> str | None:
        """The body when it was sent as HTML, else None."""
        return self.content if self.content_type.lower() == "html" else None


@dataclass(frozen=True)
class MailboxMessage:
    """A message stored in a simulated mailbox: a draft (Drafts) or a sent item (Sent Items)."""

    id: str
    mailbox: str
    folder: str  # "drafts" or "sentitems"
    is_draft: bool
    internet_message_id: str
    subject: str
    content_type: str
    content: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    created: str
    sent: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class _GraphError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class GraphSimulator(SandboxServer):
    """Microsoft Graph v1.0 mail: ``sendMail``, drafts, draft send and message lookup.

    ``token_validator`` decides whether a bearer token is valid (any truthy result counts, so
    ``IdentitySimulator.validator(graph.url)`` fits); None accepts any non-empty token. When
    the validator returns a string it is the token's client id (the identity simulator's
    validator does), else the token text stands for the client.
    ``mailboxes``, when given, is the set of sender addresses that exist (case-insensitive).
    ``permissions`` maps client ids to the application permissions (app roles) admin consent
    granted them, as a token's ``roles`` claim would carry them: ``Mail.Send`` for sendMail and
    draft send, ``Mail.ReadWrite`` to create drafts, ``Mail.Read``, ``Mail.ReadBasic.All`` or
    ``Mail.ReadWrite`` to list or get messages; a missing one answers 403 ``ErrorAccessDenied``.
    With ``permissions`` None (the default) they are not checked; :meth:`grant` turns the check
    on. All three are plain attributes and may be changed while the server runs.
    """

    def __init__(
        self,
        tls: SandboxTLS | None = None,
        *,
        token_validator: TokenValidator | None = None,
        mailboxes: Iterable[str] | None = None,
        permissions: Mapping[str, Iterable[str]] | None = None,
        latency: float = 0.0,
    ) -> None:
        self.token_validator = token_validator
        self.mailboxes: set[str] | None = (
            {m.lower() for m in mailboxes} if mailboxes is not None else None
        )
        self.permissions: dict[str, set[str]] | None = (
            {client.lower(): set(granted) for client, granted in permissions.items()}
            if permissions is not None
            else None
        )
        self._sent_lock = threading.Lock()
        self._sent: list[SentMail] = []
        self._store: dict[str, MailboxMessage] = {}
        super().__init__(tls, latency=latency)

    def grant(self, client_id: str, *permissions: str) -> None:
        """Grant application permissions to a client (and start checking permissions)."""
        with self._sent_lock:
            if self.permissions is None:
                self.permissions = {}
            self.permissions.setdefault(client_id.lower(), set()).update(permissions)

    def revoke(self, client_id: str, *permissions: str) -> None:
        """Withdraw application permissions from a client (all of them when none are named)."""
        with self._sent_lock:
            if self.permissions is None:
                self.permissions = {}
            granted = self.permissions.setdefault(client_id.lower(), set())
            if permissions:
                granted.difference_update(permissions)
            else:
                granted.clear()

    def messages(self, mailbox: str | None = None) -> list[MailboxMessage]:
        """Drafts and Sent Items copies stored now (of one mailbox when given), in the order
        they were stored (a sent draft is stored anew, under its Sent Items id)."""
        with self._sent_lock:
            stored = list(self._store.values())
        if mailbox is not None:
            stored = [m for m in stored if m.mailbox == mailbox.lower()]
        return stored

    def drafts(self, mailbox: str | None = None) -> list[MailboxMessage]:
        return [m for m in self.messages(mailbox) if m.is_draft]

    @property
    def sent(self) -> list[SentMail]:
        """A snapshot of accepted messages, oldest first."""
        with self._sent_lock:
            return list(self._sent)

    def clear_sent(self) -> None:
        """Forget what was sent (the Sent Items copies and drafts stay; see :meth:`messages`)."""
        with self._sent_lock:
            self._sent.clear()

    def common_headers(self, request: Request) -> dict[str, str]:
        return {
            "request-id": str(uuid.uuid4()),
            "client-request-id": request.header("client-request-id") or str(uuid.uuid4()),
            "Cache-Control": "no-cache",
        }

    def fault_body(self, request: Request, status: int) -> object:
        if status == 429:
            return _error_body(
                "TooManyRequests", "Too many requests. Retry after the indicated time."
            )
        if status == 503:
            return _error_body("ServiceNotAvailable", "The service is temporarily unavailable.")
        return _error_body("UnknownError", f"The request failed with status {status}.")

    def handle(self, request: Request) -> Response:
        try:
            return self._handle(request)
        except _GraphError as error:
            headers = {}
            if error.status == 401:
                headers["WWW-Authenticate"] = (
                    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/'
                    'common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'
                )
            return json_response(
                error.status, _error_body(error.code, error.message), headers=headers
            )

    def _handle(self, request: Request) -> Response:
        client = self._authenticate(request)
        parts = [p for p in request.path.split("/") if p]
        if len(parts) < 4 or parts[0] != "v1.0" or parts[1].lower() != "users":
            segment = parts[-1] if parts else ""
            raise _GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
        sender, resource, rest = parts[2], parts[3], parts[4:]
        if resource.lower() == "sendmail" and not rest:
            if request.method != "POST":
                raise _GraphError(
                    405, "Request_BadRequest", "The requested method is not allowed for sendMail."
                )
            self._require_permission(client, MAIL_SEND)
            self._require_mailbox(sender)
            return self._send_mail(sender, request)
        if resource.lower() != "messages" or len(rest) > 2:
            raise _GraphError(
                400, "BadRequest", f"Resource not found for the segment '{parts[-1]}'."
            )
        if not rest:
            if request.method == "POST":
                self._require_permission(client, MAIL_READ_WRITE)
                self._require_mailbox(sender)
                return self._create_draft(sender, request)
            if request.method == "GET":
                self._require_permission(client, *_READ_PERMISSIONS)
                self._require_mailbox(sender)
                return self._list_messages(sender, request)
            raise _GraphError(
                405, "Request_BadRequest", "The requested method is not allowed for messages."
            )
        message_id = rest[0]
        if len(rest) == 2:
            if rest[1].lower() != "send":
                raise _GraphError(
                    400, "BadRequest", f"Resource not found for the segment '{rest[1]}'."
                )
            if request.method != "POST":
                raise _GraphError(
                    405, "Request_BadRequest", "The requested method is not allowed for send."
                )
            self._require_permission(client, MAIL_SEND)
            self._require_mailbox(sender)
            return self._send_draft(sender, message_id)
        if request.method != "GET":
            raise _GraphError(
                405, "Request_BadRequest", "The requested method is not allowed for a message."
            )
        self._require_permission(client, *_READ_PERMISSIONS)
        self._require_mailbox(sender)
        select = _parse_select(request.query.get("$select"))
        message = self._find(sender, message_id)
        context = f"{self.url}/v1.0/$metadata#users('{quote(sender)}')/messages"
        if select:
            context += f"({','.join(select)})"
        return json_response(
            200, {"@odata.context": f"{context}/$entity", **_representation(message, select)}
        )

    def _authenticate(self, request: Request) -> str:
        """The calling client's id (the token text when no validator names the client)."""
        authorization = request.header("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        validator = self.token_validator
        if validator is None:
            return token
        result = validator(token)
        if not result:
            raise _GraphError(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience or expired token.",
            )
        return result if isinstance(result, str) else token

    def _require_permission(self, client: str, *accepted: str) -> None:
        with self._sent_lock:
            permissions = self.permissions
            granted = set(permissions.get(client.lower(), ())) if permissions is not None else None
        if granted is None or any(permission in granted for permission in accepted):
            return
        raise _GraphError(
            403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
        )

    def _require_mailbox(self, sender: str) -> None:
        if self.mailboxes is not None and sender.lower() not in self.mailboxes:
            raise _GraphError(404, "ErrorInvalidUser", f"The requested user '{sender}' is invalid.")

    # -- sendMail -----------------------------------------------------------------------------

    def _send_mail(self, sender: str, request: Request) -> Response:
        mail = _parse_send_mail(sender, request)
        message = request.json["message"]
        internet_message_id = message.get("internetMessageId")
        if internet_message_id is not None:
            _check_internet_message_id(internet_message_id)
        else:
            internet_message_id = _new_internet_message_id(sender)
        now = _now()
        stored: MailboxMessage | None = None
        if mail.save_to_sent_items is not False:  # Graph's default is to save a copy
            stored = MailboxMessage(
                id=_new_item_id(),
                mailbox=sender.lower(),
                folder="sentitems",
                is_draft=False,
                internet_message_id=internet_message_id,
                subject=mail.subject,
                content_type=mail.content_type,
                content=mail.content,
                to=mail.to,
                cc=mail.cc,
                bcc=mail.bcc,
                created=now,
                sent=now,
                raw=dict(message),
            )
        mail = replace(
            mail,
            internet_message_id=internet_message_id,
            message_id=stored.id if stored is not None else None,
        )
        with self._sent_lock:
            if stored is not None:
                self._store[stored.id] = stored
            self._sent.append(mail)
        return empty_response(202)

    # -- drafts ---------------------------------------------------------------------------------

    def _create_draft(self, sender: str, request: Request) -> Response:
        payload = _json_object(request)
        unknown = sorted(set(payload) - _WRITABLE_PROPERTIES)
        if unknown:
            raise _GraphError(
                400,
                "RequestBodyRead",
                f"The property '{unknown[0]}' does not exist on type 'microsoft.graph.message'. "
                "Make sure to only use property names that are defined by the type or mark the "
                "type as open type.",
            )
        subject, content_type, content = _subject_and_body(payload)
        to = _recipients(payload, "toRecipients", require_resolved=False)
        cc = _recipients(payload, "ccRecipients", require_resolved=False)
        bcc = _recipients(payload, "bccRecipients", require_resolved=False)
        internet_message_id = payload.get("internetMessageId")
        if internet_message_id is not None:
            _check_internet_message_id(internet_message_id)
        else:
            internet_message_id = _new_internet_message_id(sender)
        draft = MailboxMessage(
            id=_new_item_id(),
            mailbox=sender.lower(),
            folder="drafts",
            is_draft=True,
            internet_message_id=internet_message_id,
            subject=subject,
            content_type=content_type,
            content=content,
            to=to,
            cc=cc,
            bcc=bcc,
            created=_now(),
            raw=dict(payload),
        )
        with self._sent_lock:
            self._store[draft.id] = draft  # Exchange does not enforce a unique Message-ID
        context = f"{self.url}/v1.0/$metadata#users('{quote(sender)}')/messages/$entity"
        return json_response(201, {"@odata.context": context, **_representation(draft, None)})

    def _send_draft(self, sender: str, message_id: str) -> Response:
        with self._sent_lock:
            draft = self._store.get(message_id)
            if draft is None or draft.mailbox != sender.lower():
                raise _item_not_found()
            if not draft.is_draft:
                raise _GraphError(
                    400,
                    "ErrorInvalidOperation",
                    "Only draft messages can be sent; this item has already been sent.",
                )
            _check_sendable(draft)
            now = _now()
            # Sending moves the item to Sent Items, where it has a new id: the draft's id is gone.
            sent_item = replace(
                draft, id=_new_item_id(), folder="sentitems", is_draft=False, sent=now
            )
            del self._store[draft.id]
            self._store[sent_item.id] = sent_item
            self._sent.append(
                SentMail(
                    sender=sender,
                    subject=draft.subject,
                    content_type=draft.content_type,
                    content=draft.content,
                    to=list(draft.to),
                    cc=list(draft.cc),
                    bcc=list(draft.bcc),
                    save_to_sent_items=True,
                    raw={"message": dict(draft.raw)},
                    internet_message_id=draft.internet_message_id,
                    message_id=sent_item.id,
                    via="draft",
                )
            )
        return empty_response(202)

    # -- reads ----------------------------------------------------------------------------------

    def _find(self, sender: str, message_id: str) -> MailboxMessage:
        with self._sent_lock:
            message = self._store.get(message_id)
        if message is None or message.mailbox != sender.lower():
            raise _item_not_found()
        return message

    def _list_messages(self, sender: str, request: Request) -> Response:
        for name in request.query:
            if name.startswith("$") and name not in ("$select", "$filter", "$top", "$skip"):
                raise _GraphError(
                    400,
                    "BadRequest",
                    f"Query option '{name}' is not supported by the Graph sandbox for messages.",
                )
        select = _parse_select(request.query.get("$select"))
        predicate = _parse_filter(request.query.get("$filter"))
        top = _int_option(request.query, "$top", _DEFAULT_TOP)
        if not 1 <= top <= _MAX_TOP:
            raise _GraphError(
                400, "ErrorInvalidUrlQuery", f"The value of $top must be between 1 and {_MAX_TOP}."
            )
        skip = _int_option(request.query, "$skip", 0)
        with self._sent_lock:
            found = [
                m for m in self._store.values() if m.mailbox == sender.lower() and predicate(m)
            ]
        # Newest first, as Graph lists messages by default.
        found.sort(key=lambda m: (m.sent or m.created, m.id), reverse=True)
        page = found[skip : skip + top]
        context = f"{self.url}/v1.0/$metadata#users('{quote(sender)}')/messages"
        if select:
            context += f"({','.join(select)})"
        payload: dict[str, Any] = {
            "@odata.context": context,
            "value": [_representation(m, select) for m in page],
        }
        if skip + top < len(found):
            params = {k: v for k, v in request.query.items() if k != "$skip"}
            params["$top"] = str(top)
            params["$skip"] = str(skip + top)
            query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
            payload["@odata.nextLink"] = f"{self.url}{quote(request.path)}?{query}"
        return json_response(200, payload)


def _error_body(code: str, message: str) -> dict[str, object]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_item_id() -> str:
    """An opaque Exchange item id (URL-safe base64, as Graph returns them)."""
    return "AAMkAD" + base64.urlsafe_b64encode(secrets.token_bytes(66)).decode("ascii")


def _new_internet_message_id(sender: str) -> str:
    return f"<{secrets.token_hex(16).upper()}@SANDBOX01MB0001.sandbox.prod.outlook.com>"


def _check_internet_message_id(value: object) -> None:
    if not isinstance(value, str):
        raise _GraphError(
            400,
            "RequestBodyRead",
            f"Cannot convert the literal '{value}' to the expected type 'Edm.String'.",
        )
    if not _MESSAGE_ID.match(value):
        raise _GraphError(
            400,
            "InvalidInternetMessageId",
            f"The internet message id '{value}' is not valid: it must have the form "
            "<local-part@domain> (RFC 5322 msg-id).",
        )


def _item_not_found() -> _GraphError:
    return _GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")


def _json_object(request: Request) -> dict[str, Any]:
    if not request.body.strip():
        raise _GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
    payload = request.json
    if not isinstance(payload, dict):
        raise _GraphError(
            400,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and "
            "payload is of valid JSON format.",
        )
    return payload


def _subject_and_body(message: dict[str, Any]) -> tuple[str, str, str]:
    subject = message.get("subject", "")
    if subject is None:
        subject = ""
    if not isinstance(subject, str):
        raise _GraphError(
            400, "RequestBodyRead", "Cannot convert the value of 'subject' to 'Edm.String'."
        )
    content_type, content = "Text", ""
    body = message.get("body")
    if body is not None:
        if not isinstance(body, dict):
            raise _GraphError(400, "RequestBodyRead", "'body' must be an itemBody object.")
        content_type = body.get("contentType", "Text")
        if not isinstance(content_type, str) or content_type.lower() not in ("html", "text"):
            raise _GraphError(
                400, "RequestBodyRead", f"Requested value '{content_type}' was not found."
            )
        raw_content = body.get("content", "")
        if not isinstance(raw_content, str):
            raise _GraphError(
                400, "RequestBodyRead", "Cannot convert the value of 'content' to 'Edm.String'."
            )
        content = raw_content
    return subject, content_type, content


def _parse_send_mail(sender: str, request: Request) -> SentMail:
    payload = _json_object(request)
    message = payload.get("message")
    if not isinstance(message, dict):
        raise _GraphError(400, "ErrorInvalidRequest", "The 'message' property is required.")
    save = payload.get("saveToSentItems")
    if save is not None and not isinstance(save, bool):
        raise _GraphError(
            400,
            "RequestBodyRead",
            f"Cannot convert the literal '{save}' to the expected type 'Edm.Boolean'.",
        )
    subject, content_type, content = _subject_and_body(message)
    to = _recipients(message, "toRecipients")
    cc = _recipients(message, "ccRecipients")
    bcc = _recipients(message, "bccRecipients")
    if not (to or cc or bcc):
        raise _no_recipients()
    return SentMail(
        sender=sender,
        subject=subject,
        content_type=content_type,
        content=content,
        to=to,
        cc=cc,
        bcc=bcc,
        save_to_sent_items=save,
        raw=payload,
    )


def _no_recipients() -> _GraphError:
    return _GraphError(
        400,
        "ErrorInvalidRecipients",
        "At least one recipient is not valid., A message can't be sent because it contains "
        "no recipients.",
    )


def _unresolved(address: str) -> _GraphError:
    return _GraphError(
        400,
        "ErrorInvalidRecipients",
        f"At least one recipient isn't valid., Recipient '{address}' isn't resolved. "
        "All recipients must be resolved before a message can be submitted.",
    )


def _resolvable(address: str) -> bool:
    local, at, domain = address.strip().partition("@")
    return bool(local and at and domain) and " " not in address.strip()


def _recipients(message: dict[str, Any], key: str, *, require_resolved: bool = True) -> list[str]:
    """Recipient addresses; a draft may hold unresolvable ones until it is sent."""
    value = message.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _GraphError(
            400, "RequestBodyRead", f"'{key}' must be a collection of recipient objects."
        )
    addresses: list[str] = []
    for item in value:
        email = item.get("emailAddress") if isinstance(item, dict) else None
        address = email.get("address") if isinstance(email, dict) else None
        if not isinstance(address, str):
            raise _GraphError(
                400,
                "ErrorInvalidRecipients",
                f"At least one recipient is not valid., '{key}' entries need emailAddress.address.",
            )
        if require_resolved and not _resolvable(address):
            raise _unresolved(address)
        addresses.append(address.strip())
    return addresses


def _check_sendable(draft: MailboxMessage) -> None:
    recipients = [*draft.to, *draft.cc, *draft.bcc]
    if not recipients:
        raise _no_recipients()
    for address in recipients:
        if not _resolvable(address):
            raise _unresolved(address)


# -- message resources ----------------------------------------------------------------------------

_WRITABLE_PROPERTIES = frozenset(
    {
        "subject",
        "body",
        "toRecipients",
        "ccRecipients",
        "bccRecipients",
        "replyTo",
        "internetMessageId",
        "importance",
        "isDeliveryReceiptRequested",
        "isReadReceiptRequested",
        "categories",
        "internetMessageHeaders",
        "from",
        "sender",
        "flag",
        "@odata.type",
    }
)


def _folder_id(mailbox: str, folder: str) -> str:
    digest = hashlib.sha256(f"{mailbox}/{folder}".encode()).digest()
    return "AQMkAD" + base64.urlsafe_b64encode(digest + digest[:12]).decode("ascii")


def _change_key(message: MailboxMessage) -> str:
    digest = hashlib.sha256(f"{message.id}/{message.is_draft}".encode()).digest()
    return "CQAAABYAAA" + base64.b64encode(digest[:24]).decode("ascii")


def _address_list(addresses: list[str]) -> list[dict[str, Any]]:
    return [{"emailAddress": {"name": a, "address": a}} for a in addresses]


def _full_representation(message: MailboxMessage) -> dict[str, Any]:
    change_key = _change_key(message)
    preview = message.content
    if message.content_type.lower() == "html":
        preview = re.sub(r"<[^>]*>", " ", preview)
    mailbox = {"emailAddress": {"name": message.mailbox, "address": message.mailbox}}
    return {
        "@odata.etag": f'W/"{change_key}"',
        "id": message.id,
        "createdDateTime": message.created,
        "lastModifiedDateTime": message.sent or message.created,
        "changeKey": change_key,
        "categories": [],
        "receivedDateTime": message.sent or message.created,
        "sentDateTime": message.sent,
        "hasAttachments": False,
        "internetMessageId": message.internet_message_id,
        "subject": message.subject,
        "bodyPreview": " ".join(preview.split())[:255],
        "importance": "normal",
        "parentFolderId": _folder_id(message.mailbox, message.folder),
        "conversationId": "AAQkAD" + message.id[6:40],
        "isDeliveryReceiptRequested": False,
        "isReadReceiptRequested": False,
        "isRead": True,
        "isDraft": message.is_draft,
        "webLink": "",
        "inferenceClassification": "focused",
        "body": {"contentType": message.content_type.lower(), "content": message.content},
        "sender": None if message.is_draft else mailbox,
        "from": None if message.is_draft else mailbox,
        "toRecipients": _address_list(message.to),
        "ccRecipients": _address_list(message.cc),
        "bccRecipients": _address_list(message.bcc),
        "replyTo": [],
        "flag": {"flagStatus": "notFlagged"},
    }


_PROPERTIES = frozenset(
    {
        "id",
        "createdDateTime",
        "lastModifiedDateTime",
        "changeKey",
        "categories",
        "receivedDateTime",
        "sentDateTime",
        "hasAttachments",
        "internetMessageId",
        "subject",
        "bodyPreview",
        "importance",
        "parentFolderId",
        "conversationId",
        "isDeliveryReceiptRequested",
        "isReadReceiptRequested",
        "isRead",
        "isDraft",
        "webLink",
        "inferenceClassification",
        "body",
        "sender",
        "from",
        "toRecipients",
        "ccRecipients",
        "bccRecipients",
        "replyTo",
        "flag",
    }
)


def _representation(message: MailboxMessage, select: list[str] | None) -> dict[str, Any]:
    full = _full_representation(message)
    if not select:
        return full
    # Graph always returns the etag and the id, selected or not.
    return {k: v for k, v in full.items() if k in ("@odata.etag", "id") or k in select}


def _parse_select(text: str | None) -> list[str] | None:
    if text is None or not text.strip():
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in _PROPERTIES:
            raise _GraphError(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{name}' on type 'microsoft.graph.message'.",
            )
    return list(dict.fromkeys(names))


def _int_option(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise _GraphError(
            400, "BadRequest", f"Invalid value '{text}' for the query option '{name}'."
        )
    return int(text)


_FILTER_TOKEN = re.compile(
    r"\s*(?:(?P<lparen>\()|(?P<rparen>\))|(?P<string>'(?:[^']|'')*')|(?P<word>[A-Za-z][A-Za-z0-9]*))"
)
_FILTERABLE: dict[str, Callable[[MailboxMessage], object]] = {
    "internetMessageId": lambda m: m.internet_message_id,
    "subject": lambda m: m.subject,
    "id": lambda m: m.id,
    "isDraft": lambda m: m.is_draft,
    "parentFolderId": lambda m: _folder_id(m.mailbox, m.folder),
}
MessagePredicate = Callable[[MailboxMessage], bool]


def _parse_filter(text: str | None) -> MessagePredicate:
    """``prop eq literal`` joined by ``and``/``or`` with parentheses, on a few properties."""
    if text is None or not text.strip():
        return lambda message: True
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = _FILTER_TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise _invalid_filter()
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    index = 0

    def peek() -> tuple[str, str] | None:
        return tokens[index] if index < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal index
        if index >= len(tokens):
            raise _invalid_filter()
        index += 1
        return tokens[index - 1]

    def disjunction() -> MessagePredicate:
        parts = [conjunction()]
        while (token := peek()) is not None and token == ("word", "or"):
            take()
            parts.append(conjunction())
        return lambda m: any(p(m) for p in parts)

    def conjunction() -> MessagePredicate:
        parts = [comparison()]
        while (token := peek()) is not None and token == ("word", "and"):
            take()
            parts.append(comparison())
        return lambda m: all(p(m) for p in parts)

    def comparison() -> MessagePredicate:
        kind, value = take()
        if kind == "lparen":
            inner = disjunction()
            if take()[0] != "rparen":
                raise _invalid_filter()
            return inner
        if kind != "word" or value not in _FILTERABLE or take() != ("word", "eq"):
            raise _invalid_filter()
        literal_kind, literal = take()
        read = _FILTERABLE[value]
        if value == "isDraft":
            if literal_kind != "word" or literal not in ("true", "false"):
                raise _invalid_filter()
            expected_bool = literal == "true"
            return lambda m: read(m) is expected_bool
        if literal_kind != "string":
            raise _invalid_filter()
        # Exchange compares strings case-insensitively.
        expected = literal[1:-1].replace("''", "'").lower()
        return lambda m: str(read(m)).lower() == expected

    predicate = disjunction()
    if index != len(tokens):
        raise _invalid_filter()
    return predicate


def _invalid_filter() -> _GraphError:
    return _GraphError(
        400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes."
    )
