"""`guardrails register` and `unregister` against the sandbox's Dataverse, over real HTTPS.

The commands run in-process through the CLI, signed in as a deployment administrator (an app
registration whose application user is a System Administrator); what they write is read back
from the simulator's tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guardrails.admin.register import (
    DESCRIPTION,
    MARKER,
    Action,
    Registration,
    Row,
    Target,
    normalize_namespace,
    plan_registration,
    plan_unregistration,
)
from guardrails.admin.signin import DeviceCodeTokenProvider, token_provider
from guardrails.cli import main
from guardrails.clients.http import new_session
from guardrails.errors import AuthenticationError, ConfigurationError
from guardrails.sandbox.environment import SAS_KEY, SAS_KEY_NAME, TENANT_ID, Sandbox
from guardrails.sandbox.messages import PRE_IMAGE

pytestmark = pytest.mark.integration

POLICY = """\
version: 1
organization:
  id: {organization_id}
rules:
{rules}
"""
ALL_RULES = """\
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
"""
GOVERNED = "incomingemaildeliverymethod,outgoingemaildeliverymethod,actdeliverymethod,emailaddress"
REGISTRATION = ("serviceendpoints", "sdkmessageprocessingsteps", "sdkmessageprocessingstepimages")
NAMESPACE = "sb://contoso-guardrails.servicebus.windows.net/"
QUEUE = "dataverse-mailbox-events"


@dataclass
class Org:
    sandbox: Sandbox
    policy: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def dv(self) -> Any:
        return self.sandbox.dataverse

    def rules(self, rules: str) -> None:
        self.policy.write_text(POLICY.format(organization_id=self.dv.organization_id, rules=rules))

    def rows(self, entity_set: str) -> list[dict[str, Any]]:
        return list(self.dv.rows(entity_set))

    def writes(self) -> list[str]:
        """Every write to a registration table so far: 'METHOD path'."""
        return [
            f"{r.method} {r.path.split('/v9.2/')[-1]}"
            for r in self.dv.requests_log
            if r.method in ("POST", "PATCH", "DELETE")
        ]


@pytest.fixture
def org(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Org]:
    with Sandbox() as sandbox:
        policy = tmp_path / "policy.yaml"
        state = Org(sandbox, policy, monkeypatch)
        state.rules(ALL_RULES)
        for key, value in {**sandbox.environment(policy), **sandbox.admin_environment()}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("SERVICEBUS", raising=False)
        monkeypatch.setenv("SERVICEBUS__fullyQualifiedNamespace", NAMESPACE.removeprefix("sb://"))
        monkeypatch.setenv("SERVICEBUS_QUEUE", QUEUE)
        monkeypatch.setenv("DATAVERSE_SAS_KEY_NAME", SAS_KEY_NAME)
        monkeypatch.setenv("DATAVERSE_SAS_KEY", SAS_KEY)
        yield state
        assert sandbox.dataverse.errors == []


def _register(*extra: str) -> int:
    return main(["register", *extra])


def _ours(row: dict[str, Any]) -> bool:
    return MARKER in str(row.get("description") or "")


# -- register ------------------------------------------------------------------------------------


def test_register_creates_exactly_the_expected_rows(
    org: Org, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _register() == 0
    out = capsys.readouterr().out
    assert "done: 4 change(s) written" in out
    assert SAS_KEY not in out  # never printed

    (endpoint,) = org.rows("serviceendpoints")
    endpoint_id = endpoint["serviceendpointid"]
    assert {
        k: v for k, v in endpoint.items() if k not in ("versionnumber", "createdon", "modifiedon")
    } == {
        "serviceendpointid": endpoint_id,
        "name": "Mailbox Guardrails",
        "description": DESCRIPTION,
        "contract": 6,
        "connectionmode": 1,
        "authtype": 2,
        "namespaceaddress": NAMESPACE,
        "namespaceformat": 2,
        "path": QUEUE,
        "saskeyname": SAS_KEY_NAME,
        "saskey": None,
        "messageformat": 2,
        "userclaim": 2,
    }
    assert org.dv.service_endpoint_key(endpoint_id) == SAS_KEY

    steps = {row["name"]: row for row in org.rows("sdkmessageprocessingsteps")}
    assert set(steps) == {
        "Mailbox Guardrails: Create of mailbox",
        "Mailbox Guardrails: Update of mailbox",
    }
    for message in ("Create", "Update"):
        step = steps[f"Mailbox Guardrails: {message} of mailbox"]
        expected = {
            "sdkmessageprocessingstepid": step["sdkmessageprocessingstepid"],
            "name": f"Mailbox Guardrails: {message} of mailbox",
            "description": DESCRIPTION,
            "mode": 1,
            "stage": 40,
            "rank": 1,
            "supporteddeployment": 0,
            "asyncautodelete": True,
            "filteringattributes": GOVERNED if message == "Update" else None,
            "statecode": 0,
            "statuscode": 1,
            "_eventhandler_value": endpoint_id,
            "_eventhandler_value@Microsoft.Dynamics.CRM.lookuplogicalname": "serviceendpoint",
            "_sdkmessageid_value": org.dv.sdk_message_id(message),
            "_sdkmessageid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "sdkmessage",
            "_sdkmessagefilterid_value": org.dv.sdk_message_filter_id(message, "mailbox"),
            "_sdkmessagefilterid_value@Microsoft.Dynamics.CRM.lookuplogicalname": (
                "sdkmessagefilter"
            ),
        }
        assert {
            k: v for k, v in step.items() if k not in ("versionnumber", "createdon", "modifiedon")
        } == expected

    (image,) = org.rows("sdkmessageprocessingstepimages")
    update_id = steps["Mailbox Guardrails: Update of mailbox"]["sdkmessageprocessingstepid"]
    assert {
        k: v for k, v in image.items() if k not in ("versionnumber", "createdon", "modifiedon")
    } == {
        "sdkmessageprocessingstepimageid": image["sdkmessageprocessingstepimageid"],
        "name": PRE_IMAGE,
        "description": DESCRIPTION,
        "entityalias": PRE_IMAGE,  # the alias the sandbox's messages (and the worker) use
        "imagetype": 0,
        "messagepropertyname": "Target",
        "attributes": f"{GOVERNED},regardingobjectid,ownerid,name",
        "_sdkmessageprocessingstepid_value": update_id,
        "_sdkmessageprocessingstepid_value@Microsoft.Dynamics.CRM.lookuplogicalname": (
            "sdkmessageprocessingstep"
        ),
    }
    assert sorted(w.split("(")[0] for w in org.writes()) == [
        "POST sdkmessageprocessingstepimages",
        "POST sdkmessageprocessingsteps",
        "POST sdkmessageprocessingsteps",
        "POST serviceendpoints",
    ]


def test_a_second_run_writes_nothing(org: Org, capsys: pytest.CaptureFixture[str]) -> None:
    assert _register() == 0
    before = org.writes()
    rows = {name: org.rows(name) for name in REGISTRATION}
    capsys.readouterr()
    assert _register() == 0
    assert org.writes() == before
    assert {name: org.rows(name) for name in REGISTRATION} == rows
    out = capsys.readouterr().out
    assert "nothing to change: 4 row(s) already as wanted" in out
    assert out.count("keep ") == 4


def test_dry_run_prints_the_plan_and_writes_nothing(
    org: Org, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _register("--dry-run") == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:5]] == ["create"] * 4
    assert "dry run: 4 change(s) planned, 0 left alone; nothing written" in out
    assert "saskey=(secret)" in out
    assert org.writes() == []
    assert all(org.rows(name) == [] for name in REGISTRATION)


def test_dry_run_as_json_after_drift(org: Org, capsys: pytest.CaptureFixture[str]) -> None:
    assert _register() == 0
    (step,) = [r for r in org.rows("sdkmessageprocessingsteps") if "Update" in r["name"]]
    org.dv.update_row("sdkmessageprocessingsteps", step["sdkmessageprocessingstepid"], {"mode": 0})
    writes = org.writes()
    capsys.readouterr()
    assert _register("--dry-run", "--format", "json") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True
    actions = [(c["action"], c["kind"]) for c in plan["changes"]]
    assert actions == [
        ("keep", "service endpoint"),
        ("keep", "step"),
        ("update", "step"),
        ("keep", "step image"),
    ]
    update = plan["changes"][2]
    assert update == {
        "action": "update",
        "kind": "step",
        "name": "Mailbox Guardrails: Update of mailbox",
        "id": step["sdkmessageprocessingstepid"],
        "set": {"mode": 1},
        "was": {"mode": 0},
    }
    assert org.writes() == writes


def test_drift_is_corrected_in_place_keeping_the_ids(org: Org) -> None:
    assert _register() == 0
    ids = {name: [r[_key(name)] for r in org.rows(name)] for name in REGISTRATION}
    (endpoint,) = org.rows("serviceendpoints")
    (update,) = [r for r in org.rows("sdkmessageprocessingsteps") if "Update" in r["name"]]
    (image,) = org.rows("sdkmessageprocessingstepimages")
    # What one wrong click in the Plug-in Registration Tool does.
    org.dv.update_row("serviceendpoints", endpoint["serviceendpointid"], {"messageformat": 1})
    org.dv.update_row(
        "sdkmessageprocessingsteps",
        update["sdkmessageprocessingstepid"],
        {
            "mode": 0,
            "stage": 20,
            "statecode": 1,
            "statuscode": 2,
            "filteringattributes": "emailaddress",
        },
    )
    org.dv.update_row(
        "sdkmessageprocessingstepimages",
        image["sdkmessageprocessingstepimageid"],
        {"entityalias": "PreImage", "attributes": "emailaddress"},
    )
    writes = len(org.writes())
    assert _register() == 0
    assert [w.split("(")[0] for w in org.writes()[writes:]] == [
        "PATCH serviceendpoints",
        "PATCH sdkmessageprocessingsteps",
        "PATCH sdkmessageprocessingstepimages",
    ]
    assert {name: [r[_key(name)] for r in org.rows(name)] for name in REGISTRATION} == ids
    (endpoint,) = org.rows("serviceendpoints")
    assert endpoint["messageformat"] == 2
    (update,) = [r for r in org.rows("sdkmessageprocessingsteps") if "Update" in r["name"]]
    assert (update["mode"], update["stage"], update["statecode"], update["statuscode"]) == (
        1,
        40,
        0,
        1,
    )
    assert update["filteringattributes"] == GOVERNED
    (image,) = org.rows("sdkmessageprocessingstepimages")
    assert image["entityalias"] == PRE_IMAGE
    assert image["attributes"] == f"{GOVERNED},regardingobjectid,ownerid,name"
    # The key went with none of it: Dataverse never returns it, so it is not compared.
    patch = [r for r in org.dv.requests_log if r.method == "PATCH" and "serviceendpoints" in r.path]
    assert patch[-1].json == {"messageformat": 2}


def _key(entity_set: str) -> str:
    return {
        "serviceendpoints": "serviceendpointid",
        "sdkmessageprocessingsteps": "sdkmessageprocessingstepid",
        "sdkmessageprocessingstepimages": "sdkmessageprocessingstepimageid",
    }[entity_set]


def test_the_sas_key_is_written_on_create_and_with_rotate_key_only(org: Org) -> None:
    assert _register() == 0
    (endpoint,) = org.rows("serviceendpoints")
    endpoint_id = endpoint["serviceendpointid"]
    org.monkeypatch.setenv("DATAVERSE_SAS_KEY", "bmV3LWtleQ==")
    writes = len(org.writes())
    assert _register() == 0
    assert org.writes()[writes:] == []  # a new key alone is not a difference: it cannot be read
    assert org.dv.service_endpoint_key(endpoint_id) == SAS_KEY
    assert _register("--rotate-key") == 0
    (patch,) = [r for r in org.dv.requests_log[-10:] if r.method == "PATCH"]
    assert patch.json == {"saskey": "bmV3LWtleQ=="}
    assert org.dv.service_endpoint_key(endpoint_id) == "bmV3LWtleQ=="


def test_moving_to_another_queue_writes_the_key_with_it(org: Org) -> None:
    assert _register() == 0
    assert _register("--queue", "other-queue", "--sas-key", "b3RoZXI=") == 0
    (endpoint,) = org.rows("serviceendpoints")
    assert endpoint["path"] == "other-queue"
    assert org.dv.service_endpoint_key(endpoint["serviceendpointid"]) == "b3RoZXI="


def test_without_a_key_nothing_is_created(org: Org, capsys: pytest.CaptureFixture[str]) -> None:
    org.monkeypatch.delenv("DATAVERSE_SAS_KEY")
    assert _register() == 1
    err = capsys.readouterr().err
    assert "the SAS key is needed to create the service endpoint" in err
    assert "DATAVERSE_SAS_KEY" in err
    assert org.writes() == []


@pytest.mark.parametrize("stored", [2, 6])
def test_a_queue_contract_read_back_as_2_or_6_is_left_alone(org: Org, stored: int) -> None:
    org.dv.queue_contract_readback = stored  # which one Dataverse keeps is unconfirmed
    assert _register() == 0
    assert org.rows("serviceendpoints")[0]["contract"] == stored
    writes = org.writes()
    assert _register() == 0
    assert org.writes() == writes


def test_a_topic_contract_is_drift(org: Org) -> None:
    assert _register() == 0
    (endpoint,) = org.rows("serviceendpoints")
    org.dv.update_row("serviceendpoints", endpoint["serviceendpointid"], {"contract": 5})
    assert _register() == 0
    assert org.rows("serviceendpoints")[0]["contract"] == 6


def test_the_policy_decides_the_filtering_attributes_and_the_image(org: Org) -> None:
    org.rules(
        "  email_address:\n    changes: forbidden\n"
        "  server_profile:\n    expected: organization_default\n"
    )
    assert _register() == 0
    (update,) = [r for r in org.rows("sdkmessageprocessingsteps") if "Update" in r["name"]]
    assert update["filteringattributes"] == "emailaddress,emailserverprofile"
    (image,) = org.rows("sdkmessageprocessingstepimages")
    assert image["attributes"] == "emailaddress,emailserverprofile,regardingobjectid,ownerid,name"
    org.rules("  delivery_methods:\n    incoming_email: server_side_sync\n")
    writes = len(org.writes())
    assert _register() == 0
    assert [w.split("(")[0] for w in org.writes()[writes:]] == [
        "PATCH sdkmessageprocessingsteps",
        "PATCH sdkmessageprocessingstepimages",
    ]
    (update,) = [r for r in org.rows("sdkmessageprocessingsteps") if "Update" in r["name"]]
    assert update["filteringattributes"] == "incomingemaildeliverymethod"


def _foreign(org: Org) -> dict[str, str]:
    """Registrations register did not make: another vendor's endpoint on another queue with a
    step on users, and a manual step on mailbox Update posting to it."""
    dv = org.dv
    other = dv.create_row(
        "serviceendpoints",
        {"name": "Audit export", "contract": 6, "messageformat": 2, "path": "audit-export"},
    )
    on_users = dv.create_row(
        "sdkmessageprocessingsteps",
        {
            "name": "Users to audit",
            "mode": 1,
            "stage": 40,
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({other})",
            "sdkmessageid@odata.bind": f"/sdkmessages({dv.sdk_message_id('Update')})",
            "sdkmessagefilterid@odata.bind": (
                f"/sdkmessagefilters({dv.sdk_message_filter_id('Update', 'systemuser')})"
            ),
        },
    )
    on_mailbox = dv.create_row(
        "sdkmessageprocessingsteps",
        {
            "name": "Mailboxes to audit",
            "mode": 1,
            "stage": 40,
            "filteringattributes": "emailaddress",
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({other})",
            "sdkmessageid@odata.bind": f"/sdkmessages({dv.sdk_message_id('Update')})",
            "sdkmessagefilterid@odata.bind": (
                f"/sdkmessagefilters({dv.sdk_message_filter_id('Update', 'mailbox')})"
            ),
        },
    )
    image = dv.create_row(
        "sdkmessageprocessingstepimages",
        {
            "name": "before",
            "entityalias": "before",
            "imagetype": 0,
            "messagepropertyname": "Target",
            "attributes": "emailaddress",
            "sdkmessageprocessingstepid@odata.bind": f"/sdkmessageprocessingsteps({on_mailbox})",
        },
    )
    return {"endpoint": other, "users": on_users, "mailbox": on_mailbox, "image": image}


def test_unregister_removes_exactly_what_register_created(
    org: Org, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = _foreign(org)
    untouched = {name: [r for r in org.rows(name) if not _ours(r)] for name in REGISTRATION}
    assert _register() == 0
    assert sum(len(org.rows(name)) for name in REGISTRATION) == 8
    capsys.readouterr()
    assert main(["unregister", "--dry-run"]) == 0
    assert "dry run: 4 change(s) planned" in capsys.readouterr().out
    assert sum(len(org.rows(name)) for name in REGISTRATION) == 8
    assert main(["unregister"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:5]] == ["delete"] * 4
    assert [line.split()[1] for line in out.splitlines()[1:5]] == [
        "step",  # the image first: "step image"
        "step",
        "step",
        "service",
    ]
    assert {name: org.rows(name) for name in REGISTRATION} == untouched
    assert set(foreign.values()) == {r[_key(name)] for name in REGISTRATION for r in org.rows(name)}
    capsys.readouterr()
    assert main(["unregister"]) == 0  # nothing of its own is left
    assert "nothing to change: 0 row(s)" in capsys.readouterr().out


def test_unregister_keeps_its_endpoint_while_someone_elses_step_uses_it(
    org: Org, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _register() == 0
    (endpoint,) = org.rows("serviceendpoints")
    endpoint_id = endpoint["serviceendpointid"]
    borrowed = org.dv.create_row(
        "sdkmessageprocessingsteps",
        {
            "name": "Queues too",
            "mode": 1,
            "stage": 40,
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
            "sdkmessageid@odata.bind": f"/sdkmessages({org.dv.sdk_message_id('Create')})",
            "sdkmessagefilterid@odata.bind": (
                f"/sdkmessagefilters({org.dv.sdk_message_filter_id('Create', 'queue')})"
            ),
        },
    )
    capsys.readouterr()
    assert _register("--dry-run") == 0
    assert f"step 'Queues too' ({borrowed}) uses the guardrail's service endpoint" in (
        capsys.readouterr().out
    )
    assert main(["unregister"]) == 0
    out = capsys.readouterr().out
    assert f"service endpoint 'Mailbox Guardrails' ({endpoint_id}) is kept" in out
    assert [r["serviceendpointid"] for r in org.rows("serviceendpoints")] == [endpoint_id]
    assert [r["sdkmessageprocessingstepid"] for r in org.rows("sdkmessageprocessingsteps")] == [
        borrowed
    ]
    assert org.rows("sdkmessageprocessingstepimages") == []


def test_another_endpoint_posting_to_the_same_queue_is_said_not_touched(
    org: Org, capsys: pytest.CaptureFixture[str]
) -> None:
    manual = org.dv.create_row(
        "serviceendpoints",
        {"name": "By hand", "contract": 6, "messageformat": 2, "path": QUEUE.upper()},
    )
    step = org.dv.create_row(
        "sdkmessageprocessingsteps",
        {
            "name": "Mailbox by hand",
            "mode": 1,
            "stage": 40,
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({manual})",
            "sdkmessageid@odata.bind": f"/sdkmessages({org.dv.sdk_message_id('Update')})",
            "sdkmessagefilterid@odata.bind": (
                f"/sdkmessagefilters({org.dv.sdk_message_filter_id('Update', 'mailbox')})"
            ),
        },
    )
    assert _register() == 0
    out = capsys.readouterr().out
    assert f"step 'Mailbox by hand' ({step}) also posts mailbox changes to queue" in out
    assert "every change would arrive twice" in out
    assert any(r["serviceendpointid"] == manual for r in org.rows("serviceendpoints"))


def test_the_apps_own_role_may_not_register(org: Org, capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in org.sandbox.environment(org.policy).items():
        if key.startswith("AZURE_"):
            org.monkeypatch.setenv(key, value)
    assert _register() == 1
    err = capsys.readouterr().err
    assert "missing prvCreateServiceEndpoint privilege" in err
    assert "Sign in as an administrator (--device-code)" in err
    assert org.writes() == ["POST serviceendpoints"]  # refused, nothing created
    assert org.rows("serviceendpoints") == []


def test_missing_options_are_reported_together(
    org: Org, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in (
        "SERVICEBUS__fullyQualifiedNamespace",
        "SERVICEBUS_QUEUE",
        "DATAVERSE_SAS_KEY_NAME",
    ):
        org.monkeypatch.delenv(name)
    assert _register() == 2
    err = capsys.readouterr().err
    assert "the namespace is not set" in err
    assert "--queue or SERVICEBUS_QUEUE" in err
    assert "--sas-key-name or DATAVERSE_SAS_KEY_NAME" in err
    assert org.writes() == []


def test_the_namespace_comes_from_the_connection_string_when_nothing_else_names_it(
    org: Org,
) -> None:
    org.monkeypatch.delenv("SERVICEBUS__fullyQualifiedNamespace")
    org.monkeypatch.setenv(
        "SERVICEBUS",
        "Endpoint=sb://Fabrikam.servicebus.windows.net/;SharedAccessKeyName=l;SharedAccessKey=k",
    )
    assert _register() == 0
    assert org.rows("serviceendpoints")[0]["namespaceaddress"] == (
        "sb://fabrikam.servicebus.windows.net/"
    )


def test_help_lists_every_environment_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (
        "$SERVICEBUS__fullyQualifiedNamespace",
        "$SERVICEBUS",
        "$SERVICEBUS_QUEUE",
        "$DATAVERSE_SAS_KEY_NAME",
        "$DATAVERSE_SAS_KEY",
        "$GUARDRAILS_POLICY",
        "$DATAVERSE_URL",
        "$GUARDRAILS_ADMIN_CLIENT_ID",
        "$AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
    ):
        assert name in text, name


# -- the planner on typed values -----------------------------------------------------------------

MESSAGE_IDS = {
    "Create": "00000000-0000-0000-0000-00000000000c",
    "Update": "00000000-0000-0000-0000-00000000000f",
}
FILTER_IDS = {
    "Create": "10000000-0000-0000-0000-00000000000c",
    "Update": "10000000-0000-0000-0000-00000000000f",
}
TARGET = Target(
    namespace=NAMESPACE, queue=QUEUE, sas_key_name=SAS_KEY_NAME, columns=("emailaddress",)
)


def _step_row(step_id: str, message: str, created: str, **values: Any) -> Row:
    return Row(
        step_id,
        {
            "name": f"Mailbox Guardrails: {message} of mailbox",
            "description": DESCRIPTION,
            "mode": 1,
            "stage": 40,
            "rank": 1,
            "supporteddeployment": 0,
            "asyncautodelete": True,
            "filteringattributes": "emailaddress" if message == "Update" else None,
            "statecode": 0,
            "statuscode": 1,
            "_eventhandler_value": "20000000-0000-0000-0000-000000000001",
            "_sdkmessageid_value": MESSAGE_IDS[message],
            "_sdkmessagefilterid_value": FILTER_IDS[message],
            "createdon": created,
            **values,
        },
    )


def test_plan_keeps_the_oldest_of_duplicates_and_deletes_the_rest() -> None:
    endpoint = Row(
        "20000000-0000-0000-0000-000000000001",
        {
            "name": "Mailbox Guardrails",
            "description": DESCRIPTION,
            "contract": 2,
            "connectionmode": 1,
            "authtype": 2,
            "namespaceaddress": NAMESPACE.upper().rstrip("/"),
            "namespaceformat": 2,
            "path": QUEUE,
            "saskeyname": SAS_KEY_NAME,
            "messageformat": 2,
            "userclaim": 2,
        },
    )
    older = _step_row("30000000-0000-0000-0000-000000000001", "Update", "2026-01-01T00:00:00Z")
    newer = _step_row("30000000-0000-0000-0000-000000000002", "Update", "2026-02-01T00:00:00Z")
    create = _step_row("30000000-0000-0000-0000-000000000003", "Create", "2026-01-01T00:00:00Z")
    image_on_newer = Row(
        "40000000-0000-0000-0000-000000000001",
        {
            "name": PRE_IMAGE,
            "description": DESCRIPTION,
            "_sdkmessageprocessingstepid_value": newer.id,
        },
    )
    actual = Registration(
        MESSAGE_IDS, FILTER_IDS, (endpoint,), (newer, older, create), (image_on_newer,)
    )
    plan = plan_registration(TARGET, actual)
    summary = [(c.action, c.entity_set, c.id) for c in plan.changes]
    assert summary == [
        (Action.KEEP, "serviceendpoints", endpoint.id),  # contract 2 reads as a queue
        (Action.KEEP, "sdkmessageprocessingsteps", create.id),
        (Action.KEEP, "sdkmessageprocessingsteps", older.id),
        (Action.CREATE, "sdkmessageprocessingstepimages", None),
        (Action.DELETE, "sdkmessageprocessingstepimages", image_on_newer.id),
        (Action.DELETE, "sdkmessageprocessingsteps", newer.id),
    ]
    created = plan.changes[3]
    assert str(created.values["sdkmessageprocessingstepid@odata.bind"]) == (
        f"/sdkmessageprocessingsteps({older.id})"
    )
    assert plan.problems == ()


def test_plan_for_nothing_yet_needs_the_key_and_references_new_rows() -> None:
    actual = Registration(MESSAGE_IDS, FILTER_IDS)
    plan = plan_registration(TARGET, actual)
    assert [c.action for c in plan.changes] == [Action.CREATE] * 4
    assert plan.problems == (
        "the SAS key is needed to create the service endpoint (Dataverse never returns it): "
        "pass --sas-key or set DATAVERSE_SAS_KEY",
    )
    step = plan.changes[2]
    assert str(step.values["eventhandler_serviceendpoint@odata.bind"]) == (
        "/serviceendpoints(<endpoint>)"
    )
    assert plan_unregistration(actual).changes == ()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sb://Contoso.servicebus.windows.net/", "sb://contoso.servicebus.windows.net/"),
        ("contoso.servicebus.windows.net", "sb://contoso.servicebus.windows.net/"),
        ("sb://contoso.servicebus.usgovcloudapi.net", "sb://contoso.servicebus.usgovcloudapi.net/"),
    ],
)
def test_namespace_forms(given: str, expected: str) -> None:
    assert normalize_namespace(given) == expected


@pytest.mark.parametrize(
    "given", ["contoso", "https://contoso.servicebus.windows.net/", "sb://x.y/q"]
)
def test_namespaces_that_are_not_one(given: str) -> None:
    with pytest.raises(ValueError, match=r"sb://<namespace>\.servicebus\.windows\.net/"):
        normalize_namespace(given)


# -- signing in ----------------------------------------------------------------------------------


def test_device_code_sign_in_needs_a_public_client_id() -> None:
    with pytest.raises(ConfigurationError, match="GUARDRAILS_ADMIN_CLIENT_ID"):
        token_provider({}, session=new_session(), device_code=True)


def test_device_code_refusal_is_reported(org: Org) -> None:
    prompts: list[str] = []
    provider = DeviceCodeTokenProvider(
        client_id="0f1e2d3c-4b5a-4968-8776-655443322110",
        tenant=TENANT_ID,
        authority_host=org.sandbox.identity.url,
        session=new_session(5.0),
        prompt=prompts.append,
    )
    with pytest.raises(AuthenticationError, match="device-code sign-in could not start"):
        provider.token(f"{org.dv.url}/.default")
    assert prompts == []  # no code was shown for a flow that never started


def test_a_second_endpoint_of_its_own_goes_unless_someone_elses_step_uses_it() -> None:
    def endpoint(endpoint_id: str, created: str) -> Row:
        return Row(
            endpoint_id,
            {"name": "Mailbox Guardrails", "description": DESCRIPTION, "createdon": created},
        )

    kept = endpoint("20000000-0000-0000-0000-000000000001", "2026-01-01T00:00:00Z")
    spare = endpoint("20000000-0000-0000-0000-000000000002", "2026-02-01T00:00:00Z")
    borrowed = endpoint("20000000-0000-0000-0000-000000000003", "2026-03-01T00:00:00Z")
    foreign = Row(
        "30000000-0000-0000-0000-000000000009",
        {"name": "Someone's", "_eventhandler_value": borrowed.id},
    )
    plan = plan_registration(
        TARGET, Registration(MESSAGE_IDS, FILTER_IDS, (borrowed, spare, kept), (foreign,))
    )
    assert plan.changes[0].id == kept.id
    deleted = [c.id for c in plan.changes if c.action is Action.DELETE]
    assert deleted == [spare.id]
    assert plan.notes == (
        f"service endpoint 'Mailbox Guardrails' ({borrowed.id}) is kept: step(s) 'Someone's' "
        f"({foreign.id}), not created by register, still use it",
    )
