"""Flow: posted F&O sales invoices come to Sales, header and lines (P2C template "Sales Invoices (Fin and Ops to
Sales) - Direct"; mappings/invoices.yaml), through the F&O -> Sales document core (handlers/fno_documents.py).

What the mapping cannot say, done here:

* The Sales order the invoice names moves to Invoiced (statecode 4, status reason Invoiced) with the processing
  status orders_back.yaml maps F&O's "Invoiced" to, in the SAME change set as the invoice: both or neither
  (reference 1.1 and 7.3: "When the related invoice arrives, the order status changes to Invoiced"). P2C left this
  to its Sales solution; [Inferred] the integration does it, so Sales needs no plug-in for it, and an order Sales
  already shows as Invoiced is not written again. The processing status is written too because orders_back leaves
  a closed order alone: if the invoice arrives before the order's own "Invoiced" update, this is its last chance.
  [Inferred] a canceled Sales order is left as it is (Sales does not invoice canceled orders).
* The invoice's owner is the order's owner (reference 1.1), read with the order (one call).
* A free-text invoice (no sales order) is skipped, the reason saying so (reference A.9's filter).
* Only invoices of customers that came from Sales are synced: the P2C template read "Externally maintained customer
  sales invoice headers" (reference 7, 9.3: "the order and invoice export filters depend on this flag"). The
  invoice customer's IsExternallyMaintained is read from F&O (one call, cached like a lookup); others are skipped
  with that reason instead of waiting for an order that never comes to Sales.
"""

from __future__ import annotations

import time

from collections.abc import Mapping
from typing import Any

from handlers.base import FlowContext
from handlers.fno_documents import FnOToSalesDocumentSync
from handlers.fno_records import LOOKUP_TTL
from mappings import MappingSpec
from mappings.model import default_entity_set
from mappings.values import is_empty
from p2csync.connectors.dataverse import Upsert
from p2csync.ledger.base import RecordState
from p2csync.outcomes import Outcome, Skipped

FLOW = "invoices"
ORDER_FIELD = "SalesOrderNumber"
ORDER_LOOKUP = "salesorderid@odata.bind"
ORDERS = "salesorders"
#: salesorder statecode 4 Invoiced with its status reason 100003 Invoiced; statecode 2 is Canceled.
INVOICED = {"statecode": 4, "statuscode": 100003}
CANCELED_STATE = 2
PROCESSING_STATUS = "msdynce_processingstatus"
OWNER_TABLE = "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"
CUSTOMER_FIELD = "InvoiceCustomerAccountNumber"
#: The F&O customers the accounts and contacts flows write; [Inferred] P2C's CustomersV2 carries the same flag.
CUSTOMERS = "CustomersV3"
EXTERNAL_FLAG = "IsExternallyMaintained"


class InvoiceSync(FnOToSalesDocumentSync):
    """A posted F&O sales invoice -> the Sales invoice of the same number, linked to its order."""

    async def write(self, spec: MappingSpec, key: Mapping[str, Any], header: Mapping[str, Any],
                    state: RecordState, ctx: FlowContext, described: str) -> Outcome:
        if not is_empty(header.get(ORDER_FIELD)) and (reason := await self.customer_not_from_sales(header, ctx)):
            return Skipped(reason=f"filtered out: {reason}")
        return await super().write(spec, key, header, state, ctx, described)

    def explain_filtered(self, reason: str, row: Mapping[str, Any], described: str) -> str:
        if ORDER_FIELD in row and is_empty(row.get(ORDER_FIELD)):
            return f"free-text invoice: {described} invoices no sales order, so there is no Sales order to link " \
                   f"({reason})"
        return reason

    @staticmethod
    async def customer_not_from_sales(header: Mapping[str, Any], ctx: FlowContext) -> str | None:
        """Why the invoice's customer is not one that came from Sales (its F&O flag is not Yes), or None."""
        account, company = header.get(CUSTOMER_FIELD), str(header.get("dataAreaId") or "").lower()
        if is_empty(account):
            return f"{CUSTOMER_FIELD} is empty: the invoice names no customer"
        cache_key = (f"fno:{CUSTOMERS}", company, str(account).casefold())
        cached = ctx.lookup_cache.get(cache_key)
        if cached is not None and cached[1] > time.monotonic():
            flag = cached[0]
        else:
            row = await ctx.fno.get(CUSTOMERS, {"dataAreaId": company, "CustomerAccount": account},
                                    select=[EXTERNAL_FLAG])
            flag = None if row is None else row.get(EXTERNAL_FLAG)
            ctx.lookup_cache[cache_key] = (flag, time.monotonic() + LOOKUP_TTL)
        if flag == "Yes":
            return None
        shown = "is not in F&O" if flag is None else f"has {EXTERNAL_FLAG} {flag!r}"
        return (f"the invoice customer {account!r} {shown}: only invoices of customers that came from Sales are "
                "synced (P2C's externally maintained customer invoices)")

    async def related_writes(self, spec: MappingSpec, header: Mapping[str, Any], body: dict[str, Any],
                             ctx: FlowContext) -> tuple[list[Any], str | None]:
        bound = body.get(ORDER_LOOKUP)
        if not bound:
            return [], None
        order_id = str(bound)[str(bound).find("(") + 1:-1]
        order = await ctx.dataverse.get(ORDERS, order_id, select=["statecode", "statuscode", PROCESSING_STATUS,
                                                                  "_ownerid_value"],
                                        annotations="Microsoft.Dynamics.CRM.lookuplogicalname")
        if order is None:  # deleted since its id was cached: the change set fails on the bind, the retry defers
            ctx.lookup_cache.clear()
            return [], None
        if owner := order.get("_ownerid_value"):
            body["ownerid@odata.bind"] = f"/{default_entity_set(order.get(OWNER_TABLE) or 'systemuser')}({owner})"
        if order.get("statecode") == CANCELED_STATE:
            return [], "its Sales order is canceled: left as it is"
        changes = {name: value for name, value in INVOICED.items() if order.get(name) != value}
        status = invoiced_processing_status(ctx)
        if status is not None and order.get(PROCESSING_STATUS) != status:
            changes[PROCESSING_STATUS] = status
        if not changes:
            return [], "its Sales order was Invoiced already"
        return [Upsert(ORDERS, order_id, changes, update_only=True)], "its Sales order moved to Invoiced"


def invoiced_processing_status(ctx: FlowContext) -> Any:
    """The Sales processing status of an invoiced order, as orders_back.yaml maps F&O's "Invoiced" (one map, one
    place); None when that flow is not loaded (then the processing status is left as it is)."""
    try:
        back = ctx.mapping("orders_back")
    except KeyError:
        return None
    return back.field_value(PROCESSING_STATUS, {"SalesOrderProcessingStatus": "Invoiced"})


def create_handler() -> InvoiceSync:
    return InvoiceSync(FLOW)
