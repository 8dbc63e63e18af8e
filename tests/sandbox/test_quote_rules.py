"""Sandbox rules the quotes flow relies on, over loopback HTTP.

Dataverse: activating a quote (PATCH statecode 1) makes its products read-only ("The detail cannot be updated
because the parent is not editable."); Revise closes it as Revised and opens a draft revision with the same number
and copies of its lines; lines are numbered in creation order and a number is never reused; a line's Delete
carries the pre image a step asks for. F&O: a quotation names an existing customer, its lines an existing
quotation and a released product; a number sequence without manual numbers refuses a number from Sales."""

from __future__ import annotations

import httpx
import pytest

from sandbox import SandboxServer
from sandbox.dataverse_events import EntityImage, WebhookStep
from tests.sandbox.conftest import Receiver

QUOTES, LINES = "CDSSalesQuotationHeaders", "CDSSalesQuotationLines"


def quote_with_lines(sandbox: SandboxServer, lines: int = 2) -> tuple[str, list[str]]:
    dv = sandbox.dataverse
    quote_id = dv.create("quote", {"name": "Q", "quotenumber": "QUO-9"})
    return quote_id, [dv.create("quotedetail", {"quoteid": ("quote", quote_id), "quantity": 1}) for _ in range(lines)]


def test_an_active_quote_s_products_are_read_only(sandbox: SandboxServer, dv: httpx.Client) -> None:
    quote_id, (first, _) = quote_with_lines(sandbox)
    assert dv.patch(f"quotes({quote_id})", json={"statecode": 1}).status_code == 204  # activate, as the Web API does
    row = sandbox.dataverse.get("quote", quote_id)
    assert row is not None and (row["statecode"], row["statuscode"]) == (1, 2)
    for response in (dv.patch(f"quotedetails({first})", json={"quantity": 5}),
                     dv.post("quotedetails", json={"quoteid@odata.bind": f"/quotes({quote_id})", "quantity": 1}),
                     dv.delete(f"quotedetails({first})")):
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "The detail cannot be updated because the parent is not editable."


def test_revise_closes_the_quote_and_opens_a_draft_with_its_number_and_lines(sandbox: SandboxServer) -> None:
    dv = sandbox.dataverse
    quote_id, _ = quote_with_lines(sandbox, 3)
    dv.update("quote", quote_id, {"statecode": 1})
    revision = dv.revise_quote(quote_id)
    old, new = dv.get("quote", quote_id), dv.get("quote", revision)
    assert old is not None and new is not None
    assert (old["statecode"], old["statuscode"]) == (3, 7)  # Closed, Revised
    assert (new["statecode"], new["quotenumber"], new["revisionnumber"]) == (0, "QUO-9", 1)
    copies = sorted(r["sequencenumber"] for r in dv.rows("quotedetail") if r["_quoteid_value"] == revision)
    assert copies == [1, 2, 3]
    line_3 = next(r["quotedetailid"] for r in dv.rows("quotedetail")
                  if r["_quoteid_value"] == revision and r["sequencenumber"] == 3)
    dv.delete("quotedetail", line_3)
    added = dv.create("quotedetail", {"quoteid": ("quote", revision), "quantity": 1})
    assert dv.get("quotedetail", added)["sequencenumber"] == 4  # type: ignore[index]  # never reused
    with pytest.raises(Exception, match="A draft quote cannot be revised"):
        dv.revise_quote(revision)


def test_a_line_delete_carries_its_pre_image(sandbox: SandboxServer, receiver: Receiver) -> None:
    sandbox.dataverse.register_webhook(receiver.url, key="k", steps=[WebhookStep(
        table="quotedetail", message="Delete", pre_image=EntityImage(alias="p2c", columns=["quoteid"]))])
    quote_id, (first, _) = quote_with_lines(sandbox)
    sandbox.dataverse.delete("quotedetail", first)
    assert sandbox.dataverse.wait_idle(10)
    [payload] = receiver.payloads()
    [image] = payload["PreEntityImages"]
    [attribute] = image["value"]["Attributes"]
    assert attribute["key"] == "quoteid" and attribute["value"]["Id"] == quote_id


def _inner(response: httpx.Response) -> str:
    return response.json()["error"]["innererror"]["message"]


def test_fno_quotations_name_an_existing_customer_quotation_and_released_product(
        sandbox: SandboxServer, fo: httpx.Client) -> None:
    header = {"dataAreaId": "usmf", "SalesQuotationNumber": "Q-1", "RequestingCustomerAccountNumber": "NOPE"}
    response = fo.post(QUOTES, json=header)
    assert response.status_code == 500
    assert "The value 'NOPE' in field 'Customer account' is not found in the related table 'Customers'." in \
        _inner(response)
    line = {"dataAreaId": "usmf", "SalesQuotationNumber": "Q-1", "LineCreationSequenceNumber": 1,
            "ProductNumber": "D0001"}
    response = fo.post(LINES, json=line)
    assert response.status_code == 500
    assert "Sales quotation 'Q-1' does not exist in company usmf." in _inner(response)
    assert "The value 'D0001' in field 'Product number' is not found in the related table 'Released products'." in \
        _inner(response)
    sandbox.fno.create("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "C-1", "CustomerGroupId": "10"})
    sandbox.fno.create("CDSReleasedDistinctProducts", {"dataAreaId": "usmf", "ProductNumber": "D0001"})
    assert fo.post(QUOTES, json={**header, "RequestingCustomerAccountNumber": "C-1"}).status_code == 201
    assert fo.post(LINES, json=line).status_code == 201


def test_a_number_sequence_without_manual_numbers_refuses_a_sales_number(
        sandbox: SandboxServer, fo: httpx.Client) -> None:
    sandbox.fno.configure(quotation_numbers="automatic")
    response = fo.post(QUOTES, json={"dataAreaId": "usmf", "SalesQuotationNumber": "Q-2"})
    assert response.status_code == 500
    assert "does not allow manual numbers; 'Q-2' cannot be used" in _inner(response)
