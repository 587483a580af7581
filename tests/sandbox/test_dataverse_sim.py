"""The Dataverse simulator, driven over real HTTPS with ``requests``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
