"""What a person does in F&O, as plain HTTP on the F&O sandbox (`POST /_sandbox/actions/...`, JSON
`{"dataAreaId": ..., "SalesOrderNumber": ...}`), so anyone can drive the local world:

* `confirm-sales-order`: Sales order > Sell > Confirm sales order. An Active order becomes Confirmed.
* `calculate-sales-totals`: the "Calculate sales totals" batch job for one order (P2C requires it before an
  order goes back to Sales, p2c-mappings 6.5): line amounts and tax, header totals, `AreTotalsUpdated` Yes.
* `post-sales-invoice`: Invoice > Generate invoice, posted. Creates `SalesInvoiceHeadersV2` and
  `SalesInvoiceLinesV2` from the order's lines, moves the order and its lines to Invoiced, and raises
  `SalesInvoicePostedBusinessEvent`. Answers the invoice number.

Each action writes through the store in one change set as the sales user (F&O's own user, not the
integration's), so the data events of the rows it touches and its business event are raised after commit,
exactly as for an OData write. A 404 names an unknown order; a 409 a state the action cannot start from.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.fno_entities import key_part
from sandbox.front import ADMIN_PREFIX
from sandbox.odata import format_datetime

if TYPE_CHECKING:
    from sandbox.fno import FnO, Row

HEADERS, LINES = "CDSSalesOrderHeaders", "CDSSalesOrderLines"
INVOICE_HEADERS, INVOICE_LINES = "SalesInvoiceHeadersV2", "SalesInvoiceLinesV2"
INVOICE_EVENT = "SalesInvoicePostedBusinessEvent"
#: Processing statuses an order can be invoiced from (confirmed or further on, not yet fully invoiced).
INVOICEABLE = ("Confirmed", "Picked", "PartiallyDelivered", "Delivered", "PartiallyInvoiced",
               "DeliveredPartiallyInvoiced")
#: [Inferred] payment terms are not modelled: the invoice's due date is 30 days after its date.
DUE_DAYS = 30
CENT = Decimal("0.01")


class ActionError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class OrderAction(BaseModel):
    """The body of every action: the order, addressed by its key."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    dataAreaId: str
    SalesOrderNumber: str


def _money(value: Any) -> Decimal:
    return Decimal(str(value or 0))


def _stored(value: Decimal) -> float | int:
    value = value.quantize(CENT, rounding=ROUND_HALF_UP)
    return int(value) if value == value.to_integral_value() else float(value)


class SalesActions:
    def __init__(self, fno: FnO) -> None:
        self.fno = fno

    @property
    def user(self) -> str:
        """[Inferred] the person in F&O: the sandbox's sales user (the last configured user)."""
        return self.fno.users[-1].user_id

    def _order(self, action: OrderAction) -> tuple[Row, list[Row]]:
        company = action.dataAreaId.lower()
        header = self.fno.get(HEADERS, {"dataAreaId": company, "SalesOrderNumber": action.SalesOrderNumber})
        if header is None:
            raise ActionError(404, f"Sales order '{action.SalesOrderNumber}' does not exist in company {company}.")
        number = header["SalesOrderNumber"]
        lines = sorted((row for row in self.fno.rows(LINES, company)
                        if key_part(row["SalesOrderNumber"]) == key_part(number)),
                       key=lambda row: row["LineCreationSequenceNumber"])
        return header, lines

    @staticmethod
    def _key(row: Row) -> dict[str, Any]:
        return {"dataAreaId": row["dataAreaId"], "SalesOrderNumber": row["SalesOrderNumber"]}

    @staticmethod
    def _line_key(row: Row) -> dict[str, Any]:
        return {**SalesActions._key(row), "LineCreationSequenceNumber": row["LineCreationSequenceNumber"]}

    # -- confirm ---------------------------------------------------------------------------------
    def confirm(self, action: OrderAction) -> dict[str, Any]:
        with self.fno.change_set():
            header, lines = self._order(action)
            status = header.get("SalesOrderProcessingStatus")
            if status != "Active":
                raise ActionError(409, f"Sales order '{header['SalesOrderNumber']}' is {status}: only an Active "
                                       "order can be confirmed.")
            confirmed = {"SalesOrderProcessingStatus": "Confirmed"}
            self.fno.update(HEADERS, self._key(header), confirmed, user=self.user)
            for line in lines:
                self.fno.update(LINES, self._line_key(line), confirmed, user=self.user)
        return {**self._key(header), "SalesOrderProcessingStatus": "Confirmed"}

    # -- totals ----------------------------------------------------------------------------------
    def _line_totals(self, line: Row) -> tuple[Decimal, Decimal]:
        """(line amount, line tax). A line whose amount was never set gets quantity x price less the
        per-unit line discount (F&O's own line amount rule for a price quantity of 1)."""
        amount = _money(line.get("LineAmount"))
        if not amount:
            quantity = _money(line.get("OrderedSalesQuantity"))
            amount = quantity * (_money(line.get("SalesPrice")) - _money(line.get("LineDiscountAmount")))
        amount = amount.quantize(CENT, rounding=ROUND_HALF_UP)
        tax = (amount * Decimal(str(self.fno.settings.sales_tax_percent)) / 100).quantize(CENT, ROUND_HALF_UP)
        return amount, tax

    def _totals(self, header: Row, lines: list[Row]) -> dict[str, Decimal]:
        amounts = [self._line_totals(line) for line in lines]
        line_tax = sum((tax for _, tax in amounts), Decimal(0))
        tax = line_tax + _money(header.get("OrderHeaderTaxAmount"))
        charges = sum((_money(line.get("TotalChargesAmount")) for line in lines), Decimal(0))
        discount = sum((_money(line.get("TotalDiscountAmount")) for line in lines), Decimal(0))
        net = sum((amount for amount, _ in amounts), Decimal(0))
        return {"net": net, "tax": tax, "charges": charges, "discount": discount, "total": net + tax + charges}

    def calculate_totals(self, action: OrderAction) -> dict[str, Any]:
        with self.fno.change_set():
            header, lines = self._order(action)
            if header.get("SalesOrderProcessingStatus") == "Canceled":
                raise ActionError(409, f"Sales order '{header['SalesOrderNumber']}' is Canceled: its totals are "
                                       "not calculated.")
            totals = self._totals(header, lines)
            values = {"OrderTotalAmount": _stored(totals["total"]), "OrderTotalTaxAmount": _stored(totals["tax"]),
                      "OrderTotalChargesAmount": _stored(totals["charges"]),
                      "OrderTotalDiscountAmount": _stored(totals["discount"]),
                      "TotalDiscountAmount": _stored(totals["discount"]), "AreTotalsUpdated": "Yes"}
            self.fno.update(HEADERS, self._key(header), values, user=self.user)  # first: lines repeat its flags
            for line in lines:
                amount, tax = self._line_totals(line)
                self.fno.update(LINES, self._line_key(line),
                                {"LineAmount": _stored(amount), "TotalTaxAmount": _stored(tax),
                                 "AreTotalsCalculated": "Yes", "AreSalesOrderTotalsUpdated": "Yes"}, user=self.user)
        return {**self._key(header), **values}

    # -- invoice ---------------------------------------------------------------------------------
    def post_invoice(self, action: OrderAction) -> dict[str, Any]:
        with self.fno.change_set():
            header, lines = self._order(action)
            number, company = header["SalesOrderNumber"], header["dataAreaId"]
            status = header.get("SalesOrderProcessingStatus")
            if status not in INVOICEABLE:
                reason = "is not confirmed" if status == "Active" else f"is {status}"
                raise ActionError(409, f"Sales order '{number}' {reason}: only a confirmed order can be invoiced.")
            if not lines:
                raise ActionError(409, f"Sales order '{number}' has no lines: nothing to invoice.")
            now = self.fno.clock().astimezone(timezone.utc)
            invoice_date = datetime(now.year, now.month, now.day, tzinfo=timezone.utc)
            invoice_key = {"dataAreaId": company,
                           "InvoiceNumber": self.fno.next_number("sales-invoice", company, "CIV-"),
                           "InvoiceDate": format_datetime(invoice_date),
                           "LedgerVoucher": self.fno.next_number("ledger-voucher", company, "ARI-")}
            totals = self._totals(header, lines)
            self.fno.create(INVOICE_HEADERS, {**self._copied(INVOICE_HEADERS, HEADERS, header), **invoice_key,
                                              "InvoiceAddressState": header.get("InvoiceAddressStateId") or "",
                                              "InvoiceCustomerAccountNumber": self._invoice_account(header),
                                              "TotalInvoiceAmount": _stored(totals["total"]),
                                              "TotalTaxAmount": _stored(totals["tax"]),
                                              "InvoiceHeaderTaxAmount": _stored(_money(header.get(
                                                  "OrderHeaderTaxAmount"))),
                                              "TotalChargeAmount": _stored(totals["charges"]),
                                              "TotalDiscountAmount": _stored(totals["discount"])}, user=self.user)
            # The order first: its lines repeat its processing status (sandbox/fno.py _order_fields_of_line).
            self.fno.update(HEADERS, self._key(header), {"SalesOrderStatus": "Invoiced",
                                                         "SalesOrderProcessingStatus": "Invoiced"}, user=self.user)
            for line in lines:
                amount, tax = self._line_totals(line)
                self.fno.create(INVOICE_LINES, {
                    **self._copied(INVOICE_LINES, LINES, line), **invoice_key,
                    "LineCreationSequenceNumber": line["LineCreationSequenceNumber"],
                    "InvoicedQuantity": line.get("OrderedSalesQuantity") or 0, "LineAmount": _stored(amount),
                    "LineTotalTaxAmount": _stored(tax),
                    "LineTotalDiscountAmount": line.get("TotalDiscountAmount") or 0,
                    "LineTotalChargeAmount": line.get("TotalChargesAmount") or 0,
                    "InventoryWarehouseId": line.get("ShippingWarehouseId") or "",
                    "InventorySiteId": line.get("ShippingSiteId") or ""}, user=self.user)
                self.fno.update(LINES, self._line_key(line), {"SalesOrderLineStatus": "Invoiced",
                                                              "SalesOrderProcessingStatus": "Invoiced"},
                                user=self.user)
        # Sent only once the posting transaction committed (wire-formats 3.1).
        self.fno.events.raise_business_event(INVOICE_EVENT, company, {
            "InvoiceAccount": self._invoice_account(header),
            "InvoiceAmountInAccountingCurrency": totals["total"], "InvoiceDate": invoice_date,
            "InvoiceDueDate": invoice_date + timedelta(days=DUE_DAYS), "InvoiceId": invoice_key["InvoiceNumber"],
            "InvoiceTaxAmount": totals["tax"], "LegalEntity": company.upper(), "SalesOrderId": number,
        }, self.fno.user(self.user))
        return {**invoice_key, "SalesOrderNumber": number, "TotalInvoiceAmount": _stored(totals["total"])}

    @staticmethod
    def _invoice_account(header: Row) -> str:
        return header.get("InvoiceCustomerAccountNumber") or header.get("OrderingCustomerAccountNumber") or ""

    def _copied(self, target_set: str, source_set: str, row: Row) -> Row:
        """The fields an invoice row takes over from its order row: those both entities have, by name."""
        target, source = self.fno.entity(target_set), self.fno.entity(source_set)
        return {name: row[name] for name in target.fields
                if name in source.fields and name not in target.key and name in row}


def action_routes(fno: FnO) -> list[BaseRoute]:
    actions = SalesActions(fno)

    def route(name: str, run: Any) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                raw = await request.body()
                action = OrderAction.model_validate(json.loads(raw) if raw else {})
            except (ValueError, ValidationError) as exc:
                return JSONResponse({"error": f"the body must be JSON {{\"dataAreaId\": ..., "
                                              f"\"SalesOrderNumber\": ...}}: {exc}"}, status_code=400)
            try:
                return JSONResponse(await asyncio.to_thread(run, action))
            except ActionError as exc:
                return JSONResponse({"error": exc.reason}, status_code=exc.status)

        return Route(f"{ADMIN_PREFIX}/actions/{name}", endpoint, methods=["POST"])

    async def events(request: Request) -> Response:
        """The business events workspace: activations, what was sent, the Errors tab."""
        ev = fno.events
        return JSONResponse({**ev.activations(), "endpoint": ev.endpoint.name if ev.endpoint else None,
                             "delivered": len(ev.delivered()),
                             "errors": [e.model_dump(exclude={"message"}) for e in ev.errors()]})

    return [route("confirm-sales-order", actions.confirm),
            route("calculate-sales-totals", actions.calculate_totals),
            route("post-sales-invoice", actions.post_invoice),
            Route(f"{ADMIN_PREFIX}/events", events, methods=["GET"])]
