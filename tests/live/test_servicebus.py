"""The Service Bus client against the test broker: an answer lost on the way back."""

from __future__ import annotations

import pytest

from guardrails.clients.servicebus import QueueClient, servicebus_settings
from guardrails.errors import TransientServiceError
from tests.broker import TestBroker

QUEUE = "lost-answers"


def test_a_lost_schedule_answer_times_out_instead_of_holding_the_client(
    broker: TestBroker,
) -> None:
    settings = servicebus_settings(
        {"SERVICEBUS": broker.connection_string, "SERVICEBUS_QUEUE": QUEUE}
    )
    client = QueueClient(settings, operation_timeout=1.0)
    broker.fail_next("schedule-answer")

    with pytest.raises(TransientServiceError, match="scheduling a retry"):
        client.schedule(
            b"{}", delay=60, message_id="m-1", properties={}, content_type="application/json"
        )

    # It happened (only the answer was lost): the copy is there, a duplicate the ledger knows.
    assert [m.message_id for m in broker.scheduled(QUEUE)] == ["m-1"]
    # And the client is not held: the next schedule is answered.
    sequence = client.schedule(
        b"{}", delay=60, message_id="m-2", properties={}, content_type="application/json"
    )
    assert sequence > 0
    assert sorted(m.message_id or "" for m in broker.scheduled(QUEUE)) == ["m-1", "m-2"]
    client.close()
