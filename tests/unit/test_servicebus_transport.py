"""The Service Bus transport at the SDK boundary: what reaches ServiceBusSender."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from azure.servicebus import ServiceBusMessage

from p2csync.queue.base import OutboundMessage
from p2csync.queue.servicebus import ServiceBusTransport


class FakeSender:
    def __init__(self, queue: str, log: list[tuple[str, str, Any, Any]]) -> None:
        self.queue, self.log = queue, log

    async def send_messages(self, message: ServiceBusMessage) -> None:
        self.log.append(("send", self.queue, message, None))

    async def schedule_messages(self, message: ServiceBusMessage, at: datetime) -> list[int]:
        self.log.append(("schedule", self.queue, message, at))
        return [4242]

    async def close(self) -> None:
        self.log.append(("close", self.queue, None, None))


class FakeClient:
    def __init__(self) -> None:
        self.log: list[tuple[str, str, Any, Any]] = []
        self.senders_opened = 0
        self.closed = False

    def get_queue_sender(self, queue_name: str) -> FakeSender:
        self.senders_opened += 1
        return FakeSender(queue_name, self.log)

    async def close(self) -> None:
        self.closed = True


def _message(**extra: Any) -> OutboundMessage:
    return OutboundMessage(body=b'{"a":1}', message_id="dataverse:account:abc", correlation_id="corr-1",
                           application_properties={"p2c-deferrals": 2, "x": "y"}, **extra)


async def test_send_keeps_message_id_properties_and_content_type() -> None:
    client = FakeClient()
    transport = ServiceBusTransport(lambda: client)
    await transport.send("sales-events", _message())
    await transport.send("sales-events", _message())
    kind, queue, sent, _ = client.log[0]
    assert (kind, queue) == ("send", "sales-events")
    assert sent.message_id == "dataverse:account:abc"
    assert sent.content_type == "application/json" and sent.correlation_id == "corr-1"
    assert sent.application_properties == {"p2c-deferrals": 2, "x": "y"}
    assert b"".join(sent.body) == b'{"a":1}'
    assert client.senders_opened == 1  # one sender per queue, reused


async def test_schedule_returns_the_sequence_number_and_close_closes_everything() -> None:
    client = FakeClient()
    transport = ServiceBusTransport(lambda: client)
    at = datetime.now(UTC) + timedelta(seconds=30)
    assert await transport.schedule("fno-events", _message(), at) == 4242
    assert client.log[0][0] == "schedule" and client.log[0][3] == at
    await transport.aclose()
    assert ("close", "fno-events", None, None) in client.log and client.closed


async def test_a_message_with_a_scheduled_time_is_scheduled_not_sent() -> None:
    client = FakeClient()
    at = datetime.now(UTC) + timedelta(minutes=1)
    await ServiceBusTransport(lambda: client).send("sales-events", _message(scheduled_enqueue_time_utc=at))
    assert [entry[0] for entry in client.log] == ["schedule"]
