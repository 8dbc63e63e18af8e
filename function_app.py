"""Azure Functions entry point (Python v2 model): bindings only; the work is in p2csync.

- POST /api/dataverse/webhook  (auth FUNCTION: Dataverse WebhookKey auth sends the function key as `code`)
- Service Bus queue triggers on `sales-events` and `fno-events` (identity-based connection ServiceBusConnection)
- GET  /api/health             (anonymous)
"""

from __future__ import annotations

import azure.functions as func

from p2csync import functions

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("dataverse_webhook")
@app.route(route="dataverse/webhook", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    return await functions.dataverse_webhook(req)


@app.function_name("sales_events")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="sales-events", connection="ServiceBusConnection")
async def sales_events(msg: func.ServiceBusMessage) -> None:
    await functions.queue_message("sales-events", msg)


@app.function_name("fno_events")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="fno-events", connection="ServiceBusConnection")
async def fno_events(msg: func.ServiceBusMessage) -> None:
    await functions.queue_message("fno-events", msg)


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return await functions.health(req)
