"""Azure Table Storage at one edge: typed entities, typed errors, and an in-memory twin.

The ledger, outbox and the other durable state build on :class:`Table`. Two implementations
behave identically, down to the error raised and the limits enforced:

* :class:`AzureTable` over ``azure.data.tables`` (the Function App's storage account, or Azurite),
* :class:`MemoryTable`, thread-safe and in-process, for the demo and fast unit tests.

Concurrency follows the SDK's own tools. :meth:`Table.create` is the atomic "first writer wins"
claim (:class:`EntityExists` for everyone after the first). :meth:`Table.update` and
:meth:`Table.delete` with an etag are optimistic transitions (:class:`EntityChanged` when someone
else wrote first). :meth:`Table.upsert` never sends an etag, so the last writer wins: it is only for
data a last writer may own (a heartbeat, a run record), never for ledger state changes.
:meth:`Table.transact` is all-or-nothing within one partition, at most 100 operations.

Values are ``str``, ``int``, ``float``, ``bool``, timezone-aware ``datetime`` (returned in UTC),
``bytes``, or ``None``, which means *absent*: it is not stored, and a MERGE leaves the stored
property alone (a REPLACE drops it). An ``int`` is stored as Edm.Int32 when it fits and as
Edm.Int64 otherwise.

Filters (:meth:`Table.query`) are the OData subset below, checked the same way for both
implementations before anything is sent. Values never appear in the filter text, only as
``@name`` parameters::

    filter     := or
    or         := and ( "or" and )*
    and        := term ( "and" term )*
    term       := "(" or ")" | PROPERTY OPERATOR @parameter
    OPERATOR   := eq | ne | gt | ge | lt | le

``PROPERTY`` is ``PartitionKey``, ``RowKey`` or a property name; a parameter is a ``str``, an
``int`` (64-bit), a ``bool`` or an aware ``datetime``. Comparisons are typed as in Table Storage:
a property holding another type than the parameter (an Int64 property against an Int32-sized
parameter included), or no value at all, does not match, for ``ne`` too. An empty filter returns
every entity. Results come in key order (PartitionKey, then RowKey).

Errors from azure-core are mapped here and only here: :class:`EntityExists` (409 on create),
:class:`EntityChanged` (412, or the entity an etag named is gone), :class:`StoreUnavailable`
(connection errors, timeouts, 408/429/5xx with the service's Retry-After), :class:`StoreRejected`
(anything else: the request itself is wrong, or access is refused). Every message names the table
and the key. A token that cannot be had surfaces unchanged as
:class:`guardrails.errors.AuthenticationError`, as it does for Dataverse and Graph.

Azurite, which the tests run against, is looser than Table Storage in ways this module does not
rely on: it compares values of different types (``1 eq true`` matches) and answers a transaction
of more than 100 operations with a malformed response; both are checked here before sending.

Configuration (:func:`storage_settings`, :func:`table_store`) follows the Functions host's own
conventions for ``AzureWebJobsStorage``; ``GUARDRAILS_STORAGE`` overrides it in the same forms.

The SDK (azure-core and azure-data-tables) is imported, and the service client built, on the first
table access, not at start-up: the settings are checked then, the tables named, nothing more.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias
from urllib.parse import urlsplit

from guardrails.clients.auth import MsalTokenProvider, TokenProvider, TokenProviderCredential
from guardrails.clients.http import new_session, retry_after_seconds
from guardrails.errors import (
    ConfigurationError,
    PermanentServiceError,
    PreconditionFailed,
    ServiceError,
    TransientServiceError,
)
from guardrails.once import Once
from guardrails.policy.model import is_guid
from guardrails.settings import Credentials

if TYPE_CHECKING:
    from azure.core.exceptions import AzureError
    from azure.data.tables import TableClient, TableEntity, TableServiceClient
    from azure.data.tables import UpdateMode as SdkUpdateMode

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "MAX_TRANSACTION_OPERATIONS",
    "STORAGE_SCOPE",
    "AzureTable",
    "Create",
    "Delete",
    "Entity",
    "EntityChanged",
    "EntityExists",
    "FilterValue",
    "LazyService",
    "MemoryTable",
    "Operation",
    "StorageSettings",
    "StoreRejected",
    "StoreUnavailable",
    "Table",
    "TableStore",
    "TableStoreError",
    "TokenProviderCredential",
    "Update",
    "UpdateMode",
    "Upsert",
    "Value",
    "storage_settings",
    "table_prefix_problems",
    "table_store",
]

SERVICE: Final = "Table Storage"
STORAGE_SCOPE: Final = "https://storage.azure.com/.default"
DEFAULT_TABLE_PREFIX: Final = "guardrails"
MAX_TRANSACTION_OPERATIONS: Final = 100
MAX_PAGE_SIZE: Final = 1000
# Longest prefix that still leaves room for a table name of 13 characters (63 in all).
MAX_PREFIX_LENGTH: Final = 50

Value: TypeAlias = str | int | float | bool | datetime | bytes | None
FilterValue: TypeAlias = str | int | bool | datetime

_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_KEY_NAMES = frozenset({"PartitionKey", "RowKey"})
_RESERVED_NAMES = _KEY_NAMES | {"Timestamp"}
_PROPERTY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_FORBIDDEN_KEY_CHARACTERS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_MAX_KEY_LENGTH = 1024
_MAX_PROPERTIES = 252  # plus PartitionKey, RowKey and Timestamp
_MAX_STRING_BYTES = 64 * 1024  # UTF-16
_MAX_BINARY_BYTES = 64 * 1024
_MAX_ENTITY_BYTES = 1024 * 1024
_MAX_TRANSACTION_BYTES = 4 * 1024 * 1024
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class UpdateMode(StrEnum):
    """What a write does to the stored properties it does not name: MERGE keeps them, REPLACE
    drops them. The values are the SDK's own (it takes them as text), so the SDK need not be
    imported to name them."""

    REPLACE = "replace"
    MERGE = "merge"


# --------------------------------------------------------------------------------------------
# Errors


class TableStoreError(ServiceError):
    """Base of every error from this edge; `table`, `partition_key`, `row_key` and `index`
    (the failing operation of a transaction) say where."""

    def __init__(
        self,
        message: str,
        *,
        table: str,
        partition_key: str | None = None,
        row_key: str | None = None,
        index: int | None = None,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.table = table
        self.partition_key = partition_key
        self.row_key = row_key
        self.index = index
        where = f"table '{table}'"
        if index is not None:
            where += f", operation {index}"
        if partition_key is not None:
            where += f", entity ({partition_key!r}, {row_key!r})"
        super().__init__(
            SERVICE, f"{where}: {message}", status=status, code=code, retry_after=retry_after
        )
        if status is None and not self.retryable:
            # Refused here, before sending: there is no response to speak of.
            self.args = (f"{SERVICE}: {where}: {message}",)


class EntityExists(TableStoreError, PermanentServiceError):
    """409 on create: someone else claimed this key first. Repeating the create cannot help."""


class EntityChanged(TableStoreError, PreconditionFailed):
    """The entity changed (412) or is gone (404) since its etag was read: read, decide again."""


class StoreUnavailable(TableStoreError, TransientServiceError):
    """No answer, a timeout, throttling or a server error; `retry_after` is the service's wait."""


class StoreRejected(TableStoreError, PermanentServiceError):
    """The request is wrong (bad filter, too many operations, refused access): repeating fails."""


# --------------------------------------------------------------------------------------------
# Entities and operations


@dataclass(frozen=True, slots=True)
class Entity:
    """One row. `etag` is set on entities read from a table; None values mean "absent"."""

    partition_key: str
    row_key: str
    properties: Mapping[str, Value] = field(default_factory=dict)
    etag: str | None = None

    def __post_init__(self) -> None:
        _check_key("PartitionKey", self.partition_key)
        _check_key("RowKey", self.row_key)
        clean = {name: _normalize(name, value) for name, value in self.properties.items()}
        problem = _limit_problem(self.partition_key, self.row_key, clean)
        if problem:
            raise ValueError(problem[1])
        object.__setattr__(self, "properties", MappingProxyType(clean))


@dataclass(frozen=True, slots=True)
class Create:
    """Insert; fails the transaction with :class:`EntityExists` if the key is taken."""

    entity: Entity


@dataclass(frozen=True, slots=True)
class Update:
    """Write only if the entity still has `etag` (else :class:`EntityChanged`)."""

    entity: Entity
    etag: str
    mode: UpdateMode = UpdateMode.MERGE

    def __post_init__(self) -> None:
        _check_etag(self.etag)
        object.__setattr__(self, "mode", UpdateMode(self.mode))


@dataclass(frozen=True, slots=True)
class Upsert:
    """Insert or overwrite without a condition: last writer wins."""

    entity: Entity
    mode: UpdateMode = UpdateMode.MERGE

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", UpdateMode(self.mode))


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete (only if it still has `etag`, when given). Inside a transaction the entity must
    exist, as Table Storage requires; on its own, a missing entity is not an error."""

    partition_key: str
    row_key: str
    etag: str | None = None

    def __post_init__(self) -> None:
        _check_key("PartitionKey", self.partition_key)
        _check_key("RowKey", self.row_key)
        if self.etag is not None:
            _check_etag(self.etag)


Operation: TypeAlias = Create | Update | Upsert | Delete


class Table(Protocol):
    """One table. Implementations are thread-safe and raise only :class:`TableStoreError`s
    (and ``ValueError`` for arguments that can never be valid, such as an empty etag)."""

    @property
    def name(self) -> str: ...

    def create(self, entity: Entity) -> str:
        """Insert `entity` and return its etag; :class:`EntityExists` if the key is taken."""
        ...

    def get(self, partition_key: str, row_key: str) -> Entity | None: ...

    def update(self, entity: Entity, *, etag: str, mode: UpdateMode = UpdateMode.MERGE) -> str:
        """Write if the stored entity still has `etag`; return the new etag.

        :class:`EntityChanged` if it has another etag or no longer exists.
        """
        ...

    def upsert(self, entity: Entity, *, mode: UpdateMode = UpdateMode.MERGE) -> str:
        """Insert or overwrite unconditionally (last writer wins); return the new etag.

        Only for data any last writer may own; never for ledger state transitions.
        """
        ...

    def delete(self, partition_key: str, row_key: str, *, etag: str | None = None) -> None:
        """Delete (only if it still has `etag`, when given); a missing entity is not an error."""
        ...

    def query(
        self,
        filter: str,
        *,
        parameters: Mapping[str, FilterValue] | None = None,
        select: Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> Iterator[Entity]:
        """Entities matching `filter` (the subset in the module docstring), in key order.

        The filter is checked when called (:class:`StoreRejected`); pages are fetched while
        iterating. `select` limits the properties returned; `page_size` is at most 1000.
        """
        ...

    def transact(self, operations: Sequence[Operation]) -> list[str | None]:
        """Apply all operations or none: one partition, at most 100, each key once.

        Returns the new etag of each operation (None for a delete). A failing operation raises
        its typed error with `index` set; nothing is applied.
        """
        ...


# --------------------------------------------------------------------------------------------
# Validation shared by both implementations


def _check_key(name: str, key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"{name} must be a str, found {type(key).__name__}")
    if len(key) > _MAX_KEY_LENGTH:
        raise ValueError(f"{name} is {len(key)} characters; at most {_MAX_KEY_LENGTH}")
    bad = _FORBIDDEN_KEY_CHARACTERS.search(key)
    if bad:
        raise ValueError(
            f"{name} {key!r} contains {bad.group()!r}; keys cannot hold / \\ # ? or control "
            "characters"
        )


def _check_etag(etag: object) -> str:
    if not isinstance(etag, str) or not etag or etag == "*":
        raise ValueError(
            f"an etag read from the table is required, found {etag!r} "
            "(for an unconditional write use upsert)"
        )
    return etag


def _plain_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"datetime {value.isoformat()} has no timezone; Table Storage stores UTC instants"
        )
    utc = value.astimezone(UTC)
    return datetime(
        utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, UTC
    )


def _normalize(name: str, value: object) -> Value:
    if not isinstance(name, str) or not _PROPERTY_NAME.fullmatch(name):
        raise ValueError(
            f"property name {name!r} must be a letter or _ followed by letters, digits or _ "
            "(at most 255)"
        )
    if name in _RESERVED_NAMES:
        raise ValueError(f"{name} is a system property; it cannot be set as a property")
    result: Value
    if value is None:
        return None
    if isinstance(value, bool):
        result = bool(value)
    elif isinstance(value, int):
        result = int(value)  # IntEnum and friends: the number
    elif isinstance(value, float):
        result = float(value)
    elif isinstance(value, str):
        result = str.__str__(value)  # StrEnum and friends: the text itself
    elif isinstance(value, bytes):
        result = bytes(value)
    elif isinstance(value, datetime):
        result = _plain_utc(value)
    else:
        raise TypeError(
            f"property {name}: {type(value).__name__} cannot be stored "
            "(str, int, float, bool, datetime, bytes or None)"
        )
    if isinstance(result, int) and not isinstance(result, bool) and result not in _INT64:
        raise ValueError(f"property {name}: {result} does not fit in 64 bits")
    if isinstance(result, str) and len(result.encode("utf-16-le")) > _MAX_STRING_BYTES:
        raise ValueError(f"property {name}: a string holds at most 64 KiB (UTF-16)")
    if isinstance(result, bytes) and len(result) > _MAX_BINARY_BYTES:
        raise ValueError(f"property {name}: binary values hold at most 64 KiB")
    return result


def _value_size(value: Value) -> int:
    if isinstance(value, str):
        return 4 + len(value.encode("utf-16-le"))
    if isinstance(value, bytes):
        return 4 + len(value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return 4 if value in _INT32 else 8
    return 8  # double, datetime


def _entity_size(partition_key: str, row_key: str, properties: Mapping[str, Value]) -> int:
    """Table Storage's own estimate: 4 + 2·len(keys) + Σ(8 + 2·len(name) + size(value))."""
    size = 4 + 2 * (len(partition_key) + len(row_key))
    for name, value in properties.items():
        if value is not None:
            size += 8 + 2 * len(name) + _value_size(value)
    return size


def _limit_problem(
    partition_key: str, row_key: str, properties: Mapping[str, Value]
) -> tuple[str, str] | None:
    """Table Storage's error code and reason for refusing these properties, or None."""
    count = sum(value is not None for value in properties.values())
    if count > _MAX_PROPERTIES:
        reason = f"an entity holds at most {_MAX_PROPERTIES} properties, found {count}"
        return "TooManyProperties", reason
    size = _entity_size(partition_key, row_key, properties)
    if size > _MAX_ENTITY_BYTES:
        return "EntityTooLarge", f"the entity is {size} bytes; Table Storage allows 1 MiB"
    return None


def _edm(value: object) -> str:
    """The Edm type Table Storage holds for a value; comparisons of different types never match."""
    if isinstance(value, bool):
        return "Edm.Boolean"
    if isinstance(value, int):
        return "Edm.Int32" if value in _INT32 else "Edm.Int64"
    if isinstance(value, float):
        return "Edm.Double"
    if isinstance(value, str):
        return "Edm.String"
    if isinstance(value, datetime):
        return "Edm.DateTime"
    return "Edm.Binary"


def _check_page_size(table: str, page_size: int | None) -> None:
    if page_size is not None and (
        isinstance(page_size, bool)
        or not isinstance(page_size, int)
        or not 0 < page_size <= MAX_PAGE_SIZE
    ):
        raise StoreRejected(
            f"page_size must be 1 to {MAX_PAGE_SIZE}, found {page_size!r}", table=table
        )


def _check_select(table: str, select: Sequence[str] | None) -> list[str] | None:
    if select is None:
        return None
    if isinstance(select, str):
        raise StoreRejected("select is a list of property names, not one string", table=table)
    names = list(select)
    for name in names:
        if not isinstance(name, str) or not _PROPERTY_NAME.fullmatch(name):
            raise StoreRejected(f"select: {name!r} is not a property name", table=table)
    return names


def _check_transaction(table: str, operations: Sequence[Operation]) -> list[Operation]:
    ops = list(operations)
    if len(ops) > MAX_TRANSACTION_OPERATIONS:
        raise StoreRejected(
            f"a transaction holds at most {MAX_TRANSACTION_OPERATIONS} operations, "
            f"found {len(ops)}",
            table=table,
        )
    seen: set[tuple[str, str]] = set()
    partition: str | None = None
    size = 0
    for index, op in enumerate(ops):
        if not isinstance(op, Create | Update | Upsert | Delete):
            raise StoreRejected(
                f"{type(op).__name__} is not an operation (Create, Update, Upsert or Delete)",
                table=table,
                index=index,
            )
        key = _operation_key(op)
        if not isinstance(op, Delete):
            size += _entity_size(*key, op.entity.properties)
        if partition is None:
            partition = key[0]
        elif key[0] != partition:
            raise StoreRejected(
                f"a transaction covers one partition; {partition!r} and {key[0]!r} are mixed",
                table=table,
                partition_key=key[0],
                row_key=key[1],
                index=index,
            )
        if key in seen:
            raise StoreRejected(
                "an entity can appear only once in a transaction",
                table=table,
                partition_key=key[0],
                row_key=key[1],
                index=index,
            )
        seen.add(key)
    if size > _MAX_TRANSACTION_BYTES:
        raise StoreRejected(
            f"the transaction's entities come to {size} bytes; Table Storage accepts 4 MiB",
            table=table,
            partition_key=partition,
        )
    return ops


def _operation_key(op: Operation) -> tuple[str, str]:
    if isinstance(op, Delete):
        return op.partition_key, op.row_key
    return op.entity.partition_key, op.entity.row_key


# --------------------------------------------------------------------------------------------
# Filters: one parser checks the subset for both implementations


_OPERATORS: Final = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
_KEYWORDS: Final = _OPERATORS | {"and", "or", "not"}
_TOKEN = re.compile(
    r"\s*(?:(?P<paren>[()])|(?P<param>@[A-Za-z_][A-Za-z0-9_]*)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<other>\S+))"
)
_SUBSET = "supported: PROPERTY eq|ne|gt|ge|lt|le @parameter, combined with and/or and parentheses"


@dataclass(frozen=True, slots=True)
class _Compare:
    name: str
    operator: str
    value: FilterValue

    def matches(self, values: Mapping[str, Value]) -> bool:
        actual = values.get(self.name)
        if actual is None or _edm(actual) != _edm(self.value):
            return False
        left: Any = actual
        right: Any = self.value
        if self.operator == "eq":
            return bool(left == right)
        if self.operator == "ne":
            return bool(left != right)
        if self.operator == "gt":
            return bool(left > right)
        if self.operator == "ge":
            return bool(left >= right)
        if self.operator == "lt":
            return bool(left < right)
        return bool(left <= right)


@dataclass(frozen=True, slots=True)
class _Both:
    left: _Expression
    right: _Expression

    def matches(self, values: Mapping[str, Value]) -> bool:
        return self.left.matches(values) and self.right.matches(values)


@dataclass(frozen=True, slots=True)
class _Either:
    left: _Expression
    right: _Expression

    def matches(self, values: Mapping[str, Value]) -> bool:
        return self.left.matches(values) or self.right.matches(values)


_Expression: TypeAlias = _Compare | _Both | _Either


@dataclass(frozen=True, slots=True)
class _Filter:
    """A checked filter: the tree (for MemoryTable) and the text and parameters for the SDK."""

    expression: _Expression | None
    text: str
    sdk_parameters: dict[str, Any]


def _filter_value(table: str, name: str, value: object) -> FilterValue:
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)  # StrEnum and friends: the text itself
    if isinstance(value, int):
        if value not in _INT64:
            raise StoreRejected(f"parameter @{name}: {value} does not fit in 64 bits", table=table)
        return int(value)
    if isinstance(value, datetime):
        try:
            return _plain_utc(value)
        except ValueError as exc:
            raise StoreRejected(f"parameter @{name}: {exc}", table=table) from exc
    raise StoreRejected(
        f"parameter @{name}: {type(value).__name__} is not supported in filters "
        "(str, int, bool or an aware datetime)",
        table=table,
    )


def _compile_filter(table: str, text: str, parameters: Mapping[str, FilterValue] | None) -> _Filter:
    params = dict(parameters or {})
    values = {name: _filter_value(table, name, value) for name, value in params.items()}
    tokens: list[tuple[str, str]] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind is None:
            continue
        token = match.group(kind)
        if kind == "other":
            raise StoreRejected(
                f"filter {text!r}: {token!r} is not allowed; values go in parameters "
                f"(@name), never in the filter text ({_SUBSET})",
                table=table,
            )
        tokens.append((kind, token))
    if not tokens:
        if params:
            raise StoreRejected("an empty filter takes no parameters", table=table)
        return _Filter(None, "", {})

    position = 0
    used: set[str] = set()

    def fail(problem: str) -> StoreRejected:
        return StoreRejected(f"filter {text!r}: {problem} ({_SUBSET})", table=table)

    def peek() -> tuple[str, str] | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal position
        token = peek()
        if token is None:
            raise fail("it ends too early")
        position += 1
        return token

    def either() -> _Expression:
        left = both()
        while peek() == ("word", "or"):
            take()
            left = _Either(left, both())
        return left

    def both() -> _Expression:
        left = term()
        while peek() == ("word", "and"):
            take()
            left = _Both(left, term())
        return left

    def term() -> _Expression:
        kind, token = take()
        if (kind, token) == ("paren", "("):
            inner = either()
            if take() != ("paren", ")"):
                raise fail("a '(' is not closed")
            return inner
        if kind != "word" or token in _KEYWORDS:
            raise fail(f"expected a property name, found {token!r}")
        name = token
        if name == "Timestamp":
            raise fail("Timestamp is the service's clock; filter on a property of your own")
        kind, operator = take()
        if kind != "word" or operator not in _OPERATORS:
            raise fail(f"expected eq, ne, gt, ge, lt or le after {name}, found {operator!r}")
        kind, parameter = take()
        if kind != "param":
            raise fail(f"expected an @parameter after '{name} {operator}', found {parameter!r}")
        key = parameter[1:]
        if key not in values:
            raise StoreRejected(f"filter {text!r}: no value for {parameter}", table=table)
        value = values[key]
        if name in _KEY_NAMES and not isinstance(value, str):
            raise StoreRejected(
                f"filter {text!r}: {name} is a string; {parameter} is {type(value).__name__}",
                table=table,
            )
        used.add(key)
        return _Compare(name, operator, value)

    expression = either()
    if position != len(tokens):
        raise fail(f"unexpected {tokens[position][1]!r}")
    unused = sorted(set(values) - used)
    if unused:
        raise StoreRejected(
            f"filter {text!r}: parameters not used: {', '.join('@' + n for n in unused)}",
            table=table,
        )
    # The SDK substitutes @name only in space-separated words, and it renders 0 and 1 as false
    # and true (`value in [True, False]`) and 2**31..2**32-1 without the Int64 suffix; numbers
    # are therefore written here (digits cannot inject anything), everything else by the SDK.
    words: list[str] = []
    sdk_parameters: dict[str, Any] = {}
    for kind, token in tokens:
        if kind == "param":
            value = values[token[1:]]
            if isinstance(value, int) and not isinstance(value, bool):
                words.append(str(value) if value in _INT32 else f"{value}L")
                continue
            sdk_parameters[token[1:]] = value
        words.append(token)
    return _Filter(expression, " ".join(words), sdk_parameters)


# --------------------------------------------------------------------------------------------
# In memory


@dataclass(frozen=True, slots=True)
class _Stored:
    properties: Mapping[str, Value]
    etag: str


class MemoryTable:
    """The in-memory twin of :class:`AzureTable`: same results, same errors, same limits."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], _Stored] = {}
        self._writes = 0

    @property
    def name(self) -> str:
        return self._name

    def _etag(self) -> str:
        self._writes += 1
        return f'W/"memory-{self._writes}-{uuid.uuid4().hex[:8]}"'

    def create(self, entity: Entity) -> str:
        with self._lock:
            return _etag_of(self._apply(Create(entity), None))

    def get(self, partition_key: str, row_key: str) -> Entity | None:
        _check_key("PartitionKey", partition_key)
        _check_key("RowKey", row_key)
        with self._lock:
            stored = self._rows.get((partition_key, row_key))
        if stored is None:
            return None
        return Entity(partition_key, row_key, stored.properties, stored.etag)

    def update(self, entity: Entity, *, etag: str, mode: UpdateMode = UpdateMode.MERGE) -> str:
        operation = Update(entity, etag, mode)
        with self._lock:
            return _etag_of(self._apply(operation, None))

    def upsert(self, entity: Entity, *, mode: UpdateMode = UpdateMode.MERGE) -> str:
        with self._lock:
            return _etag_of(self._apply(Upsert(entity, mode), None))

    def delete(self, partition_key: str, row_key: str, *, etag: str | None = None) -> None:
        operation = Delete(partition_key, row_key, etag)
        with self._lock:
            if (partition_key, row_key) in self._rows:
                self._apply(operation, None)

    def query(
        self,
        filter: str,
        *,
        parameters: Mapping[str, FilterValue] | None = None,
        select: Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> Iterator[Entity]:
        compiled = _compile_filter(self._name, filter, parameters)
        names = _check_select(self._name, select)
        _check_page_size(self._name, page_size)
        with self._lock:
            rows = sorted(self._rows.items())
        found: list[Entity] = []
        for (partition_key, row_key), stored in rows:
            values = {**stored.properties, "PartitionKey": partition_key, "RowKey": row_key}
            if compiled.expression is None or compiled.expression.matches(values):
                properties = stored.properties
                if names is not None:
                    properties = {n: properties[n] for n in names if n in properties}
                found.append(Entity(partition_key, row_key, properties, stored.etag))
        return iter(found)

    def transact(self, operations: Sequence[Operation]) -> list[str | None]:
        ops = _check_transaction(self._name, operations)
        with self._lock:
            saved = dict(self._rows)
            results: list[str | None] = []
            try:
                for index, op in enumerate(ops):
                    results.append(self._apply(op, index))
            except BaseException:
                self._rows = saved
                raise
            return results

    def _apply(self, op: Operation, index: int | None) -> str | None:
        """One write, with the lock held; the errors are Table Storage's for the same request."""
        partition_key, row_key = _operation_key(op)
        key = (partition_key, row_key)
        current = self._rows.get(key)
        where: dict[str, Any] = {
            "table": self._name,
            "partition_key": partition_key,
            "row_key": row_key,
            "index": index,
        }
        if isinstance(op, Create):
            if current is not None:
                raise EntityExists(
                    "already exists", status=409, code="EntityAlreadyExists", **where
                )
            return self._store(key, _present(op.entity.properties), where)
        if isinstance(op, Update):
            if current is None:
                raise EntityChanged(
                    "no longer exists (deleted since it was read)",
                    status=404,
                    code="ResourceNotFound",
                    **where,
                )
            if current.etag != op.etag:
                raise EntityChanged(
                    "changed since it was read (the etag does not match)",
                    status=412,
                    code="UpdateConditionNotSatisfied",
                    **where,
                )
            return self._store(key, _written(current, op.entity, op.mode), where)
        if isinstance(op, Upsert):
            return self._store(key, _written(current, op.entity, op.mode), where)
        if current is None:
            raise EntityChanged("does not exist", status=404, code="ResourceNotFound", **where)
        if op.etag is not None and current.etag != op.etag:
            raise EntityChanged(
                "changed since it was read (the etag does not match)",
                status=412,
                code="UpdateConditionNotSatisfied",
                **where,
            )
        del self._rows[key]
        return None

    def _store(
        self, key: tuple[str, str], properties: Mapping[str, Value], where: dict[str, Any]
    ) -> str:
        problem = _limit_problem(*key, properties)  # a MERGE can grow an entity past them
        if problem:
            code, reason = problem
            raise StoreRejected(reason, status=400, code=code, **where)
        etag = self._etag()
        self._rows[key] = _Stored(MappingProxyType(dict(properties)), etag)
        return etag


def _etag_of(result: str | None) -> str:
    assert result is not None, "a write that is not a delete returns an etag"
    return result


def _present(properties: Mapping[str, Value]) -> dict[str, Value]:
    return {name: value for name, value in properties.items() if value is not None}


def _written(current: _Stored | None, entity: Entity, mode: UpdateMode) -> dict[str, Value]:
    if current is None or mode == UpdateMode.REPLACE:
        return _present(entity.properties)
    return {**current.properties, **_present(entity.properties)}


# --------------------------------------------------------------------------------------------
# Azure


def _to_sdk(entity: Entity) -> dict[str, Any]:
    from azure.data.tables import EdmType

    body: dict[str, Any] = {"PartitionKey": entity.partition_key, "RowKey": entity.row_key}
    for name, value in entity.properties.items():
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value not in _INT32:
            body[name] = (value, EdmType.INT64)
        else:
            body[name] = value
    return body


def _sdk_mode(mode: UpdateMode) -> SdkUpdateMode:
    from azure.data.tables import UpdateMode as SdkUpdateMode

    return SdkUpdateMode(UpdateMode(mode).value)


def _from_sdk(entity: TableEntity) -> Entity:
    from azure.data.tables import EntityProperty

    properties: dict[str, Value] = {}
    for name, raw in entity.items():
        if name in _KEY_NAMES:
            continue
        value: Any = raw.value if isinstance(raw, EntityProperty) else raw
        if value is None:
            continue
        if isinstance(value, uuid.UUID):
            value = str(value)
        properties[name] = value
    return Entity(
        str(entity["PartitionKey"]),
        str(entity["RowKey"]),
        properties,
        entity.metadata.get("etag"),
    )


def _summary(text: str | None) -> str:
    """The first line of the service's message, without a transaction's "2:" index prefix."""
    lines = (text or "").strip().splitlines()
    return re.sub(r"^\d+:", "", lines[0]).strip() if lines else "no details"


def _transaction_index(error: AzureError) -> int | None:
    """Table Storage prefixes the failing part's message with its index ("2:The ...");
    None for any other error."""
    from azure.data.tables import TableTransactionError

    if not isinstance(error, TableTransactionError):
        return None
    match = re.match(r"\s*(\d+):", error.message or "")
    return int(match.group(1)) if match else None


def _translate(
    error: AzureError,
    *,
    table: str,
    partition_key: str | None = None,
    row_key: str | None = None,
    index: int | None = None,
    missing: str | None = None,
) -> TableStoreError:
    """azure-core's error as ours. `missing` says what a 404 means for the entity this request
    names; None when a 404 can only mean that the table itself is gone (insert, query)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceModifiedError,
        ServiceRequestError,
        ServiceResponseError,
    )

    where: dict[str, Any] = {
        "table": table,
        "partition_key": partition_key,
        "row_key": row_key,
        "index": index,
    }
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        return StoreUnavailable(f"no answer ({type(error).__name__}: {error})", **where)
    if not isinstance(error, HttpResponseError):
        return StoreRejected(f"{type(error).__name__}: {_summary(str(error))}", **where)
    status = error.status_code
    raw_code = getattr(error, "error_code", None)
    code = str(getattr(raw_code, "value", raw_code)) if raw_code else None
    text = _summary(error.message)
    if code == "TableNotFound" or (status == 404 and missing is None):
        return StoreUnavailable(
            f"the table does not exist ({text}); the next call creates it again",
            status=status,
            code="TableNotFound",
            **where,
        )
    if status == 404:
        return EntityChanged(
            missing or text, status=status, code=code or "ResourceNotFound", **where
        )
    if isinstance(error, ResourceExistsError) or (status == 409 and code == "EntityAlreadyExists"):
        return EntityExists(
            "already exists", status=status, code=code or "EntityAlreadyExists", **where
        )
    if isinstance(error, ResourceModifiedError) or status == 412:
        return EntityChanged(
            "changed since it was read (the etag does not match)",
            status=status,
            code=code or "UpdateConditionNotSatisfied",
            **where,
        )
    if status is not None and (status in _TRANSIENT_STATUS or status >= 500):
        headers: Mapping[str, str] = getattr(error.response, "headers", None) or {}
        return StoreUnavailable(
            text,
            status=status,
            code=code,
            retry_after=retry_after_seconds(headers.get("Retry-After")),
            **where,
        )
    if isinstance(error, ClientAuthenticationError) or status in (401, 403):
        text += (
            "; check the account key, or the identity's role on the account "
            "(Storage Table Data Contributor)"
        )
    return StoreRejected(text, status=status, code=code, **where)


class AzureTable:
    """A table in Table Storage (or Azurite), created on first use, once per object.

    Build it through :class:`TableStore` (one object per table per process); the SDK clients it
    uses are thread-safe, and so is the one-time creation. If the table is deleted behind its
    back, the failing call raises :class:`StoreUnavailable` and the next one creates it again.
    `service` is the SDK's client, or what builds it on first use (:class:`LazyService`).
    """

    def __init__(self, service: TableServiceClient | LazyService, name: str) -> None:
        self._service = service
        self._name = name
        self._lock = threading.Lock()
        self._client: TableClient | None = None

    @property
    def name(self) -> str:
        return self._name

    def _table(self, partition_key: str | None = None, row_key: str | None = None) -> TableClient:
        """The table's client, creating the table first if this object has not yet; an error
        names the entity of the call that needed it."""
        client = self._client
        if client is not None:
            return client
        from azure.core.exceptions import AzureError

        with self._lock:
            if self._client is None:
                service = self._service
                if isinstance(service, LazyService):
                    service = service.client()
                try:
                    self._client = service.create_table_if_not_exists(self._name)
                except AzureError as exc:
                    raise _translate(
                        exc, table=self._name, partition_key=partition_key, row_key=row_key
                    ) from exc
            return self._client

    def _fail(self, exc: AzureError, **where: Any) -> TableStoreError:
        error = _translate(exc, table=self._name, **where)
        if error.code == "TableNotFound":
            with self._lock:
                self._client = None
        return error

    def create(self, entity: Entity) -> str:
        from azure.core.exceptions import AzureError

        client = self._table(entity.partition_key, entity.row_key)
        try:
            result = client.create_entity(_to_sdk(entity))
        except AzureError as exc:
            # An insert cannot miss an entity: a 404 here is the table itself (missing=None).
            raise self._fail(
                exc, partition_key=entity.partition_key, row_key=entity.row_key
            ) from exc
        return str(result["etag"])

    def get(self, partition_key: str, row_key: str) -> Entity | None:
        _check_key("PartitionKey", partition_key)
        _check_key("RowKey", row_key)
        from azure.core.exceptions import AzureError

        client = self._table(partition_key, row_key)
        try:
            found = client.get_entity(partition_key, row_key)
        except AzureError as exc:
            error = self._fail(
                exc, partition_key=partition_key, row_key=row_key, missing="does not exist"
            )
            if error.status == 404 and error.code != "TableNotFound":
                return None
            raise error from exc
        return _from_sdk(found)

    def update(self, entity: Entity, *, etag: str, mode: UpdateMode = UpdateMode.MERGE) -> str:
        _check_etag(etag)
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError

        client = self._table(entity.partition_key, entity.row_key)
        try:
            result = client.update_entity(
                _to_sdk(entity),
                mode=_sdk_mode(mode),
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except AzureError as exc:
            raise self._fail(
                exc,
                partition_key=entity.partition_key,
                row_key=entity.row_key,
                missing="no longer exists (deleted since it was read)",
            ) from exc
        return str(result["etag"])

    def upsert(self, entity: Entity, *, mode: UpdateMode = UpdateMode.MERGE) -> str:
        from azure.core.exceptions import AzureError

        client = self._table(entity.partition_key, entity.row_key)
        try:
            result = client.upsert_entity(_to_sdk(entity), mode=_sdk_mode(mode))
        except AzureError as exc:
            raise self._fail(
                exc, partition_key=entity.partition_key, row_key=entity.row_key
            ) from exc
        return str(result["etag"])

    def delete(self, partition_key: str, row_key: str, *, etag: str | None = None) -> None:
        _check_key("PartitionKey", partition_key)
        _check_key("RowKey", row_key)
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError

        condition: dict[str, Any] = {}
        if etag is not None:
            condition = {
                "etag": _check_etag(etag),
                "match_condition": MatchConditions.IfNotModified,
            }
        client = self._table(partition_key, row_key)
        try:
            # The SDK itself treats 404 (no such entity) as done.
            client.delete_entity(partition_key, row_key, **condition)
        except AzureError as exc:
            raise self._fail(
                exc, partition_key=partition_key, row_key=row_key, missing="does not exist"
            ) from exc

    def query(
        self,
        filter: str,
        *,
        parameters: Mapping[str, FilterValue] | None = None,
        select: Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> Iterator[Entity]:
        compiled = _compile_filter(self._name, filter, parameters)
        names = _check_select(self._name, select)
        _check_page_size(self._name, page_size)
        if names is not None:
            # Without the keys in $select the service leaves them out of the answer.
            names = ["PartitionKey", "RowKey", *(n for n in names if n not in _KEY_NAMES)]
        return self._results(compiled, names, page_size)

    def _results(
        self, compiled: _Filter, select: list[str] | None, page_size: int | None
    ) -> Iterator[Entity]:
        from azure.core.exceptions import AzureError

        client = self._table()
        try:
            if compiled.expression is None:
                found = client.list_entities(select=select, results_per_page=page_size)
            else:
                found = client.query_entities(
                    compiled.text,
                    parameters=compiled.sdk_parameters or None,
                    select=select,
                    results_per_page=page_size,
                )
            for entity in found:
                yield _from_sdk(entity)
        except AzureError as exc:
            raise self._fail(exc) from exc

    def transact(self, operations: Sequence[Operation]) -> list[str | None]:
        ops = _check_transaction(self._name, operations)
        if not ops:
            return []
        from azure.core.exceptions import AzureError

        client = self._table(_operation_key(ops[0])[0])
        try:
            parts = client.submit_transaction([_sdk_operation(op) for op in ops])
        except AzureError as exc:
            index = _transaction_index(exc)
            if index is not None and 0 <= index < len(ops):
                partition_key, row_key = _operation_key(ops[index])
                raise self._fail(
                    exc,
                    partition_key=partition_key,
                    row_key=row_key,
                    index=index,
                    missing="does not exist"
                    if isinstance(ops[index], Delete)
                    else ("no longer exists (deleted since it was read)"),
                ) from exc
            raise self._fail(exc, partition_key=_operation_key(ops[0])[0]) from exc
        return [
            None if isinstance(op, Delete) else str(part["etag"])
            for op, part in zip(ops, parts, strict=True)
        ]


def _sdk_operation(op: Operation) -> tuple[Any, ...]:
    from azure.core import MatchConditions

    if isinstance(op, Create):
        return ("create", _to_sdk(op.entity))
    if isinstance(op, Update):
        condition = {
            "mode": _sdk_mode(op.mode),
            "etag": op.etag,
            "match_condition": MatchConditions.IfNotModified,
        }
        return ("update", _to_sdk(op.entity), condition)
    if isinstance(op, Upsert):
        return ("upsert", _to_sdk(op.entity), {"mode": _sdk_mode(op.mode)})
    keys = {"PartitionKey": op.partition_key, "RowKey": op.row_key}
    if op.etag is None:
        return ("delete", keys)
    return ("delete", keys, {"etag": op.etag, "match_condition": MatchConditions.IfNotModified})


# --------------------------------------------------------------------------------------------
# Tables under a prefix


def table_prefix_problems(prefix: str) -> list[str]:
    """What is wrong with a table-name prefix (empty when nothing is)."""
    problems: list[str] = []
    if not prefix:
        return ["is empty; table names need a prefix that starts with a letter"]
    if not prefix[0].isascii() or not prefix[0].isalpha():
        problems.append(f"'{prefix}' must start with a letter (Azure table names do)")
    bad = sorted({c for c in prefix if not (c.isascii() and c.isalnum())})
    if bad:
        problems.append(
            f"'{prefix}' may hold only letters and digits; remove {' '.join(repr(c) for c in bad)}"
        )
    if len(prefix) > MAX_PREFIX_LENGTH:
        problems.append(
            f"'{prefix}' is {len(prefix)} characters; at most {MAX_PREFIX_LENGTH} leave room for "
            "the table names (63 characters in all)"
        )
    return problems


class LazyService:
    """The SDK's ``TableServiceClient``, built by `build` when a table is first used.

    Start-up then neither imports the SDK nor builds its client. Built exactly once, however
    many invocations of the worker reach their first table access together.
    """

    def __init__(self, build: Callable[[], TableServiceClient]) -> None:
        self._build = build
        self._client: Once[TableServiceClient] = Once()

    def client(self) -> TableServiceClient:
        return self._client.get(self._build)

    def close(self) -> None:
        """Close the client's connections, if it was built."""
        client = self._client.known
        if client is not None:
            client.close()


class TableStore:
    """All tables of the app, named ``<prefix><name>``; one shared :class:`Table` per name.

    Thread-safe; the set of tables grows as they are asked for, nothing else changes.
    """

    def __init__(
        self,
        open_table: Callable[[str], Table],
        *,
        prefix: str = DEFAULT_TABLE_PREFIX,
        endpoint: str | Callable[[], str] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        problems = table_prefix_problems(prefix)
        if problems:
            raise ValueError("table prefix " + "; ".join(problems))
        self._open = open_table
        self._prefix = prefix
        self._endpoint = endpoint
        self._close = close
        self._lock = threading.Lock()
        self._tables: dict[str, Table] = {}

    @classmethod
    def in_memory(cls, *, prefix: str = DEFAULT_TABLE_PREFIX) -> TableStore:
        return cls(MemoryTable, prefix=prefix)

    @classmethod
    def azure(
        cls, service: TableServiceClient | LazyService, *, prefix: str = DEFAULT_TABLE_PREFIX
    ) -> TableStore:
        """Tables in Table Storage through the SDK's `service`, or through the one a
        :class:`LazyService` builds when a table is first used."""
        if isinstance(service, LazyService):
            lazy = service
        else:
            built = service
            lazy = LazyService(lambda: built)
            lazy.client()  # given built, so close() closes it, whether a table was used or not
        return cls(
            lambda name: AzureTable(lazy, name),
            prefix=prefix,
            endpoint=lambda: lazy.client().url,
            close=lazy.close,
        )

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def endpoint(self) -> str | None:
        """The table service's URL (for logs); None in memory. Asking builds the SDK's client
        if no table was used yet (nothing is sent)."""
        return self._endpoint() if callable(self._endpoint) else self._endpoint

    def table(self, name: str) -> Table:
        """The table ``prefix + name``; `name` is letters and digits, e.g. ``"Ledger"``."""
        full = self._prefix + name
        if not name or not name.isascii() or not name.isalnum():
            raise ValueError(f"table name {name!r} must be letters and digits")
        if not _TABLE_NAME.fullmatch(full) or full.lower() == "tables":
            raise ValueError(
                f"table name '{full}' must be 3 to 63 letters and digits, starting with a letter"
            )
        with self._lock:
            table = self._tables.get(full)
            if table is None:
                table = self._tables[full] = self._open(full)
            return table

    def close(self) -> None:
        """Close the connections (Azure); the store is not used afterwards."""
        if self._close is not None:
            self._close()


# --------------------------------------------------------------------------------------------
# Settings and construction


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where the tables live. Exactly one of `connection_string` and `table_endpoint` is set."""

    source: str  # the setting it came from: AzureWebJobsStorage or GUARDRAILS_STORAGE
    table_prefix: str = DEFAULT_TABLE_PREFIX
    connection_string: str | None = field(default=None, repr=False)  # holds the account key
    table_endpoint: str | None = None  # identity-based: https://<account>.table.core.windows.net
    client_id: str | None = None  # a user-assigned managed identity

    @property
    def identity_based(self) -> bool:
        return self.connection_string is None


_STORAGE_SOURCES: Final = ("GUARDRAILS_STORAGE", "AzureWebJobsStorage")
_IDENTITY_SUFFIXES: Final = ("accountName", "tableServiceUri", "credential", "clientId")
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")


def storage_settings(environ: Mapping[str, str] | None = None) -> StorageSettings:
    """Read the storage settings, reporting every problem at once (:class:`ConfigurationError`).

    The Functions host's forms: ``AzureWebJobsStorage`` (a connection string, or
    ``UseDevelopmentStorage=true`` for Azurite on its default port 10002), or identity-based
    ``AzureWebJobsStorage__accountName`` / ``__tableServiceUri`` with
    ``__credential=managedidentity`` and ``__clientId`` for a user-assigned identity.
    ``GUARDRAILS_STORAGE`` (and ``GUARDRAILS_STORAGE__...``) in the same forms replaces it
    entirely. Tables are named under ``GUARDRAILS_TABLE_PREFIX`` (default ``guardrails``).
    Names are matched without regard to case, as the Functions host does.
    """
    env = os.environ if environ is None else environ
    lowered = {name.lower(): value.strip() for name, value in env.items() if value.strip()}
    problems: list[str] = []

    def get(name: str) -> str | None:
        return lowered.get(name.lower())

    prefix = get("GUARDRAILS_TABLE_PREFIX") or DEFAULT_TABLE_PREFIX
    problems.extend(f"GUARDRAILS_TABLE_PREFIX {p}" for p in table_prefix_problems(prefix))

    def configured(source: str) -> bool:
        return bool(get(source)) or any(get(f"{source}__{s}") for s in _IDENTITY_SUFFIXES)

    source = next((s for s in _STORAGE_SOURCES if configured(s)), None)
    if source is None:
        problems.append(
            "the Table Storage connection is not set: AzureWebJobsStorage (a connection string) "
            "or AzureWebJobsStorage__accountName / AzureWebJobsStorage__tableServiceUri "
            "(identity-based), or GUARDRAILS_STORAGE in the same forms to use another account"
        )
        raise ConfigurationError(problems)

    connection_string = get(source)
    account = get(f"{source}__accountName")
    service_uri = get(f"{source}__tableServiceUri")
    credential = get(f"{source}__credential")
    client_id = get(f"{source}__clientId")
    endpoint: str | None = None
    if connection_string and (account or service_uri):
        problems.append(
            f"both {source} (a connection string) and {source}__accountName/__tableServiceUri "
            "(identity-based) are set; keep one"
        )
    elif connection_string:
        problems.extend(_connection_string_problems(source, connection_string))
        if credential or client_id:
            problems.append(
                f"{source}__credential/__clientId apply to an identity-based connection, not to "
                f"the connection string in {source}"
            )
    else:
        if service_uri:
            endpoint = service_uri.rstrip("/")
            parts = urlsplit(endpoint)
            if parts.scheme != "https" or not parts.hostname or parts.query:
                problems.append(
                    f"{source}__tableServiceUri must be an https URL such as "
                    f"https://contoso.table.core.windows.net, found '{service_uri}'"
                )
        elif account:
            if _ACCOUNT_NAME.fullmatch(account):
                endpoint = f"https://{account}.table.core.windows.net"
            else:
                problems.append(
                    f"{source}__accountName must be a storage account name (3 to 24 lowercase "
                    f"letters and digits), found '{account}'"
                )
        else:
            problems.append(
                f"{source}__accountName or {source}__tableServiceUri is needed for an "
                f"identity-based connection (only __credential/__clientId are set)"
            )
        if credential and credential.lower() != "managedidentity":
            problems.append(
                f"{source}__credential must be 'managedidentity' (or unset), found '{credential}'"
            )
        if client_id:
            if not is_guid(client_id):
                problems.append(
                    f"{source}__clientId must be the client id (a GUID) of a user-assigned "
                    f"managed identity, found '{client_id}'"
                )
            if not credential or credential.lower() != "managedidentity":
                problems.append(
                    f"{source}__clientId is only used with {source}__credential=managedidentity"
                )
    if problems:
        raise ConfigurationError(problems)
    return StorageSettings(
        source=source,
        table_prefix=prefix,
        connection_string=connection_string,
        table_endpoint=None if connection_string else endpoint,
        client_id=client_id,
    )


def _connection_string_problems(source: str, value: str) -> list[str]:
    """What keeps the SDK from using a connection string; never repeats its secret parts."""
    if value.lower() == "usedevelopmentstorage=true":  # exactly as the SDK recognises it
        return []
    try:
        parts = _connection_string_parts(value)
    except ValueError:
        return [
            f"{source} is not a connection string (Key=Value pairs separated by ';', such as "
            "DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...)"
        ]
    problems: list[str] = []
    has_key = "accountname" in parts and "accountkey" in parts
    if not has_key and "sharedaccesssignature" not in parts:
        problems.append(f"{source} needs AccountName and AccountKey, or SharedAccessSignature")
    if "accountkey" in parts:
        try:
            base64.b64decode(parts["accountkey"], validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"{source}: AccountKey is not base64 (copy it again from the account)")
    endpoint = parts.get("tableendpoint")
    if endpoint:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            problems.append(f"{source}: TableEndpoint must be an http(s) URL, found '{endpoint}'")
    elif "accountname" not in parts:
        problems.append(f"{source} needs TableEndpoint or AccountName to know the table endpoint")
    elif "tablesecondaryendpoint" in parts:
        problems.append(f"{source}: TableSecondaryEndpoint needs TableEndpoint beside it")
    return problems


def _connection_string_parts(value: str) -> dict[str, str]:
    """A connection string's parts, keys in lower case; ``ValueError`` if it is malformed.

    The rules of azure-core's ``parse_connection_string``, which the SDK reads it with: non-empty
    ``Key=Value`` pairs separated by ``;`` (trailing ones ignored), each key once whatever its
    case. Restated here so that checking the setting at start-up does not import azure-core
    (tests/live/test_tables.py holds the two to the same answers).
    """
    pairs = [part.split("=", 1) for part in value.strip().rstrip(";").split(";")]
    parts: dict[str, str] = {}
    for pair in pairs:
        if len(pair) != 2 or not all(pair) or pair[0].lower() in parts:
            raise ValueError("a connection string is non-empty Key=Value pairs, each key once")
        parts[pair[0].lower()] = pair[1]
    return parts


def table_store(
    settings: StorageSettings,
    *,
    token_provider: TokenProvider | None = None,
    connection_timeout: float = 3.0,
    read_timeout: float = 5.0,
    retry_total: int = 2,
    retry_backoff_factor: float = 0.4,
    retry_backoff_max: int = 4,
    operation_timeout: float = 20.0,
    connection_verify: bool | str = True,
) -> TableStore:
    """The app's :class:`TableStore` over Table Storage. Nothing is sent until a table is used,
    and the SDK's client is built (the SDK imported) only then.

    Identity-based settings use `token_provider` when given (the app's own, or a test's), else
    a managed identity through MSAL (`settings.client_id` picks a user-assigned one).

    The SDK retries (azure-core: idempotent requests only, honouring the service's Retry-After)
    at most `retry_total` times, each attempt bounded by `connection_timeout` and `read_timeout`
    seconds, the whole operation by `operation_timeout`; anything longer is the caller's to
    schedule (:class:`StoreUnavailable`). `connection_verify` takes a CA bundle path, e.g. for
    Azurite over HTTPS.
    """
    options: dict[str, Any] = {
        "connection_timeout": connection_timeout,
        "read_timeout": read_timeout,
        "retry_total": retry_total,
        "retry_connect": retry_total,
        "retry_read": retry_total,
        "retry_status": retry_total,
        "retry_backoff_factor": retry_backoff_factor,
        "retry_backoff_max": retry_backoff_max,
        "timeout": operation_timeout,
        "connection_verify": connection_verify,
    }

    def build() -> TableServiceClient:
        from azure.data.tables import TableServiceClient

        if settings.connection_string is not None:
            return TableServiceClient.from_connection_string(settings.connection_string, **options)
        assert settings.table_endpoint is not None
        tokens = token_provider or MsalTokenProvider(
            Credentials(tenant_id=None, client_id=settings.client_id),
            session=new_session(connection_timeout + read_timeout),
            timeout=connection_timeout + read_timeout,
        )
        return TableServiceClient(
            settings.table_endpoint, credential=TokenProviderCredential(tokens), **options
        )

    return TableStore.azure(LazyService(build), prefix=settings.table_prefix)
