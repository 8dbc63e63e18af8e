"""How big a message is for Service Bus, and the error for one that does not fit.

Service Bus counts the whole message against the entity's maximum message size: "the message size includes
the size of properties (system and user) and the size of payload" (Service Bus quotas: 256 KB on Standard,
up to 100 MB on Premium). So a body just under 256 KB does not fit once its properties are added.

`serialized_size` is an upper estimate of the AMQP encoding the SDK sends (the body as one data section,
the application properties as an AMQP map, the system properties as strings) plus a reserve for what the
broker adds. It is meant to be conservative: tests/unit/test_ingress_limits.py checks it is never below
the size the azure-servicebus SDK itself computes for the same message.
"""

from __future__ import annotations

from p2csync.queue.base import OutboundMessage, QueueError

__all__ = [
    "MAX_MESSAGE_BYTES_PREMIUM",
    "MAX_MESSAGE_BYTES_STANDARD",
    "MessageSizeExceeded",
    "serialized_size",
]

MAX_MESSAGE_BYTES_STANDARD = 256 * 1024
MAX_MESSAGE_BYTES_PREMIUM = 100 * 1024 * 1024

# AMQP 1.0 encodings: a str32/vbin32 value is 1 constructor byte + 4 length bytes; a described section
# adds 3 bytes of descriptor; ints, longs and doubles take 9 bytes at most, booleans 1.
_VARIABLE_OVERHEAD = 5
_SECTION_OVERHEAD = 8
_SCALAR_SIZE = 9
# [Inferred] The docs say only that "the size of system properties varies": the header and properties
# sections and the annotations the broker adds on enqueue (sequence number, enqueued time, lock) are covered
# by this reserve, which is larger than what the SDK encodes for them (about 64 bytes).
_SYSTEM_RESERVE = 512


class MessageSizeExceeded(QueueError):
    """The message is larger than the entity's maximum message size (Service Bus
    `MessageSizeExceededError`; nothing was enqueued)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the message is {size} bytes with its properties; the maximum message size is {limit} "
                         "bytes")
        self.size = size
        self.limit = limit


def _text_size(value: str | None) -> int:
    return 0 if value is None else _VARIABLE_OVERHEAD + len(value.encode("utf-8"))


def _value_size(value: object) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return _SCALAR_SIZE
    if isinstance(value, bytes):
        return _VARIABLE_OVERHEAD + len(value)
    return _text_size(str(value))


def serialized_size(message: OutboundMessage) -> int:
    """Bytes the message counts for against the maximum message size (body + application properties +
    system properties), estimated from above."""
    properties = sum(_text_size(str(key)) + _value_size(value)
                     for key, value in message.application_properties.items())
    system = sum(_text_size(value) for value in (message.message_id, message.content_type,
                                                 message.correlation_id, message.subject))
    return (_SECTION_OVERHEAD + len(message.body)
            + (_SECTION_OVERHEAD + properties if message.application_properties else 0)
            + system + _SYSTEM_RESERVE)
