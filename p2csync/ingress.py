"""The Dataverse webhook: validate, enqueue with a deterministic MessageId, answer 202 fast.

Dataverse counts only the status code, waits at most 60 s and retries only 502/503/504, once. So the
webhook does the least that makes the event durable (one queue send) and answers; the work happens behind
the queue. A body that can never be processed gets a 4xx with a reason (Dataverse records the failed
system job), a transient queue failure a 503 (Dataverse tries once more).

Sizes. Dataverse trims a webhook payload above 256 KB, so a larger body is not from Dataverse (413). A
Service Bus message counts its properties as well as its body against the maximum message size (256 KB on
Standard), so a body just under 256 KB does not fit once its properties are added; the webhook then does
what Dataverse itself does for a Service Bus endpoint: it enqueues the context without ParentContext,
InputParameters and the images, flagged `MessageMaxSizeExceeded`, and the handler fetches the record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from p2csync import telemetry
from p2csync.envelopes import (INGRESS_PROPERTY, WEBHOOK_INGRESS, EnvelopeError, dedupe_message_id, parse_change_event,
                               recent_parses, trim_context_body)
from p2csync.envelopes.event import PROPERTY_MESSAGE_MAX_SIZE_EXCEEDED
from p2csync.queue.base import OutboundMessage, QueueTransport
from p2csync.queue.sizing import MAX_MESSAGE_BYTES_STANDARD, MessageSizeExceeded, serialized_size

log = logging.getLogger("p2csync.ingress")

MAX_BODY_BYTES = 256 * 1024  # Dataverse trims payloads above 256 KB, so a larger body is not from Dataverse
CLAIMS = "http://schemas.microsoft.com/xrm/2011/Claims/"
SIZE_EXCEEDED_HEADER = "x-ms-dynamics-msg-size-exceeded"
#: [Inferred] Room left for the properties a deferral adds to a copy of the message (p2c-deferrals and the
#: original MessageId), so a message that fits can always be rescheduled.
DEFERRAL_HEADROOM = 512


class IngressResult(BaseModel):
    status: int
    body: dict[str, Any]

    def json_bytes(self) -> bytes:
        return json.dumps(self.body).encode()


def _error(status: int, code: str, message: str, **extra: Any) -> IngressResult:
    return IngressResult(status=status, body={"error": {"code": code, "message": message, **extra}})


async def accept_dataverse_webhook(
    body: bytes, headers: Mapping[str, str], transport: QueueTransport | None, queue: str, *,
    max_message_bytes: int = MAX_MESSAGE_BYTES_STANDARD,
) -> IngressResult:
    """Validate one webhook POST and put it on ``queue``, inside the change's telemetry scope: its correlation
    id (Dataverse's ``x-ms-correlation-request-id``, else a new one) and the ingress span, both carried on the
    message (``telemetry.stamp``). Never raises for bad input."""
    with telemetry.ingress(headers) as scope:
        result = await _accept(body, headers, transport, queue, max_message_bytes=max_message_bytes)
        scope.finish(result.status, result.body.get("messageId"))
    return result


async def _accept(
    body: bytes, headers: Mapping[str, str], transport: QueueTransport | None, queue: str, *,
    max_message_bytes: int = MAX_MESSAGE_BYTES_STANDARD,
) -> IngressResult:
    """Validate one webhook POST and put it on ``queue``. Never raises for bad input.

    ``max_message_bytes``: the queue's maximum message size (the setting P2C_SERVICEBUS_MAX_MESSAGE_BYTES)."""
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
        INGRESS_PROPERTY: WEBHOOK_INGRESS,
    }
    if org := lowered.get("x-ms-dynamics-organization"):
        properties[f"{CLAIMS}Organization"] = org
    if correlation := lowered.get("x-ms-correlation-request-id"):
        properties["x-ms-correlation-request-id"] = correlation
    if SIZE_EXCEEDED_HEADER in lowered:
        properties[PROPERTY_MESSAGE_MAX_SIZE_EXCEEDED] = True
    message_id = dedupe_message_id(event)
    telemetry.adopt_correlation_id(event.correlation_id)  # the context's own CorrelationId when no header had one
    telemetry.annotate(message_id=message_id)
    telemetry.stamp(properties)  # the correlation id and the trace context travel with the message
    message = OutboundMessage(
        body=body,
        message_id=message_id,
        content_type="application/json",
        correlation_id=event.correlation_id,
        application_properties=properties,
    )
    trimmed = serialized_size(message) + DEFERRAL_HEADROOM > max_message_bytes
    if trimmed:
        message = _trimmed(message)
    else:  # before the send: the queue trigger of this process may take the message at once
        recent_parses.remember(message.body, event)
    try:
        try:
            await transport.send(queue, message)
        except MessageSizeExceeded:
            if trimmed:
                raise
            trimmed, message = True, _trimmed(message)  # the queue counts differently: trim as Dataverse does
            await transport.send(queue, message)
    except MessageSizeExceeded as exc:
        return _error(413, "PayloadTooLarge", f"the event does not fit on the queue even without its images and "
                      f"input parameters: {exc}")
    except Exception as exc:  # the queue is down: 503 makes Dataverse try once more
        log.warning("enqueue failed for %s: %s", message_id, type(exc).__name__)
        return _error(503, "QueueUnavailable", f"could not enqueue the event ({type(exc).__name__}); retry later")
    if trimmed:
        log.info("enqueued %s trimmed (%d byte body): the handler fetches the record", message_id, len(body))
    return IngressResult(status=202, body={"messageId": message_id, "queue": queue, "entity": event.entity,
                                           "message": event.message_name, "trimmed": trimmed})


def _trimmed(message: OutboundMessage) -> OutboundMessage:
    """The message as Dataverse sends one that is too large for the queue: the context without its bulky
    members, flagged MessageMaxSizeExceeded."""
    properties = {**message.application_properties, PROPERTY_MESSAGE_MAX_SIZE_EXCEEDED: True}
    return message.model_copy(update={"body": trim_context_body(message.body), "application_properties": properties})
