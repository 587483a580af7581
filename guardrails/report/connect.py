"""What `guardrails report` connects to, from the function's own app settings.

Only Dataverse is needed (and Table Storage, when configured, for the accepted values): the
same DATAVERSE_URL, AZURE_* credentials and MSAL token provider as the function, without the
Service Bus settings `load_settings` insists on. Every problem is reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from guardrails.clients.auth import MsalTokenProvider, TokenProvider
from guardrails.clients.dataverse import DataverseClient
from guardrails.clients.http import new_session
from guardrails.clients.tables import storage_settings, table_store
from guardrails.errors import ConfigurationError
from guardrails.mailbox import Column
from guardrails.report.scan import AcceptedLookup
from guardrails.settings import PUBLIC_AUTHORITY, Credentials
from guardrails.state.accepted import AcceptedValues
from guardrails.values import Value, is_guid

NO_STORAGE = (
    "not consulted: no storage is configured (AzureWebJobsStorage or GUARDRAILS_STORAGE), so "
    "a value an exempt user set is reported like any other"
)
CONSULTED = "consulted: values the guardrail accepted (an exempt user's change) are not drift"


@dataclass(frozen=True, slots=True)
class Connection:
    dataverse_url: str
    credentials: Credentials
    timeout: float = 30.0


def _https_root(name: str, value: str, problems: list[str]) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if not value:
        problems.append(f"{name} is not set (e.g. https://contoso.crm.dynamics.com)")
    elif parts.scheme != "https" or not parts.hostname or parts.path or parts.query:
        problems.append(f"{name} must be an https root URL, found '{value}'")
    return value


def connection(environ: Mapping[str, str]) -> Connection:
    """DATAVERSE_URL and the credentials, checked as the function checks them."""
    problems: list[str] = []

    def get(name: str) -> str | None:
        return environ.get(name, "").strip() or None

    url = _https_root("DATAVERSE_URL", get("DATAVERSE_URL") or "", problems)
    authority = _https_root(
        "AZURE_AUTHORITY_HOST", get("AZURE_AUTHORITY_HOST") or PUBLIC_AUTHORITY, problems
    )
    tenant, client = get("AZURE_TENANT_ID"), get("AZURE_CLIENT_ID")
    secret, certificate = get("AZURE_CLIENT_SECRET"), get("AZURE_CLIENT_CERTIFICATE_PATH")
    if secret and certificate:
        problems.append("both AZURE_CLIENT_SECRET and AZURE_CLIENT_CERTIFICATE_PATH are set")
    if client and not is_guid(client):
        problems.append(f"AZURE_CLIENT_ID must be an application (client) id GUID: '{client}'")
    if (secret or certificate) and not (tenant and client):
        problems.append(
            "AZURE_TENANT_ID and AZURE_CLIENT_ID are needed with a secret or certificate"
        )
    if certificate and not Path(certificate).is_file():
        problems.append(f"AZURE_CLIENT_CERTIFICATE_PATH names no file: '{certificate}'")
    timeout_text = get("GUARDRAILS_HTTP_TIMEOUT") or "30"
    try:
        timeout = float(timeout_text)
        if not 0 < timeout <= 230:
            raise ValueError
    except ValueError:
        problems.append(f"GUARDRAILS_HTTP_TIMEOUT must be seconds in (0, 230]: '{timeout_text}'")
        timeout = 30.0
    if problems:
        raise ConfigurationError(problems)
    credentials = Credentials(
        tenant_id=tenant,
        client_id=client,
        client_secret=secret,
        certificate_path=Path(certificate) if certificate else None,
        certificate_password=get("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
        authority_host=authority,
    )
    return Connection(url, credentials, timeout)


def dataverse_client(settings: Connection) -> tuple[DataverseClient, TokenProvider]:
    session = new_session(settings.timeout)
    tokens = MsalTokenProvider(settings.credentials, session=session, timeout=settings.timeout)
    client = DataverseClient(
        settings.dataverse_url, tokens=tokens, session=session, timeout=settings.timeout
    )
    return client, tokens


def accepted_lookup(
    environ: Mapping[str, str], tokens: TokenProvider
) -> tuple[AcceptedLookup | None, str]:
    """The accepted values when storage is configured, and what the report says about them.

    No storage setting at all means none is used; a setting that is present but wrong is an
    error, as it is for the function.
    """
    names = {name.split("__")[0].lower() for name, value in environ.items() if value.strip()}
    if not names & {"azurewebjobsstorage", "guardrails_storage"}:
        return None, NO_STORAGE
    store = table_store(storage_settings(environ), token_provider=tokens)
    accepted = AcceptedValues(store.table("Accepted"))

    def lookup(mailbox_id: str) -> dict[Column, Value]:
        return {column: item.value for column, item in accepted.get(mailbox_id).items()}

    return lookup, CONSULTED
