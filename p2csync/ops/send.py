"""``send``: put a file on a queue as a publisher would (a saved webhook body, an F&O business event)."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from p2csync.queue.base import OutboundMessage, PropertyValue, QueueTransport


class SendResult(BaseModel):
    queue: str
    message_id: str
    size: int
    content_type: str | None


def parse_property(text: str) -> tuple[str, str]:
    """``key=value`` (the value is sent as a string, as Dataverse and F&O send their properties)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--property {text!r}: expected key=value")
    return key.strip(), value


def default_content_type(body: bytes) -> str:
    try:
        json.loads(body)
    except ValueError:
        return "application/octet-stream"
    return "application/json"


async def send_body(transport: QueueTransport, queue: str, body: bytes, *,
                    properties: dict[str, PropertyValue] | None = None, content_type: str | None = None,
                    message_id: str | None = None) -> SendResult:
    """Send ``body``. The default MessageId is a digest of the body [Inferred], so sending one file twice
    within the duplicate detection window is dropped like a publisher's retry; give ``message_id`` to send
    it again on purpose."""
    content_type = content_type or default_content_type(body)
    message_id = message_id or "send:" + hashlib.sha256(body).hexdigest()[:48]
    await transport.send(queue, OutboundMessage(body=body, message_id=message_id, content_type=content_type,
                                                application_properties=dict(properties or {})))
    return SendResult(queue=queue, message_id=message_id, size=len(body), content_type=content_type)
