"""Signing in for the admin commands: the app's own credentials, or a person with a device code.

The app's credentials are the function's settings (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
`AZURE_CLIENT_SECRET` or `AZURE_CLIENT_CERTIFICATE_PATH`, `AZURE_AUTHORITY_HOST`), or those of a
deployment principal set the same way. An administrator signs in interactively with MSAL's
device-code flow through a public client app registration of the organization's own
(`--admin-client-id` or `GUARDRAILS_ADMIN_CLIENT_ID`; it needs the Dynamics CRM
`user_impersonation` delegated permission and "Allow public client flows").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal
import requests

from guardrails.clients.auth import MsalTokenProvider, TokenProvider
from guardrails.errors import AuthenticationError, ConfigurationError
from guardrails.policy.model import is_guid
from guardrails.settings import KNOWN_AUTHORITIES, PUBLIC_AUTHORITY, Credentials


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def credentials_from_env(env: Mapping[str, str]) -> Credentials:
    """The app's credentials from its settings, every problem reported at once."""
    problems: list[str] = []
    tenant, client = _get(env, "AZURE_TENANT_ID"), _get(env, "AZURE_CLIENT_ID")
    secret, certificate = (
        _get(env, "AZURE_CLIENT_SECRET"),
        _get(env, "AZURE_CLIENT_CERTIFICATE_PATH"),
    )
    authority = (_get(env, "AZURE_AUTHORITY_HOST") or PUBLIC_AUTHORITY).rstrip("/")
    if secret and certificate:
        problems.append(
            "both AZURE_CLIENT_SECRET and AZURE_CLIENT_CERTIFICATE_PATH are set; keep one"
        )
    if (secret or certificate) and not (tenant and client):
        problems.append(
            "AZURE_TENANT_ID and AZURE_CLIENT_ID are needed with a client secret or certificate"
        )
    if client and not is_guid(client):
        problems.append(f"AZURE_CLIENT_ID must be an application (client) id GUID: '{client}'")
    if certificate and not Path(certificate).is_file():
        problems.append(f"AZURE_CLIENT_CERTIFICATE_PATH names no file: '{certificate}'")
    if urlsplit(authority).scheme != "https":
        problems.append(f"AZURE_AUTHORITY_HOST must be an https URL, found '{authority}'")
    if problems:
        raise ConfigurationError(problems)
    return Credentials(
        tenant_id=tenant,
        client_id=client,
        client_secret=secret,
        certificate_path=Path(certificate) if certificate else None,
        certificate_password=_get(env, "AZURE_CLIENT_CERTIFICATE_PASSWORD"),
        authority_host=authority,
    )


class DeviceCodeTokenProvider:
    """A person's tokens through MSAL's device-code flow; later scopes come from MSAL's cache."""

    def __init__(
        self,
        *,
        client_id: str,
        tenant: str | None,
        authority_host: str,
        session: requests.Session,
        prompt: Callable[[str], None],
        timeout: float = 30.0,
    ) -> None:
        self._client_id = client_id
        self._authority = f"{authority_host.rstrip('/')}/{tenant or 'organizations'}"
        self._discovery = (urlsplit(authority_host).hostname or "") in KNOWN_AUTHORITIES
        self._session = session
        self._prompt = prompt
        self._timeout = timeout
        self._lock = threading.Lock()
        self._app: Any = None

    def _application(self) -> Any:
        if self._app is None:
            try:
                self._app = msal.PublicClientApplication(
                    self._client_id,
                    authority=self._authority,
                    instance_discovery=self._discovery,
                    http_client=self._session,
                    timeout=self._timeout,
                )
            except (ValueError, requests.RequestException) as exc:
                raise AuthenticationError(
                    f"cannot reach the authority {self._authority} ({exc}); check "
                    "AZURE_AUTHORITY_HOST and the tenant",
                    transient=True,
                ) from exc
        return self._app

    def token(self, scope: str, *, force_refresh: bool = False) -> str:
        with self._lock:
            app = self._application()
            accounts = app.get_accounts()
            if accounts:
                cached = app.acquire_token_silent(
                    [scope], account=accounts[0], force_refresh=force_refresh
                )
                if isinstance(cached, dict) and "access_token" in cached:
                    return str(cached["access_token"])
            flow = app.initiate_device_flow(scopes=[scope])
            if "user_code" not in flow:
                raise _refused("device-code sign-in could not start", flow)
            self._prompt(str(flow.get("message") or flow["user_code"]))
            result = app.acquire_token_by_device_flow(flow)
            if not isinstance(result, dict) or "access_token" not in result:
                raise _refused(
                    "device-code sign-in failed", result if isinstance(result, dict) else {}
                )
            return str(result["access_token"])


def _refused(what: str, details: Mapping[str, Any]) -> AuthenticationError:
    code = details.get("error")
    text = details.get("error_description") or code or "no answer"
    return AuthenticationError(f"{what}: {text}", code=str(code) if code else None)


def token_provider(
    env: Mapping[str, str],
    *,
    session: requests.Session,
    device_code: bool = False,
    admin_client_id: str | None = None,
    tenant: str | None = None,
    prompt: Callable[[str], None] = print,
) -> TokenProvider:
    """The admin commands' tokens: the app's credentials, or a person's (`device_code`)."""
    if not device_code:
        return MsalTokenProvider(credentials_from_env(env), session=session)
    client_id = admin_client_id or _get(env, "GUARDRAILS_ADMIN_CLIENT_ID")
    if not client_id or not is_guid(client_id):
        raise ConfigurationError(
            [
                "device-code sign-in needs the client id (a GUID) of a public client app "
                "registration: --admin-client-id or GUARDRAILS_ADMIN_CLIENT_ID"
            ]
        )
    return DeviceCodeTokenProvider(
        client_id=client_id,
        tenant=tenant or _get(env, "AZURE_TENANT_ID"),
        authority_host=_get(env, "AZURE_AUTHORITY_HOST") or PUBLIC_AUTHORITY,
        session=session,
        prompt=prompt,
    )
