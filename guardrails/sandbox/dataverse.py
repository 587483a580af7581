"""An in-memory Dataverse organization behind a real Web API v9.2 endpoint.

The guardrail's correctness rests on a few platform behaviours, so this simulator implements them
faithfully rather than approximately: row versions and weak ETags with ``If-Match`` (412 when a
concurrent change won), OData error bodies with Dataverse's hex codes, ``$select`` validation,
paging through opaque ``@odata.nextLink`` URLs, a ``$filter`` subset, choice-value validation,
the re-approval rule for a changed mailbox email address, and the calling user being the
application user mapped from the bearer token's client id (what ``WhoAmI`` reports and what is
recorded as ``modifiedby``). Every successful write is published as a :class:`WriteEvent`, from
which tests and the demo produce the messages Dataverse would send to Service Bus.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from guardrails.sandbox.http import Request, Response, SandboxServer, json_response
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
SYSTEM_ADMINISTRATOR = "System Administrator"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SEGMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.]*)(?:\((?P<key>[^)]*)\))?$")
_BIND = re.compile(r"(?:^|/)(?P<set>[A-Za-z_][A-Za-z0-9_]*)\((?P<key>[0-9a-fA-F-]{36})\)$")

Row = dict[str, Any]
WriteListener = Callable[["WriteEvent"], None]
BeforeWriteHook = Callable[["PendingWrite"], None]
TokenValidator = Callable[[str], str | None]


class DataverseError(Exception):
    """A Web API error: HTTP status plus the ``{"error":{"code","message"}}`` body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


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
_TABLES = {
    t.entity_set: t
    for t in (_MAILBOX, _USER, _QUEUE, _ROLE, _ORGANIZATION, _PROFILE, _BUSINESS_UNIT)
}
_LOGICAL_TO_SET = {t.logical_name: t.entity_set for t in _TABLES.values()}
_SET_TO_LOGICAL = {t.entity_set: t.logical_name for t in _TABLES.values()}
_SET_TO_LOGICAL["teams"] = "team"
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
    for part in (header or "").split(","):
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


# -- the simulator ------------------------------------------------------------------------------


class DataverseSimulator(SandboxServer):
    """Dataverse Web API v9.2 for one organization, with a thread-safe Python state API.

    ``token_validator`` maps a bearer token to the client id it was issued to, or None when the
    token is not valid (``IdentitySimulator.validator(dataverse.url)``). With None, any non-empty
    token is accepted and its text is taken as the client id. The client id must be mapped to an
    application user (:meth:`map_client_to_user`), as in Dataverse, where an app registration
    without an application user gets 403. ``approver_roles`` are the security role names whose
    holders may approve or reject a mailbox's email address (``prvApproveRejectEmailAddress``).
    """

    def __init__(
        self,
        tls: SandboxTLS | None = None,
        *,
        token_validator: TokenValidator | None = None,
        organization_name: str = "Sandbox",
        approver_roles: Sequence[str] = (SYSTEM_ADMINISTRATOR,),
        latency: float = 0.0,
    ) -> None:
        self.token_validator = token_validator
        self.approver_roles = frozenset(approver_roles)
        self._state = threading.RLock()
        self._version = 468000
        self._rows: dict[str, dict[str, Row]] = {name: {} for name in _TABLES}
        self._user_roles: dict[str, set[str]] = {}
        self._clients: dict[str, str] = {}
        self._writes: list[WriteEvent] = []
        self._listeners: list[WriteListener] = []
        self._hooks: list[BeforeWriteHook] = []
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
            self._user_roles[user_id.lower()].add(self.add_role(role_name))

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

    def add_queue(
        self,
        queueid: str | None = None,
        *,
        name: str,
        emailaddress: str | None = None,
        owner_user_id: str | None = None,
    ) -> str:
        with self._state:
            owner = owner_user_id or self._system_user_id
            self._require("systemusers", owner)
            return self._insert(
                _QUEUE,
                queueid,
                {
                    "name": name,
                    "emailaddress": emailaddress,
                    "_ownerid_value": owner.lower(),
                    _annotation("_ownerid_value"): "systemuser",
                    "_defaultmailbox_value": None,
                },
            )

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
                default_name = regarding["fullname"]
            else:
                assert queue_id is not None
                regarding = self._require("queues", queue_id)
                regarding_id, regarding_type = regarding["queueid"], "queue"
                owner_id = regarding["_ownerid_value"]
                default_name = regarding["name"]
            profile = (emailserverprofile or self.default_email_server_profile_id).lower()
            self._require("emailserverprofiles", profile)
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
                    _annotation("_ownerid_value"): "systemuser",
                },
            )
            regarding["_defaultmailbox_value"] = mailbox_id
            regarding[_annotation("_defaultmailbox_value")] = "mailbox"
            return mailbox_id

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
            headers = {"Content-Type": ODATA_JSON}
            if error.status == 401:
                headers["WWW-Authenticate"] = (
                    "Bearer authorization_uri=https://login.microsoftonline.com/common/oauth2/"
                    f"authorize, resource_id={self.url}/"
                )
            return json_response(
                error.status, _error_body(error.code, error.message), headers=headers
            )

    def _route(self, request: Request) -> Response:
        if not (request.path + "/").startswith(API_PREFIX):
            raise _not_found(request.path.lstrip("/").split("/", 1)[0])
        user_id = self._authenticate(request)
        rest = request.path[len(API_PREFIX) :]
        segments = [s for s in rest.split("/") if s]
        if not segments:
            raise _not_found("")
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
        if key is None:
            if len(segments) > 1:
                raise _not_found(segments[1])
            _require_method(request, "GET")
            with self._state:
                rows = [dict(r) for r in self._rows[table.entity_set].values()]
            return self._query(request, table, rows, f"{table.entity_set}")
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

    def _authenticate(self, request: Request) -> str:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise DataverseError(401, "", "Bearer token is missing from the Authorization header.")
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

    def _query(self, request: Request, table: _Table, rows: list[Row], context: str) -> Response:
        _check_options(request, allowed={"$select", "$filter", "$top", "$count", "$skiptoken"})
        select = _parse_select(table, request.query.get("$select"))
        prefer = _preferences(request.header("prefer"))
        annotations = _Annotations(prefer.get("odata.include-annotations"))
        page_size = _page_size(prefer.get("odata.maxpagesize"))
        filter_text = request.query.get("$filter")
        if filter_text:
            predicate = _FilterParser(filter_text, table).parse()
            rows = [r for r in rows if predicate(r)]
        rows.sort(key=lambda r: str(r[table.key]))
        total = len(rows)
        top_text = request.query.get("$top")
        if top_text is not None:
            if not top_text.isdigit():
                raise DataverseError(
                    400, "0x80060888", f"Invalid value '{top_text}' for the $top query option."
                )
            rows = rows[: int(top_text)]
        skiptoken = request.query.get("$skiptoken")
        page_number = 1
        if skiptoken is not None:
            last_key, page_number = _decode_skiptoken(skiptoken, table.key)
            rows = [r for r in rows if str(r[table.key]) > last_key]
        more = top_text is None and len(rows) > page_size
        page = rows[:page_size]
        with self._state:
            values = [self._serialize(table, r, select, annotations) for r in page]
        context_url = f"{self.api_url}/$metadata#{context}"
        if select:
            context_url += f"({','.join(select)})"
        payload: dict[str, Any] = {"@odata.context": context_url}
        if request.query.get("$count", "").lower() == "true":
            payload["@odata.count"] = total
        payload["value"] = values
        if more:
            payload["@odata.nextLink"] = self._next_link(
                request, _encode_skiptoken(table.key, page, page_number + 1)
            )
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
        for hook in hooks:
            hook(pending)
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
            return event

    def _publish(self, event: WriteEvent) -> None:
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
