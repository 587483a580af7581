"""`guardrails doctor` against the sandbox, the Service Bus test broker and Azurite.

A clean deployment (registered by `register`) passes every check; each misconfiguration the
issue lists is then made, one at a time, and doctor must fail the check that names it. Doctor
only reads: no write reaches Dataverse, Graph, the queue or Table Storage.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from azure.data.tables import TableServiceClient

from guardrails.admin.doctor import Check, run_doctor
from guardrails.cli import main
from guardrails.clients.auth import MsalTokenProvider
from guardrails.clients.auth_fixes import FIXES, fix_for
from guardrails.clients.http import new_session
from guardrails.errors import AuthenticationError
from guardrails.sandbox.environment import CLIENT_ID, GUARDRAIL_ROLE, TENANT_ID, Sandbox
from guardrails.settings import Credentials
from tests.azurite.plugin import Azurite
from tests.broker import TestBroker

pytestmark = pytest.mark.integration

QUEUE = "dataverse-mailbox-events"
POLICY = """\
version: 1
organization:
  id: {organization_id}
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
    restore_approval: true
notifications:
  enabled: true
  sender: guardrails@contoso.com
"""
OFFLINE = ("servicebus", "storage")


@dataclass
class Deployment:
    sandbox: Sandbox
    policy: Path
    env: dict[str, str]
    cwd: Path

    @property
    def dv(self) -> Any:
        return self.sandbox.dataverse

    def doctor(self, skip: tuple[str, ...] = OFFLINE) -> dict[str, Check]:
        return {c.name: c for c in run_doctor(self.env, skip=skip, cwd=self.cwd)}

    def row(self, entity_set: str, name_contains: str = "") -> dict[str, Any]:
        (row,) = [r for r in self.dv.rows(entity_set) if name_contains in str(r.get("name"))]
        return dict(row)

    def edit(self, entity_set: str, name_contains: str, values: dict[str, Any]) -> None:
        row = self.row(entity_set, name_contains)
        key = next(k for k in row if k.endswith("id") and not k.startswith("_"))
        self.dv.update_row(entity_set, row[key], values)


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    with Sandbox() as sandbox:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(organization_id=sandbox.dataverse.organization_id))
        env = sandbox.environment(policy, queue=QUEUE)
        # MSAL and requests read the CA bundle from the process environment.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", env["REQUESTS_CA_BUNDLE"])
        sandbox.register_integration(policy, queue=QUEUE)
        sandbox.dataverse.clear_log()
        yield Deployment(sandbox, policy, env, tmp_path)


def failed(checks: dict[str, Check]) -> dict[str, Check]:
    """The failing checks that are causes (not 'not checked' because another failed)."""
    return {
        name: check
        for name, check in checks.items()
        if not check.ok and not check.detail.startswith("not checked")
    }


def test_a_clean_deployment_passes_every_check(deployment: Deployment) -> None:
    checks = deployment.doctor()
    assert list(checks) == [
        "settings",
        "policy",
        "token",
        "dataverse",
        "organization",
        "privileges",
        "endpoint",
        "create-step",
        "update-step",
        "pre-image",
        "graph",
        "servicebus",
        "storage",
    ]
    assert [c.name for c in checks.values() if not c.ok] == []
    assert checks["servicebus"].skipped
    assert checks["storage"].skipped
    assert "holds the 6 privileges it needs" in checks["privileges"].detail
    assert "nothing was sent" in checks["graph"].detail


def test_doctor_never_writes(deployment: Deployment) -> None:
    sandbox = deployment.sandbox
    rows = {name: deployment.dv.rows(name) for name in ("serviceendpoints", "mailboxes")}
    deployment.doctor()
    assert {r.method for r in deployment.dv.requests_log} == {"GET"}
    assert {r.method for r in sandbox.graph.requests_log} == {"GET"}
    assert sandbox.graph.sent == []
    assert sandbox.graph.messages() == []
    assert {name: deployment.dv.rows(name) for name in rows} == rows


def test_the_command_prints_each_check_and_exits_by_the_result(
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in deployment.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(deployment.cwd)
    assert main(["doctor", "--skip", "servicebus", "--skip", "storage", "--format", "json"]) == 0
    checks = json.loads(capsys.readouterr().out)
    assert [set(c) for c in checks] == [{"name", "ok", "detail", "fix"}] * 13
    assert all(c["ok"] for c in checks)
    deployment.edit("sdkmessageprocessingsteps", "Update", {"mode": 0})
    assert main(["doctor", "--skip", "servicebus", "--skip", "storage"]) == 1
    out = capsys.readouterr().out
    assert "FAIL    update-step" in out
    assert "SKIP    servicebus" in out
    assert out.rstrip().endswith("1 check(s) failed: update-step; not checked: pre-image")


# -- each misconfiguration, one at a time --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bad_policy(d: Deployment) -> None:
    d.policy.write_text(d.policy.read_text().replace("server_side_sync\n", "carrier_pigeon\n", 1))


def _missing_setting(d: Deployment) -> None:
    del d.env["SERVICEBUS_QUEUE"]


def _wrong_secret(d: Deployment) -> None:
    d.env["AZURE_CLIENT_SECRET"] = "not-the-secret"


def _expired_secret(d: Deployment) -> None:
    d.sandbox.identity.inject(
        401,
        path_contains="/oauth2/v2.0/token",
        body={
            "error": "invalid_client",
            "error_description": "AADSTS7000222: The provided client secret keys for app "
            f"'{CLIENT_ID}' are expired. Visit the Azure portal to create new keys for your app.",
            "error_codes": [7000222],
        },
    )


def _unknown_app(d: Deployment) -> None:
    d.env["AZURE_CLIENT_ID"] = str(uuid.uuid4())


def _dataverse_unreachable(d: Deployment) -> None:
    d.env["DATAVERSE_URL"] = f"https://127.0.0.1:{_free_port()}"


def _no_application_user(d: Deployment) -> None:
    stranger = str(uuid.uuid4())
    d.sandbox.identity.register_app(TENANT_ID, stranger, secret="stranger-secret")
    d.sandbox.graph.grant(stranger, "Mail.Send", "Mail.ReadWrite")  # only Dataverse lacks it
    d.env["AZURE_CLIENT_ID"] = stranger
    d.env["AZURE_CLIENT_SECRET"] = "stranger-secret"


def _lacks_privilege(d: Deployment) -> None:
    d.dv.revoke_privilege(GUARDRAIL_ROLE, "prvApproveRejectEmailAddress")


def _another_organization(d: Deployment) -> None:
    d.policy.write_text(d.policy.read_text().replace(d.dv.organization_id, str(uuid.uuid4())))


def _binary_format(d: Deployment) -> None:
    d.edit("serviceendpoints", "", {"messageformat": 1})


def _no_endpoint(d: Deployment) -> None:
    d.env["SERVICEBUS_QUEUE"] = "another-queue"


def _synchronous(d: Deployment) -> None:
    d.edit("sdkmessageprocessingsteps", "Update", {"mode": 0})


def _disabled(d: Deployment) -> None:
    d.edit("sdkmessageprocessingsteps", "Create", {"statecode": 1, "statuscode": 2})


def _wrong_stage(d: Deployment) -> None:
    d.edit("sdkmessageprocessingsteps", "Update", {"stage": 20})


def _missing_column(d: Deployment) -> None:
    d.edit(
        "sdkmessageprocessingsteps",
        "Update",
        {"filteringattributes": "incomingemaildeliverymethod,outgoingemaildeliverymethod"},
    )


def _every_column(d: Deployment) -> None:
    d.edit("sdkmessageprocessingsteps", "Update", {"filteringattributes": None})


def _no_create_step(d: Deployment) -> None:
    row = d.row("sdkmessageprocessingsteps", "Create")
    d.dv.delete_row("sdkmessageprocessingsteps", row["sdkmessageprocessingstepid"])


def _no_pre_image(d: Deployment) -> None:
    row = d.row("sdkmessageprocessingstepimages")
    d.dv.delete_row("sdkmessageprocessingstepimages", row["sdkmessageprocessingstepimageid"])


def _misnamed_image(d: Deployment) -> None:
    d.edit("sdkmessageprocessingstepimages", "", {"entityalias": "PreImage"})


def _empty_image(d: Deployment) -> None:
    d.edit("sdkmessageprocessingstepimages", "", {"attributes": None})


def _image_without_owner(d: Deployment) -> None:
    d.edit(
        "sdkmessageprocessingstepimages",
        "",
        {
            "attributes": "incomingemaildeliverymethod,outgoingemaildeliverymethod,"
            "actdeliverymethod,emailaddress,regardingobjectid"
        },
    )


def _no_mail_permission(d: Deployment) -> None:
    d.sandbox.graph.revoke(CLIENT_ID)


def _no_sender_mailbox(d: Deployment) -> None:
    d.sandbox.graph.mailboxes = {"someone.else@contoso.com"}


CASES: list[tuple[str, Callable[[Deployment], None], str, str, str]] = [
    # (id, break it, the failing check, in its detail, in its fix)
    ("policy invalid", _bad_policy, "policy", "carrier_pigeon", "guardrails policy validate"),
    ("setting missing", _missing_setting, "settings", "SERVICEBUS_QUEUE", "application settings"),
    ("wrong secret", _wrong_secret, "token", "AZURE_CLIENT_SECRET", FIXES["7000215"].text),
    ("expired secret", _expired_secret, "token", "AADSTS7000222", FIXES["7000222"].text),
    ("unknown app", _unknown_app, "token", "AZURE_CLIENT_ID", FIXES["700016"].text),
    (
        "dataverse unreachable",
        _dataverse_unreachable,
        "dataverse",
        "could not be reached",
        "DATAVERSE_URL",
    ),
    ("no application user", _no_application_user, "dataverse", "0x80072560", "application user"),
    (
        "privilege missing",
        _lacks_privilege,
        "privileges",
        "prvApproveRejectEmailAddress",
        "guardrails role --create",
    ),
    (
        "other organization",
        _another_organization,
        "organization",
        "every message would be rejected",
        "organization.id",
    ),
    ("binary message format", _binary_format, "endpoint", "Binary XML (messageformat 1)", "JSON"),
    (
        "no endpoint for the queue",
        _no_endpoint,
        "endpoint",
        "no service endpoint posts to queue 'another-queue'",
        "guardrails register",
    ),
    ("synchronous step", _synchronous, "update-step", "synchronous", "guardrails register"),
    ("disabled step", _disabled, "create-step", "disabled", "guardrails register"),
    ("wrong stage", _wrong_stage, "update-step", "stage 20 (pre-operation)", "guardrails register"),
    (
        "governed column not filtered",
        _missing_column,
        "update-step",
        "lack actdeliverymethod, emailaddress",
        "guardrails register",
    ),
    (
        "no filtering attributes",
        _every_column,
        "update-step",
        "fires on every column change",
        "guardrails register",
    ),
    (
        "no create step",
        _no_create_step,
        "create-step",
        "no step posts Create of mailbox",
        "guardrails register",
    ),
    ("pre image missing", _no_pre_image, "pre-image", "has no pre image", "guardrails register"),
    (
        "pre image misnamed",
        _misnamed_image,
        "pre-image",
        "alias is 'PreImage', not 'guardrails_pre'",
        "guardrails register",
    ),
    (
        "pre image empty",
        _empty_image,
        "pre-image",
        "empty, which means every column",
        "guardrails register",
    ),
    (
        "pre image without owner",
        _image_without_owner,
        "pre-image",
        "lack ownerid",
        "guardrails register",
    ),
    (
        "no mail permission",
        _no_mail_permission,
        "graph",
        "may not use the sender mailbox",
        "Mail.ReadWrite",
    ),
    (
        "no sender mailbox",
        _no_sender_mailbox,
        "graph",
        "no mailbox guardrails@contoso.com",
        "notifications.sender",
    ),
]


@pytest.mark.parametrize(
    ("breaks", "check", "detail", "fix"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_misconfiguration_fails_the_check_that_names_it(
    deployment: Deployment,
    breaks: Callable[[Deployment], None],
    check: str,
    detail: str,
    fix: str,
) -> None:
    breaks(deployment)
    checks = deployment.doctor()
    causes = failed(checks)
    assert check in causes, {n: c.detail for n, c in causes.items()}
    assert detail in causes[check].detail
    assert fix in causes[check].fix
    # Only this check, and what could not be checked because of it (the settings check also
    # sees a missing queue setting; the endpoint check cannot find the queue without it).
    also = {"setting missing": {"endpoint"}}.get(next(c[0] for c in CASES if c[1] is breaks), set())
    assert set(causes) == {check, *also}
    for name, result in checks.items():
        if name not in causes and not result.ok:
            assert result.detail.startswith("not checked: it needs")


# -- the services doctor reaches through their SDKs ----------------------------------------------


def test_the_queue_and_the_table_store_are_read_not_written(
    deployment: Deployment, broker: TestBroker, azurite: Azurite
) -> None:
    prefix = azurite.unique_prefix()
    # Registered for the namespace the function listens on (the endpoint check compares them).
    deployment.sandbox.register_integration(
        deployment.policy, queue=QUEUE, namespace=f"sb://127.0.0.1:{broker.port}/"
    )
    deployment.env.update(
        {
            "SERVICEBUS": broker.connection_string,
            "AzureWebJobsStorage": azurite.connection_string,
            "GUARDRAILS_TABLE_PREFIX": prefix,
        }
    )
    broker.publish(QUEUE, b'{"waiting": true}', message_id="waiting")
    with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        service.create_table(f"{prefix}Ledger")
        checks = deployment.doctor(skip=())
        tables = sorted(t.name for t in service.list_tables() if t.name.startswith(prefix))
    assert [c.name for c in checks.values() if not c.ok] == []
    assert checks["servicebus"].detail == f"queue '{QUEUE}' peeked: a message is waiting"
    assert "1 table(s) with prefix" in checks["storage"].detail
    assert tables == [f"{prefix}Ledger"]  # nothing created
    assert [m.message_id for m in broker.messages(QUEUE)] == ["waiting"]  # nothing taken
    assert broker.locked(QUEUE) == []


def test_an_unreachable_queue_and_table_store_fail_by_name(deployment: Deployment) -> None:
    port = _free_port()
    deployment.sandbox.register_integration(
        deployment.policy, queue=QUEUE, namespace=f"sb://127.0.0.1:{port}/"
    )
    deployment.env.update(
        {
            "SERVICEBUS": f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=t;"
            "SharedAccessKey=dGVzdA==;UseDevelopmentEmulator=true",
            "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=dGVzdA==;"
            f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
        }
    )
    causes = failed(deployment.doctor(skip=()))
    assert set(causes) == {"servicebus", "storage"}
    assert "cannot be read" in causes["servicebus"].detail
    assert "SERVICEBUS" in causes["servicebus"].fix
    assert "could not be reached" in causes["storage"].detail
    assert "AzureWebJobsStorage" in causes["storage"].fix


def test_skipping_a_check_skips_what_needs_it(deployment: Deployment) -> None:
    checks = deployment.doctor(skip=("token", "servicebus", "storage"))
    assert [c.name for c in checks.values() if not c.ok] == []
    assert checks["dataverse"].detail == "skipped: it needs token, which was skipped"
    assert checks["pre-image"].skipped
    with pytest.raises(ValueError, match="no check named graphs"):
        run_doctor(deployment.env, skip=("graphs",))


# -- the worker's side of a refused credential ---------------------------------------------------


def test_the_worker_logs_a_wrong_secret_once_with_doctors_fix(deployment: Deployment) -> None:
    client_id = str(uuid.uuid4())  # an app of its own: the log is once per process and app
    deployment.sandbox.identity.register_app(TENANT_ID, client_id, secret="the-real-one")
    tokens = MsalTokenProvider(
        Credentials(
            tenant_id=TENANT_ID,
            client_id=client_id,
            client_secret="a-wrong-one",
            authority_host=deployment.sandbox.identity.url,
        ),
        session=new_session(5.0),
    )
    scope = f"{deployment.dv.url}/.default"
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(AuthenticationError) as raised:
                tokens.token(scope)
            assert not raised.value.transient  # configuration, not a failure to retry blindly
            assert FIXES["7000215"].text in str(raised.value)
    refused = [e for e in logs if e["event"] == "guardrails.credentials_refused"]
    assert len(refused) == 1
    assert refused[0]["log_level"] == "error"
    assert refused[0]["aadsts"] == "AADSTS7000215"
    assert refused[0]["setting"] == "AZURE_CLIENT_SECRET"
    assert refused[0]["fix"] == FIXES["7000215"].text
    deployment.env["AZURE_CLIENT_ID"] = client_id
    deployment.env["AZURE_CLIENT_SECRET"] = "a-wrong-one"
    assert deployment.doctor()["token"].fix == refused[0]["fix"]


def test_fix_texts_are_found_by_code_in_any_error_text() -> None:
    assert fix_for("7000222") is FIXES["7000222"]
    assert (
        fix_for("no token for x (client_secret): AADSTS700016: Application ...")
        is (FIXES["700016"])
    )
    assert fix_for("AADSTS50126: something else") is None
    assert fix_for(None) is None
