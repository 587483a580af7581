"""A stand-in for Microsoft Graph ``sendMail``, the guardrail's way of telling users what changed.

Only ``POST /v1.0/users/{sender}/sendMail`` exists here, validated the way Graph validates it
(bearer token, known sender mailbox, recipients, body shape) so that a malformed notification
fails in tests as it would in production. Accepted messages are kept in :attr:`GraphSimulator.sent`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from guardrails.sandbox.http import (
    Request,
    Response,
    SandboxServer,
    empty_response,
    json_response,
)
from guardrails.sandbox.tls import SandboxTLS

__all__ = ["GraphSimulator", "SentMail"]

TokenValidator = Callable[[str], object]


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

    @property
    def html(self) -> str | None:
        """The body when it was sent as HTML, else None."""
        return self.content if self.content_type.lower() == "html" else None


class _GraphError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class GraphSimulator(SandboxServer):
    """Microsoft Graph v1.0 ``sendMail``.

    ``token_validator`` decides whether a bearer token is valid (any truthy result counts, so
    ``IdentitySimulator.validator(graph.url)`` fits); None accepts any non-empty token.
    ``mailboxes``, when given, is the set of sender addresses that exist (case-insensitive).
    Both are plain attributes and may be changed while the server runs.
    """

    def __init__(
        self,
        tls: SandboxTLS | None = None,
        *,
        token_validator: TokenValidator | None = None,
        mailboxes: Iterable[str] | None = None,
        latency: float = 0.0,
    ) -> None:
        self.token_validator = token_validator
        self.mailboxes: set[str] | None = (
            {m.lower() for m in mailboxes} if mailboxes is not None else None
        )
        self._sent_lock = threading.Lock()
        self._sent: list[SentMail] = []
        super().__init__(tls, latency=latency)

    @property
    def sent(self) -> list[SentMail]:
        """A snapshot of accepted messages, oldest first."""
        with self._sent_lock:
            return list(self._sent)

    def clear_sent(self) -> None:
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
        self._authenticate(request)
        parts = [p for p in request.path.split("/") if p]
        if not (
            len(parts) == 4
            and parts[0] == "v1.0"
            and parts[1].lower() == "users"
            and parts[3].lower() == "sendmail"
        ):
            segment = parts[-1] if parts else ""
            raise _GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
        if request.method != "POST":
            raise _GraphError(
                405, "Request_BadRequest", "The requested method is not allowed for sendMail."
            )
        sender = parts[2]
        if self.mailboxes is not None and sender.lower() not in self.mailboxes:
            raise _GraphError(404, "ErrorInvalidUser", f"The requested user '{sender}' is invalid.")
        mail = _parse_send_mail(sender, request)
        with self._sent_lock:
            self._sent.append(mail)
        return empty_response(202)

    def _authenticate(self, request: Request) -> None:
        authorization = request.header("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        validator = self.token_validator
        if validator is not None and not validator(token):
            raise _GraphError(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience or expired token.",
            )


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


def _parse_send_mail(sender: str, request: Request) -> SentMail:
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
    to = _recipients(message, "toRecipients")
    cc = _recipients(message, "ccRecipients")
    bcc = _recipients(message, "bccRecipients")
    if not (to or cc or bcc):
        raise _GraphError(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid., A message can't be sent because it contains "
            "no recipients.",
        )
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


def _recipients(message: dict[str, Any], key: str) -> list[str]:
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
        local, at, domain = address.strip().partition("@")
        if not (local and at and domain) or " " in address.strip():
            raise _GraphError(
                400,
                "ErrorInvalidRecipients",
                f"At least one recipient isn't valid., Recipient '{address}' isn't resolved. "
                "All recipients must be resolved before a message can be submitted.",
            )
        addresses.append(address.strip())
    return addresses
