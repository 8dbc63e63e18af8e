"""Sizes at the webhook (issue 7, point 9): Service Bus counts properties as well as the body, so a body just
under 256 KB is enqueued trimmed the way Dataverse trims (members removed, MessageMaxSizeExceeded), the
queues refuse what does not fit as Service Bus does, and the local host stops reading an oversize body at
its limit."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport

from p2csync.envelopes import parse_change_event
from p2csync.envelopes.event import TRIMMED_MEMBERS
from p2csync.ingress import MAX_BODY_BYTES, accept_dataverse_webhook
from p2csync.queue.base import OutboundMessage
from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport
from p2csync.queue.servicebus import to_sdk_message
from p2csync.queue.sizing import MAX_MESSAGE_BYTES_STANDARD, MessageSizeExceeded, serialized_size

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes"
CREATE = json.loads((FIXTURES / "dataverse_create_account.json").read_text())
QUEUE = "sales-events"
HEADERS = {  # what Dataverse sends with a webhook POST (wire-formats 1.2)
    "Content-Type": "application/json",
    "x-ms-dynamics-organization": "contoso.crm.dynamics.com",
    "x-ms-dynamics-entity-name": "account",
    "x-ms-dynamics-request-name": "Create",
    "x-ms-correlation-request-id": "9d4c7524-a578-4783-b608-73f7b0b68fd2",
}


def body_of_size(size: int) -> bytes:
    """A Create of account whose JSON body is exactly ``size`` bytes (a long description column)."""
    data = copy.deepcopy(CREATE)
    attrs = data["InputParameters"][0]["value"]["Attributes"]
    attrs.append({"key": "description", "value": ""})
    base = len(json.dumps(data).encode())
    attrs[-1]["value"] = "d" * (size - base)
    body = json.dumps(data).encode()
    assert len(body) == size
    return body


def sdk_encoded_size(message: OutboundMessage) -> int:
    sdk = to_sdk_message(message)
    return PyamqpTransport.get_message_encoded_size(PyamqpTransport.to_outgoing_amqp_message(sdk.raw_amqp_message))


@pytest.mark.parametrize("properties", [
    {},
    {"http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName": "account", "p2c-deferrals": 3,
     "MessageMaxSizeExceeded": True, "ratio": 0.5, "ünïcode-kéy": "välue" * 20},
])
@pytest.mark.parametrize("body_size", [0, 200, 255 * 1024])
def test_the_size_estimate_is_never_below_what_the_sdk_encodes(properties, body_size):
    message = OutboundMessage(body=b"x" * body_size, message_id="sb:account:" + "a" * 64,
                              correlation_id="9d4c7524-a578-4783-b608-73f7b0b68fd2",
                              application_properties=properties)
    encoded = sdk_encoded_size(message)
    assert encoded <= serialized_size(message) <= encoded + 1024


def test_the_embedded_queue_refuses_a_body_under_the_limit_whose_properties_push_it_over(tmp_path):
    queue = EmbeddedQueue(tmp_path / "q.sqlite")
    message = OutboundMessage(body=b"x" * (MAX_MESSAGE_BYTES_STANDARD - 100), message_id="m1",
                              application_properties={"x-ms-correlation-request-id": "c" * 36, "p": "v" * 200})
    with pytest.raises(MessageSizeExceeded) as info:
        queue.send(QUEUE, message)
    assert info.value.limit == MAX_MESSAGE_BYTES_STANDARD and info.value.size > MAX_MESSAGE_BYTES_STANDARD
    assert "maximum message size" in str(info.value)
    assert queue.peek(QUEUE) == []
    assert queue.send(QUEUE, message.model_copy(update={"body": b"x" * 1000})) is not None


async def test_a_body_just_under_256_kb_is_enqueued_trimmed_like_dataverse_does(tmp_path):
    body = body_of_size(MAX_BODY_BYTES - 5)
    queue = EmbeddedQueue(tmp_path / "q.sqlite")  # Standard tier: 256 KB including properties
    result = await accept_dataverse_webhook(body, HEADERS, EmbeddedTransport(queue), QUEUE)

    assert result.status == 202, result.body
    assert result.body["trimmed"] is True
    [message] = queue.peek(QUEUE)
    assert message.application_properties["MessageMaxSizeExceeded"] is True
    sent = json.loads(message.body)
    for member in TRIMMED_MEMBERS:
        assert member not in sent  # removed, not emptied
    assert sent["OperationId"] == CREATE["OperationId"] and sent["PrimaryEntityId"] == CREATE["PrimaryEntityId"]
    event = parse_change_event(message.body, message.application_properties)
    original = parse_change_event(body)
    assert event.trimmed and not event.is_complete  # the handler fetches the record
    assert event.dedupe_key == original.dedupe_key and message.message_id == result.body["messageId"]


async def test_a_body_that_fits_is_enqueued_whole(tmp_path):
    queue = EmbeddedQueue(tmp_path / "q.sqlite")
    body = body_of_size(200 * 1024)
    result = await accept_dataverse_webhook(body, HEADERS, EmbeddedTransport(queue), QUEUE)
    assert result.status == 202 and result.body["trimmed"] is False
    [message] = queue.peek(QUEUE)
    assert message.body == body and "MessageMaxSizeExceeded" not in message.application_properties


async def test_the_limit_is_a_setting(tmp_path):
    queue = EmbeddedQueue(tmp_path / "q.sqlite", max_message_bytes=1024 * 1024)  # a Premium queue (1 MB)
    body = body_of_size(MAX_BODY_BYTES - 5)
    result = await accept_dataverse_webhook(body, HEADERS, EmbeddedTransport(queue), QUEUE,
                                            max_message_bytes=1024 * 1024)
    assert result.status == 202 and result.body["trimmed"] is False
    assert queue.peek(QUEUE)[0].body == body


class StricterQueue:
    """A queue that counts more than our estimate (refuses anything over ``limit`` body bytes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[OutboundMessage] = []

    async def send(self, queue: str, message: OutboundMessage) -> None:
        if len(message.body) > self.limit:
            raise MessageSizeExceeded(len(message.body), self.limit)
        self.sent.append(message)

    async def schedule(self, queue: str, message: OutboundMessage, at: datetime) -> int:
        raise AssertionError("never scheduled")


async def test_a_queue_refusal_falls_back_to_the_trimmed_message():
    transport = StricterQueue(limit=10_000)
    result = await accept_dataverse_webhook(body_of_size(50_000), HEADERS, transport, QUEUE)
    assert result.status == 202 and result.body["trimmed"] is True
    [sent] = transport.sent
    assert sent.application_properties["MessageMaxSizeExceeded"] is True
    assert "InputParameters" not in json.loads(sent.body)


async def test_what_does_not_fit_even_trimmed_is_413_not_503():
    transport = StricterQueue(limit=100)
    result = await accept_dataverse_webhook(body_of_size(50_000), HEADERS, transport, QUEUE)
    assert result.status == 413 and result.body["error"]["code"] == "PayloadTooLarge"
    assert transport.sent == []


# --- the local host reads the body as a stream --------------------------------------------------------


class Upload:
    """An ASGI ``receive`` that hands out a chunked body of ``total`` bytes and counts what was pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total, self.chunk, self.pulled = total, chunk, 0

    async def __call__(self) -> dict[str, Any]:
        if self.pulled >= self.total:
            return {"type": "http.disconnect"}
        size = min(self.chunk, self.total - self.pulled)
        self.pulled += size
        return {"type": "http.request", "body": b"x" * size, "more_body": self.pulled < self.total}


async def call_webhook(host: Any, upload: Upload, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/dataverse/webhook", "raw_path": b"/api/dataverse/webhook",
             "query_string": b"code=test-key", "root_path": "", "server": ("127.0.0.1", 7071),
             "client": ("127.0.0.1", 5000), "headers": [(b"host", b"127.0.0.1:7071"), *headers]}
    statuses: list[int] = []

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            statuses.append(event["status"])

    await host.asgi_app()(scope, upload, send)
    return statuses[0]


@pytest.fixture
def local_host(runtime_env):
    import function_app
    from p2csync.localhost import LocalHost

    class NoQueue:
        async def receive_wait(self, *args: Any) -> list[Any]:
            return []

    return LocalHost(function_app.app, NoQueue(), function_key="test-key", max_request_body_bytes=1024 * 1024)


async def test_an_oversize_chunked_body_is_refused_without_reading_it_whole(local_host):
    upload = Upload(total=200 * 1024 * 1024)  # 200 MB, chunked: no Content-Length
    status = await call_webhook(local_host, upload, [(b"transfer-encoding", b"chunked")])
    assert status == 413
    assert upload.pulled <= 1024 * 1024 + upload.chunk  # stopped at the limit, not after 200 MB


async def test_a_declared_oversize_body_is_refused_before_reading(local_host):
    upload = Upload(total=200 * 1024 * 1024)
    status = await call_webhook(local_host, upload, [(b"content-length", str(upload.total).encode())])
    assert status == 413 and upload.pulled == 0


async def test_a_body_under_the_host_limit_reaches_the_function(local_host):
    upload = Upload(total=300 * 1024)  # over the webhook's 256 KB: the function answers 413 itself
    status = await call_webhook(local_host, upload, [(b"transfer-encoding", b"chunked")])
    assert status == 413 and upload.pulled == upload.total


def test_the_host_limit_comes_from_the_functions_setting():
    from p2csync.localhost import DEFAULT_BODY_LIMIT, request_body_limit

    assert request_body_limit({}) == DEFAULT_BODY_LIMIT == 104857600
    assert request_body_limit({"FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": "1048576"}) == 1048576
    with pytest.raises(ValueError, match="FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"):
        request_body_limit({"FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": "1 MB"})
