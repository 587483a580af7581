"""`guardrails demo`: the whole flow on a laptop, through the code the Azure Function runs.

The sandbox stands in for Dataverse, Graph and the identity platform; the worker is built from
app settings exactly as function_app.py builds it, and each message goes through Worker.handle.
The demo checks its own story (rows reverted, mails sent, loops stopped) and exits non-zero if
any of it did not happen.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, TextIO

from guardrails.clients.tables import TableStore
from guardrails.errors import GuardrailsError
from guardrails.outcomes import Done, Result
from guardrails.sandbox.environment import QueuedMessage, Sandbox, patched_environ
from guardrails.settings import load_settings
from guardrails.worker import Worker, build_worker

POLICY = """\
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
    restore_approval: true
exemptions:
  security_roles: [System Administrator]
notifications:
  enabled: true
  sender: guardrails@contoso.com
  notify_owner: true
  extra_recipients: [secops@contoso.com]
"""


class _Story:
    def __init__(
        self, sandbox: Sandbox, worker: Worker, audit: list[dict[str, Any]], out: TextIO
    ) -> None:
        self.sandbox = sandbox
        self.worker = worker
        self.audit = audit
        self.out = out
        self.failures: list[str] = []
        self.handled = 0

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            self.say(f"   !! expected: {what}")

    def deliver(self, max_rounds: int = 5) -> list[Result]:
        """Hand every message Dataverse posts to the worker, as Service Bus would, until quiet.

        The guardrail's own writes post messages too; a loop would never go quiet.
        """
        results: list[Result] = []
        for _ in range(max_rounds):
            messages = self.sandbox.take()
            if not messages:
                return results
            results.extend(self.handle(message) for message in messages)
        self.expect(False, f"quiet after {max_rounds} rounds (the guardrail is looping)")
        return results

    def handle(self, message: QueuedMessage) -> Result:
        dataverse = self.sandbox.dataverse
        writer = dataverse.user(message.write.user_id) or {}
        changed = ", ".join(sorted(k for k in message.write.requested if "@" not in k))
        self.say(
            f"   Service Bus -> function: Update of mailbox '{message.write.before.get('name')}'"
            f" by {writer.get('fullname', message.write.user_id)} ({changed})"
        )
        patches_before = len(dataverse.find_requests(method="PATCH"))
        mails_before = len(self.sandbox.graph.sent)
        try:
            result = self.worker.handle(
                message.body, message_id=message.message_id, properties=message.properties
            ).result
        except GuardrailsError as exc:
            self.failures.append(f"message {message.message_id} failed: {exc}")
            self.say(f"   !! {exc}")
            raise
        self.handled += 1
        decision = result.decision
        if decision is not None:
            self.say(f"   decision: {decision.outcome.value} - {decision.reason}")
        for request in dataverse.find_requests(method="PATCH")[patches_before:]:
            self.say(
                f"   wrote:    PATCH {request.target.split('/v9.2/')[-1]}  "
                f"If-Match: {request.headers.get('if-match')}  {json.dumps(request.json)}"
                f"  -> {request.status}"
            )
        for mail in self.sandbox.graph.sent[mails_before:]:
            cc = f" (cc {', '.join(mail.cc)})" if mail.cc else ""
            self.say(f'   mailed:   {", ".join(mail.to)}{cc}: "{mail.subject}"')
        return result

    def scene(
        self, title: str, user_id: str, mailbox_id: str, changes: dict[str, Any]
    ) -> list[Result]:
        """A person changes a mailbox in Dataverse; everything that follows is delivered."""
        self.say(title)
        self.sandbox.dataverse.update_mailbox_as(user_id, mailbox_id, changes)
        results = self.deliver()
        self.show_row(mailbox_id)
        return results

    def row(self, mailbox_id: str) -> dict[str, Any]:
        return self.sandbox.dataverse.mailbox(mailbox_id)

    def show_row(self, mailbox_id: str) -> None:
        row = self.row(mailbox_id)
        self.say(
            f"   row now:  {row.get('emailaddress')}"
            f", incoming {row.get('incomingemaildeliverymethod')}"
            f", outgoing {row.get('outgoingemaildeliverymethod')}"
            f", appointments/contacts/tasks {row.get('actdeliverymethod')}"
            f", approval {row.get('emailrouteraccessapproval')}"
        )


def run_demo(out: TextIO) -> int:
    with Sandbox(organization_name="Contoso") as sandbox, tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY.format(organization_id=sandbox.dataverse.organization_id))
        with patched_environ(sandbox.environment(policy)):
            audit: list[dict[str, Any]] = []
            # The demo keeps its state in memory; production uses Table Storage (the same code).
            worker = build_worker(
                load_settings(), store=TableStore.in_memory(), scheduler=None, audit=audit.append
            )
            story = _Story(sandbox, worker, audit, out)
            played = _play(story)
            swept = _sweep_and_report(story, policy)
            return max(played, swept, _check_deployment(story, policy))


def _sweep_and_report(story: _Story, policy: Path) -> int:
    """What events missed: changes made while the function was down, found by the nightly sweep;
    then where the tenant stands, as `guardrails report` sees it."""
    from guardrails.policy import load_policy
    from guardrails.report.run import build_report
    from guardrails.worker import build_sweep

    say, sandbox = story.say, story.sandbox
    dataverse = sandbox.dataverse
    say()
    say("4. While the function was down, two users changed their mailboxes (no message arrives)")
    lee, lee_box = sandbox.add_person("Lee Gu", "lee@contoso.com")
    joni, joni_box = sandbox.add_person("Joni Sherman", "joni@contoso.com")
    dataverse.update_mailbox_as(lee, lee_box, {"outgoingemaildeliverymethod": 1})
    dataverse.update_mailbox_as(joni, joni_box, {"actdeliverymethod": 2})
    sandbox.take()  # lost: the events never reach the guardrail
    summary = build_sweep(story.worker).run()
    say(
        f"   the nightly sweep: scanned {summary.scanned}, non-compliant {summary.non_compliant}, "
        f"fixed {summary.fixed}, failed {summary.failed}, {summary.requests} Dataverse requests"
    )
    story.expect(summary.fixed == 2, "the sweep fixed both missed changes")
    story.expect(
        story.row(lee_box)["outgoingemaildeliverymethod"] == 2
        and story.row(joni_box)["actdeliverymethod"] == 1,
        "both mailboxes back to server-side sync",
    )
    sandbox.take()  # the sweep's own writes coming back
    accepted = story.worker.state.accepted
    report = build_report(
        story.worker.executor.dataverse,
        (load_policy(policy), str(policy)),
        accepted=lambda mailbox_id: {c: a.value for c, a in accepted.get(mailbox_id).items()},
        accepted_note="the guardrail's accepted values (Isaiah's change in scene 3)",
    )
    counts = report.summary
    say(
        f"   guardrails report: {counts.scanned} mailboxes, {counts.current.non_compliant} "
        f"non-compliant, {counts.hijack_suspects} hijack suspect(s)"
    )
    story.expect(
        counts.current.non_compliant == 0,
        "the report finds nothing left to fix (the admin's change is an accepted exception)",
    )
    return 1 if story.failures else 0


def _check_deployment(story: _Story, policy: Path) -> int:
    """`guardrails register` (as an administrator), then `guardrails doctor` (as the app)."""
    from guardrails.admin.commands import render
    from guardrails.admin.doctor import run_doctor

    say = story.say
    say()
    say("Setting up and checking the deployment from the command line:")
    plan = story.sandbox.register_integration(policy)
    say("  guardrails register: " + ", ".join(f"{c.action.value} {c.kind}" for c in plan.changes))
    again = story.sandbox.register_integration(policy)
    say(f"  guardrails register, again: {len(again.writes)} change(s)")
    story.expect(not again.writes, "a second register writes nothing")
    # The demo keeps its state in memory and has no queue: those two checks cannot run here.
    say("  guardrails doctor --skip servicebus --skip storage:")
    checks = run_doctor(skip=("servicebus", "storage"))
    render(checks, ("result", "check", "detail", "fix"), "table", lambda line: say("    " + line))
    for check in checks:
        story.expect(check.ok, f"doctor: {check.name} passes ({check.detail})")
    return 1 if story.failures else 0


def _play(story: _Story) -> int:
    sandbox = story.sandbox
    dataverse = sandbox.dataverse
    say = story.say
    adele, adele_box = sandbox.add_person("Adele Vance", "adele@contoso.com")
    alex, alex_box = sandbox.add_person("Alex Wilber", "alex@contoso.com")
    sandbox.add_person("Megan Bowen (CEO)", "megan.ceo@contoso.com")
    admin, _ = sandbox.add_person(
        "Isaiah Langer (admin)", "isaiah@contoso.com", roles=("System Administrator",)
    )
    say("Mailbox Guardrails demo: a sandbox organization on loopback HTTPS, no Azure needed")
    say(f"  Dataverse {dataverse.url}  Graph {sandbox.graph.url}  login {sandbox.identity.url}")
    say("  policy: server-side sync 2 / 2 / 1, email address changes forbidden, enforce,")
    say("          System Administrators exempt, mail the owner and cc secops@contoso.com")
    say()

    say("Each step: a change in Dataverse, the message its service endpoint posts, what the")
    say("function decided, wrote and sent; then the guardrail's own write coming back.")
    say()
    results = story.scene(
        "1. Adele switches her incoming email to Forward Mailbox",
        adele,
        adele_box,
        {"incomingemaildeliverymethod": 3},
    )
    story.expect(story.row(adele_box)["incomingemaildeliverymethod"] == 2, "incoming reverted")
    story.expect(_mailed(results, "adele@contoso.com"), "Adele told at her directory address")
    story.expect(_own_write_ignored(results), "the revert came back and was left alone")
    say()

    results = story.scene(
        "2. Alex sets his mailbox's address to the CEO's",
        alex,
        alex_box,
        {"emailaddress": "megan.ceo@contoso.com"},
    )
    alex_row = story.row(alex_box)
    story.expect(alex_row["emailaddress"] == "alex@contoso.com", "address reverted")
    story.expect(alex_row["emailrouteraccessapproval"] == 1, "approval restored")
    story.expect(_own_write_ignored(results), "both writes came back and were left alone")
    story.expect(_mailed(results, "alex@contoso.com"), "Alex told, not the CEO")
    story.expect(
        all("megan.ceo@contoso.com" not in m.to for m in sandbox.graph.sent),
        "nothing mailed to the address Alex typed",
    )
    say()

    results = story.scene(
        "3. Isaiah, a System Administrator, moves Adele's outgoing email to Outlook",
        admin,
        adele_box,
        {"outgoingemaildeliverymethod": 1},
    )
    story.expect(story.row(adele_box)["outgoingemaildeliverymethod"] == 1, "admin change kept")
    story.expect(not any(isinstance(r, Done) for r in results), "no write, no mail")
    say()

    patches = dataverse.find_requests(method="PATCH")
    say(
        f"Summary: {story.handled} messages handled, {len(patches)} writes by the guardrail, "
        f"{len(sandbox.graph.sent)} mails sent, {len(story.audit)} audit records, "
        f"{len(story.failures)} problems"
    )
    if story.audit:
        say("One audit record, as the function logs it:")
        say("  " + json.dumps(story.audit[0], sort_keys=True)[:1200])
    for failure in story.failures:
        say(f"  not as expected: {failure}")
    return 1 if story.failures else 0


def _own_write_ignored(results: list[Result]) -> bool:
    reasons = [r.decision.reason for r in results if r.decision is not None]
    return "The guardrail's own write." in reasons


def _mailed(results: list[Result], address: str) -> bool:
    return any(isinstance(r, Done) and address in r.notified for r in results)
