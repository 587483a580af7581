"""Shared data and helpers for the pure-core tests (parser, values, mailbox view, policy, engine).

The real Dataverse payloads live beside the repository, in ../shared/reference/dataverse-samples
(locally /work/shared/..., in CI the `shared` checkout next to this one). They are required:
tests that need them fail, never skip, when they are missing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from guardrails.engine import Decision, Facts, Outcome, decide
from guardrails.mailbox import MailboxState
from guardrails.message import ExecutionContext, Rejection, parse_message
from guardrails.policy import Policy, parse_policy
from guardrails.sandbox.messages import CONTRACTS, mailbox_message, reference, to_body

CONTRACTS_NS = CONTRACTS
REPO = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO.parent / "shared" / "reference" / "dataverse-samples"
EXAMPLES = REPO / "examples"
EXAMPLE_POLICY = EXAMPLES / "policy.yaml"
EXAMPLE_MESSAGES_DIR = EXAMPLES / "messages"

# --- the real samples, by what they show --------------------------------------------------------
AGENT_CREATE = (
    "MicrosoftDocs_dynamics-365-contact-center__presence-status-sync__"
    "msdyn_agentstatus_Create_sync_webhook.json"
)
AGENT_UPDATE = (
    "MicrosoftDocs_dynamics-365-contact-center__presence-status-sync__"
    "msdyn_agentstatus_Update_async_webhook.json"
)
CONTACT_UPDATE = (
    "MicrosoftDocs_powerapps-docs__use-webhooks__contact_Update_async_webhook__"
    "anonymized-copy-via-albanian-xrm.json"
)
ACCOUNT_NON_ASCII = "albanian-xrm_PowerPlatform-Entity-Serializer__account_Create_nonASCII.json"
ACCOUNT_SAMPLE1 = (
    "albanian-xrm_PowerPlatform-Entity-Serializer__account_Update_sync_webhook_Sample1.json"
)
ALLTYPES = "albanian-xrm_PowerPlatform-Entity-Serializer__albxrm_alltypes_Create_async_Sample2.json"
CUSTOMACTIVITY = (
    "albanian-xrm_PowerPlatform-Entity-Serializer__"
    "new_customactivity_Update_async_PreImage_PostImage.json"
)
SHAREPOINT = (
    "albanian-xrm_PowerPlatform-Entity-Serializer__"
    "sharepointdocumentlocation_Create_async_onprem.json"
)
ALLFIELDS = (
    "albanian-xrm_PowerPlatform-Entity-Serializer__shko_allfields_Create_sync_allFieldTypes.json"
)
ACCOUNT_DELETE = "syncari_MSDServiceTest-java__account_Delete_sync_webhook__repo-unresolved.json"

# name -> (MessageName, PrimaryEntityName, PrimaryEntityId, OrganizationId, InitiatingUserId,
#          CorrelationId), read by hand from the files.
SAMPLES: dict[str, tuple[str, str, str, str, str, str]] = {
    AGENT_CREATE: (
        "Create",
        "msdyn_agentstatus",
        "4b1e3d75-a749-ef11-acce-00224802d26d",
        "c09254de-a911-ef11-9f83-000d3a9d3b76",
        "09eb2446-db10-ef11-9f8a-6045bdd4c6be",
        "58dc9af0-fe25-4f81-b3f3-c4cb147c2ec4",
    ),
    AGENT_UPDATE: (
        "Update",
        "msdyn_agentstatus",
        "3d1feef9-604d-ef11-bfe3-6045bd03d9d8",
        "6042beb1-a93a-ef11-8e4b-00224802c699",
        "d89254ff-9438-ef11-a315-000d3a5a54dc",
        "e1bcd028-ae87-4ca6-af27-a17ee680dbc9",
    ),
    CONTACT_UPDATE: (
        "Update",
        "contact",
        "6d81597f-0f9f-e711-8122-000d3aa2331c",
        "00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
        "11bb11bb-cc22-dd33-ee44-55ff55ff55ff",
        "aaaa0000-bb11-2222-33cc-444444dddddd",
    ),
    ACCOUNT_NON_ASCII: (
        "Create",
        "account",
        "53c52f26-a89d-ef11-8a69-000d3a30b0c1",
        "f42a590d-a29d-ef11-8a66-6045bd056902",
        "3570e963-e69c-ef11-8a6b-000d3a318589",
        "7038a274-4877-4f3f-a57a-0f4493a647c6",
    ),
    ACCOUNT_SAMPLE1: (
        "Update",
        "account",
        "ec4e2f7d-9d60-e811-a95a-000d3af24950",
        "b0714265-8e72-4d3b-8239-ecf0970a3da6",
        "df010dad-f103-4589-ba66-76a5a04c2a11",
        "39499111-e689-42a1-ae8a-5b14a84514ce",
    ),
    ALLTYPES: (
        "Create",
        "albxrm_alltypes",
        "44bfc2a7-903e-eb11-a813-000d3ad9c2e1",
        "0ba4ce62-d2d6-4681-bc25-b3bfb695d4d6",
        "a0bde583-0537-eb11-bf68-0022489b563d",
        "9d4c7524-a578-4783-b608-73f7b0b68fd2",
    ),
    CUSTOMACTIVITY: (
        "Update",
        "new_customactivity",
        "841579d9-7e63-ef11-9e4a-00155d0001ea",
        "e4032af2-cacf-4dd0-92aa-9036176934a5",
        "400075a6-19a2-49aa-8fa0-330ba2810540",
        "3860c444-0576-4d79-9877-b0ca8e4e9bd4",
    ),
    SHAREPOINT: (
        "Create",
        "sharepointdocumentlocation",
        "1e3839b3-08d4-ef11-aeb0-00155d000101",
        "f0aabb07-b0c9-4cfe-80be-8effd49bf067",
        "30c91177-9436-4042-ad53-dd966d490114",
        "01b84871-96b1-48e0-ada2-a31031966e3f",
    ),
    ALLFIELDS: (
        "Create",
        "shko_allfields",
        "6420f0cc-916b-ee11-9ae6-000d3a688809",
        "b015df52-a05f-ee11-a382-000d3a64db73",
        "c7877889-0f5f-ee11-8def-000d3adbef1f",
        "b5940787-bdf1-4d42-89aa-671ba512a488",
    ),
    ACCOUNT_DELETE: (
        "Delete",
        "account",
        "01b5eeb5-455e-ee11-be6f-000d3a1aaa29",
        "ae89a861-e7ad-41ae-a3b2-2533aa62c095",
        "3a4c38d3-fc8e-eb11-b1ac-000d3a197cea",
        "c7b26659-f936-4473-aeb0-600b53f965a7",
    ),
}
SAMPLE_NAMES = sorted(SAMPLES)


def sample_id(name: str) -> str:
    """A short test id for a sample file."""
    return name.removesuffix(".json").split("__", 1)[1]


# --- ids used by the mailbox messages the tests build ------------------------------------------
ORG = "00aa00aa-bb11-cc22-dd33-44ee44ee44ee"  # the example policy's organization
OTHER_ORG = "99ff99ff-0000-1111-2222-333333333333"
MAILBOX_ID = "5b1a3e3c-9a0e-4f43-8a4c-7f0a8f6c1d01"
USER = "11bb11bb-cc22-dd33-ee44-55ff55ff55ff"  # the user who changes the mailbox
OWNER = "66aa66aa-bb77-cc88-dd99-00ee00ee00ee"  # the user the mailbox belongs to
QUEUE = "22cc22cc-dd33-ee44-ff55-66aa66aa66aa"
ROLE_ID = "33dd33dd-ee44-ff55-aa66-77bb77bb77bb"
GUARDRAIL_USER = "77bb77bb-cc88-dd99-ee00-11ff11ff11ff"
PROFILE = "44ee44ee-ff55-aa66-bb77-88cc88cc88cc"
OTHER_PROFILE = "55ff55ff-aa66-bb77-cc88-99dd99dd99dd"

USER_MAILBOX = {"regardingobjectid": ("systemuser", OWNER)}
QUEUE_MAILBOX = {"regardingobjectid": ("queue", QUEUE)}
COMPLIANT = {
    "incomingemaildeliverymethod": 2,
    "outgoingemaildeliverymethod": 2,
    "actdeliverymethod": 1,
    "emailaddress": "owner@contoso.com",
}

BASELINE_RULES = """
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
"""


def sample_path(name: str) -> Path:
    return SAMPLES_DIR / name


def sample_bytes(name: str) -> bytes:
    path = sample_path(name)
    if not path.is_file():
        pytest.fail(f"missing real Dataverse sample {path}; check out ../shared beside the repo")
    return path.read_bytes()


def sample_json(name: str) -> dict[str, Any]:
    data = json.loads(sample_bytes(name).decode("utf-8-sig"))
    assert isinstance(data, dict)
    return data


def example_messages() -> list[Path]:
    return sorted(EXAMPLE_MESSAGES_DIR.glob("*.json"))


def parse_ok(body: bytes, **kwargs: Any) -> ExecutionContext:
    result = parse_message(body, **kwargs)
    assert isinstance(result, ExecutionContext), result
    return result


def parse_rejected(body: bytes, **kwargs: Any) -> Rejection:
    result = parse_message(body, **kwargs)
    assert isinstance(result, Rejection), result
    return result


def rejected_when_decided(body: bytes, policy: Policy | None = None) -> Decision:
    """The decision refusing a body that parses: a value is decoded (and found malformed) only
    when the decision reads it, and the rejection is then the one a parse would give."""
    context = parse_ok(body)
    decision = decide(context, policy or make_policy())
    assert decision.outcome is Outcome.REJECTED, decision
    assert (decision.patch, decision.violations, decision.mailbox_id) == ({}, (), None)
    return decision


def wrong_shape(path: str, problem: str) -> str:
    """The reason a body is refused for a value that breaks the data contract."""
    return (
        f"The body is JSON but not a valid Dataverse RemoteExecutionContext: at {path}, "
        f"{problem}. Only a Dataverse service endpoint with message format JSON should post to "
        "this queue."
    )


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode("utf-8")


def make_policy(rules: str = BASELINE_RULES, extra: str = "", org: str = ORG) -> Policy:
    """A policy from YAML text, as an admin would write it."""
    text = f"version: 1\norganization:\n  id: {org}\n  name: Contoso\nrules:{rules}\n{extra}"
    return parse_policy(text, "test-policy.yaml")


def mailbox(
    *,
    message: str = "Update",
    changes: Mapping[str, Any],
    before: Mapping[str, Any] | None = None,
    user: str = USER,
    org: str = ORG,
    **kwargs: Any,
) -> dict[str, Any]:
    """A real-shaped async mailbox message (a dict), through the sandbox's builder."""
    return mailbox_message(
        message=message,
        mailbox_id=MAILBOX_ID,
        organization_id=org,
        user_id=user,
        changes=changes,
        before=before,
        **kwargs,
    )


def mailbox_context(**kwargs: Any) -> ExecutionContext:
    return parse_ok(to_body(mailbox(**kwargs)))


def decide_mailbox(
    policy: Policy,
    facts: Facts | None = None,
    state: MailboxState | None = None,
    **kwargs: Any,
) -> Decision:
    return decide(mailbox_context(**kwargs), policy, facts, state)


def target_of(context: Mapping[str, Any]) -> dict[str, Any]:
    """The Target entity dict of a context dict (to edit a built message)."""
    for pair in context["InputParameters"]:
        if pair["key"] == "Target":
            value = pair["value"]
            assert isinstance(value, dict)
            return value
    raise AssertionError("no Target")


def set_attribute(entity: dict[str, Any], key: str, value: Any) -> None:
    attributes = entity["Attributes"]
    for pair in attributes:
        if pair["key"] == key:
            pair["value"] = value
            return
    attributes.append({"key": key, "value": value})


def option(value: int) -> dict[str, Any]:
    return {"__type": f"OptionSetValue:{CONTRACTS}", "Value": value}


def entity_reference(logical_name: str, entity_id: str, name: str | None = None) -> dict[str, Any]:
    return reference(logical_name, entity_id, name)


def as_mailbox_event(name: str) -> dict[str, Any]:
    """A real sample re-labelled as an event of the example organization's mailbox table."""
    data = copy.deepcopy(sample_json(name))
    for context in walk_contexts(data):
        context["PrimaryEntityName"] = "mailbox"
        context["OrganizationId"] = ORG
    return data


def walk_contexts(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    current: dict[str, Any] | None = data
    while isinstance(current, dict):
        yield current
        current = current.get("ParentContext")


@pytest.fixture(scope="session")
def example_policy() -> Policy:
    from guardrails.policy import load_policy

    return load_policy(EXAMPLE_POLICY)


@pytest.fixture(scope="session")
def baseline() -> Policy:
    return make_policy()
