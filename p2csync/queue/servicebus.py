"""Azure Service Bus as the queue transport and consumer (azure-servicebus SDK, identity-based).

The webhook sends through it (the Functions output binding cannot set MessageId, which duplicate detection
needs) and the deferral path schedules copies with it. The local host receives through it when a namespace
is configured, so a developer runs function_app.py against the real queues: peek-lock receive, settlement
on the receiver that received the message, lock renewal. One client per process, one sender and one
receiver per queue, all reused: opening an AMQP link per message would cost more than the message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError, MessageSizeExceededError

from p2csync.queue.base import MessageLockLost, OutboundMessage
from p2csync.queue.sizing import MAX_MESSAGE_BYTES_STANDARD, MessageSizeExceeded, serialized_size

ClientFactory = Callable[[], Any]


def to_sdk_message(message: OutboundMessage) -> ServiceBusMessage:
    """Every property the runtime relies on survives the trip: MessageId (duplicate detection), the
    content type, correlation id and the application properties (Dataverse claims, p2c-deferrals)."""
    return ServiceBusMessage(
        message.body,
        message_id=message.message_id,
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        subject=message.subject,
        application_properties=dict(message.application_properties) or None,
        time_to_live=message.time_to_live,
    )


def _size_exceeded(message: OutboundMessage, limit: int) -> MessageSizeExceeded:
    """The SDK's refusal as the queue-neutral error the webhook handles (it then sends a trimmed copy). The
    limit named is the configured one (P2C_SERVICEBUS_MAX_MESSAGE_BYTES), not read from the SDK's private
    link state."""
    return MessageSizeExceeded(serialized_size(message), limit)


class ServiceBusTransport:
    """``QueueTransport`` and ``QueueConsumer`` on a Service Bus namespace.

    ``ServiceBusTransport.for_namespace("<ns>.servicebus.windows.net", credential)`` in Azure; tests pass a
    ``client_factory`` returning an object with the ``ServiceBusClient`` (aio) surface they need.

    The SDK's senders and receivers are not coroutine-safe, so every operation on a link holds that link's
    lock: concurrent invocations queue up for a send, and a settlement waits for a receive in progress
    (keep the consumer's receive wait short).
    """

    def __init__(self, client_factory: ClientFactory, credential: Any = None, *,
                 max_message_bytes: int = MAX_MESSAGE_BYTES_STANDARD) -> None:
        self._client_factory = client_factory
        self.max_message_bytes = max_message_bytes  # the queues' maximum message size, for refusals
        self._credential = credential  # closed with the transport when it is ours
        self._client: Any = None
        self._senders: dict[str, Any] = {}
        self._receivers: dict[str, Any] = {}
        self._link_locks: dict[int, asyncio.Lock] = {}
        self._held: dict[str, Any] = {}  # lock token -> the receiver whose link holds the lock
        self._lock = asyncio.Lock()

    @classmethod
    def for_namespace(cls, fully_qualified_namespace: str, credential: Any, *,
                      max_message_bytes: int = MAX_MESSAGE_BYTES_STANDARD) -> ServiceBusTransport:
        from azure.servicebus.aio import ServiceBusClient

        return cls(lambda: ServiceBusClient(fully_qualified_namespace, credential), credential,
                   max_message_bytes=max_message_bytes)

    def _on(self, link: Any) -> asyncio.Lock:
        return self._link_locks.setdefault(id(link), asyncio.Lock())

    def _connected(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    async def _sender(self, queue: str) -> Any:
        async with self._lock:
            sender = self._senders.get(queue)
            if sender is None:
                sender = self._senders[queue] = self._connected().get_queue_sender(queue_name=queue)
            return sender

    async def _receiver(self, queue: str) -> Any:
        async with self._lock:
            receiver = self._receivers.get(queue)
            if receiver is None:  # no prefetch: a prefetched message's lock would run out unseen
                receiver = self._receivers[queue] = self._connected().get_queue_receiver(
                    queue_name=queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0)
            return receiver

    async def send(self, queue: str, message: OutboundMessage) -> None:
        if message.scheduled_enqueue_time_utc is not None:
            await self.schedule(queue, message, message.scheduled_enqueue_time_utc)
            return
        sender = await self._sender(queue)
        async with self._on(sender):
            try:
                await sender.send_messages(to_sdk_message(message))
            except MessageSizeExceededError as exc:
                raise _size_exceeded(message, self.max_message_bytes) from exc

    async def schedule(self, queue: str, message: OutboundMessage, at: datetime) -> int:
        sender = await self._sender(queue)
        async with self._on(sender):
            try:
                numbers = await sender.schedule_messages(to_sdk_message(message), at)
            except MessageSizeExceededError as exc:
                raise _size_exceeded(message, self.max_message_bytes) from exc
        return int(numbers[0])

    # -- consumer (the local host) ----------------------------------------------------------------------
    async def receive_wait(self, queue: str, max_messages: int = 1, timeout: float = 5.0) -> list[Any]:
        receiver = await self._receiver(queue)
        async with self._on(receiver):
            messages = await receiver.receive_messages(max_message_count=max_messages,
                                                       max_wait_time=max(timeout, 0.1))
        for message in messages:
            self._held[str(message.lock_token)] = receiver
        return list(messages)

    def _holder(self, message: Any) -> Any:
        receiver = self._held.get(str(message.lock_token))
        if receiver is None:
            raise MessageLockLost(str(message.lock_token))
        return receiver

    async def _settle(self, message: Any, operation: str, **kwargs: Any) -> None:
        receiver = self._holder(message)
        try:
            async with self._on(receiver):
                await getattr(receiver, operation)(message, **kwargs)
        except (MessageLockLostError, MessageAlreadySettled) as exc:
            raise MessageLockLost(str(message.lock_token)) from exc
        finally:
            self._held.pop(str(message.lock_token), None)

    async def complete(self, message: Any) -> None:
        await self._settle(message, "complete_message")

    async def abandon(self, message: Any) -> None:
        await self._settle(message, "abandon_message")

    async def dead_letter(self, message: Any, reason: str | None = None, description: str | None = None) -> None:
        await self._settle(message, "dead_letter_message", reason=reason, error_description=description)

    async def renew_lock(self, message: Any) -> datetime:
        receiver = self._holder(message)
        try:
            async with self._on(receiver):
                return await receiver.renew_message_lock(message)
        except (MessageLockLostError, MessageAlreadySettled) as exc:
            self._held.pop(str(message.lock_token), None)
            raise MessageLockLost(str(message.lock_token)) from exc

    async def aclose(self) -> None:
        async with self._lock:
            for link in [*self._senders.values(), *self._receivers.values()]:
                await link.close()
            self._senders.clear()
            self._receivers.clear()
            self._held.clear()
            self._link_locks.clear()
            if self._client is not None:
                await self._client.close()
                self._client = None
            if (close := getattr(self._credential, "close", None)) is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
