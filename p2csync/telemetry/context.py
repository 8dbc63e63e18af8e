"""The context of the change being worked on, in ``contextvars``: its correlation id, flow, record key and
message id.

Why contextvars: one change crosses the webhook, the queue, the runtime, a flow handler and the connectors;
passing a correlation id through every signature would touch every layer. A context variable follows the
asyncio task (and the tasks it starts), so a log line or an HTTP call anywhere below ``change_scope`` knows
which change it belongs to, and two messages processed concurrently never see each other's values.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime


@dataclass(frozen=True)
class ChangeContext:
    """What is known about the change in hand. ``correlation_generated``: the id was made here (no upstream
    system gave one), so an id found later in the event itself may replace it."""

    correlation_id: str | None = None
    correlation_generated: bool = False
    flow: str | None = None
    record_key: str | None = None
    message_id: str | None = None
    queue: str | None = None
    event_time: datetime | None = None

    def fields(self) -> dict[str, str]:
        """The non-empty fields a log line or span carries, by their log names."""
        values = {"correlation_id": self.correlation_id, "flow": self.flow, "record_key": self.record_key,
                  "message_id": self.message_id, "queue": self.queue}
        return {key: value for key, value in values.items() if value}


_current: ContextVar[ChangeContext] = ContextVar("p2c_change", default=ChangeContext())


def current() -> ChangeContext:
    return _current.get()


def correlation_id() -> str | None:
    return _current.get().correlation_id


def new_correlation_id() -> str:
    """A new correlation id, a GUID like the ones Dataverse uses (x-ms-correlation-request-id)."""
    return str(uuid.uuid4())


@contextmanager
def change_scope(*, correlation_id: str | None = None, **values: object) -> Iterator[ChangeContext]:
    """Bind a change's context for the block, and restore the outer one after it (so a task that handles
    several messages one after another never carries one message's ids into the next). Without a
    ``correlation_id`` a new one is made."""
    generated = not correlation_id
    context = ChangeContext(correlation_id=correlation_id or new_correlation_id(),
                            correlation_generated=generated, **values)  # type: ignore[arg-type]
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def annotate(**values: object) -> None:
    """Add what became known inside the scope (flow, record key, message id, event time). Empty values are
    ignored, so a caller can pass what it has."""
    known = {key: value for key, value in values.items() if value is not None and value != ""}
    if known:
        _current.set(replace(_current.get(), **known))  # type: ignore[arg-type]


def adopt_correlation_id(candidate: str | None) -> None:
    """Prefer an upstream system's correlation id (e.g. the Dataverse context's CorrelationId) over one made
    here; an id that came from upstream (a header, the queue message) is kept."""
    context = _current.get()
    if candidate and context.correlation_generated:
        _current.set(replace(context, correlation_id=str(candidate), correlation_generated=False))
