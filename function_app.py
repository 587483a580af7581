"""Azure Functions entry point: wires the triggers to the guardrail, nothing more.

Start-up imports what the first message needs and no more: the sweep (`guardrails.reconcile`)
is imported when the timer first fires, the SDKs and Jinja on first use. The cyclic garbage
collector is paused while start-up builds what lives as long as the process (modules, classes,
the policy, the worker: nothing there is garbage), and those objects are then frozen, so neither
start-up nor any later collection walks them again.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import azure.functions as func

DEFAULT_SCHEDULE = "0 0 2 * * *"  # NCRONTAB: every night at 02:00 UTC

gc.disable()
try:
    from guardrails.worker import Worker, build_sweep, worker_from_environment

    app = func.FunctionApp()
    # Settings and the policy are checked here, at start-up: a misconfigured app fails once with
    # every problem listed, not on each message.
    worker: Worker = worker_from_environment(Path(__file__).resolve().parent)
finally:
    gc.freeze()
    gc.enable()


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


@app.function_name("reconcile")
@app.timer_trigger(
    arg_name="timer",
    schedule=os.environ.get("GUARDRAILS_RECONCILE_SCHEDULE") or DEFAULT_SCHEDULE,
    run_on_startup=False,
)
def reconcile(timer: func.TimerRequest) -> None:
    """The nightly sweep for what events missed; quiet (its run record and audit records say
    what it did)."""
    build_sweep(worker).run()
