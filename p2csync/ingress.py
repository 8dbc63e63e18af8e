"""The Dataverse webhook: validate, enqueue with a deterministic MessageId, answer 202 fast.

Dataverse counts only the status code, waits at most 60 s and retries only 502/503/504, once. So the
webhook does the least that makes the event durable (one queue send) and answers; the work happens behind
the queue. A body that can never be processed gets a 4xx with a reason (Dataverse records the failed
system job), a transient queue failure a 503 (Dataverse tries once more).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from p2csync.envelopes import EnvelopeError, dedupe_message_id, parse_change_event
from p2csync.queue.base import OutboundMessage, QueueTransport

log = logging.getLogger("p2csync.ingress")

MAX_BODY_BYTES = 256 * 1024  # Dataverse trims payloads above 256 KB, so a larger body is not from Dataverse
CLAIMS = "http://schemas.microsoft.com/xrm/2011/Claims/"
SIZE_EXCEEDED_HEADER = "x-ms-dynamics-msg-size-exceeded"


class IngressResult(BaseModel):
    status: int
    body: dict[str, Any]

    def json_bytes(self) -> bytes:
        return json.dumps(self.body).encode()


def _error(status: int, code: str, message: str, **extra: Any) -> IngressResult:
    return IngressResult(status=status, body={"error": {"code": code, "message": message, **extra}})


async def accept_dataverse_webhook(
    body: bytes, headers: Mapping[str, str], transport: QueueTransport | None, queue: str
) -> IngressResult:
    """Validate one webhook POST and put it on ``queue``. Never raises for bad input."""
    if len(body) > MAX_BODY_BYTES:
        return _error(413, "PayloadTooLarge", f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        event = parse_change_event(body, None, headers=lowered)
    except EnvelopeError as exc:
        return _error(400, "MalformedPayload", str(exc), member=exc.member)
    if event.source != "dataverse" and event.source != "fno_data_event":
        return _error(400, "UnsupportedPayload", "the webhook accepts Dataverse RemoteExecutionContext JSON only")
    if transport is None:
        return _error(503, "QueueUnavailable", "no queue transport is configured")

    properties: dict[str, str | int | float | bool] = {
        f"{CLAIMS}EntityLogicalName": event.entity,
        f"{CLAIMS}RequestName": event.message_name,
        "p2c-received-at": datetime.now(UTC).isoformat(),
        "p2c-ingress": "webhook",
    }
    if org := lowered.get("x-ms-dynamics-organization"):
        properties[f"{CLAIMS}Organization"] = org
    if correlation := lowered.get("x-ms-correlation-request-id"):
        properties["x-ms-correlation-request-id"] = correlation
    if SIZE_EXCEEDED_HEADER in lowered:
        properties["MessageMaxSizeExceeded"] = True
    message_id = dedupe_message_id(event)
    message = OutboundMessage(
        body=body,
        message_id=message_id,
        content_type="application/json",
        correlation_id=event.correlation_id,
        application_properties=properties,
    )
    try:
        await transport.send(queue, message)
    except Exception as exc:  # the queue is down: 503 makes Dataverse try once more
        log.warning("enqueue failed for %s: %s", message_id, type(exc).__name__)
        return _error(503, "QueueUnavailable", f"could not enqueue the event ({type(exc).__name__}); retry later")
    return IngressResult(status=202, body={"messageId": message_id, "queue": queue, "entity": event.entity,
                                           "message": event.message_name})
