"""Azurite (the Table Storage emulator) started by the tests themselves.

``make test`` installs the pinned ``azurite`` npm package into ``.tools/``; the session fixture
starts its table service on a free loopback port with data in memory only (server.py), waits
until the port answers and stops it at the end of the session. The process is in its own session
and, on Linux, is told to die with the test process, so a crashed or killed test run cannot leave
it behind.

* ``azurite``: plain HTTP and shared-key auth (``connection_string``), the way the SDK talks to a
  storage account with a connection string;
* ``azurite_oauth``: HTTPS with a throw-away CA and ``--oauth basic`` (bearer tokens are checked
  for issuer, audience and lifetime, not signature), for the identity-based path;
* ``table_prefix``: a fresh table-name prefix per test, so tests never share a table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import trustme

from tests.azurite.server import (
    ACCOUNT,
    ACCOUNT_KEY,
    Azurite,
    AzuriteError,
    azurite_table,
    free_port,
    unique_prefix,
)

__all__ = ["ACCOUNT", "ACCOUNT_KEY", "Azurite", "free_port", "unique_prefix"]


@contextmanager
def _start(log_dir: Path, *extra: str) -> Iterator[tuple[int, float]]:
    """Azurite for the duration; a failure to start fails the session with Azurite's output."""
    with ExitStack() as stack:
        try:
            port, started_in = stack.enter_context(azurite_table(log_dir, *extra))
        except AzuriteError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield port, started_in


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite over HTTP with shared-key auth, for the whole session."""
    with _start(tmp_path_factory.mktemp("azurite")) as (port, started_in):
        yield Azurite("127.0.0.1", port, "http", started_in)


@pytest.fixture(scope="session")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite over HTTPS (a throw-away CA) accepting bearer tokens (``--oauth basic``)."""
    directory = tmp_path_factory.mktemp("azurite-oauth")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_path = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_path))
    extra = ("--oauth", "basic", "--cert", str(cert), "--key", str(key))
    with _start(directory, *extra) as (port, started_in):
        yield Azurite("127.0.0.1", port, "https", started_in, ca_path)


@pytest.fixture
def table_prefix() -> str:
    """A table-name prefix of this test's own."""
    return unique_prefix()
