"""Flow: F&O sales orders come back to Sales, header and lines (P2C template "Sales Orders (Fin and Ops to Sales)
- Direct"; mappings/orders_back.yaml), through the F&O -> Sales document core (handlers/fno_documents.py).

What the mapping cannot say, done here:

* Header tax (reference 9.11): F&O's tax on the order header (OrderHeaderTaxAmount, the tax of header charges)
  arrives as a write-in line named "Freight Tax", as the template did. [Inferred] its sequence number is
  FREIGHT_TAX_SEQUENCE, above any F&O line number, so it never meets an F&O line.
* A Sales order closed in Sales (fulfilled, invoiced or canceled: statecode 2-4) is not written again: Sales makes
  it read-only, and the invoice flow closes an order as Invoiced when its invoice arrives (reference 1.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from handlers.fno_documents import FnOToSalesDocumentSync, MappedLines, SalesState
from mappings import MappingSpec, to_json_ready
from mappings.values import is_empty
from p2csync.outcomes import Outcome, Skipped

FLOW = "orders_back"
HEADER_TAX_FIELD = "OrderHeaderTaxAmount"
FREIGHT_TAX_NAME = "Freight Tax"
FREIGHT_TAX_SEQUENCE = 100000
#: salesorder statecode: 2 Canceled, 3 Fulfilled, 4 Invoiced.
CLOSED_STATES = {2: "canceled", 3: "fulfilled", 4: "invoiced"}


class OrderBackSync(FnOToSalesDocumentSync):
    """An F&O sales order -> the Sales order of the same number."""

    def __init__(self, flow: str) -> None:
        super().__init__(flow)
        self.header_columns = [HEADER_TAX_FIELD]

    def extra_lines(self, spec: MappingSpec, header: Mapping[str, Any], lines: dict[str, MappedLines]) -> None:
        amount = header.get(HEADER_TAX_FIELD)
        if is_empty(amount) or Decimal(str(amount)) == 0:
            return
        order_lines = next(iter(lines.values()))
        order_lines.bodies[FREIGHT_TAX_SEQUENCE] = {
            "sequencenumber": FREIGHT_TAX_SEQUENCE, "isproductoverridden": True, "productdescription": FREIGHT_TAX_NAME,
            "quantity": 1, "priceperunit": to_json_ready(Decimal(str(amount))), "ispriceoverridden": True,
            "msdynce_ordernumber": header.get("SalesOrderNumber"), "msdynce_ismaintainedexternally": True}

    def refuse(self, spec: MappingSpec, sales: SalesState, described: str) -> Outcome | None:
        state = None if sales.header is None else sales.header.get("statecode")
        if state in CLOSED_STATES:
            return Skipped(reason=f"the Sales order of {described} is {CLOSED_STATES[state]} in Sales (read-only "
                                  "there); nothing was written")
        return None


def create_handler() -> OrderBackSync:
    return OrderBackSync(FLOW)
