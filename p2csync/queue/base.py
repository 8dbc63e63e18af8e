"""Shapes shared by every queue implementation (embedded SQLite now, Azure Service Bus later).

Why: the webhook and the deferral path only need to *send* and *schedule*; keeping that in a small async
protocol lets the same runtime code run against the embedded queue locally and Service Bus in Azure. The
message models mirror the Service Bus message properties the runtime reads (wire-formats 5.3).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "PropertyValue",
    "OutboundMessage",
    "ReceivedMessage",
    "MessageState",
    "QueueCounts",
    "QueueTransport",
    "QueueConsumer",
    "QueueAdmin",
    "QueueError",
    "MessageLockLost",
    "MessageNotFound",
    "InvalidQueueOperation",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "TTL_EXPIRED",
]

PropertyValue = str | bool | int | float
"""Types an application property may hold (what both JSON and AMQP carry without loss)."""

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
TTL_EXPIRED = "TTLExpiredException"


class MessageState(StrEnum):
    """Service Bus `ServiceBusMessageState` names (deferral is not used by p2c-sync)."""

    ACTIVE = "active"
    DEFERRED = "deferred"
    SCHEDULED = "scheduled"


class OutboundMessage(BaseModel):
    """A message to send. `message_id` drives duplicate detection, so make it deterministic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    body: bytes
    message_id: str = Field(min_length=1, max_length=128)
    content_type: str | None = "application/json"
    subject: str | None = None
    correlation_id: str | None = None
    application_properties: dict[str, PropertyValue] = Field(default_factory=dict)
    scheduled_enqueue_time_utc: AwareDatetime | None = None
    time_to_live: timedelta | None = None

    @field_validator("time_to_live")
    @classmethod
    def _positive_ttl(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("time_to_live must be positive")
        return value


class ReceivedMessage(OutboundMessage):
    """A delivered (or peeked) message with its broker-assigned properties.

    `lock_token` is set only on messages received in peek-lock mode (never on peeked ones);
    `locked_until_utc` on those and on peeked messages someone holds. `time_to_live` is the effective one
    (capped by the queue default)."""

    queue: str
    sequence_number: int
    lock_token: str | None = None
    delivery_count: int = 0
    enqueued_time_utc: AwareDatetime
    locked_until_utc: AwareDatetime | None = None
    expires_at_utc: AwareDatetime | None = None
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None
    dead_letter_source: str | None = None
    state: MessageState = MessageState.ACTIVE


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Message counts of one queue. `active`, `scheduled` and `locked` are disjoint: `active` is what a
    receiver would get now (an expired lock counts as active again), `scheduled` is not due yet, `locked` is
    held by a receiver. `dead_lettered` is everything in the dead-letter queue."""

    active: int
    scheduled: int
    locked: int
    dead_lettered: int


@runtime_checkable
class QueueTransport(Protocol):
    """What producers (webhook ingress, the deferral path) need from a queue."""

    async def send(self, queue: str, message: OutboundMessage) -> None:
        """Enqueue `message`. A duplicate `message_id` within the detection window is dropped silently."""
        ...

    async def schedule(self, queue: str, message: OutboundMessage, at: datetime) -> int:
        """Enqueue `message` to become visible at `at`; returns its sequence number (for cancellation)."""
        ...


@runtime_checkable
class QueueConsumer(Protocol):
    """What the local host needs to feed a queue trigger: peek-lock receive, and settlement of a received
    message. Settlement takes the message itself, as the Service Bus SDK does (its lock belongs to the link
    that received it); a lock that expired or was settled already raises `MessageLockLost`."""

    async def receive_wait(self, queue: str, max_messages: int = 1, timeout: float = 5.0) -> list[Any]:
        """Up to `max_messages` messages, locked; waits at most `timeout` seconds for the first one."""
        ...

    async def complete(self, message: Any) -> None: ...

    async def abandon(self, message: Any) -> None: ...

    async def dead_letter(self, message: Any, reason: str | None = None, description: str | None = None) -> None:
        ...

    async def renew_lock(self, message: Any) -> datetime:
        """Extend the lock; returns the new locked-until time."""
        ...


@runtime_checkable
class QueueAdmin(Protocol):
    """What the operator commands need beyond sending: counts and the dead-letter sub-queue. One interface
    for the embedded queue and Service Bus, so `status` and `deadletters` work the same on both."""

    async def counts(self, queue: str) -> QueueCounts:
        """Message counts of `queue` (Service Bus: its runtime properties; `locked` is not reported there)."""
        ...

    async def peek_dead_letters(self, queue: str, max_messages: int = 100,
                                from_sequence_number: int = 0) -> list[ReceivedMessage]:
        """Dead letters of `queue` in sequence order, without locking them or counting a delivery."""
        ...

    async def delete_dead_letters(self, queue: str, sequence_numbers: Collection[int]) -> set[int]:
        """Remove those dead letters for good; returns the sequence numbers actually removed (one already
        gone is not an error: another operator may have replayed it)."""
        ...


class QueueError(Exception):
    """Base of the queue errors."""


class MessageLockLost(QueueError):
    """The lock token is unknown or its lock expired: someone else may now hold the message."""

    def __init__(self, lock_token: str | None) -> None:
        super().__init__(f"the lock {lock_token} was lost (expired, settled or unknown)")
        self.lock_token = lock_token


class MessageNotFound(QueueError):
    """No message with that sequence number is in the state the operation needs."""

    def __init__(self, sequence_number: int, detail: str) -> None:
        super().__init__(f"message {sequence_number}: {detail}")
        self.sequence_number = sequence_number


class InvalidQueueOperation(QueueError):
    """The operation does not apply to this message (e.g. dead-lettering a dead-lettered message)."""
