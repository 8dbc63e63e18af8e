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
from sandbox.dataverse_tables import processing_status
from sandbox.fno import FnO
from sandbox.server import SandboxServer
from tests.e2e.test_quotes_e2e import catalogue, killed_mid_document

pytestmark = pytest.mark.e2e

HEADERS, LINES = "CDSSalesOrderHeaders", "CDSSalesOrderLines"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        yield local


def draft_order(dataverse: Dataverse, number: str, account_id: str, uom: str, products: list[str],
                quantity: int = 3) -> str:
    """A draft order (P2C processing status Draft) with one line per product: quantity 3, discount $10.00."""
    order_id = dataverse.create("salesorder", {"name": f"Order {number}", "ordernumber": number,
                                               "customerid": ("account", account_id), "shipto_country": "USA",
                                               "msdynce_processingstatus": processing_status("Draft")})
    for product in products:
        dataverse.create("salesorderdetail", {"salesorderid": ("salesorder", order_id), "productid": ("product", product),
                                              "uomid": ("uom", uom), "quantity": quantity, "priceperunit": 10,
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

    await asyncio.to_thread(dataverse.update, "salesorder", order_id,
                            {"msdynce_processingstatus": processing_status("Active")})
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


def order_lines_in_sales(dataverse: Dataverse, order_id: str) -> dict[int, tuple[str, Decimal]]:
    numbers = {r["productid"]: r["productnumber"] for r in dataverse.rows("product")}
    return {r["sequencenumber"]: (numbers[r["_productid_value"]], Decimal(str(r["quantity"])))
            for r in dataverse.rows("salesorderdetail") if r["_salesorderid_value"] == order_id}


def order_in_fno(fno: FnO, number: str) -> tuple[dict[str, object] | None, dict[int, tuple[str, Decimal]]]:
    header = fno.get(HEADERS, {"dataAreaId": "usmf", "SalesOrderNumber": number})
    return header, {r["LineCreationSequenceNumber"]: (r["ProductNumber"], Decimal(str(r["OrderedSalesQuantity"])))
                    for r in fno.rows(LINES, "usmf") if r["SalesOrderNumber"] == number}


async def test_a_host_killed_mid_order_leaves_no_half_order_and_converges(
        sandbox: SandboxServer, tmp_path: Path) -> None:
    """Orders are create-only: if the killed host's change set landed, the order is whole and the redelivery
    leaves it to F&O; if it did not, the redelivery writes it whole."""
    dataverse, fno = sandbox.dataverse, sandbox.fno

    def save(account_id: str, uom: str, products: list[str]) -> str:
        order_id = draft_order(dataverse, "CRO-ORD-1", account_id, uom, products, quantity=2)
        dataverse.update("salesorder", order_id, {"msdynce_processingstatus": processing_status("Active")})
        return order_id

    await killed_mid_document(sandbox, tmp_path, "CRO", save=save,
                              in_sales=lambda order_id: order_lines_in_sales(dataverse, order_id),
                              in_fno=lambda: order_in_fno(fno, "CRO-ORD-1"))
    assert len(fno.rows(HEADERS, "usmf")) == 1
