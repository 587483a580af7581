"""The Dataverse simulator, driven over real HTTPS with ``requests``."""

from __future__ import annotations

import email.policy
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
import requests

from guardrails.sandbox import (
    DataverseError,
    DataverseSimulator,
    IdentitySimulator,
    PendingWrite,
    SandboxTLS,
    WriteEvent,
    email_settings_xml,
)
from guardrails.sandbox.environment import Sandbox

pytestmark = pytest.mark.integration

TENANT = "11111111-1111-1111-1111-111111111111"
CLIENT = "22222222-2222-2222-2222-222222222222"
SECRET = "guardrails-secret"
DRIFT_FILTER = (
    "incomingemaildeliverymethod ne 2 or outgoingemaildeliverymethod ne 2 or actdeliverymethod ne 1"
)


@dataclass
class Org:
    dv: DataverseSimulator
    idp: IdentitySimulator
    idp_session: requests.Session
    session: requests.Session
    app_user: str
    alice: str
    admin: str
    mailbox: str

    @property
    def api(self) -> str:
        return self.dv.api_url

    def token(self) -> str:
        response = self.idp_session.post(
            self.idp.token_endpoint(TENANT),
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT,
                "client_secret": SECRET,
                "scope": f"{self.dv.url}/.default",
            },
            timeout=5,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def authorize(self) -> None:
        self.session.headers["Authorization"] = f"Bearer {self.token()}"

    def get_mailbox(self, mailbox_id: str, select: str | None = None) -> dict[str, Any]:
        params = {"$select": select} if select else None
        response = self.session.get(f"{self.api}/mailboxes({mailbox_id})", params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
def tls() -> Iterator[SandboxTLS]:
    with SandboxTLS() as sandbox_tls:
        yield sandbox_tls


@pytest.fixture(scope="module")
def idp(tls: SandboxTLS) -> Iterator[IdentitySimulator]:
    with IdentitySimulator(tls) as simulator:
        simulator.register_app(TENANT, CLIENT, secret=SECRET)
        yield simulator
        assert simulator.errors == [], simulator.errors


@pytest.fixture(scope="module")
def idp_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def org(
    tls: SandboxTLS,
    idp: IdentitySimulator,
    idp_session: requests.Session,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Org]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_bundle_path()))
    dv = DataverseSimulator(tls, organization_name="Contoso")
    dv.token_validator = idp.validator(dv.url)
    app_user = dv.add_user(
        fullname="# Mailbox Guardrails", internalemailaddress=None, applicationid=CLIENT
    )
    alice = dv.add_user(fullname="Alice Adams", internalemailaddress="alice@contoso.com")
    admin = dv.add_user(
        fullname="Ada Admin",
        internalemailaddress="ada@contoso.com",
        roles=["System Administrator"],
    )
    mailbox = dv.add_mailbox(owner_user_id=alice, emailaddress="alice@contoso.com")
    session = requests.Session()
    session.headers.update(
        {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
    )
    state = Org(dv, idp, idp_session, session, app_user, alice, admin, mailbox)
    state.authorize()
    try:
        yield state
    finally:
        session.close()
        dv.close()
        assert dv.errors == [], dv.errors


def test_whoami_reports_the_application_user_mapped_from_the_token(org: Org) -> None:
    for path in ("WhoAmI", "WhoAmI()"):
        response = org.session.get(f"{org.api}/{path}")
        assert response.status_code == 200
        body = response.json()
        assert body["UserId"] == org.app_user
        assert body["OrganizationId"] == org.dv.organization_id
        assert body["BusinessUnitId"] == org.dv.business_unit_id
        assert body["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse")
        assert response.headers["OData-Version"] == "4.0"


def test_client_without_application_user_gets_403(org: Org) -> None:
    other = "33333333-3333-3333-3333-333333333333"
    org.idp.register_app(TENANT, other, secret="other")
    token = org.idp_session.post(
        org.idp.token_endpoint(TENANT),
        data={
            "grant_type": "client_credentials",
            "client_id": other,
            "client_secret": "other",
            "scope": f"{org.dv.url}/.default",
        },
        timeout=5,
    ).json()["access_token"]
    response = org.session.get(f"{org.api}/WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "0x80072560"


def test_retrieve_returns_selected_columns_and_weak_etag(org: Org) -> None:
    response = org.session.get(
        f"{org.api}/mailboxes({org.mailbox})",
        params={"$select": "emailaddress,incomingemaildeliverymethod,_regardingobjectid_value"},
    )
    assert response.status_code == 200
    body = response.json()
    version = org.dv.mailbox(org.mailbox)["versionnumber"]
    assert body["@odata.etag"] == f'W/"{version}"'
    assert response.headers["ETag"] == f'W/"{version}"'
    assert response.headers["Content-Type"].startswith("application/json; odata.metadata=minimal")
    assert {k for k in body if not k.startswith("@")} == {
        "emailaddress",
        "incomingemaildeliverymethod",
        "_regardingobjectid_value",
        "mailboxid",
    }
    assert body["_regardingobjectid_value"] == org.alice
    assert body["@odata.context"] == (
        f"{org.api}/$metadata#mailboxes(emailaddress,incomingemaildeliverymethod,"
        "_regardingobjectid_value)/$entity"
    )


def test_annotations_only_when_requested_with_prefer(org: Org) -> None:
    plain = org.get_mailbox(org.mailbox, "_regardingobjectid_value,incomingemaildeliverymethod")
    assert not any("@Microsoft.Dynamics.CRM" in key for key in plain)
    response = org.session.get(
        f"{org.api}/mailboxes({org.mailbox})",
        params={"$select": "_regardingobjectid_value,incomingemaildeliverymethod"},
        headers={"Prefer": 'odata.include-annotations="*"'},
    )
    body = response.json()
    assert body["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == (
        "systemuser"
    )
    assert body["_regardingobjectid_value@OData.Community.Display.V1.FormattedValue"] == (
        "Alice Adams"
    )
    assert body["incomingemaildeliverymethod@OData.Community.Display.V1.FormattedValue"] == (
        "Server-Side Synchronization or Email Router"
    )
    assert response.headers["Preference-Applied"] == 'odata.include-annotations="*"'


def test_queue_mailbox_regarding_is_a_queue(org: Org) -> None:
    queue = org.dv.add_queue(name="Support", emailaddress="support@contoso.com")
    mailbox = org.dv.add_mailbox(queue_id=queue, emailaddress="support@contoso.com")
    response = org.session.get(
        f"{org.api}/mailboxes({mailbox})",
        params={"$select": "_regardingobjectid_value,_ownerid_value"},
        headers={"Prefer": 'odata.include-annotations="Microsoft.Dynamics.CRM.*"'},
    )
    body = response.json()
    assert body["_regardingobjectid_value"] == queue
    assert body["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "queue"
    assert body["_regardingobjectid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == (
        "regardingobjectid_queue"
    )
    assert body["_ownerid_value"] == org.dv.system_user_id


def test_patch_with_current_etag_commits_and_notifies_listeners(org: Org) -> None:
    events: list[WriteEvent] = []
    org.dv.add_write_listener(events.append)
    org.dv.update_mailbox_as(org.alice, org.mailbox, {"incomingemaildeliverymethod": 3})
    etag = org.get_mailbox(org.mailbox, "incomingemaildeliverymethod")["@odata.etag"]

    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        params={"tag": "guardrails"},
        json={"incomingemaildeliverymethod": 2},
        headers={"If-Match": etag},
    )

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert response.headers["OData-EntityId"] == f"{org.api}/mailboxes({org.mailbox})"
    row = org.dv.mailbox(org.mailbox)
    assert row["incomingemaildeliverymethod"] == 2
    assert row["_modifiedby_value"] == org.app_user
    assert f'W/"{row["versionnumber"]}"' != etag
    assert row["modifiedon"].endswith("Z")
    assert [e.source for e in events] == ["direct", "webapi"]
    user_event, guard_event = events
    assert user_event.user_id == org.alice
    assert user_event.changes == {"incomingemaildeliverymethod": 3}
    assert user_event.previous == {"incomingemaildeliverymethod": 2}
    assert guard_event.user_id == org.app_user
    assert guard_event.tag == "guardrails"
    assert guard_event.changes == {"incomingemaildeliverymethod": 2}
    assert guard_event.previous == {"incomingemaildeliverymethod": 3}
    assert guard_event.versionnumber == row["versionnumber"] > user_event.versionnumber
    assert guard_event.before["incomingemaildeliverymethod"] == 3
    assert guard_event.after == row
    assert org.dv.writes == events
    assert org.dv.count("PATCH", "mailboxes") == 1
    assert org.dv.listener_errors == []


def test_stale_if_match_gets_412_and_leaves_the_row_alone(org: Org) -> None:
    stale = org.get_mailbox(org.mailbox)["@odata.etag"]
    org.dv.update_mailbox_as(org.admin, org.mailbox, {"actdeliverymethod": 2})
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        json={"actdeliverymethod": 1},
        headers={"If-Match": stale},
    )
    assert response.status_code == 412
    assert response.json() == {
        "error": {
            "code": "0x80060882",
            "message": "The version of the existing record doesn't match the RowVersion "
            "property provided.",
        }
    }
    assert org.dv.mailbox(org.mailbox)["actdeliverymethod"] == 2
    assert len(org.dv.writes) == 1


def test_before_write_hook_lets_a_concurrent_change_win(org: Org) -> None:
    seen: list[PendingWrite] = []

    def admin_changes_first(pending: PendingWrite) -> None:
        seen.append(pending)
        org.dv.update_mailbox_as(org.admin, pending.mailbox_id, {"outgoingemaildeliverymethod": 0})

    remove = org.dv.before_write(admin_changes_first)
    etag = org.get_mailbox(org.mailbox)["@odata.etag"]
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})?tag=guardrails",
        json={"incomingemaildeliverymethod": 2},
        headers={"If-Match": etag},
    )
    assert response.status_code == 412
    assert seen == [
        PendingWrite(
            org.mailbox, org.app_user, {"incomingemaildeliverymethod": 2}, "guardrails", etag
        )
    ]
    assert [e.user_id for e in org.dv.writes] == [org.admin]
    assert org.dv.mailbox(org.mailbox)["outgoingemaildeliverymethod"] == 0

    remove()
    fresh = org.get_mailbox(org.mailbox)["@odata.etag"]
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        json={"outgoingemaildeliverymethod": 2},
        headers={"If-Match": fresh},
    )
    assert response.status_code == 204
    assert len(seen) == 1


def test_missing_rows_give_404_with_odata_body(org: Org) -> None:
    missing = "00000000-0000-0000-0000-00000000abcd"
    response = org.session.get(f"{org.api}/mailboxes({missing})")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "0x80040217", "message": f"mailbox With Id = {missing} Does Not Exist"}
    }
    for headers in ({"If-Match": "*"}, {}):
        patch = org.session.patch(
            f"{org.api}/mailboxes({missing})", json={"actdeliverymethod": 1}, headers=headers
        )
        assert patch.status_code == 404
        assert patch.json()["error"]["code"] == "0x80040217"
    unknown_user = org.session.get(f"{org.api}/systemusers({missing})")
    assert unknown_user.status_code == 404
    assert unknown_user.json()["error"]["message"] == (
        f"systemuser With Id = {missing} Does Not Exist"
    )


def test_unknown_segments_and_bad_keys(org: Org) -> None:
    response = org.session.get(f"{org.api}/accounts")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "0x80060888",
        "message": "Resource not found for the segment 'accounts'.",
    }
    bad_key = org.session.get(f"{org.api}/mailboxes(not-a-guid)")
    assert bad_key.status_code == 400
    assert bad_key.json()["error"]["code"] == "0x80060888"
    delete = org.session.delete(f"{org.api}/mailboxes({org.mailbox})")
    assert delete.status_code == 405


def test_select_of_an_unknown_column_is_400(org: Org) -> None:
    response = org.session.get(
        f"{org.api}/mailboxes({org.mailbox})", params={"$select": "emailaddress,nosuchcolumn"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "0x80060888",
        "message": "Could not find a property named 'nosuchcolumn' on type "
        "'Microsoft.Dynamics.CRM.mailbox'.",
    }


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"incomingemaildeliverymethod": 7}, "0x8004431a", "'incomingemaildeliverymethod'"),
        ({"outgoingemaildeliverymethod": 3}, "0x8004431a", "Accepted Values: 0,1,2"),
        ({"actdeliverymethod": -1}, "0x8004431a", "'actdeliverymethod'"),
        ({"emailrouteraccessapproval": 4}, "0x8004431a", "'emailrouteraccessapproval'"),
        ({"actdeliverymethod": "1"}, "0x80048d19", "'actdeliverymethod'"),
        ({"isforwardmailbox": True}, "0x80040203", "'isforwardmailbox'"),
        ({"versionnumber": 1}, "0x80040203", "'versionnumber'"),
        ({"nosuchcolumn": 1}, "0x80048d19", "'nosuchcolumn'"),
        ({"_emailserverprofile_value": None}, "0x80048d19", "Navigation properties"),
        ({"emailaddress": "x" * 101 + "@contoso.com"}, "0x80044331", "'emailaddress'"),
        ({"ownerid@odata.bind": "/systemusers(x)"}, "0x80040203", "'ownerid'"),
    ],
)
def test_patch_validation_names_the_column(
    org: Org, body: dict[str, Any], code: str, fragment: str
) -> None:
    response = org.session.patch(f"{org.api}/mailboxes({org.mailbox})", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]
    assert org.dv.writes == []


def test_patch_rejects_malformed_json(org: Org) -> None:
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x80048d19"


def test_emailserverprofile_bind(org: Org) -> None:
    profile = org.dv.add_email_server_profile("Other profile")
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        json={"emailserverprofile@odata.bind": f"/emailserverprofiles({profile})"},
    )
    assert response.status_code == 204
    assert org.get_mailbox(org.mailbox, "_emailserverprofile_value")[
        "_emailserverprofile_value"
    ] == (profile)
    assert org.dv.writes[-1].changes == {"_emailserverprofile_value": profile}
    missing = "00000000-0000-0000-0000-000000000042"
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        json={"emailserverprofile@odata.bind": f"{org.api}/emailserverprofiles({missing})"},
    )
    assert response.status_code == 404
    assert "emailserverprofile With Id" in response.json()["error"]["message"]


def test_email_address_change_resets_approval(org: Org) -> None:
    event = org.dv.update_mailbox_as(
        org.alice, org.mailbox, {"emailaddress": "ceo@contoso.com"}, tag=None
    )
    assert event.changes == {"emailaddress": "ceo@contoso.com", "emailrouteraccessapproval": 0}
    assert event.requested == {"emailaddress": "ceo@contoso.com"}
    assert event.previous["emailrouteraccessapproval"] == 1
    assert org.dv.mailbox(org.mailbox)["emailrouteraccessapproval"] == 0

    # Setting the same address again is not a change and keeps the approval state.
    org.dv.update_mailbox_as(org.admin, org.mailbox, {"emailrouteraccessapproval": 1})
    same = org.dv.update_mailbox_as(org.alice, org.mailbox, {"emailaddress": "ceo@contoso.com"})
    assert same.changes == {"emailaddress": "ceo@contoso.com"}
    assert same.effective_changes == {}
    assert org.dv.mailbox(org.mailbox)["emailrouteraccessapproval"] == 1


def test_approval_needs_an_approver_role(org: Org) -> None:
    org.dv.update_mailbox_as(org.alice, org.mailbox, {"emailaddress": "alice2@contoso.com"})
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})", json={"emailrouteraccessapproval": 1}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "0x80040220"
    with pytest.raises(DataverseError) as raised:
        org.dv.update_mailbox_as(org.alice, org.mailbox, {"emailrouteraccessapproval": 1})
    assert raised.value.status == 403

    org.dv.assign_role(org.app_user, "System Administrator")
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})", json={"emailrouteraccessapproval": 1}
    )
    assert response.status_code == 204
    assert org.dv.mailbox(org.mailbox)["emailrouteraccessapproval"] == 1


def test_return_representation(org: Org) -> None:
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        params={"$select": "actdeliverymethod"},
        json={"actdeliverymethod": 0},
        headers={"Prefer": "return=representation"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["actdeliverymethod"] == 0
    assert body["@odata.etag"] == f'W/"{org.dv.mailbox(org.mailbox)["versionnumber"]}"'
    assert response.headers["Preference-Applied"] == "return=representation"


def _add_mailboxes(org: Org, count: int, incoming: int = 2) -> set[str]:
    ids = set()
    for index in range(count):
        user = org.dv.add_user(fullname=f"User {index}", internalemailaddress=f"u{index}@c.com")
        ids.add(
            org.dv.add_mailbox(
                owner_user_id=user, emailaddress=f"u{index}@c.com", incoming=incoming
            )
        )
    return ids


def test_paging_follows_next_link_unchanged(org: Org) -> None:
    expected = _add_mailboxes(org, 24) | {org.mailbox}
    headers = {"Prefer": "odata.maxpagesize=10"}
    url: str | None = f"{org.api}/mailboxes?$select=emailaddress"
    sizes: list[int] = []
    seen: list[str] = []
    while url:
        response = org.session.get(url, headers=headers)
        assert response.status_code == 200
        assert response.headers["Preference-Applied"] == "odata.maxpagesize=10"
        body = response.json()
        sizes.append(len(body["value"]))
        seen.extend(row["mailboxid"] for row in body["value"])
        url = body.get("@odata.nextLink")
        if url:
            assert "$skiptoken=" in url
            assert "$select=emailaddress" in url
    assert sizes == [10, 10, 5]
    assert len(seen) == 25
    assert set(seen) == expected


def test_paging_does_not_skip_rows_fixed_between_pages(org: Org) -> None:
    drifted = _add_mailboxes(org, 25, incoming=3)
    headers = {"Prefer": "odata.maxpagesize=10"}
    first = org.session.get(
        f"{org.api}/mailboxes",
        params={"$select": "incomingemaildeliverymethod", "$filter": DRIFT_FILTER},
        headers=headers,
    ).json()
    seen = [row["mailboxid"] for row in first["value"]]
    for mailbox_id in seen:  # the guardrail fixes what it saw before reading on
        org.dv.update_mailbox_as(org.admin, mailbox_id, {"incomingemaildeliverymethod": 2})
    url = first.get("@odata.nextLink")
    while url:
        body = org.session.get(url, headers=headers).json()
        seen.extend(row["mailboxid"] for row in body["value"])
        url = body.get("@odata.nextLink")
    assert sorted(seen) == sorted(drifted)


def test_filter_grammar(org: Org) -> None:
    other_user = org.dv.add_user(fullname="Bob", internalemailaddress="bob@contoso.com")
    bob = org.dv.add_mailbox(
        owner_user_id=other_user, emailaddress="Bob@Contoso.com", outgoing=0, act=2
    )
    nobody = org.dv.add_mailbox(owner_user_id=other_user, emailaddress=None, incoming=0)

    def ids(filter_text: str) -> set[str]:
        response = org.session.get(
            f"{org.api}/mailboxes", params={"$select": "mailboxid", "$filter": filter_text}
        )
        assert response.status_code == 200, response.text
        return {row["mailboxid"] for row in response.json()["value"]}

    assert ids(DRIFT_FILTER) == {bob, nobody}
    assert ids("emailaddress eq 'bob@contoso.com'") == {bob}
    assert ids("emailaddress eq null") == {nobody}
    assert ids(
        "emailaddress ne null and (actdeliverymethod eq 2 or incomingemaildeliverymethod eq 0)"
    ) == {bob}
    assert ids(f"_regardingobjectid_value eq {org.alice}") == {org.mailbox}
    assert ids("not (incomingemaildeliverymethod eq 2)") == {nobody}
    assert ids("outgoingemaildeliverymethod lt 2") == {bob}


@pytest.mark.parametrize(
    "filter_text",
    [
        "contains(emailaddress,'bob')",
        "incomingemaildeliverymethod eq",
        "(incomingemaildeliverymethod eq 2",
        "nosuchcolumn eq 2",
        "incomingemaildeliverymethod eq '2'",
        "emailaddress eq 'a' xor actdeliverymethod eq 1",
    ],
)
def test_unsupported_filters_are_400(org: Org, filter_text: str) -> None:
    response = org.session.get(f"{org.api}/mailboxes", params={"$filter": filter_text})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x80060888"


def test_injected_429_carries_retry_after_and_is_logged(org: Org) -> None:
    org.dv.inject(429, retry_after=2, path_contains="mailboxes")
    throttled = org.session.get(f"{org.api}/mailboxes({org.mailbox})")
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2"
    assert throttled.json() == {
        "error": {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 6000 over time window of 300 "
            "seconds.",
        }
    }
    assert org.session.get(f"{org.api}/mailboxes({org.mailbox})").status_code == 200
    statuses = [r.status for r in org.dv.find_requests(method="GET", path_contains="mailboxes")]
    assert statuses == [429, 200]

    org.dv.inject(503, times=2, method="PATCH")
    assert org.session.get(f"{org.api}/WhoAmI").status_code == 200
    for _ in range(2):
        failed = org.session.patch(f"{org.api}/mailboxes({org.mailbox})", json={})
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "0x80040216"
    assert org.dv.pending_faults == 0
    assert org.dv.count("PATCH", "mailboxes") == 2


def test_401_without_token_and_after_revocation(org: Org) -> None:
    anonymous = requests.get(f"{org.api}/WhoAmI", timeout=5)
    assert anonymous.status_code == 401
    assert "error" in anonymous.json()
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")

    assert org.session.get(f"{org.api}/WhoAmI").status_code == 200
    org.idp.revoke_all()
    revoked = org.session.get(f"{org.api}/WhoAmI")
    assert revoked.status_code == 401
    assert revoked.json()["error"]["message"]

    org.authorize()
    assert org.session.get(f"{org.api}/WhoAmI").status_code == 200


def test_token_for_another_resource_is_rejected(org: Org) -> None:
    token = org.idp_session.post(
        org.idp.token_endpoint(TENANT),
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT,
            "client_secret": SECRET,
            "scope": "https://graph.microsoft.com/.default",
        },
        timeout=5,
    ).json()["access_token"]
    response = org.session.get(f"{org.api}/WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_systemuser_and_roles(org: Org) -> None:
    response = org.session.get(
        f"{org.api}/systemusers({org.admin})",
        params={"$select": "fullname,internalemailaddress,domainname,isdisabled,applicationid"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["fullname"] == "Ada Admin"
    assert body["internalemailaddress"] == "ada@contoso.com"
    assert body["domainname"] == "ada@contoso.com"
    assert body["isdisabled"] is False
    assert body["applicationid"] is None
    assert body["systemuserid"] == org.admin

    app = org.session.get(f"{org.api}/systemusers({org.app_user})?$select=applicationid").json()
    assert app["applicationid"] == CLIENT

    roles = org.session.get(
        f"{org.api}/systemusers({org.admin})/systemuserroles_association",
        params={"$select": "name,roleid"},
    )
    assert roles.status_code == 200
    assert [r["name"] for r in roles.json()["value"]] == ["System Administrator"]
    assert roles.json()["value"][0]["roleid"] == org.dv.add_role("system administrator")
    none = org.session.get(f"{org.api}/systemusers({org.alice})/systemuserroles_association")
    assert none.json()["value"] == []


def test_organization_settings(org: Org) -> None:
    org.dv.set_email_settings(2, 2, 0)
    response = org.session.get(
        f"{org.api}/organizations",
        params={
            "$select": "organizationid,name,defaultemailsettings,"
            "_defaultemailserverprofileid_value,emailconnectionchannel"
        },
    )
    assert response.status_code == 200
    (row,) = response.json()["value"]
    assert row["organizationid"] == org.dv.organization_id
    assert row["name"] == "Contoso" == org.dv.organization_name
    assert row["defaultemailsettings"] == (
        "<EmailSettings><IncomingEmailDeliveryMethod>2</IncomingEmailDeliveryMethod>"
        "<OutgoingEmailDeliveryMethod>2</OutgoingEmailDeliveryMethod>"
        "<ACTDeliveryMethod>0</ACTDeliveryMethod></EmailSettings>"
    )
    assert row["defaultemailsettings"] == email_settings_xml(2, 2, 0)
    assert row["_defaultemailserverprofileid_value"] == org.dv.default_email_server_profile_id
    assert row["emailconnectionchannel"] == 0
    with pytest.raises(DataverseError):
        org.dv.set_email_settings(9, 2, 1)


def test_listener_failure_does_not_undo_the_write(org: Org) -> None:
    def broken(event: WriteEvent) -> None:
        raise RuntimeError("listener bug")

    org.dv.add_write_listener(broken)
    response = org.session.patch(f"{org.api}/mailboxes({org.mailbox})", json={"actstatus": 1})
    assert response.status_code == 204
    assert org.dv.mailbox(org.mailbox)["actstatus"] == 1
    assert [str(e) for e in org.dv.listener_errors] == ["listener bug"]
    org.dv.listener_errors.clear()


def test_latency_delays_answers(org: Org) -> None:
    org.dv.latency = 0.2
    started = time.monotonic()
    assert org.session.get(f"{org.api}/WhoAmI").status_code == 200
    assert time.monotonic() - started >= 0.2


def test_request_log_records_headers_and_json(org: Org) -> None:
    org.dv.clear_log()
    org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})?tag=guardrails",
        json={"actdeliverymethod": 1},
        headers={"If-Match": "*"},
    )
    (recorded,) = org.dv.requests_log
    assert recorded.method == "PATCH"
    assert recorded.path == f"/api/data/v9.2/mailboxes({org.mailbox})"
    assert recorded.query == {"tag": "guardrails"}
    assert recorded.headers["if-match"] == "*"
    assert recorded.headers["odata-version"] == "4.0"
    assert recorded.json == {"actdeliverymethod": 1}
    assert recorded.status == 204


def test_concurrent_patches_with_the_same_etag_have_one_winner(org: Org) -> None:
    etag = org.get_mailbox(org.mailbox)["@odata.etag"]
    token = org.session.headers["Authorization"]

    def patch(value: int) -> int:
        with requests.Session() as http:
            response = http.patch(
                f"{org.api}/mailboxes({org.mailbox})",
                json={"incomingemaildeliverymethod": value},
                headers={"If-Match": etag, "Authorization": token},
                timeout=5,
            )
            return response.status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = sorted(pool.map(patch, [0, 1, 3, 0]))
    assert statuses == [204, 412, 412, 412]
    assert len(org.dv.writes) == 1


def test_chunked_request_bodies_are_read(org: Org) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"actdeliverymethod":'
        yield b" 2}"

    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        data=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 204, response.text
    assert org.dv.requests_log[-1].headers["transfer-encoding"] == "chunked"
    assert org.dv.mailbox(org.mailbox)["actdeliverymethod"] == 2


# -- teams and queues ---------------------------------------------------------------------------

LOOKUP_ANNOTATION = 'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"'


def test_team_read_with_administrator_lookup(org: Org) -> None:
    team = org.dv.add_team("Support Team", administrator_user_id=org.admin)
    response = org.session.get(
        f"{org.api}/teams({team})", params={"$select": "name,_administratorid_value"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Support Team"
    assert body["_administratorid_value"] == org.admin
    assert body["teamid"] == team
    assert "_administratorid_value@Microsoft.Dynamics.CRM.lookuplogicalname" not in body
    assert body["@odata.context"] == (
        f"{org.api}/$metadata#teams(name,_administratorid_value)/$entity"
    )

    annotated = org.session.get(
        f"{org.api}/teams({team})",
        params={"$select": "name,_administratorid_value,teamtype"},
        headers={"Prefer": LOOKUP_ANNOTATION},
    ).json()
    assert annotated["_administratorid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == (
        "systemuser"
    )
    assert annotated["teamtype"] == 0
    assert org.dv.team(team)["_administratorid_value"] == org.admin

    found = org.session.get(
        f"{org.api}/teams", params={"$filter": f"_administratorid_value eq {org.admin}"}
    ).json()["value"]
    assert [row["teamid"] for row in found] == [team]


def test_queue_owned_by_a_team_or_a_user(org: Org) -> None:
    team = org.dv.add_team("Support Team", administrator_user_id=org.admin)
    team_queue = org.dv.add_queue(
        name="Support", emailaddress="support@contoso.com", owner_team_id=team
    )
    user_queue = org.dv.add_queue(
        name="Alice's queue", emailaddress="aq@contoso.com", owner_user_id=org.alice
    )

    def read(queue: str, prefer: str | None) -> dict[str, Any]:
        response = org.session.get(
            f"{org.api}/queues({queue})",
            params={"$select": "name,emailaddress,_ownerid_value"},
            headers={"Prefer": prefer} if prefer else {},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    plain = read(team_queue, None)
    assert plain["_ownerid_value"] == team
    assert plain["emailaddress"] == "support@contoso.com"
    assert not any("@Microsoft.Dynamics.CRM" in key for key in plain)
    annotated = read(team_queue, LOOKUP_ANNOTATION)
    assert annotated["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "team"
    assert read(user_queue, LOOKUP_ANNOTATION)[
        "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"
    ] == ("systemuser")

    # The queue's mailbox is owned by the team too.
    mailbox = org.dv.add_mailbox(queue_id=team_queue, emailaddress="support@contoso.com")
    row = org.session.get(
        f"{org.api}/mailboxes({mailbox})",
        params={"$select": "_ownerid_value,_regardingobjectid_value"},
        headers={"Prefer": 'odata.include-annotations="*"'},
    ).json()
    assert row["_ownerid_value"] == team
    assert row["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "team"
    assert row["_ownerid_value@OData.Community.Display.V1.FormattedValue"] == "Support Team"
    assert row["_regardingobjectid_value"] == team_queue

    with pytest.raises(ValueError):
        org.dv.add_queue(name="x", owner_user_id=org.alice, owner_team_id=team)
    with pytest.raises(DataverseError):
        org.dv.add_team("Orphans", administrator_user_id="00000000-0000-0000-0000-0000000000ff")
    missing = org.session.get(f"{org.api}/teams(00000000-0000-0000-0000-0000000000ff)")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].startswith("team With Id")


def test_sandbox_queue_mailbox_owned_by_a_team() -> None:
    with Sandbox() as sandbox:
        admin, _ = sandbox.add_person("Isaiah Langer", "isaiah@contoso.com")
        queue, mailbox = sandbox.add_queue_mailbox(
            "Support", "support@contoso.com", team="Support Team", administrator_user_id=admin
        )
        row = sandbox.dataverse.mailbox(mailbox)
        owner = row["_ownerid_value"]
        assert row["_regardingobjectid_value"] == queue
        assert row["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "team"
        assert sandbox.dataverse.team(owner)["_administratorid_value"] == admin
        assert sandbox.dataverse.queue(queue)["_ownerid_value"] == owner
        with pytest.raises(ValueError):
            sandbox.add_queue_mailbox("Sales", "sales@contoso.com", team="Sales Team")


# -- reads and writes of the columns the guardrail relies on ------------------------------------


def test_modifiedby_and_versionnumber_are_selectable(org: Org) -> None:
    before = org.get_mailbox(org.mailbox, "_modifiedby_value,versionnumber")
    assert before["_modifiedby_value"] == org.dv.system_user_id
    assert before["@odata.etag"] == f'W/"{before["versionnumber"]}"'
    org.dv.update_mailbox_as(org.alice, org.mailbox, {"actdeliverymethod": 2})
    after = org.get_mailbox(org.mailbox, "_modifiedby_value,versionnumber")
    assert after["_modifiedby_value"] == org.alice
    assert after["versionnumber"] > before["versionnumber"]
    assert after["@odata.etag"] == f'W/"{after["versionnumber"]}"'


def test_patch_return_representation_with_select_gives_the_new_etag(org: Org) -> None:
    etag = org.get_mailbox(org.mailbox)["@odata.etag"]
    response = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        params={"$select": "incomingemaildeliverymethod,_modifiedby_value,versionnumber"},
        json={"incomingemaildeliverymethod": 3},
        headers={"Prefer": "return=representation", "If-Match": etag},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    row = org.dv.mailbox(org.mailbox)
    assert body["incomingemaildeliverymethod"] == 3
    assert body["_modifiedby_value"] == org.app_user
    assert body["versionnumber"] == row["versionnumber"]
    assert body["@odata.etag"] == f'W/"{row["versionnumber"]}"' != etag
    assert response.headers["ETag"] == body["@odata.etag"]
    assert {k for k in body if not k.startswith("@")} == {
        "incomingemaildeliverymethod",
        "_modifiedby_value",
        "versionnumber",
        "mailboxid",
    }
    assert body["@odata.context"] == f"{org.api}/$metadata#mailboxes/$entity"
    # The new etag is the one to use next; the old one is stale.
    stale = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        json={"incomingemaildeliverymethod": 2},
        headers={"If-Match": etag},
    )
    assert stale.status_code == 412
    fresh = org.session.patch(
        f"{org.api}/mailboxes({org.mailbox})",
        json={"incomingemaildeliverymethod": 2},
        headers={"If-Match": body["@odata.etag"]},
    )
    assert fresh.status_code == 204


# -- filters ------------------------------------------------------------------------------------


def test_filters_on_lookups_with_and_or_and_parentheses(org: Org) -> None:
    team = org.dv.add_team("Support Team", administrator_user_id=org.admin)
    queue = org.dv.add_queue(name="Support", emailaddress="s@contoso.com", owner_team_id=team)
    queue_box = org.dv.add_mailbox(queue_id=queue, emailaddress="s@contoso.com", incoming=0)
    bob_user = org.dv.add_user(fullname="Bob", internalemailaddress="bob@contoso.com")
    bob = org.dv.add_mailbox(owner_user_id=bob_user, emailaddress="bob@contoso.com", act=0)

    def ids(filter_text: str) -> set[str]:
        response = org.session.get(
            f"{org.api}/mailboxes", params={"$select": "mailboxid", "$filter": filter_text}
        )
        assert response.status_code == 200, response.text
        return {row["mailboxid"] for row in response.json()["value"]}

    assert ids(DRIFT_FILTER) == {queue_box, bob}
    assert ids(f"({DRIFT_FILTER}) and _regardingobjectid_value eq {queue}") == {queue_box}
    assert ids(f"({DRIFT_FILTER}) and _ownerid_value eq {team}") == {queue_box}
    assert ids(f"_regardingobjectid_value eq {bob_user} or _ownerid_value eq {team}") == {
        bob,
        queue_box,
    }
    assert ids(f"_regardingobjectid_value eq {queue.upper()}") == {queue_box}
    assert ids("_regardingobjectid_value eq null") == set()
    assert ids("_emailserverprofile_value ne null and statecode eq 0") == {
        org.mailbox,
        queue_box,
        bob,
    }
    assert ids(f"{DRIFT_FILTER} and statecode eq 1") == {queue_box}  # and binds tighter
    assert ids(f"({DRIFT_FILTER}) and statecode eq 1") == set()
    assert ids(
        f"({DRIFT_FILTER}) and (emailaddress eq null or emailaddress eq 'bob@contoso.com')"
    ) == {bob}


# -- bulk seeding and paging --------------------------------------------------------------------


def test_add_mailboxes_builds_the_rows_add_mailbox_builds(org: Org) -> None:
    (pair,) = org.dv.add_mailboxes(1, email="bulk{index}@contoso.com", start=7)
    user_id, mailbox_id = pair
    single_user = org.dv.add_user(fullname="Single", internalemailaddress="single@contoso.com")
    single = org.dv.add_mailbox(owner_user_id=single_user, emailaddress="single@contoso.com")
    bulk_row, single_row = org.dv.mailbox(mailbox_id), org.dv.mailbox(single)
    assert set(bulk_row) == set(single_row)
    varying = {"mailboxid", "name", "emailaddress", "versionnumber", "createdon", "modifiedon"}
    varying |= {"_regardingobjectid_value", "_ownerid_value"}
    assert {k: v for k, v in bulk_row.items() if k not in varying} == {
        k: v for k, v in single_row.items() if k not in varying
    }
    assert bulk_row["emailaddress"] == "bulk7@contoso.com"
    assert bulk_row["name"] == "User 7"
    assert bulk_row["_regardingobjectid_value"] == bulk_row["_ownerid_value"] == user_id
    bulk_user, single_user_row = org.dv.user(user_id), org.dv.user(single_user)
    assert set(bulk_user) == set(single_user_row)
    assert bulk_user["_defaultmailbox_value"] == mailbox_id
    assert bulk_user["domainname"] == bulk_user["internalemailaddress"] == "bulk7@contoso.com"
    assert org.dv.user_roles(user_id) == []
    org.dv.assign_role(user_id, "Salesperson")
    assert org.dv.user_roles(user_id) == ["Salesperson"]
    # Usable through the Web API like any other row, and versions keep increasing.
    assert org.get_mailbox(mailbox_id, "emailaddress")["emailaddress"] == "bulk7@contoso.com"
    assert bulk_row["versionnumber"] < single_row["versionnumber"]
    with pytest.raises(DataverseError):
        org.dv.add_mailboxes(1, incoming=9)


def test_paging_12000_mailboxes(org: Org) -> None:
    pairs = org.dv.add_mailboxes(12_000, incoming=lambda i: 3 if i % 10 == 0 else 2)
    expected = {mailbox for _, mailbox in pairs} | {org.mailbox}
    drifted = {mailbox for index, (_, mailbox) in enumerate(pairs) if index % 10 == 0}

    def page_through(url: str, size: int) -> tuple[list[str], list[int], list[int]]:
        seen: list[str] = []
        sizes: list[int] = []
        counts: list[int] = []
        next_url: str | None = url
        while next_url:
            response = org.session.get(
                next_url, headers={"Prefer": f"odata.maxpagesize={size}"}, timeout=30
            )
            assert response.status_code == 200, response.text
            body = response.json()
            sizes.append(len(body["value"]))
            counts.append(body.get("@odata.count", -1))
            seen.extend(row["mailboxid"] for row in body["value"])
            next_url = body.get("@odata.nextLink")
        return seen, sizes, counts

    started = time.monotonic()
    seen, sizes, counts = page_through(
        f"{org.api}/mailboxes?$select=emailaddress&$count=true", 5000
    )
    assert sizes == [5000, 5000, 2001]
    assert counts == [12_001] * 3
    assert len(seen) == len(set(seen)) == 12_001
    assert set(seen) == expected
    assert seen == sorted(seen)  # a stable order: every row exactly once

    filtered, sizes, _ = page_through(
        f"{org.api}/mailboxes?$select=incomingemaildeliverymethod&$filter={DRIFT_FILTER}", 500
    )
    assert sizes == [500, 500, 200]
    assert set(filtered) == drifted
    assert len(filtered) == len(drifted) == 1200
    assert time.monotonic() - started < 20


# -- service protection limits ------------------------------------------------------------------

WINDOW = 0.5


def test_service_protection_is_off_by_default(org: Org) -> None:
    for _ in range(60):
        assert org.session.get(f"{org.api}/WhoAmI").status_code == 200
    assert org.dv.throttled_count == 0
    assert org.dv.requests_in_window(org.app_user) == 0


def test_request_count_limit_answers_429_then_admits_after_the_window(org: Org) -> None:
    org.dv.set_service_protection(3, WINDOW)
    started = time.monotonic()
    for _ in range(3):
        assert org.session.get(f"{org.api}/WhoAmI").status_code == 200
    assert org.dv.requests_in_window(org.app_user) == 3
    throttled = org.session.get(f"{org.api}/mailboxes({org.mailbox})")
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "1"  # 0.5 s at most, rounded up
    assert throttled.json() == {
        "error": {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 3 over time window of 0.5 "
            "seconds.",
        }
    }
    assert org.dv.throttled_count == 1
    assert org.dv.throttled_by_code == {"0x80072322": 1}
    assert org.dv.requests_in_window(org.app_user) == 3  # the throttled one is not counted
    # Other users have windows of their own.
    org.dv.update_mailbox_as(org.admin, org.mailbox, {"actdeliverymethod": 1})
    time.sleep(max(0.0, started + WINDOW + 0.05 - time.monotonic()))
    assert org.session.get(f"{org.api}/mailboxes({org.mailbox})").status_code == 200
    assert org.dv.requests_in_window(org.app_user) == 1
    org.dv.clear_service_protection()
    assert org.dv.throttled_count == 0


def test_limits_are_per_user(org: Org) -> None:
    other_client = "88888888-8888-8888-8888-888888888888"
    org.idp.register_app(TENANT, other_client, secret="other")
    other_user = org.dv.add_user(
        fullname="# Other app", internalemailaddress=None, applicationid=other_client
    )
    other_token = org.idp_session.post(
        org.idp.token_endpoint(TENANT),
        data={
            "grant_type": "client_credentials",
            "client_id": other_client,
            "client_secret": "other",
            "scope": f"{org.dv.url}/.default",
        },
        timeout=5,
    ).json()["access_token"]
    org.dv.set_service_protection(2, 30)
    for _ in range(2):
        assert org.session.get(f"{org.api}/WhoAmI").status_code == 200
    assert org.session.get(f"{org.api}/WhoAmI").status_code == 429
    other = org.session.get(f"{org.api}/WhoAmI", headers={"Authorization": f"Bearer {other_token}"})
    assert other.status_code == 200
    assert other.json()["UserId"] == other_user
    retry_after = int(org.session.get(f"{org.api}/WhoAmI").headers["Retry-After"])
    assert 28 <= retry_after <= 30


def test_concurrency_limit(org: Org) -> None:
    org.dv.set_service_protection(100, 30, max_concurrent=1)
    entered, release = threading.Event(), threading.Event()

    def hold(pending: PendingWrite) -> None:
        entered.set()
        release.wait(5)

    org.dv.before_write(hold)
    token = org.session.headers["Authorization"]

    def slow_patch() -> int:
        with requests.Session() as http:
            return http.patch(
                f"{org.api}/mailboxes({org.mailbox})",
                json={"actdeliverymethod": 1},
                headers={"Authorization": str(token)},
                timeout=10,
            ).status_code

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(slow_patch)
        assert entered.wait(5)
        throttled = org.session.get(f"{org.api}/WhoAmI")
        release.set()
        assert pending.result() == 204
    assert throttled.status_code == 429
    assert throttled.json()["error"] == {
        "code": "0x80072326",
        "message": "Number of concurrent requests exceeded the limit of 1.",
    }
    assert throttled.headers["Retry-After"] == "1"
    assert org.session.get(f"{org.api}/WhoAmI").status_code == 200


def test_execution_time_limit(org: Org) -> None:
    org.dv.set_service_protection(
        100, WINDOW, execution_ms_per_window=250, execution_ms_per_request=100
    )
    started = time.monotonic()
    for _ in range(3):  # 0, 100, 200 ms used when each arrives
        assert org.session.get(f"{org.api}/WhoAmI").status_code == 200
    assert org.dv.execution_ms_in_window(org.app_user) == 300
    throttled = org.session.get(f"{org.api}/WhoAmI")
    assert throttled.status_code == 429
    error = throttled.json()["error"]
    assert error["code"] == "0x80072321"
    assert error["message"].startswith(
        "Combined execution time of incoming requests exceeded limit of 250 milliseconds over "
        "time window of 0.5 seconds."
    )
    assert throttled.headers["Retry-After"] == "1"
    time.sleep(max(0.0, started + WINDOW + 0.1 - time.monotonic()))
    assert org.session.get(f"{org.api}/WhoAmI").status_code == 200
    assert org.dv.throttled_by_code == {"0x80072321": 1}


BURST = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME = "x-ms-ratelimit-time-remaining-xrm-requests"


def test_every_answer_reports_the_remaining_budget_while_limits_are_on(org: Org) -> None:
    assert BURST not in org.session.get(f"{org.api}/WhoAmI").headers  # limits off: not sent
    org.dv.set_service_protection(
        3, 30, execution_ms_per_window=1_500_000, execution_ms_per_request=100_000
    )
    answers = [org.session.get(f"{org.api}/WhoAmI") for _ in range(2)]
    missing = org.session.get(f"{org.api}/mailboxes({uuid.uuid4()})")  # an error is counted too
    throttled = org.session.get(f"{org.api}/WhoAmI")
    assert [a.status_code for a in [*answers, missing, throttled]] == [200, 200, 404, 429]
    # Requests left after this one; seconds of execution time left, formatted as Dataverse does.
    assert [a.headers[BURST] for a in [*answers, missing, throttled]] == ["2", "1", "0", "0"]
    assert [a.headers[TIME] for a in [*answers, missing]] == ["1,500.00", "1,400.00", "1,300.00"]
    assert throttled.headers[TIME] == "1,200.00" and throttled.headers["Retry-After"]


def test_the_budget_headers_can_be_left_out(org: Org) -> None:
    org.dv.set_service_protection(1, 30, report_budget=False)
    answers = [org.session.get(f"{org.api}/WhoAmI") for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429]
    assert not any(BURST in a.headers or TIME in a.headers for a in answers)


def test_a_batch_is_one_request_for_the_count_limit(org: Org) -> None:
    org.dv.set_service_protection(2, 30, execution_ms_per_request=10)
    operations = [get_operation(f"mailboxes({org.mailbox})?$select=emailaddress")] * 5
    response = post_batch(org, operations)
    assert response.status_code == 200
    assert [part.status for part in parse_batch_response(response)] == [200] * 5
    assert org.dv.requests_in_window(org.app_user) == 1
    assert org.dv.execution_ms_in_window(org.app_user) == 50  # five operations' worth
    assert org.session.get(f"{org.api}/WhoAmI").status_code == 200
    assert post_batch(org, operations).status_code == 429


# -- $batch -------------------------------------------------------------------------------------


@dataclass
class BatchPart:
    status: int
    headers: dict[str, str]
    body: str
    content_id: str | None
    change_set: int | None  # index of the change set the part answered, if any

    def json(self) -> Any:
        return json.loads(self.body)


def get_operation(url: str, headers: dict[str, str] | None = None) -> str:
    lines = [f"GET {url} HTTP/1.1", "Accept: application/json"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return "\r\n".join(lines) + "\r\n\r\n"


def patch_operation(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    lines = [f"PATCH {url} HTTP/1.1", "Content-Type: application/json; type=entry"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return "\r\n".join(lines) + "\r\n\r\n" + json.dumps(body)


def batch_body(items: Sequence[str | list[str]], boundary: str) -> bytes:
    """A batch written by hand: operations, and change sets as lists of operations."""
    out: list[str] = []
    content_id = 0
    for index, item in enumerate(items):
        out.append(f"--{boundary}\r\n")
        if isinstance(item, list):
            change_set = f"changeset_{index}"
            out.append(f'Content-Type: multipart/mixed; boundary="{change_set}"\r\n\r\n')
            for operation in item:
                content_id += 1
                out.append(
                    f"--{change_set}\r\nContent-Type: application/http\r\n"
                    f"Content-Transfer-Encoding: binary\r\nContent-ID: {content_id}\r\n\r\n"
                    f"{operation}\r\n"
                )
            out.append(f"--{change_set}--\r\n")
        else:
            out.append(
                "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
                f"{item}\r\n"
            )
    out.append(f"--{boundary}--\r\n")
    return "".join(out).encode("utf-8")


def post_batch(
    org: Org, items: Sequence[str | list[str]], *, prefer: str | None = None
) -> requests.Response:
    boundary = f"batch_{uuid.uuid4()}"
    headers = {"Content-Type": f'multipart/mixed; boundary="{boundary}"'}
    if prefer:
        headers["Prefer"] = prefer
    return org.session.post(
        f"{org.api}/$batch", data=batch_body(items, boundary), headers=headers, timeout=30
    )


def parse_batch_response(response: requests.Response) -> list[BatchPart]:
    """Parse the multipart/mixed answer with the standard library, as a client would."""
    assert response.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode() + response.content
    )
    assert message.is_multipart() and not message.defects
    parts: list[BatchPart] = []

    def http_part(part: EmailMessage, change_set: int | None) -> BatchPart:
        assert part.get_content_type() == "application/http"
        assert part["Content-Transfer-Encoding"] == "binary"
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        head, _, body = payload.decode("utf-8").partition("\r\n\r\n")
        status_line, *header_lines = head.split("\r\n")
        assert status_line.startswith("HTTP/1.1 ")
        headers = dict(line.split(": ", 1) for line in header_lines)
        content_id = part["Content-ID"]
        return BatchPart(
            int(status_line.split()[1]),
            headers,
            body,
            str(content_id) if content_id is not None else None,
            change_set,
        )

    for index, part in enumerate(message.iter_parts()):
        assert isinstance(part, EmailMessage)
        if part.get_content_type() == "multipart/mixed":
            assert str(part.get_boundary()).startswith("changesetresponse_")
            for inner in part.iter_parts():
                assert isinstance(inner, EmailMessage)
                parts.append(http_part(inner, index))
        else:
            parts.append(http_part(part, None))
    return parts


def test_batch_reads_and_writes_with_etags(org: Org) -> None:
    second_user = org.dv.add_user(fullname="Bob", internalemailaddress="bob@contoso.com")
    second = org.dv.add_mailbox(owner_user_id=second_user, emailaddress="bob@contoso.com")
    etag = org.get_mailbox(org.mailbox)["@odata.etag"]
    response = post_batch(
        org,
        [
            get_operation(
                f"/api/data/v9.2/mailboxes({org.mailbox})?$select=emailaddress",
                {"Prefer": 'odata.include-annotations="*"'},
            ),
            patch_operation(
                f"{org.api}/mailboxes({org.mailbox})?tag=guardrails",
                {"incomingemaildeliverymethod": 3},
                {"If-Match": etag},
            ),
            patch_operation(
                f"mailboxes({second})?$select=actdeliverymethod,versionnumber",
                {"actdeliverymethod": 0},
                {"Prefer": "return=representation"},
            ),
        ],
    )
    assert response.status_code == 200, response.text
    assert "Preference-Applied" not in response.headers
    got, patched, represented = parse_batch_response(response)
    assert got.status == 200
    assert got.json()["emailaddress"] == "alice@contoso.com"
    assert got.headers["ETag"] == etag
    assert got.headers["OData-Version"] == "4.0"
    assert patched.status == 204
    assert patched.body == ""
    row = org.dv.mailbox(org.mailbox)
    assert row["incomingemaildeliverymethod"] == 3
    assert patched.headers["ETag"] == f'W/"{row["versionnumber"]}"'
    assert patched.headers["OData-EntityId"] == f"{org.api}/mailboxes({org.mailbox})"
    assert represented.status == 200
    assert represented.json()["actdeliverymethod"] == 0
    assert represented.json()["@odata.etag"] == represented.headers["ETag"]
    assert [(w.mailbox_id, w.tag, w.source) for w in org.dv.writes] == [
        (org.mailbox, "guardrails", "webapi"),
        (second, None, "webapi"),
    ]
    assert org.dv.count("POST", "$batch") == 1
    assert org.dv.count("PATCH", "mailboxes") == 0  # the operations travelled inside the batch


def test_batch_stops_at_the_first_failure_without_continue_on_error(org: Org) -> None:
    stale = org.get_mailbox(org.mailbox)["@odata.etag"]
    org.dv.update_mailbox_as(org.alice, org.mailbox, {"incomingemaildeliverymethod": 3})
    items: list[str | list[str]] = [
        get_operation(f"mailboxes({org.mailbox})?$select=incomingemaildeliverymethod"),
        patch_operation(
            f"mailboxes({org.mailbox})", {"incomingemaildeliverymethod": 2}, {"If-Match": stale}
        ),
        patch_operation(f"mailboxes({org.mailbox})", {"actdeliverymethod": 0}),
    ]
    response = post_batch(org, items)
    assert response.status_code == 412  # the batch error is the first failing request's
    parts = parse_batch_response(response)
    assert [part.status for part in parts] == [200, 412]
    assert parts[1].json()["error"]["code"] == "0x80060882"
    row = org.dv.mailbox(org.mailbox)
    assert (row["incomingemaildeliverymethod"], row["actdeliverymethod"]) == (3, 1)
    assert len(org.dv.writes) == 1  # only Alice's

    continued = post_batch(org, items, prefer="odata.continue-on-error")
    assert continued.status_code == 200
    assert continued.headers["Preference-Applied"] == "odata.continue-on-error"
    assert [part.status for part in parse_batch_response(continued)] == [200, 412, 204]
    assert org.dv.mailbox(org.mailbox)["actdeliverymethod"] == 0
    assert org.dv.writes[-1].changes == {"actdeliverymethod": 0}


def test_change_set_is_atomic(org: Org) -> None:
    bob_user = org.dv.add_user(fullname="Bob", internalemailaddress="bob@contoso.com")
    bob = org.dv.add_mailbox(owner_user_id=bob_user, emailaddress="bob@contoso.com")
    published: list[WriteEvent] = []
    org.dv.add_write_listener(published.append)
    before = (org.dv.mailbox(org.mailbox), org.dv.mailbox(bob))
    response = post_batch(
        org,
        [
            [
                patch_operation(f"mailboxes({org.mailbox})", {"incomingemaildeliverymethod": 3}),
                patch_operation(f"mailboxes({bob})", {"incomingemaildeliverymethod": 9}),
            ],
            get_operation(f"mailboxes({org.mailbox})?$select=incomingemaildeliverymethod"),
        ],
    )
    assert response.status_code == 400
    (failure,) = parse_batch_response(response)  # one answer for the whole change set
    assert failure.change_set is None
    assert failure.content_id == "2"
    assert failure.json()["error"]["code"] == "0x8004431a"
    assert (org.dv.mailbox(org.mailbox), org.dv.mailbox(bob)) == before  # first PATCH undone
    assert org.dv.writes == [] == published

    continued = post_batch(
        org,
        [
            [
                patch_operation(f"mailboxes({org.mailbox})", {"incomingemaildeliverymethod": 3}),
                patch_operation(f"mailboxes({bob})", {"incomingemaildeliverymethod": 9}),
            ],
            get_operation(f"mailboxes({org.mailbox})?$select=incomingemaildeliverymethod"),
        ],
        prefer="odata.continue-on-error",
    )
    assert continued.status_code == 200
    failed, read = parse_batch_response(continued)
    assert failed.status == 400
    assert read.json()["incomingemaildeliverymethod"] == 2  # the read sees no partial write
    assert org.dv.writes == [] == published


def test_change_set_commits_together_and_publishes_after_commit(org: Org) -> None:
    bob_user = org.dv.add_user(fullname="Bob", internalemailaddress="bob@contoso.com")
    bob = org.dv.add_mailbox(owner_user_id=bob_user, emailaddress="bob@contoso.com")
    seen_at_publish: list[tuple[int, int]] = []

    def listener(event: WriteEvent) -> None:
        seen_at_publish.append(
            (
                org.dv.mailbox(org.mailbox)["incomingemaildeliverymethod"],
                org.dv.mailbox(bob)["incomingemaildeliverymethod"],
            )
        )

    org.dv.add_write_listener(listener)
    etag = org.get_mailbox(org.mailbox)["@odata.etag"]
    response = post_batch(
        org,
        [
            [
                patch_operation(
                    f"mailboxes({org.mailbox})",
                    {"incomingemaildeliverymethod": 3},
                    {"If-Match": etag},
                ),
                patch_operation(f"mailboxes({bob})", {"incomingemaildeliverymethod": 0}),
            ]
        ],
    )
    assert response.status_code == 200, response.text
    first, second = parse_batch_response(response)
    assert (first.change_set, second.change_set) == (0, 0)
    assert (first.status, second.status) == (204, 204)
    assert (first.content_id, second.content_id) == ("1", "2")
    assert first.headers["ETag"] == f'W/"{org.dv.mailbox(org.mailbox)["versionnumber"]}"'
    assert second.headers["ETag"] == f'W/"{org.dv.mailbox(bob)["versionnumber"]}"'
    assert [w.mailbox_id for w in org.dv.writes] == [org.mailbox, bob]
    assert seen_at_publish == [(3, 0), (3, 0)]  # both committed before any event went out


def test_412_inside_a_change_set_rolls_it_back(org: Org) -> None:
    stale = org.get_mailbox(org.mailbox)["@odata.etag"]
    org.dv.update_mailbox_as(org.alice, org.mailbox, {"emailaddress": "ceo@contoso.com"})
    bob_user = org.dv.add_user(fullname="Bob", internalemailaddress="bob@contoso.com")
    bob = org.dv.add_mailbox(owner_user_id=bob_user, emailaddress="bob@contoso.com")
    bob_before = org.dv.mailbox(bob)
    response = post_batch(
        org,
        [
            [
                patch_operation(f"mailboxes({bob})", {"actdeliverymethod": 0}),
                patch_operation(
                    f"mailboxes({org.mailbox})",
                    {"emailaddress": "alice@contoso.com"},
                    {"If-Match": stale},
                ),
            ]
        ],
        prefer="odata.continue-on-error",
    )
    assert response.status_code == 200
    (failure,) = parse_batch_response(response)
    assert failure.status == 412
    assert failure.content_id == "2"
    assert org.dv.mailbox(bob) == bob_before
    assert org.dv.mailbox(org.mailbox)["emailaddress"] == "ceo@contoso.com"
    assert [w.user_id for w in org.dv.writes] == [org.alice]


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"--b\r\n\r\n--b--\r\n", "application/json", "multipart/mixed"),
        (b"no parts at all", "multipart/mixed", "boundary"),
        (b"garbage", 'multipart/mixed; boundary="b"', "not a valid multipart"),
        (
            b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n",
            'multipart/mixed; boundary="b"',
            "text/plain",
        ),
        (
            b"--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            b"this is not a request line\r\n--b--\r\n",
            'multipart/mixed; boundary="b"',
            "request line",
        ),
    ],
)
def test_malformed_batches_are_400(org: Org, body: bytes, content_type: str, fragment: str) -> None:
    response = org.session.post(
        f"{org.api}/$batch", data=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]


def test_batch_rules(org: Org) -> None:
    get_in_change_set = post_batch(org, [[get_operation("WhoAmI")]])
    assert get_in_change_set.status_code == 400
    (part,) = parse_batch_response(get_in_change_set)
    assert "change set cannot contain a GET" in part.json()["error"]["message"]

    nested = post_batch(org, [patch_operation("/api/data/v9.2/$batch", {})])
    (inner,) = parse_batch_response(nested)
    assert inner.status == 400
    assert "cannot contain another batch" in inner.json()["error"]["message"]
    reference = post_batch(org, [[patch_operation("$1", {"actdeliverymethod": 1})]])
    assert "does not exist in the batch context" in parse_batch_response(reference)[0].body

    too_many = post_batch(org, [get_operation("WhoAmI")] * 1001)
    assert too_many.status_code == 400
    assert "maximum number of '1000'" in too_many.json()["error"]["message"]
    full = post_batch(org, [get_operation("WhoAmI")] * 1000)
    assert full.status_code == 200
    answers = parse_batch_response(full)
    assert len(answers) == 1000
    assert {a.json()["UserId"] for a in answers} == {org.app_user}

    assert org.session.get(f"{org.api}/$batch").status_code == 405
    anonymous = requests.post(
        f"{org.api}/$batch",
        data=batch_body([get_operation("WhoAmI")], "b"),
        headers={"Content-Type": 'multipart/mixed; boundary="b"'},
        timeout=5,
    )
    assert anonymous.status_code == 401


def test_primary_key_or_chains_answer_as_a_full_scan_would(org: Org) -> None:
    """`systemuserid eq a or systemuserid eq b ...` is served from the key (an index), and must
    give exactly what testing every row gives."""
    people = org.dv.add_mailboxes(30)
    wanted = [user for user, _ in people[::3]] + ["0e0e0e0e-1111-2222-3333-444444444444"]

    def ids(filter_text: str) -> set[str]:
        response = org.session.get(
            f"{org.api}/systemusers", params={"$select": "systemuserid", "$filter": filter_text}
        )
        assert response.status_code == 200, response.text
        return {row["systemuserid"] for row in response.json()["value"]}

    chain = " or ".join(f"systemuserid eq {user}" for user in wanted)
    scanned = ids(f"({chain}) and isdisabled eq false")  # not a bare chain: every row tested
    assert ids(chain) == scanned == set(wanted[:-1])
    assert ids(" or ".join(f"systemuserid eq {u.upper()}" for u in wanted)) == scanned
