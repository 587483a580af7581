from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from guardrails.clients.auth import MsalTokenProvider, certificate_credential
from guardrails.clients.http import new_session
from guardrails.errors import ConfigurationError
from guardrails.settings import Credentials

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def test_certificate_credential_has_key_and_sha1_thumbprint() -> None:
    issued = trustme.CA().issue_cert("guardrails")
    pem = issued.private_key_pem.bytes() + issued.cert_chain_pems[0].bytes()
    credential = certificate_credential(pem)
    assert credential["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    certificate = issued.cert_chain_pems[0].bytes()
    expected = x509.load_pem_x509_certificate(certificate).fingerprint(hashes.SHA1())
    assert credential["thumbprint"] == expected.hex().upper()


def test_encrypted_key_needs_its_password() -> None:
    issued = trustme.CA().issue_cert("guardrails")
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass phrase"),
    )
    pem = encrypted + issued.cert_chain_pems[0].bytes()
    assert certificate_credential(pem, "pass phrase")["private_key"]
    with pytest.raises(ConfigurationError, match="AZURE_CLIENT_CERTIFICATE_PASSWORD"):
        certificate_credential(pem)


def test_a_bad_certificate_file_fails_when_the_provider_is_built(tmp_path: Path) -> None:
    bad = tmp_path / "app.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    credentials = Credentials(tenant_id=TENANT, client_id=CLIENT, certificate_path=bad)
    with pytest.raises(ConfigurationError, match="one PEM file with the private key"):
        MsalTokenProvider(credentials, session=new_session())


def test_a_pem_from_the_settings_works_like_a_file(tmp_path: Path) -> None:
    """Flex Consumption has no certificate store: the PEM can come as an app setting (a Key
    Vault reference resolves to its text) instead of a path."""
    from guardrails.settings import load_settings

    issued = trustme.CA().issue_cert("guardrails")
    pem = (issued.private_key_pem.bytes() + issued.cert_chain_pems[0].bytes()).decode()
    (tmp_path / "policy.yaml").write_text("version: 1\n")
    env = {
        "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT,
        "AZURE_CLIENT_CERTIFICATE": pem,
        "SERVICEBUS_QUEUE": "q",
        "SERVICEBUS__fullyQualifiedNamespace": "contoso.servicebus.windows.net",
    }
    credentials = load_settings(env, app_root=tmp_path).credentials
    assert credentials.kind == "certificate" and "BEGIN" not in repr(credentials)
    provider = MsalTokenProvider(credentials, session=new_session())
    assert provider.kind == "certificate"
    both = {**env, "AZURE_CLIENT_SECRET": "s"}
    with pytest.raises(ConfigurationError, match="keep one"):
        load_settings(both, app_root=tmp_path)
    not_pem = {**env, "AZURE_CLIENT_CERTIFICATE": "@Microsoft.KeyVault(SecretUri=unresolved)"}
    with pytest.raises(ConfigurationError, match="must be PEM text"):
        load_settings(not_pem, app_root=tmp_path)
