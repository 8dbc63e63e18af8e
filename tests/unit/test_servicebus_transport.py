"""The Service Bus transport at the SDK boundary: what reaches ServiceBusSender and ServiceBusReceiver."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

from p2csync.queue.base import MessageLockLost, OutboundMessage, QueueConsumer
from p2csync.queue.servicebus import ServiceBusTransport
from tests.functions_host import host_message


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


# -- the consumer side: what the local host does to Service Bus when a namespace is configured ----------


class FakeReceiver:
    """The ``ServiceBusReceiver`` (aio) surface the consumer uses; settles only what it handed out."""

    def __init__(self, queue: str, kwargs: dict[str, Any], inbox: list[Any], log: list[tuple]) -> None:
        self.queue, self.kwargs, self.inbox, self.log = queue, kwargs, inbox, log
        self.out: set[str] = set()
        self.expired: set[str] = set()

    async def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Any]:
        self.log.append(("receive", self.queue, max_message_count, max_wait_time))
        batch, self.inbox[:] = self.inbox[:max_message_count], self.inbox[max_message_count:]
        self.out |= {str(m.lock_token) for m in batch}
        return batch

    def _held(self, message: Any) -> None:
        token = str(message.lock_token)
        if token in self.expired:
            raise MessageLockLostError(message="lock expired")
        if token not in self.out:
            raise MessageAlreadySettled(action="settle")

    async def complete_message(self, message: Any) -> None:
        self._held(message)
        self.out.discard(str(message.lock_token))
        self.log.append(("complete", self.queue, message.message_id, None))

    async def abandon_message(self, message: Any) -> None:
        self._held(message)
        self.out.discard(str(message.lock_token))
        self.log.append(("abandon", self.queue, message.message_id, None))

    async def dead_letter_message(self, message: Any, reason: str | None = None,
                                  error_description: str | None = None) -> None:
        self._held(message)
        self.out.discard(str(message.lock_token))
        self.log.append(("deadletter", self.queue, message.message_id, (reason, error_description)))

    async def renew_message_lock(self, message: Any) -> datetime:
        self._held(message)
        self.log.append(("renew", self.queue, message.message_id, None))
        return datetime.now(UTC) + timedelta(seconds=60)

    async def close(self) -> None:
        self.log.append(("close-receiver", self.queue, None, None))


class FakeNamespace(FakeClient):
    def __init__(self, inboxes: dict[str, list[Any]]) -> None:
        super().__init__()
        self.inboxes = inboxes
        self.receivers: dict[str, FakeReceiver] = {}

    def get_queue_receiver(self, queue_name: str, **kwargs: Any) -> FakeReceiver:
        receiver = self.receivers[queue_name] = FakeReceiver(queue_name, kwargs, self.inboxes.setdefault(
            queue_name, []), self.log)
        return receiver


async def test_receive_is_peek_lock_without_prefetch_and_settles_on_the_receiving_link() -> None:
    client = FakeNamespace({"sales-events": [host_message(b"a", message_id="a"), host_message(b"b", message_id="b")],
                            "fno-events": [host_message(b"c", message_id="c")]})
    transport = ServiceBusTransport(lambda: client)
    assert isinstance(transport, QueueConsumer)
    [a] = await transport.receive_wait("sales-events", 1, timeout=5)
    [c] = await transport.receive_wait("fno-events", 1, timeout=5)
    receiver = client.receivers["sales-events"]
    assert receiver.kwargs == {"receive_mode": ServiceBusReceiveMode.PEEK_LOCK, "prefetch_count": 0}
    assert await transport.renew_lock(a) > datetime.now(UTC)
    await transport.dead_letter(a, "MappingFailed", "accountnumber is required")
    await transport.complete(c)
    [b] = await transport.receive_wait("sales-events", 5, timeout=5)
    await transport.abandon(b)
    settled = [(kind, queue, mid, extra) for kind, queue, mid, extra in client.log if kind != "receive"]
    assert settled == [
        ("renew", "sales-events", "a", None),
        ("deadletter", "sales-events", "a", ("MappingFailed", "accountnumber is required")),
        ("complete", "fno-events", "c", None),
        ("abandon", "sales-events", "b", None),
    ]
    assert len(client.receivers) == 2  # one receiver per queue, reused


async def test_a_lost_or_settled_lock_raises_message_lock_lost() -> None:
    client = FakeNamespace({"sales-events": [host_message(b"a"), host_message(b"b")]})
    transport = ServiceBusTransport(lambda: client)
    [a, b] = await transport.receive_wait("sales-events", 2, timeout=1)
    await transport.complete(a)
    with pytest.raises(MessageLockLost):
        await transport.complete(a)  # settled already
    client.receivers["sales-events"].expired.add(str(b.lock_token))
    with pytest.raises(MessageLockLost):
        await transport.renew_lock(b)
    with pytest.raises(MessageLockLost):
        await transport.dead_letter(b, "x", "y")
    with pytest.raises(MessageLockLost):
        await transport.complete(host_message(b"never received here"))


async def test_close_closes_receivers_and_senders() -> None:
    client = FakeNamespace({"sales-events": []})
    transport = ServiceBusTransport(lambda: client)
    assert await transport.receive_wait("sales-events", 1, timeout=0.2) == []
    await transport.send("fno-events", _message())
    await transport.aclose()
    assert ("close-receiver", "sales-events", None, None) in client.log
    assert ("close", "fno-events", None, None) in client.log and client.closed


async def test_the_local_host_runs_function_app_against_service_bus(runtime_env: dict) -> None:
    """function_app.py's queue trigger, fed by the Service Bus consumer: the SDK message goes to the function
    and the runtime's dead-letter reaches the receiver with our reason."""
    import asyncio

    import function_app
    from p2csync.localhost import LocalHost

    client = FakeNamespace({"sales-events": [host_message(b'{"MessageName": 5}', message_id="bad-1")]})
    host = LocalHost(function_app.app, ServiceBusTransport(lambda: client), function_key="k", port=0)
    serving = asyncio.create_task(host.serve())
    try:
        await asyncio.wait_for(host.started.wait(), 10)
        for _ in range(200):
            if any(entry[0] == "deadletter" for entry in client.log):
                break
            await asyncio.sleep(0.02)
    finally:
        host.stop()
        await asyncio.wait_for(serving, 10)
    [(_, queue, message_id, (reason, description))] = [e for e in client.log if e[0] == "deadletter"]
    assert (queue, message_id, reason) == ("sales-events", "bad-1", "MalformedMessage")
    assert "MessageName" in description
    assert not [e for e in client.log if e[0] in ("complete", "abandon")]


class OverlapSender(FakeSender):
    """Records whether two coroutines were ever inside the (not coroutine-safe) sender at once."""

    inside = 0
    overlapped = False

    async def send_messages(self, message: ServiceBusMessage) -> None:
        OverlapSender.inside += 1
        OverlapSender.overlapped |= OverlapSender.inside > 1
        await asyncio.sleep(0.001)
        OverlapSender.inside -= 1
        self.log.append(("send", self.queue, message, None))


async def test_concurrent_sends_take_turns_on_the_shared_sender() -> None:
    client = FakeClient()
    client.get_queue_sender = lambda queue_name: OverlapSender(queue_name, client.log)  # type: ignore[method-assign]
    transport = ServiceBusTransport(lambda: client)
    await asyncio.gather(*(transport.send("sales-events", _message()) for _ in range(20)))
    assert len(client.log) == 20 and not OverlapSender.overlapped


async def test_close_closes_the_transports_own_credential() -> None:
    class Credential:
        closed = False

        async def close(self) -> None:
            Credential.closed = True

    transport = ServiceBusTransport(lambda: FakeClient(), Credential())
    await transport.send("sales-events", _message())
    await transport.aclose()
    assert Credential.closed


class RefusingSender(FakeSender):
    """A sender whose link refuses every message as too large; it exposes no SDK-private size attribute."""

    async def send_messages(self, message: ServiceBusMessage) -> None:
        from azure.servicebus.exceptions import MessageSizeExceededError

        raise MessageSizeExceededError(message="too large")

    async def schedule_messages(self, message: ServiceBusMessage, at: datetime) -> list[int]:
        await self.send_messages(message)
        return []


class RefusingClient(FakeClient):
    def get_queue_sender(self, queue_name: str) -> FakeSender:
        return RefusingSender(queue_name, self.log)


@pytest.mark.parametrize(("configured", "expected"), [(None, 256 * 1024), (1024 * 1024, 1024 * 1024)])
async def test_a_refused_size_names_the_configured_limit_not_sdk_internals(configured: int | None,
                                                                           expected: int) -> None:
    from p2csync.queue.sizing import MessageSizeExceeded, serialized_size

    extra = {} if configured is None else {"max_message_bytes": configured}
    transport = ServiceBusTransport(lambda: RefusingClient(), **extra)
    for call in (lambda: transport.send("sales-events", _message()),
                 lambda: transport.schedule("sales-events", _message(), datetime.now(UTC))):
        with pytest.raises(MessageSizeExceeded) as info:
            await call()
        assert info.value.limit == expected and info.value.size == serialized_size(_message())
        assert f"the maximum message size is {expected} bytes" in str(info.value)


def test_for_namespace_takes_the_configured_limit() -> None:
    transport = ServiceBusTransport.for_namespace("ns.servicebus.windows.net", object(), max_message_bytes=2 ** 20)
    assert transport.max_message_bytes == 2 ** 20
