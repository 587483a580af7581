"""An AMQP 1.0 Service Bus test broker for the real azure-servicebus SDK, and a Functions-host
stand-in that drives a handler from it. Test fixtures only: nothing under guardrails/ imports
this package."""

from tests.broker.broker import (
    DEAD_LETTER_SUFFIX,
    INTERNAL_ERROR,
    SERVER_BUSY,
    BrokerMessage,
    Clock,
    FaultOperation,
    TestBroker,
)
from tests.broker.host import FunctionsHost, Invocation, functions_message

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "INTERNAL_ERROR",
    "SERVER_BUSY",
    "BrokerMessage",
    "Clock",
    "FaultOperation",
    "FunctionsHost",
    "Invocation",
    "TestBroker",
    "functions_message",
]
