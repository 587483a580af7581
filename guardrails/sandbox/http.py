"""Shared plumbing for the loopback simulators: a threaded HTTP(S) server, a log, faults.

Each simulator is a real HTTP server on ``127.0.0.1`` so that the production clients (``requests``,
``msal``) are exercised exactly as they run against Microsoft's services: TLS, headers, status
codes, retries and all. Subclasses implement :meth:`SandboxServer.handle` as a pure function from a
parsed :class:`Request` to a :class:`Response`; the base records every exchange and can delay or
replace answers (throttling, outages) without the subclass knowing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from guardrails.sandbox.tls import SandboxTLS

__all__ = [
    "Fault",
    "RecordedRequest",
    "Request",
    "Response",
    "SandboxServer",
    "empty_response",
    "format_seconds",
    "json_response",
]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request as a simulator sees it.

    ``path`` is percent-decoded and has no query; ``target`` is the request line's target exactly
    as sent. Header names are lower-cased. ``json`` is the decoded body when the body is valid
    JSON, else ``None`` (``body`` always has the raw bytes).
    """

    method: str
    path: str
    target: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any

    def header(self, name: str) -> str | None:
        """A request header by case-insensitive name."""
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class RecordedRequest(Request):
    """A request together with the status the sandbox answered it with."""

    status: int


@dataclass
class Response:
    """What a simulator answers; the base adds ``Content-Length`` and writes it."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """A canned answer that replaces the next ``times`` matching requests."""

    status: int
    times: int
    retry_after: float | None = None
    body: object | None = None
    path_contains: str | None = None
    method: str | None = None

    def matches(self, request: Request) -> bool:
        """True when the request's method and target (path and query) match the filters."""
        if self.method is not None and self.method.upper() != request.method:
            return False
        if self.path_contains is None:
            return True
        return self.path_contains in request.target or self.path_contains in request.path


def json_response(
    status: int, payload: object, *, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response; ``Content-Type`` can be overridden through ``headers``."""
    merged = {"Content-Type": JSON_CONTENT_TYPE}
    merged.update(headers or {})
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return Response(status, body, merged)


def empty_response(status: int, *, headers: dict[str, str] | None = None) -> Response:
    """A response without a body (e.g. 202 Accepted, 204 No Content)."""
    return Response(status, b"", dict(headers or {}))


def format_seconds(seconds: float) -> str:
    """``Retry-After`` style: whole numbers without a decimal point."""
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


class SandboxServer(ABC):
    """A loopback HTTP(S) server running in a daemon thread, started by the constructor.

    ``tls=None`` serves plain HTTP. ``latency`` (seconds, settable at any time) delays every
    answer, to make timing-dependent behaviour observable. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, tls: SandboxTLS | None = None, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.errors: list[BaseException] = []
        self._tls = tls
        self._log_lock = threading.Lock()
        self._log: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._connections: set[socket.socket] = set()
        self._closed = False
        self._httpd = _HTTPServer(("127.0.0.1", 0), _make_handler(self))
        if tls is not None:
            # The handshake is deferred to the connection's own thread so that a slow or failing
            # client cannot block the accept loop.
            self._httpd.socket = tls.server_context().wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},  # bounds how long close() waits
            name=f"{type(self).__name__}:{self._port}",
            daemon=True,
        )
        self._thread.start()

    # -- subclass interface -------------------------------------------------------------------

    @abstractmethod
    def handle(self, request: Request) -> Response:
        """Answer one request (runs on the connection's thread; must be thread-safe)."""

    def fault_body(self, request: Request, status: int) -> object:
        """The body of an injected fault when :meth:`inject` got none; services override it."""
        return {"error": {"code": str(status), "message": _reason(status)}}

    def common_headers(self, request: Request) -> dict[str, str]:
        """Headers added to every response (a response's own headers take precedence)."""
        return {}

    # -- public API ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``https://127.0.0.1:54321``."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def requests_log(self) -> list[RecordedRequest]:
        """A snapshot of every request answered so far, in arrival order."""
        with self._log_lock:
            return list(self._log)

    def find_requests(
        self, *, method: str | None = None, path_contains: str | None = None
    ) -> list[RecordedRequest]:
        """Logged requests filtered by method and by a substring of the path or target."""
        probe = Fault(0, 0, path_contains=path_contains, method=method)
        return [r for r in self.requests_log if probe.matches(r)]

    def clear_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    def inject(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        body: object | None = None,
        path_contains: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` instead of handling them.

        ``body`` may be bytes (sent as is) or any JSON value; by default the service's own error
        shape is used (see :meth:`fault_body`). ``retry_after`` adds a ``Retry-After`` header.
        Faults are consumed in the order they were injected; a faulted request is still logged.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._log_lock:
            self._faults.append(Fault(status, times, retry_after, body, path_contains, method))

    def clear_faults(self) -> None:
        with self._log_lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many injected answers have not been used yet."""
        with self._log_lock:
            return sum(f.times for f in self._faults)

    def close(self) -> None:
        """Stop serving, drop open keep-alive connections and wait for the server thread."""
        with self._log_lock:
            if self._closed:
                return
            self._closed = True
            connections = list(self._connections)
        self._httpd.shutdown()
        self._httpd.server_close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _take_fault(self, request: Request) -> Fault | None:
        with self._log_lock:
            for index, fault in enumerate(self._faults):
                if fault.matches(request):
                    fault.times -= 1
                    if fault.times == 0:
                        del self._faults[index]
                    return fault
        return None

    def _fault_response(self, fault: Fault, request: Request) -> Response:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = format_seconds(fault.retry_after)
        if isinstance(fault.body, bytes):
            return Response(fault.status, fault.body, headers)
        body = fault.body if fault.body is not None else self.fault_body(request, fault.status)
        return json_response(fault.status, body, headers=headers)

    def _serve(self, request: Request) -> Response:
        if self.latency > 0:
            time.sleep(self.latency)
        fault = self._take_fault(request)
        if fault is not None:
            response = self._fault_response(fault, request)
        else:
            try:
                response = self.handle(request)
            except Exception as exc:  # a simulator bug must reach the test, not kill the thread
                with self._log_lock:
                    self.errors.append(exc)
                response = json_response(500, self.fault_body(request, 500))
        headers = self.common_headers(request)
        headers.update(response.headers)
        response.headers = headers
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            target=request.target,
            query=request.query,
            headers=request.headers,
            body=request.body,
            json=request.json,
            status=response.status,
        )
        # Logged before the answer is written, so a client that got its response always finds
        # its request in the log.
        with self._log_lock:
            self._log.append(recorded)
        return response

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._log_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind() calls socket.getfqdn(), a reverse DNS lookup that can take
        # seconds on machines without a resolver; a loopback sandbox does not need it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Only transport errors get here (resets, failed handshakes); handler bugs are caught
        # in SandboxServer._serve and kept in ``errors``. Nothing is printed.
        return


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size_line = handler.rfile.readline(65537).split(b";", 1)[0].strip()
            size = int(size_line, 16)
            if size == 0:
                while handler.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline(65537)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length > 0 else b""


def _parse_request(handler: BaseHTTPRequestHandler, body: bytes) -> Request:
    split = urlsplit(handler.path)
    headers: dict[str, str] = {}
    for name, value in handler.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    parsed: Any = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    return Request(
        method=handler.command.upper(),
        path=unquote(split.path),
        target=handler.path,
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=headers,
        body=body,
        json=parsed,
    )


def _make_handler(sandbox: SandboxServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "GuardrailsSandbox/1.0"
        timeout = 30
        # Headers and body go out in separate writes; with Nagle's algorithm the body would wait
        # for the client's delayed ACK (~40 ms per request on loopback).
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            if isinstance(self.request, ssl.SSLSocket):
                self.request.do_handshake()
            sandbox._track(self.request, add=True)

        def finish(self) -> None:
            sandbox._track(self.request, add=False)
            with contextlib.suppress(OSError):
                super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            return

        def version_string(self) -> str:
            return self.server_version

        def _dispatch(self) -> None:
            try:
                body = _read_body(self)
            except (ValueError, OSError):
                self.send_error(400, "Malformed request body")
                return
            response = sandbox._serve(_parse_request(self, body))
            self.send_response(response.status, _reason(response.status))
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.status >= 200 and response.status not in (204, 304):
                self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if response.body and self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = _dispatch
        do_POST = _dispatch
        do_PATCH = _dispatch
        do_PUT = _dispatch
        do_DELETE = _dispatch
        do_HEAD = _dispatch

    return Handler
