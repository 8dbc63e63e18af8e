"""Azure Service Bus as the queue transport and consumer (azure-servicebus SDK, identity-based).

The webhook sends through it (the Functions output binding cannot set MessageId, which duplicate detection
needs) and the deferral path schedules copies with it. The local host receives through it when a namespace
is configured, so a developer runs function_app.py against the real queues: peek-lock receive, settlement
on the receiver that received the message, lock renewal. One client per process, one sender and one
receiver per queue, all reused: opening an AMQP link per message would cost more than the message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError, MessageSizeExceededError

from p2csync.queue.base import MessageLockLost, MessageState, OutboundMessage, QueueCounts, ReceivedMessage
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


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else value


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else (value if value.tzinfo else value.replace(tzinfo=UTC))


def from_sdk_message(queue: str, message: Any) -> ReceivedMessage:
    """A peeked or received SDK message as the queue-neutral model (what the operator commands show and
    replay). The SDK hands AMQP strings over as bytes; a data body as a generator of chunks."""
    body = message.body
    if not isinstance(body, bytes | bytearray):
        body = b"".join(bytes(chunk) for chunk in body) if body is not None else b""
    properties = {str(_text(k)): _text(v) for k, v in (message.application_properties or {}).items()}
    kept = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in properties.items()
            if v is not None}
    state = getattr(message, "state", None)
    return ReceivedMessage(
        queue=queue,
        body=bytes(body),
        message_id=str(_text(message.message_id) or f"(no id: #{message.sequence_number})"),
        content_type=_text(message.content_type),
        subject=_text(message.subject),
        correlation_id=_text(message.correlation_id),
        application_properties=kept,
        sequence_number=int(message.sequence_number or 0),
        delivery_count=int(message.delivery_count or 0),
        enqueued_time_utc=_aware(message.enqueued_time_utc) or datetime.now(UTC),
        expires_at_utc=_aware(getattr(message, "expires_at_utc", None)),
        dead_letter_reason=_text(message.dead_letter_reason),
        dead_letter_error_description=_text(message.dead_letter_error_description),
        dead_letter_source=_text(message.dead_letter_source),
        state=MessageState.SCHEDULED if getattr(state, "name", "") == "SCHEDULED" else MessageState.ACTIVE,
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
                 max_message_bytes: int = MAX_MESSAGE_BYTES_STANDARD,
                 admin_factory: ClientFactory | None = None) -> None:
        """``admin_factory``: a ``ServiceBusAdministrationClient`` (aio) for queue counts (``status``)."""
        self._client_factory = client_factory
        self._admin_factory = admin_factory
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
        from azure.servicebus.aio.management import ServiceBusAdministrationClient

        return cls(lambda: ServiceBusClient(fully_qualified_namespace, credential), credential,
                   max_message_bytes=max_message_bytes,
                   admin_factory=lambda: ServiceBusAdministrationClient(fully_qualified_namespace, credential))

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

    # -- QueueAdmin (operator commands) ----------------------------------------------------------------
    async def counts(self, queue: str) -> QueueCounts:
        """From the queue's runtime properties (management API). Service Bus counts a locked message as
        active and does not report locks, so ``locked`` is 0 here."""
        if self._admin_factory is None:
            raise RuntimeError("no Service Bus administration client configured for queue counts")
        admin = self._admin_factory()
        try:
            props = await admin.get_queue_runtime_properties(queue)
        finally:
            await admin.close()
        return QueueCounts(active=int(props.active_message_count or 0),
                           scheduled=int(props.scheduled_message_count or 0), locked=0,
                           dead_lettered=int(props.dead_letter_message_count or 0))

    def _dead_letter_receiver(self, queue: str) -> Any:
        return self._connected().get_queue_receiver(queue_name=queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                                                    receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0)

    async def peek_dead_letters(self, queue: str, max_messages: int = 100,
                                from_sequence_number: int = 0) -> list[ReceivedMessage]:
        """Peek the dead-letter sub-queue page by page (a peek may return fewer than asked) until
        ``max_messages`` or its end."""
        found: list[ReceivedMessage] = []
        receiver = self._dead_letter_receiver(queue)
        try:
            start = from_sequence_number
            while len(found) < max_messages:
                page = await receiver.peek_messages(max_message_count=min(250, max_messages - len(found)),
                                                    sequence_number=start)
                if not page:
                    break
                found.extend(from_sdk_message(queue, m) for m in page)
                start = int(page[-1].sequence_number) + 1
        finally:
            await receiver.close()
        return found

    async def delete_dead_letters(self, queue: str, sequence_numbers: Collection[int],
                                  max_wait: float = 5.0) -> set[int]:
        """Service Bus deletes a message only by settling it, so the dead-letter sub-queue is received in
        peek-lock mode: the wanted messages are completed, the others held until the end and then abandoned
        (abandoning them at once would hand them straight back to the next receive). [Inferred] The scan
        stops when every wanted message was found or a receive comes back empty."""
        wanted = set(sequence_numbers)
        deleted: set[int] = set()
        held: list[Any] = []
        receiver = self._dead_letter_receiver(queue)
        try:
            while wanted - deleted:
                batch = await receiver.receive_messages(max_message_count=100, max_wait_time=max_wait)
                if not batch:
                    break
                for message in batch:
                    if int(message.sequence_number) in wanted:
                        await receiver.complete_message(message)
                        deleted.add(int(message.sequence_number))
                    else:
                        held.append(message)
        finally:
            for message in held:
                try:
                    await receiver.abandon_message(message)
                except (MessageLockLostError, MessageAlreadySettled):
                    pass  # its lock ran out: it is back in the sub-queue anyway
            await receiver.close()
        return deleted

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
