"""Service Bus message body -> ExecutionContext, or a Rejection that says what to change.

The body is the JSON serialization of a Dataverse RemoteExecutionContext (service endpoint
`messageformat` = 2). Anything else is a configuration problem an admin can fix, so every failure
becomes a Rejection with a reason, never an exception: whatever the bytes, `parse_message` returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from guardrails.values import (
    ContractError,
    Entity,
    EntityReference,
    Pairs,
    Value,
    decode_entity,
    decode_pairs,
    decode_value,
    parse_date,
    require_guid,
    scrub,
)

# Brokered message property Dataverse adds when it dropped the context's bulky parts (> 192 KB).
OVERSIZE_PROPERTY = "MessageMaxSizeExceeded"
# Dataverse trims a context to stay under 192 KB, and a Standard Service Bus queue takes 256 KB:
# anything much larger was not posted by a service endpoint, and is refused before it is read.
DEFAULT_MAX_BODY_BYTES = 512 * 1024
# A lone UTF-16 surrogate can only come from a \uD800-\uDFFF escape; checked before any walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_REQUIRED = ("MessageName", "PrimaryEntityName", "PrimaryEntityId", "OrganizationId")
# The default of a context's collections: shared, so it must be read-only.
_NOTHING: Mapping[str, Any] = MappingProxyType({})
_FIX_FORMAT = (
    "Set the Dataverse service endpoint's message format to JSON "
    "(serviceendpoint.messageformat = 2) and re-register it."
)


class RejectionKind(StrEnum):
    EMPTY = "empty"
    NOT_UTF8 = "not_utf8"
    BINARY_XML = "binary_xml"
    TEXT_XML = "text_xml"
    NOT_JSON = "not_json"
    TRUNCATED = "truncated"
    WRONG_SHAPE = "wrong_shape"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A body that can never be processed; `reason` is written for the admin who must act."""

    kind: RejectionKind
    reason: str


class ExecutionContext(NamedTuple):
    """A RemoteExecutionContext.

    The fields are checked when the message is parsed: the names, the ids (a non-GUID refuses
    the message), the Target's id and row version, and the shape of every collection; what the
    collections hold (images included) is decoded when first read (see `Pairs`). The properties
    after the fields, which no decision reads, are decoded from `raw` when asked for: a
    malformed one refuses nothing unless read, and then raises ContractError.

    A NamedTuple rather than a frozen dataclass: a plain immutable record, built twice per
    message, and a tuple is built in one step where a frozen dataclass sets each field in turn.
    """

    message_name: str
    primary_entity_name: str
    primary_entity_id: str
    organization_id: str
    organization_name: str | None = None
    correlation_id: str | None = None
    initiating_user_id: str | None = None
    user_id: str | None = None
    input_parameters: Mapping[str, Value] = _NOTHING
    pre_images: Mapping[str, Entity] = _NOTHING
    post_images: Mapping[str, Entity] = _NOTHING
    shared_variables: Mapping[str, Value] = _NOTHING
    parent: ExecutionContext | None = None
    oversize: bool = False
    # The JSON object itself, and where it sits in the body (for a ContractError's path).
    raw: Mapping[str, Any] = _NOTHING
    path: str = "body"

    # `raw` and `path` say where the fields came from, not what the context is: two contexts
    # are equal when their fields are, and a context in a log does not carry the whole body.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExecutionContext) and self[:-2] == other[:-2]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __repr__(self) -> str:
        fields = zip(self._fields, self[:-2], strict=False)
        shown = ", ".join(f"{name}={value!r}" for name, value in fields)
        return f"ExecutionContext({shown})"

    @property
    def target(self) -> Entity | EntityReference | None:
        target = self.input_parameters.get("Target")
        return target if isinstance(target, Entity | EntityReference) else None

    @property
    def operation_id(self) -> str | None:
        return _guid(self.raw, "OperationId", self.path)

    @property
    def request_id(self) -> str | None:
        return _guid(self.raw, "RequestId", self.path)

    @property
    def mode(self) -> int | None:
        return _int(self.raw, "Mode")

    @property
    def stage(self) -> int | None:
        return _int(self.raw, "Stage")

    @property
    def depth(self) -> int | None:
        return _int(self.raw, "Depth")

    @property
    def operation_created_on(self) -> datetime | None:
        created = self.raw.get("OperationCreatedOn")
        return parse_date(created) if isinstance(created, str) else None

    @property
    def owning_extension(self) -> EntityReference | None:
        extension = self.raw.get("OwningExtension")
        if not isinstance(extension, dict):
            return None
        value = decode_value(extension, f"{self.path}.OwningExtension")
        return value if isinstance(value, EntityReference) else None


def parse_message(
    body: bytes,
    properties: Mapping[str, Any] | None = None,
    content_type: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> ExecutionContext | Rejection:
    """Parse a message body; `properties` are the brokered message's application properties.

    Whatever the bytes, this returns: a body over `max_bytes` is refused unread, and every other
    failure is a Rejection that says what was wrong and where.
    """
    if len(body) > max_bytes:
        return Rejection(
            RejectionKind.TOO_LARGE,
            f"The body is {len(body)} bytes, over the limit of {max_bytes} "
            "(GUARDRAILS_MAX_BODY_BYTES). Dataverse keeps its messages under 192 KB, so this "
            "one was not posted by a Dataverse service endpoint; check what sends to this queue.",
        )
    try:
        text = _decode_text(body, content_type)
        if isinstance(text, Rejection):
            return text
        data = _load_json(text)
        if isinstance(data, Rejection):
            return data
        oversize = any(_property_name(key) == OVERSIZE_PROPERTY.lower() for key in properties or {})
        return _context(data, "body", oversize=oversize)
    except (ContractError, RecursionError) as exc:
        return malformed(exc)


def malformed(exc: ContractError | RecursionError) -> Rejection:
    """The rejection of a body whose content breaks the data contract.

    Also for a value found malformed only when a decision reads it (see `Pairs`): the
    reason is the same wherever the value was read.
    """
    if isinstance(exc, RecursionError):
        return Rejection(
            RejectionKind.WRONG_SHAPE,
            "The body nests JSON deeper than any Dataverse message does; it was not produced by "
            "a Dataverse service endpoint.",
        )
    return Rejection(
        RejectionKind.WRONG_SHAPE,
        f"The body is JSON but not a valid Dataverse RemoteExecutionContext: at {exc.path}, "
        f"{exc.problem}. Only a Dataverse service endpoint with message format JSON should "
        "post to this queue.",
    )


def _property_name(key: object) -> str:
    # The Service Bus SDK hands application property names over as bytes, the Functions
    # binding as str.
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace").lower()
    return str(key).lower()


def _decode_text(body: bytes, content_type: str | None) -> str | Rejection:
    stripped = body.removeprefix(b"\xef\xbb\xbf").strip(b" \t\r\n")
    if not stripped:
        return Rejection(
            RejectionKind.EMPTY,
            "The message body is empty. A Dataverse service endpoint always posts the execution "
            "context; check what else sends to this queue.",
        )
    if _looks_like_binary_xml(stripped, content_type):
        return Rejection(
            RejectionKind.BINARY_XML,
            "The body is .NET Binary XML (message format 1, the service endpoint's default). "
            + _FIX_FORMAT,
        )
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Rejection(
            RejectionKind.NOT_UTF8,
            "The body is UTF-16; Dataverse posts UTF-8 JSON. Check what sends to this queue.",
        )
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.end == len(body) and "end of data" in exc.reason:
            return _truncated(len(body), "it stops inside a multi-byte character")
        return Rejection(
            RejectionKind.NOT_UTF8,
            f"The body is not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}). "
            "A Dataverse service endpoint with message format JSON posts UTF-8.",
        )
    if text.lstrip().startswith("<"):
        return Rejection(
            RejectionKind.TEXT_XML,
            "The body is XML (message format 3, Text XML). " + _FIX_FORMAT,
        )
    return text


def _looks_like_binary_xml(body: bytes, content_type: str | None) -> bool:
    if content_type and "msbin" in content_type.lower():
        return True
    # Binary XML opens with an element record (0x40-0x77; '[' is JSON), has length-prefixed
    # names (control bytes), and carries the contract's namespace.
    return (
        0x40 <= body[0] <= 0x77
        and body[0] != ord("[")
        and any(byte < 0x09 or 0x0E <= byte < 0x20 for byte in body[:64])
        and (b"schemas.microsoft.com/xrm" in body or b"RemoteExecutionContext" in body)
    )


# What may stand at the end of a body cut short: part of a literal, a number, or an escape.
_PARTIAL_TAIL = re.compile(
    r"(?:t(?:r(?:u)?)?|f(?:a(?:l(?:s)?)?)?|n(?:u(?:l)?)?|[-+.eE0-9]+|\\?u[0-9a-fA-F]{0,3})"
)


def _ends_early(text: str, exc: json.JSONDecodeError) -> bool:
    """True when the decoder failed only because the text stopped, not because it is wrong."""
    rest = text[exc.pos :].rstrip()
    if not rest or exc.msg.startswith("Unterminated string"):
        return True
    return len(rest) <= 8 and _PARTIAL_TAIL.fullmatch(rest) is not None


def _truncated(length: int, detail: str) -> Rejection:
    return Rejection(
        RejectionKind.TRUNCATED,
        f"The body ends early ({length} bytes; {detail}): the message was truncated by whatever "
        "produced or copied it. Dataverse itself never truncates; it drops the context's large "
        "parts instead.",
    )


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which JSON itself does not; Dataverse never sends them.
    raise _NonFinite(name)


def _load_json(text: str) -> dict[str, Any] | Rejection:
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except _NonFinite as exc:
        return Rejection(
            RejectionKind.NOT_JSON,
            f"The body contains {exc}, which is not JSON; Dataverse never sends it. Check what "
            "sends to this queue.",
        )
    except json.JSONDecodeError as exc:
        if _ends_early(text, exc):
            return _truncated(len(text.encode("utf-8")), "the JSON stops mid-value")
        return Rejection(
            RejectionKind.NOT_JSON,
            f"The body is not JSON: {exc.msg.removesuffix(' at')} (line {exc.lineno}, "
            f"column {exc.colno}). " + _FIX_FORMAT,
        )
    except ValueError as exc:  # e.g. an integer with more digits than Python will parse
        return Rejection(RejectionKind.NOT_JSON, f"The body is not usable JSON: {exc}.")
    if _SURROGATE_ESCAPE.search(text):
        data = scrub(data)
    if not isinstance(data, dict):
        return Rejection(
            RejectionKind.WRONG_SHAPE,
            f"The body is a JSON {_json_kind(data)}, not a RemoteExecutionContext object. Only a "
            "Dataverse service endpoint with message format JSON should post to this queue.",
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        return Rejection(
            RejectionKind.WRONG_SHAPE,
            "The body is a JSON object without " + ", ".join(missing) + ": it is not a Dataverse "
            "RemoteExecutionContext. Only a Dataverse service endpoint with message format JSON "
            "should post to this queue.",
        )
    return data


def _json_kind(data: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(data), "number"
    )


def _str(data: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ContractError(f"{path}.{key}", f"expected a string, found {type(value).__name__}")
    return value


def _int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _guid(data: Mapping[str, Any], key: str, path: str) -> str | None:
    """An id the guardrail may put into a URL or a key: a GUID, or the message is refused."""
    value = data.get(key)
    if value is None:
        return None
    return require_guid(value, path, key)


def _images(raw: Any, path: str) -> Pairs[Entity]:
    return Pairs(decode_pairs(raw, path), path, decode_entity)


def _collection(raw: Any, path: str) -> Pairs[Value]:
    return Pairs(decode_pairs(raw, path), path, decode_value)


def _parameters(raw: Any, path: str) -> Pairs[Value]:
    """Parameters decoded as they are read; but the Target, the row the message is about, at
    once: a Target with a malformed id or row version refuses the message here."""
    parameters = _collection(raw, path)
    parameters.get("Target")
    return parameters


def _context(data: Mapping[str, Any], path: str, *, oversize: bool) -> ExecutionContext:
    inputs_raw = data.get("InputParameters")
    parent_raw = data.get("ParentContext")
    if parent_raw is not None and not isinstance(parent_raw, dict):
        raise ContractError(f"{path}.ParentContext", "expected an object or null")
    return ExecutionContext(
        message_name=_str(data, "MessageName", path, required=True) or "",
        primary_entity_name=_str(data, "PrimaryEntityName", path, required=True) or "",
        primary_entity_id=(_guid(data, "PrimaryEntityId", path) or ""),
        organization_id=(_guid(data, "OrganizationId", path) or ""),
        organization_name=_str(data, "OrganizationName", path),
        correlation_id=_guid(data, "CorrelationId", path),
        initiating_user_id=_guid(data, "InitiatingUserId", path),
        user_id=_guid(data, "UserId", path),
        input_parameters=_parameters(inputs_raw, f"{path}.InputParameters"),
        pre_images=_images(data.get("PreEntityImages"), f"{path}.PreEntityImages"),
        post_images=_images(data.get("PostEntityImages"), f"{path}.PostEntityImages"),
        shared_variables=_collection(data.get("SharedVariables"), f"{path}.SharedVariables"),
        parent=_context(parent_raw, f"{path}.ParentContext", oversize=False)
        if isinstance(parent_raw, dict)
        else None,
        # Dataverse drops InputParameters (and images) from a context over 192 KB.
        oversize=oversize or inputs_raw is None,
        raw=data,
        path=path,
    )
