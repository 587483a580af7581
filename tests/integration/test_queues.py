"""Queue mailboxes: reverted, and the person answerable for the queue is told (finding 8)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.outcomes import Done
from tests.integration.conftest import Deployment, deploy

EVERY_MAILBOX = """\
version: 1
organization:
  id: {organization_id}
mode: {mode}
scope: all
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
  email_address:
    changes: forbidden
notifications:
  enabled: true
  sender: guardrails@contoso.com
  template: "<p>Mailbox: {{{{ mailbox_name }}}}</p>{{{{ violations }}}}"
"""


@pytest.fixture
def everyone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    yield from deploy("client_secret", tmp_path, monkeypatch, policy_text=EVERY_MAILBOX)


def change(deployment: Deployment, mailbox_id: str, changes: dict[str, object]) -> Done:
    sandbox = deployment.sandbox
    sandbox.take()
    sandbox.dataverse.update_mailbox_as(deployment.user_id, mailbox_id, changes)
    (message,) = sandbox.take()
    handled = deployment.run(message)
    assert isinstance(handled.result, Done), handled.result
    return handled.result


def test_a_team_owned_queue_tells_the_teams_administrator_by_the_queues_name(
    everyone: Deployment,
) -> None:
    sandbox = everyone.sandbox
    lead, _ = sandbox.add_person("Nestor Wilke", "nestor@contoso.com")
    _, mailbox_id = sandbox.add_queue_mailbox(
        "Support Desk", "support@contoso.com", team="Support", administrator_user_id=lead
    )
    done = change(everyone, mailbox_id, {"incomingemaildeliverymethod": 3})
    assert done.wrote and sandbox.dataverse.mailbox(mailbox_id)["incomingemaildeliverymethod"] == 2
    (mail,) = sandbox.graph.sent
    assert mail.to == ["nestor@contoso.com"]  # the team's administrator, at the directory address
    assert "Mailbox: Support Desk" in (mail.html or "")  # the mailbox's name, never its id
    assert mailbox_id not in (mail.html or "")


def test_a_user_owned_queue_tells_its_owner(everyone: Deployment) -> None:
    sandbox = everyone.sandbox
    owner, _ = sandbox.add_person("Lidia Holloway", "lidia@contoso.com")
    queue_id = sandbox.dataverse.add_queue(
        name="Sales", emailaddress="sales@contoso.com", owner_user_id=owner
    )
    mailbox_id = sandbox.dataverse.add_mailbox(queue_id=queue_id, emailaddress="sales@contoso.com")
    done = change(everyone, mailbox_id, {"emailaddress": "ceo@contoso.com"})
    row = sandbox.dataverse.mailbox(mailbox_id)
    assert done.wrote and row["emailaddress"] == "sales@contoso.com"  # the queue's own address
    (mail,) = sandbox.graph.sent
    assert mail.to == ["lidia@contoso.com"]
