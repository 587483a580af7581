"""Bodies that can never be processed become a Rejection whose reason says what to change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from guardrails.engine import Outcome, decide
from guardrails.message import Rejection, RejectionKind, parse_message
from guardrails.values import ContractError, Entity

from .conftest import (
    ACCOUNT_NON_ASCII,
    AGENT_UPDATE,
    ALLFIELDS,
    CUSTOMACTIVITY,
    SAMPLE_NAMES,
    dumps,
    mailbox,
    make_policy,
    parse_ok,
    parse_rejected,
    sample_bytes,
    sample_id,
    sample_json,
    target_of,
)

NS = b"http://schemas.microsoft.com/xrm/2011/Contracts"
XSI = b"http://www.w3.org/2001/XMLSchema-instance"


def _binary_xml(first: int) -> bytes:
    """The opening records of a DataContract body in .NET Binary XML (message format 1)."""
    name = b"RemoteExecutionContext"
    return (
        bytes([first, len(name)])
        + name
        + b"\x08"
        + bytes([len(NS)])
        + NS
        + b"\x09\x01i"
        + bytes([len(XSI)])
        + XSI
        + b"@\x0eBusinessUnitId\x99\x24e2b9dd85-e89e-e711-8122-000d3aa2331c"
        + b"@\x0bMessageName\x99\x06Update\x01\x01"
    )


BINARY_XML = [
    pytest.param(_binary_xml(0x40), None, id="short-element-0x40"),
    pytest.param(_binary_xml(0x56), None, id="prefix-element-0x56"),
    pytest.param(b"V\x02\x0b\x01s\x04\x0b\x01a\x06V\x08D\x0a\x1e\x00\x82" + NS, None, id="soap"),
    pytest.param(b"\x00\x01\x02\x03", "application/msbin1", id="msbin1-content-type"),
    pytest.param(_binary_xml(0x40), "application/msbin1; charset=binary", id="both"),
]


@pytest.mark.parametrize(("body", "content_type"), BINARY_XML)
def test_binary_xml(body: bytes, content_type: str | None) -> None:
    rejection = parse_rejected(body, content_type=content_type)
    assert rejection.kind is RejectionKind.BINARY_XML
    assert "messageformat = 2" in rejection.reason
    assert "Binary XML" in rejection.reason


TEXT_XML = [
    b'<RemoteExecutionContext xmlns="http://schemas.microsoft.com/xrm/2011/Contracts" '
    b'xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><BusinessUnitId>e2b9dd85</BusinessUnitId>'
    b"</RemoteExecutionContext>",
    b'<?xml version="1.0" encoding="utf-8"?>\r\n<RemoteExecutionContext xmlns="'
    + NS
    + b'"><MessageName>Update</MessageName></RemoteExecutionContext>',
    b'\xef\xbb\xbf  \n<RemoteExecutionContext xmlns="' + NS + b'"/>',
]


@pytest.mark.parametrize("body", TEXT_XML)
def test_text_xml(body: bytes) -> None:
    rejection = parse_rejected(body)
    assert rejection.kind is RejectionKind.TEXT_XML
    assert "messageformat = 2" in rejection.reason
    assert "XML" in rejection.reason


@pytest.mark.parametrize("body", [b"", b" ", b"\r\n\t  \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf \n"])
def test_empty(body: bytes) -> None:
    rejection = parse_rejected(body)
    assert rejection.kind is RejectionKind.EMPTY
    assert "empty" in rejection.reason


def _cut_in_a_multibyte_character() -> bytes:
    body = sample_bytes(ACCOUNT_NON_ASCII)
    index = next(i for i, byte in enumerate(body) if byte >= 0xC2)
    return body[: index + 1]  # the lead byte of a two-byte character, without its follower


TRUNCATED = [
    *[pytest.param(name, id=f"half-of-{sample_id(name)}") for name in SAMPLE_NAMES],
    pytest.param(b'{"MessageName": "Upd', id="inside-a-string"),
    pytest.param(b'{"MessageName": "Update", "IsInTransaction": fal', id="inside-a-literal"),
    pytest.param(b'{"MessageName": "Update", "Depth": 1', id="after-a-number"),
    pytest.param(b'{"MessageName": "Update",', id="after-a-comma"),
    pytest.param(b'{"MessageName": "Update", "Value": "\\', id="after-a-backslash"),
    pytest.param(b'{"MessageName": "Update", "Value": "\\u00', id="inside-an-escape"),
    pytest.param(_cut_in_a_multibyte_character, id="inside-a-multibyte-character"),
]


@pytest.mark.parametrize("case", TRUNCATED)
def test_truncated(case: Any) -> None:
    if isinstance(case, str):
        whole = sample_bytes(case)
        body = whole[: len(whole) // 2]
    elif callable(case):
        body = case()
    else:
        body = case
    rejection = parse_rejected(body)
    assert rejection.kind is RejectionKind.TRUNCATED, rejection.reason
    assert "truncated" in rejection.reason


@pytest.mark.parametrize("name", SAMPLE_NAMES, ids=sample_id)
def test_truncated_one_byte_short(name: str) -> None:
    body = sample_bytes(name).rstrip()
    rejection = parse_rejected(body[:-1])
    assert rejection.kind is RejectionKind.TRUNCATED


def _latin1_body() -> bytes:
    built = mailbox(
        changes={"emailaddress": "zoë@contoso.com"}, before={"emailaddress": "zoe@contoso.com"}
    )
    return json.dumps(built, ensure_ascii=False).encode("latin-1")


NOT_UTF8 = [
    pytest.param(_latin1_body, id="latin-1"),
    pytest.param(lambda: '{"name": "Café"}'.encode("cp1252"), id="cp1252"),
    pytest.param(lambda: sample_bytes(AGENT_UPDATE).decode().encode("utf-16"), id="utf-16"),
    pytest.param(
        lambda: b"\xff\xfe" + sample_bytes(AGENT_UPDATE).decode().encode("utf-16-le"),
        id="utf-16-le",
    ),
    pytest.param(
        lambda: b"\xfe\xff" + sample_bytes(AGENT_UPDATE).decode().encode("utf-16-be"),
        id="utf-16-be",
    ),
    pytest.param(lambda: b"\xbf\xbb\xef", id="stray-bom-bytes-are-not-empty"),
]


@pytest.mark.parametrize("make", NOT_UTF8)
def test_not_utf8(make: Any) -> None:
    rejection = parse_rejected(make())
    assert rejection.kind is RejectionKind.NOT_UTF8
    assert "UTF-8" in rejection.reason


def test_not_utf8_names_the_offset() -> None:
    body = b'{"MessageName": "Caf\xe9"}'
    rejection = parse_rejected(body)
    assert rejection.kind is RejectionKind.NOT_UTF8
    assert "0xe9" in rejection.reason
    assert "offset 20" in rejection.reason


NOT_JSON = [
    b"hello",
    b"MessageName=Update&PrimaryEntityName=mailbox",
    b"{'MessageName': 'Update'}",
    b'{"MessageName": "Update"} trailing',
    b'{"MessageName": "Update",, "x": 1}',
    b"9" * 5000,
]


@pytest.mark.parametrize("body", NOT_JSON)
def test_not_json(body: bytes) -> None:
    rejection = parse_rejected(body)
    assert rejection.kind is RejectionKind.NOT_JSON
    assert "JSON" in rejection.reason
    assert "messageformat = 2" in rejection.reason or "usable JSON" in rejection.reason


def _without(key: str) -> bytes:
    data = sample_json(AGENT_UPDATE)
    del data[key]
    return dumps(data)


def _edited(edit: Any) -> Any:
    def make() -> bytes:
        data = sample_json(AGENT_UPDATE)
        edit(data)
        return dumps(data)

    return make


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    data[key] = value


WRONG_SHAPE = [
    pytest.param(lambda: b"[]", ["array"], id="empty-array"),
    pytest.param(
        lambda: b"[" + sample_bytes(AGENT_UPDATE) + b"]", ["array"], id="array-of-context"
    ),
    pytest.param(lambda: b'"Update"', ["string"], id="string"),
    pytest.param(lambda: b"42", ["number"], id="number"),
    pytest.param(lambda: b"null", ["null"], id="null"),
    pytest.param(lambda: b"true", ["boolean"], id="boolean"),
    pytest.param(lambda: b"{}", ["MessageName"], id="empty-object"),
    pytest.param(lambda: _without("MessageName"), ["MessageName"], id="no-MessageName"),
    pytest.param(lambda: _without("OrganizationId"), ["OrganizationId"], id="no-OrganizationId"),
    pytest.param(
        _edited(lambda d: _set(d, "InputParameters", {"Target": {}})),
        ["InputParameters"],
        id="InputParameters-object",
    ),
    pytest.param(
        _edited(lambda d: _set(target_of(d), "Attributes", {"modifiedon": "x"})),
        ["InputParameters[Target].Attributes"],
        id="Attributes-not-a-list",
    ),
    pytest.param(
        _edited(lambda d: _set(d, "MessageName", 5)), ["MessageName"], id="MessageName-number"
    ),
    pytest.param(
        _edited(lambda d: _set(d, "ParentContext", [1])), ["ParentContext"], id="parent-array"
    ),
    pytest.param(
        _edited(lambda d: _set(d, "PostEntityImages", [{"value": {}}])),
        ["PostEntityImages[0]"],
        id="image-without-key",
    ),
]


@pytest.mark.parametrize(("make", "mentions"), WRONG_SHAPE)
def test_wrong_shape(make: Any, mentions: list[str]) -> None:
    rejection = parse_rejected(make())
    assert rejection.kind is RejectionKind.WRONG_SHAPE, rejection.reason
    for text in mentions:
        assert text in rejection.reason
    assert "Dataverse" in rejection.reason


def test_wrong_shape_in_a_real_sample_names_the_path_when_read() -> None:
    # No decision reads statecode (nor anything of a table other than mailbox): the message is
    # not refused for it, but reading the value fails with the same path as ever.
    data = sample_json(ALLFIELDS)
    for pair in target_of(data)["Attributes"]:
        if pair["key"] == "statecode":
            pair["value"]["Value"] = "Active"
    context = parse_ok(dumps(data))
    assert decide(context, make_policy()).outcome is Outcome.IGNORED
    target = context.target
    assert isinstance(target, Entity)
    with pytest.raises(ContractError) as caught:
        target.attributes["statecode"]
    assert caught.value.path == "body.InputParameters[Target].Attributes[statecode].Value"


def test_wrong_shape_in_a_nested_entity_collection_names_the_path_when_read() -> None:
    data = sample_json(CUSTOMACTIVITY)
    image = data["PreEntityImages"][0]["value"]
    collection = next(pair["value"] for pair in image["Attributes"] if pair["key"] == "from")
    collection["Entities"][0]["Attributes"] = "broken"
    context = parse_ok(dumps(data))
    with pytest.raises(ContractError) as caught:
        context.pre_images["Image"].attributes["from"]
    assert (
        caught.value.path == "body.PreEntityImages[Image].Attributes[from].Entities[0].Attributes"
    )


def _deep_in(key: str, depth: int) -> bytes:
    """A real sample whose `key` holds `depth` nested arrays (too deep for json.dumps)."""
    data = sample_json(AGENT_UPDATE)
    data[key] = "__DEEP__"
    nested = b"[" * depth + b"]" * depth
    return dumps(data).replace(b'"__DEEP__"', nested, 1)


def _deep_shared_variable(depth: int) -> bytes:
    data = sample_json(AGENT_UPDATE)
    data["SharedVariables"] = [{"key": "deep", "value": "__DEEP__"}]
    nested = b"[" * depth + b"]" * depth
    return dumps(data).replace(b'"__DEEP__"', nested, 1)


DEEP = [
    pytest.param(lambda: b"[" * 100_000, id="100000-brackets"),
    pytest.param(lambda: b'{"a":' * 50_000, id="50000-objects"),
    pytest.param(lambda: b"[" * 100_000 + b"]" * 100_000, id="100000-closed"),
    pytest.param(lambda: _deep_in("IsolationMode", 100_000), id="deep-in-an-ignored-key"),
    pytest.param(lambda: _deep_shared_variable(3_000), id="deep-in-a-shared-variable"),
    pytest.param(lambda: _deep_shared_variable(100_000), id="very-deep-in-a-shared-variable"),
]


@pytest.mark.parametrize("make", DEEP)
def test_deep_nesting_is_a_rejection_not_a_recursion_error(make: Any) -> None:
    result = parse_message(make())
    assert isinstance(result, Rejection)
    assert result.kind in {RejectionKind.WRONG_SHAPE, RejectionKind.TRUNCATED}
    assert result.reason


def test_deep_nesting_in_a_value_is_rejected_as_wrong_shape() -> None:
    rejection = parse_rejected(_deep_shared_variable(3_000))
    assert rejection.kind is RejectionKind.WRONG_SHAPE
    assert "deeper" in rejection.reason


ALL_REJECTED = [
    b"",
    _binary_xml(0x40),
    TEXT_XML[0],
    b'{"MessageName": "Upd',
    b'{"x": "\xe9"}',
    b"hello",
    b"[]",
    b"[" * 100_000,
]


@pytest.mark.parametrize("body", ALL_REJECTED)
def test_decide_of_a_rejection_is_rejected_with_the_same_reason(body: bytes) -> None:
    rejection = parse_rejected(body)
    decision = decide(rejection, make_policy())
    assert decision.outcome is Outcome.REJECTED
    assert decision.reason == rejection.reason
    assert decision.patch == {}
    assert decision.violations == ()
    assert decision.to_dict()["outcome"] == "rejected"
