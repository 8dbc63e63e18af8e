"""What a person does in F&O, as plain HTTP on the F&O sandbox (`POST /_sandbox/actions/...`), over
loopback HTTP: confirm a sales order, calculate its totals, post its invoice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from p2csync.envelopes.event import parse_change_event
from sandbox import SandboxServer
from tests.sandbox.conftest import client
from tests.sandbox.test_fno_events import Sink, parsed, settle

ORDER = "CDSSalesOrderHeaders(dataAreaId='usmf',SalesOrderNumber='SO-1')"


@pytest.fixture
def actions(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with client(sandbox.fno_url + "/_sandbox/actions/", token=None) as c:
        yield c


def seed_order(sandbox: SandboxServer, lines: int = 2, number: str = "SO-1") -> None:
    fno = sandbox.fno
    if fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "C-1"}) is None:
        fno.create("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "C-1", "CustomerGroupId": "10",
                                   "IsExternallyMaintained": "Yes"})
        fno.create("CDSReleasedDistinctProducts", {"dataAreaId": "usmf", "ProductNumber": "D0001",
                                                   "ProductName": "Speaker", "SalesUnitSymbol": "ea"})
    fno.create("CDSSalesOrderHeaders", {"dataAreaId": "usmf", "SalesOrderNumber": number, "CurrencyCode": "USD",
                                        "OrderingCustomerAccountNumber": "C-1", "InvoiceCustomerAccountNumber": "C-1",
                                        "CustomersOrderReference": "PO-77", "OrderHeaderTaxAmount": 2.5})
    for sequence in range(1, lines + 1):
        fno.create("CDSSalesOrderLines", {"dataAreaId": "usmf", "SalesOrderNumber": number, "ProductNumber": "D0001",
                                          "LineCreationSequenceNumber": sequence, "OrderedSalesQuantity": 3,
                                          "SalesPrice": 10.5, "LineDiscountAmount": 0.5, "SalesUnitSymbol": "ea",
                                          "ProductName": "Speaker", "CurrencyCode": "USD"})


def order(number: str = "SO-1") -> dict[str, Any]:
    return {"dataAreaId": "usmf", "SalesOrderNumber": number}


def test_a_new_order_is_an_active_open_order_without_totals(sandbox: SandboxServer, fo: httpx.Client) -> None:
    seed_order(sandbox, lines=1)
    header = fo.get(ORDER).json()
    assert (header["SalesOrderStatus"], header["SalesOrderProcessingStatus"], header["AreTotalsUpdated"]) == \
        ("Backorder", "Active", "No")


def test_confirm_calculate_and_invoice_an_order(sandbox: SandboxServer, actions: httpx.Client,
                                                fo: httpx.Client) -> None:
    seed_order(sandbox)
    sandbox.fno.configure(sales_tax_percent=10)
    response = actions.post("confirm-sales-order", json={"dataAreaId": "USMF", "SalesOrderNumber": "SO-1"})
    assert response.status_code == 200 and response.json()["SalesOrderProcessingStatus"] == "Confirmed"
    assert fo.get(ORDER).json()["SalesOrderProcessingStatus"] == "Confirmed"

    totals = actions.post("calculate-sales-totals", json=order())
    assert totals.status_code == 200
    header = fo.get(ORDER).json()
    # two lines of 3 x (10.50 - 0.50) = 30.00, tax 10% = 3.00 each, header tax 2.50
    assert header["AreTotalsUpdated"] == "Yes"
    assert header["OrderTotalTaxAmount"] == pytest.approx(8.5)
    assert header["OrderTotalAmount"] == pytest.approx(68.5)
    line = fo.get("CDSSalesOrderLines(dataAreaId='usmf',SalesOrderNumber='SO-1',LineCreationSequenceNumber=1)").json()
    assert (line["LineAmount"], line["TotalTaxAmount"], line["AreTotalsCalculated"]) == (30, 3, "Yes")

    posted = actions.post("post-sales-invoice", json=order())
    assert posted.status_code == 200
    answer = posted.json()
    number = answer["InvoiceNumber"]
    assert number and answer["TotalInvoiceAmount"] == pytest.approx(68.5)
    [invoice] = fo.get("SalesInvoiceHeadersV2", params={"$filter": f"InvoiceNumber eq '{number}'"}).json()["value"]
    assert (invoice["SalesOrderNumber"], invoice["InvoiceCustomerAccountNumber"], invoice["CustomersOrderReference"],
            invoice["CurrencyCode"]) == ("SO-1", "C-1", "PO-77", "USD")
    assert invoice["TotalInvoiceAmount"] == pytest.approx(68.5) and invoice["TotalTaxAmount"] == pytest.approx(8.5)
    assert invoice["InvoiceDate"] == answer["InvoiceDate"] and invoice["LedgerVoucher"] == answer["LedgerVoucher"]
    lines = fo.get("SalesInvoiceLinesV2", params={"$filter": f"InvoiceNumber eq '{number}'",
                                                  "$orderby": "LineCreationSequenceNumber"}).json()["value"]
    assert [(x["LineCreationSequenceNumber"], x["ProductNumber"], x["InvoicedQuantity"], x["LineAmount"],
             x["LineTotalTaxAmount"]) for x in lines] == [(1, "D0001", 3, 30, 3), (2, "D0001", 3, 30, 3)]
    header = fo.get(ORDER).json()
    assert (header["SalesOrderStatus"], header["SalesOrderProcessingStatus"]) == ("Invoiced", "Invoiced")


def test_actions_raise_the_events_of_what_they_change(sandbox: SandboxServer, actions: httpx.Client) -> None:
    sink = Sink()
    events = sandbox.fno.events
    events.deactivate_all()
    events.set_endpoint(sink)
    try:
        events.activate_business_event("SalesInvoicePostedBusinessEvent")
        for entity in ("CDSSalesOrderHeaders", "SalesInvoiceHeadersV2"):
            events.activate_data_event(entity)
        seed_order(sandbox, lines=1)
        actions.post("confirm-sales-order", json=order())
        actions.post("calculate-sales-totals", json=order())
        number = actions.post("post-sales-invoice", json=order()).json()["InvoiceNumber"]
        settle(sandbox)
        seen = [(e.entity, e.message_name) for e in map(parsed, sink.of("data_event"))]
        assert seen == [("mserp_salesorderheadercdsentity", "Create"), ("mserp_salesorderheadercdsentity", "Update"),
                        ("mserp_salesorderheadercdsentity", "Update"), ("mserp_salesinvoiceheaderv2entity", "Create"),
                        ("mserp_salesorderheadercdsentity", "Update")]
        confirmed = parsed(sink.of("data_event")[1])
        assert confirmed.attributes["mserp_salesorderprocessingstatus"] == "Confirmed"
        [posted] = sink.of("business_event")
        event = parse_change_event(posted.body, posted.application_properties)
        assert event.record_id == number and event.attributes["SalesOrderId"] == "SO-1"
        assert sink.messages[-1] is posted  # sent after the posting committed
    finally:
        events.wait_idle(5)
        events.deactivate_all()
        events.endpoint = None


def test_an_unknown_order_is_404_with_the_reason(sandbox: SandboxServer, actions: httpx.Client) -> None:
    for action in ("confirm-sales-order", "calculate-sales-totals", "post-sales-invoice"):
        response = actions.post(action, json=order("NOPE"))
        assert response.status_code == 404
        assert response.json()["error"] == "Sales order 'NOPE' does not exist in company usmf."


def test_an_action_from_the_wrong_state_is_409_and_changes_nothing(
        sandbox: SandboxServer, actions: httpx.Client, fo: httpx.Client) -> None:
    seed_order(sandbox)
    response = actions.post("post-sales-invoice", json=order())
    assert response.status_code == 409
    assert response.json()["error"] == "Sales order 'SO-1' is not confirmed: only a confirmed order can be invoiced."
    assert fo.get("SalesInvoiceHeadersV2").json()["value"] == []
    assert actions.post("confirm-sales-order", json=order()).status_code == 200
    again = actions.post("confirm-sales-order", json=order())
    assert again.status_code == 409 and "is Confirmed: only an Active order can be confirmed" in again.json()["error"]
    assert actions.post("post-sales-invoice", json=order()).status_code == 200
    twice = actions.post("post-sales-invoice", json=order())
    assert twice.status_code == 409 and "is Invoiced" in twice.json()["error"]
    assert len(fo.get("SalesInvoiceHeadersV2").json()["value"]) == 1
    seed_order(sandbox, lines=0, number="SO-2")
    actions.post("confirm-sales-order", json=order("SO-2"))
    empty = actions.post("post-sales-invoice", json=order("SO-2"))
    assert empty.status_code == 409 and empty.json()["error"] == "Sales order 'SO-2' has no lines: nothing to invoice."


@pytest.mark.parametrize("body", [b"", b"not json", b'{"dataAreaId": "usmf"}',
                                  b'{"dataAreaId": "usmf", "SalesOrderNumber": "SO-1", "extra": 1}'])
def test_a_malformed_body_is_400_naming_the_expected_shape(actions: httpx.Client, body: bytes) -> None:
    response = actions.post("confirm-sales-order", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "dataAreaId" in response.json()["error"]
