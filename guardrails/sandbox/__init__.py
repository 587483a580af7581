"""Loopback stand-ins for Dataverse, Microsoft Graph and the Microsoft identity platform.

Real ``requests`` and ``msal`` clients talk to these over HTTP(S) on 127.0.0.1, so the demo and
the integration tests exercise the production code paths without an Azure tenant.
"""

from guardrails.sandbox.dataverse import (
    DataverseError,
    DataverseSimulator,
    PendingWrite,
    WriteEvent,
    email_settings_xml,
)
from guardrails.sandbox.graph import GraphSimulator, SentMail
from guardrails.sandbox.http import (
    Fault,
    RecordedRequest,
    Request,
    Response,
    SandboxServer,
    empty_response,
    json_response,
)
from guardrails.sandbox.identity import IdentitySimulator, IssuedToken
from guardrails.sandbox.tls import SandboxTLS

__all__ = [
    "DataverseError",
    "DataverseSimulator",
    "Fault",
    "GraphSimulator",
    "IdentitySimulator",
    "IssuedToken",
    "PendingWrite",
    "RecordedRequest",
    "Request",
    "Response",
    "SandboxServer",
    "SandboxTLS",
    "SentMail",
    "WriteEvent",
    "email_settings_xml",
    "empty_response",
    "json_response",
]
