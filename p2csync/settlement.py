"""How a processed message is settled on its queue.

The queue triggers run with ``autoCompleteMessages: false`` and SDK-type bindings, so every delivery is
settled explicitly through message actions shaped like the binding's ``ServiceBusMessageActions``
(complete / abandon / deadletter, by message): a rejected message reaches the dead-letter queue with our
reason and description, never as a silent complete. The same runtime code settles messages in Azure (the
binding's synchronous gRPC actions), in the local host (asynchronous actions on the embedded queue or on a
Service Bus receiver) and in tests (recording actions).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger("p2csync.settlement")


class MessageActions(Protocol):
    """Each method settles ``message`` by its lock token; it may return ``None`` or an awaitable."""

    def complete(self, message: Any) -> None | Awaitable[None]: ...

    def abandon(self, message: Any) -> None | Awaitable[None]: ...

    def deadletter(
        self, message: Any, deadletter_reason: str | None = None, deadletter_error_description: str | None = None
    ) -> None | Awaitable[None]: ...


async def settle(action: Callable[..., Any], message: Any, **kwargs: Any) -> bool:
    """Run one settlement action; a blocking one (the binding's gRPC call) runs off the event loop.

    A failed settlement (lock lost, host gone) is logged as an error, not raised: the lock then expires and
    the message is delivered again, which the ledger makes harmless (a final outcome is skipped as a
    duplicate, a deferral's copy has a deterministic MessageId, anything else is processed again). Returns
    whether the action succeeded.
    """
    try:
        if inspect.iscoroutinefunction(action):
            await action(message, **kwargs)
        else:
            result = await asyncio.to_thread(action, message, **kwargs)
            if inspect.isawaitable(result):
                await result
        return True
    except Exception as exc:
        log.error("settlement %s failed (%s: %s); the message will be delivered again",
                    getattr(action, "__name__", "settlement"), type(exc).__name__, exc)
        return False
