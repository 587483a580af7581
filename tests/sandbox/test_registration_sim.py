"""The Dataverse simulator's registration tables, privileges and RetrieveUserPrivileges, over HTTPS.

What `guardrails register` and `guardrails doctor` rely on: service endpoints (``saskey``
write-only), SDK messages and filters (seeded), steps and step images with ``@odata.bind``
lookups and the platform's checks, and privileges computed from the caller's security roles.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from guardrails.sandbox import DataverseSimulator, IdentitySimulator, SandboxTLS

pytestmark = pytest.mark.integration

TENANT = "11111111-1111-1111-1111-111111111111"
ADMIN_APP = "44444444-4444-4444-4444-444444444444"
GUARDRAIL_APP = "55555555-5555-5555-5555-555555555555"
SECRET = "registration-secret"
ROLE = "Mailbox Guardrails"


@dataclass
class Org:
    dv: DataverseSimulator
    idp: IdentitySimulator
    admin: requests.Session
    app: requests.Session
    admin_user: str
    app_user: str

    @property
    def api(self) -> str:
        return self.dv.api_url

    def create(self, session: requests.Session, entity_set: str, body: dict[str, Any]) -> str:
        response = session.post(f"{self.api}/{entity_set}", json=body)
        assert response.status_code == 204, response.text
        location = response.headers["OData-EntityId"]
        assert location.startswith(f"{self.api}/{entity_set}(")
        return location.rsplit("(", 1)[1].rstrip(")")

    def get(self, session: requests.Session, path: str, **params: str) -> dict[str, Any]:
        response = session.get(f"{self.api}/{path}", params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def endpoint(self, **overrides: Any) -> str:
        body = {
            "name": "Mailbox events",
            "description": "posts mailbox changes",
            "contract": 6,
            "connectionmode": 1,
            "authtype": 2,
            "namespaceaddress": "sb://contoso.servicebus.windows.net/",
            "namespaceformat": 2,
            "path": "dataverse-mailbox-events",
            "saskeyname": "dataverse-send",
            "saskey": "c2VjcmV0LWtleQ==",
            "messageformat": 2,
            "userclaim": 2,
            **overrides,
        }
        return self.create(self.admin, "serviceendpoints", body)

    def step(self, endpoint_id: str, message: str = "Update", **overrides: Any) -> str:
        body = {
            "name": f"{message} of mailbox",
            "mode": 1,
            "stage": 40,
            "rank": 1,
            "supporteddeployment": 0,
            "asyncautodelete": True,
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
            "sdkmessageid@odata.bind": f"/sdkmessages({self.dv.sdk_message_id(message)})",
            "sdkmessagefilterid@odata.bind": (
                f"/sdkmessagefilters({self.dv.sdk_message_filter_id(message, 'mailbox')})"
            ),
            **overrides,
        }
        return self.create(self.admin, "sdkmessageprocessingsteps", body)

    def image(self, step_id: str, **overrides: Any) -> str:
        body = {
            "name": "guardrails_pre",
            "entityalias": "guardrails_pre",
            "imagetype": 0,
            "messagepropertyname": "Target",
            "attributes": "emailaddress,regardingobjectid",
            "sdkmessageprocessingstepid@odata.bind": f"/sdkmessageprocessingsteps({step_id})",
            **overrides,
        }
        return self.create(self.admin, "sdkmessageprocessingstepimages", body)


def _session(idp: IdentitySimulator, dv: DataverseSimulator, client_id: str) -> requests.Session:
    token = requests.post(
        idp.token_endpoint(TENANT),
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": SECRET,
            "scope": f"{dv.url}/.default",
        },
        timeout=5,
    ).json()["access_token"]
    session = requests.Session()
    session.headers.update(
        {
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
            "Authorization": f"Bearer {token}",
        }
    )
    return session


@pytest.fixture(scope="module")
def tls() -> Iterator[SandboxTLS]:
    with SandboxTLS() as sandbox_tls:
        yield sandbox_tls


@pytest.fixture(scope="module")
def idp(tls: SandboxTLS) -> Iterator[IdentitySimulator]:
    with IdentitySimulator(tls) as simulator:
        simulator.register_app(TENANT, ADMIN_APP, secret=SECRET)
        simulator.register_app(TENANT, GUARDRAIL_APP, secret=SECRET)
        yield simulator


@pytest.fixture
def org(tls: SandboxTLS, idp: IdentitySimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Org]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_bundle_path()))
    dv = DataverseSimulator(tls, organization_name="Contoso")
    dv.token_validator = idp.validator(dv.url)
    admin_user = dv.add_user(
        fullname="# Deployment",
        internalemailaddress=None,
        applicationid=ADMIN_APP,
        roles=["System Administrator"],
    )
    dv.set_role_privileges(
        ROLE,
        {
            "prvReadMailbox": "Global",
            "prvWriteMailbox": "Global",
            "prvReadUser": "Global",
            "prvReadServiceEndpoint": "Global",
        },
    )
    app_user = dv.add_user(
        fullname="# Mailbox Guardrails",
        internalemailaddress=None,
        applicationid=GUARDRAIL_APP,
        roles=[ROLE],
    )
    admin, app = _session(idp, dv, ADMIN_APP), _session(idp, dv, GUARDRAIL_APP)
    try:
        yield Org(dv, idp, admin, app, admin_user, app_user)
    finally:
        admin.close()
        app.close()
        dv.close()
        assert dv.errors == [], dv.errors


# -- seeded messages and filters -----------------------------------------------------------------


def test_sdk_messages_and_mailbox_filters_are_seeded_and_filterable(org: Org) -> None:
    found = org.get(
        org.admin,
        "sdkmessages",
        **{"$filter": "name eq 'Create' or name eq 'Update'", "$select": "sdkmessageid,name"},
    )["value"]
    names = {row["name"]: row["sdkmessageid"] for row in found}
    assert set(names) == {"Create", "Update"}
    assert names["Update"] == org.dv.sdk_message_id("Update")
    filters = org.get(
        org.admin,
        "sdkmessagefilters",
        **{
            "$filter": f"primaryobjecttypecode eq 'mailbox' and _sdkmessageid_value eq "
            f"{names['Update']}",
            "$select": "sdkmessagefilterid,primaryobjecttypecode,_sdkmessageid_value",
        },
    )["value"]
    assert len(filters) == 1
    assert filters[0]["sdkmessagefilterid"] == org.dv.sdk_message_filter_id("Update", "mailbox")
    assert filters[0]["_sdkmessageid_value"] == names["Update"]
    everything = org.get(org.admin, "sdkmessagefilters", **{"$select": "primaryobjecttypecode"})
    assert {"mailbox", "systemuser"} <= {r["primaryobjecttypecode"] for r in everything["value"]}


# -- service endpoints ---------------------------------------------------------------------------


def test_service_endpoint_created_with_its_key_which_is_never_read_back(org: Org) -> None:
    endpoint_id = org.endpoint()
    row = org.get(org.admin, f"serviceendpoints({endpoint_id})")
    assert row["serviceendpointid"] == endpoint_id
    assert row["messageformat"] == 2
    assert row["contract"] == 6
    assert row["path"] == "dataverse-mailbox-events"
    assert row["saskeyname"] == "dataverse-send"
    assert row["saskey"] is None  # write-only
    assert org.dv.service_endpoint_key(endpoint_id) == "c2VjcmV0LWtleQ=="
    selected = org.get(org.admin, f"serviceendpoints({endpoint_id})", **{"$select": "saskey"})
    assert selected["saskey"] is None
    listed = org.get(org.admin, "serviceendpoints")["value"]
    assert [r["saskey"] for r in listed] == [None]


def test_service_endpoint_defaults_to_binary_xml_when_no_format_is_given(org: Org) -> None:
    endpoint_id = org.create(
        org.admin,
        "serviceendpoints",
        {"name": "Defaults", "contract": 6, "path": "q", "namespaceaddress": "sb://x/"},
    )
    row = org.dv.rows("serviceendpoints")[0]
    assert row["serviceendpointid"] == endpoint_id
    assert row["messageformat"] == 1  # the platform's default: .NET binary XML
    assert row["userclaim"] == 1


def test_service_endpoint_patch_writes_the_key_without_showing_it(org: Org) -> None:
    endpoint_id = org.endpoint()
    version = org.dv.rows("serviceendpoints")[0]["versionnumber"]
    response = org.admin.patch(
        f"{org.api}/serviceendpoints({endpoint_id})",
        json={"saskey": "bmV3LWtleQ==", "messageformat": 3},
    )
    assert response.status_code == 204, response.text
    assert org.dv.service_endpoint_key(endpoint_id) == "bmV3LWtleQ=="
    row = org.dv.rows("serviceendpoints")[0]
    assert row["messageformat"] == 3
    assert row["saskey"] is None
    assert row["versionnumber"] > version


def test_choice_outside_its_range_is_refused(org: Org) -> None:
    response = org.admin.post(
        f"{org.api}/serviceendpoints", json={"name": "x", "contract": 6, "messageformat": 4}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x8004431a"
    assert org.dv.rows("serviceendpoints") == []


@pytest.mark.parametrize("stored", [2, 6])
def test_the_queue_contract_read_back_is_configurable_both_ways(org: Org, stored: int) -> None:
    org.dv.queue_contract_readback = stored
    endpoint_id = org.endpoint(contract=6)
    assert org.get(org.admin, f"serviceendpoints({endpoint_id})")["contract"] == stored
    topic = org.endpoint(name="Topic", contract=5)
    assert org.get(org.admin, f"serviceendpoints({topic})")["contract"] == 5


# -- steps and images ----------------------------------------------------------------------------


def test_step_binds_its_handler_message_and_filter(org: Org) -> None:
    endpoint_id = org.endpoint()
    step_id = org.step(endpoint_id, filteringattributes="emailaddress,actdeliverymethod")
    row = org.get(
        org.admin,
        f"sdkmessageprocessingsteps({step_id})",
        **{"$select": "mode,stage,filteringattributes,_eventhandler_value,_sdkmessageid_value"},
    )
    assert row["mode"] == 1
    assert row["stage"] == 40
    assert row["filteringattributes"] == "emailaddress,actdeliverymethod"
    assert row["_eventhandler_value"] == endpoint_id
    assert row["_sdkmessageid_value"] == org.dv.sdk_message_id("Update")
    annotated = org.admin.get(
        f"{org.api}/sdkmessageprocessingsteps({step_id})",
        headers={"Prefer": 'odata.include-annotations="*"'},
    ).json()
    assert annotated["_eventhandler_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == (
        "serviceendpoint"
    )
    assert annotated["statecode"] == 0
    assert annotated["asyncautodelete"] is True
    by_handler = org.get(
        org.admin,
        "sdkmessageprocessingsteps",
        **{"$filter": f"_eventhandler_value eq {endpoint_id}", "$select": "name"},
    )["value"]
    assert [r["sdkmessageprocessingstepid"] for r in by_handler] == [step_id]


def test_step_whose_filter_belongs_to_another_message_is_refused(org: Org) -> None:
    endpoint_id = org.endpoint()
    create_filter = org.dv.sdk_message_filter_id("Create", "mailbox")
    response = org.admin.post(
        f"{org.api}/sdkmessageprocessingsteps",
        json={
            "name": "mismatch",
            "mode": 1,
            "stage": 40,
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
            "sdkmessageid@odata.bind": f"/sdkmessages({org.dv.sdk_message_id('Update')})",
            "sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({create_filter})",
        },
    )
    assert response.status_code == 400
    assert "message" in response.json()["error"]["message"]


def test_step_bound_to_a_missing_endpoint_is_404(org: Org) -> None:
    missing = "99999999-9999-9999-9999-999999999999"
    response = org.admin.post(
        f"{org.api}/sdkmessageprocessingsteps",
        json={
            "name": "orphan",
            "mode": 1,
            "stage": 40,
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({missing})",
            "sdkmessageid@odata.bind": f"/sdkmessages({org.dv.sdk_message_id('Update')})",
        },
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "0x80040217"


def test_step_needs_its_required_columns(org: Org) -> None:
    response = org.admin.post(f"{org.api}/sdkmessageprocessingsteps", json={"name": "bare"})
    assert response.status_code == 400
    assert "mode" in response.json()["error"]["message"]


def test_filtering_attributes_must_be_columns_of_the_table(org: Org) -> None:
    endpoint_id = org.endpoint()
    response = org.admin.post(
        f"{org.api}/sdkmessageprocessingsteps",
        json={
            "name": "typo",
            "mode": 1,
            "stage": 40,
            "filteringattributes": "emailadress",
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
            "sdkmessageid@odata.bind": f"/sdkmessages({org.dv.sdk_message_id('Update')})",
            "sdkmessagefilterid@odata.bind": (
                f"/sdkmessagefilters({org.dv.sdk_message_filter_id('Update', 'mailbox')})"
            ),
        },
    )
    assert response.status_code == 400
    assert "emailadress" in response.json()["error"]["message"]


def test_pre_image_on_an_update_step_and_not_on_a_create_step(org: Org) -> None:
    endpoint_id = org.endpoint()
    update = org.step(endpoint_id, "Update")
    create = org.step(endpoint_id, "Create")
    image_id = org.image(update)
    row = org.get(org.admin, f"sdkmessageprocessingstepimages({image_id})")
    assert row["entityalias"] == "guardrails_pre"
    assert row["imagetype"] == 0
    assert row["attributes"] == "emailaddress,regardingobjectid"
    assert row["_sdkmessageprocessingstepid_value"] == update
    response = org.admin.post(
        f"{org.api}/sdkmessageprocessingstepimages",
        json={
            "name": "pre",
            "entityalias": "pre",
            "imagetype": 0,
            "messagepropertyname": "Target",
            "attributes": "emailaddress",
            "sdkmessageprocessingstepid@odata.bind": f"/sdkmessageprocessingsteps({create})",
        },
    )
    assert response.status_code == 400
    assert "Create" in response.json()["error"]["message"]
    typo = org.admin.post(
        f"{org.api}/sdkmessageprocessingstepimages",
        json={
            "name": "pre",
            "entityalias": "pre",
            "imagetype": 0,
            "messagepropertyname": "Target",
            "attributes": "regardingobjectid,owner",
            "sdkmessageprocessingstepid@odata.bind": f"/sdkmessageprocessingsteps({update})",
        },
    )
    assert typo.status_code == 400
    assert "owner" in typo.json()["error"]["message"]


def test_step_can_be_disabled_and_changed_in_place(org: Org) -> None:
    step_id = org.step(org.endpoint())
    response = org.admin.patch(
        f"{org.api}/sdkmessageprocessingsteps({step_id})",
        json={"statecode": 1, "statuscode": 2, "mode": 0, "filteringattributes": "emailaddress"},
    )
    assert response.status_code == 204, response.text
    (row,) = org.dv.rows("sdkmessageprocessingsteps")
    assert (row["statecode"], row["statuscode"], row["mode"]) == (1, 2, 0)
    assert row["filteringattributes"] == "emailaddress"
    assert row["sdkmessageprocessingstepid"] == step_id


def test_deleting_a_step_deletes_its_images_and_an_endpoint_in_use_is_kept(org: Org) -> None:
    endpoint_id = org.endpoint()
    step_id = org.step(endpoint_id)
    org.image(step_id)
    refused = org.admin.delete(f"{org.api}/serviceendpoints({endpoint_id})")
    assert refused.status_code == 400
    assert step_id in refused.json()["error"]["message"]
    assert org.admin.delete(f"{org.api}/sdkmessageprocessingsteps({step_id})").status_code == 204
    assert org.dv.rows("sdkmessageprocessingstepimages") == []
    assert org.admin.delete(f"{org.api}/serviceendpoints({endpoint_id})").status_code == 204
    assert org.dv.rows("serviceendpoints") == []
    gone = org.admin.delete(f"{org.api}/serviceendpoints({endpoint_id})")
    assert gone.status_code == 404


def test_create_can_return_the_representation(org: Org) -> None:
    response = org.admin.post(
        f"{org.api}/serviceendpoints",
        json={"name": "x", "contract": 6, "messageformat": 2, "saskey": "k"},
        headers={"Prefer": "return=representation"},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["messageformat"] == 2
    assert body["saskey"] is None
    assert response.headers["OData-EntityId"].endswith(f"({body['serviceendpointid']})")


# -- privileges ----------------------------------------------------------------------------------


def test_writes_to_registration_tables_need_the_privilege(org: Org) -> None:
    response = org.app.post(
        f"{org.api}/serviceendpoints", json={"name": "x", "contract": 6, "messageformat": 2}
    )
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "0x80040220"
    assert "prvCreateServiceEndpoint" in error["message"]
    assert org.app.get(f"{org.api}/serviceendpoints").status_code == 200  # it may read them
    steps = org.app.get(f"{org.api}/sdkmessageprocessingsteps")
    assert steps.status_code == 403
    assert "prvReadSdkMessageProcessingStep" in steps.json()["error"]["message"]


def test_retrieve_user_privileges_is_computed_from_the_users_roles(org: Org) -> None:
    path = f"systemusers({org.app_user})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"
    body = org.get(org.app, path)
    assert body["@odata.context"].endswith(
        "$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse"
    )
    privileges = {p["PrivilegeName"]: p for p in body["RolePrivileges"]}
    assert set(privileges) == {
        "prvReadMailbox",
        "prvWriteMailbox",
        "prvReadUser",
        "prvReadServiceEndpoint",
    }
    catalog = {
        row["name"]: row["privilegeid"]
        for row in org.get(org.admin, "privileges", **{"$select": "name,privilegeid"})["value"]
    }
    for name, entry in privileges.items():
        assert entry["Depth"] == "Global"
        assert entry["PrivilegeId"] == catalog[name]
        assert entry["BusinessUnitId"] == org.dv.business_unit_id
    without_parentheses = org.get(
        org.app, f"systemusers({org.app_user})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges"
    )
    assert without_parentheses["RolePrivileges"] == body["RolePrivileges"]


def test_a_user_gets_the_deepest_depth_any_of_their_roles_grants(org: Org) -> None:
    org.dv.set_role_privileges("Readers", {"prvReadMailbox": "Local", "prvReadQueue": "Basic"})
    org.dv.assign_role(org.app_user, "Readers")
    org.dv.set_role_privileges(ROLE, {"prvReadMailbox": "Deep"})
    privileges = org.dv.user_privileges(org.app_user)
    assert privileges == {"prvReadMailbox": "Deep", "prvReadQueue": "Basic"}
    org.dv.revoke_privilege(ROLE, "prvReadMailbox")
    assert org.dv.user_privileges(org.app_user) == {
        "prvReadMailbox": "Local",
        "prvReadQueue": "Basic",
    }


def test_system_administrator_holds_every_privilege_at_global_depth(org: Org) -> None:
    privileges = org.dv.user_privileges(org.admin_user)
    assert set(privileges) == set(org.dv.privilege_names())
    assert set(privileges.values()) == {"Global"}
    assert "prvApproveRejectEmailAddress" in privileges


def test_retrieve_user_privileges_of_an_unknown_user_is_404(org: Org) -> None:
    missing = "99999999-9999-9999-9999-999999999999"
    response = org.app.get(
        f"{org.api}/systemusers({missing})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"
    )
    assert response.status_code == 404


def test_a_role_is_created_and_given_privileges_through_the_web_api(org: Org) -> None:
    role_id = org.create(
        org.admin,
        "roles",
        {
            "name": "Auditors",
            "businessunitid@odata.bind": f"/businessunits({org.dv.business_unit_id})",
        },
    )
    catalog = {
        row["name"]: row["privilegeid"]
        for row in org.get(
            org.admin,
            "privileges",
            **{"$filter": "name eq 'prvReadMailbox' or name eq 'prvReadUser'"},
        )["value"]
    }
    assert set(catalog) == {"prvReadMailbox", "prvReadUser"}
    response = org.admin.post(
        f"{org.api}/roles({role_id})/Microsoft.Dynamics.CRM.AddPrivilegesRole",
        json={
            "Privileges": [
                {"PrivilegeId": catalog["prvReadMailbox"], "Depth": "Global"},
                {
                    "PrivilegeId": catalog["prvReadUser"],
                    "Depth": "Local",
                    "BusinessUnitId": org.dv.business_unit_id,
                },
            ]
        },
    )
    assert response.status_code == 204, response.text
    assert org.dv.role_privileges("Auditors") == {
        "prvReadMailbox": "Global",
        "prvReadUser": "Local",
    }
    read_back = org.get(
        org.admin, f"roles({role_id})/Microsoft.Dynamics.CRM.RetrieveRolePrivilegesRole()"
    )
    assert {p["PrivilegeName"]: p["Depth"] for p in read_back["RolePrivileges"]} == {
        "prvReadMailbox": "Global",
        "prvReadUser": "Local",
    }
    duplicate = org.admin.post(f"{org.api}/roles", json={"name": "Auditors"})
    assert duplicate.status_code == 412
    unknown = org.admin.post(
        f"{org.api}/roles({role_id})/Microsoft.Dynamics.CRM.AddPrivilegesRole",
        json={"Privileges": [{"PrivilegeId": role_id, "Depth": "Global"}]},
    )
    assert unknown.status_code == 404
    by_app = org.app.post(f"{org.api}/roles", json={"name": "Escalation"})
    assert by_app.status_code == 403
    assert "prvCreateRole" in by_app.json()["error"]["message"]


def test_python_api_rows_go_through_the_same_checks(org: Org) -> None:
    endpoint_id = org.dv.create_row(
        "serviceendpoints", {"name": "PRT", "contract": 6, "messageformat": 1, "path": "q"}
    )
    step_id = org.dv.create_row(
        "sdkmessageprocessingsteps",
        {
            "name": "by hand",
            "mode": 0,
            "stage": 20,
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
            "sdkmessageid@odata.bind": f"/sdkmessages({org.dv.sdk_message_id('Update')})",
        },
    )
    org.dv.update_row("sdkmessageprocessingsteps", step_id, {"stage": 40})
    assert org.dv.rows("sdkmessageprocessingsteps")[0]["stage"] == 40
    with pytest.raises(Exception, match="outside the valid range"):
        org.dv.update_row("sdkmessageprocessingsteps", step_id, {"mode": 7})
    org.dv.delete_row("sdkmessageprocessingsteps", step_id)
    assert org.dv.rows("sdkmessageprocessingsteps") == []
