"""The identity simulator, driven by real MSAL clients and ``requests`` over HTTPS."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests

from guardrails.sandbox import IdentitySimulator, SandboxTLS

pytestmark = pytest.mark.integration

TENANT = "11111111-1111-1111-1111-111111111111"
CLIENT = "55555555-5555-5555-5555-555555555555"
CERT_CLIENT = "66666666-6666-6666-6666-666666666666"
SECRET = "correct horse battery staple"
RESOURCE = "https://contoso.crm.dynamics.com"


@pytest.fixture(scope="module")
def tls() -> Iterator[SandboxTLS]:
    with SandboxTLS() as sandbox_tls:
        yield sandbox_tls


@pytest.fixture(scope="module")
def certificate(tls: SandboxTLS) -> tuple[Path, str]:
    return tls.client_certificate("guardrails-app")


@pytest.fixture
def idp(
    tls: SandboxTLS, certificate: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[IdentitySimulator]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_bundle_path()))
    with IdentitySimulator(tls) as simulator:
        simulator.register_app(TENANT, CLIENT, secret=SECRET)
        simulator.register_app(TENANT, CERT_CLIENT, certificate=certificate[0])
        yield simulator
        assert simulator.errors == [], simulator.errors


def confidential(
    idp: IdentitySimulator, credential: Any, client_id: str = CLIENT, tenant: str = TENANT
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id,
        authority=idp.authority(tenant),
        client_credential=credential,
        instance_discovery=False,
        http_client=requests.Session(),
    )


def split_pem(path: Path) -> tuple[str, str]:
    text = path.read_text()
    start = text.index("-----BEGIN CERTIFICATE-----")
    return text[:start], text[start:]


def test_client_secret_flow_and_msal_cache(idp: IdentitySimulator) -> None:
    app = confidential(idp, SECRET)
    first = app.acquire_token_for_client([f"{RESOURCE}/.default"])
    assert first["token_type"] == "Bearer"
    assert first["token_source"] == "identity_provider"
    assert 3590 <= first["expires_in"] <= 3600
    assert idp.token_requests == 1
    second = app.acquire_token_for_client([f"{RESOURCE}/.default"])
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    assert idp.token_requests == 1

    token = first["access_token"]
    assert idp.client_for(token, RESOURCE) == CLIENT
    assert idp.validate(token, RESOURCE + "/")
    assert not idp.validate(token, "https://graph.microsoft.com")
    assert not idp.validate("made-up", RESOURCE)
    (issued,) = idp.issued_tokens
    assert (issued.client_id, issued.tenant_id, issued.resource) == (CLIENT, TENANT, RESOURCE)

    idp.revoke_all()
    assert not idp.validate(token, RESOURCE)


def test_discovery_document(idp: IdentitySimulator) -> None:
    response = requests.get(
        f"{idp.authority(TENANT)}/v2.0/.well-known/openid-configuration", timeout=5
    )
    assert response.status_code == 200
    config = response.json()
    assert config["token_endpoint"] == idp.token_endpoint(TENANT)
    assert config["issuer"] == f"{idp.url}/{TENANT}/v2.0"
    assert requests.get(config["jwks_uri"], timeout=5).json() == {"keys": []}


def test_wrong_secret_returns_invalid_client(idp: IdentitySimulator) -> None:
    result = confidential(idp, "wrong").acquire_token_for_client([f"{RESOURCE}/.default"])
    assert "access_token" not in result
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    (recorded,) = idp.find_requests(method="POST")
    assert recorded.status == 401


def test_unknown_client_and_tenant(idp: IdentitySimulator) -> None:
    unknown = confidential(idp, SECRET, client_id=str(uuid.uuid4()))
    result = unknown.acquire_token_for_client([f"{RESOURCE}/.default"])
    assert result["error"] == "unauthorized_client"
    assert result["error_codes"] == [700016]
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        confidential(idp, SECRET, tenant="no-such-tenant")
    response = requests.post(
        f"{idp.url}/no-such-tenant/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": CLIENT},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def _secret_grant(idp: IdentitySimulator, scope: str = f"{RESOURCE}/.default") -> requests.Response:
    """A client-credentials request with the registered secret, sent as a plain form."""
    return requests.post(
        idp.token_endpoint(TENANT),
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT,
            "client_secret": SECRET,
            "scope": scope,
        },
        timeout=5,
    )


@pytest.mark.parametrize("style", ["thumbprint", "public_certificate", "both"])
def test_certificate_credential(
    idp: IdentitySimulator, certificate: tuple[Path, str], style: str
) -> None:
    path, thumbprint = certificate
    key_pem, cert_pem = split_pem(path)
    credential: dict[str, str] = {"private_key": key_pem}
    if style in ("thumbprint", "both"):
        credential["thumbprint"] = thumbprint  # SHA-1: MSAL signs RS256 with an x5t header
    if style in ("public_certificate", "both"):
        credential["public_certificate"] = cert_pem  # alone: PS256 with x5t#S256 and x5c
    result = confidential(idp, credential, client_id=CERT_CLIENT).acquire_token_for_client(
        [f"{RESOURCE}/.default"]
    )
    assert result.get("token_type") == "Bearer", result
    assert idp.client_for(result["access_token"], RESOURCE) == CERT_CLIENT
    assertion = idp.find_requests(method="POST")[0].body.decode()
    assert "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type" in assertion


def test_client_certificate_file_and_thumbprint(tls: SandboxTLS) -> None:
    path, thumbprint = tls.client_certificate("another-app")
    text = path.read_text()
    assert text.index("PRIVATE KEY-----") < text.index("-----BEGIN CERTIFICATE-----")
    assert len(thumbprint) == 40
    assert thumbprint == thumbprint.upper()
    int(thumbprint, 16)


def test_certificate_of_another_app_is_rejected(idp: IdentitySimulator, tls: SandboxTLS) -> None:
    other_path, other_thumbprint = tls.client_certificate("intruder")
    key_pem, _ = split_pem(other_path)
    result = confidential(
        idp, {"private_key": key_pem, "thumbprint": other_thumbprint}, client_id=CERT_CLIENT
    ).acquire_token_for_client([f"{RESOURCE}/.default"])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]


def _assertion(path: Path, thumbprint: str, audience: str, **claims: Any) -> str:
    key_pem, _ = split_pem(path)
    now = int(time.time())
    payload = {
        "aud": audience,
        "iss": CERT_CLIENT,
        "sub": CERT_CLIENT,
        "jti": str(uuid.uuid4()),
        "nbf": now - 10,
        "exp": now + 600,
        **claims,
    }
    x5t = base64.urlsafe_b64encode(bytes.fromhex(thumbprint)).decode().rstrip("=")
    return jwt.encode(payload, key_pem, algorithm="RS256", headers={"x5t": x5t})


@pytest.mark.parametrize(
    ("claims", "aadsts"),
    [
        ({"exp": int(time.time()) - 60}, 700024),
        ({"aud": "https://elsewhere.example/token"}, 700027),
        ({"sub": "someone-else"}, 700027),
        ({"iss": "someone-else"}, 700027),
    ],
)
def test_hand_made_assertions_are_checked(
    idp: IdentitySimulator, certificate: tuple[Path, str], claims: dict[str, Any], aadsts: int
) -> None:
    path, thumbprint = certificate
    token_endpoint = idp.token_endpoint(TENANT)
    good = _assertion(path, thumbprint, token_endpoint)
    bad = _assertion(path, thumbprint, token_endpoint, **claims)
    form = {
        "grant_type": "client_credentials",
        "client_id": CERT_CLIENT,
        "scope": f"{RESOURCE}/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    accepted = requests.post(token_endpoint, data={**form, "client_assertion": good}, timeout=5)
    assert accepted.status_code == 200
    rejected = requests.post(token_endpoint, data={**form, "client_assertion": bad}, timeout=5)
    assert rejected.status_code == 401
    assert rejected.json()["error_codes"] == [aadsts]


@pytest.mark.parametrize(
    ("scope", "error"),
    [
        (f"{RESOURCE}/user_impersonation", "invalid_scope"),
        (f"{RESOURCE}/.default https://graph.microsoft.com/.default", "invalid_scope"),
        ("", "invalid_request"),
    ],
)
def test_scope_must_be_one_default_scope(idp: IdentitySimulator, scope: str, error: str) -> None:
    response = _secret_grant(idp, scope)
    assert response.status_code == 400
    assert response.json()["error"] == error


def test_basic_authentication_and_grant_type(idp: IdentitySimulator) -> None:
    response = requests.post(
        idp.token_endpoint(TENANT),
        data={"grant_type": "client_credentials", "scope": f"{RESOURCE}/.default"},
        auth=(CLIENT, SECRET),
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json()["expires_in"] == 3600
    missing = requests.post(
        idp.token_endpoint(TENANT),
        data={"grant_type": "client_credentials", "client_id": CLIENT, "scope": "x/.default"},
        timeout=5,
    )
    assert missing.status_code == 401
    assert missing.json()["error_codes"] == [7000218]
    wrong_grant = requests.post(
        idp.token_endpoint(TENANT), data={"grant_type": "password"}, timeout=5
    )
    assert wrong_grant.json()["error"] == "unsupported_grant_type"


def test_token_lifetime_is_configurable(idp: IdentitySimulator) -> None:
    idp.token_lifetime = 0
    response = _secret_grant(idp)
    body = response.json()
    assert body["expires_in"] == 0
    assert not idp.validate(body["access_token"], RESOURCE)


@pytest.fixture
def msi_env(idp: IdentitySimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", idp.msi_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", idp.identity_header)


@pytest.mark.usefixtures("msi_env")
def test_system_assigned_managed_identity(idp: IdentitySimulator) -> None:
    client_id = idp.register_managed_identity()
    assert idp.register_managed_identity() == client_id == idp.system_assigned_client_id
    client = msal.ManagedIdentityClient(
        msal.SystemAssignedManagedIdentity(), http_client=requests.Session()
    )
    result = client.acquire_token_for_client(resource=RESOURCE)
    assert result.get("token_type") == "Bearer", result
    assert idp.client_for(result["access_token"], RESOURCE) == client_id
    assert idp.validator(RESOURCE)(result["access_token"]) == client_id
    again = client.acquire_token_for_client(resource=RESOURCE)
    assert again["token_source"] == "cache"
    assert idp.token_requests == 1
    (recorded,) = idp.find_requests(path_contains="/msi/token")
    assert recorded.headers["x-identity-header"] == idp.identity_header
    assert recorded.query["api-version"] == "2019-08-01"


@pytest.mark.usefixtures("msi_env")
def test_user_assigned_managed_identity(idp: IdentitySimulator) -> None:
    user_assigned = str(uuid.uuid4())
    idp.register_managed_identity(user_assigned)
    client = msal.ManagedIdentityClient(
        msal.UserAssignedManagedIdentity(client_id=user_assigned), http_client=requests.Session()
    )
    result = client.acquire_token_for_client(resource=RESOURCE)
    assert idp.client_for(result["access_token"], RESOURCE) == user_assigned

    unknown = msal.ManagedIdentityClient(
        msal.UserAssignedManagedIdentity(client_id=str(uuid.uuid4())),
        http_client=requests.Session(),
    )
    failed = unknown.acquire_token_for_client(resource=RESOURCE)
    assert "access_token" not in failed
    assert "No User Assigned or Delegated Managed Identity found" in failed["error_description"]
    # No system-assigned identity was registered in this test.
    system = msal.ManagedIdentityClient(
        msal.SystemAssignedManagedIdentity(), http_client=requests.Session()
    )
    assert "access_token" not in system.acquire_token_for_client(resource=RESOURCE)


def test_msi_endpoint_wire_format(idp: IdentitySimulator) -> None:
    client_id = idp.register_managed_identity()
    params = {"api-version": "2019-08-01", "resource": RESOURCE}
    response = requests.get(
        idp.msi_endpoint,
        params=params,
        headers={"X-IDENTITY-HEADER": idp.identity_header},
        timeout=5,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert isinstance(body["expires_on"], str)
    assert abs(int(body["expires_on"]) - (time.time() + 3600)) < 5
    assert body["client_id"] == client_id
    assert body["resource"] == RESOURCE

    forged = requests.get(
        idp.msi_endpoint, params=params, headers={"X-IDENTITY-HEADER": "guess"}, timeout=5
    )
    assert forged.status_code == 401
    old_api = requests.get(
        idp.msi_endpoint,
        params={**params, "api-version": "2017-09-01"},
        headers={"X-IDENTITY-HEADER": idp.identity_header},
        timeout=5,
    )
    assert old_api.status_code == 400


def test_injected_fault_on_token_endpoint(idp: IdentitySimulator) -> None:
    idp.inject(429, retry_after=1, path_contains="/oauth2/")
    response = _secret_grant(idp)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"] == "temporarily_unavailable"
    assert idp.issued_tokens == []
