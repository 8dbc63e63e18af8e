"""The operator's view of a queue (QueueAdmin): counts and the dead-letter sub-queue, on the embedded queue
and on Service Bus (the SDK faked at its boundary: dead-letter receiver, administration client)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue

from p2csync.queue.base import OutboundMessage, QueueAdmin
from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport
from p2csync.queue.servicebus import ServiceBusTransport, from_sdk_message


def _dead_lettered(queue: EmbeddedQueue, count: int) -> list[int]:
    for i in range(count):
        queue.send("q", OutboundMessage(body=f"body-{i}".encode(), message_id=f"m-{i}",
                                        application_properties={"k": i}))
    for message in queue.receive("q", max_messages=count):
        queue.dead_letter(message.lock_token, "MappingFailed", f"row {message.message_id}")
    return [m.sequence_number for m in queue.peek_dead_letters("q")]


async def test_embedded_counts_peeks_and_deletes_only_the_dead_letters_named(tmp_path: Path) -> None:
    queue = EmbeddedQueue(tmp_path / "q.sqlite")
    admin = EmbeddedTransport(queue)
    assert isinstance(admin, QueueAdmin)
    numbers = _dead_lettered(queue, 3)
    queue.send("q", OutboundMessage(body=b"live", message_id="live"))
    counts = await admin.counts("q")
    assert (counts.active, counts.dead_lettered) == (1, 3)
    peeked = await admin.peek_dead_letters("q", max_messages=2)
    assert [m.message_id for m in peeked] == ["m-0", "m-1"]
    assert peeked[0].dead_letter_reason == "MappingFailed" and peeked[0].application_properties == {"k": 0}
    assert await admin.delete_dead_letters("q", [numbers[1], 999_999]) == {numbers[1]}
    assert [m.message_id for m in await admin.peek_dead_letters("q")] == ["m-0", "m-2"]
    live = queue.peek("q")[0].sequence_number
    assert await admin.delete_dead_letters("q", [live]) == set()  # an active message is not a dead letter
    assert (await admin.counts("q")).active == 1


def _sdk(seq: int, **extra: Any) -> SimpleNamespace:
    fields: dict[str, Any] = dict(
        body=iter([b'{"a":', b"1}"]), message_id=f"id-{seq}".encode(), content_type="application/json",
        subject=None, correlation_id=None, application_properties={b"p2c-deferrals": 3, b"k": b"v"},
        sequence_number=seq, delivery_count=1, enqueued_time_utc=datetime(2025, 3, 1, tzinfo=UTC),
        expires_at_utc=None, dead_letter_reason="MappingFailed", dead_letter_error_description="no number",
        dead_letter_source=None, state=None,
    )
    fields.update(extra)
    return SimpleNamespace(**fields)


class FakeDeadLetterReceiver:
    def __init__(self, client: FakeClient) -> None:
        self.client = client

    async def peek_messages(self, max_message_count: int, sequence_number: int = 0) -> list[Any]:
        self.client.peeks.append((max_message_count, sequence_number))
        ready = [m for m in self.client.dead if m.sequence_number >= sequence_number]
        return [_sdk(m.sequence_number) for m in ready[:min(max_message_count, 2)]]  # short pages, as SB may

    async def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Any]:
        ready = [m for m in self.client.dead if m.sequence_number not in self.client.locked]
        batch = ready[:2]
        self.client.locked.update(m.sequence_number for m in batch)
        return batch

    async def complete_message(self, message: Any) -> None:
        self.client.dead.remove(message)
        self.client.log.append(("complete", message.sequence_number))

    async def abandon_message(self, message: Any) -> None:
        self.client.locked.discard(message.sequence_number)
        self.client.log.append(("abandon", message.sequence_number))

    async def close(self) -> None:
        self.client.log.append(("close", None))


class FakeClient:
    def __init__(self, count: int) -> None:
        self.dead = [_sdk(seq) for seq in range(1, count + 1)]
        self.locked: set[int] = set()
        self.peeks: list[tuple[int, int]] = []
        self.log: list[tuple[str, Any]] = []
        self.receivers: list[dict[str, Any]] = []

    def get_queue_receiver(self, **kwargs: Any) -> FakeDeadLetterReceiver:
        self.receivers.append(kwargs)
        return FakeDeadLetterReceiver(self)


class FakeAdmin:
    def __init__(self) -> None:
        self.closed = False

    async def get_queue_runtime_properties(self, queue: str) -> Any:
        return SimpleNamespace(active_message_count=4, scheduled_message_count=2, dead_letter_message_count=5)

    async def close(self) -> None:
        self.closed = True


async def test_service_bus_peeks_the_dead_letter_sub_queue_page_by_page() -> None:
    client = FakeClient(5)
    transport = ServiceBusTransport(lambda: client)
    assert isinstance(transport, QueueAdmin)
    peeked = await transport.peek_dead_letters("sales-events", max_messages=4)
    assert [m.sequence_number for m in peeked] == [1, 2, 3, 4]
    assert client.peeks == [(4, 0), (2, 3)]  # the second page starts after the last one seen
    assert client.receivers[0]["sub_queue"] == ServiceBusSubQueue.DEAD_LETTER
    assert client.receivers[0]["receive_mode"] == ServiceBusReceiveMode.PEEK_LOCK
    first = peeked[0]
    assert (first.message_id, first.body, first.dead_letter_reason) == ("id-1", b'{"a":1}', "MappingFailed")
    assert first.application_properties == {"p2c-deferrals": 3, "k": "v"}  # AMQP bytes become text


async def test_service_bus_deletes_by_completing_the_wanted_and_abandons_the_rest_at_the_end() -> None:
    client = FakeClient(5)
    deleted = await ServiceBusTransport(lambda: client).delete_dead_letters("sales-events", {2, 4, 77}, max_wait=0)
    assert deleted == {2, 4}
    assert [m.sequence_number for m in client.dead] == [1, 3, 5]
    completes = [s for kind, s in client.log if kind == "complete"]
    abandons = [s for kind, s in client.log if kind == "abandon"]
    assert completes == [2, 4] and sorted(abandons) == [1, 3, 5]
    assert client.log.index(("abandon", 1)) > client.log.index(("complete", 4))  # held until the end
    assert client.log[-1] == ("close", None)


async def test_service_bus_counts_come_from_the_runtime_properties() -> None:
    admin = FakeAdmin()
    counts = await ServiceBusTransport(lambda: None, admin_factory=lambda: admin).counts("fno-events")
    assert (counts.active, counts.scheduled, counts.locked, counts.dead_lettered) == (4, 2, 0, 5)
    assert admin.closed


def test_an_sdk_message_without_id_or_zone_still_converts() -> None:
    message = from_sdk_message("q", _sdk(9, message_id=None, body=b"raw",
                                         enqueued_time_utc=datetime(2025, 3, 1) + timedelta(hours=1)))
    assert message.message_id == "(no id: #9)" and message.body == b"raw"
    assert message.enqueued_time_utc.tzinfo is not None
