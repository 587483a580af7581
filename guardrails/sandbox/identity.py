"""A stand-in for the Microsoft identity platform and the App Service managed-identity endpoint.

It speaks exactly the protocol MSAL Python uses, so the production token code runs unchanged:

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (MSAL's tenant discovery when
  ``instance_discovery=False``),
* ``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``, authenticated by
  a client secret (body or HTTP Basic) or a certificate-signed ``client_assertion`` JWT,
* ``GET /msi/token`` as App Service / Azure Functions expose it through ``IDENTITY_ENDPOINT``
  and ``IDENTITY_HEADER``.

Access tokens are opaque random strings; the resource servers of the sandbox ask this object
whether a token is valid for them (:meth:`IdentitySimulator.client_for`), which also lets tests
revoke every token at once to exercise a client's 401-then-refresh path.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, unquote

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from guardrails.sandbox.http import Request, Response, SandboxServer, json_response
from guardrails.sandbox.tls import SandboxTLS

__all__ = ["IdentitySimulator", "IssuedToken"]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MSI_API_VERSION = "2019-08-01"


@dataclass(frozen=True)
class IssuedToken:
    """An access token the simulator handed out."""

    token: str
    resource: str
    client_id: str
    expires_at: float
    tenant_id: str | None = None  # None for managed identities
    managed_identity: bool = False


@dataclass(frozen=True)
class _Certificate:
    public_key: rsa.RSAPublicKey
    sha1: bytes
    sha256: bytes


@dataclass
class _App:
    tenant_id: str
    client_id: str
    secrets: list[str] = field(default_factory=list)
    certificates: list[_Certificate] = field(default_factory=list)


@dataclass(frozen=True)
class _ManagedIdentity:
    client_id: str
    object_id: str
    resource_id: str | None
    system_assigned: bool


class _OAuthError(Exception):
    """An AAD error answer: HTTP status, OAuth ``error`` and an ``AADSTS`` description."""

    def __init__(self, status: int, error: str, aadsts: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.aadsts = aadsts
        self.description = description


def _normalize_resource(resource: str) -> str:
    return resource.rstrip("/").lower()


def _b64url_decode(value: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        return None


def _load_certificate(certificate: str | bytes | Path) -> _Certificate:
    if isinstance(certificate, Path):
        data = certificate.read_bytes()
    elif isinstance(certificate, str):
        data = certificate.encode("ascii")
    else:
        data = certificate
    marker = b"-----BEGIN CERTIFICATE-----"
    start = data.find(marker)
    if start < 0:
        raise ValueError("certificate must contain a PEM 'BEGIN CERTIFICATE' block")
    cert = x509.load_pem_x509_certificate(data[start:])
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError("app registration certificates must use RSA keys (RS256/PS256)")
    return _Certificate(
        public_key=public_key,
        sha1=cert.fingerprint(hashes.SHA1()),  # x5t is SHA-1 by definition
        sha256=cert.fingerprint(hashes.SHA256()),
    )


class IdentitySimulator(SandboxServer):
    """Microsoft identity platform (client credentials) plus the App Service MSI endpoint.

    MSAL requires an ``https`` authority, so pass a :class:`SandboxTLS` when confidential clients
    are used. ``token_lifetime`` (seconds) is settable at any time.
    """

    def __init__(
        self,
        tls: SandboxTLS | None = None,
        *,
        token_lifetime: int = 3600,
        latency: float = 0.0,
    ) -> None:
        self.token_lifetime = token_lifetime
        self._state_lock = threading.Lock()
        self._apps: dict[tuple[str, str], _App] = {}
        self._tenants: set[str] = set()
        self._identities: list[_ManagedIdentity] = []
        self._tokens: dict[str, IssuedToken] = {}
        self._token_requests = 0
        self._identity_header = secrets.token_urlsafe(24)
        super().__init__(tls, latency=latency)

    # -- registration -------------------------------------------------------------------------

    def register_app(
        self,
        tenant_id: str,
        client_id: str,
        *,
        secret: str | None = None,
        certificate: str | bytes | Path | None = None,
    ) -> None:
        """Register (or add a credential to) an app registration in a tenant.

        ``certificate`` is PEM text or a PEM file containing the public certificate (a combined
        key+certificate file from :meth:`SandboxTLS.client_certificate` works too); only its
        public key and thumbprints are kept.
        """
        if secret is None and certificate is None:
            raise ValueError("an app registration needs a secret or a certificate")
        loaded = _load_certificate(certificate) if certificate is not None else None
        with self._state_lock:
            self._tenants.add(tenant_id.lower())
            app = self._apps.setdefault(
                (tenant_id.lower(), client_id.lower()), _App(tenant_id, client_id)
            )
            if secret is not None:
                app.secrets.append(secret)
            if loaded is not None:
                app.certificates.append(loaded)

    def register_managed_identity(
        self, client_id: str | None = None, *, resource_id: str | None = None
    ) -> str:
        """Register a user-assigned identity (``client_id``) or the system-assigned one (None).

        Returns the identity's client id; a system-assigned identity gets a generated one (as in
        Azure, where it is the enterprise application's app id), so it can be mapped to a
        Dataverse application user like any other client.
        """
        with self._state_lock:
            if client_id is None:
                for identity in self._identities:
                    if identity.system_assigned:
                        return identity.client_id
                client_id = str(uuid.uuid4())
                system = True
            else:
                system = False
            self._identities.append(
                _ManagedIdentity(client_id, str(uuid.uuid4()), resource_id, system)
            )
            return client_id

    @property
    def system_assigned_client_id(self) -> str | None:
        with self._state_lock:
            for identity in self._identities:
                if identity.system_assigned:
                    return identity.client_id
        return None

    @property
    def identity_header(self) -> str:
        """The secret App Service puts in ``IDENTITY_HEADER``."""
        return self._identity_header

    @property
    def msi_endpoint(self) -> str:
        """The value for ``IDENTITY_ENDPOINT``."""
        return f"{self.url}/msi/token"

    def authority(self, tenant_id: str) -> str:
        """The MSAL authority URL for a tenant."""
        return f"{self.url}/{tenant_id}"

    def token_endpoint(self, tenant_id: str) -> str:
        return f"{self.url}/{tenant_id}/oauth2/v2.0/token"

    # -- token inspection ---------------------------------------------------------------------

    def client_for(self, token: str, resource: str) -> str | None:
        """The client id a token was issued to, if it is known, unexpired and for ``resource``."""
        with self._state_lock:
            issued = self._tokens.get(token)
        if issued is None or issued.expires_at <= time.time():
            return None
        if _normalize_resource(issued.resource) != _normalize_resource(resource):
            return None
        return issued.client_id

    def validate(self, token: str, resource: str) -> bool:
        return self.client_for(token, resource) is not None

    def validator(self, resource: str) -> Callable[[str], str | None]:
        """A ``token_validator`` for a resource server of the sandbox (returns the client id)."""
        return lambda token: self.client_for(token, resource)

    def revoke_all(self) -> None:
        """Forget every issued token: resource servers will answer 401 until clients refresh."""
        with self._state_lock:
            self._tokens.clear()

    @property
    def issued_tokens(self) -> list[IssuedToken]:
        with self._state_lock:
            return list(self._tokens.values())

    @property
    def token_requests(self) -> int:
        """How many requests reached a token endpoint (client credentials or MSI)."""
        with self._state_lock:
            return self._token_requests

    # -- HTTP ---------------------------------------------------------------------------------

    def fault_body(self, request: Request, status: int) -> object:
        if request.path.startswith("/msi/"):
            return {"statusCode": status, "message": "The service is temporarily unavailable."}
        return self._error_body(
            _OAuthError(
                status,
                "temporarily_unavailable",
                50196 if status == 429 else 500011,
                "The server is temporarily unable to handle the request. Retry later.",
            )
        )

    def handle(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["msi", "token"]:
            if request.method != "GET":
                return json_response(405, {"statusCode": 405, "message": "Use GET."})
            return self._msi(request)
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            if request.method != "GET":
                return self._oauth_error(_OAuthError(405, "invalid_request", 900561, "Use GET."))
            return self._discovery(parts[0])
        if len(parts) == 4 and parts[1:] == ["discovery", "v2.0", "keys"]:
            # Access tokens here are opaque, so there are no signing keys to publish.
            return json_response(200, {"keys": []})
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            if request.method != "POST":
                return self._oauth_error(
                    _OAuthError(
                        405, "invalid_request", 900561, "The endpoint only accepts POST requests."
                    )
                )
            return self._token(parts[0], request)
        return self._oauth_error(
            _OAuthError(404, "invalid_request", 90000, f"No endpoint at '{request.path}'.")
        )

    def _discovery(self, tenant: str) -> Response:
        with self._state_lock:
            known = tenant.lower() in self._tenants
        if not known:
            return self._oauth_error(
                _OAuthError(
                    400,
                    "invalid_tenant",
                    90002,
                    f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant "
                    "ID and are signing into the correct cloud.",
                )
            )
        base = f"{self.url}/{tenant}"
        return json_response(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "sandbox.invalid",
            },
        )

    def _token(self, tenant: str, request: Request) -> Response:
        with self._state_lock:
            self._token_requests += 1
        try:
            issued = self._client_credentials(tenant, request)
        except _OAuthError as error:
            return self._oauth_error(error)
        lifetime = max(0, round(issued.expires_at - time.time()))
        return json_response(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": issued.token,
            },
            headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"},
        )

    def _client_credentials(self, tenant: str, request: Request) -> IssuedToken:
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        basic_id, basic_secret = _basic_credentials(request.header("authorization"))
        with self._state_lock:
            tenant_known = tenant.lower() in self._tenants
        if not tenant_known:
            raise _OAuthError(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )
        grant_type = form.get("grant_type")
        if grant_type != "client_credentials":
            raise _OAuthError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'.",
            )
        client_id = form.get("client_id") or basic_id
        if not client_id:
            raise _missing_parameter("client_id")
        with self._state_lock:
            app = self._apps.get((tenant.lower(), client_id.lower()))
        if app is None:
            raise _OAuthError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.",
            )
        secret = form.get("client_secret") or basic_secret
        assertion = form.get("client_assertion")
        if secret and assertion:
            raise _OAuthError(
                401,
                "invalid_client",
                90023,
                "Only one client credential may be presented: client_secret or client_assertion.",
            )
        if assertion:
            if form.get("client_assertion_type") != JWT_BEARER:
                raise _OAuthError(
                    400,
                    "invalid_request",
                    90014,
                    f"The request body must contain client_assertion_type={JWT_BEARER}.",
                )
            self._verify_assertion(app, tenant, assertion)
        elif secret:
            if not any(hmac.compare_digest(secret, known) for known in app.secrets):
                raise _OAuthError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request "
                    "is the client secret value, not the client secret ID, for a secret added to "
                    f"app '{client_id}'.",
                )
        else:
            raise _OAuthError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        resource = _resource_from_scope(form.get("scope"))
        return self._issue(resource, app.client_id, tenant_id=app.tenant_id)

    def _verify_assertion(self, app: _App, tenant: str, assertion: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            raise _invalid_assertion(f"The client assertion is not a valid JWT ({exc}).") from exc
        algorithm = header.get("alg")
        if algorithm not in ("RS256", "PS256"):
            raise _invalid_assertion(f"Unsupported signing algorithm '{algorithm}'.")
        candidates = list(app.certificates)
        x5t, x5t256 = header.get("x5t"), header.get("x5t#S256")
        if isinstance(x5t, str):
            digest = _b64url_decode(x5t)
            candidates = [c for c in candidates if c.sha1 == digest]
        if isinstance(x5t256, str):
            digest = _b64url_decode(x5t256)
            candidates = [c for c in candidates if c.sha256 == digest]
        if not candidates:
            shown = x5t256 if isinstance(x5t256, str) else x5t
            raise _invalid_assertion(
                "Client assertion contains an invalid signature. [Reason - The key was not "
                f"found., Thumbprint of key used by client: '{shown}']"
            )
        audiences = [f"{self.url}/{tenant}/oauth2/v2.0/token", f"{self.url}/{tenant}/oauth2/token"]
        for candidate in candidates:
            try:
                jwt.decode(
                    assertion,
                    candidate.public_key,
                    algorithms=[algorithm],
                    audience=audiences,
                    issuer=app.client_id,
                    subject=app.client_id,
                    options={"require": ["exp", "aud", "iss", "sub"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError as exc:
                raise _OAuthError(
                    401,
                    "invalid_client",
                    700024,
                    "Client assertion is not within its valid time range.",
                ) from exc
            except jwt.PyJWTError as exc:
                raise _invalid_assertion(f"Client assertion failed validation: {exc}.") from exc
            return
        raise _invalid_assertion(
            "Client assertion contains an invalid signature. [Reason - The signature does not "
            "match any registered certificate.]"
        )

    def _msi(self, request: Request) -> Response:
        with self._state_lock:
            self._token_requests += 1
        presented = request.header("x-identity-header") or ""
        if not hmac.compare_digest(presented, self._identity_header):
            return _msi_error(401, "The X-IDENTITY-HEADER is missing or does not match.")
        if request.query.get("api-version") != MSI_API_VERSION:
            return _msi_error(
                400, f"Unsupported api-version; this endpoint serves {MSI_API_VERSION}."
            )
        resource = request.query.get("resource")
        if not resource:
            return _msi_error(400, "The 'resource' query parameter is required.")
        identity = self._find_identity(request.query)
        if identity is None:
            return _msi_error(
                400,
                "No User Assigned or Delegated Managed Identity found for specified "
                "ClientId/ResourceId/PrincipalId.",
            )
        issued = self._issue(unquote(resource), identity.client_id, managed_identity=True)
        return json_response(
            200,
            {
                "access_token": issued.token,
                "expires_on": str(int(issued.expires_at)),
                "resource": issued.resource,
                "token_type": "Bearer",
                "client_id": identity.client_id,
            },
        )

    def _find_identity(self, query: dict[str, str]) -> _ManagedIdentity | None:
        client_id = query.get("client_id")
        resource_id = query.get("mi_res_id")
        object_id = query.get("object_id") or query.get("principal_id")
        with self._state_lock:
            identities = list(self._identities)

        def selected(identity: _ManagedIdentity) -> bool:
            if client_id is not None:
                return (
                    not identity.system_assigned and identity.client_id.lower() == client_id.lower()
                )
            if resource_id is not None:
                return (identity.resource_id or "").lower() == resource_id.lower()
            if object_id is not None:
                return identity.object_id.lower() == object_id.lower()
            return identity.system_assigned

        return next((identity for identity in identities if selected(identity)), None)

    def _issue(
        self,
        resource: str,
        client_id: str,
        *,
        tenant_id: str | None = None,
        managed_identity: bool = False,
    ) -> IssuedToken:
        issued = IssuedToken(
            token=secrets.token_urlsafe(32),
            resource=resource,
            client_id=client_id,
            expires_at=time.time() + self.token_lifetime,
            tenant_id=tenant_id,
            managed_identity=managed_identity,
        )
        with self._state_lock:
            self._tokens[issued.token] = issued
        return issued

    def _error_body(self, error: _OAuthError) -> dict[str, object]:
        trace = str(uuid.uuid4())
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": error.error,
            "error_description": f"AADSTS{error.aadsts}: {error.description} "
            f"Trace ID: {trace} Correlation ID: {trace} Timestamp: {now}",
            "error_codes": [error.aadsts],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": trace,
        }

    def _oauth_error(self, error: _OAuthError) -> Response:
        return json_response(error.status, self._error_body(error))


def _basic_credentials(authorization: str | None) -> tuple[str | None, str | None]:
    if not authorization or not authorization.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(authorization[6:].strip()).decode("utf-8")
    except ValueError:
        return None, None
    user, _, password = decoded.partition(":")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before being joined.
    return unquote(user.replace("+", " ")), unquote(password.replace("+", " "))


def _resource_from_scope(scope: str | None) -> str:
    if not scope:
        raise _missing_parameter("scope")
    scopes = scope.split()
    if len(scopes) != 1:
        raise _OAuthError(
            400,
            "invalid_scope",
            70011,
            f"The provided value for the input parameter 'scope' is not valid. The scope {scope} "
            "is not valid. Client credential flows take exactly one resource.",
        )
    if not scopes[0].endswith("/.default") or len(scopes[0]) <= len("/.default"):
        raise _OAuthError(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must "
            "have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI).",
        )
    return scopes[0][: -len("/.default")]


def _missing_parameter(name: str) -> _OAuthError:
    return _OAuthError(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{name}'.",
    )


def _invalid_assertion(description: str) -> _OAuthError:
    return _OAuthError(401, "invalid_client", 700027, description)


def _msi_error(status: int, message: str) -> Response:
    return json_response(
        status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())}
    )
