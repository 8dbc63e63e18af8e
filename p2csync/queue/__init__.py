"""Queue transport: message shapes and protocol (`base`), the embedded SQLite queue (`embedded`)."""

from p2csync.queue.base import (
    InvalidQueueOperation,
    MessageLockLost,
    MessageNotFound,
    MessageState,
    OutboundMessage,
    QueueCounts,
    QueueError,
    QueueTransport,
    ReceivedMessage,
)

__all__ = [
    "InvalidQueueOperation",
    "MessageLockLost",
    "MessageNotFound",
    "MessageState",
    "OutboundMessage",
    "QueueCounts",
    "QueueError",
    "QueueTransport",
    "ReceivedMessage",
]
