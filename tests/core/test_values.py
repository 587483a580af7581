"""Each value encoding of the data contract, decoded from the real payloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from guardrails.message import ExecutionContext
from guardrails.values import (
    ContractError,
    Entity,
    EntityCollection,
    EntityReference,
    Money,
    OptionSetValue,
    OptionSetValues,
    UnknownValue,
    decode_value,
    parse_date,
    to_json,
)

from .conftest import (
    ACCOUNT_SAMPLE1,
    AGENT_UPDATE,
    ALLFIELDS,
    ALLTYPES,
    CONTACT_UPDATE,
    CUSTOMACTIVITY,
    MAILBOX_ID,
    SHAREPOINT,
    dumps,
    option,
    parse_ok,
    sample_bytes,
    sample_json,
)

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"


def _context(name: str) -> ExecutionContext:
    return parse_ok(sample_bytes(name))


def _target(name: str) -> Entity:
    target = _context(name).target
    assert isinstance(target, Entity)
    return target


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- OptionSetValue and multi-select -------------------------------------------------------------


def test_option_set_values_from_allfields() -> None:
    attributes = _target(ALLFIELDS).attributes
    assert attributes["statecode"] == OptionSetValue(0)
    assert attributes["statuscode"] == OptionSetValue(1)
    assert attributes["shko_choice"] == OptionSetValue(342490000)
    assert attributes["shko_choice"] != 342490000  # a choice is not a bare int


def test_option_set_value_from_custom_activity_target() -> None:
    attributes = _target(CUSTOMACTIVITY).attributes
    assert attributes["statecode"] == OptionSetValue(3)
    assert attributes["statuscode"] == OptionSetValue(4)


@pytest.mark.parametrize(
    ("name", "column", "values"),
    [
        (ALLFIELDS, "shko_choices", {342490001, 342490002}),
        (ALLTYPES, "albxrm_multiselectoptionset", {257760001, 257760002}),
    ],
)
def test_multi_select_from_samples(name: str, column: str, values: set[int]) -> None:
    assert _target(name).attributes[column] == OptionSetValues(frozenset(values))


def test_multi_select_equality_ignores_order() -> None:
    raw = sample_json(ALLFIELDS)["InputParameters"][0]["value"]["Attributes"]
    choices = next(pair["value"] for pair in raw if pair["key"] == "shko_choices")
    assert len(choices) == 2
    forward = decode_value(choices)
    backward = decode_value(list(reversed(choices)))
    assert isinstance(forward, OptionSetValues)
    assert forward == backward
    assert forward != decode_value(choices[:1])
    assert to_json(forward) == [342490001, 342490002]


# --- EntityReference ----------------------------------------------------------------------------


def test_entity_reference_name_is_null_in_targets() -> None:
    owner = _target(ALLFIELDS).attributes["ownerid"]
    assert owner == EntityReference("systemuser", "c7877889-0f5f-ee11-8def-000d3adbef1f")
    assert isinstance(owner, EntityReference)
    assert owner.name is None


def test_entity_reference_name_is_filled_in_images() -> None:
    context = _context(SHAREPOINT)
    image = context.post_images["PostImage"].attributes
    owner = image["ownerid"]
    regarding = image["regardingobjectid"]
    assert isinstance(owner, EntityReference)
    assert isinstance(regarding, EntityReference)
    assert (owner.logical_name, owner.id, owner.name) == (
        "systemuser",
        "30c91177-9436-4042-ad53-dd966d490114",
        "Name",
    )
    assert (regarding.logical_name, regarding.id, regarding.name) == (
        "account",
        "0a3839b3-08d4-ef11-aeb0-00155d000101",
        "Mini test",
    )
    # The same lookup compares equal whether or not its Name was serialized.
    target = context.target
    assert isinstance(target, Entity)
    assert target.attributes["regardingobjectid"] == regarding
    assert target.attributes["regardingobjectid"].name is None  # type: ignore[union-attr]


def test_entity_reference_differs_by_table_and_id() -> None:
    ref = EntityReference("systemuser", "c7877889-0f5f-ee11-8def-000d3adbef1f")
    assert ref != EntityReference("team", ref.id)
    assert ref != EntityReference("systemuser", "00000000-0f5f-ee11-8def-000d3adbef1f")
    assert ref != ref.id  # never equal to a bare GUID string


def test_entity_reference_id_is_lower_cased() -> None:
    raw = {
        "__type": f"EntityReference:{CONTRACTS}",
        "Id": "C7877889-0F5F-EE11-8DEF-000D3ADBEF1F",
        "KeyAttributes": [],
        "LogicalName": "systemuser",
        "Name": "Someone",
        "RowVersion": None,
    }
    assert decode_value(raw) == EntityReference(
        "systemuser", "c7877889-0f5f-ee11-8def-000d3adbef1f"
    )


# --- Money ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "column", "amount"),
    [
        (ALLFIELDS, "shko_currency", "100"),
        (ALLFIELDS, "shko_currency_base", "100"),
        (ALLTYPES, "albxrm_currency", "2154.32"),
        (ALLTYPES, "albxrm_currency_base", "2154.32"),
    ],
)
def test_money_is_decimal(name: str, column: str, amount: str) -> None:
    value = _target(name).attributes[column]
    assert isinstance(value, Money)
    assert isinstance(value.value, Decimal)
    assert value.value == Decimal(amount)
    assert value == Money(Decimal(amount))
    assert to_json(value) == amount


def test_plain_decimal_and_integer_columns_stay_plain() -> None:
    attributes = _target(ALLFIELDS).attributes
    assert attributes["shko_integer"] == 321
    assert attributes["shko_decimal"] == pytest.approx(10.12)
    assert attributes["shko_boolean"] is False
    assert attributes["shko_string"] == "This is a String"


# --- DateTime ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (ALLFIELDS, _utc(2023, 10, 15, 19, 34, 6, 12000)),  # /Date(1697398446012)/
        (CONTACT_UPDATE, _utc(2017, 9, 26, 7, 4, 8)),  # /Date(1506409448000-0700)/
        (CUSTOMACTIVITY, _utc(2024, 8, 26, 4, 43, 16)),  # /Date(1724647396000+0300)/
        (AGENT_UPDATE, _utc(2024, 8, 2, 7, 0, 39)),  # /Date(1722582039000+0000)/
    ],
)
def test_operation_created_on_is_the_utc_instant(name: str, expected: datetime) -> None:
    created = _context(name).operation_created_on
    assert created == expected
    assert created is not None
    assert created.utcoffset() == timedelta(0)


def test_date_column_in_a_target() -> None:
    # FormattedValues says 2023-10-17T09:00:00+02:00: the same instant.
    value = _target(ALLFIELDS).attributes["shko_datetime"]
    assert value == _utc(2023, 10, 17, 7, 0, 0)
    assert value == datetime.fromisoformat("2023-10-17T09:00:00+02:00")
    assert to_json(value) == "2023-10-17T07:00:00Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/Date(0)/", _utc(1970, 1, 1)),
        ("/Date(1506384247000)/", _utc(2017, 9, 26, 0, 4, 7)),
        ("/Date(1506409448000-0700)/", _utc(2017, 9, 26, 7, 4, 8)),
        ("/Date(1506409448000+0000)/", _utc(2017, 9, 26, 7, 4, 8)),
        ("/Date(1724647396000+0300)/", _utc(2024, 8, 26, 4, 43, 16)),
        ("/Date(1724647396000-1200)/", _utc(2024, 8, 26, 4, 43, 16)),
        ("/Date(-86400000)/", _utc(1969, 12, 31)),
        ("/Date(1697398446012)/", _utc(2023, 10, 15, 19, 34, 6, 12000)),
    ],
)
def test_wcf_dates(text: str, expected: datetime) -> None:
    parsed = parse_date(text)
    assert parsed == expected
    assert parsed is not None
    assert parsed.tzinfo is not None
    assert parsed.utcoffset() == timedelta(0)
    assert decode_value(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "/Date()/",
        "/Date(abc)/",
        "/Date(1506409448000+07)/",
        "Date(1506409448000)",
        "/Date(1506409448000)",
        "/Date(99999999999999999999999)/",
        "\\/Date(1506409448000)\\/",
    ],
)
def test_not_a_wcf_date_stays_a_string(text: str) -> None:
    assert parse_date(text) is None
    assert decode_value(text) == text


def test_escaped_slash_form_on_the_wire() -> None:
    # Dataverse writes "\/Date(...)\/"; JSON decoding yields "/Date(...)/".
    body = (
        b'{"MessageName":"Update","PrimaryEntityName":"contact",'
        b'"PrimaryEntityId":"6d81597f-0f9f-e711-8122-000d3aa2331c",'
        b'"OrganizationId":"00aa00aa-bb11-cc22-dd33-44ee44ee44ee",'
        b'"OperationCreatedOn":"\\/Date(1506409448000-0700)\\/",'
        b'"InputParameters":[{"key":"Target","value":{"__type":'
        b'"Entity:http:\\/\\/schemas.microsoft.com\\/xrm\\/2011\\/Contracts",'
        b'"Attributes":[{"key":"modifiedon","value":"\\/Date(1506384247000)\\/"},'
        b'{"key":"statecode","value":{"__type":'
        b'"OptionSetValue:http:\\/\\/schemas.microsoft.com\\/xrm\\/2011\\/Contracts","Value":1}}],'
        b'"FormattedValues":[],"Id":"6d81597f-0f9f-e711-8122-000d3aa2331c",'
        b'"LogicalName":"contact","RowVersion":null}}]}'
    )
    context = parse_ok(body)
    assert context.operation_created_on == _utc(2017, 9, 26, 7, 4, 8)
    target = context.target
    assert isinstance(target, Entity)
    assert target.attributes["modifiedon"] == _utc(2017, 9, 26, 0, 4, 7)
    assert target.attributes["statecode"] == OptionSetValue(1)


def test_sample_bytes_really_carry_escaped_slashes() -> None:
    body = sample_bytes(CONTACT_UPDATE)
    assert b'"\\/Date(1506384247000)\\/"' in body
    target = _target(CONTACT_UPDATE)
    assert target.attributes["modifiedon"] == _utc(2017, 9, 26, 0, 4, 7)


# --- Guid, null, wrappers, unknown types ---------------------------------------------------------


def test_guid_columns_are_plain_strings() -> None:
    attributes = _target(ALLFIELDS).attributes
    assert attributes["shko_allfieldsid"] == "6420f0cc-916b-ee11-9ae6-000d3a688809"
    assert type(attributes["shko_allfieldsid"]) is str


@pytest.mark.parametrize(
    ("name", "column"),
    [(ALLFIELDS, "modifiedonbehalfby"), (CUSTOMACTIVITY, "modifiedonbehalfby")],
)
def test_nulls_are_kept_as_none(name: str, column: str) -> None:
    attributes = _target(name).attributes
    assert column in attributes
    assert attributes[column] is None


def test_system_wrappers_in_the_2018_sample() -> None:
    attributes = _target(ACCOUNT_SAMPLE1).attributes
    assert attributes["accountid"] == "ec4e2f7d-9d60-e811-a95a-000d3af24950"
    assert attributes["modifiedon"] == _utc(2018, 5, 31, 9, 5, 24)
    assert attributes["telephone1"] == "1111"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"__type": "Guid:#System", "__value": "ec4e2f7d-9d60-e811-a95a-000d3af24950"},
         "ec4e2f7d-9d60-e811-a95a-000d3af24950"),
        ({"__type": "DateTime:#System", "__value": "/Date(1527757524000)/"},
         _utc(2018, 5, 31, 9, 5, 24)),
        ({"__type": "Int32:#System", "__value": 7}, 7),
    ],
)  # fmt: skip
def test_system_wrappers(raw: dict[str, Any], expected: Any) -> None:
    assert decode_value(raw) == expected


def test_unknown_contract_type_is_kept() -> None:
    # The sharepointdocumentlocation sample's parent carries a QueryExpression.
    parent = _context(SHAREPOINT).parent
    assert parent is not None
    query = parent.input_parameters["Query"]
    assert isinstance(query, UnknownValue)
    assert query.type_name == f"QueryExpression:{CONTRACTS}"
    assert query.raw["EntityName"] == "sharepointdocument"
    assert query.raw["PageInfo"]["Count"] == 10
    assert to_json(query) == {"__type": f"QueryExpression:{CONTRACTS}"}


def test_unknown_type_synthetic() -> None:
    raw = {"__type": f"OptionSetValueCollection:{CONTRACTS}", "Items": [1, 2]}
    value = decode_value(raw)
    assert isinstance(value, UnknownValue)
    assert value.type_name == raw["__type"]
    assert value.raw == raw


# --- EntityCollection ----------------------------------------------------------------------------


def test_entity_collections_in_the_custom_activity_pre_image() -> None:
    image = _context(CUSTOMACTIVITY).pre_images["Image"].attributes
    sender = image["from"]
    recipients = image["to"]
    assert isinstance(sender, EntityCollection)
    assert isinstance(recipients, EntityCollection)
    assert sender.entity_name == "activityparty"
    assert recipients.entity_name == "activityparty"
    assert len(sender.entities) == 1
    assert len(recipients.entities) == 1

    party = sender.entities[0]
    assert party.logical_name == "activityparty"
    assert party.id == "861579d9-7e63-ef11-9e4a-00155d0001ea"
    assert party.row_version == "147059704"
    assert party.attributes["partyid"] == EntityReference(
        "contact", "a76c0a41-4dec-ea11-a2d1-00155d04e323"
    )
    assert party.attributes["partyid"].name == "Some Contact"  # type: ignore[union-attr]
    assert party.attributes["participationtypemask"] == OptionSetValue(1)
    assert party.attributes["ispartydeleted"] is False
    assert party.attributes["scheduledend"] == _utc(2024, 8, 26, 19, 43, 14)
    assert party.formatted_values["participationtypemask"] == "Sender"

    to_party = recipients.entities[0]
    assert to_party.attributes["partyid"] == EntityReference(
        "queue", "64b14206-8fbb-e611-80ef-005056bd19ee"
    )
    assert to_party.attributes["participationtypemask"] == OptionSetValue(2)
    assert to_party.row_version == "147059705"
    assert to_json(recipients) == [
        {"logical_name": "activityparty", "id": "871579d9-7e63-ef11-9e4a-00155d0001ea"}
    ]


# --- FormattedValues and RowVersion --------------------------------------------------------------


def test_formatted_values() -> None:
    target = _target(ALLFIELDS)
    assert target.formatted_values["statecode"] == "Active"
    assert target.formatted_values["shko_choices"] == "One; Two"
    assert target.formatted_values["shko_datetime"] == "2023-10-17T09:00:00+02:00"
    image = _context(CUSTOMACTIVITY).pre_images["Image"]
    assert image.formatted_values == {
        "statecode": "Open",
        "regardingobjectid": "Other entity name",
        "statuscode": "Open",
    }


def test_formatted_values_do_not_take_part_in_equality() -> None:
    target = _target(ALLFIELDS)
    twin = Entity(target.logical_name, target.id, dict(target.attributes))
    assert twin == target
    assert twin.formatted_values == {}


@pytest.mark.parametrize(
    ("name", "row_version"),
    [(AGENT_UPDATE, "5948260"), (CONTACT_UPDATE, None), (ALLFIELDS, None)],
)
def test_row_version(name: str, row_version: str | None) -> None:
    assert _target(name).row_version == row_version


def test_row_version_as_a_number_becomes_text() -> None:
    raw = {"Attributes": [], "Id": MAILBOX_ID, "LogicalName": "mailbox", "RowVersion": 468026}
    entity = decode_value(raw)
    assert isinstance(entity, Entity)
    assert entity.row_version == "468026"


def test_escaped_newlines_and_other_plain_values() -> None:
    attributes = _target(ALLTYPES).attributes
    assert attributes["albxrm_multiplelinesoftext"] == "sdafasf\nasdfas\nafsd"
    assert attributes["albxrm_twooptions"] is True
    assert attributes["albxrm_wholenumber"] == 987654321
    assert attributes["albxrm_dateandtime"] == _utc(2020, 12, 15, 7, 0, 0)


# --- malformed wrapped values raise ContractError with a path ------------------------------------


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"__type": f"OptionSetValue:{CONTRACTS}", "Value": "2"}, "v.Value"),
        ({"__type": f"OptionSetValue:{CONTRACTS}", "Value": True}, "v.Value"),
        ({"__type": f"OptionSetValue:{CONTRACTS}"}, "v.Value"),
        ({"__type": f"Money:{CONTRACTS}", "Value": None}, "v.Value"),
        ({"__type": f"Money:{CONTRACTS}", "Value": "lots"}, "v.Value"),
        ({"__type": f"EntityReference:{CONTRACTS}", "Id": 5, "LogicalName": "x"}, "v.Id"),
        ({"__type": f"EntityCollection:{CONTRACTS}", "Entities": {}}, "v.Entities"),
        ({"__type": f"Entity:{CONTRACTS}", "Attributes": {"a": 1}}, "v.Attributes"),
        ([option(1), {"__type": f"OptionSetValue:{CONTRACTS}", "Value": []}], "v[1].Value"),
    ],
)
def test_malformed_values_name_their_path(raw: Any, path: str) -> None:
    with pytest.raises(ContractError) as caught:
        decode_value(raw, "v")
    assert caught.value.path == path


def test_values_round_trip_through_the_parser() -> None:
    # A hand-built body with every encoding, as a sanity check of the whole path.
    body = dumps(
        {
            "MessageName": "Create",
            "PrimaryEntityName": "x",
            "PrimaryEntityId": "6d81597f-0f9f-e711-8122-000d3aa2331c",
            "OrganizationId": "00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
            "InputParameters": [
                {
                    "key": "Target",
                    "value": {
                        "__type": f"Entity:{CONTRACTS}",
                        "Attributes": [
                            {"key": "a", "value": option(2)},
                            {"key": "b", "value": [option(2), option(1)]},
                            {"key": "c", "value": {"__type": f"Money:{CONTRACTS}", "Value": 1.5}},
                            {"key": "d", "value": None},
                        ],
                        "Id": "6d81597f-0f9f-e711-8122-000d3aa2331c",
                        "LogicalName": "x",
                    },
                }
            ],
        }
    )
    target = parse_ok(body).target
    assert isinstance(target, Entity)
    assert dict(target.attributes) == {
        "a": OptionSetValue(2),
        "b": OptionSetValues(frozenset({1, 2})),
        "c": Money(Decimal("1.5")),
        "d": None,
    }
