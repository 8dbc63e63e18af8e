"""Azure Service Bus as the queue transport (azure-servicebus SDK, identity-based).

The webhook sends through it (the Functions output binding cannot set MessageId, which duplicate detection
needs) and the deferral path schedules copies with it. One client per process, one sender per queue,
both reused: opening an AMQP link per message would cost more than the send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from azure.servicebus import ServiceBusMessage

from p2csync.queue.base import OutboundMessage

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


class ServiceBusTransport:
    """``QueueTransport`` on a Service Bus namespace.

    ``ServiceBusTransport.for_namespace("<ns>.servicebus.windows.net", credential)`` in Azure; tests pass a
    ``client_factory`` returning an object with the ``ServiceBusClient`` (aio) surface they need.
    """

    def __init__(self, client_factory: ClientFactory) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self._senders: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def for_namespace(cls, fully_qualified_namespace: str, credential: Any) -> ServiceBusTransport:
        from azure.servicebus.aio import ServiceBusClient

        return cls(lambda: ServiceBusClient(fully_qualified_namespace, credential))

    async def _sender(self, queue: str) -> Any:
        async with self._lock:
            if self._client is None:
                self._client = self._client_factory()
            sender = self._senders.get(queue)
            if sender is None:
                sender = self._senders[queue] = self._client.get_queue_sender(queue_name=queue)
            return sender

    async def send(self, queue: str, message: OutboundMessage) -> None:
        sender = await self._sender(queue)
        if message.scheduled_enqueue_time_utc is not None:
            await sender.schedule_messages(to_sdk_message(message), message.scheduled_enqueue_time_utc)
        else:
            await sender.send_messages(to_sdk_message(message))

    async def schedule(self, queue: str, message: OutboundMessage, at: datetime) -> int:
        sender = await self._sender(queue)
        numbers = await sender.schedule_messages(to_sdk_message(message), at)
        return int(numbers[0])

    async def aclose(self) -> None:
        async with self._lock:
            for sender in self._senders.values():
                await sender.close()
            self._senders.clear()
            if self._client is not None:
                await self._client.close()
                self._client = None
