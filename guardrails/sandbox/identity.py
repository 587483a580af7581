"""A stand-in for the Microsoft identity platform and the App Service managed-identity endpoint.

It speaks exactly the protocol MSAL Python uses, so the production token code runs unchanged:

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (MSAL's tenant discovery when
  ``instance_discovery=False``),
* ``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``, authenticated by
  a client secret (body or HTTP Basic) or a certificate-signed ``client_assertion`` JWT,
* the device authorization grant (RFC 8628) as Entra implements it: ``POST
  /{tenant}/oauth2/v2.0/devicecode``, then polling the token endpoint with
  ``grant_type=urn:ietf:params:oauth:grant-type:device_code`` (``authorization_pending`` until a
  person approves, ``authorization_declined``, ``expired_token``, ``bad_verification_code``), and
  ``grant_type=refresh_token`` for the refresh token that sign-in hands out,
* ``GET /msi/token`` as App Service / Azure Functions expose it through ``IDENTITY_ENDPOINT``
  and ``IDENTITY_HEADER``.

Access tokens are opaque random strings; the resource servers of the sandbox ask this object
whether a token is valid for them (:meth:`IdentitySimulator.client_for`, and for a person's
delegated tokens :meth:`IdentitySimulator.user_for`), which also lets tests revoke every token at
once to exercise a client's 401-then-refresh path. Nobody opens a browser here: a test plays the
person at the verification page with :meth:`IdentitySimulator.approve_device_code` or
:meth:`IdentitySimulator.decline_device_code`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from guardrails.sandbox.http import Request, Response, SandboxServer, json_response
from guardrails.sandbox.tls import SandboxTLS

__all__ = ["IdentitySimulator", "IssuedToken"]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MSI_API_VERSION = "2019-08-01"
# Scopes of OpenID Connect itself: they ask for an ID token, a refresh token and profile claims,
# not for access to a resource.
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
# What Entra's device-code answers show; the letters a person cannot confuse.
_USER_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_USER_CODE_LENGTH = 9
_POST_ENDPOINTS = ("token", "devicecode")


@dataclass(frozen=True)
class IssuedToken:
    """An access token the simulator handed out."""

    token: str
    resource: str
    client_id: str
    expires_at: float
    tenant_id: str | None = None  # None for managed identities
    managed_identity: bool = False
    subject: str | None = None  # a delegated token's user (object id); None for an app's token
    scopes: tuple[str, ...] = ()  # a delegated token's permissions on the resource (``scp``)


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
    public_client: bool = False  # "Allow public client flows": no credential needed
    # Delegated permissions consented for the app; `{resource}/.default` asks for these.
    delegated: tuple[str, ...] = ("user_impersonation",)


@dataclass(frozen=True)
class _User:
    tenant_id: str
    object_id: str
    username: str
    display_name: str


@dataclass(frozen=True)
class _Delegation:
    """What a person's token request asks for: one resource's permissions, and OIDC's extras."""

    resource: str  # as the request spelled it, without the permission
    permissions: tuple[str, ...]
    scope: str  # the token response's `scope`
    openid: bool
    offline_access: bool


@dataclass
class _DeviceAuthorization:
    device_code: str
    user_code: str
    tenant: str  # the tenant segment of the request, lower-cased
    client_id: str
    delegation: _Delegation
    expires_at: float
    state: Literal["pending", "approved", "declined"] = "pending"
    user: _User | None = None


@dataclass(frozen=True)
class _RefreshGrant:
    tenant: str  # the tenant segment it was issued under, lower-cased
    client_id: str
    user: _User


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
    are used. ``token_lifetime`` (seconds) is settable at any time, and so are the device-code
    flow's ``device_code_lifetime`` (seconds, Entra's 15 minutes by default; fractions allowed,
    ``expires_in`` shows it rounded up) and ``device_code_interval`` (the polling interval it
    asks for, Entra's 5 seconds by default; MSAL sleeps that many whole seconds between polls).
    """

    def __init__(
        self,
        tls: SandboxTLS | None = None,
        *,
        token_lifetime: int = 3600,
        latency: float = 0.0,
    ) -> None:
        self.token_lifetime = token_lifetime
        self.device_code_lifetime: float = 900.0
        self.device_code_interval = 5
        self._state_lock = threading.Lock()
        self._apps: dict[tuple[str, str], _App] = {}
        self._tenants: set[str] = set()
        self._users: dict[str, _User] = {}
        self._identities: list[_ManagedIdentity] = []
        self._tokens: dict[str, IssuedToken] = {}
        self._device_codes: dict[str, _DeviceAuthorization] = {}
        self._user_codes: dict[str, str] = {}  # user code -> device code
        self._refresh_tokens: dict[str, _RefreshGrant] = {}
        self._signing_key: rsa.RSAPrivateKey | None = None
        self._signing_kid = secrets.token_hex(8)
        self._token_requests = 0
        self._device_code_requests = 0
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

    def register_public_client(
        self,
        tenant_id: str,
        client_id: str,
        *,
        delegated: tuple[str, ...] = ("user_impersonation",),
    ) -> None:
        """Register a public client app (or turn on "Allow public client flows" for one).

        People sign in through it with a device code, no client credential needed. ``delegated``
        are the delegated permissions consented for it, which a ``{resource}/.default`` scope
        asks for (Dynamics CRM's ``user_impersonation`` for the admin commands).
        """
        with self._state_lock:
            self._tenants.add(tenant_id.lower())
            app = self._apps.setdefault(
                (tenant_id.lower(), client_id.lower()), _App(tenant_id, client_id)
            )
            app.public_client = True
            app.delegated = tuple(delegated)

    def register_user(
        self,
        tenant_id: str,
        *,
        username: str,
        object_id: str | None = None,
        display_name: str | None = None,
    ) -> str:
        """Add a person to a tenant's directory; returns their object id (``oid``).

        Give the object id of their Dataverse user (``azureactivedirectoryobjectid``) so that
        Dataverse maps their delegated tokens to that user, as it does in Microsoft's cloud.
        """
        oid = (object_id or str(uuid.uuid4())).lower()
        user = _User(tenant_id, oid, username, display_name or username)
        with self._state_lock:
            if oid in self._users:
                raise ValueError(f"a user with object id {oid} already exists")
            self._tenants.add(tenant_id.lower())
            self._users[oid] = user
        return oid

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

    def device_authorization_endpoint(self, tenant_id: str) -> str:
        return f"{self.url}/{tenant_id}/oauth2/v2.0/devicecode"

    @property
    def verification_uri(self) -> str:
        """Where a device-code answer sends the person (nobody browses it in the sandbox)."""
        return f"{self.url}/devicelogin"

    # -- the person at the verification page --------------------------------------------------

    def approve_device_code(self, user_code: str, object_id: str) -> None:
        """The person ``object_id`` enters ``user_code``, signs in and consents.

        Raises KeyError for a code that is unknown, already used or expired, or an unknown
        person, and ValueError for a code already declined or approved, or a person from
        another tenant than the one the code was requested for.
        """
        with self._state_lock:
            pending = self._awaiting(user_code)
            user = self._users.get(object_id.lower())
            if user is None:
                raise KeyError(f"no user with object id {object_id}")
            if user.tenant_id.lower() != pending.tenant:
                raise ValueError(
                    f"user {user.username} is not in tenant {pending.tenant}, where the code "
                    "was requested"
                )
            pending.state = "approved"
            pending.user = user

    def decline_device_code(self, user_code: str) -> None:
        """The person enters ``user_code`` and cancels the sign-in."""
        with self._state_lock:
            self._awaiting(user_code).state = "declined"

    def _awaiting(self, user_code: str) -> _DeviceAuthorization:
        device_code = self._user_codes.get(user_code.strip().upper())
        authorization = self._device_codes.get(device_code) if device_code else None
        if authorization is None or authorization.expires_at <= time.time():
            raise KeyError(f"no device code awaits approval with user code {user_code!r}")
        if authorization.state != "pending":
            raise ValueError(f"user code {user_code!r} was already {authorization.state}")
        return authorization

    @property
    def pending_user_codes(self) -> list[str]:
        """User codes that await a person, oldest first."""
        now = time.time()
        with self._state_lock:
            return [
                a.user_code
                for a in self._device_codes.values()
                if a.state == "pending" and a.expires_at > now
            ]

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

    def user_for(self, token: str, resource: str) -> str | None:
        """The object id of the person a valid delegated token for ``resource`` was issued for.

        None for an unknown, expired or other resource's token, and for an app's own token.
        """
        if self.client_for(token, resource) is None:
            return None
        with self._state_lock:
            issued = self._tokens.get(token)
        return issued.subject if issued is not None else None

    def validate(self, token: str, resource: str) -> bool:
        return self.client_for(token, resource) is not None

    def validator(self, resource: str) -> Callable[[str], str | None]:
        """A ``token_validator`` for a resource server of the sandbox (returns the client id)."""
        return lambda token: self.client_for(token, resource)

    def user_validator(self, resource: str) -> Callable[[str], str | None]:
        """A resource server's check for people's tokens (returns the user's object id)."""
        return lambda token: self.user_for(token, resource)

    def revoke_all(self) -> None:
        """Forget every issued access token: resource servers will answer 401 until clients
        refresh (refresh tokens stay valid, so a person's client refreshes without a prompt)."""
        with self._state_lock:
            self._tokens.clear()

    @property
    def issued_tokens(self) -> list[IssuedToken]:
        with self._state_lock:
            return list(self._tokens.values())

    @property
    def token_requests(self) -> int:
        """How many requests reached a token endpoint (any grant, or MSI)."""
        with self._state_lock:
            return self._token_requests

    @property
    def device_code_requests(self) -> int:
        """How many requests reached a device authorization endpoint (sign-ins started)."""
        with self._state_lock:
            return self._device_code_requests

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
            # Access tokens here are opaque; the one key signs ID tokens, made for the first.
            return json_response(200, {"keys": self._published_keys()})
        if len(parts) == 4 and parts[1:3] == ["oauth2", "v2.0"] and parts[3] in _POST_ENDPOINTS:
            if request.method != "POST":
                return self._oauth_error(
                    _OAuthError(
                        405, "invalid_request", 900561, "The endpoint only accepts POST requests."
                    )
                )
            if parts[3] == "devicecode":
                return self._device_authorization(parts[0], request)
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
            form = _form(request)
            self._require_tenant(tenant)
            grant_type = form.get("grant_type")
            if grant_type == "client_credentials":
                issued = self._client_credentials(tenant, request, form)
                lifetime = max(0, round(issued.expires_at - time.time()))
                payload: dict[str, object] = {
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": issued.token,
                }
            elif grant_type == DEVICE_CODE_GRANT:
                payload = self._device_code_grant(tenant, request, form)
            elif grant_type == "refresh_token":
                payload = self._refresh_token_grant(tenant, request, form)
            else:
                raise _OAuthError(
                    400,
                    "unsupported_grant_type",
                    70003,
                    f"The app requested an unsupported grant type '{grant_type}'.",
                )
        except _OAuthError as error:
            return self._oauth_error(error)
        return json_response(
            200, payload, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
        )

    def _require_tenant(self, tenant: str) -> None:
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

    def _client_app(self, tenant: str, request: Request, form: dict[str, str]) -> _App:
        client_id = form.get("client_id") or _basic_credentials(request.header("authorization"))[0]
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
        return app

    def _client_credentials(
        self, tenant: str, request: Request, form: dict[str, str]
    ) -> IssuedToken:
        app = self._client_app(tenant, request, form)
        self._authenticate_client(app, tenant, request, form, public_allowed=False)
        resource = _resource_from_scope(form.get("scope"))
        return self._issue(resource, app.client_id, tenant_id=app.tenant_id)

    def _authenticate_client(
        self,
        app: _App,
        tenant: str,
        request: Request,
        form: dict[str, str],
        *,
        public_allowed: bool,
    ) -> None:
        """Check the client's credential; a public client (``public_allowed``) presents none."""
        client_id = app.client_id
        secret = form.get("client_secret") or _basic_credentials(request.header("authorization"))[1]
        assertion = form.get("client_assertion")
        if (secret or assertion) and app.public_client and not (app.secrets or app.certificates):
            raise _OAuthError(
                401,
                "invalid_client",
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be "
                "presented.",
            )
        if not (secret or assertion) and public_allowed and app.public_client:
            return
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

    # -- a person's sign-in: the device authorization grant and refresh tokens ----------------

    def _device_authorization(self, tenant: str, request: Request) -> Response:
        with self._state_lock:
            self._device_code_requests += 1
        try:
            form = _form(request)
            self._require_tenant(tenant)
            app = self._client_app(tenant, request, form)
            delegation = _delegation(form.get("scope"), app.delegated)
        except _OAuthError as error:
            return self._oauth_error(error)
        lifetime = float(self.device_code_lifetime)
        with self._state_lock:
            user_code = _new_user_code()
            while user_code in self._user_codes:
                user_code = _new_user_code()
            authorization = _DeviceAuthorization(
                device_code=secrets.token_urlsafe(96),
                user_code=user_code,
                tenant=tenant.lower(),
                client_id=app.client_id,
                delegation=delegation,
                expires_at=time.time() + lifetime,
            )
            self._device_codes[authorization.device_code] = authorization
            self._user_codes[user_code] = authorization.device_code
        uri = self.verification_uri
        return json_response(
            200,
            {
                "user_code": user_code,
                "device_code": authorization.device_code,
                "verification_uri": uri,
                "expires_in": math.ceil(lifetime),
                "interval": int(self.device_code_interval),
                "message": f"To sign in, use a web browser to open the page {uri} and enter the "
                f"code {user_code} to authenticate.",
            },
        )

    def _device_code_grant(
        self, tenant: str, request: Request, form: dict[str, str]
    ) -> dict[str, object]:
        app = self._client_app(tenant, request, form)
        self._authenticate_client(app, tenant, request, form, public_allowed=True)
        device_code = form.get("device_code")
        if not device_code:
            raise _missing_parameter("device_code")
        with self._state_lock:
            authorization = self._device_codes.get(device_code)
            if (
                authorization is None
                or authorization.client_id.lower() != app.client_id.lower()
                or authorization.tenant != tenant.lower()
            ):
                raise _OAuthError(
                    400,
                    "bad_verification_code",
                    70018,
                    "The device_code sent to the token endpoint wasn't recognized.",
                )
            if authorization.expires_at <= time.time():
                raise _OAuthError(400, "expired_token", 70019, "Verification code expired.")
            if authorization.state == "declined":
                raise _OAuthError(
                    400,
                    "authorization_declined",
                    65004,
                    "The user declined the sign-in request.",
                )
            if authorization.state == "pending" or authorization.user is None:
                raise _OAuthError(
                    400,
                    "authorization_pending",
                    70016,
                    "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                )
            # A device code is redeemed once; afterwards it is not recognised.
            del self._device_codes[device_code]
            self._user_codes.pop(authorization.user_code, None)
        return self._delegated_answer(
            tenant, app, authorization.user, authorization.delegation, form
        )

    def _refresh_token_grant(
        self, tenant: str, request: Request, form: dict[str, str]
    ) -> dict[str, object]:
        app = self._client_app(tenant, request, form)
        self._authenticate_client(app, tenant, request, form, public_allowed=True)
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            raise _missing_parameter("refresh_token")
        with self._state_lock:
            grant = self._refresh_tokens.get(refresh_token)
        if (
            grant is None
            or grant.client_id.lower() != app.client_id.lower()
            or grant.tenant != tenant.lower()
        ):
            raise _OAuthError(
                400,
                "invalid_grant",
                70000,
                "Provided grant is invalid or malformed. The refresh token isn't valid.",
            )
        delegation = _delegation(form.get("scope"), app.delegated)
        return self._delegated_answer(tenant, app, grant.user, delegation, form)

    def _delegated_answer(
        self,
        tenant: str,
        app: _App,
        user: _User,
        delegation: _Delegation,
        form: dict[str, str],
    ) -> dict[str, object]:
        """A token response for a person: access token, and what OIDC's scopes asked for."""
        issued = self._issue(
            delegation.resource,
            app.client_id,
            tenant_id=user.tenant_id,
            subject=user.object_id,
            scopes=delegation.permissions,
        )
        lifetime = max(0, round(issued.expires_at - time.time()))
        payload: dict[str, object] = {
            "token_type": "Bearer",
            "scope": delegation.scope,
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": issued.token,
        }
        if delegation.offline_access:
            refresh_token = secrets.token_urlsafe(96)
            with self._state_lock:
                self._refresh_tokens[refresh_token] = _RefreshGrant(
                    tenant.lower(), app.client_id, user
                )
            payload["refresh_token"] = refresh_token
        if delegation.openid:
            payload["id_token"] = self._id_token(user, app.client_id)
        if form.get("client_info") == "1":
            info = json.dumps({"uid": user.object_id, "utid": user.tenant_id.lower()})
            payload["client_info"] = _b64url(info.encode("utf-8"))
        return payload

    def _id_token(self, user: _User, client_id: str) -> str:
        now = int(time.time())
        pairwise = hashlib.sha256(f"{user.object_id}:{client_id.lower()}".encode()).digest()
        claims = {
            "aud": client_id,
            "iss": f"{self.url}/{user.tenant_id.lower()}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": user.display_name,
            "oid": user.object_id,
            "preferred_username": user.username,
            "sub": _b64url(pairwise),
            "tid": user.tenant_id.lower(),
            "ver": "2.0",
        }
        return jwt.encode(
            claims, self._key(), algorithm="RS256", headers={"kid": self._signing_kid}
        )

    def _key(self) -> rsa.RSAPrivateKey:
        with self._state_lock:
            if self._signing_key is None:
                self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._signing_key

    def _published_keys(self) -> list[dict[str, Any]]:
        with self._state_lock:
            key = self._signing_key
        if key is None:
            return []
        jwk: dict[str, Any] = dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))
        jwk.update({"kid": self._signing_kid, "use": "sig", "alg": "RS256"})
        return [jwk]

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
        subject: str | None = None,
        scopes: tuple[str, ...] = (),
    ) -> IssuedToken:
        issued = IssuedToken(
            token=secrets.token_urlsafe(32),
            resource=resource,
            client_id=client_id,
            expires_at=time.time() + self.token_lifetime,
            tenant_id=tenant_id,
            managed_identity=managed_identity,
            subject=subject,
            scopes=scopes,
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


def _form(request: Request) -> dict[str, str]:
    return dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _new_user_code() -> str:
    return "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(_USER_CODE_LENGTH))


def _delegation(scope: str | None, consented: tuple[str, ...]) -> _Delegation:
    """A person's scopes: one resource's permissions (``/.default``: the consented ones)."""
    if not scope:
        raise _missing_parameter("scope")
    names = scope.split()
    resource_scopes = [name for name in names if name not in OIDC_SCOPES]
    if not resource_scopes:
        raise _OAuthError(
            400,
            "invalid_scope",
            70011,
            f"The provided value for the input parameter 'scope' is not valid. The scope {scope} "
            "names no resource; the sandbox issues delegated tokens for a resource's scopes.",
        )
    resources: dict[str, str] = {}
    permissions: list[str] = []
    asked_default = False
    for name in resource_scopes:
        resource, _, permission = name.rpartition("/")
        if "://" not in resource or not permission:
            raise _OAuthError(
                400,
                "invalid_scope",
                70011,
                f"The provided value for the input parameter 'scope' is not valid. The scope "
                f"{name} is not valid.",
            )
        resources.setdefault(_normalize_resource(resource), resource)
        if permission == ".default":
            asked_default = True
            wanted = list(consented)
        else:
            wanted = [permission]
        permissions.extend(p for p in wanted if p not in permissions)
    if len(resources) != 1:
        raise _OAuthError(
            400,
            "invalid_scope",
            70011,
            f"The provided value for the input parameter 'scope' is not valid. The scope {scope} "
            "asks for more than one resource; a token is for one.",
        )
    (resource,) = resources.values()
    granted = [f"{resource}/{permission}" for permission in permissions]
    if asked_default:
        granted.append(f"{resource}/.default")
    return _Delegation(
        resource=resource,
        permissions=tuple(permissions),
        scope=" ".join(granted),
        openid="openid" in names,
        offline_access="offline_access" in names,
    )


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
