"""The sandbox served from a child process: real HTTPS on loopback, driven by function calls."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.admin.signin import credentials_from_env
from guardrails.clients.auth import MsalTokenProvider
from guardrails.clients.dataverse import DataverseClient
from guardrails.clients.http import new_session
from guardrails.clients.tables import Create, Entity, EntityChanged, EntityExists, StoreRejected
from guardrails.sandbox.child import SandboxChild, SandboxChildError
from guardrails.sandbox.environment import Sandbox, patched_environ


@pytest.fixture(scope="module")
def child() -> Iterator[SandboxChild]:
    with SandboxChild(organization_name="Fabrikam") as running:
        yield running


# Run in the child: module-level, so that they can be sent by name.


def add_adele(sandbox: Sandbox) -> tuple[str, str]:
    return sandbox.add_person("Adele Vance", "adele@fabrikam.com", incoming=3)


def process_id(sandbox: Sandbox) -> int:
    return os.getpid()


def mailbox_reads(sandbox: Sandbox) -> int:
    return sandbox.dataverse.count("GET", "mailboxes")


def missing_mailbox(sandbox: Sandbox) -> object:
    return sandbox.dataverse.mailbox("00000000-0000-0000-0000-000000000001")


def a_lock(sandbox: Sandbox) -> object:
    return threading.Lock()


def test_the_sandbox_serves_https_from_another_process(child: SandboxChild, tmp_path: Path) -> None:
    assert child.call(process_id) == child.pid != os.getpid()
    _, mailbox_id = child.call(add_adele)
    env = child.call(Sandbox.environment, tmp_path / "policy.yaml")
    with patched_environ({"REQUESTS_CA_BUNDLE": env["REQUESTS_CA_BUNDLE"]}):
        session = new_session(10.0)
        try:
            tokens = MsalTokenProvider(credentials_from_env(env), session=session)
            client = DataverseClient(env["DATAVERSE_URL"], tokens=tokens, session=session)
            state = client.get_mailbox(mailbox_id)
        finally:
            session.close()
    assert state.mailbox_id == mailbox_id and state.name == "Adele Vance"
    assert child.call(mailbox_reads) >= 1  # counted where the server runs


def test_the_state_tables_live_in_the_child_and_keep_their_errors(child: SandboxChild) -> None:
    table = child.table_store(prefix="childtest").table("Ledger")
    etag = table.create(Entity("p", "r", {"step": "decided"}))
    with pytest.raises(EntityExists) as exists:
        table.create(Entity("p", "r", {"step": "other"}))
    assert exists.value.table == table.name and exists.value.row_key == "r"
    with pytest.raises(EntityChanged):
        table.update(Entity("p", "r", {"step": "done"}), etag='W/"not-it"')
    table.update(Entity("p", "r", {"step": "done"}), etag=etag)
    (found,) = table.query("PartitionKey eq @p", parameters={"p": "p"})
    assert found.properties == {"step": "done"}
    with pytest.raises(StoreRejected):
        table.query("step contains @p", parameters={"p": "x"})
    assert table.transact([Create(Entity("p", "s", {"n": 1}))])[0]
    table.delete("p", "s")
    assert table.get("p", "s") is None
    # Another store of the same child sees the same rows, as two instances share Table Storage.
    again = child.table_store(prefix="childtest").table("Ledger").get("p", "r")
    assert again is not None and again.properties["step"] == "done"


def test_an_exception_in_the_child_is_raised_here_as_itself(child: SandboxChild) -> None:
    with pytest.raises(KeyError) as raised:
        child.call(missing_mailbox)
    assert any("raised in the sandbox child" in note for note in raised.value.__notes__)
    assert child.call(process_id) == child.pid  # still serving


def test_what_cannot_cross_the_pipe_is_refused_and_the_child_keeps_serving(
    child: SandboxChild,
) -> None:
    with pytest.raises(AttributeError, match="pickle"):
        child.call(lambda sandbox: 1)  # refused here: nothing reaches the child
    with pytest.raises(SandboxChildError, match="pickle"):
        child.call(a_lock)  # the result cannot be sent back
    assert child.call(process_id) == child.pid


def test_a_child_that_cannot_start_says_why() -> None:
    with pytest.raises(TypeError, match="colour"):
        SandboxChild(colour="blue")


def test_closing_ends_the_child() -> None:
    running = SandboxChild()
    pid = running.call(process_id)
    running.close()
    with pytest.raises(SandboxChildError, match="closed"):
        running.call(process_id)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
