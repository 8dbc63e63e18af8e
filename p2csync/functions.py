"""The bodies of the functions in function_app.py, as plain coroutines a test can call."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from p2csync import __version__
from p2csync.ingress import accept_dataverse_webhook
from p2csync.runtime import InboundMessage, get_runtime
from p2csync.settlement import MessageActions


async def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    runtime = get_runtime()
    result = await accept_dataverse_webhook(
        req.get_body(), dict(req.headers), runtime.transport, runtime.settings.sales_events_queue,
        max_message_bytes=runtime.settings.servicebus_max_message_bytes,
    )
    return func.HttpResponse(result.json_bytes(), status_code=result.status, mimetype="application/json")


async def queue_message(queue: str, msg: Any, actions: MessageActions) -> None:
    """Process one Service Bus delivery and settle it explicitly (see p2csync.settlement)."""
    await get_runtime().handle(InboundMessage.from_trigger(queue, msg), msg, actions)


async def catch_up(timer: Any) -> None:
    """The scheduled catch-up of the F&O -> Sales flows (p2csync/ops/catchup.py)."""
    from p2csync.ops.catchup import catch_up as run

    await run(get_runtime())


async def health(req: func.HttpRequest) -> func.HttpResponse:
    runtime = get_runtime()
    body = {
        "status": "ok",
        "version": __version__,
        "flows": sorted(runtime.mappings),
        "queues": [runtime.settings.sales_events_queue, runtime.settings.fno_events_queue],
    }
    return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")
