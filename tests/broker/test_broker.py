"""The test broker, exercised only through the real azure-servicebus SDK and the Functions-host
stand-in: if these pass, the SDK's own lock tokens, retries and error mapping work against it."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.functions.servicebus import ServiceBusMessage as FunctionsMessage
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageState,
    ServiceBusReceiveMode,
    ServiceBusReceiver,
    ServiceBusSender,
)
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageSizeExceededError,
    ServiceBusServerBusyError,
)

from tests.broker import FunctionsHost, TestBroker
from tests.broker.plugin import HOST_QUEUE, QUEUE


@pytest.fixture(scope="module")
def quick_retry_client(servicebus_broker: TestBroker) -> Iterator[ServiceBusClient]:
    """One retry, almost no back-off: what a chaos test wants from the SDK."""
    with ServiceBusClient.from_connection_string(
        servicebus_broker.connection_string, retry_total=1, retry_backoff_factor=0.01
    ) as client:
        yield client


@pytest.fixture(scope="module")
def quick_retry_sender(quick_retry_client: ServiceBusClient) -> Iterator[ServiceBusSender]:
    with quick_retry_client.get_queue_sender(QUEUE) as sender:
        yield sender


@pytest.fixture(scope="module")
def quick_retry_receiver(quick_retry_client: ServiceBusClient) -> Iterator[ServiceBusReceiver]:
    with quick_retry_client.get_queue_receiver(QUEUE, max_wait_time=1) as receiver:
        yield receiver


def test_send_receive_complete(
    broker: TestBroker, servicebus_sender: ServiceBusSender, servicebus_receiver: ServiceBusReceiver
) -> None:
    servicebus_sender.send_messages(ServiceBusMessage(b"hello", message_id="m-1"))
    assert [m.message_id for m in broker.messages(QUEUE)] == ["m-1"]

    (message,) = servicebus_receiver.receive_messages(max_message_count=1)
    assert (message.message_id, b"".join(message.body)) == ("m-1", b"hello")
    assert message.delivery_count == 0  # the service's header count: no failed delivery yet
    assert message.lock_token is not None and message.locked_until_utc is not None
    assert [m.message_id for m in broker.locked(QUEUE)] == ["m-1"]

    servicebus_receiver.complete_message(message)
    assert broker.messages(QUEUE) == broker.locked(QUEUE) == []


def test_batch_and_list_sends_keep_order_ids_and_increasing_sequence_numbers(
    broker: TestBroker, servicebus_sender: ServiceBusSender, servicebus_receiver: ServiceBusReceiver
) -> None:
    batch = servicebus_sender.create_message_batch()
    for index in range(3):
        batch.add_message(ServiceBusMessage(f"batched {index}", message_id=f"b-{index}"))
    servicebus_sender.send_messages(batch)
    servicebus_sender.send_messages(
        [ServiceBusMessage("listed", message_id=f"l-{i}") for i in (0, 1)]
    )

    held = broker.messages(QUEUE)
    assert [m.message_id for m in held] == ["b-0", "b-1", "b-2", "l-0", "l-1"]
    assert [m.body for m in held[:3]] == [b"batched 0", b"batched 1", b"batched 2"]
    numbers = [m.sequence_number for m in held]
    assert numbers == sorted(set(numbers))

    received = servicebus_receiver.receive_messages(max_message_count=5)
    assert [m.sequence_number for m in received] == numbers
    for message in received:
        servicebus_receiver.complete_message(message)
    assert broker.messages(QUEUE) == []


def test_round_trip_keeps_body_properties_and_ids_exactly(
    broker: TestBroker, servicebus_sender: ServiceBusSender, servicebus_receiver: ServiceBusReceiver
) -> None:
    body = bytes(range(256)) * 4
    properties: dict[str | bytes, Any] = {
        "text": "Grüße ✓",
        "count": 42,
        "ratio": 0.25,
        "flag": True,
    }
    servicebus_sender.send_messages(
        ServiceBusMessage(
            body,
            message_id="id-ü",
            application_properties=properties,
            content_type="application/octet-stream",
            correlation_id="corr-1",
            subject="mailbox",
        )
    )
    (held,) = broker.messages(QUEUE)
    assert (held.body, held.application_properties) == (body, properties)

    (message,) = servicebus_receiver.receive_messages(max_message_count=1)
    assert b"".join(message.body) == body
    assert message.application_properties == {
        b"text": "Grüße ✓".encode(),
        b"count": 42,
        b"ratio": 0.25,
        b"flag": True,
    }
    assert (message.message_id, message.content_type) == ("id-ü", "application/octet-stream")
    assert (message.correlation_id, message.subject) == ("corr-1", "mailbox")
    assert message.sequence_number == held.sequence_number
    assert message.enqueued_time_utc is not None
    assert abs((message.enqueued_time_utc - held.enqueued_time).total_seconds()) < 0.001
    servicebus_receiver.complete_message(message)


def test_a_message_over_the_size_limit_is_refused(
    broker: TestBroker, servicebus_sender: ServiceBusSender
) -> None:
    assert servicebus_sender.create_message_batch().max_size_in_bytes == broker.max_message_size
    with pytest.raises(MessageSizeExceededError):  # the SDK leaves single messages to the broker
        servicebus_sender.send_messages(ServiceBusMessage(b"x" * (broker.max_message_size + 1)))
    assert broker.messages(QUEUE) == []


def test_abandon_redelivers_with_the_delivery_count_raised(
    broker: TestBroker, servicebus_sender: ServiceBusSender, servicebus_receiver: ServiceBusReceiver
) -> None:
    servicebus_sender.send_messages(ServiceBusMessage("retry me"))
    (first,) = servicebus_receiver.receive_messages(max_message_count=1)
    servicebus_receiver.abandon_message(first)
    assert [m.delivery_count for m in broker.messages(QUEUE)] == [1]

    (second,) = servicebus_receiver.receive_messages(max_message_count=1)
    # The Python SDK reports the AMQP header count, as with the real service: 0 then 1. The
    # Functions host (.NET) adds one; see test_host_abandons_when_the_function_raises.
    assert (first.delivery_count, second.delivery_count) == (0, 1)
    assert second.sequence_number == first.sequence_number
    servicebus_receiver.complete_message(second)


def test_the_broker_dead_letters_past_max_delivery_count(
    broker: TestBroker,
    servicebus_sender: ServiceBusSender,
    servicebus_receiver: ServiceBusReceiver,
    servicebus_dead_letter_receiver: ServiceBusReceiver,
) -> None:
    broker.declare_queue(QUEUE, max_delivery_count=3)
    servicebus_sender.send_messages(ServiceBusMessage("poison", message_id="poison"))
    for _ in range(3):
        (message,) = servicebus_receiver.receive_messages(max_message_count=1)
        servicebus_receiver.abandon_message(message)

    assert broker.messages(QUEUE) == []
    (dead,) = broker.dead_letters(QUEUE)
    assert (dead.message_id, dead.delivery_count) == ("poison", 3)
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"

    (read,) = servicebus_dead_letter_receiver.receive_messages(max_message_count=1)
    assert read.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert read.dead_letter_error_description == (
        "Message could not be consumed after 3 delivery attempts."
    )
    servicebus_dead_letter_receiver.complete_message(read)
    assert broker.dead_letters(QUEUE) == []


def test_explicit_dead_letter_keeps_reason_and_description(
    broker: TestBroker,
    servicebus_sender: ServiceBusSender,
    servicebus_receiver: ServiceBusReceiver,
    servicebus_dead_letter_receiver: ServiceBusReceiver,
) -> None:
    servicebus_sender.send_messages(ServiceBusMessage("bad", application_properties={"k": "v"}))
    (message,) = servicebus_receiver.receive_messages(max_message_count=1)
    servicebus_receiver.dead_letter_message(
        message, reason="PolicyInvalid", error_description="rule 3 has no target"
    )

    (dead,) = broker.dead_letters(QUEUE)
    assert dead.application_properties == {
        "k": "v",
        "DeadLetterReason": "PolicyInvalid",
        "DeadLetterErrorDescription": "rule 3 has no target",
    }
    (read,) = servicebus_dead_letter_receiver.receive_messages(max_message_count=1)
    assert (read.dead_letter_reason, read.dead_letter_error_description) == (
        "PolicyInvalid",
        "rule 3 has no target",
    )
    assert read.application_properties is not None and read.application_properties[b"k"] == b"v"
    servicebus_dead_letter_receiver.complete_message(read)
    assert broker.dead_letters(QUEUE) == []


def test_peek_browses_without_locking(
    broker: TestBroker, servicebus_sender: ServiceBusSender, servicebus_receiver: ServiceBusReceiver
) -> None:
    assert servicebus_receiver.peek_messages(5, sequence_number=1) == []

    servicebus_sender.send_messages(
        [ServiceBusMessage(f"p{i}", message_id=f"p{i}") for i in (0, 1)]
    )
    peeked = servicebus_receiver.peek_messages(5, sequence_number=1)
    assert [m.message_id for m in peeked] == ["p0", "p1"]
    assert {m.state for m in peeked} == {ServiceBusMessageState.ACTIVE}
    assert len(broker.messages(QUEUE)) == 2 and broker.locked(QUEUE) == []


def test_schedule_then_cancel(broker: TestBroker, servicebus_sender: ServiceBusSender) -> None:
    when = datetime.fromtimestamp(broker.clock.now(), UTC) + timedelta(hours=1)
    (number,) = servicebus_sender.schedule_messages(ServiceBusMessage("later"), when)

    (scheduled,) = broker.scheduled(QUEUE)
    assert scheduled.sequence_number == number
    assert scheduled.scheduled_enqueue_time is not None
    assert abs((scheduled.scheduled_enqueue_time - when).total_seconds()) < 0.001
    servicebus_sender.cancel_scheduled_messages(number)
    assert broker.scheduled(QUEUE) == broker.messages(QUEUE) == []


def test_scheduled_message_is_receivable_only_from_its_time(
    broker: TestBroker, servicebus_sender: ServiceBusSender, servicebus_receiver: ServiceBusReceiver
) -> None:
    message = ServiceBusMessage("at nine", message_id="nine")
    message.scheduled_enqueue_time_utc = datetime.fromtimestamp(
        broker.clock.now(), UTC
    ) + timedelta(minutes=10)
    servicebus_sender.send_messages(message)
    assert servicebus_receiver.receive_messages(max_message_count=1, max_wait_time=0.3) == []

    broker.advance(10 * 60)
    (received,) = servicebus_receiver.receive_messages(max_message_count=1)
    assert received.message_id == "nine"
    assert received.scheduled_enqueue_time_utc is not None
    assert received.enqueued_time_utc is not None
    assert received.enqueued_time_utc >= received.scheduled_enqueue_time_utc
    servicebus_receiver.complete_message(received)


def test_lock_expiry_redelivers_and_the_late_settlement_loses_the_lock(
    broker: TestBroker, servicebus_sender: ServiceBusSender, servicebus_receiver: ServiceBusReceiver
) -> None:
    broker.declare_queue(QUEUE, lock_duration=30)
    servicebus_sender.send_messages(ServiceBusMessage("slow"))
    (first,) = servicebus_receiver.receive_messages(max_message_count=1)

    broker.advance(31)
    assert [m.delivery_count for m in broker.messages(QUEUE)] == [1]
    with pytest.raises(MessageLockLostError):
        servicebus_receiver.complete_message(first)

    (second,) = servicebus_receiver.receive_messages(max_message_count=1)
    assert second.delivery_count == 1
    servicebus_receiver.complete_message(second)


def test_renewed_lock_outlives_the_original(
    broker: TestBroker, servicebus_sender: ServiceBusSender, servicebus_receiver: ServiceBusReceiver
) -> None:
    servicebus_sender.send_messages(ServiceBusMessage("long job"))
    (message,) = servicebus_receiver.receive_messages(max_message_count=1)
    first_until = message.locked_until_utc
    broker.advance(20)
    renewed = servicebus_receiver.renew_message_lock(message)
    assert first_until is not None and renewed > first_until

    broker.advance(20)  # past the first lock, inside the renewed one
    servicebus_receiver.complete_message(message)
    assert broker.messages(QUEUE) == broker.locked(QUEUE) == []


def test_defer_then_receive_by_sequence_number(
    broker: TestBroker, servicebus_sender: ServiceBusSender, servicebus_receiver: ServiceBusReceiver
) -> None:
    servicebus_sender.send_messages(ServiceBusMessage("not yet"))
    (message,) = servicebus_receiver.receive_messages(max_message_count=1)
    servicebus_receiver.defer_message(message)
    assert [m.state for m in broker.deferred(QUEUE)] == ["deferred"]
    assert servicebus_receiver.receive_messages(max_message_count=1, max_wait_time=0.2) == []

    (again,) = servicebus_receiver.receive_deferred_messages([message.sequence_number or 0])
    servicebus_receiver.complete_message(again)
    assert broker.deferred(QUEUE) == []


def test_receive_and_delete_removes_on_delivery(
    broker: TestBroker, servicebus_client: ServiceBusClient, servicebus_sender: ServiceBusSender
) -> None:
    broker.publish(QUEUE, b"once", message_id="once")
    with servicebus_client.get_queue_receiver(
        QUEUE, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, max_wait_time=1
    ) as receiver:
        (message,) = receiver.receive_messages(max_message_count=1)
    assert message.message_id == "once"
    assert broker.messages(QUEUE) == broker.locked(QUEUE) == []


def test_injected_send_fault_is_retried_then_surfaces(
    broker: TestBroker, quick_retry_sender: ServiceBusSender
) -> None:
    broker.fail_next("send")  # one refusal: the SDK's single retry gets through
    quick_retry_sender.send_messages(ServiceBusMessage("persistent"))
    assert len(broker.messages(QUEUE)) == 1

    broker.fail_next("send", times=2)  # two refusals: the retry is refused too
    with pytest.raises(ServiceBusServerBusyError):
        quick_retry_sender.send_messages(ServiceBusMessage("unlucky"))
    assert len(broker.messages(QUEUE)) == 1


def test_injected_settlement_and_schedule_faults(
    broker: TestBroker,
    quick_retry_sender: ServiceBusSender,
    quick_retry_receiver: ServiceBusReceiver,
) -> None:
    quick_retry_sender.send_messages(ServiceBusMessage("settle me"))
    (message,) = quick_retry_receiver.receive_messages(max_message_count=1)
    broker.fail_next("settle")  # the retry goes through $management update-disposition
    quick_retry_receiver.complete_message(message)
    assert broker.locked(QUEUE) == []

    broker.fail_next("schedule", times=2, condition="amqp:internal-error")
    when = datetime.fromtimestamp(broker.clock.now(), UTC) + timedelta(hours=1)
    with pytest.raises(Exception, match="Injected") as raised:
        quick_retry_sender.schedule_messages(ServiceBusMessage("never"), when)
    assert "amqp:internal-error" in str(raised.value)
    assert broker.scheduled(QUEUE) == []


def test_async_client_round_trip(broker: TestBroker) -> None:
    async def round_trip() -> tuple[str | None, int | None]:
        async with AsyncServiceBusClient.from_connection_string(broker.connection_string) as client:
            async with client.get_queue_sender("async-queue") as sender:
                await sender.send_messages(ServiceBusMessage(b"async", message_id="a-1"))
            async with client.get_queue_receiver("async-queue", max_wait_time=1) as receiver:
                (message,) = await receiver.receive_messages(max_message_count=1)
                await receiver.complete_message(message)
                return message.message_id, message.delivery_count

    assert asyncio.run(round_trip()) == ("a-1", 0)
    assert broker.messages("async-queue") == broker.locked("async-queue") == []


def test_join_waits_for_a_consumer_to_drain_the_queue(
    broker: TestBroker, servicebus_receiver: ServiceBusReceiver
) -> None:
    broker.publish(QUEUE, b"work")
    with pytest.raises(TimeoutError):
        broker.join(QUEUE, timeout=0.1)

    def consume() -> None:
        for message in servicebus_receiver.receive_messages(max_message_count=1):
            servicebus_receiver.complete_message(message)

    worker = threading.Thread(target=consume)
    worker.start()
    broker.join(QUEUE, timeout=5)
    worker.join()
    assert broker.messages(QUEUE) == broker.locked(QUEUE) == []


def test_host_completes_and_passes_the_message_as_the_functions_worker_does(
    broker: TestBroker, functions_host: FunctionsHost
) -> None:
    seen: list[FunctionsMessage] = []
    functions_host.handler = seen.append
    for index in range(3):
        broker.publish(
            HOST_QUEUE, f"m{index}".encode(), message_id=f"m{index}",
            application_properties={"kind": "update", "n": index}, content_type="application/json",
        )  # fmt: skip
    runs = functions_host.run_until_idle()

    assert sorted((r.message_id, r.outcome, r.delivery_count) for r in runs) == [
        ("m0", "completed", 1),
        ("m1", "completed", 1),
        ("m2", "completed", 1),
    ]
    (last,) = [m for m in seen if m.message_id == "m2"]
    assert last.get_body() == b"m2"
    assert last.application_properties == {"kind": "update", "n": 2}
    assert (last.content_type, last.delivery_count) == ("application/json", 1)
    assert broker.messages(HOST_QUEUE) == broker.locked(HOST_QUEUE) == []


def test_host_abandons_when_the_function_raises(
    broker: TestBroker, functions_host: FunctionsHost
) -> None:
    counts: list[int | None] = []

    def flaky(message: FunctionsMessage) -> None:
        counts.append(message.delivery_count)
        if len(counts) == 1:
            raise RuntimeError("Dataverse timed out")

    functions_host.handler = flaky
    broker.publish(HOST_QUEUE, b"{}", message_id="flaky")
    runs = functions_host.run_until_idle()

    # The host (.NET) reports the AMQP header count plus one: the redelivery is the second.
    runs.sort(key=lambda run: run.delivery_count)  # two workers: the retry may finish first
    assert [(r.outcome, r.delivery_count) for r in runs] == [("abandoned", 1), ("completed", 2)]
    assert isinstance(runs[0].error, RuntimeError)
    assert counts == [1, 2]


def test_host_failures_end_in_the_dead_letter_queue(
    broker: TestBroker, functions_host: FunctionsHost
) -> None:
    def broken(message: FunctionsMessage) -> None:
        raise ValueError(f"cannot parse {message.message_id}")

    functions_host.handler = broken
    broker.declare_queue(HOST_QUEUE, max_delivery_count=2)
    broker.publish(HOST_QUEUE, b"not json", message_id="poison")
    runs = functions_host.run_until_idle()

    assert sorted((r.outcome, r.delivery_count) for r in runs) == [
        ("abandoned", 1),
        ("abandoned", 2),
    ]
    (dead,) = broker.dead_letters(HOST_QUEUE)
    assert (dead.message_id, dead.dead_letter_reason) == ("poison", "MaxDeliveryCountExceeded")


def test_host_runs_calls_concurrently_and_waits_for_scheduled_messages(
    broker: TestBroker, functions_host: FunctionsHost
) -> None:
    both_running = threading.Barrier(2, timeout=5)  # breaks unless two calls overlap

    def handler(message: FunctionsMessage) -> None:
        if message.message_id in ("a", "b"):
            both_running.wait()

    functions_host.handler = handler
    for name in ("a", "b", "c"):
        broker.publish(HOST_QUEUE, b"{}", message_id=name)
    later = datetime.fromtimestamp(broker.clock.now(), UTC) + timedelta(hours=2)
    broker.publish(HOST_QUEUE, b"{}", message_id="later", scheduled_enqueue_time=later)
    runs = functions_host.run_until_idle()

    assert sorted((r.message_id, r.outcome) for r in runs) == [
        ("a", "completed"),
        ("b", "completed"),
        ("c", "completed"),
        ("later", "completed"),
    ]
    assert broker.clock.now() >= later.timestamp()


def test_host_without_the_broker_stops_when_receives_come_back_empty(broker: TestBroker) -> None:
    broker.publish("host-plain", b"x", message_id=str(uuid.uuid4()))
    with FunctionsHost(broker.connection_string, "host-plain", lambda _: None) as host:
        (run,) = host.run_until_idle()
        assert run.outcome == "completed"
        assert host.run_until_idle() == []
