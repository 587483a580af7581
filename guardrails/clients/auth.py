"""Access tokens through MSAL: client secret, certificate, or managed identity.

MSAL caches and refreshes tokens itself; this wrapper adds a forced refresh (after a 401) and
builds the MSAL application lazily, because constructing one already talks to the authority and
start-up must not depend on the network.

`cryptography` is imported only to read a client certificate, azure-core only when an Azure SDK
asks :class:`TokenProviderCredential` for a token, and the table of fixes for refused credentials
only when one is refused: start-up with a client secret or a managed identity pays for none.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msal
import requests
import structlog

from guardrails.errors import AuthenticationError, ConfigurationError
from guardrails.settings import Credentials

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken

    from guardrails.clients.auth_fixes import CredentialFix

_log = structlog.get_logger("guardrails.auth")
# (client id, AADSTS code) already logged by this process: a refused credential is logged once,
# with its fix, however many messages then fail on it.
_reported: set[tuple[str | None, str]] = set()
_reported_lock = threading.Lock()


class TokenProvider(Protocol):
    def token(self, scope: str, *, force_refresh: bool = False) -> str: ...


def certificate_credential(pem: bytes, password: str | None = None) -> dict[str, str]:
    """MSAL's certificate credential from one PEM holding the private key and the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(
            pem, password=password.encode() if password else None
        )
        certificate = x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            [
                "AZURE_CLIENT_CERTIFICATE_PATH must be one PEM file with the private key and "
                "the certificate (and AZURE_CLIENT_CERTIFICATE_PASSWORD if the key is "
                f"encrypted): {exc}"
            ]
        ) from exc
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    return {
        "private_key": key_pem.decode(),
        "thumbprint": hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),
    }


class MsalTokenProvider:
    """One provider per app: thread-safe, tokens cached by MSAL per scope."""

    def __init__(
        self, credentials: Credentials, *, session: requests.Session, timeout: float = 30.0
    ) -> None:
        self._credentials = credentials
        self._session = session
        self._timeout = timeout
        self._lock = threading.Lock()
        self._acquire = threading.Lock()
        self._app: Any = None
        # Read the certificate now: a bad file is a start-up error, not a first-message one.
        self._certificate: dict[str, str] | None = None
        if credentials.kind == "certificate":
            if credentials.certificate_pem:
                pem = credentials.certificate_pem.encode()
            else:
                assert credentials.certificate_path is not None
                pem = credentials.certificate_path.read_bytes()
            self._certificate = certificate_credential(pem, credentials.certificate_password)

    @property
    def kind(self) -> str:
        return self._credentials.kind

    def _application(self, *, fresh: bool = False) -> Any:
        with self._lock:
            if self._app is None or fresh:
                self._app = self._build()
            return self._app

    def _build(self) -> Any:
        creds = self._credentials
        if creds.kind == "managed_identity":
            identity: Any = (
                msal.UserAssignedManagedIdentity(client_id=creds.client_id)
                if creds.client_id
                else msal.SystemAssignedManagedIdentity()
            )
            return msal.ManagedIdentityClient(identity, http_client=self._session)
        secret: Any = self._certificate or creds.client_secret
        try:
            return msal.ConfidentialClientApplication(
                creds.client_id,
                client_credential=secret,
                authority=creds.authority,
                instance_discovery=creds.instance_discovery,
                http_client=self._session,
                timeout=self._timeout,
            )
        except (ValueError, requests.RequestException) as exc:
            raise AuthenticationError(
                f"cannot reach the authority {creds.authority} ({exc}); check "
                "AZURE_AUTHORITY_HOST and AZURE_TENANT_ID"
            ) from exc

    def token(self, scope: str, *, force_refresh: bool = False) -> str:
        # One acquisition at a time: eight messages arriving together at a cold instance wait
        # for the first token instead of each fetching one (MSAL answers the rest from cache).
        with self._acquire:
            return self._token(scope, force_refresh=force_refresh)

    def _token(self, scope: str, *, force_refresh: bool) -> str:
        try:
            if self._credentials.kind == "managed_identity":
                # A fresh client has an empty cache: the only way to skip a cached token.
                client = self._application(fresh=force_refresh)
                result = client.acquire_token_for_client(resource=scope.removesuffix("/.default"))
            else:
                app = self._application()
                if force_refresh:
                    app.remove_tokens_for_client()
                result = app.acquire_token_for_client(scopes=[scope])
        except (
            requests.RequestException,
            msal.ManagedIdentityError,
            msal.exceptions.MsalServiceError,
            ValueError,
        ) as exc:
            # The endpoint could not be reached or failed (MSAL raises MsalServiceError for a
            # 5xx): that may pass, unlike an answer refusing the credentials (below).
            raise AuthenticationError(f"no token for {scope}: {exc}", transient=True) from exc
        if not isinstance(result, dict) or "access_token" not in result:
            details = result if isinstance(result, dict) else {}
            code = details.get("error")
            text = details.get("error_description") or code or "no access token in the response"
            from guardrails.clients.auth_fixes import fix_for  # the fixes table: refusals only

            fix = fix_for(str(text))
            if fix is not None:
                self._report(fix, scope)
                text = f"{text} Fix: {fix.text}"
            raise AuthenticationError(
                f"no token for {scope} ({self.kind}): {text}", code=str(code) if code else None
            )
        return str(result["access_token"])

    def _report(self, fix: CredentialFix, scope: str) -> None:
        """Log a refused credential once per process (per app and code), with its fix."""
        key = (self._credentials.client_id, fix.code)
        with _reported_lock:
            if key in _reported:
                return
            _reported.add(key)
        _log.error(
            "guardrails.credentials_refused",
            aadsts=f"AADSTS{fix.code}",
            setting=fix.setting,
            fix=fix.text,
            scope=scope,
            credential=self.kind,
            client_id=self._credentials.client_id,
        )


class TokenProviderCredential:
    """azure-core's ``TokenCredential`` over the app's :class:`TokenProvider` (MSAL underneath).

    MSAL caches each token and never hands out one with less than five minutes left. The
    expiry reported to azure-core is therefore "now + 5 min + `reuse_seconds`": azure-core
    refreshes a token once it is within five minutes (less up to a minute of jitter) of that
    expiry, i.e. after at most ``reuse_seconds + 60`` seconds, and asks again; MSAL answers
    from its cache or renews. A claims challenge forces a fresh token.
    """

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        reuse_seconds: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = tokens
        self._reuse = reuse_seconds
        self._clock = clock

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        from azure.core.credentials import AccessToken

        if len(scopes) != 1:
            raise ValueError(f"exactly one scope is supported, found {scopes!r}")
        token = self._tokens.token(scopes[0], force_refresh=claims is not None)
        return AccessToken(token, int(self._clock()) + 300 + self._reuse)
