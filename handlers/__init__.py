"""Flow handlers, one module per flow, and the registry that routes a change event to its flow."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from handlers import accounts, contacts, invoices, orders, orders_back, products, quotes
from handlers.base import FlowContext, FlowHandler, SalesToFnORecordSync
from mappings import MappingSpec
from p2csync.envelopes import ChangeEvent

__all__ = ["FlowContext", "FlowHandler", "FlowRegistry", "SalesToFnORecordSync", "build_registry"]

# handler name -> factory. A handler serves the mapping files named by its `flows` (default: its own name) and
# runs when at least one of them is present; contacts serves contacts_customers and contacts_persons.
FACTORIES: dict[str, Callable[[], FlowHandler]] = {
    accounts.FLOW: accounts.create_handler,
    contacts.FLOW: contacts.create_handler,
    quotes.FLOW: quotes.create_handler,
    orders.FLOW: orders.create_handler,
    products.FLOW: products.create_handler,
    orders_back.FLOW: orders_back.create_handler,
    invoices.FLOW: invoices.create_handler,
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
    """One handler per source table: two handlers taking one table would split its records' events between
    them, so that is refused at start-up (one handler chooses between the files of a table, as contacts does)."""
    handlers: list[FlowHandler] = []
    tables: dict[str, str] = {}
    for name, factory in FACTORIES.items():
        handler = factory()
        specs = [mappings[flow] for flow in getattr(handler, "flows", (name,)) if flow in mappings]
        if not specs:
            continue
        handler.bind(*specs)  # type: ignore[attr-defined]
        table = getattr(handler, "table", "")
        if table in tables:
            raise ValueError(f"handlers {tables[table]} and {name} both take table {table!r}")
        tables[table] = name
        handlers.append(handler)
    return FlowRegistry(handlers)
