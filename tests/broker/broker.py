"""An in-process AMQP 1.0 stand-in for one Azure Service Bus namespace, spoken to by the real SDK.

Why a broker and not a mock: what the product relies on (peek-lock, abandon and redelivery,
dead-lettering past maxDeliveryCount, lock expiry, scheduling) is broker behaviour, and the SDK's
own retries, lock tokens and error mapping only run when something answers on the wire. The
numbered facts cited below are the measured expectations in the shared reference
servicebus-amqp-facts.md.

Threading: one proton Container runs on a background thread and owns every proton object. Queue
state lives in `_Store` behind one lock, so tests read it from their own thread; whatever changes
what can be delivered wakes the reactor through an EventInjector.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

from proton import (
    UNDESCRIBED,
    Array,
    Condition,
    Connection,
    Data,
    DataException,
    Delivery,
    Described,
    Disposition,
    Endpoint,
    Event,
    Handler,
    Link,
    Message,
    Sender,
    symbol,
    timestamp,
    ubyte,
    uint,
    ulong,
)
from proton.reactor import ApplicationEvent, Container, EventInjector

_LOG = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = "/$DeadLetterQueue"
SERVER_BUSY = "com.microsoft:server-busy"
INTERNAL_ERROR = "amqp:internal-error"
LOCK_LOST = "com.microsoft:message-lock-lost"
NOT_FOUND = "com.microsoft:message-not-found"
FaultOperation = Literal[
    "send", "settle", "schedule", "cancel", "peek", "renew-lock", "schedule-answer"
]
_STATUS = {SERVER_BUSY: 503, INTERNAL_ERROR: 500, LOCK_LOST: 410, NOT_FOUND: 404}
_HEADER, _ANNOTATIONS, _PROPERTIES, _APPLICATION, _DATA = 0x70, 0x72, 0x73, 0x74, 0x75
_CREDIT = 1000  # credit kept open on every link the SDK sends on (fact 3)
_TICK = 0.05  # seconds between checks for due scheduled messages and expired locks
_State = Literal["active", "locked", "deferred", "scheduled"]


class Clock:
    """Broker time in epoch seconds: wall time plus an offset, or frozen at `start`.

    Tests move it with `advance()` instead of sleeping through lock durations and schedules. The
    SDK checks lock expiry against its own wall clock (fact 6), so the default follows real time
    and only ever runs ahead of it: an expired lock is then reported by the broker, as the
    service reports it, rather than pre-empted by the SDK.
    """

    def __init__(self, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._start = self._frozen = start
        self._offset = 0.0

    def now(self) -> float:
        with self._lock:
            return self._frozen if self._frozen is not None else time.time() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the broker's clock only moves forward")
        with self._lock:
            if self._frozen is not None:
                self._frozen += seconds
            else:
                self._offset += seconds

    def reset(self) -> None:
        with self._lock:
            self._frozen, self._offset = self._start, 0.0


@dataclass(frozen=True)
class BrokerMessage:
    """A copy of one message as the broker held it when asked.

    `delivery_count` is the AMQP header's count of failed deliveries, which is what the Python SDK
    reports: 0 on the first delivery, as with the real service. `body` is the concatenated data
    sections, or the encoded body section for value and sequence bodies.
    """

    queue: str
    sequence_number: int
    message_id: str | None
    body: bytes
    application_properties: dict[str, Any]
    content_type: str | None
    delivery_count: int
    state: _State
    enqueued_time: datetime
    scheduled_enqueue_time: datetime | None
    locked_until: datetime | None
    dead_letter_reason: str | None
    dead_letter_error_description: str | None


def _described(code: int, value: Any) -> bytes:
    data = Data()
    data.put_object(Described(ulong(code), value))
    return data.encode()


def _own(value: Any) -> Any:
    """Copy what proton decoded: its binaries are views into a buffer it reuses."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, list):
        return [_own(v) for v in value]
    if isinstance(value, dict):
        return {_own(k): _own(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    """proton's AMQP type tags (int32, symbol, ...) as the builtins they subclass."""
    kind = next((k for k in (bool, int, float, str) if isinstance(value, k)), None)
    return value if kind is None else kind(value)


def _sections(payload: bytes) -> Iterator[tuple[int, bytes, Any]]:
    """Split an encoded message into (descriptor, raw bytes, decoded value) per section."""
    view, offset, data = memoryview(payload), 0, Data()
    while offset < len(view):
        data.clear()
        size = data.decode(cast(bytes, view[offset:]))
        data.rewind()
        data.next()
        section: Any = data.get_object()
        if size <= 0 or not isinstance(section, Described):
            raise ValueError("not an AMQP message section")
        code = cast(int, section.descriptor)
        yield code, bytes(view[offset : offset + size]), _own(section.value)
        offset += size


def _is_encoded_message(value: Any) -> bool:
    return isinstance(value, bytes) and value[:2] == b"\x00\x53" and b"p" <= value[2:3] <= b"x"


@dataclass(frozen=True)
class _Payload:
    """A message as its sender encoded it. The bare message (properties, application properties,
    body, footer) is kept verbatim, so ids, properties and bodies come back byte for byte; the
    header and message annotations are the broker's to write (facts 5 and 6)."""

    header: list[Any]
    annotations: dict[Any, Any]
    bare: tuple[bytes, bytes, bytes]  # properties, application properties, body and footer
    message_id: str | None
    content_type: str | None
    props: dict[str, Any]
    data: bytes

    @classmethod
    def parse(cls, payload: bytes) -> list[_Payload]:
        """One message, or the messages of a batch envelope (fact 4: data sections that are
        themselves encoded messages, found by content since proton hides message-format)."""
        sections = list(_sections(payload))
        data = [value for code, _, value in sections if code == _DATA]
        if data and all(_is_encoded_message(value) for value in data):
            try:
                return [cls.build(list(_sections(value))) for value in data]
            except (ValueError, IndexError, DataException):
                pass  # a body that only looked like messages
        return [cls.build(sections)]

    @classmethod
    def build(cls, sections: list[tuple[int, bytes, Any]]) -> _Payload:
        header: list[Any] = [False, 4, None, False, 0]
        annotations: dict[Any, Any] = {}
        properties = application = b""
        body, data = [], []
        fields: list[Any] = [None] * 13
        props: dict[str, Any] = {}
        for code, raw, value in sections:
            if code == _HEADER:
                header = list(value) + header[len(value) :]
            elif code == _ANNOTATIONS:
                annotations = dict(value or {})
            elif code == _PROPERTIES:
                properties, fields = raw, list(value) + fields[len(value) :]
            elif code == _APPLICATION:
                application, props = raw, {str(k): v for k, v in (value or {}).items()}
            elif code > _APPLICATION:  # body sections and footer; delivery annotations (0x71)
                body.append(raw)  # are hop-by-hop and dropped
                data += [value] if code == _DATA else []
        message_id, content_type = (None if f is None else str(f) for f in (fields[0], fields[6]))
        return cls(
            header, annotations, (properties, application, b"".join(body)), message_id,
            content_type, props, b"".join(data) if data else b"".join(body),
        )  # fmt: skip

    @property
    def scheduled_time(self) -> float | None:
        value = self.annotations.get(symbol("x-opt-scheduled-enqueue-time"))
        return None if value is None else int(value) / 1000

    def with_properties(self, extra: dict[str, str]) -> _Payload:
        props = {**self.props, **extra}
        bare = (self.bare[0], _described(_APPLICATION, props), self.bare[2])
        return replace(self, props=props, bare=bare)


@dataclass(eq=False)
class _Entry:
    queue: _Queue
    sequence_number: int
    payload: _Payload
    enqueued_time: float
    scheduled_time: float | None = None
    delivery_count: int = 0
    state: _State = "active"
    deferred: bool = False
    token: uuid.UUID | None = None  # of the current lock
    locked_until: float = 0.0


@dataclass(eq=False)
class _Queue:
    name: str
    max_delivery_count: int
    lock_duration: float
    entries: dict[int, _Entry] = field(default_factory=dict)
    ready: list[int] = field(default_factory=list)  # heap of sequence numbers, checked lazily
    dead_letter: _Queue | None = None


@dataclass
class _Fault:
    condition: str
    description: str
    times: int


def _error(condition: str, description: str) -> Condition:
    """An error with a non-empty info map: proton omits a trailing null, and the SDK's send path
    reads the error's third field unconditionally."""
    return Condition(condition, description, {symbol("tracking-id"): str(uuid.uuid4())})


def _ms(seconds: float) -> timestamp:
    return timestamp(round(seconds * 1000))


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


class _Store:
    """Every queue's messages and locks, behind one lock; `tick` applies the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.queues: dict[str, _Queue] = {}
        self.locks: dict[uuid.UUID, _Entry] = {}
        self.timers: list[tuple[float, int, _Entry]] = []  # (when, tiebreak, entry): a heap
        self.tiebreak = itertools.count()
        # Never restarts, not even on reset: a reused SDK receiver peeks on from the last
        # sequence number it saw.
        self.sequence = itertools.count(1)

    def declare(self, name: str, max_delivery_count: int = 10, lock_duration: float = 30) -> _Queue:
        if not name or name.endswith(DEAD_LETTER_SUFFIX):
            raise ValueError(f"not a queue name: {name!r}")
        with self.lock:
            queue = self.queues.get(name)
            if queue is None:
                queue = self.queues[name] = _Queue(name, max_delivery_count, lock_duration)
                queue.dead_letter = _Queue(name + DEAD_LETTER_SUFFIX, 2**31, lock_duration)
            queue.max_delivery_count = max_delivery_count
            queue.lock_duration = cast(_Queue, queue.dead_letter).lock_duration = lock_duration
            return queue

    def entity(self, path: str, *, create: bool = True) -> _Queue | None:
        """The queue or dead-letter sub-queue at a link address's path (fact 9)."""
        name = path.removesuffix(DEAD_LETTER_SUFFIX)
        queue = self.queues.get(name) or (self.declare(name) if create else None)
        return queue if queue is None or name == path else queue.dead_letter

    def entries(self, path: str, *states: _State) -> list[_Entry]:
        with self.lock:
            self.tick()
            queue = self.entity(path, create=False)
            found = [] if queue is None else queue.entries.values()
            return sorted((e for e in found if e.state in states), key=lambda e: e.sequence_number)

    def enqueue(self, path: str, payloads: Iterable[_Payload]) -> list[int]:
        with self.lock:
            queue, now, numbers = cast(_Queue, self.entity(path)), self.clock.now(), []
            for payload in payloads:
                entry = _Entry(queue, next(self.sequence), payload, now, payload.scheduled_time)
                queue.entries[entry.sequence_number] = entry
                if entry.scheduled_time is not None and entry.scheduled_time > now:
                    entry.state = "scheduled"
                    self._timer(entry.scheduled_time, entry)
                else:
                    self._activate(entry)
                numbers.append(entry.sequence_number)
            self.changed.notify_all()
            return numbers

    def _activate(self, entry: _Entry) -> None:
        entry.state = "deferred" if entry.deferred else "active"
        if not entry.deferred:
            heapq.heappush(entry.queue.ready, entry.sequence_number)

    def _timer(self, when: float, entry: _Entry) -> None:
        heapq.heappush(self.timers, (when, next(self.tiebreak), entry))

    def tick(self) -> None:
        """Make due scheduled messages available and take back expired locks. Timers are not
        removed when a lock is settled or renewed or a schedule cancelled; a timer whose entry
        has moved on is skipped."""
        with self.lock:
            now, changed = self.clock.now(), False
            while self.timers and self.timers[0][0] <= now:
                entry = heapq.heappop(self.timers)[2]
                current = entry.queue.entries.get(entry.sequence_number) is entry
                if current and entry.state == "scheduled":
                    entry.enqueued_time = cast(float, entry.scheduled_time)
                    self._activate(entry)
                elif current and entry.state == "locked" and entry.locked_until <= now:
                    del self.locks[cast(uuid.UUID, entry.token)]
                    self._redeliver(entry, failed=True)
                else:
                    continue
                changed = True
            if changed:
                self.changed.notify_all()

    def take(self, path: str, *, lock: bool) -> tuple[uuid.UUID, bytes] | None:
        """The next available message, locked (peek-lock) or removed (receive-and-delete)."""
        with self.lock:
            queue = self.entity(path, create=False)
            while queue is not None and queue.ready:
                entry = queue.entries.get(heapq.heappop(queue.ready))
                if entry is not None and entry.state == "active":
                    return self._hand_out(entry, lock=lock)
            return None

    def _hand_out(self, entry: _Entry, *, lock: bool) -> tuple[uuid.UUID, bytes]:
        token = uuid.uuid4()
        if lock:
            entry.state, entry.token = "locked", token
            entry.locked_until = self.clock.now() + entry.queue.lock_duration
            self.locks[token] = entry
            self._timer(entry.locked_until, entry)
        else:
            del entry.queue.entries[entry.sequence_number]
        self.changed.notify_all()
        return token, self.encode(entry, locked=lock)

    def encode(self, entry: _Entry, *, locked: bool = False, peeked: bool = False) -> bytes:
        """The message as delivered: a header written field by field (fact 5) and the
        annotations the SDK reads (fact 6), ahead of the sender's bare message."""
        durable, priority, ttl = entry.payload.header[:3]
        count = entry.delivery_count
        header: list[Any] = [bool(durable), ubyte(4 if priority is None else priority)]
        header += [None if ttl is None else uint(ttl), count == 0, uint(count)]
        annotations = dict(entry.payload.annotations)
        annotations[symbol("x-opt-sequence-number")] = entry.sequence_number
        annotations[symbol("x-opt-enqueued-time")] = _ms(entry.enqueued_time)
        if locked:
            annotations[symbol("x-opt-locked-until")] = _ms(entry.locked_until)
        if peeked:
            state = {"deferred": 1, "scheduled": 2}.get(entry.state, 0)
            annotations[symbol("x-opt-message-state")] = state
        sections = [_described(_HEADER, header), _described(_ANNOTATIONS, annotations)]
        return b"".join([*sections, *entry.payload.bare])

    def settle(self, token: uuid.UUID, outcome: str, reason: str | None = None,
               description: str | None = None) -> bool:  # fmt: skip
        """Apply one settlement; False when the lock is unknown or has expired."""
        with self.lock:
            self.tick()
            entry = self.locks.pop(token, None)
            if entry is None:
                return False
            if outcome == "complete":
                del entry.queue.entries[entry.sequence_number]
            elif outcome == "dead-letter":
                self._dead_letter(entry, reason, description)
            elif outcome == "defer":
                entry.deferred = True
                self._activate(entry)
            else:
                self._redeliver(entry, failed=outcome == "abandon")
            self.changed.notify_all()
            return True

    def _redeliver(self, entry: _Entry, *, failed: bool) -> None:
        """Back to the queue. A failed delivery counts, and the last one allowed dead-letters the
        message as the service does, with reason MaxDeliveryCountExceeded."""
        entry.delivery_count += int(failed)
        limit = entry.queue.max_delivery_count
        if failed and entry.delivery_count >= limit:
            description = f"Message could not be consumed after {limit} delivery attempts."
            self._dead_letter(entry, "MaxDeliveryCountExceeded", description)
        else:
            self._activate(entry)

    def _dead_letter(self, entry: _Entry, reason: str | None, description: str | None) -> None:
        """Move to the sub-queue with DeadLetterReason / DeadLetterErrorDescription set (fact 9).
        In the dead-letter queue itself there is nowhere further to go: it stays available."""
        target = entry.queue.dead_letter
        if target is None:
            self._activate(entry)
            return
        del entry.queue.entries[entry.sequence_number]
        extra = {"DeadLetterReason": reason, "DeadLetterErrorDescription": description}
        payload = entry.payload.with_properties({k: v for k, v in extra.items() if v is not None})
        moved = replace(entry, queue=target, deferred=False, payload=payload)
        target.entries[moved.sequence_number] = moved
        self._activate(moved)

    def renew(self, tokens: list[uuid.UUID]) -> list[float] | None:
        with self.lock:
            self.tick()
            if any(token not in self.locks for token in tokens):
                return None
            for token in tokens:
                entry = self.locks[token]
                entry.locked_until = self.clock.now() + entry.queue.lock_duration
                self._timer(entry.locked_until, entry)
            return [self.locks[token].locked_until for token in tokens]

    def _find(self, path: str, numbers: list[int], state: _State) -> list[_Entry] | None:
        found = [cast(_Queue, self.entity(path)).entries.get(n) for n in numbers]
        entries = [e for e in found if e is not None and e.state == state]
        return entries if len(entries) == len(numbers) else None

    def deferred(
        self, path: str, numbers: list[int], *, lock: bool
    ) -> list[tuple[uuid.UUID, bytes]]:
        with self.lock:
            found = self._find(path, numbers, "deferred") or []
            return [self._hand_out(entry, lock=lock) for entry in found]

    def cancel(self, path: str, numbers: list[int]) -> bool:
        with self.lock:
            found = self._find(path, numbers, "scheduled")
            for entry in found or []:
                del entry.queue.entries[entry.sequence_number]
            return found is not None

    def peek(self, path: str, start: int, count: int) -> list[bytes]:
        with self.lock:
            self.tick()
            queue = cast(_Queue, self.entity(path))
            found = sorted(n for n in queue.entries if n >= start)[:count]
            return [self.encode(queue.entries[n], peeked=True) for n in found]

    def idle(self, path: str) -> bool:
        return not self.entries(path, "active", "locked")

    def clear(self) -> None:
        with self.lock:
            self.queues.clear()
            self.locks.clear()
            self.timers.clear()
            self.changed.notify_all()


class TestBroker:
    """A Service Bus namespace on 127.0.0.1 for the real azure-servicebus SDK.

    Start one per test session (opening SDK clients costs about half a second each, so reuse
    those too) and `reset()` between tests. Inspection follows dramatiq's StubBroker: `messages`,
    `locked`, `scheduled`, `deferred` and `dead_letters` return snapshots, `join` waits for a
    queue to drain, `advance` moves the clock. `fail_next` makes the broker refuse operations
    with a retryable error, for chaos tests of the SDK's and the product's retries.
    """

    __test__ = False  # a fixture, not a pytest test class

    def __init__(self, *, clock: Clock | None = None, max_message_size: int = 256 * 1024) -> None:
        self.clock = clock or Clock()
        self.max_message_size = max_message_size  # Standard tier; the SDK sizes batches by it
        self.errors: list[BaseException] = []  # reactor failures, for the fixture to report
        self._store = _Store(self.clock)
        self._faults: dict[str, deque[_Fault]] = {}
        self._reactor = _Reactor(self)
        self._thread = threading.Thread(target=self._run, name="test-broker", daemon=True)
        self._thread.start()
        if not self._reactor.ready.wait(10):
            raise RuntimeError(f"the test broker did not start: {self.errors}")

    def _run(self) -> None:
        try:
            Container(self._reactor).run()
        except Exception as exc:
            _LOG.exception("test broker reactor failed")
            self.errors.append(exc)

    @property
    def port(self) -> int:
        return self._reactor.port

    @property
    def connection_string(self) -> str:
        """Plain AMQP to the broker's port; only lower-case `true` is honoured (fact 1)."""
        return (
            f"Endpoint=sb://127.0.0.1:{self.port};SharedAccessKeyName=test;"
            "SharedAccessKey=dGVzdA==;UseDevelopmentEmulator=true"
        )

    def close(self) -> None:
        if self._thread.is_alive():
            self._reactor.call(self._reactor.stop, wait=False)
            self._thread.join(10)
            for fd in self._reactor.injector.pipe:  # proton's EventInjector leaves its pipe open
                os.close(fd)

    def __enter__(self) -> TestBroker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def declare_queue(
        self, name: str, *, max_delivery_count: int = 10, lock_duration: float = 30.0
    ) -> None:
        """Create or reconfigure a queue. A send to an unknown queue creates it with these
        defaults, which are the service's."""
        self._store.declare(name, max_delivery_count, lock_duration)

    def publish(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str | None = None,
        application_properties: dict[str, Any] | None = None,
        content_type: str | None = None,
        scheduled_enqueue_time: datetime | None = None,
    ) -> int:
        """Put a message on a queue without an SDK sender (which takes ~0.5 s to open); returns
        its sequence number."""
        annotations = {}
        if scheduled_enqueue_time is not None:
            when = _ms(scheduled_enqueue_time.timestamp())
            annotations[symbol("x-opt-scheduled-enqueue-time")] = when
        message = Message(
            body=body, id=message_id or str(uuid.uuid4()), inferred=True,
            properties=dict(application_properties or {}), content_type=content_type,
            annotations=annotations or None,
        )  # fmt: skip
        (number,) = self._store.enqueue(queue, _Payload.parse(message.encode()))
        self._reactor.call(self._reactor.pump, wait=False)
        return number

    def messages(self, queue: str) -> list[BrokerMessage]:
        """Available messages: neither locked, deferred nor scheduled for later."""
        return self._snapshot(queue, "active")

    def locked(self, queue: str) -> list[BrokerMessage]:
        return self._snapshot(queue, "locked")

    def scheduled(self, queue: str) -> list[BrokerMessage]:
        return self._snapshot(queue, "scheduled")

    def deferred(self, queue: str) -> list[BrokerMessage]:
        return self._snapshot(queue, "deferred")

    def dead_letters(self, queue: str) -> list[BrokerMessage]:
        """Everything in the queue's dead-letter sub-queue, locked or not."""
        path = queue + DEAD_LETTER_SUFFIX
        return self._snapshot(path, "active", "locked", "deferred", "scheduled")

    def _snapshot(self, path: str, *states: _State) -> list[BrokerMessage]:
        with self._store.lock:
            return [
                BrokerMessage(
                    queue=e.queue.name,
                    sequence_number=e.sequence_number,
                    message_id=e.payload.message_id,
                    body=e.payload.data,
                    application_properties={k: _plain(v) for k, v in e.payload.props.items()},
                    content_type=e.payload.content_type,
                    delivery_count=e.delivery_count,
                    state=e.state,
                    enqueued_time=datetime.fromtimestamp(e.enqueued_time, UTC),
                    scheduled_enqueue_time=_utc(e.scheduled_time),
                    locked_until=_utc(e.locked_until) if e.state == "locked" else None,
                    dead_letter_reason=e.payload.props.get("DeadLetterReason"),
                    dead_letter_error_description=e.payload.props.get("DeadLetterErrorDescription"),
                )
                for e in self._store.entries(path, *states)
            ]

    def join(self, queue: str, *, timeout: float = 10.0) -> None:
        """Wait until `queue` has nothing available or locked (scheduled messages count once
        due); raise TimeoutError if that takes longer than `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._store.changed:
            while not self._store.idle(queue):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"queue {queue!r} still has work after {timeout} s")
                self._store.changed.wait(min(remaining, _TICK))

    def advance(self, seconds: float) -> None:
        """Move broker time on: schedules fall due and locks expire without sleeping."""
        self.clock.advance(seconds)
        self._store.tick()
        self._reactor.call(self._reactor.pump, wait=False)

    def reset(self) -> None:
        """Forget every queue, message, lock and pending fault, and rewind the clock.

        Credit SDK receivers granted before the reset is void until they grant more (their next
        receive does). A prefetch-0 receive that returns fewer messages than asked leaves its
        credit open, so a receiver reused across tests would otherwise be handed the next test's
        first message while idle, and keep it locked until its keep-alive releases it (5 s).
        """
        self._reactor.call(self._reactor.void_credit)
        with self._store.lock:
            self._faults.clear()
            self._store.clear()
        self.clock.reset()
        self.errors.clear()

    def fail_next(
        self,
        operation: FaultOperation,
        times: int = 1,
        *,
        condition: str = SERVER_BUSY,
        description: str = "Injected by the test broker.",
    ) -> None:
        """Refuse the next `times` operations of a kind with an AMQP error.

        "send" is a transfer to a queue (a rejected delivery); "settle" is a settlement on the
        receive link or by $management update-disposition; the others are $management requests.
        The default condition becomes ServiceBusServerBusyError, which the SDK retries;
        INTERNAL_ERROR becomes a plain, also retryable, ServiceBusError. "schedule-answer"
        schedules the message and loses the answer (no reply is sent; `condition` is unused).
        """
        with self._store.lock:
            fault = _Fault(condition, description, times)
            self._faults.setdefault(operation, deque()).append(fault)

    def _fault(self, operation: str) -> _Fault | None:
        with self._store.lock:
            pending = self._faults.get(operation)
            if not pending:
                return None
            pending[0].times -= 1
            return pending.popleft() if pending[0].times <= 0 else pending[0]


def _guarded(method: Callable[[_Reactor, Event], None]) -> Callable[[_Reactor, Event], None]:
    """Keep the reactor alive through a handler bug, and keep the bug for the test to see."""

    @functools.wraps(method)
    def wrapper(self: _Reactor, event: Event) -> None:
        try:
            method(self, event)
        except Exception as exc:
            _LOG.exception("test broker failed handling %s", event.type)
            self.broker.errors.append(exc)

    return wrapper


def _path(address: str | None) -> str:
    """The entity path of a link address; the SDK sends amqps://host:port/<entity> (fact 1)."""
    address = address or ""
    return unquote(urlsplit(address).path if "://" in address else address).strip("/")


def _items(value: Any) -> list[Any]:
    return list(value.elements) if isinstance(value, Array) else list(value or [])


def _array(kind: int, values: Iterable[Any]) -> Array:
    return Array(cast(Any, UNDESCRIBED), kind, *values)


def _send(link: Sender, tag: bytes, payload: bytes, *, settle: bool) -> Delivery:
    delivery = link.delivery(cast(str, tag))  # proton accepts bytes, and binary tags matter
    link.send(payload)
    link.advance()
    if settle:
        delivery.settle()
    return delivery


class _Reactor(Handler):
    """proton events to broker operations; everything here runs on the reactor thread."""

    def __init__(self, broker: TestBroker) -> None:
        self.broker, self.store = broker, broker._store
        self.ready = threading.Event()
        self.port = 0
        self.injector = EventInjector()
        self.calls: deque[tuple[Callable[[], None], threading.Event]] = deque()
        self.connections: set[Connection] = set()
        self.consumers: list[Sender] = []  # our sending links on queues, i.e. SDK receivers
        self.container: Any = None
        self.acceptor: Any = None
        self.stopping = False

    def call(self, callback: Callable[[], None], *, wait: bool = True) -> None:
        """Run `callback` on the reactor thread (the only thread proton objects allow)."""
        done = threading.Event()
        self.calls.append((callback, done))
        self.injector.trigger(ApplicationEvent("broker_call"))
        if wait and not done.wait(10):
            raise TimeoutError("the test broker's reactor did not answer")

    @_guarded
    def on_broker_call(self, _: Event) -> None:
        while self.calls:
            callback, done = self.calls.popleft()
            try:
                callback()
            finally:
                done.set()

    @_guarded
    def on_reactor_init(self, event: Event) -> None:
        self.container = event.container
        self.acceptor = self.container.acceptor("127.0.0.1", "0")  # a free port
        self.port = self.acceptor._selectable.getsockname()[1]
        self.container.selectable(self.injector)
        self.container.schedule(_TICK, self)
        self.ready.set()

    @_guarded
    def on_timer_task(self, _: Event) -> None:
        """Every tick: deliver what the clock made due; once stopping, let the reactor end."""
        if not self.stopping:
            self.pump()
            self.container.schedule(_TICK, self)
            return
        for connection in self.connections:  # the close frames had a tick to leave
            selectable = getattr(connection.transport, "_selectable", None)
            if selectable is not None:
                selectable.terminate()
                selectable.update()
        self.acceptor.close()
        self.injector.close()
        self.container.stop()

    def stop(self) -> None:
        self.stopping = True
        for connection in self.connections:
            connection.close()

    def void_credit(self) -> None:
        for link in self.consumers:
            link.broker_void = True

    @_guarded
    def on_connection_remote_open(self, event: Event) -> None:
        connection = cast(Connection, event.connection)
        self.connections.add(connection)
        connection.container = "test-broker"
        connection.open()

    @_guarded
    def on_connection_remote_close(self, event: Event) -> None:
        connection = cast(Connection, event.connection)
        self.connections.discard(connection)
        connection.close()

    @_guarded
    def on_transport_closed(self, event: Event) -> None:
        self.connections.discard(cast(Connection, event.connection))

    @_guarded
    def on_session_remote_open(self, event: Event) -> None:
        cast(Any, event.session).open()

    @_guarded
    def on_session_remote_close(self, event: Event) -> None:
        cast(Any, event.session).close()

    @_guarded
    def on_link_remote_open(self, event: Event) -> None:
        """Echo addresses and settle modes and give credit (fact 3); file the link by address."""
        link = cast(Link, event.link)
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        address = link.remote_source.address if link.is_sender else link.remote_target.address
        link.broker_path = path = _path(address)
        link.broker_node = path == "$cbs" or path.endswith("/$management")
        if not link.broker_node:
            self.store.entity(path)
        if link.is_receiver:
            link.max_message_size = self.broker.max_message_size
            link.open()
            link.flow(_CREDIT)
        elif link.broker_node:  # where this connection's replies from that node go (fact 10)
            link.broker_outbox = deque()
            replies = getattr(link.connection, "broker_replies", {})
            link.connection.broker_replies = {**replies, path: link}
            link.open()
        else:
            link.broker_void = False
            self.consumers.append(cast(Sender, link))
            link.open()
            self.pump()

    @_guarded
    def on_link_remote_close(self, event: Event) -> None:
        link = cast(Link, event.link)
        if link in self.consumers:
            self.consumers.remove(cast(Sender, link))
        link.close()

    @_guarded
    def on_link_flow(self, event: Event) -> None:
        link = cast(Sender, event.link)
        if link.is_sender:
            link.broker_void = False
            self.flush(link) if link.broker_node else self.pump()

    @_guarded
    def on_delivery(self, event: Event) -> None:
        delivery = cast(Delivery, event.delivery)
        if delivery.link.is_receiver:
            self.incoming(delivery)
        else:
            self.outcome(delivery)

    def incoming(self, delivery: Delivery) -> None:
        """A transfer from the SDK: a message for a queue, or a CBS / $management request."""
        link = delivery.link
        if delivery.aborted or delivery.partial:
            if delivery.aborted:
                delivery.settle()
            return
        payload = cast(bytes, link.recv(delivery.pending) or b"")
        link.advance()
        condition = None
        if link.broker_node:
            self.request(link, payload)
        else:
            condition = self.enqueue(link.broker_path, payload)
        if not delivery.settled:
            if condition is not None:
                delivery.local.condition = condition
            delivery.update(Disposition.REJECTED if condition else Disposition.ACCEPTED)
        delivery.settle()
        if link.credit < _CREDIT // 2:
            cast(Any, link).flow(_CREDIT - link.credit)
        self.pump()

    def enqueue(self, path: str, payload: bytes) -> Condition | None:
        if path.endswith(DEAD_LETTER_SUFFIX):
            return _error("amqp:not-allowed", "Cannot send to a dead-letter queue.")
        if len(payload) > self.broker.max_message_size:  # proton does not enforce it
            size = f"{len(payload)} bytes is over the limit of {self.broker.max_message_size}."
            return _error("amqp:link:message-size-exceeded", size)
        fault = self.broker._fault("send")
        if fault is not None:
            return _error(fault.condition, fault.description)
        try:
            self.store.enqueue(path, _Payload.parse(payload))
        except (ValueError, IndexError, DataException):
            return _error("amqp:decode-error", "The message could not be decoded.")
        return None

    def outcome(self, delivery: Delivery) -> None:
        """The SDK's disposition of a message we delivered (fact 8): apply it and echo it
        settled, or answer lock-lost or an injected fault as `rejected` with an error."""
        token = getattr(delivery, "broker_token", None)
        state, remote = delivery.remote_state, delivery.remote
        if token is None or (state in (0, Disposition.RECEIVED) and not delivery.settled):
            if delivery.settled:  # a receive-and-delete delivery or a reply
                delivery.settle()
            return
        delivery.broker_token = None
        reason = description = None
        if state == Disposition.ACCEPTED:
            kind = "complete"
        elif state == Disposition.REJECTED:
            kind, info = "dead-letter", cast(Any, remote.condition and remote.condition.info)
            details = {str(k): v for k, v in (info or {}).items()}
            reason = details.get("DeadLetterReason")
            description = details.get("DeadLetterErrorDescription")
        elif state == Disposition.MODIFIED and remote.failed:
            kind = "defer" if remote.undeliverable else "abandon"
        else:
            kind = "release"
        fault = None if delivery.settled or kind == "release" else self.broker._fault("settle")
        applied = fault is None and self.store.settle(token, kind, reason, description)
        if not delivery.settled:  # rcv-settle-mode second: the SDK waits for our echo
            if applied:
                delivery.local.failed = remote.failed
                delivery.local.undeliverable = remote.undeliverable
                delivery.update(state)
            else:
                delivery.local.condition = (
                    _error(fault.condition, fault.description)
                    if fault
                    else _error(LOCK_LOST, "The lock supplied is invalid or has expired.")
                )
                delivery.update(Disposition.REJECTED)
        delivery.settle()
        self.pump()

    def pump(self) -> None:
        """Hand available messages to consumer links with credit, one per link per round."""
        self.store.tick()
        self.consumers = [link for link in self.consumers if link.state & Endpoint.LOCAL_ACTIVE]
        progress = True
        while progress:
            progress = False
            for link in self.consumers:
                if link.credit <= 0 or link.broker_void:
                    continue
                settled = link.snd_settle_mode == Link.SND_SETTLED  # receive-and-delete
                taken = self.store.take(link.broker_path, lock=not settled)
                if taken is not None:
                    token, payload = taken
                    delivery = _send(link, token.bytes_le, payload, settle=settled)  # fact 7
                    delivery.broker_token = None if settled else token
                    progress = True
        for link in self.consumers:
            if link.drain_mode and link.credit > 0:
                link.drained()

    def flush(self, link: Sender) -> None:
        outbox: deque[bytes] = link.broker_outbox
        while outbox and link.credit > 0:  # replies go pre-settled: the SDK never settles them
            _send(link, uuid.uuid4().bytes, outbox.popleft(), settle=True)

    def request(self, link: Link, payload: bytes) -> None:
        """CBS put-token (fact 2) or a $management operation (fact 10), answered on the link
        from that node on the same connection, correlated by the request's message-id."""
        request = Message()
        request.decode(payload)
        properties = cast(dict[str, Any], request.properties or {})
        if link.broker_path == "$cbs":
            status, value, condition, text = 202, None, None, "Accepted"
        else:
            entity = link.broker_path.removesuffix("/$management")
            operation = str(properties.get("operation", "")).removeprefix("com.microsoft:")
            body = {str(k): v for k, v in cast(dict[Any, Any], request.body or {}).items()}
            status, value, condition, text = self.management(entity, operation, body)
            if operation == "schedule-message" and self.broker._fault("schedule-answer"):
                return  # done, and the answer lost on the way back
        reply_properties: dict[str, Any] = {
            "status-code": status, "status-description": text,  # read by CBS
            "statusCode": status, "statusDescription": text,  # read by $management
        }  # fmt: skip
        if condition:
            reply_properties["errorCondition"] = symbol(condition)
        reply = Message(body=value, correlation_id=request.id, properties=reply_properties)
        replies: dict[str, Sender] = getattr(link.connection, "broker_replies", {})
        target = replies.get(_path(request.reply_to)) or replies.get(link.broker_path)
        if target is not None:
            target.broker_outbox.append(reply.encode())
            self.flush(target)

    def management(
        self, entity: str, operation: str, body: dict[str, Any]
    ) -> tuple[int, Any, str | None, str]:
        """One $management operation: (status code, reply body, error condition, text)."""
        faults = {
            "schedule-message": "schedule", "cancel-scheduled-message": "cancel",
            "peek-message": "peek", "renew-lock": "renew-lock", "update-disposition": "settle",
        }  # fmt: skip
        fault = self.broker._fault(faults.get(operation, operation))
        if fault is not None:
            return _STATUS.get(fault.condition, 500), None, fault.condition, fault.description
        store, ok = self.store, (200, cast(Any, {}), None, "OK")
        lost = (410, None, LOCK_LOST, "The lock supplied is invalid or has expired.")
        missing = (404, None, NOT_FOUND, "No message with that sequence number is here.")
        numbers = [int(n) for n in _items(body.get("sequence-numbers"))]
        tokens = [uuid.UUID(str(t)) for t in _items(body.get("lock-tokens"))]
        if operation == "peek-message":
            start, count = int(body["from-sequence-number"]), int(body["message-count"])
            peeked = store.peek(entity, start, count)
            if not peeked:
                return 204, None, None, "No messages"  # the SDK returns []
            return 200, {"messages": [{"message": m} for m in peeked]}, None, "OK"
        if operation == "schedule-message":
            payloads = [p for m in body["messages"] for p in _Payload.parse(bytes(m["message"]))]
            scheduled = store.enqueue(entity, payloads)
            return 200, {"sequence-numbers": _array(Data.LONG, scheduled)}, None, "OK"
        if operation == "cancel-scheduled-message":
            return ok if store.cancel(entity, numbers) else missing
        if operation == "renew-lock":
            until = store.renew(tokens)
            if until is None:
                return lost
            return 200, {"expirations": _array(Data.TIMESTAMP, map(_ms, until))}, None, "OK"
        if operation == "update-disposition":
            kind = {"completed": "complete", "abandoned": "abandon", "suspended": "dead-letter",
                    "defered": "defer"}[str(body["disposition-status"])]  # fmt: skip
            reason = body.get("deadletter-reason") or None
            text = body.get("deadletter-description") or None
            settled = [store.settle(token, kind, reason, text) for token in tokens]
            return ok if all(settled) else lost
        if operation == "receive-by-sequence-number":
            lock = int(body.get("receiver-settle-mode", 1)) != 0  # 0: receive-and-delete
            found = store.deferred(entity, numbers, lock=lock)
            if not found:
                return missing
            messages = [{"message": m, "lock-token": token} for token, m in found]
            return 200, {"messages": messages}, None, "OK"
        return 501, None, "amqp:not-implemented", f"The test broker does not do {operation!r}."
