"""Flow handlers, one module per flow, and the registry that routes a change event to its flow."""

from __future__ import annotations

from collections.abc import Mapping

from handlers import accounts
from handlers.base import FlowContext, FlowHandler, SalesToFnORecordSync
from mappings import MappingSpec
from p2csync.envelopes import ChangeEvent

__all__ = ["FlowContext", "FlowHandler", "FlowRegistry", "SalesToFnORecordSync", "build_registry"]

# flow name -> factory. A flow runs when its mapping file is present.
FACTORIES = {
    accounts.FLOW: accounts.create_handler,
}


class FlowRegistry:
    """Routes events to handlers; an event no handler takes is skipped with that reason, never dropped."""

    def __init__(self, handlers: list[FlowHandler]) -> None:
        self.handlers = handlers

    def route(self, event: ChangeEvent) -> FlowHandler | None:
        for handler in self.handlers:
            if handler.accepts(event):
                return handler
        return None


def build_registry(mappings: Mapping[str, MappingSpec]) -> FlowRegistry:
    handlers: list[FlowHandler] = []
    for flow, factory in FACTORIES.items():
        if flow in mappings:
            handlers.append(factory().bind(mappings[flow]))
    return FlowRegistry(handlers)
