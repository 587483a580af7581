"""Real-shaped mailbox messages: what a Dataverse service endpoint posts for a mailbox change.

No public capture of a mailbox event exists, so these follow the real async Update captures in
shared/reference/dataverse-samples exactly (key order, contract type names, the automatic
AsynchronousStepPrimaryName image, a ParentContext carrying the original request) with the
mailbox table's columns. The sandbox turns every write into one of these, as Dataverse would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
PRE_IMAGE = "guardrails_pre"
_REFERENCE_COLUMNS = {
    "emailserverprofile": "emailserverprofile",
    "ownerid": "systemuser",
    "modifiedby": "systemuser",
    "createdby": "systemuser",
}
_CHOICE_COLUMNS = frozenset(
    {
        "incomingemaildeliverymethod",
        "outgoingemaildeliverymethod",
        "actdeliverymethod",
        "emailrouteraccessapproval",
        "statecode",
        "statuscode",
    }
)


def _date(when: datetime) -> str:
    return f"/Date({int(when.timestamp() * 1000)})/"


def reference(logical_name: str, entity_id: str, name: str | None = None) -> dict[str, Any]:
    return {
        "__type": f"EntityReference:{CONTRACTS}",
        "Id": entity_id,
        "KeyAttributes": [],
        "LogicalName": logical_name,
        "Name": name,
        "RowVersion": None,
    }


def encode(column: str, value: Any) -> Any:
    """A mailbox column's value as the contract serializes it."""
    if value is None:
        return None
    if column in _CHOICE_COLUMNS:
        return {"__type": f"OptionSetValue:{CONTRACTS}", "Value": int(value)}
    if column == "regardingobjectid" and isinstance(value, tuple):
        return reference(value[0], value[1])
    if column in _REFERENCE_COLUMNS and isinstance(value, str):
        return reference(_REFERENCE_COLUMNS[column], value)
    if isinstance(value, datetime):
        return _date(value)
    return value


def _pairs(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": encode(key, value)} for key, value in values.items()]


def _entity(
    mailbox_id: str, values: Mapping[str, Any], *, typed: bool, row_version: str | None = None
) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "Attributes": _pairs(values),
        "EntityState": None,
        "FormattedValues": [],
        "Id": mailbox_id,
        "KeyAttributes": [],
        "LogicalName": "mailbox",
        "RelatedEntities": [],
        "RowVersion": row_version,
    }
    return {"__type": f"Entity:{CONTRACTS}", **entity} if typed else entity


def _context(
    *,
    message: str,
    mailbox_id: str,
    organization_id: str,
    organization_name: str,
    user_id: str,
    correlation_id: str,
    operation_id: str,
    now: datetime,
    inputs: list[dict[str, Any]],
    stage: int,
    shared: list[dict[str, Any]],
    parent: dict[str, Any] | None = None,
    pre: list[dict[str, Any]] | None = None,
    post: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "BusinessUnitId": "e2b9dd85-e89e-e711-8122-000d3aa2331c",
        "CorrelationId": correlation_id,
        "Depth": 1,
        "InitiatingUserAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
        "InitiatingUserAzureActiveDirectoryObjectId": "00000000-0000-0000-0000-000000000000",
        "InitiatingUserId": user_id,
        "InputParameters": inputs,
        "IsExecutingOffline": False,
        "IsInTransaction": stage == 30,
        "IsOfflinePlayback": False,
        "IsolationMode": 1,
        "MessageName": message,
        "Mode": 1,
        "OperationCreatedOn": _date(now),
        "OperationId": operation_id,
        "OrganizationId": organization_id,
        "OrganizationName": organization_name,
        "OutputParameters": [{"key": "id", "value": mailbox_id}] if message == "Create" else [],
        "OwningExtension": {
            "Id": "75417616-4ea2-e711-8122-000d3aa2331c",
            "KeyAttributes": [],
            "LogicalName": "sdkmessageprocessingstep",
            "Name": f"Mailbox Guardrails: {message} of mailbox"
            if stage == 40
            else "ObjectModel Implementation",
            "RowVersion": None,
        },
        "ParentContext": parent,
        "PostEntityImages": post or [],
        "PreEntityImages": pre or [],
        "PrimaryEntityId": mailbox_id,
        "PrimaryEntityName": "mailbox",
        "RequestId": operation_id if stage == 30 else None,
        "SecondaryEntityName": "none",
        "SharedVariables": shared,
        "Stage": stage,
        "UserAzureActiveDirectoryObjectId": "00000000-0000-0000-0000-000000000000",
        "UserId": user_id,
    }


def mailbox_message(
    *,
    message: str,
    mailbox_id: str,
    organization_id: str,
    user_id: str,
    changes: Mapping[str, Any],
    before: Mapping[str, Any] | None = None,
    row_version: int | str | None = None,
    tag: str | None = None,
    mailbox_name: str = "Mailbox",
    organization_name: str = "contoso",
    correlation_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The async (stage 40) context for a Create or Update of a mailbox row.

    `changes` are the columns the caller sent; `before` is the registered pre image (Update only).
    """
    now = now or datetime.now(UTC)
    correlation_id = correlation_id or str(uuid.uuid4())
    operation_id = str(uuid.uuid4())
    version = None if row_version is None else str(row_version)
    common: dict[str, Any] = {
        "message": message,
        "mailbox_id": mailbox_id,
        "organization_id": organization_id,
        "organization_name": organization_name,
        "user_id": user_id,
        "correlation_id": correlation_id,
        "operation_id": operation_id,
        "now": now,
    }
    sent = {**changes, "mailboxid": mailbox_id}
    # The async Target also carries columns the caller did not send.
    audit_columns: dict[str, Any] = {"modifiedon": now, "modifiedby": user_id}
    target = {**sent, **audit_columns, "modifiedonbehalfby": None}
    tag_variable = [{"key": "tag", "value": tag}] if tag else []
    parent = _context(
        **common,
        inputs=[
            {"key": "Target", "value": _entity(mailbox_id, sent, typed=True)},
            {"key": "SuppressDuplicateDetection", "value": False},
        ],
        stage=30,
        shared=[{"key": "IsAutoTransact", "value": True}, *tag_variable],
    )
    pre = (
        [{"key": PRE_IMAGE, "value": _entity(mailbox_id, before, typed=False)}]
        if before is not None and message == "Update"
        else []
    )
    post = [
        {
            "key": "AsynchronousStepPrimaryName",
            "value": _entity(
                mailbox_id, {"name": mailbox_name, "mailboxid": mailbox_id}, typed=False
            ),
        }
    ]
    return _context(
        **common,
        inputs=[
            {
                "key": "Target",
                "value": _entity(mailbox_id, target, typed=True, row_version=version),
            }
        ],
        stage=40,
        shared=[],
        parent=parent,
        pre=pre,
        post=post,
    )


def oversize(context: Mapping[str, Any]) -> dict[str, Any]:
    """What Dataverse posts instead when the context exceeds 192 KB."""
    dropped = {"ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages"}
    return {key: value for key, value in context.items() if key not in dropped}


def to_body(context: Mapping[str, Any]) -> bytes:
    # Dataverse's serializer escapes forward slashes; keep that so parsing sees the real bytes.
    return json.dumps(context, indent=1).replace("/", "\\/").encode("utf-8")
