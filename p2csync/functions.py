"""The bodies of the functions in function_app.py, as plain coroutines a test can call.

The runtime (connectors, ledger, mappings, handlers) is imported on the first invocation, not when the host
indexes function_app.py: indexing stays fast (issue 11, figure 5) and the first call pays the import once.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import azure.functions as func

from p2csync import __version__

if TYPE_CHECKING:
    from p2csync.settlement import MessageActions


def _runtime() -> Any:
    from p2csync.runtime import get_runtime

    return get_runtime()


async def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    from p2csync.ingress import accept_dataverse_webhook

    runtime = _runtime()
    result = await accept_dataverse_webhook(
        req.get_body(), dict(req.headers), runtime.transport, runtime.settings.sales_events_queue,
        max_message_bytes=runtime.settings.servicebus_max_message_bytes,
    )
    return func.HttpResponse(result.json_bytes(), status_code=result.status, mimetype="application/json")


async def queue_message(queue: str, msg: Any, actions: MessageActions) -> None:
    """Process one Service Bus delivery and settle it explicitly (see p2csync.settlement)."""
    from p2csync.runtime import InboundMessage

    await _runtime().handle(InboundMessage.from_trigger(queue, msg), msg, actions)


async def catch_up(timer: Any) -> None:
    """The scheduled catch-up of the F&O -> Sales flows (p2csync/ops/catchup.py)."""
    from p2csync.ops.catchup import catch_up as run

    await run(_runtime())


async def health(req: func.HttpRequest) -> func.HttpResponse:
    runtime = _runtime()
    body = {
        "status": "ok",
        "version": __version__,
        "flows": sorted(runtime.mappings),
        "queues": [runtime.settings.sales_events_queue, runtime.settings.fno_events_queue],
    }
    return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")
