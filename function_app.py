"""Azure Functions entry point: wires the Service Bus trigger to the guardrail, nothing more."""

from __future__ import annotations

from pathlib import Path

import azure.functions as func

from guardrails.worker import worker_from_environment

app = func.FunctionApp()
# Settings and the policy are checked here, at start-up: a misconfigured app fails once with
# every problem listed, not on each message.
worker = worker_from_environment(Path(__file__).resolve().parent)


@app.function_name("mailbox_guardrail")
@app.service_bus_queue_trigger(
    arg_name="message", queue_name="%SERVICEBUS_QUEUE%", connection="SERVICEBUS"
)
def mailbox_guardrail(message: func.ServiceBusMessage) -> None:
    worker.handle(
        message.get_body(),
        message_id=message.message_id,
        properties=message.application_properties,
        content_type=message.content_type,
        enqueued_time=message.enqueued_time_utc,
    )
