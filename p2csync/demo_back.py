"""The F&O -> Sales half of ``make demo``: what people do in F&O, and what Sales shows afterwards.

* Products: released in F&O through its OData (as an F&O user would); each appears in Sales, active, priced in
  the first price list of its currency.
* The order made in Sales comes back: F&O confirms it and calculates its totals (the sandbox actions, over HTTP,
  as a person or a batch job does), and the Sales order shows F&O's processing status and totals on the SAME
  order; then F&O posts its invoice, and Sales gets the invoice with its lines and the order turns Invoiced.
* An order entered in F&O for a customer that came from Sales appears in Sales, with the header tax as the
  "Freight Tax" write-in line.

Every step prints both sides. Nothing here writes to Sales or F&O behind the product's back: F&O changes go
through F&O's OData and actions, and reach Sales only through the events F&O raises and the product's handlers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from p2csync.devstack import LocalStack
from sandbox import SALES_TOKEN
from sandbox.dataverse_tables import processing_status

#: Released in F&O (number, name, price); the demo's quotes and orders use them once they are in Sales.
FNO_PRODUCTS = [("D0001", "Mountain bike", "1200"), ("D0002", "Helmet", "89.5"), ("D0003", "Lights", "35"),
                ("D0004", "Lock", "49.99")]


@dataclass
class Step:
    """One record of the story: what must be true, and both sides as they ended."""

    name: str
    sales: str = ""
    fno: str = ""
    ok: bool = False
    detail: str = ""
    lines: list[str] = field(default_factory=list)
    latency_ms: float | None = None  # from the change in F&O to Sales showing it


async def until_in_sales(probe: Any, started: float, timeout: float = 20.0) -> float | None:
    """Milliseconds from ``started`` (time.perf_counter) until ``probe()`` is true in Sales; None on timeout."""
    while time.perf_counter() - started < timeout:
        if await asyncio.to_thread(probe):
            return (time.perf_counter() - started) * 1000
        await asyncio.sleep(0.02)
    return None


def fno_client(stack: LocalStack) -> httpx.Client:
    """A person in F&O: OData and the sandbox's actions over HTTP, with the F&O sales user's token."""
    return httpx.Client(base_url=stack.sandbox.fno_url, trust_env=False, timeout=30,
                        headers={"Authorization": f"Bearer {SALES_TOKEN}"})


def act(stack: LocalStack, action: str, company: str, number: str) -> dict[str, Any]:
    with fno_client(stack) as http:
        answer = http.post(f"/_sandbox/actions/{action}", json={"dataAreaId": company, "SalesOrderNumber": number})
        answer.raise_for_status()
        return dict(answer.json())


# ------------------------------------------------------------------------------------------------ products


async def release_products(stack: LocalStack) -> dict[str, float | None]:
    """Release the products in F&O; per product, the milliseconds until Sales has it priced."""
    def release() -> None:
        with fno_client(stack) as http:
            for number, name, price in FNO_PRODUCTS:
                created = http.post("/data/CDSReleasedDistinctProducts", json={
                    "dataAreaId": "usmf", "ProductNumber": number, "ProductName": name, "SalesUnitSymbol": "ea",
                    "SalesPrice": float(price), "ProductType": "Item", "IsStockedProduct": "Yes"})
                created.raise_for_status()
    started = time.perf_counter()
    await asyncio.to_thread(release)
    dataverse = stack.sandbox.dataverse

    def priced(number: str) -> bool:
        product = next((r for r in dataverse.rows("product") if r["productnumber"] == number), None)
        return product is not None and any(r["_productid_value"] == product["productid"]
                                           for r in dataverse.rows("productpricelevel"))
    return {number: await until_in_sales(lambda n=number: priced(n), started) for number, _, _ in FNO_PRODUCTS}


def verify_products(stack: LocalStack, latencies: dict[str, float | None]) -> list[Step]:
    dataverse = stack.sandbox.dataverse
    steps = []
    for number, name, price in FNO_PRODUCTS:
        step = Step(f"product {number}", fno=f"{name}, released in usmf at {price} USD",
                    latency_ms=latencies.get(number))
        product = next((r for r in dataverse.rows("product") if r["productnumber"] == number), None)
        items = [] if product is None else [r for r in dataverse.rows("productpricelevel")
                                            if r["_productid_value"] == product["productid"]]
        if product is not None and items:
            lists = {r["pricelevelid"]: r["name"] for r in dataverse.rows("pricelevel")}
            amount = Decimal(str(items[0]["amount"]))
            state = "active" if product["statecode"] == 0 else "draft"
            step.sales = f"{product['name']}, {state}, {amount:g} in '{lists.get(items[0]['_pricelevelid_value'])}'"
            step.ok = amount == Decimal(price) and product["statecode"] == 0
        steps.append(step)
    return steps


# ----------------------------------------------------------------------------------------------- orders back


def sales_order(stack: LocalStack, number: str) -> dict[str, Any] | None:
    return next((r for r in stack.sandbox.dataverse.rows("salesorder") if r["ordernumber"] == number), None)


def status_label(value: Any) -> str:
    return next((label for label in ("Draft", "Active", "Confirmed", "Invoiced", "Cancelled")
                 if processing_status(label) == value), str(value))


def sales_lines(stack: LocalStack, order_id: str) -> list[str]:
    numbers = {r["productid"]: r["productnumber"] for r in stack.sandbox.dataverse.rows("product")}
    rows = sorted((r for r in stack.sandbox.dataverse.rows("salesorderdetail") if r["_salesorderid_value"] == order_id),
                  key=lambda r: r["sequencenumber"])
    return [f"{r['sequencenumber']}:{numbers.get(r['_productid_value']) or r['productdescription']} "
            f"x{Decimal(str(r['quantity'])):g} @ {Decimal(str(r['priceperunit'])):g}" for r in rows]


def describe_order(stack: LocalStack, number: str, company: str = "usmf") -> tuple[dict[str, Any] | None, str, str]:
    """(Sales order row, Sales side text, F&O side text)."""
    fno = stack.sandbox.fno.get("CDSSalesOrderHeaders", {"dataAreaId": company, "SalesOrderNumber": number})
    order = sales_order(stack, number)
    fno_text = "(none)" if fno is None else (f"{fno['SalesOrderProcessingStatus']}, total "
                                             f"{Decimal(str(fno['OrderTotalAmount'])):g}, totals "
                                             f"{'calculated' if fno['AreTotalsUpdated'] == 'Yes' else 'not calculated'}")
    sales_text = "(none)" if order is None else (f"{status_label(order.get('msdynce_processingstatus'))}, total "
                                                 f"{Decimal(str(order.get('totalamount') or 0)):g}, statecode "
                                                 f"{order['statecode']}")
    return order, sales_text, fno_text


async def confirm_and_total(stack: LocalStack, number: str) -> float | None:
    """Confirm and total the order in F&O; the milliseconds until Sales shows it Confirmed."""
    def run() -> None:
        act(stack, "confirm-sales-order", "usmf", number)
        act(stack, "calculate-sales-totals", "usmf", number)
    started = time.perf_counter()
    await asyncio.to_thread(run)
    return await until_in_sales(lambda: (sales_order(stack, number) or {}).get("msdynce_processingstatus")
                                == processing_status("Confirmed"), started)


def verify_order_back(stack: LocalStack, number: str, order_id: str, latency_ms: float | None = None) -> Step:
    order, sales_text, fno_text = describe_order(stack, number)
    step = Step(f"order {number} back", sales=sales_text, fno=fno_text, latency_ms=latency_ms)
    if order is not None:
        step.lines = sales_lines(stack, order["salesorderid"])
        step.ok = (order["salesorderid"] == order_id and order.get("msdynce_processingstatus")
                   == processing_status("Confirmed") and order.get("totalamount") is not None)
    return step


async def enter_fno_order(stack: LocalStack, number: str, customer: str) -> float | None:
    """An order taken by phone in F&O for a customer that came from Sales: two lines and a header tax."""
    def run() -> None:
        with fno_client(stack) as http:
            http.post("/data/CDSSalesOrderHeaders", json={
                "dataAreaId": "usmf", "SalesOrderNumber": number, "SalesOrderName": "Phone order",
                "OrderingCustomerAccountNumber": customer, "CurrencyCode": "USD",
                "OrderHeaderTaxAmount": 7.5}).raise_for_status()
            for n, (product, quantity) in enumerate([("D0002", 2), ("D0003", 4)], 1):
                http.post("/data/CDSSalesOrderLines", json={
                    "dataAreaId": "usmf", "SalesOrderNumber": number, "LineCreationSequenceNumber": n,
                    "ProductNumber": product, "SalesUnitSymbol": "ea", "OrderedSalesQuantity": quantity,
                    "SalesPrice": 50, "CurrencyCode": "USD"}).raise_for_status()
    await asyncio.to_thread(run)
    return await confirm_and_total(stack, number)


def verify_fno_order(stack: LocalStack, number: str, latency_ms: float | None = None) -> Step:
    order, sales_text, fno_text = describe_order(stack, number)
    step = Step(f"order {number} (made in F&O)", sales=sales_text, fno=fno_text, latency_ms=latency_ms)
    if order is not None:
        step.lines = sales_lines(stack, order["salesorderid"])
        step.ok = len(step.lines) == 3 and any("Freight Tax" in line for line in step.lines)
    return step


async def post_invoice(stack: LocalStack, number: str) -> tuple[str, float | None]:
    """F&O posts the order's invoice (the sandbox action, over HTTP); the invoice number, and the milliseconds
    until Sales has the invoice."""
    started = time.perf_counter()
    answer = await asyncio.to_thread(act, stack, "post-sales-invoice", "usmf", number)
    invoice = str(answer["InvoiceNumber"])
    latency = await until_in_sales(lambda: any(r["invoicenumber"] == invoice
                                               for r in stack.sandbox.dataverse.rows("invoice")), started)
    return invoice, latency


def verify_invoice(stack: LocalStack, invoice_number: str, order_number: str,
                   latency_ms: float | None = None) -> Step:
    """The invoice in Sales, linked to its order, with its lines; the order Invoiced (statecode 4)."""
    dataverse = stack.sandbox.dataverse
    fno = next((r for r in stack.sandbox.fno.rows("SalesInvoiceHeadersV2", "usmf")
                if r["InvoiceNumber"] == invoice_number), None)
    invoice = next((r for r in dataverse.rows("invoice") if r["invoicenumber"] == invoice_number), None)
    order = sales_order(stack, order_number)
    step = Step(f"invoice {invoice_number}", latency_ms=latency_ms,
                fno="(none)" if fno is None else f"posted for {order_number}, total "
                                                f"{Decimal(str(fno.get('TotalInvoiceAmount') or 0)):g}")
    if invoice is not None and order is not None:
        lines = sorted((r for r in dataverse.rows("invoicedetail") if r["_invoiceid_value"] == invoice["invoiceid"]),
                       key=lambda r: r["sequencenumber"])
        state = "order Invoiced" if order["statecode"] == 4 else f"order statecode {order['statecode']}"
        step.sales = f"invoice of {order_number}, total {Decimal(str(invoice.get('totalamount') or 0)):g}; {state}"
        step.lines = [f"{r['sequencenumber']}: x{Decimal(str(r['quantity'])):g} @ {Decimal(str(r['priceperunit'])):g}"
                      for r in lines]
        step.ok = invoice.get("_salesorderid_value") == order["salesorderid"] and bool(lines) and \
            order["statecode"] == 4
    return step


def print_steps(title: str, steps: list[Step]) -> None:
    print(title)
    header = f"  {'record':<30} {'F&O':<44} {'Sales':<58} {'latency':>8}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for step in steps:
        latency = f"{step.latency_ms:.0f} ms" if step.latency_ms is not None else "-"
        print(f"  {step.name:<30} {step.fno[:44]:<44} {step.sales[:58]:<58} {latency:>8}  "
              f"{'ok' if step.ok else 'FAILED'}")
        for line in step.lines:
            print(f"  {'':<30} {'':<44} {line}")
        if step.detail:
            print(f"  {'':<30} {step.detail}")
    print()
