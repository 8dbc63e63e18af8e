"""Sales orders back from F&O (orders_back) against the sandbox over loopback HTTP. F&O changes are made as a person
in F&O makes them (OData writes, the sandbox actions confirm / calculate totals); their data events go through
the runtime, the flow and one Dataverse $batch change set.

Covered: an order made in Sales, activated and synced, comes back onto the SAME Sales order once confirmed and
totalled (lines updated in place, never duplicated), and our own writes come back from Sales only as echoes; an
order made in F&O is created in Sales with its lines and the header tax as the "Freight Tax" write-in line; a
line changed and a line removed in F&O follow; an order without totals, or for a customer not from Sales, is
skipped with the reason; a product Sales lacks defers naming it; a replayed event writes nothing."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx

from p2csync.outcomes import Applied, Deferred, Outcome, Skipped
from p2csync.runtime import InboundMessage, SyncRuntime
from sandbox import SALES_TOKEN, SandboxServer
from sandbox.dataverse_tables import processing_status
from tests.integration import test_quotes_sandbox as quotes
from tests.integration.runtime_world import Capture, RecordingActions, fno_change, fno_message
from tests.integration.test_orders_sandbox import activate, draft_order
from tests.integration.test_quotes_sandbox import Catalogue, synced_account

registered = quotes.registered  # every mapping registered; 20 products in both systems
catalogue = quotes.catalogue
HEADERS, LINES = "CDSSalesOrderHeaders", "CDSSalesOrderLines"
CONFIRMED = processing_status("Confirmed")  # msdynce_processingstatus (reference 6.7), as the sandbox numbers it


async def handled(runtime: SyncRuntime, message: InboundMessage) -> Outcome:
    return await runtime.handle(message, message, RecordingActions())


async def handled_all(runtime: SyncRuntime, messages: list[InboundMessage]) -> list[Outcome]:
    return [await handled(runtime, message) for message in messages]


def action(sandbox: SandboxServer, name: str, number: str, company: str = "usmf") -> None:
    """A sandbox action over HTTP, as a person in F&O (or a script) does it."""
    response = httpx.post(f"{sandbox.fno_url}/_sandbox/actions/{name}", trust_env=False,
                          headers={"Authorization": f"Bearer {SALES_TOKEN}"},
                          json={"dataAreaId": company, "SalesOrderNumber": number})
    assert response.status_code == 200, response.text


async def in_fno(sandbox: SandboxServer, act: Any) -> list[InboundMessage]:
    """The data events ``act`` raises on order headers and lines."""
    return await fno_change(sandbox, act, expect=None, data_events=(HEADERS, LINES))


def confirm_and_total(sandbox: SandboxServer, number: str) -> Any:
    def act() -> None:
        action(sandbox, "confirm-sales-order", number)
        action(sandbox, "calculate-sales-totals", number)
    return act


def sales_order(sandbox: SandboxServer, number: str) -> dict[str, Any] | None:
    return next((r for r in sandbox.dataverse.rows("salesorder") if r["ordernumber"] == number), None)


def sales_lines(sandbox: SandboxServer, order_id: str) -> dict[int, dict[str, Any]]:
    return {r["sequencenumber"]: r for r in sandbox.dataverse.rows("salesorderdetail")
            if r["_salesorderid_value"] == order_id}


def fno_order(sandbox: SandboxServer, number: str, account: str, products: list[str], **header: Any) -> None:
    """An order entered in F&O: header and one line per product (quantity n, price 20)."""
    sandbox.fno.create(HEADERS, {"dataAreaId": "usmf", "SalesOrderNumber": number, "SalesOrderName": "Phone order",
                                 "OrderingCustomerAccountNumber": account, "CurrencyCode": "USD", **header})
    for n, product in enumerate(products, 1):
        sandbox.fno.create(LINES, {"dataAreaId": "usmf", "SalesOrderNumber": number, "LineCreationSequenceNumber": n,
                                   "ProductNumber": product, "SalesUnitSymbol": "ea", "OrderedSalesQuantity": n,
                                   "SalesPrice": 20, "CurrencyCode": "USD", "ProductName": f"Product {product}"})


async def test_an_order_from_sales_comes_back_onto_the_same_order_and_our_writes_are_only_echoes(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-B01")
    order_id, drafts = await draft_order(sandbox, capture, catalogue, "ORD-B01", account_id, ["D0001", "D0002"])
    before = {n: r["salesorderdetailid"] for n, r in sales_lines(sandbox, order_id).items()}
    await in_fno(sandbox, lambda: None)  # the data events are active from here on
    for message in [*drafts, await activate(sandbox, capture, order_id)]:
        await handled(runtime, message)
    assert sandbox.fno.get(HEADERS, {"dataAreaId": "usmf", "SalesOrderNumber": "ORD-B01"}) is not None

    # F&O raises data events for the order the integration wrote (it does not know who we are); an open order
    # is not synced back, so nothing bounces.
    assert await asyncio.to_thread(sandbox.fno.events.wait_idle, 10)
    created = [fno_message(m) for m in sandbox.fno.events.delivered("data_event")]
    assert len(created) == 3  # the header and its two lines
    sandbox.fno.request_log.clear()
    bounced = await handled_all(runtime, created)
    assert all(isinstance(o, Skipped) and o.reason == "filtered out: SalesOrderProcessingStatus is 'Active', "
               "expected anything else (as the Create event shows it; F&O not read)" for o in bounced), bounced
    assert sandbox.fno.request_log.entries() == []  # each event judged by its own values (issue 11, figure 2)
    events = await in_fno(sandbox, confirm_and_total(sandbox, "ORD-B01"))
    assert events, "confirming and totalling raise the header's data events"
    capture.take()
    outcomes = await handled_all(runtime, events)
    applied = [o for o in outcomes if isinstance(o, Applied)]
    assert len(applied) == 1, outcomes
    assert applied[0].detail.startswith("updated salesorders(ordernumber='ORD-B01') from CDSSalesOrderHeaders(")
    assert "(header; order_lines: 0 added, 2 changed, 0 removed)" in applied[0].detail
    order = sales_order(sandbox, "ORD-B01")
    assert order is not None and order["salesorderid"] == order_id  # the same Sales order
    header = sandbox.fno.get(HEADERS, {"dataAreaId": "usmf", "SalesOrderNumber": "ORD-B01"})
    assert header is not None
    assert order["msdynce_processingstatus"] == CONFIRMED and order["msdynce_ismaintainedexternally"] is True
    assert Decimal(str(order["totalamount"])) == Decimal(str(header["OrderTotalAmount"]))
    lines = sales_lines(sandbox, order_id)
    assert {n: r["salesorderdetailid"] for n, r in lines.items()} == before  # updated in place, not duplicated
    assert all(r["msdynce_ordernumber"] == "ORD-B01" for r in lines.values())

    # Our Dataverse writes raise Sales webhooks: each one is an echo, never a change to sync back to F&O.
    await sandbox.dataverse.wait_idle_async(10)
    echoes = [m for d in capture.take() for m in await _as_messages(d)]
    assert echoes, "the change set's writes raise webhooks"
    sandbox.fno.request_log.clear()
    echo_outcomes = await handled_all(runtime, echoes)
    assert all(isinstance(o, Skipped) and o.reason.startswith("echo") for o in echo_outcomes), echo_outcomes
    assert [r for r in sandbox.fno.request_log.entries() if r.method != "GET"] == []

    # at-least-once: the same events again write nothing
    sandbox.dataverse.request_log.clear()
    again = await handled_all(runtime, events)
    assert all(isinstance(o, Skipped) for o in again), again
    assert [r for r in sandbox.dataverse.request_log.entries() if r.method != "GET"] == []


async def _as_messages(delivery: Any) -> list[InboundMessage]:
    from datetime import UTC, datetime

    from p2csync.ingress import accept_dataverse_webhook
    from tests.integration.runtime_world import QUEUE, SentMessages

    sent = SentMessages()
    result = await accept_dataverse_webhook(delivery.body, delivery.headers, sent, QUEUE)
    assert result.status == 202, result.body
    return [InboundMessage(queue=QUEUE, body=out.body, message_id=out.message_id,
                           application_properties=dict(out.application_properties), content_type=out.content_type,
                           enqueued_time_utc=datetime.now(UTC), lock_token=f"lock-{out.message_id}")
            for out in sent.sent]


async def test_an_order_made_in_fno_is_created_in_sales_and_follows_line_changes(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    await synced_account(sandbox, capture, runtime, "ACC-B02")
    events = await in_fno(sandbox, lambda: fno_order(sandbox, "FO-0001", "ACC-B02", ["D0003", "D0004", "D0005"],
                                                      OrderHeaderTaxAmount=4.5))
    outcomes = await handled_all(runtime, events)
    assert all(isinstance(o, Skipped) and "SalesOrderProcessingStatus is 'Active'" in o.reason or
               "AreTotalsUpdated" in o.reason for o in outcomes), outcomes  # open, no totals: not yet

    outcomes = await handled_all(runtime, await in_fno(sandbox, confirm_and_total(sandbox, "FO-0001")))
    [created] = [o for o in outcomes if isinstance(o, Applied)]
    assert created.detail.startswith("created salesorders(ordernumber='FO-0001')")
    assert "(header; order_lines: 4 added, 0 changed, 0 removed) in one change set of 5 operations" in created.detail
    order = sales_order(sandbox, "FO-0001")
    assert order is not None and order["name"] == "Phone order" and order["msdynce_processingstatus"] == CONFIRMED
    assert order["_customerid_value"] is not None
    lines = sales_lines(sandbox, order["salesorderid"])
    assert sorted(lines) == [1, 2, 3, 100000]
    assert [Decimal(str(lines[n]["quantity"])) for n in (1, 2, 3)] == [1, 2, 3]
    assert lines[1]["_productid_value"] == catalogue.products["D0003"]
    tax = lines[100000]  # reference 9.11: the header tax as a write-in line
    assert (tax["productdescription"], tax["isproductoverridden"], tax["_productid_value"]) == \
        ("Freight Tax", True, None)
    assert Decimal(str(tax["priceperunit"])) == Decimal("4.5")

    def change_lines() -> None:
        key = {"dataAreaId": "usmf", "SalesOrderNumber": "FO-0001"}
        sandbox.fno.update(LINES, {**key, "LineCreationSequenceNumber": 2}, {"OrderedSalesQuantity": 7})
        sandbox.fno.delete(LINES, {**key, "LineCreationSequenceNumber": 3})
    outcomes = await handled_all(runtime, await in_fno(sandbox, change_lines))
    [changed] = [o for o in outcomes if isinstance(o, Applied)]
    assert "(header; order_lines: 0 added, 1 changed, 1 removed)" in changed.detail, changed.detail
    lines = sales_lines(sandbox, order["salesorderid"])
    assert sorted(lines) == [1, 2, 100000] and Decimal(str(lines[2]["quantity"])) == 7


async def test_orders_without_totals_or_for_customers_not_from_sales_are_skipped_with_the_reason(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    await synced_account(sandbox, capture, runtime, "ACC-B03")
    sandbox.fno.create("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "FO-CUST", "CustomerGroupId": "10"})

    def confirmed_only() -> None:
        fno_order(sandbox, "FO-0002", "ACC-B03", ["D0001"])
        action(sandbox, "confirm-sales-order", "FO-0002")
    outcomes = await handled_all(runtime, await in_fno(sandbox, confirmed_only))
    assert any(isinstance(o, Skipped) and o.reason == "filtered out: AreTotalsUpdated is 'No', expected 'Yes'"
               for o in outcomes), outcomes
    outcomes = await handled_all(runtime, await in_fno(sandbox, lambda: (
        fno_order(sandbox, "FO-0003", "FO-CUST", ["D0001"]), confirm_and_total(sandbox, "FO-0003")())))
    assert any(isinstance(o, Skipped) and o.reason == ("filtered out: OrderingCustomerIsExternallyMaintained is "
                                                       "'No', expected 'Yes'") for o in outcomes), outcomes
    assert sales_order(sandbox, "FO-0002") is None and sales_order(sandbox, "FO-0003") is None


async def test_a_product_sales_lacks_defers_naming_it(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    await synced_account(sandbox, capture, runtime, "ACC-B04")
    sandbox.fno.create("CDSReleasedDistinctProducts", {"dataAreaId": "usmf", "ProductNumber": "F-ONLY"})
    outcomes = await handled_all(runtime, await in_fno(sandbox, lambda: (
        fno_order(sandbox, "FO-0004", "ACC-B04", ["F-ONLY"]), confirm_and_total(sandbox, "FO-0004")())))
    deferred = [o for o in outcomes if isinstance(o, Deferred)]
    assert deferred and deferred[0].reason.startswith("waiting for a product with productnumber 'F-ONLY' in Sales")
    assert sales_order(sandbox, "FO-0004") is None  # never a document pointing at nothing
