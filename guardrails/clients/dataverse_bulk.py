"""Dataverse in bulk, for the sweep: paged reads, directory look-ups by the page, `$batch` writes.

Paging follows `@odata.nextLink` unchanged with `Prefer: odata.maxpagesize`, yielding row by row
and letting each page go before the next is read, so memory stays flat in the number of
mailboxes (about one page: its body, its text while parsed, and its rows). Directory look-ups
take ids a page at a time and ask for them with one filtered request per chunk, never one
request per mailbox. A `$batch` carries up to 1,000 operations in one request (it counts once
against the request limit); each write in it is conditional (`If-Match`) and answered on its own.
"""

from __future__ import annotations

import codecs
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import requests

from guardrails.clients.dataverse import (
    LOOKUP_ANNOTATION,
    MAILBOX_COLUMNS,
    USER_COLUMNS,
    DataverseClient,
    key,
    mailbox_state,
    queue_facts,
    user_facts,
)
from guardrails.engine import QueueFacts, UserFacts
from guardrails.errors import PermanentServiceError
from guardrails.mailbox import GUARDRAIL_TAG, MailboxState
from guardrails.values import is_guid, scrub

MAX_PAGE_SIZE = 5000
MAX_BATCH = 1000
_ID_CHUNK = 100  # ids per filtered look-up: a URL of about 6 KB, well under the limits
_ANNOTATIONS = f'odata.include-annotations="{LOOKUP_ANNOTATION}"'
# A JSON escape of a UTF-16 surrogate (U+D800-U+DFFF), lone or half of a pair.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def iter_rows(
    client: DataverseClient,
    entity_set: str,
    *,
    select: Sequence[str],
    filter: str | None = None,
    page_size: int = MAX_PAGE_SIZE,
) -> Iterator[dict[str, Any]]:
    """Every row of a query, page by page; the next page is fetched only when needed."""
    params: dict[str, str] | None = {"$select": ",".join(select)}
    if filter:
        assert params is not None
        params["$filter"] = filter
    path: str | None = entity_set
    headers = {"Prefer": f"odata.maxpagesize={min(page_size, MAX_PAGE_SIZE)},{_ANNOTATIONS}"}
    while path is not None:
        rows, path = _page(client.request("GET", path, params=params, headers=headers))
        params = None
        yield from rows
        del rows  # one page in memory: this one goes before the next is read


def _page(response: requests.Response) -> tuple[list[dict[str, Any]], str | None]:
    """A page's rows and its next link, lone surrogates replaced (see `scrub`).

    A page that cannot hold one is used as parsed: no copy of every string of 5,000 rows, and
    the key strings the parser shares between rows stay shared (see `_may_hold_surrogates`).
    """
    data = response.json()
    if _may_hold_surrogates(response):
        data = scrub(data)
    rows = [row for row in data.get("value", ()) if isinstance(row, dict)]
    link = data.get("@odata.nextLink")
    return rows, link if isinstance(link, str) else None


def _may_hold_surrogates(response: requests.Response) -> bool:
    """Whether the parsed body may hold a lone surrogate.

    Text that requests decoded as UTF-8 (the charset Dataverse names; undecodable bytes become
    U+FFFD) holds none, so only a `\\uD800`-`\\uDFFF` escape can put one in the parsed body.
    Any other charset, or none (requests may then guess one), is not vouched for.
    """
    try:
        utf8 = response.encoding is not None and codecs.lookup(response.encoding).name == "utf-8"
    except LookupError:
        utf8 = False
    return not utf8 or _SURROGATE_ESCAPE.search(response.content) is not None


def iter_mailboxes(
    client: DataverseClient, *, filter: str | None, page_size: int = MAX_PAGE_SIZE
) -> Iterator[MailboxState]:
    for row in iter_rows(
        client, "mailboxes", select=MAILBOX_COLUMNS, filter=filter, page_size=page_size
    ):
        yield mailbox_state(row)


def _chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for entity_id in sorted({i.lower() for i in ids if is_guid(i)}):
        chunk.append(entity_id)
        if len(chunk) == _ID_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def users(client: DataverseClient, ids: Iterable[str]) -> dict[str, UserFacts]:
    """The directory entries of these users (owners of mailboxes a page found drifting)."""
    found: dict[str, UserFacts] = {}
    for chunk in _chunks(ids):
        clause = " or ".join(f"systemuserid eq {key(i, 'a user')}" for i in chunk)
        for row in iter_rows(client, "systemusers", select=USER_COLUMNS, filter=clause):
            user_id = str(row.get("systemuserid", "")).lower()
            found[user_id] = user_facts(user_id, row)
    return found


def queues(client: DataverseClient, ids: Iterable[str]) -> dict[str, QueueFacts]:
    """Queues with their addresses and the user answerable for each (a team's administrator)."""
    rows: list[dict[str, Any]] = []
    for chunk in _chunks(ids):
        clause = " or ".join(f"queueid eq {key(i, 'a queue')}" for i in chunk)
        rows.extend(
            iter_rows(
                client,
                "queues",
                select=("queueid", "name", "emailaddress", "_ownerid_value"),
                filter=clause,
            )
        )
    teams = {
        str(row["_ownerid_value"]).lower()
        for row in rows
        if row.get(f"_ownerid_value@{LOOKUP_ANNOTATION}") == "team" and row.get("_ownerid_value")
    }
    admins: dict[str, str | None] = {}
    for chunk in _chunks(teams):
        clause = " or ".join(f"teamid eq {key(i, 'a team')}" for i in chunk)
        for row in iter_rows(
            client, "teams", select=("teamid", "_administratorid_value"), filter=clause
        ):
            admin = row.get("_administratorid_value")
            admins[str(row.get("teamid", "")).lower()] = (
                admin.lower() if isinstance(admin, str) and is_guid(admin) else None
            )
    found: dict[str, QueueFacts] = {}
    for row in rows:
        owner = row.get("_ownerid_value")
        owner_id = owner.lower() if isinstance(owner, str) and is_guid(owner) else None
        if row.get(f"_ownerid_value@{LOOKUP_ANNOTATION}") == "team" and owner_id:
            owner_id = admins.get(owner_id)
        queue_id = str(row.get("queueid", "")).lower()
        found[queue_id] = queue_facts(queue_id, row, owner_id)
    return found


@dataclass(frozen=True, slots=True)
class BatchWrite:
    mailbox_id: str
    body: Mapping[str, object]
    etag: str


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One operation's answer: 200/204 with the row as written, 412, or another error."""

    status: int
    state: MailboxState | None = None
    error: str | None = None


def batch_update(client: DataverseClient, writes: Sequence[BatchWrite]) -> list[BatchOutcome]:
    """Conditional PATCHes in one `$batch` (each independent, continue-on-error)."""
    if not writes:
        return []
    if len(writes) > MAX_BATCH:
        raise ValueError(f"a $batch holds at most {MAX_BATCH} operations, got {len(writes)}")
    boundary = f"batch_{uuid.uuid4()}"
    select = ",".join(MAILBOX_COLUMNS)
    parts: list[str] = []
    for write in writes:
        target = (
            f"{client.base_url}/mailboxes({key(write.mailbox_id, 'a mailbox')})"
            f"?tag={GUARDRAIL_TAG}&$select={select}"
        )
        parts.append(
            f"--{boundary}\r\nContent-Type: application/http\r\n"
            "Content-Transfer-Encoding: binary\r\n\r\n"
            f"PATCH {target} HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"If-Match: {write.etag}\r\nPrefer: return=representation,{_ANNOTATIONS}\r\n\r\n"
            f"{json.dumps(dict(write.body))}\r\n"
        )
    parts.append(f"--{boundary}--\r\n")
    response = client.request(
        "POST",
        "$batch",
        data="".join(parts).encode("utf-8"),
        headers={
            "Content-Type": f'multipart/mixed; boundary="{boundary}"',
            "Prefer": "odata.continue-on-error",
        },
        expect=(200,),
        repeatable=False,
    )
    outcomes = _parse_batch(response.headers.get("Content-Type", ""), response.content)
    if len(outcomes) != len(writes):
        raise PermanentServiceError(
            "Dataverse", f"$batch answered {len(outcomes)} parts for {len(writes)} operations"
        )
    return outcomes


def _parse_batch(content_type: str, content: bytes) -> list[BatchOutcome]:
    message = BytesParser(policy=email_policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + content
    )
    outcomes: list[BatchOutcome] = []
    for part in message.iter_parts():
        assert isinstance(part, EmailMessage)
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        head, _, body = payload.decode("utf-8", "replace").partition("\r\n\r\n")
        status = int(head.split("\r\n", 1)[0].split()[1])
        if status in (200, 204):
            data = scrub(json.loads(body)) if body.strip() else None
            state = mailbox_state(data) if isinstance(data, dict) else None
            outcomes.append(BatchOutcome(status, state))
        else:
            try:
                error = json.loads(body).get("error", {}).get("message")
            except ValueError:
                error = body.strip()[:300] or None
            outcomes.append(BatchOutcome(status, None, str(error)))
    return outcomes


__all__ = [
    "MAX_BATCH",
    "MAX_PAGE_SIZE",
    "BatchOutcome",
    "BatchWrite",
    "batch_update",
    "iter_mailboxes",
    "iter_rows",
    "queues",
    "users",
]
