"""The table-storage edge: one contract for MemoryTable and for AzureTable against Azurite.

Every contract test runs twice: in memory, and through the real azure-data-tables SDK over HTTP
to Azurite (started by tests/azurite/plugin.py). Nothing in the SDK or in requests is patched;
the error-mapping tests that need answers Azurite never gives (503 with Retry-After, 403, a
server that never answers) talk to small real servers on loopback.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum, StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from azure.data.tables import TableServiceClient

from guardrails.clients.tables import (
    STORAGE_SCOPE,
    Create,
    Delete,
    Entity,
    EntityChanged,
    EntityExists,
    FilterValue,
    LazyService,
    StoreRejected,
    StoreUnavailable,
    Table,
    TableStore,
    TableStoreError,
    TokenProviderCredential,
    Update,
    UpdateMode,
    Upsert,
    storage_settings,
    table_store,
)
from guardrails.errors import (
    AuthenticationError,
    ConfigurationError,
    PermanentServiceError,
    PreconditionFailed,
    TransientServiceError,
)
from tests.azurite.plugin import ACCOUNT as AZURITE_ACCOUNT
from tests.azurite.plugin import ACCOUNT_KEY as AZURITE_KEY
from tests.azurite.plugin import Azurite, free_port

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(params=["memory", "azurite"])
def store(request: pytest.FixtureRequest, table_prefix: str) -> Iterator[TableStore]:
    if request.param == "memory":
        yield TableStore.in_memory(prefix=table_prefix)
        return
    azurite: Azurite = request.getfixturevalue("azurite")
    settings = storage_settings(
        {"AzureWebJobsStorage": azurite.connection_string, "GUARDRAILS_TABLE_PREFIX": table_prefix}
    )
    built = table_store(settings)
    yield built
    built.close()


@pytest.fixture
def table(store: TableStore) -> Table:
    return store.table("Ledger")


def entity(pk: str = "p1", rk: str = "r1", **properties: Any) -> Entity:
    return Entity(pk, rk, properties)


# --------------------------------------------------------------------------------------------
# Single-entity operations


def test_create_is_a_claim_the_second_writer_loses(table: Table) -> None:
    etag = table.create(entity(state="claimed"))
    assert etag

    with pytest.raises(EntityExists) as caught:
        table.create(entity(state="mine too"))

    error = caught.value
    assert isinstance(error, PermanentServiceError) and not error.retryable
    assert (error.status, error.code) == (409, "EntityAlreadyExists")
    assert (error.table, error.partition_key, error.row_key) == (table.name, "p1", "r1")
    assert table.name in str(error) and "'p1'" in str(error) and "'r1'" in str(error)
    stored = table.get("p1", "r1")
    assert stored is not None and stored.properties == {"state": "claimed"}


def test_concurrent_creates_have_exactly_one_winner(table: Table) -> None:
    def claim(worker: int) -> str:
        try:
            table.create(entity("race", "key", worker=worker))
        except EntityExists:
            return "lost"
        return "won"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(claim, range(16)))

    assert outcomes.count("won") == 1 and outcomes.count("lost") == 15


def test_concurrent_updates_from_one_read_have_exactly_one_winner(table: Table) -> None:
    read = table.create(entity("race", "key", state="new"))

    def transition(worker: int) -> str:
        try:
            table.update(entity("race", "key", state=f"worker {worker}"), etag=read)
        except EntityChanged:
            return "lost"
        return f"worker {worker}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(transition, range(16)))

    winners = [o for o in outcomes if o != "lost"]
    assert len(winners) == 1
    stored = table.get("race", "key")
    assert stored is not None and stored.properties == {"state": winners[0]}


def test_get_missing_is_none(table: Table) -> None:
    assert table.get("p1", "nothing-here") is None


def test_values_round_trip(table: Table) -> None:
    class Level(IntEnum):
        HIGH = 3

    class State(StrEnum):
        DONE = "done"

    local = timezone(timedelta(hours=2))
    written = entity(
        "mailbox-1",
        "msg'quote",
        text="żółw ✓",
        small=0,
        one=1,
        negative=-(2**31),
        big=2**40,
        ratio=0.25,
        flag=True,
        off=False,
        when=datetime(2024, 5, 6, 9, 30, 15, 123456, tzinfo=local),
        blob=b"\x00\xffbytes",
        level=Level.HIGH,
        state=State.DONE,
        absent=None,
    )
    etag = table.create(written)

    read = table.get("mailbox-1", "msg'quote")

    assert read is not None and read.etag == etag
    assert dict(read.properties) == {
        "text": "żółw ✓",
        "small": 0,
        "one": 1,
        "negative": -(2**31),
        "big": 2**40,
        "ratio": 0.25,
        "flag": True,
        "off": False,
        "when": datetime(2024, 5, 6, 7, 30, 15, 123456, tzinfo=UTC),
        "blob": b"\x00\xffbytes",
        "level": 3,
        "state": "done",
    }
    assert type(read.properties["level"]) is int and type(read.properties["state"]) is str
    assert type(read.properties["when"]) is datetime


def test_update_with_the_current_etag_succeeds_and_changes_it(table: Table) -> None:
    first = table.create(entity(state="new", attempts=0))

    second = table.update(entity(state="sent"), etag=first)

    assert second != first
    merged = table.get("p1", "r1")
    assert merged is not None and merged.etag == second
    assert merged.properties == {"state": "sent", "attempts": 0}  # MERGE keeps the rest

    third = table.update(entity(state="done"), etag=second, mode=UpdateMode.REPLACE)

    replaced = table.get("p1", "r1")
    assert replaced is not None and replaced.etag == third not in (first, second)
    assert replaced.properties == {"state": "done"}  # REPLACE drops what was not sent


def test_update_with_a_stale_etag_is_entity_changed(table: Table) -> None:
    stale = table.create(entity(state="new"))
    current = table.update(entity(state="theirs"), etag=stale)

    with pytest.raises(EntityChanged) as caught:
        table.update(entity(state="mine"), etag=stale)

    error = caught.value
    assert isinstance(error, PreconditionFailed) and error.status == 412
    assert (error.partition_key, error.row_key) == ("p1", "r1") and table.name in str(error)
    kept = table.get("p1", "r1")
    assert kept is not None and kept.etag == current and kept.properties == {"state": "theirs"}


def test_update_of_a_deleted_entity_is_entity_changed(table: Table) -> None:
    etag = table.create(entity())
    table.delete("p1", "r1")

    with pytest.raises(EntityChanged) as caught:
        table.update(entity(state="late"), etag=etag)

    assert caught.value.status == 404
    assert table.get("p1", "r1") is None


def test_delete_with_a_stale_etag_is_entity_changed(table: Table) -> None:
    stale = table.create(entity(state="new"))
    current = table.update(entity(state="theirs"), etag=stale)

    with pytest.raises(EntityChanged) as caught:
        table.delete("p1", "r1", etag=stale)

    assert caught.value.status == 412
    assert table.get("p1", "r1") is not None
    table.delete("p1", "r1", etag=current)
    assert table.get("p1", "r1") is None


def test_delete_of_a_missing_entity_is_fine(table: Table) -> None:
    etag = table.create(entity("p1", "other"))

    table.delete("p1", "missing")
    table.delete("p1", "missing", etag=etag)

    assert table.get("p1", "other") is not None


def test_upsert_inserts_then_last_writer_wins(table: Table) -> None:
    first = table.upsert(entity("runs", "current", host="a", beats=1))
    second = table.upsert(entity("runs", "current", beats=2))  # no etag: nobody can lose
    merged = table.get("runs", "current")
    assert merged is not None and merged.etag == second != first
    assert merged.properties == {"host": "a", "beats": 2}

    table.upsert(entity("runs", "current", host="b"), mode=UpdateMode.REPLACE)

    replaced = table.get("runs", "current")
    assert replaced is not None and replaced.properties == {"host": "b"}


def test_invalid_arguments_are_refused_before_anything_is_sent(table: Table) -> None:
    etag = table.create(entity())
    with pytest.raises(ValueError, match="etag"):
        table.update(entity(), etag="")
    with pytest.raises(ValueError, match="etag"):
        table.update(entity(), etag="*")
    with pytest.raises(ValueError, match="contains '/'"):
        table.get("p/1", "r1")
    stored = table.get("p1", "r1")
    assert stored is not None and stored.etag == etag


def test_entities_refuse_what_table_storage_cannot_hold() -> None:
    with pytest.raises(ValueError, match="no timezone"):
        Entity("p", "r", {"when": datetime(2024, 1, 1)})
    with pytest.raises(ValueError, match="system property"):
        Entity("p", "r", {"Timestamp": 1})
    with pytest.raises(ValueError, match="property name"):
        Entity("p", "r", {"has-dash": 1})
    with pytest.raises(ValueError, match="64 bits"):
        Entity("p", "r", {"huge": 2**63})
    with pytest.raises(TypeError, match="list cannot be stored"):
        Entity("p", "r", {"items": [1, 2]})
    with pytest.raises(ValueError, match="'#'"):
        Entity("a#b", "r")
    with pytest.raises(ValueError, match="1 MiB"):
        Entity("p", "r", {f"blob{i}": bytes(60_000) for i in range(20)})


# --------------------------------------------------------------------------------------------
# Queries


def test_query_returns_every_page_in_key_order(table: Table) -> None:
    rows = [(pk, f"row{i:03}") for pk in ("mbx-a", "mbx-b") for i in range(23)]
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    for pk, rk in shuffled:
        table.create(entity(pk, rk, n=int(rk[3:])))

    found = list(
        table.query(
            "PartitionKey eq @pk and RowKey ge @start and RowKey lt @stop",
            parameters={"pk": "mbx-b", "start": "row002", "stop": "row021"},
            page_size=4,
        )
    )

    assert [(e.partition_key, e.row_key) for e in found] == [
        ("mbx-b", f"row{i:03}") for i in range(2, 21)
    ]
    assert all(e.etag for e in found)
    everything = list(table.query("", page_size=5))
    assert [(e.partition_key, e.row_key) for e in everything] == sorted(rows)


def test_query_compares_typed_values(table: Table) -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(6):
        table.create(
            entity(
                "p",
                f"r{i}",
                n=i,
                due=base + timedelta(hours=i),
                even=i % 2 == 0,
                owner="alice" if i < 3 else "bob",
                seq=3_000_000_000 + i,
            )
        )
    table.create(entity("p", "bare"))  # no properties: matches no comparison, not even ne

    def keys(text: str, **parameters: Any) -> list[str]:
        return [e.row_key for e in table.query(text, parameters=parameters)]

    # 0 and 1 are numbers (the SDK's own substitution would send false and true).
    assert keys("n eq @n", n=1) == ["r1"]
    assert keys("n eq @n", n=0) == ["r0"]
    assert keys("n ne @n", n=0) == ["r1", "r2", "r3", "r4", "r5"]
    assert keys("n gt @low and n le @high", low=1, high=3) == ["r2", "r3"]
    assert keys("due lt @t", t=base + timedelta(hours=2)) == ["r0", "r1"]
    assert keys("due ge @t", t=(base + timedelta(hours=4)).astimezone(UTC)) == [
        "r4",
        "r5",
    ]
    assert keys("even eq @yes", yes=True) == ["r0", "r2", "r4"]
    assert keys("owner eq @who", who="bob") == ["r3", "r4", "r5"]
    either = "(owner eq @a and n lt @one) or (owner eq @b and n gt @four)"
    assert keys(either, a="alice", b="bob", one=1, four=4) == ["r0", "r5"]
    # Int64 values beyond 2**31 (the SDK would send 3000000002 without the L suffix).
    assert keys("seq eq @s", s=3_000_000_002) == ["r2"]


def test_query_select_limits_properties_and_keeps_keys(table: Table) -> None:
    table.create(entity("p", "a", state="open", secret="x"))
    table.create(entity("p", "b", secret="y"))

    found = list(table.query("PartitionKey eq @p", parameters={"p": "p"}, select=["state"]))

    assert [(e.partition_key, e.row_key, dict(e.properties)) for e in found] == [
        ("p", "a", {"state": "open"}),
        ("p", "b", {}),
    ]
    assert all(e.etag for e in found)


@pytest.mark.parametrize(
    ("text", "parameters", "message"),
    [
        ("RowKey eq 'a'", {}, "values go in parameters"),
        ("n gt 5", {}, "values go in parameters"),
        ("RowKey eq @missing", {}, "no value for @missing"),
        ("RowKey eq @a", {"a": "x", "b": "y"}, "not used: @b"),
        ("not RowKey eq @a", {"a": "x"}, "expected a property name"),
        ("RowKey eq @a and", {"a": "x"}, "ends too early"),
        ("(RowKey eq @a", {"a": "x"}, "ends too early"),
        ("RowKey contains @a", {"a": "x"}, "expected eq, ne"),
        ("Timestamp gt @t", {"t": datetime(2024, 1, 1, tzinfo=UTC)}, "Timestamp"),
        ("PartitionKey eq @n", {"n": 5}, "PartitionKey is a string"),
        ("when lt @t", {"t": datetime(2024, 1, 1)}, "no timezone"),
        ("ratio gt @r", {"r": 0.5}, "float is not supported"),
        ("", {"a": "x"}, "empty filter takes no parameters"),
    ],
)
def test_filters_outside_the_subset_are_rejected_when_called(
    table: Table, text: str, parameters: dict[str, Any], message: str
) -> None:
    with pytest.raises(StoreRejected, match=message) as caught:
        table.query(text, parameters=parameters)  # not iterated: refused at the call
    assert table.name in str(caught.value)


def test_page_size_and_select_are_checked(table: Table) -> None:
    with pytest.raises(StoreRejected, match="page_size"):
        table.query("", page_size=1001)
    with pytest.raises(StoreRejected, match="page_size"):
        table.query("", page_size=0)
    with pytest.raises(StoreRejected, match="not one string"):
        table.query("", select="state")  # type: ignore[arg-type]  # the mistake under test


# --------------------------------------------------------------------------------------------
# Transactions


def test_transaction_applies_every_operation(table: Table) -> None:
    update_etag = table.create(entity("m", "update", state="new", keep=1))
    delete_etag = table.create(entity("m", "delete"))
    table.create(entity("m", "gone"))

    etags = table.transact(
        [
            Create(entity("m", "create", state="new")),
            Update(entity("m", "update", state="sent"), etag=update_etag),
            Upsert(entity("m", "upsert", beats=1)),
            Delete("m", "delete", etag=delete_etag),
            Delete("m", "gone"),
        ]
    )

    assert len(etags) == 5 and etags[3] is None and etags[4] is None
    assert all(isinstance(etag, str) and etag for etag in etags[:3])
    found = {e.row_key: e for e in table.query("PartitionKey eq @p", parameters={"p": "m"})}
    assert set(found) == {"create", "update", "upsert"}
    assert found["create"].etag == etags[0]
    assert found["update"].etag == etags[1] and found["update"].properties == {
        "state": "sent",
        "keep": 1,
    }
    assert found["upsert"].etag == etags[2]
    assert table.transact([]) == []


@pytest.mark.parametrize(
    ("failing", "error_type", "status"),
    [
        ("create-existing", EntityExists, 409),
        ("update-stale", EntityChanged, 412),
        ("update-missing", EntityChanged, 404),
        ("delete-stale", EntityChanged, 412),
        ("delete-missing", EntityChanged, 404),
    ],
)
def test_a_failing_operation_applies_nothing_and_names_its_index(
    table: Table, failing: str, error_type: type[TableStoreError], status: int
) -> None:
    stale = table.create(entity("m", "existing", state="new"))
    table.update(entity("m", "existing", state="theirs"), etag=stale)
    bad = {
        "create-existing": Create(entity("m", "existing")),
        "update-stale": Update(entity("m", "existing", state="mine"), etag=stale),
        "update-missing": Update(entity("m", "missing", state="mine"), etag=stale),
        "delete-stale": Delete("m", "existing", etag=stale),
        "delete-missing": Delete("m", "missing"),
    }[failing]
    before = [(e.row_key, e.etag) for e in table.query("")]

    with pytest.raises(error_type) as caught:
        table.transact(
            [
                Create(entity("m", "first")),
                Upsert(entity("m", "2nd")),
                bad,
                Create(entity("m", "z")),
            ]
        )

    error = caught.value
    assert (error.index, error.status) == (2, status)
    bad_key = ("m", "existing" if "existing" in failing or "stale" in failing else "missing")
    assert (error.partition_key, error.row_key) == bad_key
    assert "operation 2" in str(error) and table.name in str(error)
    assert [(e.row_key, e.etag) for e in table.query("")] == before


def test_transactions_outside_the_limits_are_rejected_before_sending(table: Table) -> None:
    with pytest.raises(StoreRejected, match="one partition") as mixed:
        table.transact(
            [Create(entity("a", "1")), Create(entity("a", "2")), Create(entity("b", "3"))]
        )
    assert mixed.value.index == 2 and mixed.value.partition_key == "b"

    with pytest.raises(StoreRejected, match="at most 100 operations, found 101"):
        table.transact([Create(entity("a", f"{i:03}")) for i in range(101)])

    with pytest.raises(StoreRejected, match="only once") as twice:
        table.transact([Create(entity("a", "1")), Upsert(entity("a", "1"))])
    assert twice.value.index == 1

    assert list(table.query("")) == []
    assert len(table.transact([Create(entity("a", f"{i:03}")) for i in range(100)])) == 100


# --------------------------------------------------------------------------------------------
# The store and the Azure table's life cycle


def test_store_names_tables_under_its_prefix(store: TableStore, table_prefix: str) -> None:
    ledger = store.table("Ledger")

    assert ledger.name == f"{table_prefix}Ledger"
    assert store.table("Ledger") is ledger
    with pytest.raises(ValueError, match="letters and digits"):
        store.table("led_ger")
    with pytest.raises(ValueError, match="3 to 63"):
        store.table("x" * 60)


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("1abc", "must start with a letter"),
        ("guard-rails", "only letters and digits; remove '-'"),
        ("a" * 51, "at most 50"),
        ("", "is empty"),
    ],
)
def test_store_refuses_a_bad_prefix(prefix: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TableStore.in_memory(prefix=prefix)


def test_azure_table_is_created_on_first_use(azurite: Azurite, table_prefix: str) -> None:
    service = TableServiceClient.from_connection_string(azurite.connection_string)

    def exists(name: str) -> bool:
        return any(t.name == name for t in service.list_tables())

    store = table_store(
        storage_settings(
            {
                "AzureWebJobsStorage": azurite.connection_string,
                "GUARDRAILS_TABLE_PREFIX": table_prefix,
            }
        )
    )
    table = store.table("Outbox")
    assert not exists(table.name)

    assert table.get("p", "r") is None

    assert exists(table.name)
    # Another process (a second store) finds the table there and carries on.
    other = table_store(
        storage_settings(
            {
                "AzureWebJobsStorage": azurite.connection_string,
                "GUARDRAILS_TABLE_PREFIX": table_prefix,
            }
        )
    )
    other.table("Outbox").create(entity())
    stored = table.get("p1", "r1")
    assert stored is not None
    store.close()
    other.close()
    service.close()


def test_azure_table_deleted_behind_our_back_is_created_again(
    azurite: Azurite, table_prefix: str
) -> None:
    store = table_store(
        storage_settings(
            {
                "AzureWebJobsStorage": azurite.connection_string,
                "GUARDRAILS_TABLE_PREFIX": table_prefix,
            }
        )
    )
    table = store.table("Ledger")
    table.create(entity())
    with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        service.delete_table(table.name)

    with pytest.raises(StoreUnavailable, match="does not exist") as caught:
        table.get("p1", "r1")

    assert caught.value.code == "TableNotFound" and caught.value.retryable
    table.create(entity())  # the next call creates the table again
    assert table.get("p1", "r1") is not None
    store.close()


def test_the_sdk_client_is_built_once_on_the_first_table_access(
    azurite: Azurite, table_prefix: str
) -> None:
    built: list[TableServiceClient] = []

    def build() -> TableServiceClient:
        time.sleep(0.05)  # long enough for every thread to be waiting on the first build
        built.append(TableServiceClient.from_connection_string(azurite.connection_string))
        return built[-1]

    service = LazyService(build)
    store = TableStore.azure(service, prefix=table_prefix)
    tables = [store.table(name) for name in ("Ledger", "Outbox", "Runs", "Audit")]
    assert built == []  # naming tables builds nothing (start-up does only that)
    start = threading.Barrier(8)

    def first_access(index: int) -> Entity | None:
        start.wait()
        return tables[index % 4].get("p", "r")

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(first_access, range(8))) == [None] * 8
    assert len(built) == 1 and service.client() is built[0]
    assert store.endpoint == built[0].url
    store.close()


def test_closing_a_store_that_was_never_used_builds_nothing() -> None:
    service = LazyService(lambda: pytest.fail("built to be closed"))

    TableStore.azure(service).close()


def test_the_sdks_update_mode_is_taken_as_ours() -> None:
    """Ours has the SDK's values (the SDK is not imported to name them): code passing the SDK's
    own gets the same writes."""
    from azure.data.tables import UpdateMode as SdkUpdateMode

    update = Update(entity(), 'W/"1"', SdkUpdateMode.REPLACE)  # type: ignore[arg-type]
    upsert = Upsert(entity(), SdkUpdateMode.MERGE)  # type: ignore[arg-type]

    assert update.mode is UpdateMode.REPLACE and upsert.mode is UpdateMode.MERGE
    assert {m.value for m in UpdateMode} == {m.value for m in SdkUpdateMode}


# --------------------------------------------------------------------------------------------
# Errors the service (or the network) gives


def test_unreachable_endpoint_is_store_unavailable_quickly(table_prefix: str) -> None:
    port = free_port()  # bound, released: nothing listens there
    settings = storage_settings(
        {
            "AzureWebJobsStorage": _connection_string("http", port),
            "GUARDRAILS_TABLE_PREFIX": table_prefix,
        }
    )
    table = table_store(settings).table("Ledger")
    started = time.monotonic()

    with pytest.raises(StoreUnavailable) as caught:
        table.get("p", "r")

    assert time.monotonic() - started < 5
    error = caught.value
    assert isinstance(error, TransientServiceError) and error.retryable
    assert error.status is None and "no answer" in str(error)
    assert (error.table, error.partition_key, error.row_key) == (table.name, "p", "r")


def test_a_server_that_never_answers_times_out(table_prefix: str) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = storage_settings(
            {
                "AzureWebJobsStorage": _connection_string("http", port),
                "GUARDRAILS_TABLE_PREFIX": table_prefix,
            }
        )
        table = table_store(settings, read_timeout=0.5, retry_total=0).table("Ledger")
        started = time.monotonic()

        with pytest.raises(StoreUnavailable, match="no answer"):
            table.get("p", "r")

        assert time.monotonic() - started < 3


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A real HTTP server on a loopback port for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the test output."""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Answer(_Quiet):
    """Answers every request with the status, headers and Table Storage error in `answer`."""

    answer: tuple[int, dict[str, str], str] = (500, {}, "InternalError")

    def _reply(self) -> None:
        status, headers, code = self.answer
        body = json.dumps({"odata.error": {"code": code, "message": {"value": f"{code} here"}}})
        extra = {"Content-Type": "application/json", "x-ms-error-code": code}
        self._send(status, body.encode(), {**headers, **extra})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_MERGE = _reply


@pytest.mark.parametrize(
    ("status", "headers", "code", "error_type", "retry_after"),
    [
        (503, {"Retry-After": "7"}, "ServerBusy", StoreUnavailable, 7.0),
        (429, {}, "TooManyRequests", StoreUnavailable, None),
        (500, {}, "InternalError", StoreUnavailable, None),
        (403, {}, "AuthorizationPermissionMismatch", StoreRejected, None),
        (400, {}, "InvalidInput", StoreRejected, None),
    ],
)
def test_service_errors_are_typed(
    table_prefix: str,
    status: int,
    headers: dict[str, str],
    code: str,
    error_type: type[TableStoreError],
    retry_after: float | None,
) -> None:
    handler = type("Handler", (_Answer,), {"answer": (status, headers, code)})
    with _serving(handler) as port:
        settings = storage_settings(
            {
                "AzureWebJobsStorage": _connection_string("http", port),
                "GUARDRAILS_TABLE_PREFIX": table_prefix,
            }
        )
        table = table_store(settings, retry_total=0).table("Ledger")

        with pytest.raises(error_type) as caught:
            table.create(entity())

    error = caught.value
    assert (error.status, error.code, error.retry_after) == (status, code, retry_after)
    assert error.retryable is (error_type is StoreUnavailable)
    assert table.name in str(error)
    if status == 403:
        assert "Storage Table Data Contributor" in str(error)


class _Recorder(_Quiet):
    """Creates any table (204) and answers every query with no rows, noting what was asked."""

    paths: list[str]

    def do_POST(self) -> None:
        self._send(204, b"", {})

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = json.dumps({"value": []}).encode()
        self._send(200, body, {"Content-Type": "application/json;odata=minimalmetadata"})


def test_the_filter_on_the_wire_has_typed_values(table_prefix: str) -> None:
    """Table Storage compares typed values (Azurite does not: it matches `1 eq true`), so what
    the SDK sends is checked where it is sent."""
    paths: list[str] = []
    handler = type("Handler", (_Recorder,), {"paths": paths})
    with _serving(handler) as port:
        settings = storage_settings(
            {
                "AzureWebJobsStorage": _connection_string("http", port),
                "GUARDRAILS_TABLE_PREFIX": table_prefix,
            }
        )
        table = table_store(settings, retry_total=0).table("Ledger")
        parameters: dict[str, FilterValue] = {
            "one": 1,
            "zero": 0,
            "big": 3_000_000_002,
            "row": "it's",
            "yes": True,
            "due": datetime(2024, 5, 6, 9, 30, tzinfo=timezone(timedelta(hours=2))),
        }
        text = "(n eq @one or n eq @zero) and seq lt @big and RowKey ge @row and on eq @yes"

        assert list(table.query(text + " and due lt @due", parameters=parameters)) == []

    (path,) = paths
    sent = parse_qs(urlsplit(path).query)["$filter"]
    assert sent == [
        "( n eq 1 or n eq 0 ) and seq lt 3000000002L and RowKey ge 'it''s' and on eq true"
        " and due lt datetime'2024-05-06T07:30:00.000000Z'"
    ]


def _connection_string(scheme: str, port: int) -> str:
    """Azurite's account at a loopback port of the test's choosing."""
    return (
        f"DefaultEndpointsProtocol={scheme};AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};TableEndpoint={scheme}://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


# --------------------------------------------------------------------------------------------
# Identity: the TokenCredential adapter, and bearer tokens against Azurite over HTTPS


class MintedTokens:
    """A TokenProvider issuing JWTs shaped like Entra ID's, which Azurite's --oauth basic checks
    (issuer, audience, lifetime; not the signature)."""

    def __init__(self, audience: str = "https://storage.azure.com") -> None:
        self.audience = audience
        self.requests: list[tuple[str, bool]] = []

    def token(self, scope: str, *, force_refresh: bool = False) -> str:
        self.requests.append((scope, force_refresh))
        now = int(time.time())
        claims = {
            "aud": self.audience,
            "iss": f"https://sts.windows.net/{TENANT}/",
            "iat": now,
            "nbf": now - 60,
            "exp": now + 3600,
            "oid": CLIENT_ID,
            "tid": TENANT,
        }
        return jwt.encode(claims, "test-signing-key-of-32-bytes-min", algorithm="HS256")


def test_token_credential_adapter_reports_a_conservative_expiry() -> None:
    tokens = MintedTokens()
    credential = TokenProviderCredential(tokens, reuse_seconds=60, clock=lambda: 1_000.0)

    access = credential.get_token(STORAGE_SCOPE)
    refreshed = credential.get_token(STORAGE_SCOPE, claims='{"access_token":{}}')

    assert access.expires_on == 1_000 + 300 + 60
    assert jwt.decode(access.token, options={"verify_signature": False})["aud"] == (
        "https://storage.azure.com"
    )
    assert refreshed.token
    assert tokens.requests == [(STORAGE_SCOPE, False), (STORAGE_SCOPE, True)]
    with pytest.raises(ValueError, match="exactly one scope"):
        credential.get_token(STORAGE_SCOPE, "https://other/.default")


def test_identity_based_connection_sends_bearer_tokens(
    azurite_oauth: Azurite, table_prefix: str
) -> None:
    settings = storage_settings(
        {
            "AzureWebJobsStorage__tableServiceUri": azurite_oauth.table_endpoint,
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": CLIENT_ID,
            "GUARDRAILS_TABLE_PREFIX": table_prefix,
        }
    )
    tokens = MintedTokens()
    store = table_store(
        settings, token_provider=tokens, connection_verify=str(azurite_oauth.ca_path)
    )
    table = store.table("Ledger")

    etag = table.create(entity(state="claimed"))
    with pytest.raises(EntityExists):
        table.create(entity())
    stored = table.get("p1", "r1")

    assert stored is not None and stored.etag == etag
    assert tokens.requests and {scope for scope, _ in tokens.requests} == {STORAGE_SCOPE}
    assert len(tokens.requests) == 1  # azure-core reuses the token until near its stated expiry
    store.close()


def test_a_token_for_another_audience_is_refused(azurite_oauth: Azurite, table_prefix: str) -> None:
    settings = storage_settings(
        {
            "AzureWebJobsStorage__tableServiceUri": azurite_oauth.table_endpoint,
            "GUARDRAILS_TABLE_PREFIX": table_prefix,
        }
    )
    store = table_store(
        settings,
        token_provider=MintedTokens(audience="https://vault.azure.net"),
        connection_verify=str(azurite_oauth.ca_path),
    )

    with pytest.raises(StoreRejected, match="Storage Table Data Contributor") as caught:
        store.table("Ledger").get("p", "r")

    assert caught.value.status in (401, 403) and not caught.value.retryable
    store.close()


class NoTokens:
    """A TokenProvider whose identity cannot get a token (as MSAL reports it)."""

    def token(self, scope: str, *, force_refresh: bool = False) -> str:
        raise AuthenticationError(f"no token for {scope} (managed_identity): identity not found")


def test_a_token_that_cannot_be_had_is_an_authentication_error(table_prefix: str) -> None:
    settings = storage_settings(
        {
            "AzureWebJobsStorage__tableServiceUri": f"https://127.0.0.1:{free_port()}/acct",
            "GUARDRAILS_TABLE_PREFIX": table_prefix,
        }
    )
    table = table_store(settings, token_provider=NoTokens()).table("Ledger")

    with pytest.raises(AuthenticationError, match="identity not found"):
        table.get("p", "r")


# --------------------------------------------------------------------------------------------
# Settings


ACCOUNT_KEY = base64.b64encode(b"a made-up key of the contoso account").decode()
CONNECTION = (
    f"DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey={ACCOUNT_KEY};"
    "EndpointSuffix=core.windows.net"
)


def test_settings_from_a_connection_string() -> None:
    settings = storage_settings({"AzureWebJobsStorage": CONNECTION})

    assert settings.source == "AzureWebJobsStorage"
    assert settings.connection_string == CONNECTION and not settings.identity_based
    assert settings.table_prefix == "guardrails"
    assert ACCOUNT_KEY not in repr(settings)
    assert table_store(settings).endpoint == "https://contoso.table.core.windows.net"


def test_settings_accept_azurites_development_shortcut() -> None:
    settings = storage_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})

    assert table_store(settings).endpoint == "http://127.0.0.1:10002/devstoreaccount1"


def test_settings_for_a_managed_identity_by_account_name() -> None:
    settings = storage_settings(
        {
            "AzureWebJobsStorage__accountName": "contoso",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": CLIENT_ID,
            "GUARDRAILS_TABLE_PREFIX": "mbxguard",
        }
    )

    assert settings.identity_based and settings.connection_string is None
    assert settings.table_endpoint == "https://contoso.table.core.windows.net"
    assert (settings.client_id, settings.table_prefix) == (CLIENT_ID, "mbxguard")


def test_settings_for_an_identity_by_table_service_uri() -> None:
    settings = storage_settings(
        {
            "AzureWebJobsStorage__tableServiceUri": "https://contoso.table.core.usgovcloudapi.net/",
            "AzureWebJobsStorage__accountName": "ignored",
        }
    )

    assert settings.table_endpoint == "https://contoso.table.core.usgovcloudapi.net"
    assert settings.client_id is None


def test_guardrails_storage_overrides_the_host_storage() -> None:
    by_string = storage_settings(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "GUARDRAILS_STORAGE": CONNECTION}
    )
    by_identity = storage_settings(
        {
            "AzureWebJobsStorage": CONNECTION,
            "GUARDRAILS_STORAGE__accountName": "ledgeraccount",
            "GUARDRAILS_STORAGE__credential": "managedidentity",
            "GUARDRAILS_STORAGE__clientId": CLIENT_ID,
        }
    )

    assert (by_string.source, by_string.connection_string) == ("GUARDRAILS_STORAGE", CONNECTION)
    assert by_identity.source == "GUARDRAILS_STORAGE"
    assert by_identity.table_endpoint == "https://ledgeraccount.table.core.windows.net"
    assert by_identity.client_id == CLIENT_ID


def test_setting_names_are_matched_without_case_as_the_host_does() -> None:
    settings = storage_settings({"azurewebjobsstorage__ACCOUNTNAME": "contoso"})

    assert settings.table_endpoint == "https://contoso.table.core.windows.net"


def test_nothing_set_is_a_configuration_error_naming_the_settings() -> None:
    with pytest.raises(ConfigurationError) as caught:
        storage_settings({"DATAVERSE_URL": "https://contoso.crm.dynamics.com"})

    assert len(caught.value.problems) == 1
    problem = caught.value.problems[0]
    assert "AzureWebJobsStorage" in problem and "GUARDRAILS_STORAGE" in problem


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        storage_settings(
            {
                "GUARDRAILS_TABLE_PREFIX": "9-lives",
                "AzureWebJobsStorage__accountName": "Not_An_Account",
                "AzureWebJobsStorage__credential": "clientsecret",
                "AzureWebJobsStorage__clientId": "not-a-guid",
            }
        )

    problems = caught.value.problems
    assert any(
        p.startswith("GUARDRAILS_TABLE_PREFIX") and "start with a letter" in p for p in problems
    )
    assert any("GUARDRAILS_TABLE_PREFIX" in p and "remove '-'" in p for p in problems)
    assert any("__accountName must be a storage account name" in p for p in problems)
    assert any("__credential must be 'managedidentity'" in p for p in problems)
    assert any("__clientId must be the client id" in p for p in problems)
    assert any(
        "only used with AzureWebJobsStorage__credential=managedidentity" in p for p in problems
    )
    assert len(problems) == 6


@pytest.mark.parametrize(
    "text",
    [
        CONNECTION,
        CONNECTION + ";;",
        "  AccountName=contoso;AccountKey=a==;  ",
        "AccountName=contoso;accountname=other",
        "AccountName=contoso;AccountName=contoso",
        "AccountName=contoso;;AccountKey=a",
        "AccountName=;AccountKey=a",
        "=contoso",
        "just some text",
        "",
        ";",
        "UseDevelopmentStorage = true",
        "SharedAccessSignature=sv=2020&sig=a=b;TableEndpoint=https://x.example",
    ],
)
def test_connection_strings_are_read_as_azure_core_reads_them(text: str) -> None:
    """The settings check reads a connection string without azure-core (start-up does not
    import it) and must come to azure-core's answer."""
    from azure.core.utils import parse_connection_string

    from guardrails.clients.tables import _connection_string_parts

    try:
        expected: dict[str, str] | None = dict(parse_connection_string(text))
    except ValueError:
        expected = None
    try:
        found: dict[str, str] | None = _connection_string_parts(text)
    except ValueError:
        found = None
    assert found == expected


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"AzureWebJobsStorage": "just some text"}, "is not a connection string"),
        ({"AzureWebJobsStorage": "AccountName=contoso"}, "needs AccountName and AccountKey"),
        (
            {"AzureWebJobsStorage": "AccountName=contoso;AccountKey=not base64!"},
            "AccountKey is not base64",
        ),
        (
            {"AzureWebJobsStorage": f"{CONNECTION};TableSecondaryEndpoint=https://b.example"},
            "TableSecondaryEndpoint needs TableEndpoint",
        ),
        ({"AzureWebJobsStorage": "UseDevelopmentStorage = true"}, "needs AccountName and"),
        (
            {"AzureWebJobsStorage": CONNECTION, "AzureWebJobsStorage__accountName": "contoso"},
            "keep one",
        ),
        (
            {"AzureWebJobsStorage__tableServiceUri": "http://contoso.table.core.windows.net"},
            "must be an https URL",
        ),
        ({"AzureWebJobsStorage__credential": "managedidentity"}, "__accountName or"),
    ],
)
def test_connection_problems_are_explained_without_secrets(
    environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        storage_settings(environ)

    assert ACCOUNT_KEY not in str(caught.value)
