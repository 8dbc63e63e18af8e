"""Azure Functions entry point (Python v2 model): bindings only; the work is in p2csync.

- POST /api/dataverse/webhook  (auth FUNCTION: Dataverse WebhookKey auth sends the function key as `code`)
- Service Bus queue triggers on `sales-events` and `fno-events` (identity-based connection ServiceBusConnection),
  with SDK-type bindings and autoCompleteMessages off: the runtime settles every message itself through
  `message_actions` (complete, or dead-letter with a reason), see p2csync/settlement.py
- GET  /api/health             (anonymous)
- a timer trigger `catch_up` on the schedule of the app setting P2C_CATCHUP_SCHEDULE (NCRONTAB): the scheduled
  catch-up of the F&O -> Sales flows (reconcile, then resync what differs); the local host does not run timers

No `from __future__ import annotations` here: the Python worker reads the parameter annotations to bind the
SDK types, so they must be classes, not strings.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from p2csync import functions

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("dataverse_webhook")
@app.route(route="dataverse/webhook", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    return await functions.dataverse_webhook(req)


@app.function_name("sales_events")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="sales-events", connection="ServiceBusConnection",
                               auto_complete_messages=False)
async def sales_events(msg: servicebus.ServiceBusReceivedMessage,
                       message_actions: servicebus.ServiceBusMessageActions) -> None:
    await functions.queue_message("sales-events", msg, message_actions)


@app.function_name("fno_events")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="fno-events", connection="ServiceBusConnection",
                               auto_complete_messages=False)
async def fno_events(msg: servicebus.ServiceBusReceivedMessage,
                     message_actions: servicebus.ServiceBusMessageActions) -> None:
    await functions.queue_message("fno-events", msg, message_actions)


@app.function_name("catch_up")
@app.timer_trigger(arg_name="timer", schedule="%P2C_CATCHUP_SCHEDULE%", run_on_startup=False)
async def catch_up(timer: func.TimerRequest) -> None:
    await functions.catch_up(timer)


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return await functions.health(req)
