"""An administrator signs in with a device code and the admin commands act as them.

`guardrails register|unregister|role --device-code` run in-process through the CLI against the
sandbox, over real HTTPS. Only the app's own settings are in the environment (its role may not
change the registration), so what the commands write they write as the person who approved the
code: on another thread, the administrator reads the code the command shows and approves it,
as a person would at the verification page.
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest

from guardrails.admin.signin import DeviceCodeTokenProvider
from guardrails.cli import main
from guardrails.clients.http import new_session
from guardrails.errors import AuthenticationError
from guardrails.sandbox.environment import GUARDRAIL_ROLE, SAS_KEY, SAS_KEY_NAME, TENANT_ID, Sandbox

pytestmark = pytest.mark.integration

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
"""
NAMESPACE = "sb://contoso-guardrails.servicebus.windows.net/"
QUEUE = "dataverse-mailbox-events"
REGISTRATION = ("serviceendpoints", "sdkmessageprocessingsteps", "sdkmessageprocessingstepimages")
CODE = re.compile(r"enter the code (?P<code>[A-Z0-9]+) to authenticate")


class Screen(io.StringIO):
    """Standard error as the administrator sees it; says when a sign-in code is shown.

    In use (``with screen:``) it is ``sys.stderr`` and passes everything on to the stream it
    replaced (pytest's capture, which swaps its own in for each test phase)."""

    def __init__(self) -> None:
        super().__init__()
        self.codes: list[str] = []
        self.shown = threading.Condition()
        self._replaced: list[TextIO] = []

    def __enter__(self) -> Screen:
        self._replaced.append(sys.stderr)
        sys.stderr = self
        return self

    def __exit__(self, *_: object) -> None:
        sys.stderr = self._replaced.pop()

    def write(self, text: str) -> int:
        written = super().write(text)
        if self._replaced:
            self._replaced[-1].write(text)
        with self.shown:
            self.codes = CODE.findall(self.getvalue())
            self.shown.notify_all()
        return written

    def wait_for_code(self, number: int, timeout: float = 10.0) -> str | None:
        """The `number`-th code shown (1-based), once it is."""
        with self.shown:
            self.shown.wait_for(lambda: len(self.codes) >= number, timeout)
            return self.codes[number - 1] if len(self.codes) >= number else None


@dataclass
class Person:
    """Someone at the verification page, on their own thread: enters the code the command
    shows and answers (approves or declines) with `answer`."""

    screen: Screen
    answer: Callable[[str], None]
    answered: list[str] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Person:
        self.screen.__enter__()
        self._thread = threading.Thread(target=self._run, name="person", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.screen.__exit__()
        assert self._thread is not None
        self._thread.join(15)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        code = self.screen.wait_for_code(len(self.answered) + 1)
        if code is None:
            return
        time.sleep(0.1)  # a person takes a moment: the command is polling by then
        try:
            self.answer(code)
        except BaseException as exc:  # reported by the test, not lost on this thread
            self.failures.append(exc)
        self.answered.append(code)


@dataclass
class Org:
    sandbox: Sandbox
    policy: Path
    screen: Screen
    client_id: str
    admin_id: str

    @property
    def dv(self) -> Any:
        return self.sandbox.dataverse

    def rows(self, entity_set: str) -> list[dict[str, Any]]:
        return list(self.dv.rows(entity_set))

    def sign_in_options(self) -> list[str]:
        return ["--device-code", "--admin-client-id", self.client_id, "--tenant", TENANT_ID]

    def approves(self, user_id: str | None = None) -> Person:
        """The Dataverse user `user_id` (the administrator by default) approves the code."""
        user = user_id or self.admin_id
        return Person(self.screen, lambda code: self.sandbox.approve_device_code(code, user))

    def run(self, *argv: str, person: Person | None = None) -> int:
        """Run the command while `person` (the administrator by default) answers its code."""
        with person or self.approves() as answering:
            code = main([*argv, *self.sign_in_options()])
        assert answering.failures == []
        assert len(answering.answered) == 1
        return code

    def callers(self, *methods: str) -> set[str | None]:
        """The users the Dataverse requests (of these methods, or all) acted as."""
        return {
            self.dv.caller(r) for r in self.dv.requests_log if not methods or r.method in methods
        }


@pytest.fixture
def org(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Org]:
    with Sandbox() as sandbox:
        sandbox.identity.device_code_interval = 1  # MSAL sleeps whole seconds between polls
        sandbox.identity.device_code_lifetime = 30  # a test that goes wrong fails in time
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(organization_id=sandbox.dataverse.organization_id))
        # The function's own settings only: its app may not change the registration.
        for key, value in sandbox.environment(policy).items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("SERVICEBUS", raising=False)
        monkeypatch.delenv("GUARDRAILS_ADMIN_CLIENT_ID", raising=False)
        monkeypatch.setenv("SERVICEBUS__fullyQualifiedNamespace", NAMESPACE.removeprefix("sb://"))
        monkeypatch.setenv("SERVICEBUS_QUEUE", QUEUE)
        monkeypatch.setenv("DATAVERSE_SAS_KEY_NAME", SAS_KEY_NAME)
        monkeypatch.setenv("DATAVERSE_SAS_KEY", SAS_KEY)
        yield Org(
            sandbox,
            policy,
            Screen(),
            client_id=sandbox.admin_public_client(),
            admin_id=sandbox.add_signin_user("Dana Admin", "dana@contoso.com"),
        )
        assert sandbox.dataverse.errors == []
        assert sandbox.identity.errors == []


def test_register_with_a_device_code_writes_as_the_administrator(
    org: Org, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert org.run("register") == 0
    elapsed = time.monotonic() - started
    assert "done: 4 change(s) written" in capsys.readouterr().out

    (endpoint,) = org.rows("serviceendpoints")
    assert (endpoint["name"], endpoint["path"], endpoint["namespaceaddress"]) == (
        "Mailbox Guardrails",
        QUEUE,
        NAMESPACE,
    )
    assert org.dv.service_endpoint_key(endpoint["serviceendpointid"]) == SAS_KEY
    steps = sorted(row["name"] for row in org.rows("sdkmessageprocessingsteps"))
    assert steps == [
        "Mailbox Guardrails: Create of mailbox",
        "Mailbox Guardrails: Update of mailbox",
    ]
    (image,) = org.rows("sdkmessageprocessingstepimages")
    assert image["_sdkmessageprocessingstepid_value"] in {
        row["sdkmessageprocessingstepid"] for row in org.rows("sdkmessageprocessingsteps")
    }

    # Every request, the four writes among them, acted as the person who approved the code
    # (registration rows keep no createdby here, so the requests' own tokens say who).
    writes = [r for r in org.dv.requests_log if r.method in ("POST", "PATCH", "DELETE")]
    assert len(writes) == 4
    assert org.callers() == {org.admin_id}
    assert org.dv.user(org.admin_id)["fullname"] == "Dana Admin"

    # One sign-in for the whole command: the code was shown once, then MSAL's cache served.
    (shown,) = org.screen.codes
    assert (
        f"open the page {org.sandbox.identity.verification_uri} and enter the code {shown}"
        in org.screen.getvalue()
    )
    assert org.sandbox.identity.device_code_requests == 1
    assert org.sandbox.identity.pending_user_codes == []
    (token_holder,) = {t.subject for t in org.sandbox.identity.issued_tokens if t.subject}
    assert token_holder == org.dv.user(org.admin_id)["azureactivedirectoryobjectid"]
    assert elapsed < 5  # polls every second: the approval is seen at the next poll


def test_unregister_with_a_device_code_removes_as_the_administrator(org: Org) -> None:
    org.sandbox.register_integration(org.policy)
    assert all(org.rows(entity_set) for entity_set in REGISTRATION)
    org.dv.clear_log()
    assert org.run("unregister") == 0
    assert not any(org.rows(entity_set) for entity_set in REGISTRATION)
    deletes = [r for r in org.dv.requests_log if r.method == "DELETE"]
    assert len(deletes) == 4
    assert org.callers() == {org.admin_id}


def test_role_create_with_a_device_code(org: Org, capsys: pytest.CaptureFixture[str]) -> None:
    assert org.run("role", "--create", "--name", "Mailbox Guardrails (device code)") == 0
    assert "Mailbox Guardrails (device code)" in capsys.readouterr().out
    assert org.dv.role_privileges("Mailbox Guardrails (device code)")
    assert org.callers("POST") == {org.admin_id}


def test_a_person_without_the_privileges_is_refused_by_dataverse(
    org: Org, capsys: pytest.CaptureFixture[str]
) -> None:
    operator = org.sandbox.add_signin_user(
        "Olu Operator", "olu@contoso.com", roles=(GUARDRAIL_ROLE,)
    )
    assert org.run("register", person=org.approves(operator)) == 1
    err = capsys.readouterr().err
    assert "Dataverse refused to create service endpoint 'Mailbox Guardrails'" in err
    assert not any(org.rows(entity_set) for entity_set in REGISTRATION)
    assert org.callers() == {operator}


def test_a_person_without_a_user_in_the_environment_is_refused(
    org: Org, capsys: pytest.CaptureFixture[str]
) -> None:
    # In the tenant's directory, but without a user in this Dataverse environment.
    outsider = org.sandbox.identity.register_user(TENANT_ID, username="sam@contoso.com")
    person = Person(
        org.screen, lambda code: org.sandbox.identity.approve_device_code(code, outsider)
    )
    assert org.run("register", person=person) == 1
    assert "The user is not a member of the organization" in capsys.readouterr().err
    assert not any(org.rows(entity_set) for entity_set in REGISTRATION)


def provider(org: Org) -> DeviceCodeTokenProvider:
    return DeviceCodeTokenProvider(
        client_id=org.client_id,
        tenant=TENANT_ID,
        authority_host=org.sandbox.identity.url,
        session=new_session(5.0),
        prompt=lambda text: print(text, file=sys.stderr),
    )


def test_a_declined_sign_in_is_reported(org: Org) -> None:
    tokens = provider(org)
    with (
        Person(org.screen, org.sandbox.identity.decline_device_code),
        pytest.raises(AuthenticationError, match="device-code sign-in failed: AADSTS65004") as info,
    ):
        tokens.token(f"{org.dv.url}/.default")
    assert info.value.code == "authorization_declined"
    assert org.dv.requests_log == []


def test_an_unanswered_code_expires(org: Org) -> None:
    org.sandbox.identity.device_code_lifetime = 1
    with (
        org.screen,  # nobody answers
        pytest.raises(AuthenticationError, match="AADSTS70019: Verification code expired") as info,
    ):
        provider(org).token(f"{org.dv.url}/.default")
    assert info.value.code == "expired_token"
    assert len(org.screen.codes) == 1
    assert org.dv.requests_log == []


def test_a_revoked_token_is_renewed_without_asking_again(org: Org) -> None:
    tokens = provider(org)
    scope = f"{org.dv.url}/.default"
    with org.approves():
        first = tokens.token(scope)
    assert tokens.token(scope) == first  # from MSAL's cache
    org.sandbox.identity.revoke_all()
    renewed = tokens.token(scope, force_refresh=True)  # what the client does after a 401
    assert renewed != first
    assert (
        org.sandbox.identity.user_for(renewed, org.dv.url)
        == (org.dv.user(org.admin_id)["azureactivedirectoryobjectid"])
    )
    assert len(org.screen.codes) == 1
    assert org.sandbox.identity.device_code_requests == 1


def test_a_refused_sign_in_ends_the_command_with_its_reason_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any command whose token is refused prints `guardrails: ...` and exits 1."""
    from guardrails.cli import main

    monkeypatch.setenv("DATAVERSE_URL", "https://127.0.0.1:9")  # nothing listens: no token
    monkeypatch.setenv("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47")
    monkeypatch.setenv("AZURE_CLIENT_ID", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "wrong")
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "https://127.0.0.1:9")
    code = main(["unregister", "--dry-run"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and err.strip()
