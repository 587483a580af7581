from pathlib import Path

import pytest

from guardrails.errors import ConfigurationError
from guardrails.settings import load_settings

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text("version: 1\n")
    return tmp_path


def base_env(**overrides: str) -> dict[str, str]:
    env = {
        "DATAVERSE_URL": "https://contoso.crm.dynamics.com/",
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT,
        "AZURE_CLIENT_SECRET": "s3cret",
        "SERVICEBUS_QUEUE": "mailbox-events",
        "SERVICEBUS": "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def test_complete_settings_with_secret(app_root: Path) -> None:
    settings = load_settings(base_env(), app_root=app_root)
    assert settings.dataverse_url == "https://contoso.crm.dynamics.com"
    assert settings.graph_scope == "https://graph.microsoft.com/.default"
    assert settings.credentials.kind == "client_secret"
    assert settings.credentials.authority == f"https://login.microsoftonline.com/{TENANT}"
    assert settings.credentials.instance_discovery is True
    assert settings.policy_path == app_root / "policy.yaml"
    assert settings.queue_name == "mailbox-events"


def test_identity_based_service_bus_connection_is_enough(app_root: Path) -> None:
    env = base_env(SERVICEBUS="")
    env["SERVICEBUS__fullyQualifiedNamespace"] = "contoso.servicebus.windows.net"
    assert load_settings(env, app_root=app_root).queue_name == "mailbox-events"


def test_managed_identity_when_no_secret_and_no_certificate(app_root: Path) -> None:
    env = base_env(AZURE_CLIENT_SECRET="", AZURE_TENANT_ID="")
    creds = load_settings(env, app_root=app_root).credentials
    assert creds.kind == "managed_identity"
    assert creds.client_id == CLIENT  # picks the user-assigned identity


def test_sovereign_cloud_turns_off_instance_discovery_only_for_unknown_hosts(
    app_root: Path,
) -> None:
    us = load_settings(
        base_env(AZURE_AUTHORITY_HOST="https://login.microsoftonline.us"), app_root=app_root
    )
    assert us.credentials.instance_discovery is True
    custom = load_settings(
        base_env(AZURE_AUTHORITY_HOST="https://login.contoso-cloud.example"), app_root=app_root
    )
    assert custom.credentials.instance_discovery is False
    assert custom.credentials.authority == f"https://login.contoso-cloud.example/{TENANT}"


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    env = {
        "DATAVERSE_URL": "http://contoso.crm.dynamics.com/api",
        "AZURE_CLIENT_ID": "not-a-guid",
        "AZURE_CLIENT_SECRET": "s",
        "AZURE_CLIENT_CERTIFICATE_PATH": str(tmp_path / "missing.pem"),
        "GRAPH_URL": "graph.microsoft.com",
        "GUARDRAILS_HTTP_TIMEOUT": "-1",
    }
    with pytest.raises(ConfigurationError) as caught:
        load_settings(env, app_root=tmp_path)
    problems = caught.value.problems
    text = str(caught.value)
    expected = [
        "DATAVERSE_URL must be an https URL",
        "GRAPH_URL must be an https URL",
        "both AZURE_CLIENT_SECRET and AZURE_CLIENT_CERTIFICATE_PATH are set",
        "AZURE_CLIENT_ID must be an application (client) id GUID",
        "AZURE_TENANT_ID is not set",
        "AZURE_CLIENT_CERTIFICATE_PATH names no file",
        "GUARDRAILS_POLICY: no policy file",
        "SERVICEBUS_QUEUE is not set",
        "the Service Bus connection is not set",
        "GUARDRAILS_HTTP_TIMEOUT must be seconds",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), fragment
    assert len(problems) == len(expected)
    assert text.startswith("Mailbox Guardrails is not configured correctly (10 problem(s))")


def test_url_with_path_is_refused(app_root: Path) -> None:
    with pytest.raises(ConfigurationError, match="without a path"):
        load_settings(
            base_env(DATAVERSE_URL="https://contoso.crm.dynamics.com/api/data/v9.2"),
            app_root=app_root,
        )


@pytest.mark.parametrize("value", ["0", "12", "1e9", "-1", "lots", "104857601"])
def test_body_limit_out_of_range_is_a_problem(app_root: Path, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(base_env(GUARDRAILS_MAX_BODY_BYTES=value), app_root=app_root)
    assert "GUARDRAILS_MAX_BODY_BYTES" in str(caught.value)


def test_body_limit_defaults_and_can_be_set(app_root: Path) -> None:
    assert load_settings(base_env(), app_root=app_root).max_body_bytes == 512 * 1024
    env = base_env(GUARDRAILS_MAX_BODY_BYTES="2048")
    assert load_settings(env, app_root=app_root).max_body_bytes == 2048
