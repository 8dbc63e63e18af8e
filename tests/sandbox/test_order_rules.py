"""Sandbox rules the orders flow relies on, over loopback HTTP.

Dataverse: an order's products can be changed while the order is a Draft (P2C processing status Draft or none);
once activated (processing status Active) the order is read-only and a line write fails like an active quote's.
F&O: an order names an existing customer, its lines an existing order and a released product; a sales order
number sequence without manual numbers refuses a number from Sales."""

from __future__ import annotations

import httpx

from sandbox import SandboxServer
from sandbox.dataverse_tables import processing_status
from tests.sandbox.test_quote_rules import _inner

ORDERS, LINES = "CDSSalesOrderHeaders", "CDSSalesOrderLines"


def test_an_activated_order_s_products_are_read_only(sandbox: SandboxServer, dv: httpx.Client) -> None:
    order_id = sandbox.dataverse.create("salesorder", {"name": "O", "ordernumber": "ORD-9",
                                                       "msdynce_processingstatus": processing_status("Draft")})
    first = sandbox.dataverse.create("salesorderdetail", {"salesorderid": ("salesorder", order_id), "quantity": 1})
    assert dv.patch(f"salesorderdetails({first})", json={"quantity": 2}).status_code == 204  # a draft takes changes
    assert dv.patch(f"salesorders({order_id})", json={"msdynce_processingstatus": processing_status("Active")}).status_code == 204
    for response in (dv.patch(f"salesorderdetails({first})", json={"quantity": 5}),
                     dv.post("salesorderdetails", json={"salesorderid@odata.bind": f"/salesorders({order_id})",
                                                        "quantity": 1}),
                     dv.delete(f"salesorderdetails({first})")):
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "The detail cannot be updated because the parent is not editable."


def test_fno_orders_name_an_existing_customer_order_and_released_product(
        sandbox: SandboxServer, fo: httpx.Client) -> None:
    header = {"dataAreaId": "usmf", "SalesOrderNumber": "O-1", "OrderingCustomerAccountNumber": "NOPE"}
    response = fo.post(ORDERS, json=header)
    assert response.status_code == 500
    assert "The value 'NOPE' in field 'Customer account' is not found in the related table 'Customers'." in \
        _inner(response)
    line = {"dataAreaId": "usmf", "SalesOrderNumber": "O-1", "LineCreationSequenceNumber": 1, "ProductNumber": "D0001"}
    response = fo.post(LINES, json=line)
    assert response.status_code == 500
    assert "Sales order 'O-1' does not exist in company usmf." in _inner(response)
    assert "The value 'D0001' in field 'Product number' is not found" in _inner(response)
    sandbox.fno.create("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "C-1", "CustomerGroupId": "10"})
    sandbox.fno.create("CDSReleasedDistinctProducts", {"dataAreaId": "usmf", "ProductNumber": "D0001"})
    assert fo.post(ORDERS, json={**header, "OrderingCustomerAccountNumber": "C-1"}).status_code == 201
    assert fo.post(LINES, json=line).status_code == 201
    sandbox.fno.configure(order_numbers="automatic")
    response = fo.post(ORDERS, json={"dataAreaId": "usmf", "SalesOrderNumber": "O-2"})
    assert response.status_code == 500 and "does not allow manual numbers; 'O-2' cannot be used" in _inner(response)
