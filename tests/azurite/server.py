"""Azurite's table service in a process of its own: a free loopback port, data in memory only.

The pytest fixtures (plugin.py) and the sweep benchmark (benchmarks/sweep.py, which keeps the
sweep's state out of the measured process, as Table Storage is in production) start it through
:func:`azurite_table`. The process is in its own session and, on Linux, is told to die with the
process that started it, so a crashed or killed run cannot leave it behind.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AZURITE_TABLE = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-table"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key (published in Azurite's own documentation).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT = 30.0


class AzuriteError(RuntimeError):
    """Azurite is not installed, exited while starting, or did not answer in time."""


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
    """In the child, before exec: SIGTERM when the parent process dies, however it dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no output)"


@contextmanager
def azurite_table(log_dir: Path, *extra: str) -> Iterator[tuple[int, float]]:
    """Run azurite-table for the duration; yields (port, start-up seconds).

    Its output goes to a log file in ``log_dir``, quoted in the :class:`AzuriteError` when it
    fails to start.
    """
    if not AZURITE_TABLE.exists():
        raise AzuriteError(
            f"Azurite is not installed ({AZURITE_TABLE.relative_to(ROOT)} is missing). "
            "Run `make test`: it installs the pinned azurite npm package into .tools/ first."
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
                raise AzuriteError(
                    f"Azurite exited with code {process.returncode} while starting:\n{_tail(log)}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() - launched > START_TIMEOUT:
                    raise AzuriteError(
                        f"Azurite did not answer on port {port} within {START_TIMEOUT:.0f} s:\n"
                        f"{_tail(log)}"
                    ) from None
                time.sleep(0.05)
        yield port, time.monotonic() - launched
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
