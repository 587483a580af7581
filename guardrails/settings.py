"""App settings (Functions app settings, or the environment), checked once at start-up.

Every problem is collected and reported together, so a misconfigured deployment fails at its
first start with one readable list instead of a stack trace on its first message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from guardrails.errors import ConfigurationError
from guardrails.message import DEFAULT_MAX_BODY_BYTES
from guardrails.policy.model import is_guid
from guardrails.settlement import SettlementPolicy

PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
PUBLIC_GRAPH = "https://graph.microsoft.com"
# Public-cloud authority hosts MSAL can discover instances from; any other host must not be
# sent to the public cloud for instance discovery.
KNOWN_AUTHORITIES = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)


@dataclass(frozen=True, slots=True)
class Credentials:
    """How the app authenticates: exactly one of secret, certificate, or managed identity."""

    tenant_id: str | None
    client_id: str | None
    client_secret: str | None = None
    certificate_path: Path | None = None
    certificate_password: str | None = None
    # The PEM itself, e.g. from a Key Vault reference in the app settings
    # (`@Microsoft.KeyVault(SecretUri=...)`): Flex Consumption has no certificate store to read.
    certificate_pem: str | None = field(default=None, repr=False)
    authority_host: str = PUBLIC_AUTHORITY

    @property
    def kind(self) -> str:
        if self.client_secret:
            return "client_secret"
        if self.certificate_path or self.certificate_pem:
            return "certificate"
        return "managed_identity"

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def instance_discovery(self) -> bool:
        return (urlsplit(self.authority_host).hostname or "") in KNOWN_AUTHORITIES


@dataclass(frozen=True, slots=True)
class Settings:
    dataverse_url: str
    graph_url: str
    credentials: Credentials
    policy_path: Path
    queue_name: str
    http_timeout: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    settlement: SettlementPolicy = field(default_factory=SettlementPolicy)

    @property
    def graph_scope(self) -> str:
        return f"{self.graph_url}/.default"


def _url(name: str, value: str | None, problems: list[str], default: str | None = None) -> str:
    value = (value or default or "").strip().rstrip("/")
    if not value:
        problems.append(f"{name} is not set (e.g. https://contoso.crm.dynamics.com)")
        return ""
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        problems.append(f"{name} must be an https URL, found '{value}'")
    elif parts.path or parts.query:
        problems.append(f"{name} must be the root URL without a path, found '{value}'")
    return value


def load_settings(
    environ: Mapping[str, str] | None = None, *, app_root: Path | None = None
) -> Settings:
    env = os.environ if environ is None else environ
    problems: list[str] = []

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    dataverse_url = _url("DATAVERSE_URL", get("DATAVERSE_URL"), problems)
    graph_url = _url("GRAPH_URL", get("GRAPH_URL"), problems, PUBLIC_GRAPH)
    authority_host = _url(
        "AZURE_AUTHORITY_HOST", get("AZURE_AUTHORITY_HOST"), problems, PUBLIC_AUTHORITY
    )

    tenant_id, client_id = get("AZURE_TENANT_ID"), get("AZURE_CLIENT_ID")
    secret, certificate = get("AZURE_CLIENT_SECRET"), get("AZURE_CLIENT_CERTIFICATE_PATH")
    pem = get("AZURE_CLIENT_CERTIFICATE")
    given = [
        name
        for name, value in (
            ("AZURE_CLIENT_SECRET", secret),
            ("AZURE_CLIENT_CERTIFICATE_PATH", certificate),
            ("AZURE_CLIENT_CERTIFICATE", pem),
        )
        if value
    ]
    if len(given) > 1:
        problems.append(f"both {given[0]} and {given[1]} are set; keep one")
    if pem and "-----BEGIN" not in pem:
        problems.append(
            "AZURE_CLIENT_CERTIFICATE must be PEM text (the private key and the certificate), "
            "e.g. a Key Vault reference to a secret holding it"
        )
    if client_id and not is_guid(client_id):
        problems.append(f"AZURE_CLIENT_ID must be an application (client) id GUID: '{client_id}'")
    if secret or certificate or pem:
        if not tenant_id:
            problems.append(
                "AZURE_TENANT_ID is not set (needed with a client secret or certificate)"
            )
        if not client_id:
            problems.append(
                "AZURE_CLIENT_ID is not set (needed with a client secret or certificate)"
            )
    if tenant_id and not is_guid(tenant_id) and "." not in tenant_id:
        problems.append(f"AZURE_TENANT_ID must be a tenant id GUID or domain: '{tenant_id}'")
    certificate_path = Path(certificate) if certificate else None
    if certificate_path is not None and not certificate_path.is_file():
        problems.append(f"AZURE_CLIENT_CERTIFICATE_PATH names no file: '{certificate_path}'")

    root = app_root or Path.cwd()
    policy_path = Path(get("GUARDRAILS_POLICY") or "policy.yaml")
    if not policy_path.is_absolute():
        policy_path = root / policy_path
    if not policy_path.is_file():
        problems.append(f"GUARDRAILS_POLICY: no policy file at '{policy_path}'")

    queue_name = get("SERVICEBUS_QUEUE") or ""
    if not queue_name:
        problems.append("SERVICEBUS_QUEUE is not set (the queue the Dataverse endpoint posts to)")
    if not get("SERVICEBUS") and not get("SERVICEBUS__fullyQualifiedNamespace"):
        problems.append(
            "the Service Bus connection is not set: SERVICEBUS (a connection string) or "
            "SERVICEBUS__fullyQualifiedNamespace (identity-based, e.g. "
            "contoso.servicebus.windows.net)"
        )

    timeout_text = get("GUARDRAILS_HTTP_TIMEOUT") or "30"
    try:
        timeout = float(timeout_text)
        if not 0 < timeout <= 230:
            raise ValueError
    except ValueError:
        problems.append(
            f"GUARDRAILS_HTTP_TIMEOUT must be seconds in (0, 230], found '{timeout_text}'"
        )
        timeout = 30.0

    max_body_text = get("GUARDRAILS_MAX_BODY_BYTES") or str(DEFAULT_MAX_BODY_BYTES)
    max_body_bytes = DEFAULT_MAX_BODY_BYTES
    if not max_body_text.isdigit() or not 1024 <= int(max_body_text) <= 100 * 1024 * 1024:
        problems.append(
            "GUARDRAILS_MAX_BODY_BYTES must be a whole number of bytes from 1024 to 104857600, "
            f"found '{max_body_text[:40]}'"
        )
    else:
        max_body_bytes = int(max_body_text)

    defaults = SettlementPolicy()
    threshold = _number(
        get, "GUARDRAILS_LONG_WAIT_THRESHOLD", defaults.in_process_wait, 0, 240, problems
    )
    max_attempts = _number(
        get, "GUARDRAILS_RETRY_MAX_ATTEMPTS", defaults.max_attempts, 1, 100, problems
    )
    max_hours = _number(
        get, "GUARDRAILS_RETRY_MAX_HOURS", defaults.max_age / 3600, 0.1, 24 * 14, problems
    )

    if problems:
        raise ConfigurationError(problems)
    return Settings(
        dataverse_url=dataverse_url,
        graph_url=graph_url,
        credentials=Credentials(
            tenant_id=tenant_id,
            client_id=client_id,
            client_secret=secret,
            certificate_path=certificate_path,
            certificate_password=get("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            certificate_pem=pem,
            authority_host=authority_host,
        ),
        policy_path=policy_path,
        queue_name=queue_name,
        http_timeout=timeout,
        max_body_bytes=max_body_bytes,
        settlement=SettlementPolicy(
            in_process_wait=threshold, max_attempts=int(max_attempts), max_age=max_hours * 3600
        ),
    )


def _number(
    get: Callable[[str], str | None],
    name: str,
    default: float,
    low: float,
    high: float,
    problems: list[str],
) -> float:
    text = get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also false for NaN
        problems.append(f"{name} must be a number from {low:g} to {high:g}, found '{text[:40]}'")
        return default
    return value
