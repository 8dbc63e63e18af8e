"""Dataverse sandbox tables and rules the F&O -> Sales flows rely on (issue 9): seeded unit group, units and USD
price list; products Draft by default; price list items per (price list, product, unit) in the product's unit
group; order lines priced from the order's price list unless overridden; write-in lines; externally
maintained orders take the integration's line writes after activation."""

from __future__ import annotations

import httpx
import pytest

from sandbox import SandboxServer
from sandbox.dataverse_tables import (
    DEFAULT_UNIT_GROUP_ID, EACH_UNIT_ID, PRIMARY_UNIT_ID, USD_PRICE_LIST_ID, processing_status,
)


def product(dv: httpx.Client, number: str, unit: str = EACH_UNIT_ID) -> httpx.Response:
    return dv.patch(f"products(productnumber='{number}')", headers={"Prefer": "return=representation"}, json={
        "name": number, "msdynce_ismaintainedexternally": True, "price": 12.5,
        "defaultuomscheduleid@odata.bind": f"/uomschedules({DEFAULT_UNIT_GROUP_ID})",
        "defaultuomid@odata.bind": f"/uoms({unit})"})


def test_seeded_catalogue(dv: httpx.Client) -> None:
    assert [u["name"] for u in dv.get("uoms", params={"$orderby": "name"}).json()["value"]] == ["Each", "Primary Unit"]
    levels = dv.get("pricelevels").json()["value"]
    assert [(p["name"], p["_transactioncurrencyid_value"]) for p in levels][0][0] == "CRM Service USA (sample)"


@pytest.mark.parametrize("active", [False, True])
def test_a_product_created_through_the_web_api_is_draft_unless_the_org_says_active(
        sandbox: SandboxServer, dv: httpx.Client, active: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.dataverse, "create_products_active", active)
    created = product(dv, "P-1")
    assert created.status_code == 201
    assert (created.json()["statecode"], created.json()["statuscode"]) == ((0, 1) if active else (2, 0))
    published = dv.patch("products(productnumber='P-1')", json={"statecode": 0, "statuscode": 1})
    assert published.status_code == 204 and dv.get("products(productnumber='P-1')").json()["statecode"] == 0


def test_unit_group_and_price_list_item_rules(sandbox: SandboxServer, dv: httpx.Client) -> None:
    other_group = sandbox.dataverse.create("uomschedule", {"name": "Weight"})
    kilo = sandbox.dataverse.create("uom", {"name": "kg", "uomscheduleid": ("uomschedule", other_group)})
    wrong = product(dv, "P-2", unit=kilo)
    assert wrong.status_code == 400 and "not a member of the specified unit group" in wrong.json()["error"]["message"]
    assert product(dv, "P-2").status_code == 201
    key = f"productpricelevels(pricelevelid={USD_PRICE_LIST_ID},productid={{}},uomid={{}})"
    product_id = dv.get("products(productnumber='P-2')").json()["productid"]
    outside = dv.patch(key.format(product_id, kilo), json={"amount": 12.5})
    assert outside.status_code == 400 and "unit group of the product" in outside.json()["error"]["message"]
    assert dv.patch(key.format(product_id, EACH_UNIT_ID), json={"amount": 12.5}).status_code == 204
    assert dv.patch(key.format(product_id, EACH_UNIT_ID), json={"amount": 13}).status_code == 204  # upsert: update
    assert len(sandbox.dataverse.rows("productpricelevel")) == 1
    duplicate = dv.post("productpricelevels", json={
        "amount": 1, "pricelevelid@odata.bind": f"/pricelevels({USD_PRICE_LIST_ID})",
        "productid@odata.bind": f"/products({product_id})", "uomid@odata.bind": f"/uoms({EACH_UNIT_ID})"})
    assert duplicate.status_code == 412 and duplicate.json()["error"]["code"] == "0x80060892"


def test_order_lines_are_priced_from_the_order_price_list_unless_overridden(
        sandbox: SandboxServer, dv: httpx.Client) -> None:
    product(dv, "P-3")
    product_id = dv.get("products(productnumber='P-3')").json()["productid"]
    order = sandbox.dataverse.create("salesorder", {"name": "O", "ordernumber": "O-1",
                                                    "pricelevelid": ("pricelevel", USD_PRICE_LIST_ID)})
    line = {"salesorderid@odata.bind": f"/salesorders({order})", "productid@odata.bind": f"/products({product_id})",
            "uomid@odata.bind": f"/uoms({EACH_UNIT_ID})", "quantity": 1}
    missing = dv.post("salesorderdetails", json=line)
    assert missing.status_code == 400 and "not in the price list" in missing.json()["error"]["message"]
    assert dv.post("salesorderdetails", json={**line, "ispriceoverridden": True, "priceperunit": 9}).status_code == 204
    sandbox.dataverse.create("productpricelevel", {
        "pricelevelid": ("pricelevel", USD_PRICE_LIST_ID), "productid": ("product", product_id),
        "uomid": ("uom", EACH_UNIT_ID), "amount": 12.5})
    assert dv.post("salesorderdetails", json=line).status_code == 204
    assert dv.post("salesorderdetails", json={**line, "uomid@odata.bind": f"/uoms({PRIMARY_UNIT_ID})"}).status_code == 400
    write_in = {"salesorderid@odata.bind": f"/salesorders({order})", "isproductoverridden": True,
                "productdescription": "Freight Tax", "quantity": 1, "priceperunit": 4.2, "ispriceoverridden": True}
    assert dv.post("salesorderdetails", json=write_in).status_code == 204
    bad = dv.post("salesorderdetails", json={**write_in, "productdescription": None})
    assert bad.status_code == 400 and "write-in" in bad.json()["error"]["message"]


def test_externally_maintained_orders_take_the_integration_s_line_writes(
        sandbox: SandboxServer, dv: httpx.Client, dv_sales: httpx.Client) -> None:
    order = sandbox.dataverse.create("salesorder", {"name": "O", "ordernumber": "O-2", "msdynce_processingstatus":
                                                    processing_status("Confirmed"),
                                                    "msdynce_ismaintainedexternally": True})
    line = {"salesorderid@odata.bind": f"/salesorders({order})", "quantity": 1}
    assert dv.post("salesorderdetails", json=line).status_code == 204  # the application user (integration)
    refused = dv_sales.post("salesorderdetails", json=line)  # a person in Sales: read-only after activation
    assert refused.status_code == 400 and refused.json()["error"]["message"].startswith("The detail cannot be updated")
    invoice = sandbox.dataverse.create("invoice", {"name": "I", "invoicenumber": "I-1", "statecode": 2})  # paid
    paid = dv.post("invoicedetails", json={"invoiceid@odata.bind": f"/invoices({invoice})", "quantity": 1})
    assert paid.status_code == 400
