"""A stand-in for the Azure Functions host's Service Bus queue trigger, for tests.

Why: no Functions host runs here, yet the product's contract with the platform is the host's
settlement rule (host.json has `autoCompleteMessages: true`): the function returns, the message is
completed; it raises, the message is abandoned, and the broker redelivers it until
maxDeliveryCount dead-letters it. This host receives with the real SDK in PEEK_LOCK mode and
settles the same way, so that contract runs end to end against the test broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from azure.functions.servicebus import ServiceBusMessage as FunctionsMessage
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusReceiver,
)
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import ServiceBusError

if TYPE_CHECKING:
    from tests.broker.broker import TestBroker

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Invocation:
    """One call of the function and what the host did with the message afterwards."""

    message_id: str
    sequence_number: int | None
    delivery_count: int  # as the function saw it: 1 on the first delivery
    outcome: Literal["completed", "abandoned", "settle_failed"]
    error: BaseException | None  # the function's exception, or the settlement's


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def functions_message(message: ServiceBusReceivedMessage) -> FunctionsMessage:
    """The message as the Python worker hands it to a function.

    The host is .NET: its DeliveryCount is the AMQP header count plus one (1 on the first
    delivery), where the Python SDK reports the header count itself (0). Property keys and string
    values arrive as str, not the SDK's bytes.
    """
    properties = {_text(k): _text(v) for k, v in (message.application_properties or {}).items()}
    if message.body_type == AmqpMessageBodyType.DATA:
        body = b"".join(message.body)
    else:
        value = message.body
        body = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return FunctionsMessage(
        body=body,
        message_id=str(message.message_id),
        application_properties=properties,
        user_properties=dict(properties),
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        dead_letter_error_description=message.dead_letter_error_description,
        dead_letter_reason=message.dead_letter_reason,
        dead_letter_source=message.dead_letter_source,
        delivery_count=(message.delivery_count or 0) + 1,
        enqueued_sequence_number=message.enqueued_sequence_number,
        enqueued_time_utc=message.enqueued_time_utc,
        expires_at_utc=message.expires_at_utc,
        label=message.subject,
        locked_until=message.locked_until_utc,
        lock_token=None if message.lock_token is None else str(message.lock_token),
        partition_key=message.partition_key,
        reply_to=message.reply_to,
        reply_to_session_id=message.reply_to_session_id,
        scheduled_enqueue_time_utc=message.scheduled_enqueue_time_utc,
        sequence_number=message.sequence_number,
        session_id=message.session_id,
        state=int(message.state),
        subject=message.subject,
        time_to_live=message.time_to_live,
        to=message.to,
    )


class FunctionsHost:
    """Runs `handler` for messages of one queue, `max_concurrent_calls` at a time.

    Workers run only inside `run_until_idle`, so a test decides when messages are processed.
    Receivers are opened once (about half a second each, in parallel) and kept until `close()`.
    Given the `broker`, idleness is read from it (nothing available or locked) and its clock is
    moved to the next scheduled message; without it, idle means every worker's last receive
    came back empty after the last message was handled. Locks are not renewed: handlers are
    expected to finish well inside the queue's lock duration.
    """

    def __init__(
        self,
        connection_string: str,
        queue_name: str,
        handler: Callable[[FunctionsMessage], object],
        *,
        broker: TestBroker | None = None,
        max_concurrent_calls: int = 1,
        poll_interval: float = 0.1,
    ) -> None:
        if max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be at least 1")
        self.handler = handler
        self.queue_name = queue_name
        self.invocations: list[Invocation] = []
        self._broker = broker
        self._poll = poll_interval
        self._client = ServiceBusClient.from_connection_string(connection_string)
        self._state = threading.Condition()
        self._running = self._closed = False
        self._working = self._busy = 0  # workers inside an iteration / inside a handler
        self._activity = 0.0  # monotonic time a message was last taken or settled
        self._quiet = [0.0] * max_concurrent_calls  # when each worker's last empty poll began
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"functions-host-{i}", daemon=True)
            for i in range(max_concurrent_calls)
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> FunctionsHost:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with self._state:
            self._closed = True
            self._state.notify_all()
        for thread in self._threads:
            thread.join(30)
        self._client.close()

    def run_until_idle(
        self, timeout: float = 10.0, *, advance_clock: bool = True
    ) -> list[Invocation]:
        """Process until the queue is drained; returns this run's invocations in order.

        With the broker and `advance_clock`, scheduled messages are brought forward by moving
        the broker's clock to each one's time.
        """
        deadline = time.monotonic() + timeout
        with self._state:
            first = len(self.invocations)
            self._running, self._activity = True, time.monotonic()
            self._state.notify_all()
        try:
            while not self._idle(advance_clock):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"queue {self.queue_name!r} not idle after {timeout} s")
                time.sleep(0.01)
        finally:
            with self._state:
                self._running = False
                while self._working:  # let each worker finish what it received
                    self._state.wait()
        with self._state:
            return self.invocations[first:]

    def _idle(self, advance_clock: bool) -> bool:
        with self._state:
            if self._busy:
                return False
            if self._broker is None:
                return all(started > self._activity for started in self._quiet)
        broker, queue = self._broker, self.queue_name
        if broker.messages(queue) or broker.locked(queue):
            return False
        due = [m.scheduled_enqueue_time for m in broker.scheduled(queue)]
        if advance_clock and due:
            earliest = min(when.timestamp() for when in due if when is not None)
            broker.advance(max(0.0, earliest - broker.clock.now()))
            return False
        return True

    def _work(self, index: int) -> None:
        receiver = self._client.get_queue_receiver(
            self.queue_name, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0
        )
        with receiver:  # opens the link: ~0.45 s, in parallel across workers
            while True:
                with self._state:
                    while not (self._running or self._closed):
                        self._state.wait()
                    if self._closed:
                        return
                    self._working += 1
                try:
                    started = time.monotonic()
                    messages = receiver.receive_messages(
                        max_message_count=1, max_wait_time=self._poll
                    )
                    if not messages:
                        with self._state:
                            self._quiet[index] = started
                    for message in messages:
                        self._invoke(receiver, message)
                except ServiceBusError as exc:  # like the host: log it and keep polling
                    _LOG.warning("receiving from %s failed: %r", self.queue_name, exc)
                finally:
                    with self._state:
                        self._working -= 1
                        self._state.notify_all()

    def _invoke(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage) -> None:
        with self._state:
            self._busy += 1
            self._activity = time.monotonic()
        try:
            record = self._call(receiver, message)
            with self._state:
                self.invocations.append(record)
        finally:
            with self._state:
                self._busy -= 1
                self._activity = time.monotonic()

    def _call(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage) -> Invocation:
        called = functions_message(message)
        error: BaseException | None = None
        try:
            self.handler(called)
        except Exception as exc:  # what the host catches: the function failed
            _LOG.info("function failed for message %s: %r", called.message_id, exc)
            error = exc
        outcome: Literal["completed", "abandoned", "settle_failed"]
        try:
            if error is None:
                receiver.complete_message(message)
                outcome = "completed"
            else:
                receiver.abandon_message(message)
                outcome = "abandoned"
        except ServiceBusError as exc:
            outcome, error = "settle_failed", exc
        count = called.delivery_count or 1
        return Invocation(called.message_id, called.sequence_number, count, outcome, error)
