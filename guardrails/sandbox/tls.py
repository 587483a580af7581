"""A throw-away certificate authority for the loopback sandbox.

Real clients (``requests``, ``msal``) insist on HTTPS for authorities and check certificates, so the
sandbox serves TLS with certificates from a private CA that exists only for the life of the process.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

import certifi
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

__all__ = ["SandboxTLS"]


class SandboxTLS:
    """A private CA plus one server certificate valid for ``127.0.0.1`` and ``localhost``.

    Files (CA bundle, client credentials) are written lazily into a temporary directory owned by
    this object and removed by :meth:`close`.
    """

    def __init__(self) -> None:
        self._ca = trustme.CA()
        self._server_cert = self._ca.issue_cert("127.0.0.1", "localhost")
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._bundle: Path | None = None
        self._counter = 0

    @property
    def ca_pem(self) -> bytes:
        """The sandbox CA certificate (PEM)."""
        return self._ca.cert_pem.bytes()

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the sandbox server certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side TLS context that trusts only the sandbox CA (for stdlib clients)."""
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context

    def ca_bundle_path(self) -> Path:
        """A PEM bundle trusting public CAs *and* the sandbox CA, for ``REQUESTS_CA_BUNDLE``.

        The machine's ``REQUESTS_CA_BUNDLE`` overrides a session's ``verify=``, so callers point
        that variable at this file. The certifi roots and whatever bundle the variable named before
        are kept so that real HTTPS endpoints stay reachable from the same process.
        """
        with self._lock:
            if self._bundle is not None:
                return self._bundle
            directory = self._ensure_dir()
            bundle = directory / "ca-bundle.pem"
            blocks = _pem_certificates(Path(certifi.where()).read_bytes())
            previous = os.environ.get("REQUESTS_CA_BUNDLE")
            if previous and Path(previous).is_file() and Path(previous).resolve() != bundle:
                blocks.extend(_pem_certificates(Path(previous).read_bytes()))
            blocks.extend(_pem_certificates(self.ca_pem))
            # Every client connection parses this file, so duplicates (the system bundle mostly
            # repeats certifi's Mozilla roots) are dropped to keep connection set-up fast.
            unique = {b"".join(block.split()): block for block in blocks}
            bundle.write_bytes(b"\n".join(unique.values()) + b"\n")
            self._bundle = bundle
            return bundle

    def client_certificate(self, common_name: str) -> tuple[Path, str]:
        """Issue an RSA client certificate, as an app registration's certificate credential.

        Returns the path of one PEM file holding the private key followed by the certificate,
        and the certificate's SHA-1 thumbprint (uppercase hex of the DER encoding), which is what
        the portal shows and what MSAL's ``thumbprint`` credential field expects.
        """
        leaf = self._ca.issue_cert(common_name=common_name, key_type=trustme.KeyType.RSA)
        cert_pem = leaf.cert_chain_pems[0].bytes()
        certificate = x509.load_pem_x509_certificate(cert_pem)
        # fingerprint() hashes the DER encoding, exactly like the Windows/portal thumbprint.
        thumbprint = certificate.fingerprint(hashes.SHA1()).hex().upper()
        with self._lock:
            directory = self._ensure_dir()
            self._counter += 1
            path = directory / f"client-{self._counter}-{thumbprint[:8].lower()}.pem"
            path.write_bytes(leaf.private_key_pem.bytes() + cert_pem)
            path.chmod(0o600)
        return path, thumbprint

    def close(self) -> None:
        """Remove every file this object wrote."""
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._bundle = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ensure_dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="guardrails-sandbox-tls-"))
        return self._dir


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----"
)


def _pem_certificates(data: bytes) -> list[bytes]:
    return _PEM_CERTIFICATE.findall(data)
