"""How a processed message is settled on its queue.

Settlement goes through an object shaped like the Functions Service Bus SDK binding's
``ServiceBusMessageActions`` (complete / abandon / deadletter by message, using its lock token), so the same
runtime code settles messages in Azure, in the local host (embedded queue) and in tests. The actions for
one invocation are set in a context variable by whoever invokes the function (the local host, or the
SDK-type binding in Azure); without one, the Functions host's own auto-completion applies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol


class MessageActions(Protocol):
    def complete(self, message: Any) -> None: ...

    def abandon(self, message: Any) -> None: ...

    def deadletter(
        self, message: Any, deadletter_reason: str | None = None, deadletter_error_description: str | None = None
    ) -> None: ...


class SettlementRequested(Exception):
    """Raised under host auto-completion to make the Functions host abandon the message."""


class HostAutoSettlement:
    """The Functions host with ``autoCompleteMessages: true`` and plain bindings: returning completes the
    message, raising abandons it (redelivered until MaxDeliveryCount, then dead-lettered by Service Bus).

    A dead-letter request can only be expressed by raising; Service Bus then dead-letters the message
    after its last delivery with reason MaxDeliveryCountExceeded, and our reason is in the log and the
    ledger journal. Explicit settlement with the reason needs SDK-type bindings (message actions).
    """

    def complete(self, message: Any) -> None:
        return None

    def abandon(self, message: Any) -> None:
        raise SettlementRequested("abandon requested: the host redelivers the message")

    def deadletter(
        self, message: Any, deadletter_reason: str | None = None, deadletter_error_description: str | None = None
    ) -> None:
        raise SettlementRequested(f"dead-letter requested: {deadletter_reason}: {deadletter_error_description}")


_current: ContextVar[MessageActions | None] = ContextVar("p2c_message_actions", default=None)


@contextmanager
def settlement_scope(actions: MessageActions) -> Iterator[MessageActions]:
    """Use ``actions`` to settle the messages of the invocation running inside this block."""
    token = _current.set(actions)
    try:
        yield actions
    finally:
        _current.reset(token)


def current_actions() -> MessageActions:
    return _current.get() or HostAutoSettlement()
