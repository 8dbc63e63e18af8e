"""Flow 3: Sales orders become F&O sales orders, header and lines (P2C template "Sales Orders (Sales to Fin and
Ops) - Direct", tasks OrderHeader then OrderLine).

An order and its order products are one document (handlers/documents.py): every event of the order or of one of
its lines syncs the whole order in one F&O change set, header first. Everything flow-specific is in
mappings/orders.yaml: only activated orders whose products are all externally maintained, the order number from
Sales, the customer and the released products must exist in F&O first (the message waits, naming them), the line
discount split into a per-unit discount and a remainder charge (reference 6.6).

After activation F&O owns the order (reference 6 lifecycle, 9.7: "after activation the Sales order is read-only,
and F&O is the master"). So once an order has been written to F&O (its ledger record owns the F&O order), later
Sales events of it are skipped with that reason and cost no call: what changes afterwards (confirmation,
delivery, invoicing, and any Sales edit made despite the read-only form) must not overwrite F&O's order. [Inferred]
decision: the ledger's claim on the F&O order (set only by a successful sync) marks "written"; reading F&O for each
later event would cost a call per event for no change. The F&O -> Sales flow (planned) brings the order back.
"""

from __future__ import annotations

from handlers.base import FlowContext, describe_target
from handlers.documents import DocumentSync
from p2csync.envelopes import ChangeEvent
from p2csync.ledger.base import RecordState
from p2csync.outcomes import Outcome, Skipped

FLOW = "orders"


class OrderSync(DocumentSync):
    """A document sync that writes an order once: after its first successful sync, F&O owns it. Checked twice:
    by the ledger (no call) and by F&O itself (an existing order header is never updated from Sales)."""

    create_only = True

    async def sync(self, event: ChangeEvent, state: RecordState, ctx: FlowContext) -> Outcome:
        if state.target_key is not None and event.message_name != "Delete":
            return Skipped(reason=f"owned by F&O: {describe_target(state.target_key)} was written from this "
                                  f"{self.table} when it was activated; after activation F&O is the master of the "
                                  "order (P2C), so later Sales changes are not synced")
        return await super().sync(event, state, ctx)


def create_handler() -> OrderSync:
    return OrderSync(FLOW)
