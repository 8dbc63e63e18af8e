"""End to end through the local host: a Sales order saved as a draft with its lines, then activated -> webhook
POSTs -> queue -> orders flow -> F&O over real loopback HTTP: nothing in F&O while it is a draft; on activation a
sales order with every line and the discount split of reference 6.6; a later Sales change of the order is not
synced (F&O owns it), and nothing is dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from p2csync.devstack import LocalStack
from sandbox.dataverse import Dataverse
from tests.e2e.test_quotes_e2e import catalogue

pytestmark = pytest.mark.e2e

HEADERS, LINES = "CDSSalesOrderHeaders", "CDSSalesOrderLines"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        yield local


def draft_order(dataverse: Dataverse, number: str, account_id: str, uom: str, products: list[str]) -> str:
    """A draft order (P2C processing status Draft) with one line per product: quantity 3, discount $10.00."""
    order_id = dataverse.create("salesorder", {"name": f"Order {number}", "ordernumber": number,
                                               "customerid": ("account", account_id), "shipto_country": "USA",
                                               "msdynce_processingstatus": 1})
    for product in products:
        dataverse.create("salesorderdetail", {"salesorderid": ("salesorder", order_id), "productid": ("product", product),
                                              "uomid": ("uom", uom), "quantity": 3, "priceperunit": 10,
                                              "manualdiscountamount": 10})
    return order_id


async def test_an_order_activated_through_the_local_host_then_owned_by_fno(stack: LocalStack) -> None:
    dataverse, fno = stack.sandbox.dataverse, stack.sandbox.fno
    account_id = await asyncio.to_thread(dataverse.create, "account", {"name": "Fabrikam", "accountnumber": "E2E-O01"})
    assert await stack.wait_settled(20)
    uom, products = await asyncio.to_thread(catalogue, dataverse, fno, 3)
    order_id = await asyncio.to_thread(draft_order, dataverse, "E2E-ORD-1", account_id, uom, products)
    assert await stack.wait_settled(30)
    assert fno.rows(HEADERS) == []  # a draft is not synced

    await asyncio.to_thread(dataverse.update, "salesorder", order_id, {"msdynce_processingstatus": 2})
    assert await stack.wait_settled(30)
    header = fno.get(HEADERS, {"dataAreaId": "usmf", "SalesOrderNumber": "E2E-ORD-1"})
    assert header is not None and header["OrderingCustomerAccountNumber"] == "E2E-O01"
    lines = {r["LineCreationSequenceNumber"]: r for r in fno.rows(LINES, "usmf")}
    assert sorted(lines) == [1, 2, 3]
    assert {(r["ProductNumber"], Decimal(str(r["LineDiscountAmount"])), Decimal(str(r["FixedPriceCharges"])))
            for r in lines.values()} == {(f"E2E-P{n:02d}", Decimal("3.33"), Decimal("-0.01")) for n in (1, 2, 3)}

    await asyncio.to_thread(dataverse.update, "salesorder", order_id, {"name": "Renamed in Sales"})
    assert await stack.wait_settled(30)
    header = fno.get(HEADERS, {"dataAreaId": "usmf", "SalesOrderNumber": "E2E-ORD-1"})
    assert header is not None and header["CustomersOrderReference"] == "Order E2E-ORD-1"  # F&O owns the order
    dead = stack.queue.peek_dead_letters("sales-events")
    assert dead == [], [(m.dead_letter_reason, m.dead_letter_description) for m in dead]
