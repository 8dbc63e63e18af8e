"""The prospect-to-cash round trip through the local host (function_app.py) and both queues, over real loopback
HTTP: a product released in F&O reaches Sales; an account becomes a customer; an order made in Sales is activated
and reaches F&O; F&O confirms and totals it, changes a line, invoices it; Sales ends with the order Invoiced and its
invoice. A free-text invoice (written through the sandbox's OData, standing for one posted in F&O) is skipped with
its reason. Then the counts: every Sales event our own writes raised
ended as an echo, and the integration wrote nothing to F&O after the order was created there, so no order bounced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from p2csync.devstack import LocalStack
from sandbox import SALES_TOKEN
from sandbox.dataverse_tables import EACH_UNIT_ID, processing_status

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        local.sandbox.fno.events.retry_wait = 0.01
        yield local


def fno_http(stack: LocalStack, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A person in F&O (the sales user), over HTTP."""
    with httpx.Client(base_url=stack.sandbox.fno_url, trust_env=False,
                      headers={"Authorization": f"Bearer {SALES_TOKEN}"}) as http:
        answer = http.request(method, path, json=body)
        assert answer.status_code < 300, answer.text
        return dict(answer.json()) if answer.content else {}


async def settled(stack: LocalStack) -> None:
    assert await asyncio.to_thread(stack.sandbox.fno.events.wait_idle, 20)
    assert await stack.wait_settled(30)
    assert await asyncio.to_thread(stack.sandbox.fno.events.wait_idle, 20)
    assert await stack.wait_settled(30)


def integration_writes(stack: LocalStack, system: str) -> list[tuple[str, str]]:
    log = stack.sandbox.fno.request_log if system == "fno" else stack.sandbox.dataverse.request_log
    integration = stack.sandbox.fno.users[0].user_id if system == "fno" else \
        stack.sandbox.dataverse.integration_user.id
    return [(r.method, r.path) for r in log.entries() if r.method != "GET" and r.user == integration]


async def test_the_round_trip_ends_invoiced_in_sales_and_nothing_bounces(stack: LocalStack) -> None:
    dataverse, fno = stack.sandbox.dataverse, stack.sandbox.fno
    order_key = {"dataAreaId": "usmf", "SalesOrderNumber": "RT-ORD-1"}
    await asyncio.to_thread(fno_http, stack, "POST", "/data/CDSReleasedDistinctProducts", {
        "dataAreaId": "usmf", "ProductNumber": "RT-P1", "ProductName": "Speaker", "SalesUnitSymbol": "ea",
        "SalesPrice": 250})
    await settled(stack)
    product = next(r for r in dataverse.rows("product") if r["productnumber"] == "RT-P1")
    assert product["statecode"] == 0 and Decimal(str(product["price"])) == 250

    account_id = await asyncio.to_thread(dataverse.create, "account", {"name": "Round Trip", "accountnumber": "RT-A1"})
    await settled(stack)

    def order() -> str:
        order_id = dataverse.create("salesorder", {
            "name": "Round trip", "ordernumber": "RT-ORD-1", "customerid": ("account", account_id),
            "msdynce_processingstatus": processing_status("Draft")})
        for _ in range(2):
            dataverse.create("salesorderdetail", {"salesorderid": ("salesorder", order_id), "quantity": 2,
                                                  "productid": ("product", product["productid"]),
                                                  "uomid": ("uom", EACH_UNIT_ID), "priceperunit": 250})
        dataverse.update("salesorder", order_id, {"msdynce_processingstatus": processing_status("Active")})
        return order_id
    order_id = await asyncio.to_thread(order)
    await settled(stack)
    assert fno.get("CDSSalesOrderHeaders", order_key) is not None
    fno.request_log.clear()
    dataverse.request_log.clear()
    since = datetime.now(UTC)

    # F&O: confirm, total, change a line, total again, invoice; plus a free-text invoice
    await asyncio.to_thread(fno_http, stack, "POST", "/_sandbox/actions/confirm-sales-order", order_key)
    await asyncio.to_thread(fno_http, stack, "POST", "/_sandbox/actions/calculate-sales-totals", order_key)
    await settled(stack)
    await asyncio.to_thread(fno_http, stack, "PATCH", "/data/CDSSalesOrderLines(dataAreaId='usmf',"
                            "SalesOrderNumber='RT-ORD-1',LineCreationSequenceNumber=2)", {"OrderedSalesQuantity": 5})
    await asyncio.to_thread(fno_http, stack, "POST", "/_sandbox/actions/calculate-sales-totals", order_key)
    await settled(stack)
    lines = {r["sequencenumber"]: r for r in dataverse.rows("salesorderdetail") if r["_salesorderid_value"] == order_id}
    assert sorted(lines) == [1, 2] and Decimal(str(lines[2]["quantity"])) == 5  # changed in F&O, followed in Sales
    invoice = (await asyncio.to_thread(fno_http, stack, "POST", "/_sandbox/actions/post-sales-invoice",
                                       order_key))["InvoiceNumber"]
    await asyncio.to_thread(fno_http, stack, "POST", "/data/SalesInvoiceHeadersV2", {
        "dataAreaId": "usmf", "InvoiceNumber": "FTI-0001", "InvoiceCustomerAccountNumber": "RT-A1",
        "InvoiceDate": "2026-12-01T00:00:00Z", "LedgerVoucher": "ARI-FT1"})
    await settled(stack)

    sales_order = next(r for r in dataverse.rows("salesorder") if r["ordernumber"] == "RT-ORD-1")
    assert sales_order["salesorderid"] == order_id and sales_order["statecode"] == 4  # Invoiced, the same order
    [sales_invoice] = [r for r in dataverse.rows("invoice") if r["invoicenumber"] == invoice]
    assert sales_invoice["_salesorderid_value"] == order_id
    assert len([r for r in dataverse.rows("invoicedetail") if r["_invoiceid_value"] == sales_invoice["invoiceid"]]) == 2
    assert not [r for r in dataverse.rows("invoice") if r["invoicenumber"] == "FTI-0001"]

    journal = await stack.ledger().journal_entries(since=since, limit=100_000)
    final = [e for e in journal if e.outcome != "deferred"]
    assert any("free-text invoice" in (e.reason or "") for e in final), [e.reason for e in final]
    # Nothing bounced: our Dataverse writes came back from Sales only as echoes, and the integration wrote
    # nothing to F&O after the order was created there.
    sales_side = [e for e in final if e.queue == "sales-events"]
    assert sales_side and all(e.outcome == "skipped" and (e.reason or "").startswith("skipped: echo")
                              for e in sales_side), [(e.outcome, e.reason) for e in sales_side]
    assert integration_writes(stack, "fno") == []
    assert integration_writes(stack, "dataverse")  # the order, its lines, the invoice: written by us
    print(f"echoes: {len(sales_side)} Sales events raised by our writes, all skipped; F&O writes by the "
          f"integration after the order was created: 0; Dataverse writes: {len(integration_writes(stack, 'dataverse'))}")
