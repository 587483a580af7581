"""Reading a tenant from the Dataverse Web API for the report: GETs only, page by page.

Collections are read with `Prefer: odata.maxpagesize` and `@odata.nextLink` followed unchanged
until it is absent (Dataverse has no `$skip`). Mailboxes come out as a generator, one page in
memory at a time. The directory (users, queues) is read the same way once, into dicts by id:
one request per 5,000 users instead of one per mailbox. Filtering users by the ids of each page
of mailboxes would keep memory flatter, but costs a request per ~100 ids (a URL holds no more)
and a tenant's users are about as many as its mailboxes; a `UserFacts` is a few hundred bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from guardrails.clients import dataverse
from guardrails.clients.dataverse import (
    MAILBOX_COLUMNS,
    USER_COLUMNS,
    DataverseClient,
    mailbox_state,
)
from guardrails.engine import QueueFacts, UserFacts
from guardrails.errors import PermanentServiceError
from guardrails.report.model import MailboxRow
from guardrails.report.scan import Directory
from guardrails.values import is_guid, scrub

PAGE_SIZE = 5000  # Dataverse's largest page
FORMATTED = "OData.Community.Display.V1.FormattedValue"
# Lookups' logical names (whose mailbox: a user's or a queue's) and formatted values (names),
# and no others: half the bytes of "*". OData lists terms with commas; should a service ignore
# the list, `Directory.regarding` still tells a user's mailbox from a queue's by the id.
ANNOTATIONS = (
    'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname,'
    'OData.Community.Display.V1.FormattedValue"'
)
MAILBOX_SELECT = (*MAILBOX_COLUMNS, "modifiedon", "_owningbusinessunit_value")
QUEUE_SELECT = ("queueid", "emailaddress", "name", "_ownerid_value")


def rows(
    client: DataverseClient, entity_set: str, select: tuple[str, ...], page_size: int = PAGE_SIZE
) -> Iterator[dict[str, Any]]:
    """The rows of a collection, read a page at a time, following `@odata.nextLink` as given.

    A next link is only followed to the same service: the bearer token goes nowhere else. Only
    the page being read is held (parsed once; each row scrubbed as it is handed out).
    """
    headers = {"Prefer": f"odata.maxpagesize={page_size},{ANNOTATIONS}"}
    path = entity_set
    params: dict[str, str] | None = {"$select": ",".join(select)}
    prefix = client.base_url + "/"
    while True:
        body = client.request("GET", path, params=params, headers=headers).json()
        page = body.get("value") if isinstance(body, dict) else None
        if not isinstance(page, list):
            raise PermanentServiceError(
                client.service, f"GET {entity_set} returned no 'value' list of rows"
            )
        link = body.get("@odata.nextLink")
        del body
        for row in page:
            if isinstance(row, dict):
                yield scrub(row)
        del page
        if not link:
            return
        if not isinstance(link, str) or not link.startswith(prefix):
            raise PermanentServiceError(
                client.service,
                f"GET {entity_set}: the next page's link does not point to {client.base_url}; "
                "not following it",
            )
        path, params = link[len(prefix) :], None


def _text(row: Mapping[str, Any], key: str) -> str | None:
    value = row.get(key)
    return value if isinstance(value, str) and value else None


def mailbox_rows(client: DataverseClient, page_size: int = PAGE_SIZE) -> Iterator[MailboxRow]:
    """Every mailbox row, as it stands, one page in memory at a time."""
    for row in rows(client, "mailboxes", MAILBOX_SELECT, page_size):
        yield MailboxRow(
            state=mailbox_state(row),
            modified_on=_text(row, "modifiedon"),
            business_unit=_text(row, f"_owningbusinessunit_value@{FORMATTED}"),
            modified_by_name=_text(row, f"_modifiedby_value@{FORMATTED}"),
            regarding_name=_text(row, f"_regardingobjectid_value@{FORMATTED}"),
        )


def user_facts(row: Mapping[str, Any]) -> UserFacts | None:
    """A systemusers row as the engine knows a user (the client's one reading of it)."""
    user_id = row.get("systemuserid")
    if not is_guid(user_id):
        return None
    return dataverse.user_facts(str(user_id), row)


def queue_facts(row: Mapping[str, Any]) -> QueueFacts | None:
    """A queue's own address. Its owner is kept only when a user (a team's administrator is
    not looked up: the report compares addresses, it notifies nobody)."""
    queue_id = row.get("queueid")
    if not is_guid(queue_id):
        return None
    owner = _text(row, "_ownerid_value") or ""
    owner_kind = row.get("_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname")
    return QueueFacts(
        id=str(queue_id).lower(),
        name=_text(row, "name"),
        email=_text(row, "emailaddress"),
        owner_user_id=owner.lower() if is_guid(owner) and owner_kind == "systemuser" else None,
    )


def directory(client: DataverseClient, page_size: int = PAGE_SIZE) -> Directory:
    """Every user and queue, by id: what `own_addresses` compares a mailbox's address with."""
    users: dict[str, UserFacts] = {}
    for row in rows(client, "systemusers", USER_COLUMNS, page_size):
        user = user_facts(row)
        if user is not None:
            users[user.id] = user
    queues: dict[str, QueueFacts] = {}
    for row in rows(client, "queues", QUEUE_SELECT, page_size):
        queue = queue_facts(row)
        if queue is not None:
            queues[queue.id] = queue
    return Directory(users, queues)
