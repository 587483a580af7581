"""Azurite (the Table Storage emulator) started by the tests themselves.

``make test`` installs the pinned ``azurite`` npm package into ``.tools/``; the session fixture
starts its table service on a free loopback port with data in memory only, waits until the port
answers and stops it at the end of the session. The process is in its own session and, on
Linux, is told to die with the test process, so a crashed or killed test run cannot leave it
behind.

* ``azurite``: plain HTTP and shared-key auth (``connection_string``), the way the SDK talks to a
  storage account with a connection string;
* ``azurite_oauth``: HTTPS with a throw-away CA and ``--oauth basic`` (bearer tokens are checked
  for issuer, audience and lifetime, not signature), for the identity-based path;
* ``table_prefix``: a fresh table-name prefix per test, so tests never share a table.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

ROOT = Path(__file__).resolve().parents[2]
AZURITE_TABLE = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-table"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key (published in Azurite's own documentation).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT = 30.0


def unique_prefix() -> str:
    """A table-name prefix no other test uses: a letter, then 12 hex digits."""
    return f"t{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Azurite:
    """A running Azurite table service."""

    host: str
    port: int
    scheme: str
    started_in: float  # seconds from launch until the port answered
    ca_path: Path | None = None  # the CA to trust for HTTPS

    @property
    def table_endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT};"
            f"AccountKey={ACCOUNT_KEY};TableEndpoint={self.table_endpoint};"
        )

    @staticmethod
    def unique_prefix() -> str:
        return unique_prefix()


def free_port() -> int:
    """A loopback port free right now (bound, then released); also a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the test process dies, however it dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no output)"


def _start(log_dir: Path, *extra: str) -> Iterator[tuple[int, float]]:
    """Run azurite-table until the generator is closed; yields (port, start-up seconds)."""
    if not AZURITE_TABLE.exists():
        pytest.fail(
            f"Azurite is not installed ({AZURITE_TABLE.relative_to(ROOT)} is missing). "
            "Run `make test`: it installs the pinned azurite npm package into .tools/ first.",
            pytrace=False,
        )
    port = free_port()
    log = log_dir / f"azurite-{port}.log"
    command = [
        str(AZURITE_TABLE),
        "--inMemoryPersistence",
        "--disableTelemetry",  # otherwise it tries to reach the network
        "--tableHost",
        "127.0.0.1",
        "--tablePort",
        str(port),
        "--skipApiVersionCheck",
        "--loose",
        *extra,
    ]
    launched = time.monotonic()
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=log_dir,  # anything it writes stays out of the repository
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"Azurite exited with code {process.returncode} while starting:\n{_tail(log)}",
                    pytrace=False,
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() - launched > START_TIMEOUT:
                    pytest.fail(
                        f"Azurite did not answer on port {port} within {START_TIMEOUT:.0f} s:\n"
                        f"{_tail(log)}",
                        pytrace=False,
                    )
                time.sleep(0.05)
        yield port, time.monotonic() - launched
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite over HTTP with shared-key auth, for the whole session."""
    running = _start(tmp_path_factory.mktemp("azurite"))
    try:
        port, started_in = next(running)
        yield Azurite("127.0.0.1", port, "http", started_in)
    finally:
        running.close()


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
    running = _start(directory, "--oauth", "basic", "--cert", str(cert), "--key", str(key))
    try:
        port, started_in = next(running)
        yield Azurite("127.0.0.1", port, "https", started_in, ca_path)
    finally:
        running.close()


@pytest.fixture
def table_prefix() -> str:
    """A table-name prefix of this test's own."""
    return unique_prefix()
