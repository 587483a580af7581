"""pytest fixtures for the Service Bus test broker.

Opening an SDK sender or receiver costs about 0.45 s and closing one about 0.54 s, so the broker,
the client and the clients on the default queue live for the whole session; the function-scoped
`broker` fixture resets the broker's state around every test instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.functions.servicebus import ServiceBusMessage as FunctionsMessage
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusReceiver,
    ServiceBusSender,
    ServiceBusSubQueue,
)

from tests.broker.broker import TestBroker
from tests.broker.host import FunctionsHost

QUEUE = "mailbox-events"  # the queue the session-scoped sender and receivers are attached to
# The session's Functions host has a queue of its own: between runs its parked receivers may
# hold credit, and would take messages meant for the receivers on QUEUE.
HOST_QUEUE = "functions-host"


@pytest.fixture(scope="session")
def servicebus_broker() -> Iterator[TestBroker]:
    """The session's broker, as left by the last test; most tests want `broker`."""
    with TestBroker() as broker:
        yield broker


@pytest.fixture
def broker(servicebus_broker: TestBroker) -> Iterator[TestBroker]:
    """The session's broker, empty at the start of the test, checked for internal errors at the
    end (a handler bug inside the broker would otherwise show up only as an SDK timeout)."""
    servicebus_broker.reset()
    yield servicebus_broker
    errors = list(servicebus_broker.errors)
    servicebus_broker.reset()
    if errors:
        pytest.fail(f"the test broker failed internally: {errors!r}")


@pytest.fixture(scope="session")
def servicebus_client(servicebus_broker: TestBroker) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(servicebus_broker.connection_string) as client:
        yield client


@pytest.fixture(scope="session")
def servicebus_sender(servicebus_client: ServiceBusClient) -> Iterator[ServiceBusSender]:
    """A sender on `QUEUE`, opened once for the session."""
    with servicebus_client.get_queue_sender(QUEUE) as sender:
        yield sender


@pytest.fixture(scope="session")
def servicebus_receiver(servicebus_client: ServiceBusClient) -> Iterator[ServiceBusReceiver]:
    """A peek-lock receiver on `QUEUE` that waits at most a second per receive."""
    with servicebus_client.get_queue_receiver(QUEUE, max_wait_time=1) as receiver:
        yield receiver


@pytest.fixture(scope="session")
def servicebus_dead_letter_receiver(
    servicebus_client: ServiceBusClient,
) -> Iterator[ServiceBusReceiver]:
    """A peek-lock receiver on `QUEUE`'s dead-letter sub-queue."""
    with servicebus_client.get_queue_receiver(
        QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=1
    ) as receiver:
        yield receiver


def _no_handler(message: FunctionsMessage) -> None:
    raise RuntimeError(f"set functions_host.handler before running (message {message.message_id})")


@pytest.fixture(scope="session")
def servicebus_functions_host(servicebus_broker: TestBroker) -> Iterator[FunctionsHost]:
    """A Functions host on `HOST_QUEUE` with two concurrent calls, opened once per session."""
    with FunctionsHost(
        servicebus_broker.connection_string,
        HOST_QUEUE,
        _no_handler,
        broker=servicebus_broker,
        max_concurrent_calls=2,
    ) as host:
        yield host


@pytest.fixture
def functions_host(
    broker: TestBroker, servicebus_functions_host: FunctionsHost
) -> Iterator[FunctionsHost]:
    """The session's Functions host on a reset broker; set `.handler`, then `run_until_idle()`."""
    yield servicebus_functions_host
    servicebus_functions_host.handler = _no_handler
