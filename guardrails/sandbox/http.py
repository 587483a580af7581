"""Shared plumbing for the loopback simulators: a threaded HTTP(S) server, a log, faults.

Each simulator is a real HTTP server on ``127.0.0.1`` so that the production clients (``requests``,
``msal``) are exercised exactly as they run against Microsoft's services: TLS, headers, status
codes, retries and all. Subclasses implement :meth:`SandboxServer.handle` as a pure function from a
parsed :class:`Request` to a :class:`Response`; the base records every exchange and can delay,
replace or lose answers without the subclass knowing, the way a flaky cloud does:

* a canned status instead of acting (throttling, an outage) or after acting (a gateway that
  answers 503 although the backend committed);
* a connection dropped before acting, or after acting (the write committed, the answer was lost);
* a delay before acting (the client may give up, the server still acts afterwards) or after
  acting (the client times out on a request that did take effect);
* seeded random chaos mixing all of these over a fraction of the requests.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import socketserver
import ssl
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from guardrails.sandbox.tls import SandboxTLS

__all__ = [
    "CHAOS_KINDS",
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
_MOMENTS = ("reset_before", "reset_after", "delay_before", "delay_after")
CHAOS_KINDS: tuple[str, ...] = (*_MOMENTS, "429", "500", "503", "503_after")
"""What :meth:`SandboxServer.chaos` mixes by default: every transport fault, throttling, server
errors before acting and a gateway error after the backend acted."""


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
    """A request together with what the sandbox did with it.

    ``status`` is the status sent to the client, 0 when no answer was sent (the connection was
    dropped). ``fault`` names the injected fault (``"reset_before"``, ``"reset_after"``,
    ``"delay_before"``, ``"delay_after"``, ``"503"``, ``"503_after"``...), None for a normal
    exchange. ``handled_status`` is the status the simulator itself produced when it acted on the
    request (None when a fault kept it from acting): with ``reset_after`` it is 204 for a
    committed PATCH whose answer the client never got.
    """

    status: int
    fault: str | None = None
    handled_status: int | None = None


@dataclass
class Response:
    """What a simulator answers; the base adds ``Content-Length`` and writes it."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """A fault applied to the next ``times`` matching requests.

    ``kind`` is ``"status"`` (answer ``status``; with ``after`` only once the server has acted),
    ``"reset_before"``/``"reset_after"`` (drop the connection without an answer, before or after
    acting) or ``"delay_before"``/``"delay_after"`` (wait ``delay`` seconds before acting, or
    after acting and before answering).
    """

    status: int
    times: int
    retry_after: float | None = None
    body: object | None = None
    path_contains: str | None = None
    method: str | None = None
    kind: str = "status"
    after: bool = False
    delay: float = 0.0

    @property
    def name(self) -> str:
        """How the request log and :attr:`SandboxServer.chaos_counts` name this fault."""
        if self.kind != "status":
            return self.kind
        return f"{self.status}_after" if self.after else str(self.status)

    @property
    def acts(self) -> bool:
        """Whether the server handles (and commits) the request despite the fault."""
        return self.kind in ("reset_after", "delay_before", "delay_after") or self.after

    def matches(self, request: Request) -> bool:
        """True when the request's method and target (path and query) match the filters."""
        if self.method is not None and self.method.upper() != request.method:
            return False
        if self.path_contains is None:
            return True
        return self.path_contains in request.target or self.path_contains in request.path


@dataclass
class _Chaos:
    rate: float
    kinds: tuple[str, ...]
    rng: random.Random
    path_contains: str | None
    method: str | None
    retry_after: tuple[float, float]
    delay: tuple[float, float]

    def matches(self, request: Request) -> bool:
        return Fault(0, 1, path_contains=self.path_contains, method=self.method).matches(request)

    def draw(self, request: Request) -> Fault | None:
        """One random decision per matching request, in arrival order (so a seed replays)."""
        if not self.matches(request):
            return None
        roll = self.rng.random()
        kind = self.rng.choice(self.kinds)
        retry_after = _draw(self.rng, self.retry_after)
        delay = _draw(self.rng, self.delay)
        if roll >= self.rate:
            return None
        if kind in _MOMENTS:
            return Fault(0, 1, kind=kind, delay=delay)
        code, _, suffix = kind.partition("_")
        status = int(code)
        return Fault(
            status,
            1,
            retry_after=retry_after if status in (429, 503) else None,
            after=suffix == "after",
        )


@dataclass
class _Outcome:
    """What the connection handler does with a served request."""

    response: Response | None  # None: drop the connection without answering
    delay_after: float = 0.0


def _draw(rng: random.Random, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if float(low).is_integer() and float(high).is_integer():
        return float(rng.randint(int(low), int(high)))
    return round(rng.uniform(low, high), 3)


def _chaos_kind(kind: str | int) -> str:
    text = str(kind).strip().lower()
    if text in _MOMENTS:
        return text
    code, _, suffix = text.partition("_")
    if code.isdigit() and 400 <= int(code) <= 599 and suffix in ("", "after"):
        return text
    raise ValueError(
        f"unknown chaos kind {kind!r}: use {', '.join(_MOMENTS)}, a 4xx/5xx status or "
        "'<status>_after'"
    )


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
        self._chaos: _Chaos | None = None
        self._chaos_counts: Counter[str] = Counter()
        self._closing = threading.Event()
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
        status: int | None = None,
        *,
        times: int = 1,
        retry_after: float | None = None,
        body: object | None = None,
        path_contains: str | None = None,
        method: str | None = None,
        after: bool = False,
        reset_before: bool = False,
        reset_after: bool = False,
        delay_before: float | None = None,
        delay_after: float | None = None,
    ) -> None:
        """Apply a fault to the next ``times`` matching requests (exactly one kind per call).

        * ``status``: answer with that status instead of handling the request; with
          ``after=True`` the request is handled (and committed) first and the client still gets
          ``status`` (a gateway error after the backend acted). ``body`` may be bytes (sent as
          is) or any JSON value; by default the service's own error shape is used (see
          :meth:`fault_body`). ``retry_after`` adds a ``Retry-After`` header.
        * ``reset_before=True``: drop the connection without acting and without an answer.
        * ``reset_after=True``: act (commit, publish events), then drop the connection without
          sending the answer: the answer is lost.
        * ``delay_before=seconds``: wait, then act and answer; a client with a shorter timeout
          gives up, and the server still acts afterwards.
        * ``delay_after=seconds``: act, then wait before answering.

        Faults are consumed in the order they were injected, before :meth:`chaos`; a faulted
        request is still logged, with the fault's name in :attr:`RecordedRequest.fault`.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        chosen = [
            name
            for name, given in (
                ("status", status is not None),
                ("reset_before", reset_before),
                ("reset_after", reset_after),
                ("delay_before", delay_before is not None),
                ("delay_after", delay_after is not None),
            )
            if given
        ]
        if len(chosen) != 1:
            raise ValueError(
                "give exactly one of status, reset_before, reset_after, delay_before and "
                f"delay_after (got {', '.join(chosen) or 'none'})"
            )
        kind = chosen[0]
        if after and kind != "status":
            raise ValueError("after=True only applies to a status fault")
        if kind != "status" and (retry_after is not None or body is not None):
            raise ValueError("retry_after and body only apply to a status fault")
        delay = delay_before if delay_before is not None else delay_after
        if delay is not None and delay < 0:
            raise ValueError("a delay cannot be negative")
        fault = Fault(
            status if status is not None else 0,
            times,
            retry_after,
            body,
            path_contains,
            method,
            kind=kind,
            after=after,
            delay=float(delay or 0.0),
        )
        with self._log_lock:
            self._faults.append(fault)

    def chaos(
        self,
        rate: float,
        *,
        kinds: Iterable[str | int] = CHAOS_KINDS,
        seed: int | None = 0,
        path_contains: str | None = None,
        method: str | None = None,
        retry_after: tuple[float, float] = (1, 3),
        delay: tuple[float, float] = (0.5, 1.0),
    ) -> None:
        """Apply a random fault from ``kinds`` to about ``rate`` of the matching requests.

        ``kinds`` are ``"reset_before"``, ``"reset_after"``, ``"delay_before"``,
        ``"delay_after"``, a status (``429``, ``"503"``) or ``"<status>_after"`` (answer the
        status after acting). For a given ``seed`` the same sequence of matching requests gets
        the same faults, with ``Retry-After`` (429 and 503) and delays drawn from the given
        ranges (whole seconds when both bounds are integers). Explicit :meth:`inject` faults
        take precedence. Calling it again replaces the previous chaos and resets
        :attr:`chaos_counts`; :meth:`clear_faults` stops it.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        normalized = tuple(_chaos_kind(kind) for kind in kinds)
        if not normalized:
            raise ValueError("chaos needs at least one kind")
        for low, high in (retry_after, delay):
            if low < 0 or high < low:
                raise ValueError("ranges must be (min, max) with 0 <= min <= max")
        with self._log_lock:
            self._chaos = _Chaos(
                rate,
                normalized,
                random.Random(seed),
                path_contains,
                method,
                (float(retry_after[0]), float(retry_after[1])),
                (float(delay[0]), float(delay[1])),
            )
            self._chaos_counts = Counter()

    @property
    def chaos_counts(self) -> dict[str, int]:
        """How many faults chaos injected, by kind (e.g. ``{"reset_after": 3, "429": 2}``)."""
        with self._log_lock:
            return dict(self._chaos_counts)

    @property
    def chaos_active(self) -> bool:
        with self._log_lock:
            return self._chaos is not None

    def clear_faults(self) -> None:
        """Forget pending injected faults and stop chaos (its counts stay readable)."""
        with self._log_lock:
            self._faults.clear()
            self._chaos = None

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
        self._closing.set()  # ends injected delays early
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
            if self._chaos is not None:
                drawn = self._chaos.draw(request)
                if drawn is not None:
                    self._chaos_counts[drawn.name] += 1
                return drawn
        return None

    def _fault_response(self, fault: Fault, request: Request) -> Response:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = format_seconds(fault.retry_after)
        if isinstance(fault.body, bytes):
            return Response(fault.status, fault.body, headers)
        body = fault.body if fault.body is not None else self.fault_body(request, fault.status)
        return json_response(fault.status, body, headers=headers)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless the server closes meanwhile; True when it is still open."""
        if seconds > 0:
            self._closing.wait(seconds)
        return not self._closing.is_set()

    def _act(self, request: Request) -> Response:
        try:
            return self.handle(request)
        except Exception as exc:  # a simulator bug must reach the test, not kill the thread
            with self._log_lock:
                self.errors.append(exc)
            return json_response(500, self.fault_body(request, 500))

    def _serve(self, request: Request) -> _Outcome:
        if self.latency > 0:
            time.sleep(self.latency)
        fault = self._take_fault(request)
        if fault is None:
            response = self._finish(request, self._act(request))
            self._record(request, response.status, None, response.status)
            return _Outcome(response)
        if fault.kind == "delay_before" and not self._pause(fault.delay):
            self._record(request, 0, fault.name, None)  # closed while waiting: never acted
            return _Outcome(None)
        handled = self._finish(request, self._act(request)) if fault.acts else None
        handled_status = handled.status if handled is not None else None
        if fault.kind in ("reset_before", "reset_after"):
            self._record(request, 0, fault.name, handled_status)
            return _Outcome(None)
        if fault.kind in ("delay_before", "delay_after"):
            assert handled is not None
            self._record(request, handled.status, fault.name, handled.status)
            delay = fault.delay if fault.kind == "delay_after" else 0.0
            return _Outcome(handled, delay_after=delay)
        response = self._finish(request, self._fault_response(fault, request))
        self._record(request, response.status, fault.name, handled_status)
        return _Outcome(response)

    def _finish(self, request: Request, response: Response) -> Response:
        headers = self.common_headers(request)
        headers.update(response.headers)
        response.headers = headers
        return response

    def _record(
        self, request: Request, status: int, fault: str | None, handled_status: int | None
    ) -> None:
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            target=request.target,
            query=request.query,
            headers=request.headers,
            body=request.body,
            json=request.json,
            status=status,
            fault=fault,
            handled_status=handled_status,
        )
        # Logged before the answer is written, so a client that got its response always finds
        # its request in the log.
        with self._log_lock:
            self._log.append(recorded)

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
            outcome = sandbox._serve(_parse_request(self, body))
            response = outcome.response
            if response is None:
                self._drop()
                return
            if outcome.delay_after > 0 and not sandbox._pause(outcome.delay_after):
                self._drop()
                return
            self.send_response(response.status, _reason(response.status))
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.status >= 200 and response.status not in (204, 304):
                self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if response.body and self.command != "HEAD":
                self.wfile.write(response.body)

        def _drop(self) -> None:
            """Abort the connection: an RST, no status line, as when a load balancer or the
            network loses the answer. The client sees a ConnectionError."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            with contextlib.suppress(OSError):
                self.connection.close()

        do_GET = _dispatch
        do_POST = _dispatch
        do_PATCH = _dispatch
        do_PUT = _dispatch
        do_DELETE = _dispatch
        do_HEAD = _dispatch

    return Handler
