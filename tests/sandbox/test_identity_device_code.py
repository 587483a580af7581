"""The identity simulator's device authorization grant (RFC 8628 as Entra implements it), over
real HTTPS with ``requests`` and with MSAL's public client, and the Dataverse simulator acting as
the person who signed in."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import msal
import pytest
import requests

from guardrails.sandbox import IdentitySimulator, SandboxTLS
from guardrails.sandbox.environment import TENANT_ID, Sandbox
from guardrails.sandbox.identity import DEVICE_CODE_GRANT

pytestmark = pytest.mark.integration

TENANT = "11111111-1111-1111-1111-111111111111"
OTHER_TENANT = "22222222-2222-2222-2222-222222222222"
PUBLIC = "77777777-7777-7777-7777-777777777777"
OTHER_PUBLIC = "88888888-8888-8888-8888-888888888888"
CONFIDENTIAL = "55555555-5555-5555-5555-555555555555"
SECRET = "correct horse battery staple"
RESOURCE = "https://contoso.crm.dynamics.com"
SIGN_IN_SCOPE = f"{RESOURCE}/.default offline_access openid profile"


@pytest.fixture(scope="module")
def tls() -> Iterator[SandboxTLS]:
    with SandboxTLS() as sandbox_tls:
        yield sandbox_tls


@pytest.fixture
def idp(tls: SandboxTLS, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentitySimulator]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_bundle_path()))
    with IdentitySimulator(tls) as simulator:
        simulator.register_public_client(TENANT, PUBLIC)
        simulator.register_public_client(TENANT, OTHER_PUBLIC)
        simulator.register_app(TENANT, CONFIDENTIAL, secret=SECRET)
        yield simulator
        assert simulator.errors == [], simulator.errors


@pytest.fixture
def dana(idp: IdentitySimulator) -> str:
    return idp.register_user(TENANT, username="dana@contoso.com", display_name="Dana Admin")


def start(
    idp: IdentitySimulator, client_id: str = PUBLIC, scope: str = SIGN_IN_SCOPE
) -> requests.Response:
    return requests.post(
        idp.device_authorization_endpoint(TENANT),
        data={"client_id": client_id, "scope": scope},
        timeout=5,
    )


def poll(
    idp: IdentitySimulator,
    device_code: str,
    client_id: str = PUBLIC,
    tenant: str = TENANT,
    **extra: str,
) -> requests.Response:
    return requests.post(
        idp.token_endpoint(tenant),
        data={
            "grant_type": DEVICE_CODE_GRANT,
            "client_id": client_id,
            "device_code": device_code,
            **extra,
        },
        timeout=5,
    )


def error_of(response: requests.Response) -> tuple[int, str, list[int]]:
    body = response.json()
    return response.status_code, body["error"], body["error_codes"]


def decode_part(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_discovery_names_the_device_authorization_endpoint(idp: IdentitySimulator) -> None:
    config = requests.get(
        f"{idp.authority(TENANT)}/v2.0/.well-known/openid-configuration", timeout=5
    ).json()
    assert config["device_authorization_endpoint"] == idp.device_authorization_endpoint(TENANT)
    assert config["device_authorization_endpoint"] == f"{idp.url}/{TENANT}/oauth2/v2.0/devicecode"


def test_pending_then_approved_then_a_token_for_the_person(
    idp: IdentitySimulator, dana: str
) -> None:
    started = start(idp)
    assert started.status_code == 200
    flow = started.json()
    assert set(flow) == {
        "user_code",
        "device_code",
        "verification_uri",
        "expires_in",
        "interval",
        "message",
    }
    assert (flow["expires_in"], flow["interval"]) == (900, 5)  # Entra's defaults
    assert flow["verification_uri"] == idp.verification_uri
    assert flow["message"] == (
        f"To sign in, use a web browser to open the page {idp.verification_uri} and enter the "
        f"code {flow['user_code']} to authenticate."
    )
    assert idp.pending_user_codes == [flow["user_code"]]
    assert idp.device_code_requests == 1

    for _ in range(2):  # polling changes nothing until the person acts
        assert error_of(poll(idp, flow["device_code"])) == (400, "authorization_pending", [70016])

    idp.approve_device_code(flow["user_code"].lower(), dana)  # people type codes in any case
    assert idp.pending_user_codes == []
    granted = poll(idp, flow["device_code"], client_info="1")
    assert granted.status_code == 200
    assert granted.headers["Cache-Control"] == "no-store, no-cache"
    body = granted.json()
    assert set(body) == {
        "token_type",
        "scope",
        "expires_in",
        "ext_expires_in",
        "access_token",
        "refresh_token",
        "id_token",
        "client_info",
    }
    assert body["token_type"] == "Bearer"
    assert body["scope"] == f"{RESOURCE}/user_impersonation {RESOURCE}/.default"
    assert 3590 <= body["expires_in"] <= 3600

    token = body["access_token"]
    assert idp.user_for(token, RESOURCE) == dana
    assert idp.user_for(token, RESOURCE + "/") == dana  # resources compare without the slash
    assert idp.client_for(token, RESOURCE) == PUBLIC
    assert idp.user_for(token, "https://graph.microsoft.com") is None
    (issued,) = [t for t in idp.issued_tokens if t.token == token]
    assert (issued.subject, issued.scopes, issued.tenant_id) == (
        dana,
        ("user_impersonation",),
        TENANT,
    )

    assert decode_part(body["client_info"]) == {"uid": dana, "utid": TENANT}
    keys = requests.get(f"{idp.authority(TENANT)}/discovery/v2.0/keys", timeout=5).json()["keys"]
    (key,) = keys
    header = jwt.get_unverified_header(body["id_token"])
    assert header["kid"] == key["kid"]
    claims = jwt.decode(
        body["id_token"],
        jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience=PUBLIC,
        issuer=f"{idp.url}/{TENANT}/v2.0",
    )
    assert (claims["oid"], claims["tid"], claims["preferred_username"], claims["name"]) == (
        dana,
        TENANT,
        "dana@contoso.com",
        "Dana Admin",
    )

    # A device code is redeemed once.
    assert error_of(poll(idp, flow["device_code"])) == (400, "bad_verification_code", [70018])


def test_without_offline_access_and_openid_only_the_access_token(
    idp: IdentitySimulator, dana: str
) -> None:
    flow = start(idp, scope=f"{RESOURCE}/user_impersonation").json()
    idp.approve_device_code(flow["user_code"], dana)
    body = poll(idp, flow["device_code"]).json()
    assert set(body) == {"token_type", "scope", "expires_in", "ext_expires_in", "access_token"}
    assert body["scope"] == f"{RESOURCE}/user_impersonation"


def test_the_refresh_token_gets_new_access_tokens_for_the_same_person(
    idp: IdentitySimulator, dana: str
) -> None:
    flow = start(idp).json()
    idp.approve_device_code(flow["user_code"], dana)
    first = poll(idp, flow["device_code"]).json()
    idp.revoke_all()
    assert idp.user_for(first["access_token"], RESOURCE) is None

    def refresh(refresh_token: str, client_id: str = PUBLIC) -> requests.Response:
        return requests.post(
            idp.token_endpoint(TENANT),
            data={
                "grant_type": "refresh_token",
                "client_id": client_id,
                "refresh_token": refresh_token,
                "scope": SIGN_IN_SCOPE,
            },
            timeout=5,
        )

    renewed = refresh(first["refresh_token"])
    assert renewed.status_code == 200
    body = renewed.json()
    assert idp.user_for(body["access_token"], RESOURCE) == dana
    assert body["refresh_token"] != first["refresh_token"]
    assert error_of(refresh(first["refresh_token"], OTHER_PUBLIC)) == (
        400,
        "invalid_grant",
        [70000],
    )
    assert error_of(refresh("not-a-refresh-token")) == (400, "invalid_grant", [70000])


def test_a_declined_code_stays_declined(idp: IdentitySimulator, dana: str) -> None:
    flow = start(idp).json()
    idp.decline_device_code(flow["user_code"])
    for _ in range(2):
        assert error_of(poll(idp, flow["device_code"])) == (400, "authorization_declined", [65004])
    with pytest.raises(ValueError, match="already declined"):
        idp.approve_device_code(flow["user_code"], dana)
    assert idp.pending_user_codes == []


def test_an_expired_code_cannot_be_approved_or_redeemed(idp: IdentitySimulator, dana: str) -> None:
    idp.device_code_lifetime = 0.2
    flow = start(idp).json()
    assert flow["expires_in"] == 1  # whole seconds, rounded up
    time.sleep(0.3)
    assert idp.pending_user_codes == []
    with pytest.raises(KeyError, match="no device code awaits approval"):
        idp.approve_device_code(flow["user_code"], dana)
    assert error_of(poll(idp, flow["device_code"])) == (400, "expired_token", [70019])


def test_an_approved_code_expires_if_not_redeemed_in_time(
    idp: IdentitySimulator, dana: str
) -> None:
    idp.device_code_lifetime = 0.2
    flow = start(idp).json()
    idp.approve_device_code(flow["user_code"], dana)
    time.sleep(0.3)
    assert error_of(poll(idp, flow["device_code"])) == (400, "expired_token", [70019])


def test_only_the_client_that_asked_redeems_and_only_as_a_public_client(
    idp: IdentitySimulator, dana: str
) -> None:
    unknown = start(idp, client_id="99999999-9999-9999-9999-999999999999")
    assert error_of(unknown) == (400, "unauthorized_client", [700016])

    flow = start(idp).json()
    idp.approve_device_code(flow["user_code"], dana)
    # Another public client of the tenant does not know this device code.
    assert error_of(poll(idp, flow["device_code"], OTHER_PUBLIC)) == (
        400,
        "bad_verification_code",
        [70018],
    )
    # A public client presents no credential.
    assert error_of(poll(idp, flow["device_code"], client_secret="s3cret")) == (
        401,
        "invalid_client",
        [700025],
    )
    assert error_of(poll(idp, "not-a-device-code")) == (400, "bad_verification_code", [70018])
    # The right client still redeems it after all that.
    assert poll(idp, flow["device_code"]).status_code == 200

    # An app without "Allow public client flows" must authenticate, as AADSTS7000218 says.
    confidential = start(idp, client_id=CONFIDENTIAL).json()
    idp.approve_device_code(confidential["user_code"], dana)
    assert error_of(poll(idp, confidential["device_code"], CONFIDENTIAL)) == (
        401,
        "invalid_client",
        [7000218],
    )
    wrong = poll(idp, confidential["device_code"], CONFIDENTIAL, client_secret="wrong")
    assert error_of(wrong) == (401, "invalid_client", [7000215])
    right = poll(idp, confidential["device_code"], CONFIDENTIAL, client_secret=SECRET)
    assert right.status_code == 200
    assert idp.user_for(right.json()["access_token"], RESOURCE) == dana

    # A public client cannot use the client-credentials grant.
    app_only = requests.post(
        idp.token_endpoint(TENANT),
        data={"grant_type": "client_credentials", "client_id": PUBLIC, "scope": SIGN_IN_SCOPE},
        timeout=5,
    )
    assert error_of(app_only) == (401, "invalid_client", [7000218])


def test_a_code_belongs_to_its_tenant_and_its_people(idp: IdentitySimulator, dana: str) -> None:
    idp.register_public_client(OTHER_TENANT, PUBLIC)
    outsider = idp.register_user(OTHER_TENANT, username="eve@fabrikam.com")
    flow = start(idp).json()
    with pytest.raises(ValueError, match="not in tenant"):
        idp.approve_device_code(flow["user_code"], outsider)
    with pytest.raises(KeyError, match="no user with object id"):
        idp.approve_device_code(flow["user_code"], "00000000-0000-0000-0000-000000000000")
    with pytest.raises(KeyError, match="no device code awaits approval"):
        idp.approve_device_code("NOSUCHCODE", dana)
    idp.approve_device_code(flow["user_code"], dana)
    # Polled under another tenant than the one it was requested for, it is not recognised.
    assert error_of(poll(idp, flow["device_code"], tenant=OTHER_TENANT)) == (
        400,
        "bad_verification_code",
        [70018],
    )
    with pytest.raises(ValueError, match="already exists"):
        idp.register_user(TENANT, username="dana2@contoso.com", object_id=dana.upper())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"client_id": PUBLIC}, (400, "invalid_request", [900144])),
        ({"client_id": PUBLIC, "scope": "openid profile"}, (400, "invalid_scope", [70011])),
        (
            {
                "client_id": PUBLIC,
                "scope": f"{RESOURCE}/.default https://graph.microsoft.com/.default",
            },
            (400, "invalid_scope", [70011]),
        ),
        ({"client_id": PUBLIC, "scope": "user_impersonation"}, (400, "invalid_scope", [70011])),
        ({"scope": SIGN_IN_SCOPE}, (400, "invalid_request", [900144])),
    ],
)
def test_device_authorization_requests_are_checked(
    idp: IdentitySimulator, data: dict[str, str], expected: tuple[int, str, list[int]]
) -> None:
    response = requests.post(idp.device_authorization_endpoint(TENANT), data=data, timeout=5)
    assert error_of(response) == expected
    assert idp.pending_user_codes == []


def test_the_endpoints_take_only_post(idp: IdentitySimulator) -> None:
    response = requests.get(idp.device_authorization_endpoint(TENANT), timeout=5)
    assert error_of(response) == (405, "invalid_request", [900561])
    missing = requests.post(
        idp.token_endpoint(TENANT),
        data={"grant_type": DEVICE_CODE_GRANT, "client_id": PUBLIC},
        timeout=5,
    )
    assert error_of(missing) == (400, "invalid_request", [900144])
    unknown_tenant = requests.post(
        f"{idp.url}/no-such-tenant/oauth2/v2.0/devicecode",
        data={"client_id": PUBLIC, "scope": SIGN_IN_SCOPE},
        timeout=5,
    )
    assert error_of(unknown_tenant) == (400, "invalid_request", [90002])


def test_msal_signs_a_person_in_and_caches_their_account(idp: IdentitySimulator, dana: str) -> None:
    app = msal.PublicClientApplication(
        PUBLIC,
        authority=idp.authority(TENANT),
        instance_discovery=False,
        http_client=requests.Session(),
    )
    flow = app.initiate_device_flow(scopes=[f"{RESOURCE}/.default"])
    assert flow["user_code"] in flow["message"]
    idp.approve_device_code(flow["user_code"], dana)
    result = app.acquire_token_by_device_flow(flow)
    assert result["token_source"] == "identity_provider"
    assert idp.user_for(result["access_token"], RESOURCE) == dana
    assert result["id_token_claims"]["oid"] == dana
    (account,) = app.get_accounts()
    assert account["username"] == "dana@contoso.com"
    assert account["home_account_id"] == f"{dana}.{TENANT}"
    cached = app.acquire_token_silent([f"{RESOURCE}/.default"], account=account)
    assert cached is not None
    assert cached["access_token"] == result["access_token"]
    assert cached["token_source"] == "cache"
    before = idp.token_requests
    refreshed = app.acquire_token_silent(
        [f"{RESOURCE}/.default"], account=account, force_refresh=True
    )
    assert refreshed is not None
    assert refreshed["access_token"] != result["access_token"]
    assert idp.user_for(refreshed["access_token"], RESOURCE) == dana
    assert idp.token_requests == before + 1  # one refresh-token grant, no new sign-in
    assert idp.device_code_requests == 1


def test_dataverse_acts_as_the_person_who_signed_in(monkeypatch: pytest.MonkeyPatch) -> None:
    with Sandbox() as sandbox:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.tls.ca_bundle_path()))
        identity, dataverse = sandbox.identity, sandbox.dataverse
        admin = sandbox.add_signin_user("Dana Admin", "dana@contoso.com")
        client = sandbox.admin_public_client()
        stranger = identity.register_user(TENANT_ID, username="sam@contoso.com")

        def sign_in(object_id: str) -> str:
            flow = requests.post(
                identity.device_authorization_endpoint(TENANT_ID),
                data={"client_id": client, "scope": f"{dataverse.url}/.default"},
                timeout=5,
            ).json()
            identity.approve_device_code(flow["user_code"], object_id)
            response = requests.post(
                identity.token_endpoint(TENANT_ID),
                data={
                    "grant_type": DEVICE_CODE_GRANT,
                    "client_id": client,
                    "device_code": flow["device_code"],
                },
                timeout=5,
            )
            return str(response.json()["access_token"])

        def who_am_i(token: str) -> requests.Response:
            return requests.get(
                f"{dataverse.api_url}/WhoAmI",
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            )

        admin_oid = str(dataverse.user(admin)["azureactivedirectoryobjectid"])
        answer = who_am_i(sign_in(admin_oid))
        assert answer.status_code == 200
        assert answer.json()["UserId"] == admin
        (request,) = dataverse.find_requests(method="GET")
        assert dataverse.caller(request) == admin

        # Signed in, but without a user in this environment: Dataverse refuses the person.
        refused = who_am_i(sign_in(stranger))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "0x80072560"
        assert dataverse.errors == []
