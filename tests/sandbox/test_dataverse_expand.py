"""`$expand` of single-valued navigation properties on Web API reads (sandbox/dataverse_expand.py), as "Join tables
using OData" documents it: the related row (etag, selected columns, primary id) or null, and the refusals."""

from __future__ import annotations

import httpx
import pytest

from sandbox import SandboxServer
from sandbox.dataverse_tables import EACH_UNIT_ID


def order_with_lines(sandbox: SandboxServer) -> tuple[str, str, str]:
    """An order for an account, one product line and one write-in line (no product); returns ids."""
    dv = sandbox.dataverse
    account = dv.create("account", {"name": "Contoso", "accountnumber": "ACC-1"})
    product = dv.create("product", {"name": "Widget", "productnumber": "P-1"})
    order = dv.create("salesorder", {"name": "O", "ordernumber": "SO-1", "customerid": ("account", account)})
    dv.create("salesorderdetail", {"salesorderid": ("salesorder", order), "productid": ("product", product),
                                   "uomid": ("uom", EACH_UNIT_ID), "quantity": 3, "ispriceoverridden": True,
                                   "priceperunit": 5})
    dv.create("salesorderdetail", {"salesorderid": ("salesorder", order), "quantity": 1,
                                   "isproductoverridden": True, "productdescription": "Freight"})
    return account, product, order


def test_collection_expands_lookups_to_the_selected_columns(sandbox: SandboxServer, dv: httpx.Client) -> None:
    _, product, order = order_with_lines(sandbox)
    response = dv.get("salesorderdetails", params={
        "$filter": f"_salesorderid_value eq {order}", "$select": "quantity",
        "$expand": "productid($select=productnumber),uomid($select=name)"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"].endswith(
        "#salesorderdetails(quantity,productid,productid(productnumber),uomid,uomid(name))")
    with_product, write_in = sorted(body["value"], key=lambda r: r["quantity"], reverse=True)
    etag = sandbox.dataverse.get("product", product)["@odata.etag"]
    assert with_product["productid"] == {"@odata.etag": etag, "productid": product, "productnumber": "P-1"}
    assert with_product["uomid"]["name"] == "Each" and set(with_product["uomid"]) == {"@odata.etag", "uomid", "name"}
    assert write_in["productid"] is None and write_in["uomid"] is None
    assert "_productid_value" not in with_product  # not selected: the expansion does not add the lookup value


def test_single_row_expands_a_polymorphic_lookup(sandbox: SandboxServer, dv: httpx.Client) -> None:
    account, _, order = order_with_lines(sandbox)
    response = dv.get(f"salesorders({order})", params={
        "$select": "name", "$expand": "customerid_account($select=accountnumber),customerid_contact"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["customerid_account"]["accountnumber"] == "ACC-1"
    assert body["customerid_account"]["accountid"] == account
    assert body["customerid_contact"] is None  # the customer is an account
    assert body["@odata.context"].endswith("#salesorders(name,customerid_account,customerid_account(accountnumber),"
                                           "customerid_contact)/$entity")


def test_an_expansion_without_select_returns_every_column_and_nests(sandbox: SandboxServer, dv: httpx.Client) -> None:
    _, product, order = order_with_lines(sandbox)
    response = dv.get(f"salesorders({order})", params={"$select": "name", "$expand": "customerid_account"})
    assert response.json()["customerid_account"]["name"] == "Contoso"
    assert "telephone1" in response.json()["customerid_account"]
    nested = dv.get("salesorderdetails", params={
        "$filter": f"_productid_value eq {product}", "$select": "quantity",
        "$expand": "salesorderid($select=ordernumber;$expand=customerid_account($select=name))"})
    assert nested.status_code == 200, nested.text
    [line] = nested.json()["value"]
    assert line["salesorderid"]["ordernumber"] == "SO-1"
    assert line["salesorderid"]["customerid_account"]["name"] == "Contoso"


@pytest.mark.parametrize("expand,fragment", [
    ("nosuchthing", "Could not find a property named 'nosuchthing' on type 'Microsoft.Dynamics.CRM.salesorder'."),
    ("customerid", "Could not find a property named 'customerid' on type"),  # polymorphic: per-target names only
    ("customerid_account($select=nosuchcolumn)",
     "Could not find a property named 'nosuchcolumn' on type 'Microsoft.Dynamics.CRM.account'."),
    ("customerid_account($filter=name eq 'x')", "'$filter' is not allowed"),
    ("customerid_account($top=1)", "'$top' is not allowed"),
    ("customerid_account($levels=2)", "'$levels' is not supported"),
    ("customerid_account($select=name;$expand=nosuch)",
     "Could not find a property named 'nosuch' on type 'Microsoft.Dynamics.CRM.account'."),
    (",".join(["customerid_account"] * 16), "more than 15"),
])
def test_refused_expansions_are_400(sandbox: SandboxServer, dv: httpx.Client, expand: str, fragment: str) -> None:
    _, _, order = order_with_lines(sandbox)
    for path in (f"salesorders({order})", "salesorders"):
        response = dv.get(path, params={"$expand": expand})
        assert response.status_code == 400, (path, response.text)
        assert fragment in response.json()["error"]["message"]
        assert response.json()["error"]["code"] == "0x80060888"
