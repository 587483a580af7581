"""Typed values of the Dataverse data contract, as serialized in a JSON RemoteExecutionContext.

Values stay plain where JSON already says enough (str, int, float, bool, None); the contract's
wrapped types become small frozen dataclasses so that comparisons between a Target and an image
are exact and a lookup never compares equal to a bare GUID string by accident.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias, TypeVar, overload


class ContractError(ValueError):
    """A value does not have the shape the data contract gives it; `path` says where."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class OptionSetValue:
    value: int


@dataclass(frozen=True, slots=True)
class OptionSetValues:
    """A multi-select choice; order carries no meaning, so equality ignores it."""

    values: frozenset[int]


@dataclass(frozen=True, slots=True)
class Money:
    value: Decimal


@dataclass(frozen=True, slots=True)
class EntityReference:
    logical_name: str
    id: str
    name: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Entity:
    logical_name: str
    id: str
    attributes: Mapping[str, Value]
    formatted_values: Mapping[str, str] = field(default_factory=dict, compare=False)
    row_version: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class EntityCollection:
    entity_name: str | None
    entities: tuple[Entity, ...]


@dataclass(frozen=True, slots=True)
class UnknownValue:
    """A wrapped value of a type this worker does not know; kept so nothing is lost."""

    type_name: str
    raw: Any = field(compare=False)


Value: TypeAlias = (
    str
    | int
    | float
    | bool
    | datetime
    | OptionSetValue
    | OptionSetValues
    | Money
    | EntityReference
    | Entity
    | EntityCollection
    | UnknownValue
    | tuple[Any, ...]
    | None
)

# "/Date(1506409448000-0700)/": epoch milliseconds (UTC); the offset only says where it was taken.
# Sixteen digits reach far past year 9999; more is not a date (and int() of thousands of digits
# is refused by Python), so such text stays a plain string.
_DATE = re.compile(r"^/Date\((-?\d{1,16})([+-]\d{4})?\)/\Z")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
# A row version is Dataverse's versionnumber: a decimal counter that becomes an If-Match header.
_ROW_VERSION = re.compile(r"^[0-9]{1,20}\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_date(text: str) -> datetime | None:
    """The instant a WCF JSON date names, or None when `text` is not one."""
    match = _DATE.match(text)
    if match is None:
        return None
    try:
        return _EPOCH + timedelta(milliseconds=int(match.group(1)))
    except OverflowError:
        return None


def is_guid(text: object) -> bool:
    return isinstance(text, str) and _GUID.match(text) is not None


def shown(value: object, limit: int = 60) -> str:
    """A value quoted for an error message, cut short: hostile input can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_guid(value: object, path: str, key: str = "") -> str:
    """An id that will go into a URL: a GUID, lower-cased, or a ContractError saying where.

    The id sits at `path`, or at `path`.`key`: the path is joined only for the error, since
    every message carries a dozen ids and nearly all of them are fine.
    """
    if isinstance(value, str) and _GUID.match(value) is not None:
        return value.lower()
    raise ContractError(f"{path}.{key}" if key else path, f"expected a GUID, found {shown(value)}")


def _require_str(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ContractError(f"{path}.{key}", f"expected a string, found {_kind(value)}")
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def decode_value(raw: Any, path: str = "value") -> Value:
    """Decode one attribute value; raises ContractError for a malformed wrapped value."""
    if isinstance(raw, dict):  # first: the wrapped values are most of what a decision reads
        return _decode_object(raw, path)
    if isinstance(raw, str):
        if raw.startswith("/Date("):
            return parse_date(raw) or raw
        return raw
    if raw is None or isinstance(raw, bool | int | float):
        return raw
    if isinstance(raw, list):
        return _decode_list(raw, path)
    raise ContractError(path, f"unexpected JSON value of type {_kind(raw)}")


def _decode_list(raw: list[Any], path: str) -> Value:
    items = [decode_value(item, f"{path}[{i}]") for i, item in enumerate(raw)]
    choices = [item for item in items if isinstance(item, OptionSetValue)]
    if items and len(choices) == len(items):
        return OptionSetValues(frozenset(choice.value for choice in choices))
    return tuple(items)


def _decode_object(raw: dict[str, Any], path: str) -> Value:
    type_name = raw.get("__type")
    if not isinstance(type_name, str):
        # Images and OwningExtension are serialized without __type.
        if "Attributes" in raw:
            return decode_entity(raw, path)
        if "LogicalName" in raw and "Id" in raw:
            return decode_reference(raw, path)
        return UnknownValue("object", raw)
    # "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts" -> "OptionSetValue"
    # "Guid:#System" -> "Guid"
    kind = type_name.partition(":")[0]
    if kind == "OptionSetValue":
        number = raw.get("Value")
        if not isinstance(number, int) or isinstance(number, bool):
            raise ContractError(f"{path}.Value", f"expected an integer, found {_kind(number)}")
        return OptionSetValue(number)
    if kind == "Money":
        return Money(_decimal(raw.get("Value"), f"{path}.Value"))
    if kind == "EntityReference":
        return decode_reference(raw, path)
    if kind == "Entity":
        return decode_entity(raw, path)
    if kind == "EntityCollection":
        entities = raw.get("Entities")
        if not isinstance(entities, list):
            raise ContractError(f"{path}.Entities", f"expected an array, found {_kind(entities)}")
        name = raw.get("EntityName")
        return EntityCollection(
            name if isinstance(name, str) else None,
            tuple(decode_entity(e, f"{path}.Entities[{i}]") for i, e in enumerate(entities)),
        )
    if "__value" in raw:  # "Guid:#System" / "DateTime:#System" wrappers seen in an old capture
        return decode_value(raw["__value"], f"{path}.__value")
    return UnknownValue(type_name, raw)


def _decimal(raw: object, path: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ContractError(path, f"expected a number, found {_kind(raw)}")
    try:
        number = Decimal(str(raw))
    except InvalidOperation as exc:
        raise ContractError(path, f"expected a number, found {raw!r}") from exc
    if not number.is_finite():
        raise ContractError(path, f"expected a finite number, found {raw!r}")
    return number


def decode_reference(raw: Any, path: str) -> EntityReference:
    if not isinstance(raw, dict):
        raise ContractError(path, f"expected an EntityReference object, found {_kind(raw)}")
    name = raw.get("Name")
    return EntityReference(
        _require_str(raw, "LogicalName", path),
        require_guid(_require_str(raw, "Id", path), path, "Id"),
        name if isinstance(name, str) else None,
    )


def decode_pairs(raw: Any, path: str) -> dict[str, Any]:
    """The contract's collections are arrays of {"key", "value"} objects, not JSON objects.

    Only the array's shape is checked here; the values stay as JSON gave them.
    """
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise ContractError(path, f"expected an array of key/value pairs, found {_kind(raw)}")
    pairs: dict[str, Any] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(key := item.get("key"), str):
            raise ContractError(f"{path}[{i}]", "expected an object with a string 'key'")
        pairs[key] = item.get("value")
    return pairs


T = TypeVar("T")
D = TypeVar("D")


class Pairs(Mapping[str, T]):
    """A contract collection whose values are decoded, and so validated, when first read.

    A message carries far more than a decision reads (every column of every image, both
    contexts' parameters): what is never read costs nothing and cannot refuse a message, while
    what is read passes the same decoder, with the same path in its ContractError, as always.
    The keys are known from the start (the array's shape was checked by `decode_pairs`).
    """

    __slots__ = ("_decode", "_decoded", "_path", "_raw")

    def __init__(self, raw: dict[str, Any], path: str, decode: Callable[[Any, str], T]) -> None:
        self._raw = raw
        self._path = path
        self._decode = decode
        self._decoded: dict[str, T] = {}

    def __getitem__(self, key: str) -> T:
        decoded = self._decoded
        if key in decoded:
            return decoded[key]
        value = decoded[key] = self._decode(self._raw[key], f"{self._path}[{key}]")
        return value

    @overload
    def get(self, key: str, /) -> T | None: ...

    @overload
    def get(self, key: str, default: T, /) -> T: ...

    @overload
    def get(self, key: str, default: D, /) -> T | D: ...

    def get(self, key: str, default: object = None, /) -> object:
        # Mapping.get would find a missing key through a KeyError, which costs far more.
        return self[key] if key in self._raw else default

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        # The raw values: a repr must not decode, so it can never raise.
        return f"{type(self).__name__}({self._raw!r})"


class Labels(Mapping[str, str]):
    """An entity's FormattedValues (the text Dataverse shows for its values): not even the
    array's shape is checked until someone reads them, since no decision does.

    `path` is the entity's: the labels' own path is joined only if they are read.
    """

    __slots__ = ("_labels", "_path", "_raw")

    def __init__(self, raw: Any, path: str) -> None:
        self._raw = raw
        self._path = path
        self._labels: dict[str, str] | None = None

    def _read(self) -> dict[str, str]:
        if self._labels is None:
            pairs = decode_pairs(self._raw, f"{self._path}.FormattedValues")
            self._labels = {key: text for key, text in pairs.items() if isinstance(text, str)}
        return self._labels

    def __getitem__(self, key: str) -> str:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._raw!r})"


def decode_entity(raw: Any, path: str) -> Entity:
    """An entity's id and row version are checked here; each attribute when it is read."""
    if not isinstance(raw, dict):
        raise ContractError(path, f"expected an Entity object, found {_kind(raw)}")
    attributes_path = f"{path}.Attributes"
    attributes = decode_pairs(raw.get("Attributes"), attributes_path)
    logical_name = raw.get("LogicalName")
    entity_id = raw.get("Id")
    return Entity(
        logical_name if isinstance(logical_name, str) else "",
        require_guid(entity_id, path, "Id") if entity_id not in (None, "") else "",
        Pairs(attributes, attributes_path, decode_value),
        Labels(raw.get("FormattedValues"), path),
        _row_version(raw.get("RowVersion"), path),
    )


def _row_version(raw: object, path: str) -> str | None:
    """The row version becomes an If-Match header: digits only, or the message is refused."""
    if raw is None:
        return None
    text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(text, str) or _ROW_VERSION.match(text) is None:
        problem = f"expected a decimal row version, found {shown(raw)}"
        raise ContractError(f"{path}.RowVersion", problem)
    return text


def to_json(value: Value) -> Any:
    """A JSON-friendly rendering for audit records and `--format json`."""
    if isinstance(value, OptionSetValue):
        return value.value
    if isinstance(value, OptionSetValues):
        return sorted(value.values)
    if isinstance(value, Money):
        return str(value.value)
    if isinstance(value, EntityReference):
        return {"logical_name": value.logical_name, "id": value.id}
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, Entity):
        return {"logical_name": value.logical_name, "id": value.id}
    if isinstance(value, EntityCollection):
        return [to_json(e) for e in value.entities]
    if isinstance(value, UnknownValue):
        return {"__type": value.type_name}
    if isinstance(value, tuple):
        return [to_json(v) for v in value]
    return value


def from_json(data: Any) -> Value:
    """`to_json` read back, for the governed columns' values a stored plan holds."""
    if isinstance(data, dict):
        if isinstance(data.get("logical_name"), str) and isinstance(data.get("id"), str):
            return EntityReference(data["logical_name"], data["id"])
        return UnknownValue(str(data.get("__type", "object")), data)
    if isinstance(data, list):
        return tuple(from_json(item) for item in data)
    if data is None or isinstance(data, str | int | float | bool):
        return data
    return UnknownValue(type(data).__name__, data)


def scrub(value: Any) -> Any:
    """Replace lone surrogates with U+FFFD in every string of a JSON-shaped value.

    JSON's \\uD800 escapes can carry them in from a message body or a service's answer, and
    no UTF-8 output (logs, tables, mail) can encode them.
    """
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    if isinstance(value, dict):
        return {scrub(key): scrub(item) for key, item in value.items()}
    return value
