"""Invoices (F&O -> Sales) against the sandbox over loopback HTTP. Invoices are posted as a person in F&O posts
them (the sandbox action post-sales-invoice), which raises SalesInvoicePostedBusinessEvent; the event goes through
the runtime, the flow and one Dataverse $batch change set.

Covered: the whole chain (an account and an order made in Sales, activated, synced to F&O, confirmed and totalled
there, back in Sales, invoiced in F&O) ends with the invoice and its lines in Sales, linked to the order, which is
Invoiced, in one change set, our writes coming back only as echoes, and the order's late "Invoiced" update left
alone; the header's data event and replays write nothing more; a free-text invoice, and an invoice of a customer
not from Sales, are skipped with that reason; an invoice whose order is not in Sales waits, naming it, and is
written once the order arrives."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx

from p2csync.outcomes import Applied, Deferred, Skipped
from p2csync.runtime import InboundMessage, SyncRuntime
from sandbox import SALES_TOKEN, SandboxServer
from sandbox.dataverse_tables import processing_status
from tests.integration import test_quotes_sandbox as quotes
from tests.integration.runtime_world import Capture, fno_change
from tests.integration.test_orders_back_sandbox import (
    _as_messages,
    confirm_and_total,
    fno_order,
    handled,
    handled_all,
    in_fno,
    sales_order,
)
from tests.integration.test_orders_sandbox import activate, draft_order
from tests.integration.test_quotes_sandbox import Catalogue, synced_account

registered = quotes.registered  # every mapping registered; 20 products in both systems
catalogue = quotes.catalogue
INVOICE_EVENT = "SalesInvoicePostedBusinessEvent"
INVOICE_HEADERS, INVOICE_LINES = "SalesInvoiceHeadersV2", "SalesInvoiceLinesV2"
INVOICED = processing_status("Invoiced")


def post_invoice(sandbox: SandboxServer, number: str, posted: dict[str, Any]) -> None:
    """Post the order's invoice in F&O over HTTP, as a person (or a script) does; the answer names the invoice."""
    response = httpx.post(f"{sandbox.fno_url}/_sandbox/actions/post-sales-invoice", trust_env=False,
                          headers={"Authorization": f"Bearer {SALES_TOKEN}"},
                          json={"dataAreaId": "usmf", "SalesOrderNumber": number})
    assert response.status_code == 200, response.text
    posted.update(response.json())


async def invoiced_in_fno(sandbox: SandboxServer, number: str, *data_events: str
                          ) -> tuple[dict[str, Any], list[InboundMessage], list[InboundMessage]]:
    """Post the invoice of order ``number``: (the invoice, its business event, the data events it raised) as the
    fno-events queue messages (the order's data events, when active: posting moves the order to Invoiced)."""
    posted: dict[str, Any] = {}
    events = await fno_change(sandbox, lambda: post_invoice(sandbox, number, posted), expect=None,
                              data_events=data_events, business_events=(INVOICE_EVENT,))
    business = [e for e in events if json.loads(e.body).get("BusinessEventId") == INVOICE_EVENT]
    assert len(business) == 1, events
    return posted, business, [e for e in events if e not in business]


def fno_invoice(sandbox: SandboxServer, number: str) -> dict[str, Any]:
    return next(r for r in sandbox.fno.rows(INVOICE_HEADERS, "usmf") if r["InvoiceNumber"] == number)


def sales_invoice(sandbox: SandboxServer, number: str) -> dict[str, Any] | None:
    return next((r for r in sandbox.dataverse.rows("invoice") if r["invoicenumber"] == number), None)


def invoice_lines(sandbox: SandboxServer, invoice_id: str) -> dict[int, dict[str, Any]]:
    return {r["sequencenumber"]: r for r in sandbox.dataverse.rows("invoicedetail") if r["_invoiceid_value"] == invoice_id}


def calls(log: Any) -> list[tuple[str, str]]:
    return [(r.method, r.path.split("?")[0].rsplit("/", 1)[-1]) for r in log.entries()]


async def order_back_in_sales(sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue,
                              account: str, number: str, products: list[str]) -> str:
    """An order made in Sales, activated, synced to F&O, confirmed and totalled there and back in Sales."""
    account_id = await synced_account(sandbox, capture, runtime, account)
    order_id, drafts = await draft_order(sandbox, capture, catalogue, number, account_id, products)
    await in_fno(sandbox, lambda: None)  # the order data events are active from here on
    await handled_all(runtime, [*drafts, await activate(sandbox, capture, order_id)])
    outcomes = await handled_all(runtime, await in_fno(sandbox, confirm_and_total(sandbox, number)))
    assert any(isinstance(o, Applied) for o in outcomes), outcomes
    capture.take()
    return order_id


async def test_the_whole_chain_ends_with_the_invoice_in_sales_and_the_order_invoiced_in_one_change_set(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    order_id = await order_back_in_sales(sandbox, capture, runtime, catalogue, "ACC-I01", "ORD-I01",
                                         ["D0001", "D0002"])
    owner = sales_order(sandbox, "ORD-I01")["_ownerid_value"]  # type: ignore[index]
    posted, events, order_events = await invoiced_in_fno(sandbox, "ORD-I01", INVOICE_HEADERS)
    body = json.loads(events[0].body)
    assert body["InvoiceId"] == posted["InvoiceNumber"] and "InvoiceNumber" not in body  # the contract's names

    sandbox.dataverse.request_log.clear()
    sandbox.fno.request_log.clear()
    [outcome] = await handled_all(runtime, events)
    assert isinstance(outcome, Applied), outcome
    number = posted["InvoiceNumber"]
    assert outcome.detail == (f"created invoices(invoicenumber='{number}') from SalesInvoiceHeadersV2(dataAreaId="
                              f"'usmf',InvoiceNumber='{number}') (header; invoice_lines: 2 added, 0 changed, 0 "
                              "removed; its Sales order moved to Invoiced) in one change set of 4 operations")
    dataverse_calls, fno_calls = calls(sandbox.dataverse.request_log), calls(sandbox.fno.request_log)
    # F&O: the header by $filter (the event has no LedgerVoucher), the customer's flag, the lines in one query.
    assert fno_calls == [("GET", INVOICE_HEADERS), ("GET", "CustomersV3(dataAreaId='usmf',CustomerAccount='ACC-I01')"),
                         ("GET", INVOICE_LINES)]
    # Sales: the order found by number (the other lookups are cached from the order's sync), the invoice by its
    # key, the order's state and owner; then one change set, nothing else.
    assert dataverse_calls == [("GET", "salesorders"), ("GET", f"invoices(invoicenumber='{number}')"),
                               ("GET", f"salesorders({order_id})"), ("POST", "$batch")]

    invoice = sales_invoice(sandbox, number)
    assert invoice is not None
    header = fno_invoice(sandbox, number)
    assert invoice["name"] == number and invoice["_salesorderid_value"] == order_id
    assert invoice["_ownerid_value"] == owner  # reference 1.1: the order's owner
    assert invoice["_customerid_value"] is not None and invoice["statuscode"] == 4
    assert Decimal(str(invoice["totalamount"])) == Decimal(str(header["TotalInvoiceAmount"]))
    assert Decimal(str(invoice["totaltax"])) == Decimal(str(header["TotalTaxAmount"]))
    lines = invoice_lines(sandbox, invoice["invoiceid"])
    assert sorted(lines) == [1, 2]
    assert all(r["msdynce_invoicenumber"] == number and r["ispriceoverridden"] is True for r in lines.values())
    assert lines[1]["_productid_value"] == catalogue.products["D0001"]
    order = sales_order(sandbox, "ORD-I01")
    assert order is not None
    assert (order["statecode"], order["statuscode"], order["msdynce_processingstatus"]) == (4, 100003, INVOICED)

    # Our writes raise Sales webhooks (the order's update): each one is only an echo, nothing reaches F&O.
    await sandbox.dataverse.wait_idle_async(10)
    echoes = [m for d in capture.take() for m in await _as_messages(d)]
    sandbox.fno.request_log.clear()
    echo_outcomes = await handled_all(runtime, echoes)
    assert all(isinstance(o, Skipped) and o.reason.startswith("echo") for o in echo_outcomes), echo_outcomes
    assert [r for r in sandbox.fno.request_log.entries() if r.method != "GET"] == []

    # The order's own "Invoiced" update from F&O comes late: the Sales order is closed, so it is left alone. The
    # same invoice announced by the header's data event, and the business event replayed: nothing is written.
    sandbox.dataverse.request_log.clear()
    [header_event] = [e for e in order_events if json.loads(e.body)["PrimaryEntityName"] ==
                      "mserp_salesinvoiceheaderv2entity"]
    late = await handled_all(runtime, [e for e in order_events if e is not header_event])
    assert late and all(isinstance(o, Skipped) for o in late), late
    assert any("is invoiced in Sales" in o.reason for o in late), late
    again = await handled_all(runtime, [header_event, *events])
    assert isinstance(again[0], Skipped) and again[0].reason.startswith("unchanged"), again
    assert isinstance(again[1], Skipped) and again[1].reason.startswith("duplicate"), again
    assert [r for r in sandbox.dataverse.request_log.entries() if r.method != "GET"] == []


async def test_a_free_text_invoice_is_skipped_with_that_reason(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime) -> None:
    sandbox = registered

    def free_text() -> None:  # posted in F&O without a sales order: its invoice journal row has no order number
        sandbox.fno.create(INVOICE_HEADERS, {"dataAreaId": "usmf", "InvoiceNumber": "FTI-0001",
                                             "InvoiceDate": "2026-01-15T00:00:00Z", "LedgerVoucher": "ARI-FT1",
                                             "InvoiceCustomerAccountNumber": "US-001", "CurrencyCode": "USD",
                                             "TotalInvoiceAmount": 100})
    [event] = await fno_change(sandbox, free_text, data_events=(INVOICE_HEADERS,))
    sandbox.dataverse.request_log.clear()
    outcome = await handled(runtime, event)
    assert isinstance(outcome, Skipped), outcome
    assert outcome.reason == ("free-text invoice: SalesInvoiceHeadersV2(dataAreaId='usmf',InvoiceNumber='FTI-0001') "
                              "invoices no sales order, so there is no Sales order to link (filtered out: "
                              "SalesOrderNumber is empty, expected it not to be empty (as the Create event shows "
                              "it; F&O not read))")
    assert sandbox.dataverse.request_log.entries() == [] and sandbox.dataverse.rows("invoice") == []


async def test_an_invoice_of_a_customer_not_from_sales_is_skipped_with_that_reason(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    sandbox.fno.create("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "FO-CUST", "CustomerGroupId": "10"})

    def made_and_confirmed_in_fno() -> None:
        fno_order(sandbox, "FO-I03", "FO-CUST", ["D0001"])
        httpx.post(f"{sandbox.fno_url}/_sandbox/actions/confirm-sales-order", trust_env=False,
                   headers={"Authorization": f"Bearer {SALES_TOKEN}"},
                   json={"dataAreaId": "usmf", "SalesOrderNumber": "FO-I03"}).raise_for_status()
    await fno_change(sandbox, made_and_confirmed_in_fno, expect=None)
    _, events, _ = await invoiced_in_fno(sandbox, "FO-I03")
    [outcome] = await handled_all(runtime, events)
    assert isinstance(outcome, Skipped), outcome
    assert outcome.reason == ("filtered out: the invoice customer 'FO-CUST' has IsExternallyMaintained 'No': only "
                              "invoices of customers that came from Sales are synced (P2C's externally maintained "
                              "customer invoices)")
    assert sandbox.dataverse.rows("invoice") == []


async def test_an_invoice_whose_order_is_not_in_sales_waits_naming_it_then_is_written(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    await synced_account(sandbox, capture, runtime, "ACC-I02")

    def made_and_confirmed_in_fno() -> None:  # confirmed, but its totals not calculated: not in Sales yet
        fno_order(sandbox, "FO-I02", "ACC-I02", ["D0003", "D0004"])
        httpx.post(f"{sandbox.fno_url}/_sandbox/actions/confirm-sales-order", trust_env=False,
                   headers={"Authorization": f"Bearer {SALES_TOKEN}"},
                   json={"dataAreaId": "usmf", "SalesOrderNumber": "FO-I02"}).raise_for_status()
    await fno_change(sandbox, made_and_confirmed_in_fno, expect=None)
    posted, events, _ = await invoiced_in_fno(sandbox, "FO-I02")
    sandbox.dataverse.request_log.clear()
    [outcome] = await handled_all(runtime, events)
    assert isinstance(outcome, Deferred), outcome
    assert outcome.reason == (f"waiting for a salesorder with ordernumber 'FO-I02' in Sales (the SalesInvoiceHeadersV2"
                              f"(dataAreaId='usmf',InvoiceNumber='{posted['InvoiceNumber']}') points at it)")
    assert [r for r in sandbox.dataverse.request_log.entries() if r.method != "GET"] == []  # never a dangling invoice
    assert sales_invoice(sandbox, posted["InvoiceNumber"]) is None

    # The totals are calculated: the order comes to Sales (orders_back), then the invoice's next delivery writes it.
    outcomes = await handled_all(runtime, await in_fno(sandbox, totals_calculated(sandbox, "FO-I02")))
    assert any(isinstance(o, Applied) for o in outcomes), outcomes
    [outcome] = await handled_all(runtime, events)
    assert isinstance(outcome, Applied), outcome
    assert "(header; invoice_lines: 2 added, 0 changed, 0 removed; its Sales order moved to Invoiced)" in outcome.detail
    order = sales_order(sandbox, "FO-I02")
    invoice = sales_invoice(sandbox, posted["InvoiceNumber"])
    assert order is not None and invoice is not None and invoice["_salesorderid_value"] == order["salesorderid"]
    assert order["statecode"] == 4 and order["msdynce_processingstatus"] == INVOICED


def totals_calculated(sandbox: SandboxServer, number: str) -> Any:
    """The "Calculate sales totals" batch job for an order confirmed (and here invoiced) already."""
    def act() -> None:
        httpx.post(f"{sandbox.fno_url}/_sandbox/actions/calculate-sales-totals", trust_env=False,
                   headers={"Authorization": f"Bearer {SALES_TOKEN}"},
                   json={"dataAreaId": "usmf", "SalesOrderNumber": number}).raise_for_status()
    return act
