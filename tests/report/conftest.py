"""One seeded organization in the loopback sandbox for the report tests (read-only, so shared).

Drift on every rule, two hijack suspects (a user's mailbox set to the CEO's address and a queue's
set to another, both approved by an administrator), a mailbox the policy exempts, hostile names,
a second business unit, and compliant bulk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from guardrails.cli import main
from guardrails.sandbox.environment import Sandbox

CURRENT = """\
version: 1
organization:
  id: {organization_id}
  name: Contoso
mode: enforce
scope: user_mailboxes
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
    allowed_domains: [contoso.com]
  server_profile:
    expected: organization_default
exemptions:
  security_roles: [System Administrator]
  mailboxes: [{exempt_mailbox}]
"""
# The candidate holds addresses to their owner's own, and stops governing the server profile.
CANDIDATE = CURRENT.replace(
    "allowed_domains: [contoso.com]", "allowed_domains: [contoso.com]\n    must_match_owner: true"
).replace("  server_profile:\n    expected: organization_default\n", "")
HOSTILE_HTML = "<img src=x onerror=alert(1)>"
HOSTILE_CSV = '=HYPERLINK("http://evil.invalid","click")'
HOSTILE_TERMINAL = "Evil \x1b[2J\x1b[31mred"
BULK = 40


@dataclass
class Tenant:
    sandbox: Sandbox
    current: Path
    candidate: Path
    mailboxes: dict[str, str] = field(default_factory=dict)  # who -> mailbox id
    users: dict[str, str] = field(default_factory=dict)  # who -> systemuserid
    sales: str = ""
    default_profile: str = ""
    other_profile: str = ""

    @property
    def environment(self) -> dict[str, str]:
        """The function's settings for this organization, without Service Bus ones."""
        env = self.sandbox.environment(self.current)
        for name in ("SERVICEBUS", "SERVICEBUS_QUEUE"):
            env.pop(name)
        return env

    def name_of(self, mailbox_id: str) -> str:
        return next(who for who, found in self.mailboxes.items() if found == mailbox_id)

    def non_get_requests(self) -> list[Any]:
        return [r for r in self.sandbox.dataverse.requests_log if r.method != "GET"]


def _seed(sandbox: Sandbox, tmp: Path) -> Tenant:
    dv = sandbox.dataverse
    current, candidate = tmp / "policy.yaml", tmp / "candidate.yaml"
    tenant = Tenant(sandbox, current, candidate)
    tenant.sales = dv.add_business_unit("Sales")
    tenant.default_profile = dv.default_email_server_profile_id
    tenant.other_profile = dv.add_email_server_profile("Someone's own Exchange")

    def person(who: str, email: str, **kwargs: Any) -> tuple[str, str]:
        user, mailbox = sandbox.add_person(who, email, **kwargs)
        tenant.users[who], tenant.mailboxes[who] = user, mailbox
        return user, mailbox

    admin, _ = person("Isaiah Langer", "isaiah@contoso.com", roles=("System Administrator",))
    person("Satya Nadella", "satya@contoso.com")
    _, adele = person("Adele Vance", "adele@contoso.com")
    megan, _ = person("Megan Bowen", "megan@contoso.com", incoming=3)
    dv.move_user_to_business_unit(megan, tenant.sales)
    person("Alex Wilber", "alex@contoso.com", outgoing=1)
    person("Lee Gu", "lee@contoso.com", act=2)
    person("Pradeep Gupta", "pradeep@contoso.com", emailserverprofile=tenant.other_profile)
    nestor, nestor_mailbox = person("Nestor Wilke", "nestor@contoso.com")
    person(HOSTILE_HTML, "hostile.html@contoso.com", outgoing=1)
    person(HOSTILE_CSV, "hostile.csv@contoso.com", act=0)
    person(HOSTILE_TERMINAL, "hostile.terminal@contoso.com", outgoing=0)
    person("Diego Siciliani", "diego@contoso.com", incoming=3)
    _, exempt = person("Exempt Mailbox", "exempt@contoso.com", incoming=3)
    # The Satya case, long before the guardrail: an administrator (exempt, so no revert would
    # follow) points Adele's mailbox at the CEO's address and approves it.
    dv.update_mailbox_as(admin, adele, {"emailaddress": "satya@contoso.com"})
    dv.update_mailbox_as(admin, adele, {"emailrouteraccessapproval": 1})
    # A queue mailbox pulled onto another address, approved; another queue left alone.
    _, support = sandbox.add_queue_mailbox("Support", "support@contoso.com")
    dv.update_mailbox_as(admin, support, {"emailaddress": "ceo@contoso.com"})
    dv.update_mailbox_as(admin, support, {"emailrouteraccessapproval": 1})
    tenant.mailboxes["Support"] = support
    _, desk = sandbox.add_queue_mailbox("Sales Desk", "sales@contoso.com")
    tenant.mailboxes["Sales Desk"] = desk
    # Nestor types an outside address: not approved (so no suspect), but outside the domains.
    dv.update_mailbox_as(nestor, nestor_mailbox, {"emailaddress": "nestor@fabrikam.com"})
    dv.add_mailboxes(BULK, email="bulk{index}@contoso.com", fullname="Bulk {index}")
    organization = dv.organization_id
    current.write_text(CURRENT.format(organization_id=organization, exempt_mailbox=exempt))
    candidate.write_text(CANDIDATE.format(organization_id=organization, exempt_mailbox=exempt))
    return tenant


@pytest.fixture(scope="package")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenant]:
    with Sandbox() as sandbox:
        yield _seed(sandbox, tmp_path_factory.mktemp("report-tenant"))


@pytest.fixture
def report_env(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> Tenant:
    """The tenant's settings in the environment, and no storage settings."""
    for name in ("AzureWebJobsStorage", "GUARDRAILS_STORAGE", "SERVICEBUS", "SERVICEBUS_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in tenant.environment.items():
        monkeypatch.setenv(name, value)
    return tenant


def run_report(output: Path, *args: str) -> tuple[int, str]:
    """`guardrails report ... --output FILE` as an admin runs it; (exit code, file text)."""
    code = main(["report", *args, "--output", str(output)])
    return code, output.read_text(encoding="utf-8") if output.exists() else ""


def json_report(output: Path, *args: str) -> dict[str, Any]:
    code, text = run_report(output, "--format", "json", *args)
    assert code == 0
    data = json.loads(text)
    assert isinstance(data, dict)
    return data
