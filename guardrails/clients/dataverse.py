"""Dataverse Web API v9.2: the only place the guardrail talks to Dataverse.

Reads that rarely change (who the app is, users, their roles, the organization's email settings)
are cached for a few minutes, so a burst of events costs one look-up each, not one per message.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import requests

from guardrails.clients.auth import TokenProvider
from guardrails.clients.http import ApiClient, RetryPolicy
from guardrails.clients.pacing import DATAVERSE_BUDGET, Pacer
from guardrails.engine import QueueFacts, UserFacts
from guardrails.errors import PermanentServiceError
from guardrails.mailbox import GUARDRAIL_TAG, Column, MailboxState
from guardrails.once import Once
from guardrails.values import EntityReference, Value, is_guid, scrub

API = "api/data/v9.2"
LOOKUP_ANNOTATION = "Microsoft.Dynamics.CRM.lookuplogicalname"
_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
}
MAILBOX_COLUMNS = (
    "mailboxid",
    "name",
    "emailaddress",
    "incomingemaildeliverymethod",
    "outgoingemaildeliverymethod",
    "actdeliverymethod",
    "emailrouteraccessapproval",
    "_emailserverprofile_value",
    "_regardingobjectid_value",
    "_ownerid_value",
    "_modifiedby_value",
    "versionnumber",
)
_EMAIL_SETTING = {
    Column.INCOMING: "IncomingEmailDeliveryMethod",
    Column.OUTGOING: "OutgoingEmailDeliveryMethod",
    Column.ACT: "ACTDeliveryMethod",
}

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._items: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V]) -> V:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] > self._clock():
                return hit[1]
        value = load()
        with self._lock:
            self._items[key] = (self._clock() + self._ttl, value)
        return value


@dataclass(frozen=True, slots=True)
class WhoAmI:
    user_id: str
    business_unit_id: str
    organization_id: str


def etag_for(row_version: str) -> str:
    return f'W/"{row_version}"'


def _lookup(row: Mapping[str, Any], column: str) -> EntityReference | None:
    value = row.get(f"_{column}_value")
    if not isinstance(value, str):
        return None
    logical = row.get(f"_{column}_value@{LOOKUP_ANNOTATION}")
    return EntityReference(logical if isinstance(logical, str) else "", value.lower())


def mailbox_state(row: Mapping[str, Any]) -> MailboxState:
    """A Web API mailbox row -> the typed state decisions use."""
    values: dict[Column, Value] = {}
    for column in (Column.INCOMING, Column.OUTGOING, Column.ACT, Column.EMAIL):
        if column.value in row:
            values[column] = row[column.value]
    if "_emailserverprofile_value" in row:
        profile = _lookup(row, "emailserverprofile")
        values[Column.SERVER_PROFILE] = (
            EntityReference("emailserverprofile", profile.id) if profile else None
        )
    regarding = _lookup(row, "regardingobjectid")
    owner = _lookup(row, "ownerid")
    modified_by = _lookup(row, "modifiedby")
    name = row.get("name")
    etag = row.get("@odata.etag")
    version = row.get("versionnumber")
    approval = row.get("emailrouteraccessapproval")
    return MailboxState(
        mailbox_id=str(row.get("mailboxid", "")).lower(),
        values=values,
        etag=etag if isinstance(etag, str) else None,
        regarding=regarding,
        owner=owner,
        name=name if isinstance(name, str) else None,
        modified_by=modified_by.id if modified_by else None,
        version=str(version) if isinstance(version, int | str) else None,
        approval=approval if isinstance(approval, int) else None,
    )


# What the engine knows of a user, and the one reading of a `systemusers` row into it.
USER_COLUMNS = (
    "systemuserid",
    "fullname",
    "internalemailaddress",
    "domainname",
    "isdisabled",
    "accessmode",
)


def user_facts(user_id: str, row: Mapping[str, Any]) -> UserFacts:
    """A `systemusers` row as the engine knows a user, for a single read or a page of them."""
    email = row.get("internalemailaddress") or None
    upn = row.get("domainname") or None
    disabled = bool(row.get("isdisabled"))
    return UserFacts(
        id=user_id.lower(),
        email=str(email) if email else None,
        name=row.get("fullname") or upn,
        upn=str(upn) if upn else None,
        disabled=disabled,
        # 0 Read-Write, 1 Administrative: people. 3 Support, 4 Non-interactive: not.
        interactive=row.get("accessmode", 0) in (0, 1) and not disabled,
    )


def queue_facts(queue_id: str, row: Mapping[str, Any], owner_user_id: str | None) -> QueueFacts:
    """A `queues` row with the user answerable for it (resolved by the caller for a team)."""
    name, email = row.get("name"), row.get("emailaddress")
    return QueueFacts(
        id=queue_id,
        name=name if isinstance(name, str) else None,
        email=email if isinstance(email, str) and email else None,
        owner_user_id=owner_user_id,
    )


def _body(response: requests.Response) -> Any:
    """A response's JSON with lone surrogates replaced: names and addresses are typed by
    people, and every later output (logs, tables, mail) must be able to encode them."""
    return scrub(response.json())


def key(entity_id: str, what: str) -> str:
    """A row id as it goes into a URL: a GUID, or nothing is sent.

    The parser already refuses messages whose ids are not GUIDs; this is the second line, at the
    one place ids become URLs, so no caller can send a path like `x)/other?$select=...`.
    """
    if not is_guid(entity_id):
        raise PermanentServiceError(
            "Dataverse",
            f"refusing to request {what} with an id that is not a GUID: {entity_id[:60]!r}",
        )
    return entity_id.lower()


def parse_email_settings(xml: str | None) -> dict[Column, int]:
    """organization.defaultemailsettings; its exact online format is unconfirmed, so tolerant."""
    found: dict[Column, int] = {}
    for column, element in _EMAIL_SETTING.items():
        match = re.search(rf"<{element}>\s*(\d+)\s*</{element}>", xml or "", re.IGNORECASE)
        if match:
            found[column] = int(match.group(1))
    return found


class DataverseClient(ApiClient):
    service = "Dataverse"
    budget_headers = DATAVERSE_BUDGET

    def __init__(
        self,
        base_url: str,
        *,
        tokens: TokenProvider,
        session: requests.Session,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        cache_ttl: float = 300.0,
        pacer: Pacer | None = None,
    ) -> None:
        super().__init__(
            f"{base_url.rstrip('/')}/{API}",
            scope=f"{base_url.rstrip('/')}/.default",
            tokens=tokens,
            session=session,
            timeout=timeout,
            retry=retry,
            sleep=sleep,
            default_headers=_HEADERS,
            pacer=pacer,
        )
        self._whoami: Once[WhoAmI] = Once()
        self._users: TtlCache[str, UserFacts] = TtlCache(cache_ttl)
        self._roles: TtlCache[str, tuple[frozenset[str], frozenset[str]]] = TtlCache(cache_ttl)
        self._org: TtlCache[str, dict[Column, int | str]] = TtlCache(cache_ttl)
        self._queues: TtlCache[str, QueueFacts] = TtlCache(cache_ttl)

    @property
    def known_user_id(self) -> str | None:
        """The app's own systemuserid if WhoAmI was already answered (never a request)."""
        known = self._whoami.known
        return known.user_id if known is not None else None

    def whoami(self) -> WhoAmI:
        """The app's own systemuserid; it never changes while the process lives (one request per
        process, however many messages and sweeps ask at once)."""
        return self._whoami.get(self._ask_whoami)

    def _ask_whoami(self) -> WhoAmI:
        data = _body(self.request("GET", "WhoAmI"))
        return WhoAmI(
            user_id=str(data["UserId"]).lower(),
            business_unit_id=str(data.get("BusinessUnitId", "")).lower(),
            organization_id=str(data.get("OrganizationId", "")).lower(),
        )

    def get_mailbox(self, mailbox_id: str) -> MailboxState:
        response = self.request(
            "GET",
            f"mailboxes({key(mailbox_id, 'a mailbox')})",
            params={"$select": ",".join(MAILBOX_COLUMNS)},
            headers={"Prefer": f'odata.include-annotations="{LOOKUP_ANNOTATION}"'},
        )
        state = mailbox_state(_body(response))
        if state.etag is None:
            raise PermanentServiceError(
                self.service, f"mailbox {mailbox_id} was returned without an @odata.etag"
            )
        return state

    def update_mailbox(
        self,
        mailbox_id: str,
        body: Mapping[str, object],
        *,
        etag: str,
        tag: str = GUARDRAIL_TAG,
    ) -> MailboxState:
        """PATCH only `body`; If-Match makes a concurrent change a 412 instead of a lost update.

        The row comes back (`Prefer: return=representation`) so the next write, an approval,
        can be conditional on exactly the version this one produced. `tag` shows the write in
        Dataverse's traces; it proves nothing, so the guardrail never relies on it.
        """
        response = self.request(
            "PATCH",
            f"mailboxes({key(mailbox_id, 'a mailbox')})",
            params={"tag": tag, "$select": ",".join(MAILBOX_COLUMNS)},
            json=dict(body),
            headers={
                "If-Match": etag,
                "Content-Type": "application/json",
                "Prefer": f'return=representation,odata.include-annotations="{LOOKUP_ANNOTATION}"',
            },
            expect=(204, 200),
            repeatable=False,
        )
        if response.status_code == 204 or not response.content:
            return MailboxState(mailbox_id=mailbox_id, values={})  # no representation: no ETag
        return mailbox_state(_body(response))

    def get_user(self, user_id: str, *, with_roles: bool = False) -> UserFacts:
        user_id = key(user_id, "a user")
        user = self._users.get(user_id, lambda: self._load_user(user_id))
        if not with_roles:
            return user
        role_ids, role_names = self._roles.get(user_id, lambda: self._load_roles(user_id))
        return replace(user, role_ids=role_ids, role_names=role_names)

    def _load_user(self, user_id: str) -> UserFacts:
        data = _body(
            self.request(
                "GET",
                f"systemusers({user_id})",
                params={"$select": ",".join(USER_COLUMNS[1:])},
            )
        )
        return user_facts(user_id, data)

    def _load_roles(self, user_id: str) -> tuple[frozenset[str], frozenset[str]]:
        data = _body(
            self.request(
                "GET",
                f"systemusers({user_id})/systemuserroles_association",
                params={"$select": "name,roleid"},
            )
        )
        rows = [row for row in data.get("value", []) if isinstance(row, dict)]
        return (
            frozenset(str(row["roleid"]).lower() for row in rows if row.get("roleid")),
            frozenset(str(row["name"]).lower() for row in rows if row.get("name")),
        )

    def get_queue(self, queue_id: str) -> QueueFacts:
        """A queue's own address and who answers for it (a team's administrator for a team)."""
        queue_id = key(queue_id, "a queue")
        return self._queues.get(queue_id, lambda: self._load_queue(queue_id))

    def _load_queue(self, queue_id: str) -> QueueFacts:
        row = _body(
            self.request(
                "GET",
                f"queues({queue_id})",
                params={"$select": "name,emailaddress,_ownerid_value"},
                headers={"Prefer": f'odata.include-annotations="{LOOKUP_ANNOTATION}"'},
            )
        )
        owner = _lookup(row, "ownerid")
        owner_user_id: str | None = None
        if owner is not None and owner.logical_name == "team":
            team = _body(
                self.request(
                    "GET",
                    f"teams({key(owner.id, 'a team')})",
                    params={"$select": "name,_administratorid_value"},
                )
            )
            admin = team.get("_administratorid_value")
            owner_user_id = admin.lower() if is_guid(admin) else None
        elif owner is not None:
            owner_user_id = owner.id if is_guid(owner.id) else None
        return queue_facts(queue_id, row, owner_user_id)

    def organization_defaults(self) -> dict[Column, int | str]:
        """Settings > Email > Email settings: delivery methods and the default server profile."""
        return self._org.get("org", self._load_organization)

    def _load_organization(self) -> dict[Column, int | str]:
        data = _body(
            self.request(
                "GET",
                "organizations",
                params={
                    "$select": (
                        "organizationid,defaultemailsettings,_defaultemailserverprofileid_value"
                    )
                },
            )
        )
        rows = data.get("value") or [{}]
        row = rows[0]
        defaults: dict[Column, int | str] = dict(
            parse_email_settings(row.get("defaultemailsettings"))
        )
        profile = row.get("_defaultemailserverprofileid_value")
        if isinstance(profile, str):
            defaults[Column.SERVER_PROFILE] = profile.lower()
        return defaults
