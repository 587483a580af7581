"""An in-memory Dataverse organization behind a real Web API v9.2 endpoint.

The guardrail's correctness rests on a few platform behaviours, so this simulator implements them
faithfully rather than approximately: row versions and weak ETags with ``If-Match`` (412 when a
concurrent change won), OData error bodies with Dataverse's hex codes, ``$select`` validation,
paging through opaque ``@odata.nextLink`` URLs, a ``$filter`` subset, choice-value validation,
the re-approval rule for a changed mailbox email address, and the calling user being the
application user mapped from the bearer token's client id (what ``WhoAmI`` reports and what is
recorded as ``modifiedby``). Every successful write is published as a :class:`WriteEvent`, from
which tests and the demo produce the messages Dataverse would send to Service Bus.

Also modelled, because a client at scale depends on them: ``$batch`` (multipart/mixed, atomic
change sets, ``Prefer: odata.continue-on-error``, at most 1,000 operations) and the service
protection limits (per-user sliding window of requests, combined execution time and concurrent
requests, answered with 429, ``Retry-After`` and Dataverse's error codes), off until
:meth:`DataverseSimulator.set_service_protection` turns them on.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from http import HTTPStatus
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from guardrails.sandbox.http import (
    Request,
    Response,
    SandboxServer,
    format_seconds,
    json_response,
)
from guardrails.sandbox.tls import SandboxTLS

__all__ = [
    "DataverseError",
    "DataverseSimulator",
    "PendingWrite",
    "WriteEvent",
    "email_settings_xml",
]

API_PREFIX = "/api/data/v9.2/"
ODATA_JSON = (
    "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; "
    "charset=utf-8"
)
MAX_PAGE_SIZE = 5000
MAX_BATCH_OPERATIONS = 1000
SYSTEM_ADMINISTRATOR = "System Administrator"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SEGMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.]*)(?:\((?P<key>[^)]*)\))?$")
_BIND = re.compile(r"(?:^|/)(?P<set>[A-Za-z_][A-Za-z0-9_]*)\((?P<key>[0-9a-fA-F-]{36})\)$")

Row = dict[str, Any]
WriteListener = Callable[["WriteEvent"], None]
BeforeWriteHook = Callable[["PendingWrite"], None]
TokenValidator = Callable[[str], str | None]


class DataverseError(Exception):
    """A Web API error: HTTP status plus the ``{"error":{"code","message"}}`` body.

    ``headers`` are extra response headers (``Retry-After`` on a service protection 429).
    """

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class PendingWrite:
    """A parsed PATCH handed to ``before_write`` hooks before the concurrency check."""

    mailbox_id: str
    user_id: str
    changes: dict[str, Any]
    tag: str | None
    if_match: str | None


@dataclass(frozen=True)
class WriteEvent:
    """One committed mailbox update.

    ``changes`` holds every column the write set, in Web API read names (a lookup bind appears
    as ``_emailserverprofile_value``), including columns the platform set itself (the approval
    reset after an email address change): the equivalent of the Update message's Target.
    ``requested`` is what the caller sent. ``previous`` has the old values of the ``changes``
    columns; ``before``/``after`` are full row copies.
    """

    mailbox_id: str
    user_id: str
    tag: str | None
    changes: dict[str, Any]
    previous: dict[str, Any]
    requested: dict[str, Any]
    versionnumber: int
    modifiedon: str
    before: dict[str, Any]
    after: dict[str, Any]
    source: str  # "webapi" (HTTP PATCH) or "direct" (update_mailbox_as)

    @property
    def effective_changes(self) -> dict[str, Any]:
        """Only the columns whose value actually changed."""
        return {k: v for k, v in self.changes.items() if self.previous.get(k) != v}


def email_settings_xml(incoming: int, outgoing: int, act: int) -> str:
    """``organization.defaultemailsettings`` in the legacy settings page's format."""
    return (
        f"<EmailSettings><IncomingEmailDeliveryMethod>{incoming}</IncomingEmailDeliveryMethod>"
        f"<OutgoingEmailDeliveryMethod>{outgoing}</OutgoingEmailDeliveryMethod>"
        f"<ACTDeliveryMethod>{act}</ACTDeliveryMethod></EmailSettings>"
    )


# -- schema -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # guid | string | int | bool | choice | datetime | lookup
    writable: bool = False
    labels: Mapping[int, str] | None = None
    max_length: int | None = None
    navigation: str | None = None  # lookups: the single-valued navigation property
    targets: tuple[str, ...] = ()  # lookups: entity sets a bind may point to


@dataclass(frozen=True)
class _Table:
    entity_set: str
    logical_name: str
    key: str
    primary_name: str
    columns: dict[str, _Column]

    def column(self, name: str) -> _Column:
        column = self.columns.get(name)
        if column is None:
            raise DataverseError(
                400,
                "0x80060888",
                f"Could not find a property named '{name}' on type "
                f"'Microsoft.Dynamics.CRM.{self.logical_name}'.",
            )
        return column

    def navigation(self, nav: str) -> _Column | None:
        for column in self.columns.values():
            if column.navigation == nav:
                return column
        return None


def _table(entity_set: str, logical: str, key: str, primary: str, *cols: _Column) -> _Table:
    base = [_Column(key, "guid")]
    common = [
        _Column("versionnumber", "int"),
        _Column("createdon", "datetime"),
        _Column("modifiedon", "datetime"),
    ]
    columns = {c.name: c for c in [*base, *cols, *common]}
    return _Table(entity_set, logical, key, primary, columns)


def _lookup(name: str, nav: str, *targets: str, writable: bool = False) -> _Column:
    return _Column(f"_{name}_value", "lookup", writable, navigation=nav, targets=targets)


_STATUS_LABELS = {0: "Not Run", 1: "Success", 2: "Failure"}
_MAILBOX = _table(
    "mailboxes",
    "mailbox",
    "mailboxid",
    "name",
    _Column("name", "string", True, max_length=100),
    _Column("emailaddress", "string", True, max_length=100),
    _Column(
        "incomingemaildeliverymethod",
        "choice",
        True,
        {
            0: "None",
            1: "Microsoft Dynamics 365 for Outlook",
            2: "Server-Side Synchronization or Email Router",
            3: "Forward Mailbox",
        },
    ),
    _Column(
        "outgoingemaildeliverymethod",
        "choice",
        True,
        {
            0: "None",
            1: "Microsoft Dynamics 365 for Outlook",
            2: "Server-Side Synchronization or Email Router",
        },
    ),
    _Column(
        "actdeliverymethod",
        "choice",
        True,
        {0: "Microsoft Dynamics 365 for Outlook", 1: "Server-Side Synchronization", 2: "None"},
    ),
    _Column(
        "emailrouteraccessapproval",
        "choice",
        True,
        {0: "Empty", 1: "Approved", 2: "Pending Approval", 3: "Rejected"},
    ),
    _Column("incomingemailstatus", "choice", True, _STATUS_LABELS),
    _Column("outgoingemailstatus", "choice", True, _STATUS_LABELS),
    _Column("actstatus", "choice", True, _STATUS_LABELS),
    _Column("mailboxstatus", "choice", True, _STATUS_LABELS),
    _Column("isforwardmailbox", "bool"),
    _Column("statecode", "choice", False, {0: "Active", 1: "Inactive"}),
    _Column("statuscode", "choice", False, {1: "Active", 2: "Inactive"}),
    _lookup("emailserverprofile", "emailserverprofile", "emailserverprofiles", writable=True),
    _lookup("regardingobjectid", "regardingobjectid", "systemusers", "queues"),
    _lookup("ownerid", "ownerid", "systemusers", "teams"),
    _lookup("createdby", "createdby", "systemusers"),
    _lookup("modifiedby", "modifiedby", "systemusers"),
    _lookup("owningbusinessunit", "owningbusinessunit", "businessunits"),
)
_USER = _table(
    "systemusers",
    "systemuser",
    "systemuserid",
    "fullname",
    _Column("fullname", "string"),
    _Column("internalemailaddress", "string"),
    _Column("domainname", "string"),
    _Column("isdisabled", "bool"),
    _Column("applicationid", "guid"),
    _Column("azureactivedirectoryobjectid", "guid"),
    _Column(
        "accessmode",
        "choice",
        False,
        {
            0: "Read-Write",
            1: "Administrative",
            2: "Read",
            3: "Support User",
            4: "Non-interactive",
            5: "Delegated Admin",
        },
    ),
    _lookup("businessunitid", "businessunitid", "businessunits"),
    _lookup("defaultmailbox", "defaultmailbox", "mailboxes"),
)
_QUEUE = _table(
    "queues",
    "queue",
    "queueid",
    "name",
    _Column("name", "string"),
    _Column("emailaddress", "string"),
    _lookup("ownerid", "ownerid", "systemusers", "teams"),
    _lookup("defaultmailbox", "defaultmailbox", "mailboxes"),
)
_ROLE = _table(
    "roles",
    "role",
    "roleid",
    "name",
    _Column("name", "string"),
    _lookup("businessunitid", "businessunitid", "businessunits"),
)
_ORGANIZATION = _table(
    "organizations",
    "organization",
    "organizationid",
    "name",
    _Column("name", "string"),
    _Column("defaultemailsettings", "string"),
    _Column(
        "emailconnectionchannel",
        "choice",
        False,
        {0: "Server-Side Synchronization", 1: "Email Router"},
    ),
    _lookup("defaultemailserverprofileid", "defaultemailserverprofileid", "emailserverprofiles"),
)
_PROFILE = _table(
    "emailserverprofiles",
    "emailserverprofile",
    "emailserverprofileid",
    "name",
    _Column("name", "string"),
)
_BUSINESS_UNIT = _table(
    "businessunits",
    "businessunit",
    "businessunitid",
    "name",
    _Column("name", "string"),
)
_TEAM = _table(
    "teams",
    "team",
    "teamid",
    "name",
    _Column("name", "string"),
    _Column(
        "teamtype",
        "choice",
        False,
        {
            0: "Owner",
            1: "Access",
            2: "Microsoft Entra ID Security Group",
            3: "Microsoft Entra ID Office Group",
        },
    ),
    _Column("emailaddress", "string"),
    _Column("isdefault", "bool"),
    _Column("azureactivedirectoryobjectid", "guid"),
    _lookup("administratorid", "administratorid", "systemusers"),
    _lookup("businessunitid", "businessunitid", "businessunits"),
)
# Registration tables (what the Plug-in Registration Tool writes), with the platform's values.
_SERVICE_ENDPOINT = _table(
    "serviceendpoints",
    "serviceendpoint",
    "serviceendpointid",
    "name",
    _Column("name", "string", True, max_length=256),
    _Column("description", "string", True, max_length=2000),
    _Column(
        "contract",
        "choice",
        True,
        {
            1: "OneWay",
            2: "Queue",
            3: "Rest",
            4: "TwoWay",
            5: "Topic",
            6: "Queue_Persistent",
            7: "EventHub",
            8: "Webhook",
            9: "EventGrid",
        },
    ),
    _Column("connectionmode", "choice", True, {1: "Normal", 2: "Federated"}),
    _Column(
        "authtype",
        "choice",
        True,
        {
            1: "ACS",
            2: "SASKey",
            3: "SASToken",
            4: "WebhookKey",
            5: "HttpHeader",
            6: "HttpQueryString",
            7: "ConnectionString",
            8: "AccessKey",
            9: "ManagedIdentity",
        },
    ),
    _Column("namespaceaddress", "string", True, max_length=2000),
    _Column("namespaceformat", "choice", True, {1: "Namespace Name", 2: "Namespace Address"}),
    _Column("path", "string", True, max_length=160),
    _Column("saskeyname", "string", True, max_length=256),
    _Column("saskey", "string", True, max_length=256),  # write-only: never returned
    _Column("messageformat", "choice", True, {1: "Binary XML", 2: "Json", 3: "Text XML"}),
    _Column("userclaim", "choice", True, {1: "None", 2: "UserId", 3: "UserInfo"}),
)
_SDK_MESSAGE = _table(
    "sdkmessages", "sdkmessage", "sdkmessageid", "name", _Column("name", "string")
)
_SDK_MESSAGE_FILTER = _table(
    "sdkmessagefilters",
    "sdkmessagefilter",
    "sdkmessagefilterid",
    "name",
    _Column("name", "string"),
    _Column("primaryobjecttypecode", "string"),
    _Column("secondaryobjecttypecode", "string"),
    _Column("iscustomprocessingstepallowed", "bool"),
    _lookup("sdkmessageid", "sdkmessageid", "sdkmessages"),
)
_STEP = _table(
    "sdkmessageprocessingsteps",
    "sdkmessageprocessingstep",
    "sdkmessageprocessingstepid",
    "name",
    _Column("name", "string", True, max_length=256),
    _Column("description", "string", True, max_length=256),
    _Column("mode", "choice", True, {0: "Synchronous", 1: "Asynchronous"}),
    _Column(
        "stage", "choice", True, {10: "Pre-validation", 20: "Pre-operation", 40: "Post-operation"}
    ),
    _Column("rank", "int", True),
    _Column(
        "supporteddeployment",
        "choice",
        True,
        {0: "Server Only", 1: "Microsoft Dynamics 365 Client for Outlook Only", 2: "Both"},
    ),
    _Column("asyncautodelete", "bool", True),
    _Column("filteringattributes", "string", True, max_length=100_000),
    _Column("statecode", "choice", True, {0: "Enabled", 1: "Disabled"}),
    _Column("statuscode", "choice", True, {1: "Enabled", 2: "Disabled"}),
    _lookup("eventhandler", "eventhandler_serviceendpoint", "serviceendpoints", writable=True),
    _lookup("sdkmessageid", "sdkmessageid", "sdkmessages", writable=True),
    _lookup("sdkmessagefilterid", "sdkmessagefilterid", "sdkmessagefilters", writable=True),
)
_STEP_IMAGE = _table(
    "sdkmessageprocessingstepimages",
    "sdkmessageprocessingstepimage",
    "sdkmessageprocessingstepimageid",
    "name",
    _Column("name", "string", True, max_length=256),
    _Column("description", "string", True, max_length=256),
    _Column("entityalias", "string", True, max_length=256),
    _Column("imagetype", "choice", True, {0: "PreImage", 1: "PostImage", 2: "Both"}),
    _Column("messagepropertyname", "string", True, max_length=256),
    _Column("attributes", "string", True, max_length=100_000),
    _lookup(
        "sdkmessageprocessingstepid",
        "sdkmessageprocessingstepid",
        "sdkmessageprocessingsteps",
        writable=True,
    ),
)
_PRIVILEGE = _table(
    "privileges",
    "privilege",
    "privilegeid",
    "name",
    _Column("name", "string"),
    _Column("accessright", "int"),
    _Column("canbebasic", "bool"),
    _Column("canbelocal", "bool"),
    _Column("canbedeep", "bool"),
    _Column("canbeglobal", "bool"),
)
_REGISTRATION_TABLES = (
    _SERVICE_ENDPOINT,
    _SDK_MESSAGE,
    _SDK_MESSAGE_FILTER,
    _STEP,
    _STEP_IMAGE,
    _PRIVILEGE,
)
_TABLES = {
    t.entity_set: t
    for t in (_MAILBOX, _USER, _QUEUE, _TEAM, _ROLE, _ORGANIZATION, _PROFILE, _BUSINESS_UNIT)
}
_TABLES.update({t.entity_set: t for t in _REGISTRATION_TABLES})
_LOGICAL_TO_SET = {t.logical_name: t.entity_set for t in _TABLES.values()}
_SET_TO_LOGICAL = {t.entity_set: t.logical_name for t in _TABLES.values()}
_ASSOCIATED_NAVIGATION = {
    ("_regardingobjectid_value", "queue"): "regardingobjectid_queue",
    ("_ownerid_value", "team"): "ownerid_team",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id() -> str:
    return str(uuid.uuid4())


def _annotation(column: str) -> str:
    return f"{column}@Microsoft.Dynamics.CRM.lookuplogicalname"


# -- $filter ------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<lparen>\()|(?P<rparen>\))"
    r"|(?P<string>'(?:[^']|'')*')"
    r"|(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)"
    r"|(?P<number>-?\d+(?:\.\d+)?\b)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_OPERATORS = {"eq", "ne", "gt", "ge", "lt", "le"}
Predicate = Callable[[Row], bool]


class _FilterParser:
    """``col op literal`` joined by ``and``/``or``/``not`` with parentheses (OData precedence)."""

    def __init__(self, text: str, table: _Table) -> None:
        self.text = text
        self.table = table
        self.tokens: list[tuple[str, str, int]] = []
        position = 0
        while position < len(text):
            if text[position:].strip() == "":
                break
            match = _TOKEN.match(text, position)
            if match is None or match.lastgroup is None:
                raise self._syntax(position)
            kind = match.lastgroup
            self.tokens.append((kind, match.group(kind), match.start(kind)))
            position = match.end()
        self.index = 0

    def parse(self) -> Predicate:
        if not self.tokens:
            raise self._syntax(0)
        predicate = self._or()
        if self.index != len(self.tokens):
            raise self._syntax(self.tokens[self.index][2])
        return predicate

    def _syntax(self, position: int) -> DataverseError:
        return DataverseError(
            400, "0x80060888", f"Syntax error at position {position} in '{self.text}'."
        )

    def _peek_word(self) -> str | None:
        if self.index < len(self.tokens) and self.tokens[self.index][0] == "word":
            return self.tokens[self.index][1].lower()
        return None

    def _next(self) -> tuple[str, str, int]:
        if self.index >= len(self.tokens):
            raise self._syntax(len(self.text))
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._peek_word() == "or":
            self.index += 1
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda row: any(p(row) for p in parts)

    def _and(self) -> Predicate:
        parts = [self._unary()]
        while self._peek_word() == "and":
            self.index += 1
            parts.append(self._unary())
        if len(parts) == 1:
            return parts[0]
        return lambda row: all(p(row) for p in parts)

    def _unary(self) -> Predicate:
        if self._peek_word() == "not":
            self.index += 1
            inner = self._unary()
            return lambda row: not inner(row)
        kind, value, position = self._next()
        if kind == "lparen":
            inner = self._or()
            closing = self._next()
            if closing[0] != "rparen":
                raise self._syntax(closing[2])
            return inner
        if kind != "word":
            raise self._syntax(position)
        if self.index < len(self.tokens) and self.tokens[self.index][0] == "lparen":
            raise DataverseError(
                400,
                "0x80060888",
                f"The function '{value}' is not supported by the Dataverse sandbox's $filter "
                "(supported: eq, ne, gt, ge, lt, le, and, or, not, parentheses).",
            )
        column = self.table.column(value)
        op_kind, operator, op_position = self._next()
        if op_kind != "word" or operator.lower() not in _OPERATORS:
            raise self._syntax(op_position)
        literal = self._literal(column)
        return _comparison(column, operator.lower(), literal)

    def _literal(self, column: _Column) -> object:
        kind, value, position = self._next()
        literal: object
        expected: tuple[str, ...]
        if kind == "word" and value == "null":
            return None
        if kind == "word" and value in ("true", "false"):
            literal, expected = value == "true", ("bool",)
        elif kind == "string":
            literal, expected = value[1:-1].replace("''", "'"), ("string",)
        elif kind == "guid":
            literal, expected = value.lower(), ("guid", "lookup")
        elif kind == "number" and "." not in value:
            literal, expected = int(value), ("int", "choice")
        elif kind == "number":
            literal, expected = float(value), ("int",)
        else:
            raise self._syntax(position)
        if column.kind not in expected:
            raise DataverseError(
                400,
                "0x80060888",
                "A binary operator with incompatible types was detected. Found operand types "
                f"for '{column.name}' ({column.kind}) and the literal {value}.",
            )
        return literal


def _comparison(column: _Column, operator: str, literal: object) -> Predicate:
    name = column.name
    text = column.kind in ("string", "guid", "lookup")

    def value_of(row: Row) -> object:
        value = row.get(name)
        return value.lower() if text and isinstance(value, str) else value

    expected = literal.lower() if isinstance(literal, str) else literal
    if operator == "eq":
        return lambda row: value_of(row) == expected
    if operator == "ne":
        return lambda row: value_of(row) != expected

    def ordered(row: Row) -> bool:
        value = value_of(row)
        if value is None or expected is None:
            return False
        left: Any = value
        right: Any = expected
        if operator == "gt":
            return bool(left > right)
        if operator == "ge":
            return bool(left >= right)
        if operator == "lt":
            return bool(left < right)
        return bool(left <= right)

    return ordered


# -- Prefer header ------------------------------------------------------------------------------

_PREFERENCE = re.compile(r'\s*([A-Za-z][\w.\-]*)\s*(?:=\s*("(?:[^"]*)"|[^,;\s]*))?')


def _preferences(header: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    # Commas inside a quoted value do not separate preferences (RFC 7240), as in
    # odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname,OData.Community...".
    for part in re.findall(r'(?:[^,"]|"[^"]*")+', header or ""):
        match = _PREFERENCE.match(part)
        if match:
            found[match.group(1).lower()] = (match.group(2) or "").strip('"')
    return found


class _Annotations:
    """Which instance annotations the client asked for with ``odata.include-annotations``."""

    def __init__(self, patterns: str | None) -> None:
        self.patterns = [p.strip() for p in (patterns or "").split(",") if p.strip()]

    def wants(self, name: str) -> bool:
        for pattern in self.patterns:
            if pattern == "*" or pattern == name:
                return True
            if pattern.endswith(".*") and name.startswith(pattern[:-1]):
                return True
        return False


# -- service protection limits ------------------------------------------------------------------


# What is left of the user's limits, on every response while they are enforced (Microsoft's
# "Service protection API limits": "the remaining number of requests for this connection" and
# "the remaining combined duration for all connections using the same user account"; a captured
# real response shows "7999" and "1,200.00", seconds).
BURST_REMAINING = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME_REMAINING = "x-ms-ratelimit-time-remaining-xrm-requests"


class _ServiceProtection:
    """Per-user sliding windows: request count, combined execution time, concurrency."""

    def __init__(
        self,
        requests_per_window: int,
        window: float,
        max_concurrent: int,
        execution_ms_per_window: float | None,
        execution_ms_per_request: float | None,
        report_budget: bool,
    ) -> None:
        self.requests_per_window = requests_per_window
        self.window = window
        self.max_concurrent = max_concurrent
        self.execution_limit = execution_ms_per_window
        self.execution_cost = execution_ms_per_request
        self.report_budget = report_budget
        self._lock = threading.Lock()
        self._arrivals: dict[str, deque[float]] = {}
        self._executions: dict[str, deque[tuple[float, float]]] = {}
        self._in_flight: Counter[str] = Counter()
        self._throttled: Counter[str] = Counter()

    def _expire(self, user_id: str, now: float) -> tuple[deque[float], deque[tuple[float, float]]]:
        horizon = now - self.window
        arrivals = self._arrivals.setdefault(user_id, deque())
        while arrivals and arrivals[0] <= horizon:
            arrivals.popleft()
        executions = self._executions.setdefault(user_id, deque())
        while executions and executions[0][0] <= horizon:
            executions.popleft()
        return arrivals, executions

    def admit(self, user_id: str) -> dict[str, str]:
        """Count the request in, or raise the 429; returns the remaining-budget headers."""
        now = time.monotonic()
        with self._lock:
            arrivals, executions = self._expire(user_id, now)
            total = sum(ms for _, ms in executions) if self.execution_limit is not None else 0.0
            budget = self._budget(len(arrivals), total)
            if len(arrivals) >= self.requests_per_window:
                raise self._throttle(
                    "0x80072322",
                    f"Number of requests exceeded the limit of {self.requests_per_window} over "
                    f"time window of {format_seconds(self.window)} seconds.",
                    arrivals[0] + self.window - now,
                    budget,
                )
            if self.execution_limit is not None and total >= self.execution_limit:
                remaining, wait = total, 0.0
                for finished, ms in executions:
                    remaining -= ms
                    wait = finished + self.window - now
                    if remaining < self.execution_limit:
                        break
                raise self._throttle(
                    "0x80072321",
                    "Combined execution time of incoming requests exceeded limit of "
                    f"{self.execution_limit:,.0f} milliseconds over time window of "
                    f"{format_seconds(self.window)} seconds. Decrease number of concurrent "
                    "requests or reduce the duration of requests and try again later.",
                    wait,
                    budget,
                )
            if self._in_flight[user_id] >= self.max_concurrent:
                raise self._throttle(
                    "0x80072326",
                    f"Number of concurrent requests exceeded the limit of {self.max_concurrent}.",
                    1.0,
                    budget,
                )
            arrivals.append(now)
            self._in_flight[user_id] += 1
            return self._budget(len(arrivals), total)

    def _budget(self, requests: int, execution_ms: float) -> dict[str, str]:
        if not self.report_budget:
            return {}
        headers = {BURST_REMAINING: str(max(0, self.requests_per_window - requests))}
        if self.execution_limit is not None:
            seconds = max(0.0, self.execution_limit - execution_ms) / 1000.0
            headers[TIME_REMAINING] = f"{seconds:,.2f}"
        return headers

    def release(self, user_id: str, elapsed_ms: float, operations: int) -> None:
        cost = elapsed_ms if self.execution_cost is None else self.execution_cost * operations
        with self._lock:
            self._in_flight[user_id] -= 1
            self._executions.setdefault(user_id, deque()).append((time.monotonic(), cost))

    def _throttle(
        self, code: str, message: str, wait: float, budget: dict[str, str]
    ) -> DataverseError:
        self._throttled[code] += 1
        retry_after = max(1, math.ceil(wait))
        return DataverseError(
            429, code, message, headers={"Retry-After": str(retry_after), **budget}
        )

    def throttled_total(self) -> int:
        with self._lock:
            return sum(self._throttled.values())

    def throttled_codes(self) -> dict[str, int]:
        with self._lock:
            return dict(self._throttled)

    def requests_in_window(self, user_id: str) -> int:
        with self._lock:
            arrivals, _ = self._expire(user_id, time.monotonic())
            return len(arrivals)

    def execution_in_window(self, user_id: str) -> float:
        with self._lock:
            _, executions = self._expire(user_id, time.monotonic())
            return sum(ms for _, ms in executions)


# -- $batch ---------------------------------------------------------------------------------------

_HTTP_POLICY = email_policy.compat32.clone(linesep="\r\n", max_line_length=0)
_REQUEST_LINE = re.compile(r"^(?P<method>[A-Z]+) +(?P<target>\S+)(?: +HTTP/1\.[01])?$")


@dataclass
class _ChangeSet:
    journal: dict[str, Row] = field(default_factory=dict)  # mailbox id -> row before the set
    events: list[WriteEvent] = field(default_factory=list)


@dataclass
class _BatchOperation:
    """One ``application/http`` part of a batch: a request line, headers and a body."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None

    def request(self) -> Request:
        target = self.target
        if target.startswith("$"):
            raise DataverseError(
                400,
                "0x80060888",
                f"Content-ID Reference: '{target.split('/', 1)[0]}' does not exist in the batch "
                "context.",
            )
        split = urlsplit(target)
        path = split.path
        if not split.scheme and not path.startswith("/"):
            path = API_PREFIX + path  # relative to the service root
        query = split.query
        parsed: Any = None
        if self.body.strip():
            try:
                parsed = json.loads(self.body)
            except ValueError:
                parsed = None
        return Request(
            method=self.method,
            path=unquote(path),
            target=f"{path}?{query}" if query else path,
            query=dict(parse_qsl(query, keep_blank_values=True)),
            headers=dict(self.headers),
            body=self.body,
            json=parsed,
        )


def _batch_error(message: str) -> DataverseError:
    return DataverseError(400, "0x80060888", message)


def _parse_batch(
    content_type: str | None, body: bytes
) -> list[_BatchOperation | list[_BatchOperation]]:
    """A ``multipart/mixed`` batch body: operations, and change sets as lists of operations."""
    if not content_type or not content_type.lower().startswith("multipart/mixed"):
        raise _batch_error(
            "The content type of a batch request must be multipart/mixed with a boundary."
        )
    envelope = BytesParser(policy=_HTTP_POLICY).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if envelope.get_boundary() is None:
        raise _batch_error("The batch request's Content-Type has no boundary.")
    if not envelope.is_multipart() or envelope.defects:
        raise _batch_error(
            "The batch request body is not a valid multipart/mixed message: "
            + (", ".join(type(d).__name__ for d in envelope.defects) or "no parts")
            + "."
        )
    items: list[_BatchOperation | list[_BatchOperation]] = []
    for part in envelope.get_payload():
        assert isinstance(part, Message)
        if part.get_content_type() == "multipart/mixed":
            if part.defects or not part.is_multipart():
                raise _batch_error("A change set in the batch is not valid multipart/mixed.")
            operations: list[_BatchOperation] = []
            for inner in part.get_payload():
                assert isinstance(inner, Message)
                if inner.get_content_type() != "application/http":
                    raise _batch_error("A change set may only contain application/http parts.")
                operations.append(_parse_operation(inner))
            if not operations:
                raise _batch_error("A change set in the batch has no operations.")
            items.append(operations)
        elif part.get_content_type() == "application/http":
            items.append(_parse_operation(part))
        else:
            raise _batch_error(
                f"Unexpected batch part of type '{part.get_content_type()}': parts must be "
                "application/http or multipart/mixed change sets."
            )
    return items


def _parse_operation(part: Message) -> _BatchOperation:
    encoding = (part.get("Content-Transfer-Encoding") or "binary").strip().lower()
    if encoding != "binary":
        raise _batch_error("Batch parts must use Content-Transfer-Encoding: binary.")
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise _batch_error("A batch part has no HTTP request.")
    pieces = re.split(rb"\r?\n\r?\n", payload.lstrip(b"\r\n"), maxsplit=1)
    head = pieces[0]
    body = pieces[1] if len(pieces) > 1 else b""
    request_line, _, header_block = head.partition(b"\n")
    match = _REQUEST_LINE.match(request_line.decode("latin-1").strip())
    if match is None:
        raise _batch_error(
            f"The batch part's request line '{request_line.decode('latin-1').strip()}' is not "
            "'METHOD URL HTTP/1.1'."
        )
    parsed = BytesHeaderParser(policy=_HTTP_POLICY).parsebytes(header_block.lstrip(b"\r\n"))
    headers: dict[str, str] = {}
    for name, value in parsed.items():
        headers[name.lower()] = str(value).strip()
    content_id = part.get("Content-ID")
    return _BatchOperation(
        method=match.group("method"),
        target=match.group("target"),
        headers=headers,
        body=body,
        content_id=str(content_id).strip() if content_id is not None else None,
    )


def _http_part(operation: _BatchOperation, response: Response) -> Message:
    """An ``application/http`` response part: status line, headers and body, verbatim."""
    lines = [f"HTTP/1.1 {response.status} {_reason_phrase(response.status)}"]
    for name, value in response.headers.items():
        lines.append(f"{name}: {value}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    text = head + response.body.decode("utf-8", "surrogateescape")
    part = Message(policy=_HTTP_POLICY)
    part["Content-Type"] = "application/http"
    part["Content-Transfer-Encoding"] = "binary"
    if operation.content_id is not None:
        part["Content-ID"] = operation.content_id
    part.set_payload(text.encode("utf-8", "surrogateescape").decode("ascii", "surrogateescape"))
    return part


def _change_set_part(results: list[tuple[_BatchOperation, Response]]) -> Message:
    boundary = f"changesetresponse_{uuid.uuid4()}"
    container = Message(policy=_HTTP_POLICY)
    container["Content-Type"] = f"multipart/mixed; boundary={boundary}"
    for operation, response in results:
        container.attach(_http_part(operation, response))
    return container


def _multipart(boundary: str, parts: list[Message]) -> bytes:
    """The body of a ``multipart/mixed`` message (without its own header block)."""
    container = Message(policy=_HTTP_POLICY)
    container["Content-Type"] = f"multipart/mixed; boundary={boundary}"
    for part in parts:
        container.attach(part)
    buffer = BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=_HTTP_POLICY).flatten(container)
    flattened = buffer.getvalue()
    return flattened.split(b"\r\n\r\n", 1)[1]


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


# -- the simulator ------------------------------------------------------------------------------


class DataverseSimulator(SandboxServer):
    """Dataverse Web API v9.2 for one organization, with a thread-safe Python state API.

    ``token_validator`` maps a bearer token to the client id it was issued to, or None when the
    token is not valid (``IdentitySimulator.validator(dataverse.url)``). With None, any non-empty
    token is accepted and its text is taken as the client id. The client id must be mapped to an
    application user (:meth:`map_client_to_user`), as in Dataverse, where an app registration
    without an application user gets 403. ``user_token_validator`` maps a person's delegated
    token to their Entra object id (``IdentitySimulator.user_validator(dataverse.url)``), or None
    for any other token; such a request acts as the user whose ``azureactivedirectoryobjectid``
    it is (403 when the person has no user here). ``approver_roles`` are the security role names
    whose holders may approve or reject a mailbox's email address
    (``prvApproveRejectEmailAddress``).
    """

    def __init__(
        self,
        tls: SandboxTLS | None = None,
        *,
        token_validator: TokenValidator | None = None,
        organization_name: str = "Sandbox",
        approver_roles: Sequence[str] = (SYSTEM_ADMINISTRATOR,),
        latency: float = 0.0,
        user_token_validator: TokenValidator | None = None,
    ) -> None:
        self.token_validator = token_validator
        self.user_token_validator = user_token_validator
        self.approver_roles = frozenset(approver_roles)
        self._state = threading.RLock()
        self._version = 468000
        self._rows: dict[str, dict[str, Row]] = {name: {} for name in _TABLES}
        self._user_roles: dict[str, set[str]] = {}
        self._clients: dict[str, str] = {}
        self._writes: list[WriteEvent] = []
        self._listeners: list[WriteListener] = []
        self._hooks: list[BeforeWriteHook] = []
        self._protection: _ServiceProtection | None = None
        self._local = threading.local()  # per connection thread: the open change set, if any
        self.listener_errors: list[BaseException] = []
        self._business_unit_id = self._insert(_BUSINESS_UNIT, None, {"name": organization_name})
        self._system_user_id = self._insert(
            _USER,
            None,
            {
                "fullname": "SYSTEM",
                "internalemailaddress": None,
                "domainname": "",
                "isdisabled": False,
                "applicationid": None,
                "azureactivedirectoryobjectid": None,
                "accessmode": 1,
                "_businessunitid_value": self._business_unit_id,
                "_defaultmailbox_value": None,
            },
        )
        self._user_roles[self._system_user_id] = set()
        self._default_profile_id = self.add_email_server_profile("Microsoft Exchange Online")
        self._organization_id = self._insert(
            _ORGANIZATION,
            None,
            {
                "name": organization_name,
                "defaultemailsettings": email_settings_xml(2, 2, 1),
                "emailconnectionchannel": 0,
                "_defaultemailserverprofileid_value": self._default_profile_id,
            },
        )
        self._init_registration()
        super().__init__(tls, latency=latency)

    # -- organization -------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """``{url}/api/data/v9.2`` (no trailing slash)."""
        return f"{self.url}{API_PREFIX.rstrip('/')}"

    @property
    def organization_id(self) -> str:
        return self._organization_id

    @property
    def organization_name(self) -> str:
        with self._state:
            return str(self._rows["organizations"][self._organization_id]["name"])

    @property
    def business_unit_id(self) -> str:
        return self._business_unit_id

    @property
    def system_user_id(self) -> str:
        """The built-in SYSTEM user (creator of the seed rows)."""
        return self._system_user_id

    @property
    def default_email_server_profile_id(self) -> str:
        with self._state:
            org = self._rows["organizations"][self._organization_id]
            return str(org["_defaultemailserverprofileid_value"])

    def organization(self) -> dict[str, Any]:
        """A copy of the organization row."""
        with self._state:
            return dict(self._rows["organizations"][self._organization_id])

    def set_email_settings(self, incoming: int, outgoing: int, act: int) -> None:
        """Set the organization's default delivery methods (``defaultemailsettings``)."""
        for column, value in (
            ("incomingemaildeliverymethod", incoming),
            ("outgoingemaildeliverymethod", outgoing),
            ("actdeliverymethod", act),
        ):
            _coerce(_MAILBOX, _MAILBOX.columns[column], value)
        self._touch(
            _ORGANIZATION,
            self._organization_id,
            {"defaultemailsettings": email_settings_xml(incoming, outgoing, act)},
        )

    def set_default_email_server_profile(self, profile_id: str) -> None:
        with self._state:
            if profile_id.lower() not in self._rows["emailserverprofiles"]:
                raise KeyError(profile_id)
            self._touch(
                _ORGANIZATION,
                self._organization_id,
                {"_defaultemailserverprofileid_value": profile_id.lower()},
            )

    def add_email_server_profile(self, name: str, profile_id: str | None = None) -> str:
        return self._insert(_PROFILE, profile_id, {"name": name})

    # -- users, roles, queues -----------------------------------------------------------------

    def add_user(
        self,
        systemuserid: str | None = None,
        *,
        fullname: str,
        internalemailaddress: str | None,
        domainname: str | None = None,
        isdisabled: bool = False,
        roles: Sequence[str] = (),
        application: bool = False,
        applicationid: str | None = None,
    ) -> str:
        """Create a ``systemuser``; ``applicationid`` also maps that client id to the user."""
        is_app = application or applicationid is not None
        with self._state:
            user_id = self._insert(
                _USER,
                systemuserid,
                {
                    "fullname": fullname,
                    "internalemailaddress": internalemailaddress,
                    "domainname": domainname if domainname is not None else internalemailaddress,
                    "isdisabled": isdisabled,
                    "applicationid": applicationid.lower() if applicationid else None,
                    "azureactivedirectoryobjectid": _new_id(),
                    "accessmode": 4 if is_app else 0,
                    "_businessunitid_value": self._business_unit_id,
                    "_defaultmailbox_value": None,
                },
            )
            self._user_roles[user_id] = set()
            for role in roles:
                self.assign_role(user_id, role)
            if applicationid is not None:
                self._clients[applicationid.lower()] = user_id
            return user_id

    def add_role(self, name: str) -> str:
        """The ``roleid`` of the role with this name, created if needed."""
        with self._state:
            for role in self._rows["roles"].values():
                if str(role["name"]).lower() == name.lower():
                    return str(role["roleid"])
            return self._insert(
                _ROLE, None, {"name": name, "_businessunitid_value": self._business_unit_id}
            )

    def assign_role(self, user_id: str, role_name: str) -> None:
        with self._state:
            self._require("systemusers", user_id)
            self._user_roles.setdefault(user_id.lower(), set()).add(self.add_role(role_name))

    def user_roles(self, user_id: str) -> list[str]:
        """Role names held by a user."""
        with self._state:
            roles = self._rows["roles"]
            return sorted(str(roles[r]["name"]) for r in self._user_roles.get(user_id.lower(), ()))

    def map_client_to_user(self, client_id: str, systemuserid: str) -> None:
        """Make ``client_id`` (app registration or managed identity) act as this user."""
        with self._state:
            row = self._require("systemusers", systemuserid)
            self._clients[client_id.lower()] = row["systemuserid"]
            if row["applicationid"] is None:
                row["applicationid"] = client_id.lower()
                row["accessmode"] = 4

    def user_for_client(self, client_id: str) -> str | None:
        with self._state:
            return self._clients.get(client_id.lower())

    def user(self, systemuserid: str) -> dict[str, Any]:
        with self._state:
            return dict(self._require("systemusers", systemuserid))

    def user_for_object_id(self, object_id: str) -> str | None:
        """The user whose Entra object id (``azureactivedirectoryobjectid``) this is."""
        with self._state:
            for row in self._rows["systemusers"].values():
                if str(row.get("azureactivedirectoryobjectid") or "").lower() == object_id.lower():
                    return str(row["systemuserid"])
        return None

    def caller(self, request: Request) -> str | None:
        """The user a request (e.g. one of :attr:`requests_log`) acts as, by its bearer token;
        None when the token is not, or no longer, valid here."""
        try:
            return self._authenticate(request)
        except DataverseError:
            return None

    def add_team(
        self,
        name: str,
        *,
        administrator_user_id: str,
        teamid: str | None = None,
        teamtype: int = 0,
        emailaddress: str | None = None,
    ) -> str:
        """Create a ``team`` (owner team by default) administered by a user; returns its id."""
        _coerce(_TEAM, _TEAM.columns["teamtype"], teamtype)
        with self._state:
            admin = self._require("systemusers", administrator_user_id)
            return self._insert(
                _TEAM,
                teamid,
                {
                    "name": name,
                    "teamtype": teamtype,
                    "emailaddress": emailaddress,
                    "isdefault": False,
                    "azureactivedirectoryobjectid": _new_id() if teamtype in (2, 3) else None,
                    "_administratorid_value": admin["systemuserid"],
                    _annotation("_administratorid_value"): "systemuser",
                    "_businessunitid_value": self._business_unit_id,
                    _annotation("_businessunitid_value"): "businessunit",
                },
            )

    def team(self, teamid: str) -> dict[str, Any]:
        with self._state:
            return dict(self._require("teams", teamid))

    def add_queue(
        self,
        queueid: str | None = None,
        *,
        name: str,
        emailaddress: str | None = None,
        owner_user_id: str | None = None,
        owner_team_id: str | None = None,
    ) -> str:
        """Create a ``queue`` owned by a user (SYSTEM by default) or by a team."""
        if owner_user_id is not None and owner_team_id is not None:
            raise ValueError("a queue has one owner: give owner_user_id or owner_team_id")
        with self._state:
            if owner_team_id is not None:
                owner = str(self._require("teams", owner_team_id)["teamid"])
                owner_type = "team"
            else:
                owner = str(
                    self._require("systemusers", owner_user_id or self._system_user_id)[
                        "systemuserid"
                    ]
                )
                owner_type = "systemuser"
            return self._insert(
                _QUEUE,
                queueid,
                {
                    "name": name,
                    "emailaddress": emailaddress,
                    "_ownerid_value": owner,
                    _annotation("_ownerid_value"): owner_type,
                    "_defaultmailbox_value": None,
                },
            )

    def queue(self, queueid: str) -> dict[str, Any]:
        with self._state:
            return dict(self._require("queues", queueid))

    # -- mailboxes ----------------------------------------------------------------------------

    def add_mailbox(
        self,
        *,
        owner_user_id: str | None = None,
        queue_id: str | None = None,
        emailaddress: str | None,
        incoming: int = 2,
        outgoing: int = 2,
        act: int = 1,
        emailserverprofile: str | None = None,
        name: str | None = None,
        approval: int = 1,
        mailboxid: str | None = None,
    ) -> str:
        """Create the mailbox of a user or of a queue (exactly one of the two) and return its id.

        The owner's ``defaultmailbox`` points to the new mailbox, as when Dataverse creates it.
        """
        if (owner_user_id is None) == (queue_id is None):
            raise ValueError("give exactly one of owner_user_id and queue_id")
        values: dict[str, object] = {
            "incomingemaildeliverymethod": incoming,
            "outgoingemaildeliverymethod": outgoing,
            "actdeliverymethod": act,
            "emailrouteraccessapproval": approval,
            "emailaddress": emailaddress,
        }
        for column, value in values.items():
            values[column] = _coerce(_MAILBOX, _MAILBOX.columns[column], value)
        with self._state:
            if owner_user_id is not None:
                regarding = self._require("systemusers", owner_user_id)
                regarding_id, regarding_type = regarding["systemuserid"], "systemuser"
                owner_id = regarding_id
                owner_type = "systemuser"
                default_name = regarding["fullname"]
            else:
                assert queue_id is not None
                regarding = self._require("queues", queue_id)
                regarding_id, regarding_type = regarding["queueid"], "queue"
                owner_id = regarding["_ownerid_value"]
                owner_type = regarding.get(_annotation("_ownerid_value")) or "systemuser"
                default_name = regarding["name"]
            profile = (emailserverprofile or self.default_email_server_profile_id).lower()
            self._require("emailserverprofiles", profile)
            # A row's business unit is its owner's (a user's, or an owner team's).
            owner_row = self._rows[_LOGICAL_TO_SET[owner_type]][owner_id]
            owning_unit = owner_row["_businessunitid_value"]
            mailbox_id = self._insert(
                _MAILBOX,
                mailboxid,
                {
                    **values,
                    "name": name if name is not None else default_name,
                    "incomingemailstatus": 0,
                    "outgoingemailstatus": 0,
                    "actstatus": 0,
                    "mailboxstatus": 0,
                    "isforwardmailbox": False,
                    "statecode": 0,
                    "statuscode": 1,
                    "_emailserverprofile_value": profile,
                    _annotation("_emailserverprofile_value"): "emailserverprofile",
                    "_regardingobjectid_value": regarding_id,
                    _annotation("_regardingobjectid_value"): regarding_type,
                    "_ownerid_value": owner_id,
                    _annotation("_ownerid_value"): owner_type,
                    "_owningbusinessunit_value": owning_unit,
                    _annotation("_owningbusinessunit_value"): "businessunit",
                },
            )
            regarding["_defaultmailbox_value"] = mailbox_id
            regarding[_annotation("_defaultmailbox_value")] = "mailbox"
            return mailbox_id

    def add_mailboxes(
        self,
        count: int,
        *,
        email: str = "user{index}@contoso.com",
        fullname: str = "User {index}",
        incoming: int | Callable[[int], int] = 2,
        outgoing: int | Callable[[int], int] = 2,
        act: int | Callable[[int], int] = 1,
        approval: int | Callable[[int], int] = 1,
        start: int = 0,
    ) -> list[tuple[str, str]]:
        """Create ``count`` users, each with a mailbox of their own, in one pass.

        The rows are those :meth:`add_user` and :meth:`add_mailbox` create (default server
        profile, owner = regarding = the user, the user's ``defaultmailbox`` set), built from
        templates under one lock, so that seeding a large organization for paging tests and
        benchmarks takes seconds. ``email`` and ``fullname`` are ``str.format`` templates with
        ``{index}`` (``start``, ``start + 1``, ...); each choice value may be a function of the
        index, e.g. ``incoming=lambda i: 3 if i % 10 == 0 else 2``. Returns
        ``(systemuserid, mailboxid)`` pairs in index order.
        """
        if count < 0:
            raise ValueError("count cannot be negative")
        choices = {
            "incomingemaildeliverymethod": incoming,
            "outgoingemaildeliverymethod": outgoing,
            "actdeliverymethod": act,
            "emailrouteraccessapproval": approval,
        }
        checked: set[tuple[str, object]] = set()

        def choice(column: str, index: int) -> object:
            given = choices[column]
            value = given(index) if callable(given) else given
            if (column, value) not in checked:
                _coerce(_MAILBOX, _MAILBOX.columns[column], value)
                checked.add((column, value))
            return value

        created: list[tuple[str, str]] = []
        with self._state:
            profile = self.default_email_server_profile_id
            system = self._system_user_id
            now = _now()
            user_template: Row = dict.fromkeys(_USER.columns)
            user_template.update(
                {
                    "isdisabled": False,
                    "accessmode": 0,
                    "_businessunitid_value": self._business_unit_id,
                    "createdon": now,
                    "modifiedon": now,
                    _annotation("_defaultmailbox_value"): "mailbox",
                }
            )
            mailbox_template: Row = dict.fromkeys(_MAILBOX.columns)
            mailbox_template.update(
                {
                    "incomingemailstatus": 0,
                    "outgoingemailstatus": 0,
                    "actstatus": 0,
                    "mailboxstatus": 0,
                    "isforwardmailbox": False,
                    "statecode": 0,
                    "statuscode": 1,
                    "createdon": now,
                    "modifiedon": now,
                    "_emailserverprofile_value": profile,
                    _annotation("_emailserverprofile_value"): "emailserverprofile",
                    _annotation("_regardingobjectid_value"): "systemuser",
                    _annotation("_ownerid_value"): "systemuser",
                    "_createdby_value": system,
                    _annotation("_createdby_value"): "systemuser",
                    "_modifiedby_value": system,
                    _annotation("_modifiedby_value"): "systemuser",
                    "_owningbusinessunit_value": self._business_unit_id,
                    _annotation("_owningbusinessunit_value"): "businessunit",
                }
            )
            users = self._rows["systemusers"]
            mailboxes = self._rows["mailboxes"]
            for index in range(start, start + count):
                user_id, mailbox_id = _new_id(), _new_id()
                address = email.format(index=index)
                user = user_template.copy()
                user["systemuserid"] = user_id
                user["fullname"] = fullname.format(index=index)
                user["internalemailaddress"] = address
                user["domainname"] = address
                user["azureactivedirectoryobjectid"] = _new_id()
                user["_defaultmailbox_value"] = mailbox_id
                user["versionnumber"] = self._next_version()
                mailbox = mailbox_template.copy()
                mailbox["mailboxid"] = mailbox_id
                mailbox["name"] = user["fullname"]
                mailbox["emailaddress"] = address
                for column in choices:
                    mailbox[column] = choice(column, index)
                mailbox["_regardingobjectid_value"] = user_id
                mailbox["_ownerid_value"] = user_id
                mailbox["versionnumber"] = self._next_version()
                users[user_id] = user
                mailboxes[mailbox_id] = mailbox
                created.append((user_id, mailbox_id))
        return created

    def add_business_unit(self, name: str, businessunitid: str | None = None) -> str:
        """Create a business unit (under the organization's root one); returns its id."""
        return self._insert(_BUSINESS_UNIT, businessunitid, {"name": name})

    def move_user_to_business_unit(self, user_id: str, business_unit_id: str) -> None:
        """Move a user to another business unit; the mailboxes they own move with them, as
        the records a user owns do in Dataverse (their ``owningbusinessunit`` follows)."""
        with self._state:
            unit = str(self._require("businessunits", business_unit_id)["businessunitid"])
            user = str(self._require("systemusers", user_id)["systemuserid"])
            self._touch(_USER, user, {"_businessunitid_value": unit})
            for row in self._rows["mailboxes"].values():
                if row["_ownerid_value"] == user:
                    row["_owningbusinessunit_value"] = unit

    def mailbox(self, mailbox_id: str) -> dict[str, Any]:
        """A copy of the current mailbox row (``KeyError`` if it does not exist)."""
        with self._state:
            row = self._rows["mailboxes"].get(mailbox_id.lower())
            if row is None:
                raise KeyError(mailbox_id)
            return dict(row)

    def mailboxes(self) -> list[dict[str, Any]]:
        with self._state:
            return [dict(r) for _, r in sorted(self._rows["mailboxes"].items())]

    def update_mailbox_as(
        self,
        user_id: str,
        mailbox_id: str,
        changes: Mapping[str, Any],
        *,
        tag: str | None = None,
        if_match: str | None = None,
    ) -> WriteEvent:
        """Apply a change made by ``user_id`` directly (a user in the UI, an admin, a flow).

        ``changes`` uses the Web API body format (``emailserverprofile@odata.bind`` for the
        lookup). It goes through the same validation, rules and listeners as a PATCH (but not
        the ``before_write`` hooks); errors raise :class:`DataverseError`.
        """
        with self._state:
            self._require("systemusers", user_id)
        parsed = self._parse_changes(dict(changes))
        event = self._commit(
            user_id.lower(), mailbox_id, parsed, tag=tag, if_match=if_match, source="direct"
        )
        self._publish(event)
        return event

    # -- write observation --------------------------------------------------------------------

    @property
    def writes(self) -> list[WriteEvent]:
        with self._state:
            return list(self._writes)

    def add_write_listener(self, callback: WriteListener) -> Callable[[], None]:
        """Call ``callback(event)`` after every committed write; returns a function to remove it.

        Listeners run on the writer's thread after the commit and before the HTTP answer is
        sent. An exception in a listener does not undo the write (as a failing asynchronous
        step does not in Dataverse); it is kept in :attr:`listener_errors`.
        """
        with self._state:
            self._listeners.append(callback)
        return lambda: self._remove(self._listeners, callback)

    def before_write(self, callback: BeforeWriteHook) -> Callable[[], None]:
        """Call ``callback(pending)`` inside each PATCH after parsing, before the ``If-Match``
        check, e.g. to slip in a concurrent change; returns a function to remove it."""
        with self._state:
            self._hooks.append(callback)
        return lambda: self._remove(self._hooks, callback)

    def count(self, method: str, entity_set: str) -> int:
        """How many logged requests used ``method`` on ``entity_set`` (or ``WhoAmI``)."""
        total = 0
        for request in self.requests_log:
            if request.method != method.upper() or not request.path.startswith(API_PREFIX):
                continue
            first = request.path[len(API_PREFIX) :].split("/", 1)[0]
            if first.split("(", 1)[0] == entity_set:
                total += 1
        return total

    # -- service protection limits ------------------------------------------------------------

    def set_service_protection(
        self,
        requests_per_window: int,
        window_seconds: float,
        max_concurrent: int = 52,
        execution_ms_per_window: float | None = None,
        *,
        execution_ms_per_request: float | None = None,
        report_budget: bool = True,
    ) -> None:
        """Enforce Dataverse's service protection limits per calling user (sliding window).

        Production values are ``(6000, 300, 52, 1_200_000)``; tests scale the window down. Past a
        limit the request is answered 429 with ``Retry-After`` (whole seconds until the window
        admits it, rounded up) and code 0x80072322 (request count), 0x80072321 (combined
        execution time) or 0x80072326 (concurrent requests); a throttled request is not counted.
        A ``$batch`` is one request for the count and the concurrency limits, and charges the
        execution time of all its operations. Execution time is measured, or
        ``execution_ms_per_request`` per request (per operation in a batch) when given, to
        model a slow organization. Every answer while they are enforced reports what is left,
        as Dataverse does: ``x-ms-ratelimit-burst-remaining-xrm-requests`` (requests left in the
        window, after this one) and, with an execution-time limit,
        ``x-ms-ratelimit-time-remaining-xrm-requests`` (seconds, e.g. ``1,200.00``);
        ``report_budget=False`` leaves them out (Microsoft calls them debugging aids: a client
        must cope without). Calling it again resets the counters.
        """
        if requests_per_window < 1 or window_seconds <= 0 or max_concurrent < 1:
            raise ValueError("limits must be positive")
        self._protection = _ServiceProtection(
            requests_per_window,
            float(window_seconds),
            max_concurrent,
            execution_ms_per_window,
            execution_ms_per_request,
            report_budget,
        )

    def clear_service_protection(self) -> None:
        """Stop enforcing the limits (the default)."""
        self._protection = None

    @property
    def throttled_count(self) -> int:
        """Requests answered 429 by the service protection limits since they were set."""
        protection = self._protection
        return protection.throttled_total() if protection is not None else 0

    @property
    def throttled_by_code(self) -> dict[str, int]:
        """Service protection 429s by error code (``0x80072322``, ``0x80072321``...)."""
        protection = self._protection
        return protection.throttled_codes() if protection is not None else {}

    def requests_in_window(self, user_id: str) -> int:
        """Requests by this user that the sliding window currently counts."""
        protection = self._protection
        return protection.requests_in_window(user_id.lower()) if protection is not None else 0

    def execution_ms_in_window(self, user_id: str) -> float:
        """Combined execution time (ms) of this user's requests in the current window."""
        protection = self._protection
        return protection.execution_in_window(user_id.lower()) if protection is not None else 0.0

    # -- registration tables and privileges ---------------------------------------------------

    # Which contract Dataverse keeps for a queue endpoint is unconfirmed (6, the Plug-in
    # Registration Tool's, or the legacy 2): when set, a service endpoint written with either is
    # stored with this value, so tests can run both ways.
    queue_contract_readback: int | None = None

    def _init_registration(self) -> None:
        """Seed the privilege catalog, the SDK messages and their filters (called by __init__)."""
        self._sas_keys: dict[str, str] = {}
        self._role_privileges: dict[str, dict[str, int]] = {}
        self._privilege_ids: dict[str, str] = {}
        for name, right, scoped in _privilege_catalog():
            self._privilege_ids[name] = self._insert(
                _PRIVILEGE,
                None,
                {
                    "name": name,
                    "accessright": right,
                    "canbebasic": scoped,
                    "canbelocal": scoped,
                    "canbedeep": scoped,
                    "canbeglobal": True,
                },
            )
        self._privilege_names = {pid: name for name, pid in self._privilege_ids.items()}
        self._message_ids: dict[str, str] = {}
        self._filter_ids: dict[tuple[str, str], str] = {}
        for message in _SEEDED_MESSAGES:
            message_id = self._insert(_SDK_MESSAGE, None, {"name": message})
            self._message_ids[message] = message_id
            for entity in _SEEDED_FILTER_ENTITIES:
                self._filter_ids[(message, entity)] = self._insert(
                    _SDK_MESSAGE_FILTER,
                    None,
                    {
                        "name": f"{message} of {entity}",
                        "primaryobjecttypecode": entity,
                        "secondaryobjecttypecode": "none",
                        "iscustomprocessingstepallowed": True,
                        "_sdkmessageid_value": message_id,
                        _annotation("_sdkmessageid_value"): "sdkmessage",
                    },
                )

    def sdk_message_id(self, message: str) -> str:
        """The ``sdkmessageid`` of a seeded message (``Create``, ``Update``, ``Delete``)."""
        return self._message_ids[message]

    def sdk_message_filter_id(self, message: str, entity: str = "mailbox") -> str:
        """The ``sdkmessagefilterid`` of a seeded message on a table."""
        return self._filter_ids[(message, entity)]

    def privilege_names(self) -> list[str]:
        """Every privilege in the organization's catalog (``prvReadMailbox``, ...)."""
        return sorted(self._privilege_ids)

    def set_role_privileges(self, role: str, privileges: Mapping[str, str]) -> str:
        """Give a role (created if needed) exactly these privileges, name -> depth (``Basic``,
        ``Local``, ``Deep`` or ``Global``); returns the role's id."""
        depths = {name: _depth_value(depth) for name, depth in privileges.items()}
        for name in depths:
            if name not in self._privilege_ids:
                raise KeyError(f"no privilege named {name}")
        with self._state:
            role_id = self.add_role(role)
            self._role_privileges[role_id] = depths
            return role_id

    def role_privileges(self, role: str) -> dict[str, str]:
        """A role's privileges, name -> depth."""
        with self._state:
            return _depth_names(self._privileges_of_role(self._role_id(role)))

    def revoke_privilege(self, role: str, privilege: str) -> None:
        """Take one privilege away from a role (as an admin in the role editor would)."""
        with self._state:
            role_id = self._role_id(role)
            held = dict(self._privileges_of_role(role_id))
            held.pop(privilege, None)
            self._role_privileges[role_id] = held

    def user_privileges(self, user_id: str) -> dict[str, str]:
        """What RetrieveUserPrivileges reports: each privilege at the deepest depth any of the
        user's roles grants it, name -> depth."""
        with self._state:
            self._require("systemusers", user_id)
            return _depth_names({n: d for n, (d, _) in self._user_depths(user_id).items()})

    def rows(self, entity_set: str) -> list[dict[str, Any]]:
        """Copies of a table's rows, oldest first (``saskey`` is never among the values)."""
        with self._state:
            return [dict(row) for row in self._rows[entity_set].values()]

    def service_endpoint_key(self, endpoint_id: str) -> str | None:
        """The SAS key last written to a service endpoint (the Web API never returns it)."""
        with self._state:
            return self._sas_keys.get(endpoint_id.lower())

    def create_row(self, entity_set: str, body: Mapping[str, Any]) -> str:
        """Create a registration row as an administrator would in the Plug-in Registration Tool
        (Web API body format, same checks, no privilege check); returns its id."""
        return self._write_registration(_TABLES[entity_set], None, body)

    def update_row(self, entity_set: str, row_id: str, body: Mapping[str, Any]) -> None:
        """Change a registration row in place (the same checks as a PATCH)."""
        self._write_registration(_TABLES[entity_set], row_id.lower(), body)

    def delete_row(self, entity_set: str, row_id: str) -> None:
        """Delete a registration row (the same rules as a DELETE)."""
        self._delete_registration(_TABLES[entity_set], row_id.lower())

    def _role_id(self, name: str) -> str:
        for role in self._rows["roles"].values():
            if str(role["name"]).lower() == name.lower():
                return str(role["roleid"])
        raise KeyError(f"no role named {name}")

    def _privileges_of_role(self, role_id: str) -> dict[str, int]:
        explicit = self._role_privileges.get(role_id)
        if explicit is not None:
            return explicit
        name = str(self._rows["roles"][role_id]["name"])
        if name.lower() == SYSTEM_ADMINISTRATOR.lower():
            return dict.fromkeys(self._privilege_ids, 3)  # every privilege, organization-wide
        return {}

    def _user_depths(self, user_id: str) -> dict[str, tuple[int, str]]:
        """Privilege -> (deepest depth, the granting role's business unit)."""
        found: dict[str, tuple[int, str]] = {}
        for role_id in sorted(self._user_roles.get(user_id.lower(), ())):
            unit = str(self._rows["roles"][role_id].get("_businessunitid_value") or "")
            for name, depth in self._privileges_of_role(role_id).items():
                if name not in found or depth > found[name][0]:
                    found[name] = (depth, unit or self._business_unit_id)
        return found

    def _require_privilege(self, user_id: str, privilege: str, table: _Table) -> None:
        with self._state:
            held = privilege in self._user_depths(user_id)
        if not held:
            raise DataverseError(
                403,
                "0x80040220",
                f"Principal user (Id={user_id}, type=8) is missing {privilege} privilege on "
                f"entity '{table.logical_name}'.",
            )

    def _registration_route(
        self,
        request: Request,
        user_id: str,
        table: _Table,
        key: str | None,
        segments: list[str],
    ) -> Response | None:
        """Registration tables, roles' privileges and RetrieveUserPrivileges; None: not ours."""
        if len(segments) == 2 and key is not None and segments[1].startswith(_CRM_NAMESPACE):
            return self._bound_operation(request, user_id, table, _parse_key(key), segments[1])
        if len(segments) != 1:
            return None
        if key is None and request.method == "POST":
            if table is _ROLE:
                return self._post_role(request, user_id)
            if table.entity_set in _CREATABLE:
                self._require_privilege(user_id, f"prvCreate{_CREATABLE[table.entity_set]}", table)
                row_id = self._write_registration(table, None, _body_object(request, table))
                return self._created(request, table, row_id)
            return None
        guarded = _GUARDED.get(table.entity_set)
        if guarded is None:
            return None
        if request.method == "GET":
            self._require_privilege(user_id, f"prvRead{guarded}", table)
            return None  # answered by the ordinary read
        if key is None or table.entity_set not in _CREATABLE:
            return None
        row_id = _parse_key(key)
        if request.method == "PATCH":
            self._require_privilege(user_id, f"prvWrite{guarded}", table)
            self._write_registration(table, row_id, _body_object(request, table))
            return Response(
                204, b"", {"OData-EntityId": f"{self.api_url}/{table.entity_set}({row_id})"}
            )
        if request.method == "DELETE":
            self._require_privilege(user_id, f"prvDelete{guarded}", table)
            self._delete_registration(table, row_id)
            return Response(204, b"", {})
        return None

    def _created(self, request: Request, table: _Table, row_id: str) -> Response:
        headers = {"OData-EntityId": f"{self.api_url}/{table.entity_set}({row_id})"}
        prefer = _preferences(request.header("prefer"))
        if prefer.get("return") != "representation":
            return Response(204, b"", headers)
        annotations = _Annotations(prefer.get("odata.include-annotations"))
        with self._state:
            row = dict(self._require(table.entity_set, row_id))
            body = self._serialize(table, row, None, annotations)
        headers["Preference-Applied"] = "return=representation"
        context = f"{self.api_url}/$metadata#{table.entity_set}/$entity"
        return self._odata(201, {"@odata.context": context, **body}, headers)

    def _registration_changes(self, table: _Table, body: Mapping[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@"):
                continue
            if name.endswith("@odata.bind"):
                nav = name[: -len("@odata.bind")]
                column = table.navigation(nav)
                if column is None or not column.writable:
                    raise _entity_payload_error(
                        table, f"'{nav}' is not a navigation property that can be set here."
                    )
                target = self._resolve_bind(column, value)
                changes[column.name] = target
                changes[_annotation(column.name)] = (
                    _SET_TO_LOGICAL[column.targets[0]] if target else None
                )
                continue
            column = table.columns.get(name)
            if column is None or column.kind == "lookup":
                raise _entity_payload_error(
                    table,
                    f"The property '{name}' does not exist on type "
                    f"'Microsoft.Dynamics.CRM.{table.logical_name}' or cannot be set directly.",
                )
            if not column.writable:
                raise DataverseError(
                    400,
                    "0x80040203",
                    f"The column '{name}' of '{table.logical_name}' is not valid for update "
                    "(it is read-only).",
                )
            if column.kind == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise _entity_payload_error(
                        table, f"Cannot convert the literal '{value}' to 'Edm.Int32' ('{name}')."
                    )
                changes[name] = value
            else:
                changes[name] = _coerce(table, column, value)
        return changes

    def _write_registration(
        self, table: _Table, row_id: str | None, body: Mapping[str, Any]
    ) -> str:
        """Create (``row_id`` None) or update one registration row; returns its id."""
        if getattr(self._local, "changeset", None) is not None:
            raise DataverseError(
                400,
                "0x80060888",
                "The Dataverse sandbox does not support registration writes in a change set.",
            )
        changes = self._registration_changes(table, body)
        key = changes.pop("saskey", None) if table is _SERVICE_ENDPOINT else None
        if table is _SERVICE_ENDPOINT:
            readback = self.queue_contract_readback
            if readback is not None and changes.get("contract") in (2, 6):
                changes["contract"] = readback
        with self._state:
            if row_id is None:
                values = {**_REGISTRATION_DEFAULTS.get(table.entity_set, {}), **changes}
                missing = [
                    name
                    for name in _REGISTRATION_REQUIRED[table.entity_set]
                    if values.get(name) is None
                ]
                if missing:
                    readable = [table.columns[m].navigation or m for m in missing]
                    raise DataverseError(
                        400,
                        "0x80040203",
                        f"Required field(s) missing to create a {table.logical_name}: "
                        f"{', '.join(readable)}.",
                    )
                candidate = {**dict.fromkeys(table.columns), **values}
                self._validate_registration(table, candidate)
                row_id = self._insert(table, None, values)
            else:
                row = self._require(table.entity_set, row_id)
                self._validate_registration(table, {**row, **changes})
                self._touch(table, row_id, changes)
            if key is not None:
                self._sas_keys[row_id] = str(key)
            return row_id

    def _validate_registration(self, table: _Table, row: Row) -> None:
        """The platform's checks on a step or an image, on the row as it would be stored."""
        if table is _STEP:
            message_id = row.get("_sdkmessageid_value")
            filter_id = row.get("_sdkmessagefilterid_value")
            entity = None
            if filter_id:
                found = self._rows["sdkmessagefilters"][filter_id]
                if found["_sdkmessageid_value"] != message_id:
                    raise DataverseError(
                        400,
                        "0x80040203",
                        f"The message filter {filter_id} belongs to another message than the "
                        f"step's message {message_id}.",
                    )
                entity = str(found["primaryobjecttypecode"])
            if entity and row.get("filteringattributes"):
                _check_attributes(entity, str(row["filteringattributes"]), "filteringattributes")
        elif table is _STEP_IMAGE:
            step = self._rows["sdkmessageprocessingsteps"][row["_sdkmessageprocessingstepid_value"]]
            message = self._rows["sdkmessages"][step["_sdkmessageid_value"]]["name"]
            if row.get("imagetype") in (0, 2) and message == "Create":
                raise DataverseError(
                    400,
                    "0x80040203",
                    "A pre image cannot be registered on a step for the Create message: there "
                    "is no row before it.",
                )
            if row.get("imagetype") in (1, 2) and step.get("stage") != 40:
                raise DataverseError(
                    400, "0x80040203", "A post image needs a post-operation (stage 40) step."
                )
            filter_id = step.get("_sdkmessagefilterid_value")
            if filter_id and row.get("attributes"):
                entity = str(self._rows["sdkmessagefilters"][filter_id]["primaryobjecttypecode"])
                _check_attributes(entity, str(row["attributes"]), "attributes")

    def _delete_registration(self, table: _Table, row_id: str) -> None:
        with self._state:
            self._require(table.entity_set, row_id)
            if table is _SERVICE_ENDPOINT:
                users = [
                    step_id
                    for step_id, step in self._rows["sdkmessageprocessingsteps"].items()
                    if step["_eventhandler_value"] == row_id
                ]
                if users:
                    # The sandbox's model: an event handler in use is kept (delete its steps).
                    raise DataverseError(
                        400,
                        "",
                        f"The service endpoint {row_id} is the event handler of step(s) "
                        f"{', '.join(users)}; delete them first.",
                    )
                self._sas_keys.pop(row_id, None)
            if table is _STEP:  # images are the step's children: they go with it
                images = self._rows["sdkmessageprocessingstepimages"]
                for image_id in [
                    i for i, r in images.items() if r["_sdkmessageprocessingstepid_value"] == row_id
                ]:
                    del images[image_id]
            del self._rows[table.entity_set][row_id]

    def _post_role(self, request: Request, user_id: str) -> Response:
        self._require_privilege(user_id, "prvCreateRole", _ROLE)
        body = _body_object(request, _ROLE)
        unknown = sorted(set(body) - {"name", "businessunitid@odata.bind"})
        if unknown:
            raise _entity_payload_error(_ROLE, f"The property '{unknown[0]}' cannot be set here.")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataverseError(400, "0x80040203", "Required field(s) missing: name.")
        unit = self._business_unit_id
        bind = body.get("businessunitid@odata.bind")
        if bind is not None:
            match = _BIND.search(urlsplit(bind).path) if isinstance(bind, str) else None
            if match is None or match.group("set") != "businessunits":
                raise _entity_payload_error(_ROLE, "businessunitid must bind to a businessunit.")
            unit = match.group("key").lower()
        with self._state:
            self._require("businessunits", unit)
            for role in self._rows["roles"].values():
                same_unit = role.get("_businessunitid_value") in (unit, None)
                if str(role["name"]).lower() == name.lower() and same_unit:
                    raise DataverseError(
                        412, "0x80040237", "A record with matching key values already exists."
                    )
            role_id = self._insert(
                _ROLE,
                None,
                {
                    "name": name,
                    "_businessunitid_value": unit,
                    _annotation("_businessunitid_value"): "businessunit",
                },
            )
        return self._created(request, _ROLE, role_id)

    def _bound_operation(
        self, request: Request, user_id: str, table: _Table, row_id: str, segment: str
    ) -> Response:
        name = segment[len(_CRM_NAMESPACE) :].removesuffix("()")
        context = f"{self.api_url}/$metadata#Microsoft.Dynamics.CRM.{name}Response"
        if table is _USER and name == "RetrieveUserPrivileges":
            _require_method(request, "GET")
            self._require_privilege(user_id, "prvReadUser", table)
            with self._state:
                self._require("systemusers", row_id)
                held = self._user_depths(row_id)
            return self._odata(
                200, {"@odata.context": context, "RolePrivileges": self._entries(held)}
            )
        if table is _ROLE and name == "RetrieveRolePrivilegesRole":
            _require_method(request, "GET")
            self._require_privilege(user_id, "prvReadRole", table)
            with self._state:
                role = self._require("roles", row_id)
                unit = str(role.get("_businessunitid_value") or self._business_unit_id)
                held = {n: (d, unit) for n, d in self._privileges_of_role(row_id).items()}
            return self._odata(
                200, {"@odata.context": context, "RolePrivileges": self._entries(held)}
            )
        if table is _ROLE and name == "AddPrivilegesRole":
            _require_method(request, "POST")
            self._require_privilege(user_id, "prvWriteRole", table)
            entries = _body_object(request, _ROLE).get("Privileges")
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise _entity_payload_error(_ROLE, "Privileges must be a list of RolePrivilege.")
            with self._state:
                self._require("roles", row_id)
                granted = dict(self._privileges_of_role(row_id))
                for entry in entries:
                    privilege_id = str(entry.get("PrivilegeId", "")).lower()
                    privilege = self._privilege_names.get(privilege_id)
                    if privilege is None:
                        raise DataverseError(
                            404,
                            "0x80040217",
                            f"privilege With Id = {privilege_id} Does Not Exist",
                        )
                    try:
                        granted[privilege] = _depth_value(entry.get("Depth"))
                    except ValueError as exc:
                        raise _entity_payload_error(_ROLE, str(exc)) from exc
                self._role_privileges[row_id] = granted
            return Response(204, b"", {})
        raise _not_found(segment)

    def _entries(self, held: Mapping[str, tuple[int, str]]) -> list[dict[str, Any]]:
        return [
            {
                "Depth": _DEPTHS[depth],
                "PrivilegeId": self._privilege_ids[name],
                "BusinessUnitId": unit,
                "PrivilegeName": name,
            }
            for name, (depth, unit) in sorted(held.items())
        ]

    # -- HTTP ---------------------------------------------------------------------------------

    def common_headers(self, request: Request) -> dict[str, str]:
        request_id = str(uuid.uuid4())
        return {"OData-Version": "4.0", "REQ_ID": request_id, "x-ms-service-request-id": request_id}

    def fault_body(self, request: Request, status: int) -> object:
        if status == 429:
            return _error_body(
                "0x80072322",
                "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
            )
        if status == 412:
            return _error_body(
                "0x80060882",
                "The version of the existing record doesn't match the RowVersion property "
                "provided.",
            )
        if status >= 500:
            return _error_body("0x80040216", "An unexpected error occurred.")
        return _error_body("", f"The request failed with status {status}.")

    def handle(self, request: Request) -> Response:
        try:
            return self._route(request)
        except DataverseError as error:
            return self._error_response(error)

    def _error_response(self, error: DataverseError) -> Response:
        headers = {"Content-Type": ODATA_JSON}
        if error.status == 401:
            headers["WWW-Authenticate"] = (
                "Bearer authorization_uri=https://login.microsoftonline.com/common/oauth2/"
                f"authorize, resource_id={self.url}/"
            )
        headers.update(error.headers)
        return json_response(error.status, _error_body(error.code, error.message), headers=headers)

    def _route(self, request: Request) -> Response:
        if not (request.path + "/").startswith(API_PREFIX):
            raise _not_found(request.path.lstrip("/").split("/", 1)[0])
        user_id = self._authenticate(request)
        protection = self._protection
        if protection is None:
            return self._dispatch(request, user_id)
        budget = protection.admit(user_id)
        self._local.operations = 1
        started = time.perf_counter()
        try:
            try:
                response = self._dispatch(request, user_id)
            except DataverseError as error:  # an error answer reports the budget too
                response = self._error_response(error)
            response.headers.update(budget)
            return response
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            protection.release(user_id, elapsed_ms, int(getattr(self._local, "operations", 1)))

    def _dispatch(self, request: Request, user_id: str, *, in_batch: bool = False) -> Response:
        rest = request.path[len(API_PREFIX) :]
        segments = [s for s in rest.split("/") if s]
        if not segments:
            raise _not_found("")
        if segments == ["$batch"]:
            if in_batch:
                raise DataverseError(
                    400, "0x80060888", "A batch request cannot contain another batch request."
                )
            _require_method(request, "POST")
            return self._batch(request, user_id)
        match = _SEGMENT.match(segments[0])
        if match is None:
            raise _not_found(segments[0])
        name, key = match.group("name"), match.group("key")
        if name == "WhoAmI" and not key and len(segments) == 1:
            _require_method(request, "GET")
            return self._odata(
                200,
                {
                    "@odata.context": f"{self.api_url}/$metadata#"
                    "Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": self._business_unit_id,
                    "UserId": user_id,
                    "OrganizationId": self._organization_id,
                },
            )
        table = _TABLES.get(name)
        if table is None:
            raise _not_found(segments[0])
        registration = self._registration_route(request, user_id, table, key, segments)
        if registration is not None:
            return registration
        if key is None:
            if len(segments) > 1:
                raise _not_found(segments[1])
            _require_method(request, "GET")
            return self._query(request, table, None, f"{table.entity_set}")
        row_id = _parse_key(key)
        if len(segments) == 1:
            if request.method == "GET":
                return self._retrieve(request, table, row_id)
            if request.method == "PATCH":
                if table is not _MAILBOX:
                    raise DataverseError(
                        405,
                        "0x80060888",
                        f"The Dataverse sandbox only supports PATCH on mailboxes, not on "
                        f"'{table.entity_set}'.",
                    )
                return self._patch(request, user_id, row_id)
            raise _method_not_allowed(request)
        if len(segments) == 2 and table is _USER and segments[1] == "systemuserroles_association":
            _require_method(request, "GET")
            with self._state:
                self._require("systemusers", row_id)
                roles = self._rows["roles"]
                rows = [dict(roles[r]) for r in sorted(self._user_roles.get(row_id, ()))]
            return self._query(request, _ROLE, rows, "roles")
        raise _not_found(segments[1])

    # -- $batch --------------------------------------------------------------------------------

    def _batch(self, request: Request, user_id: str) -> Response:
        items = _parse_batch(request.header("content-type"), request.body)
        total = sum(len(item) if isinstance(item, list) else 1 for item in items)
        if total > MAX_BATCH_OPERATIONS:
            raise DataverseError(
                400,
                "0x80060888",
                "The current batch message contains too many parts. Only batch messages with a "
                f"maximum number of '{MAX_BATCH_OPERATIONS}' query operations, including "
                "changeset operations, are allowed.",
            )
        self._local.operations = max(1, total)
        prefer = _preferences(request.header("prefer"))
        continue_on_error = "odata.continue-on-error" in prefer
        parts: list[Message] = []
        status = 200
        for item in items:
            if isinstance(item, list):
                results, failed = self._change_set(item, user_id)
                if failed is None:
                    parts.append(_change_set_part(results))
                    continue
                parts.append(_http_part(*failed))
                failure = failed[1].status
            else:
                response = self._operation(item, user_id, in_change_set=False)
                parts.append(_http_part(item, response))
                if response.status < 400:
                    continue
                failure = response.status
            if not continue_on_error:
                status = failure  # the batch error is the error of the first failing request
                break
        boundary = f"batchresponse_{uuid.uuid4()}"
        headers = {"Content-Type": f"multipart/mixed; boundary={boundary}"}
        if continue_on_error:
            headers["Preference-Applied"] = "odata.continue-on-error"
        return Response(status, _multipart(boundary, parts), headers)

    def _operation(
        self, operation: _BatchOperation, user_id: str, *, in_change_set: bool
    ) -> Response:
        try:
            if in_change_set and operation.method == "GET":
                raise DataverseError(
                    400,
                    "0x80060888",
                    "A change set cannot contain a GET request: query operations belong outside "
                    "change sets.",
                )
            response = self._dispatch(operation.request(), user_id, in_batch=True)
        except DataverseError as error:
            response = self._error_response(error)
        request_id = str(uuid.uuid4())
        headers = {"REQ_ID": request_id, "OData-Version": "4.0"}
        headers.update(response.headers)
        response.headers = headers
        return response

    def _change_set(
        self, operations: list[_BatchOperation], user_id: str
    ) -> tuple[list[tuple[_BatchOperation, Response]], tuple[_BatchOperation, Response] | None]:
        """Run a change set atomically: all operations commit, or none and its first error.

        The state lock is held throughout, so nobody observes a half-applied change set; the
        write events are published only once every operation has succeeded.
        """
        changeset = _ChangeSet()
        results: list[tuple[_BatchOperation, Response]] = []
        with self._state:
            self._local.changeset = changeset
            try:
                for operation in operations:
                    response = self._operation(operation, user_id, in_change_set=True)
                    if response.status >= 400:
                        self._rollback(changeset)
                        return [], (operation, response)
                    results.append((operation, response))
            except BaseException:
                self._rollback(changeset)
                raise
            finally:
                self._local.changeset = None
        for event in changeset.events:
            self._publish(event)
        return results, None

    def _rollback(self, changeset: _ChangeSet) -> None:
        with self._state:
            rows = self._rows["mailboxes"]
            for mailbox_id, saved in changeset.journal.items():
                row = rows[mailbox_id]
                row.clear()
                row.update(saved)
            undone = {id(event) for event in changeset.events}
            self._writes = [w for w in self._writes if id(w) not in undone]
            changeset.journal.clear()
            changeset.events.clear()

    def _authenticate(self, request: Request) -> str:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise DataverseError(401, "", "Bearer token is missing from the Authorization header.")
        user_validator = self.user_token_validator
        object_id = user_validator(token) if user_validator is not None else None
        if object_id:
            person = self.user_for_object_id(object_id)
            if person is None:
                raise DataverseError(
                    403, "0x80072560", "The user is not a member of the organization."
                )
            return person
        validator = self.token_validator
        client_id = validator(token) if validator is not None else token
        if not client_id:
            raise DataverseError(
                401, "", "The bearer token is not valid for this organization or has expired."
            )
        with self._state:
            user_id = self._clients.get(client_id.lower())
        if user_id is None:
            raise DataverseError(403, "0x80072560", "The user is not a member of the organization.")
        return user_id

    def _odata(
        self, status: int, payload: object, headers: dict[str, str] | None = None
    ) -> Response:
        merged = {"Content-Type": ODATA_JSON}
        merged.update(headers or {})
        return json_response(status, payload, headers=merged)

    def _retrieve(self, request: Request, table: _Table, row_id: str) -> Response:
        _check_options(request, allowed={"$select"})
        select = _parse_select(table, request.query.get("$select"))
        prefer = _preferences(request.header("prefer"))
        annotations = _Annotations(prefer.get("odata.include-annotations"))
        with self._state:
            row = dict(self._require(table.entity_set, row_id))
            body = self._serialize(table, row, select, annotations)
        context = f"{self.api_url}/$metadata#{table.entity_set}"
        if select:
            context += f"({','.join(select)})"
        payload = {"@odata.context": f"{context}/$entity", **body}
        headers = {"ETag": body["@odata.etag"]}
        headers.update(_applied(prefer, include_page_size=False))
        return self._odata(200, payload, headers)

    def _query(
        self, request: Request, table: _Table, rows: list[Row] | None, context: str
    ) -> Response:
        """A collection read; ``rows`` None reads the table's live rows under the lock.

        Only references are filtered and only the page is copied (serialized), so paging
        through 100,000 rows costs one pass over references per page, not a copy of the table.
        """
        _check_options(request, allowed={"$select", "$filter", "$top", "$count", "$skiptoken"})
        select = _parse_select(table, request.query.get("$select"))
        prefer = _preferences(request.header("prefer"))
        annotations = _Annotations(prefer.get("odata.include-annotations"))
        page_size = _page_size(prefer.get("odata.maxpagesize"))
        filter_text = request.query.get("$filter")
        predicate = _FilterParser(filter_text, table).parse() if filter_text else None
        top_text = request.query.get("$top")
        if top_text is not None and not top_text.isdigit():
            raise DataverseError(
                400, "0x80060888", f"Invalid value '{top_text}' for the $top query option."
            )
        skiptoken = request.query.get("$skiptoken")
        page_number = 1
        last_key: str | None = None
        if skiptoken is not None:
            last_key, page_number = _decode_skiptoken(skiptoken, table.key)
        key = table.key

        def sort_key(row: Row) -> str:
            return str(row[key])

        by_key = _key_lookup(filter_text, table.key) if rows is None else None
        with self._state:
            if by_key is not None:
                # `key eq <id> or key eq <id> ...`: served from the primary key, as a database
                # serves it from its index, not by testing every row of the table.
                live = self._rows[table.entity_set]
                matched = [live[i] for i in dict.fromkeys(by_key) if i in live]
                predicate = None
            source = self._rows[table.entity_set].values() if rows is None else rows
            if by_key is None:
                matched = [r for r in source if predicate(r)] if predicate else list(source)
            total = len(matched)
            if top_text is not None:
                matched.sort(key=sort_key)
                matched = matched[: int(top_text)]
                if last_key is not None:
                    matched = [r for r in matched if str(r[key]) > last_key]
                more = False
                page = matched[:page_size]
            else:
                if last_key is not None:
                    matched = [r for r in matched if str(r[key]) > last_key]
                window = heapq.nsmallest(page_size + 1, matched, key=sort_key)
                more = len(window) > page_size
                page = window[:page_size]
            values = [self._serialize(table, r, select, annotations) for r in page]
            next_token = _encode_skiptoken(key, page, page_number + 1) if more else None
        context_url = f"{self.api_url}/$metadata#{context}"
        if select:
            context_url += f"({','.join(select)})"
        payload: dict[str, Any] = {"@odata.context": context_url}
        if request.query.get("$count", "").lower() == "true":
            payload["@odata.count"] = total
        payload["value"] = values
        if next_token is not None:
            payload["@odata.nextLink"] = self._next_link(request, next_token)
        return self._odata(200, payload, _applied(prefer, include_page_size=True))

    def _next_link(self, request: Request, skiptoken: str) -> str:
        params = [(k, v) for k, v in request.query.items() if k != "$skiptoken"]
        params.append(("$skiptoken", skiptoken))
        safe = "$,()/:@"
        query = "&".join(f"{k}={quote(v, safe=safe)}" for k, v in params)
        return f"{self.url}{quote(request.path)}?{query}"

    def _serialize(
        self,
        table: _Table,
        row: Row,
        select: list[str] | None,
        annotations: _Annotations,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": f'W/"{row["versionnumber"]}"'}
        names = select if select else list(table.columns)
        if table.key not in names:
            names = [*names, table.key]
        formatted = "OData.Community.Display.V1.FormattedValue"
        for name in names:
            column = table.columns[name]
            value = row.get(name)
            if value is not None and annotations.wants(formatted):
                label = self._formatted(column, row, value)
                if label is not None:
                    out[f"{name}@{formatted}"] = label
            if column.kind == "lookup" and value is not None:
                logical = row.get(_annotation(name))
                if logical and annotations.wants("Microsoft.Dynamics.CRM.lookuplogicalname"):
                    out[_annotation(name)] = logical
                nav_name = "Microsoft.Dynamics.CRM.associatednavigationproperty"
                if logical and annotations.wants(nav_name):
                    out[f"{name}@{nav_name}"] = _ASSOCIATED_NAVIGATION.get(
                        (name, str(logical)), column.navigation
                    )
            out[name] = value
        return out

    def _formatted(self, column: _Column, row: Row, value: object) -> str | None:
        if column.kind == "choice" and column.labels is not None and isinstance(value, int):
            return column.labels.get(value)
        if column.kind == "bool":
            return "Yes" if value else "No"
        if column.kind == "lookup":
            logical = row.get(_annotation(column.name))
            target_set = _LOGICAL_TO_SET.get(str(logical))
            if target_set is None:
                return None
            target = self._rows[target_set].get(str(value))
            if target is None:
                return None
            name = target.get(_TABLES[target_set].primary_name)
            return str(name) if name is not None else None
        return None

    def _patch(self, request: Request, user_id: str, mailbox_id: str) -> Response:
        if request.body.strip() and request.json is None:
            raise _payload_error("The request body is not valid JSON.")
        body = request.json if request.body.strip() else {}
        if not isinstance(body, dict):
            raise _payload_error("The request body must be a JSON object.")
        changes = self._parse_changes(body)
        tag = request.query.get("tag")
        if_match = request.header("if-match")
        pending = PendingWrite(mailbox_id, user_id, dict(changes), tag, if_match)
        with self._state:
            hooks = list(self._hooks)
        # A hook plays another client: its writes are not part of this request's change set.
        changeset = getattr(self._local, "changeset", None)
        self._local.changeset = None
        try:
            for hook in hooks:
                hook(pending)
        finally:
            self._local.changeset = changeset
        event = self._commit(
            user_id,
            mailbox_id,
            changes,
            tag=tag,
            if_match=if_match,
            if_none_match=request.header("if-none-match"),
            source="webapi",
        )
        self._publish(event)
        entity_id = f"{self.api_url}/mailboxes({mailbox_id})"
        prefer = _preferences(request.header("prefer"))
        headers = {"OData-EntityId": entity_id, "ETag": f'W/"{event.versionnumber}"'}
        if prefer.get("return") == "representation":
            select = _parse_select(_MAILBOX, request.query.get("$select"))
            annotations = _Annotations(prefer.get("odata.include-annotations"))
            with self._state:
                body_out = self._serialize(_MAILBOX, dict(event.after), select, annotations)
            headers["Preference-Applied"] = "return=representation"
            context = f"{self.api_url}/$metadata#mailboxes/$entity"
            return self._odata(200, {"@odata.context": context, **body_out}, headers)
        return Response(204, b"", headers)

    def _parse_changes(self, body: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key.startswith("@"):
                continue  # instance annotations such as @odata.etag carry no column value
            if key.endswith("@odata.bind"):
                nav = key[: -len("@odata.bind")]
                column = _MAILBOX.navigation(nav)
                if column is None:
                    raise _payload_error(
                        f"An undeclared property '{nav}' which only has property annotations in "
                        "the payload but no property value was found in the payload."
                    )
                if not column.writable:
                    raise _read_only(nav)
                changes[column.name] = self._resolve_bind(column, value)
                continue
            column = _MAILBOX.columns.get(key)
            if column is None:
                raise _payload_error(
                    f"The property '{key}' does not exist on type "
                    "'Microsoft.Dynamics.CRM.mailbox'. Make sure to only use property names "
                    "that are defined by the type or mark the type as open type."
                )
            if column.kind == "lookup":
                raise _payload_error(
                    f"CRM do not support direct update of Entity Reference properties ('{key}'), "
                    "Use Navigation properties instead."
                )
            if not column.writable:
                raise _read_only(key)
            changes[key] = _coerce(_MAILBOX, column, value)
        return changes

    def _resolve_bind(self, column: _Column, value: object) -> str | None:
        if value is None:
            return None
        match = _BIND.search(urlsplit(value).path) if isinstance(value, str) else None
        if match is None or match.group("set") not in column.targets:
            raise _payload_error(
                f"The value {value!r} of '{column.navigation}@odata.bind' is not a reference "
                f"to one of: {', '.join(column.targets)}."
            )
        target_set, target_id = match.group("set"), match.group("key").lower()
        with self._state:
            self._require(target_set, target_id)
        return target_id

    def _commit(
        self,
        user_id: str,
        mailbox_id: str,
        requested: dict[str, Any],
        *,
        tag: str | None,
        if_match: str | None,
        if_none_match: str | None = None,
        source: str,
    ) -> WriteEvent:
        with self._state:
            row = self._require("mailboxes", mailbox_id)
            etag = f'W/"{row["versionnumber"]}"'
            if if_none_match is not None and if_none_match.strip() == "*":
                raise DataverseError(
                    412, "0x80040237", "A record with matching key values already exists."
                )
            if if_match is not None:
                presented = if_match.strip()
                if presented != "*" and presented not in (etag, etag[2:]):
                    raise DataverseError(
                        412,
                        "0x80060882",
                        "The version of the existing record doesn't match the RowVersion "
                        "property provided.",
                    )
            approval = requested.get("emailrouteraccessapproval")
            if approval in (1, 3) and not self._can_approve(user_id):
                raise DataverseError(
                    403,
                    "0x80040220",
                    f"Principal user (Id={user_id}, type=8) is missing "
                    "prvApproveRejectEmailAddress privilege on entity 'mailbox'.",
                )
            changes = dict(requested)
            new_address = requested.get("emailaddress", row["emailaddress"])
            if "emailaddress" in requested and new_address != row["emailaddress"]:
                # A new address must be approved again before server-side sync uses it.
                changes["emailrouteraccessapproval"] = 0
            before = dict(row)
            changeset = getattr(self._local, "changeset", None)
            if changeset is not None:
                changeset.journal.setdefault(str(row["mailboxid"]), before)
            previous = {column: row.get(column) for column in changes}
            for column, value in changes.items():
                row[column] = value
                if _MAILBOX.columns[column].kind == "lookup":
                    if value is None:
                        row.pop(_annotation(column), None)
                    else:
                        row[_annotation(column)] = _SET_TO_LOGICAL[
                            _MAILBOX.columns[column].targets[0]
                        ]
            version = self._next_version()
            modifiedon = _now()
            row["versionnumber"] = version
            row["modifiedon"] = modifiedon
            row["_modifiedby_value"] = user_id
            row[_annotation("_modifiedby_value")] = "systemuser"
            event = WriteEvent(
                mailbox_id=str(row["mailboxid"]),
                user_id=user_id,
                tag=tag,
                changes=changes,
                previous=previous,
                requested=dict(requested),
                versionnumber=version,
                modifiedon=modifiedon,
                before=before,
                after=dict(row),
                source=source,
            )
            self._writes.append(event)
            if changeset is not None:
                changeset.events.append(event)
            return event

    def _publish(self, event: WriteEvent) -> None:
        if getattr(self._local, "changeset", None) is not None:
            return  # published when the change set commits
        with self._state:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception as exc:  # the write is committed; keep the failure for the test
                with self._state:
                    self.listener_errors.append(exc)

    def _can_approve(self, user_id: str) -> bool:
        held = {name.lower() for name in self.user_roles(user_id)}
        return any(role.lower() in held for role in self.approver_roles)

    # -- storage helpers ----------------------------------------------------------------------

    def _next_version(self) -> int:
        with self._state:
            self._version += 1
            return self._version

    def _insert(self, table: _Table, row_id: str | None, values: dict[str, Any]) -> str:
        key = (row_id or _new_id()).lower()
        if not _GUID.match(key):
            raise ValueError(f"{table.key} must be a GUID, got {row_id!r}")
        with self._state:
            rows = self._rows[table.entity_set]
            if key in rows:
                raise ValueError(f"{table.logical_name} {key} already exists")
            now = _now()
            row: Row = dict.fromkeys(table.columns)
            row.update(values)
            row[table.key] = key
            row["versionnumber"] = self._next_version()
            row["createdon"] = now
            row["modifiedon"] = now
            if table is _MAILBOX:  # only created after __init__, so SYSTEM exists
                for column in ("_createdby_value", "_modifiedby_value"):
                    row[column] = self._system_user_id
                    row[_annotation(column)] = "systemuser"
            rows[key] = row
            return key

    def _touch(self, table: _Table, row_id: str, values: dict[str, Any]) -> None:
        with self._state:
            row = self._require(table.entity_set, row_id)
            row.update(values)
            row["versionnumber"] = self._next_version()
            row["modifiedon"] = _now()

    def _require(self, entity_set: str, row_id: str) -> Row:
        row = self._rows[entity_set].get(row_id.lower())
        if row is None:
            logical = _SET_TO_LOGICAL.get(entity_set, entity_set)
            raise DataverseError(
                404, "0x80040217", f"{logical} With Id = {row_id.lower()} Does Not Exist"
            )
        return row

    @staticmethod
    def _remove(items: list[Any], item: object) -> None:
        if item in items:
            items.remove(item)


# -- module helpers -----------------------------------------------------------------------------


_KEY_TERM = re.compile(r"^\s*(\w+)\s+eq\s+([0-9a-fA-F-]{36})\s*$")


def _key_lookup(filter_text: str | None, key: str) -> list[str] | None:
    """The ids of a filter that is only `key eq <guid>` terms joined by `or`, else None."""
    if not filter_text:
        return None
    ids: list[str] = []
    for term in re.split(r"\s+or\s+", filter_text.strip()):
        match = _KEY_TERM.match(term)
        if match is None or match.group(1) != key or not _GUID.match(match.group(2)):
            return None
        ids.append(match.group(2).lower())
    return ids


def _error_body(code: str, message: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


def _not_found(segment: str) -> DataverseError:
    return DataverseError(404, "0x80060888", f"Resource not found for the segment '{segment}'.")


def _method_not_allowed(request: Request) -> DataverseError:
    return DataverseError(
        405,
        "0x80060888",
        f"The HTTP method '{request.method}' is not supported on '{request.path}' by the "
        "Dataverse sandbox.",
    )


def _require_method(request: Request, method: str) -> None:
    if request.method != method:
        raise _method_not_allowed(request)


def _payload_error(detail: str) -> DataverseError:
    return DataverseError(
        400,
        "0x80048d19",
        "Error identified in Payload provided by the user for Entity :'mailboxes', For more "
        f"information on this error please follow this help link "
        f"https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : "
        f"Microsoft.OData.ODataException: {detail}",
    )


def _read_only(name: str) -> DataverseError:
    return DataverseError(
        400,
        "0x80040203",
        f"The column '{name}' of 'mailbox' is not valid for update (it is read-only).",
    )


def _parse_key(key: str) -> str:
    if not _GUID.match(key):
        raise DataverseError(400, "0x80060888", "Bad Request - Error in query syntax.")
    return key.lower()


def _check_options(request: Request, *, allowed: set[str]) -> None:
    for name in request.query:
        if name.startswith("$") and name not in allowed:
            raise DataverseError(
                400,
                "0x80060888",
                f"The query parameter '{name}' is not supported here by the Dataverse sandbox.",
            )


def _parse_select(table: _Table, text: str | None) -> list[str] | None:
    if text is None or not text.strip():
        return None
    names = [part.strip() for part in text.split(",")]
    for name in names:
        table.column(name)
    return list(dict.fromkeys(names))


def _page_size(text: str | None) -> int:
    if text is None:
        return MAX_PAGE_SIZE
    if not text.isdigit() or int(text) < 1:
        raise DataverseError(
            400, "0x80060888", f"Invalid value '{text}' for the odata.maxpagesize preference."
        )
    return min(int(text), MAX_PAGE_SIZE)


def _applied(prefer: dict[str, str], *, include_page_size: bool) -> dict[str, str]:
    applied: list[str] = []
    if include_page_size and "odata.maxpagesize" in prefer:
        applied.append(f"odata.maxpagesize={_page_size(prefer['odata.maxpagesize'])}")
    if "odata.include-annotations" in prefer:
        applied.append(f'odata.include-annotations="{prefer["odata.include-annotations"]}"')
    return {"Preference-Applied": ",".join(applied)} if applied else {}


def _encode_skiptoken(key: str, page: list[Row], next_page: int) -> str:
    first, last = page[0][key], page[-1][key]
    cookie = f'<cookie page="{next_page - 1}"><{key} last="{{{last}}}" first="{{{first}}}" />'
    cookie += "</cookie>"
    return (
        f'<cookie pagenumber="{next_page}" pagingcookie="{quote(cookie, safe="")}" '
        'istracking="False" />'
    )


def _decode_skiptoken(token: str, key: str) -> tuple[str, int]:
    page = re.search(r'pagenumber="(\d+)"', token)
    paging = re.search(r'pagingcookie="([^"]*)"', token)
    cookie = unquote(paging.group(1)) if paging is not None else ""
    last = re.search(rf'<{key} last="\{{([0-9a-fA-F-]{{36}})\}}"', cookie)
    if page is None or last is None:
        raise DataverseError(400, "0x80060888", "The $skiptoken value is not valid.")
    return last.group(1).lower(), int(page.group(1))


def _coerce(table: _Table, column: _Column, value: object) -> object:
    if column.kind == "choice":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _payload_error(
                f"Cannot convert the literal '{value}' to the expected type 'Edm.Int32' "
                f"(property '{column.name}')."
            )
        assert column.labels is not None
        if value not in column.labels:
            accepted = ",".join(str(v) for v in sorted(column.labels))
            raise DataverseError(
                400,
                "0x8004431a",
                f"A validation error occurred. The value {value} of '{column.name}' on record of "
                f"type '{table.logical_name}' is outside the valid range. Accepted Values: "
                f"{accepted}",
            )
        return value
    if column.kind == "string":
        if value is None:
            return None
        if not isinstance(value, str):
            raise _payload_error(
                f"Cannot convert the literal '{value}' to the expected type 'Edm.String' "
                f"(property '{column.name}')."
            )
        if column.max_length is not None and len(value) > column.max_length:
            raise DataverseError(
                400,
                "0x80044331",
                f"A validation error occurred. The length of the '{column.name}' attribute of "
                f"the '{table.logical_name}' entity exceeded the maximum allowed length of "
                f"'{column.max_length}'.",
            )
        return value
    if column.kind == "bool":
        if not isinstance(value, bool):
            raise _payload_error(
                f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean' "
                f"(property '{column.name}')."
            )
        return value
    raise _read_only(column.name)


# -- registration and privilege helpers -----------------------------------------------------------

_CRM_NAMESPACE = "Microsoft.Dynamics.CRM."
_DEPTHS = ("Basic", "Local", "Deep", "Global")  # PrivilegeDepth 0..3
_SEEDED_MESSAGES = ("Create", "Update", "Delete")
_SEEDED_FILTER_ENTITIES = ("mailbox", "systemuser", "queue")
# Entity set -> the entity's name in its privileges (prvRead<name>): reads need them too.
_GUARDED = {
    "serviceendpoints": "ServiceEndpoint",
    "sdkmessageprocessingsteps": "SdkMessageProcessingStep",
    "sdkmessageprocessingstepimages": "SdkMessageProcessingStepImage",
    "sdkmessages": "SdkMessage",
    "sdkmessagefilters": "SdkMessageFilter",
}
_CREATABLE = {
    name: _GUARDED[name]
    for name in ("serviceendpoints", "sdkmessageprocessingsteps", "sdkmessageprocessingstepimages")
}
_REGISTRATION_REQUIRED = {
    "serviceendpoints": ("name", "contract"),
    "sdkmessageprocessingsteps": (
        "name",
        "mode",
        "stage",
        "_sdkmessageid_value",
        "_eventhandler_value",
    ),
    "sdkmessageprocessingstepimages": (
        "name",
        "entityalias",
        "imagetype",
        "messagepropertyname",
        "_sdkmessageprocessingstepid_value",
    ),
}
# What the platform fills in when a create leaves a column out (Binary XML is the default format).
_REGISTRATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "serviceendpoints": {"connectionmode": 1, "messageformat": 1, "userclaim": 1},
    "sdkmessageprocessingsteps": {
        "rank": 1,
        "supporteddeployment": 0,
        "asyncautodelete": False,
        "statecode": 0,
        "statuscode": 1,
    },
}
_ACCESS_RIGHTS = {
    "Read": 1,
    "Write": 2,
    "Append": 4,
    "AppendTo": 16,
    "Create": 32,
    "Delete": 65536,
    "Share": 262144,
    "Assign": 524288,
}
_ALL_RIGHTS = tuple(_ACCESS_RIGHTS)
_BU_RIGHTS = ("Create", "Read", "Write", "Delete", "Append", "AppendTo")
_ORG_RIGHTS = ("Create", "Read", "Write", "Delete")
# (entity name in privilege names, access rights, owned below the organization: Basic..Deep too)
_PRIVILEGE_ENTITIES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("Mailbox", _ALL_RIGHTS, True),
    ("Queue", _ALL_RIGHTS, True),
    ("EmailServerProfile", _ALL_RIGHTS, True),
    ("User", ("Create", "Read", "Write", "Append", "AppendTo"), True),
    ("Role", _BU_RIGHTS, True),
    ("Team", _BU_RIGHTS, True),
    ("BusinessUnit", _BU_RIGHTS, True),
    ("Organization", ("Read", "Write"), False),
    ("ServiceEndpoint", _ORG_RIGHTS, False),
    ("SdkMessageProcessingStep", _ORG_RIGHTS, False),
    ("SdkMessageProcessingStepImage", _ORG_RIGHTS, False),
    ("SdkMessage", ("Read",), False),
    ("SdkMessageFilter", ("Read",), False),
)
# Miscellaneous privileges (organization-wide only).
_MISC_PRIVILEGES = ("prvApproveRejectEmailAddress",)


def _privilege_catalog() -> list[tuple[str, int, bool]]:
    """(name, access right, depth below Global possible) for every seeded privilege."""
    catalog = [
        (f"prv{right}{entity}", _ACCESS_RIGHTS[right], scoped)
        for entity, rights, scoped in _PRIVILEGE_ENTITIES
        for right in rights
    ]
    catalog.extend((name, 0, False) for name in _MISC_PRIVILEGES)
    return catalog


def _depth_value(depth: object) -> int:
    """A PrivilegeDepth as the Web API carries it (its name, or its number) -> 0..3."""
    if isinstance(depth, int) and not isinstance(depth, bool) and 0 <= depth < len(_DEPTHS):
        return depth
    if isinstance(depth, str):
        for index, name in enumerate(_DEPTHS):
            if depth.strip().lower() == name.lower() or depth.strip() == str(index):
                return index
    raise ValueError(f"{depth!r} is not a privilege depth (Basic, Local, Deep or Global)")


def _depth_names(depths: Mapping[str, int]) -> dict[str, str]:
    return {name: _DEPTHS[depth] for name, depth in sorted(depths.items())}


def _body_object(request: Request, table: _Table) -> dict[str, Any]:
    if request.body.strip() and request.json is None:
        raise _entity_payload_error(table, "The request body is not valid JSON.")
    body = request.json if request.body.strip() else {}
    if not isinstance(body, dict):
        raise _entity_payload_error(table, "The request body must be a JSON object.")
    return body


def _entity_payload_error(table: _Table, detail: str) -> DataverseError:
    return DataverseError(
        400,
        "0x80048d19",
        f"Error identified in Payload provided by the user for Entity :'{table.entity_set}', "
        f"InnerException : Microsoft.OData.ODataException: {detail}",
    )


def _check_attributes(entity: str, text: str, what: str) -> None:
    """Every name in a comma-separated column list is a column of the table (logical names)."""
    table = _TABLES.get(_LOGICAL_TO_SET.get(entity, ""))
    if table is None:
        return
    for name in text.split(","):
        name = name.strip()
        if name not in table.columns and f"_{name}_value" not in table.columns:
            raise DataverseError(
                400,
                "0x80040203",
                f"'{name}' in {what} is not a column of the '{entity}' table.",
            )
