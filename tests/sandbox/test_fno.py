"""F&O OData behaviour the integration relies on, over loopback HTTP."""

from __future__ import annotations

import base64
import re

import httpx

from sandbox import FnO, FnoChange, FnoUser, SandboxServer
from tests.sandbox.conftest import client

US001 = "CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')"


def customer(account: str = "US-001", **extra: object) -> dict[str, object]:
    return {"CustomerAccount": account, "OrganizationName": "Contoso", "CustomerGroupId": "10",
            "PartyType": "Organization", **extra}


def inner(response: httpx.Response) -> str:
    return response.json()["error"]["innererror"]["message"]


def test_no_bearer_token_is_401(sandbox: SandboxServer) -> None:
    with client(sandbox.fno_data_url, token=None) as anonymous:
        assert anonymous.get("CustomersV3").status_code == 401
    with client(sandbox.fno_data_url, token="nope") as stranger:
        assert stranger.get("CustomersV3").status_code == 401


def test_post_creates_with_201_entity_and_weak_etag(fo: httpx.Client) -> None:
    response = fo.post("CustomersV3", json=customer(IsExternallyMaintained="Yes", CreditLimit=2500.5))
    assert response.status_code == 201
    body = response.json()
    assert body["dataAreaId"] == "usmf"  # the caller's default company
    assert body["IsExternallyMaintained"] == "Yes" and body["CreditLimit"] == 2500.5
    assert body["OnHoldStatus"] == "No"  # enum defaults are symbols
    assert len([k for k in body if not k.startswith("@")]) == 305
    etag = body["@odata.etag"]
    match = re.fullmatch(r'W/"([A-Za-z0-9+/=]+)"', etag)
    assert match and re.fullmatch(r"'0,\d+'", base64.b64decode(match.group(1)).decode())
    assert response.headers["ETag"] == etag
    assert fo.get(US001).json()["OrganizationName"] == "Contoso"


def test_post_on_existing_key_is_500_already_exists(fo: httpx.Client) -> None:
    assert fo.post("CustomersV3", json=customer()).status_code == 201
    duplicate = fo.post("CustomersV3", json=customer(dataAreaId="USMF"))
    assert duplicate.status_code == 500
    error = duplicate.json()["error"]
    assert error["innererror"]["type"].endswith("AxODataWriteException")
    assert "The record already exists." in error["innererror"]["message"]


def test_unknown_property_is_400_naming_it(fo: httpx.Client) -> None:
    response = fo.post("CustomersV3", json=customer(FavouriteColour="red"))
    assert response.status_code == 400
    assert "FavouriteColour" in response.json()["error"]["message"]
    assert fo.post("CustomersV3", json=customer(IsExternallyMaintained="Maybe")).status_code == 400
    assert fo.post("CustomersV3", json=customer(CreditLimit="lots")).status_code == 400
    assert fo.get("CustomersV3").json()["value"] == []


def test_invalid_customer_group_is_the_documented_permanent_error(fo: httpx.Client) -> None:
    response = fo.post("CustomersV3", json=customer(CustomerGroupId="Local"))
    assert response.status_code == 500
    message = inner(response)
    assert message.startswith("Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Warning: "
                              "The value 'Local' in field 'Customer group' is not found in the related table "
                              "'Customer groups'.")
    fo.post("CustomersV3", json=customer())
    assert fo.patch(US001, json={"CustomerGroupId": "99"}).status_code == 500
    assert fo.get(US001).json()["CustomerGroupId"] == "10"


def test_patch_updates_with_204_and_missing_key_fails(fo: httpx.Client) -> None:
    fo.post("CustomersV3", json=customer())
    response = fo.patch(US001, json={"OrganizationName": "Contoso Ltd"})
    assert response.status_code == 204
    assert fo.get(US001).json()["OrganizationName"] == "Contoso Ltd"
    missing = fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-404')", json={"OrganizationName": "x"})
    assert missing.status_code == 400
    assert inner(missing) == "No resources were found when selecting for update."
    assert len(fo.get("CustomersV3").json()["value"]) == 1  # PATCH never creates


def test_if_match_mismatch_is_412(fo: httpx.Client) -> None:
    etag = fo.post("CustomersV3", json=customer()).json()["@odata.etag"]
    assert fo.patch(US001, json={"NameAlias": "a"}, headers={"If-Match": etag}).status_code == 204
    assert fo.patch(US001, json={"NameAlias": "b"}, headers={"If-Match": etag}).status_code == 412
    assert fo.get(US001).json()["NameAlias"] == "a"


def test_key_lookup_needs_every_key_field(fo: httpx.Client) -> None:
    fo.post("CustomersV3", json=customer())
    assert fo.get("CustomersV3(CustomerAccount='US-001')").status_code == 400
    assert fo.get("CustomersV3('US-001')").status_code == 400
    assert fo.get("CustomersV3(dataAreaId='usmf',CustomerAccount='US-404')").status_code == 404
    assert fo.get("CustomersV3(dataAreaId='USMF',CustomerAccount='us-001')").status_code == 200


def test_cross_company_visibility(fo: httpx.Client) -> None:
    assert fo.post("CustomersV3", json=customer(dataAreaId="usrt")).status_code == 201
    assert fo.post("CustomersV3", json=customer(dataAreaId="usmf")).status_code == 201
    usrt_key = "CustomersV3(dataAreaId='usrt',CustomerAccount='US-001')"
    assert fo.get(usrt_key).status_code == 404  # default company is usmf
    assert fo.get(usrt_key, params={"cross-company": "true"}).status_code == 200
    assert [r["dataAreaId"] for r in fo.get("CustomersV3").json()["value"]] == ["usmf"]
    everything = fo.get("CustomersV3", params={"cross-company": "true", "$select": "dataAreaId"}).json()["value"]
    assert sorted(r["dataAreaId"] for r in everything) == ["usmf", "usrt"]
    filtered = fo.get("CustomersV3", params={"cross-company": "true", "$filter": "dataAreaId eq 'usrt'"})
    assert [r["dataAreaId"] for r in filtered.json()["value"]] == ["usrt"]
    # updates outside the default company need cross-company too
    assert inner(fo.patch(usrt_key, json={"NameAlias": "x"})) == "No resources were found when selecting for update."
    assert fo.patch(usrt_key + "?cross-company=true", json={"NameAlias": "x"}).status_code == 204


def test_user_default_company_decides_visibility() -> None:
    fno = FnO(users=[FnoUser(user_id="de", token="de-token", default_company="demf")])
    with SandboxServer(fno=fno) as server, client(server.fno_data_url, "de-token") as fo:
        assert fo.post("CustomersV3", json=customer()).json()["dataAreaId"] == "demf"
        assert fo.get("CustomersV3(dataAreaId='demf',CustomerAccount='US-001')").status_code == 200
        assert fo.post("CustomersV3", json=customer(dataAreaId="nowhere")).status_code == 400


def test_query_options(fo: httpx.Client) -> None:
    for i, group in enumerate(["10", "20", "10", "30"]):
        fo.post("CustomersV3", json=customer(f"C-{i}", CustomerGroupId=group, OrganizationName=f"Org {i}"))
    names = lambda params: [r["CustomerAccount"] for r in fo.get("CustomersV3", params=params).json()["value"]]  # noqa: E731
    assert names({"$filter": "CustomerGroupId eq '10' and dataAreaId eq 'usmf'"}) == ["C-0", "C-2"]
    assert names({"$filter": "OrganizationName eq '*g 3'"}) == ["C-3"]  # F&O wildcard
    assert names({"$filter": "IsExternallyMaintained eq Microsoft.Dynamics.DataEntities.NoYes'No'",
                  "$top": "2"}) == ["C-0", "C-1"]
    assert names({"$skip": "1", "$top": "2"}) == ["C-1", "C-2"]
    assert names({"$orderby": "CustomerAccount desc", "$top": "1"}) == ["C-3"]
    counted = fo.get("CustomersV3", params={"$count": "true", "$top": "1"}).json()
    assert counted["@odata.count"] == 1 and len(counted["value"]) == 1
    assert fo.get("CustomersV3/$count").text == "4"
    row = fo.get("CustomersV3", params={"$select": "CustomerAccount,CreditLimit"}).json()["value"][0]
    assert set(row) == {"@odata.etag", "CustomerAccount", "CreditLimit"}
    assert fo.get("CustomersV3", params={"$select": "Nope"}).status_code == 400
    assert fo.get("CustomersV3", params={"$filter": "Nope eq 1"}).status_code == 400


def test_server_paging() -> None:
    fno = FnO(page_size=2)
    with SandboxServer(fno=fno) as server, client(server.fno_data_url) as fo:
        for i in range(5):
            fno.create("CustomersV3", customer(f"C-{i}"))
        url: str | None = "CustomersV3?$select=CustomerAccount"
        seen: list[str] = []
        pages = 0
        while url:
            body = fo.get(url).json()
            seen.extend(r["CustomerAccount"] for r in body["value"])
            url = body.get("@odata.nextLink")
            pages += 1
        assert pages == 3 and seen == [f"C-{i}" for i in range(5)]


def test_delete(fo: httpx.Client) -> None:
    fo.post("CustomersV3", json=customer())
    assert fo.delete(US001).status_code == 204
    assert fo.delete(US001).status_code == 404
    assert fo.get(US001).status_code == 404


def test_other_entities_and_composite_keys(fo: httpx.Client) -> None:
    line = {"dataAreaId": "usmf", "SalesOrderNumber": "SO-1", "LineCreationSequenceNumber": 3,
            "ProductNumber": "P-1", "OrderedSalesQuantity": 2}
    assert fo.post("CDSSalesOrderLines", json=line).status_code == 500  # no order SO-1, no released P-1
    assert fo.post("CDSSalesOrderHeaders", json={"dataAreaId": "usmf", "SalesOrderNumber": "SO-1"}).status_code == 201
    assert fo.post("CDSReleasedDistinctProducts", json={"dataAreaId": "usmf", "ProductNumber": "P-1"}).status_code == 201
    assert fo.post("CDSSalesOrderLines", json=line).status_code == 201
    url = "CDSSalesOrderLines(dataAreaId='usmf',SalesOrderNumber='SO-1',LineCreationSequenceNumber=3)"
    assert fo.get(url).json()["OrderedSalesQuantity"] == 2
    invoice = {"dataAreaId": "usmf", "InvoiceNumber": "CIV-1", "InvoiceDate": "2024-05-31T00:00:00Z",
               "LedgerVoucher": "V-1", "TotalInvoiceAmount": 100}
    assert fo.post("SalesInvoiceHeadersV2", json=invoice).status_code == 201
    key = "SalesInvoiceHeadersV2(dataAreaId='usmf',InvoiceNumber='CIV-1',InvoiceDate=2024-05-31T00:00:00Z," \
          "LedgerVoucher='V-1')"
    assert fo.get(key).json()["TotalInvoiceAmount"] == 100
    for entity_set in ["CDSContactPersonsV2", "CDSReleasedDistinctProducts", "CDSSalesQuotationHeaders",
                       "CDSSalesQuotationLines", "CDSSalesOrderHeaders", "SalesInvoiceLinesV2"]:
        assert fo.get(entity_set).status_code == 200, entity_set
    assert fo.get("NotAnEntity").status_code == 404


def test_change_hook_sees_http_and_python_writes(sandbox: SandboxServer, fo: httpx.Client) -> None:
    changes: list[FnoChange] = []
    sink = sandbox.fno.on_change(changes.append)
    try:
        fo.post("CustomersV3", json=customer())
        fo.patch(US001, json={"NameAlias": "C"})
        sandbox.fno.update("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "US-001"}, {"NameAlias": "D"})
        fo.delete(US001)
        fo.post("CustomersV3", json=customer(CustomerGroupId="bad"))  # failed writes raise nothing
    finally:
        sandbox.fno._sinks.remove(sink)
    assert [(c.operation, c.user) for c in changes] == [
        ("Create", "p2csync-integration"), ("Update", "p2csync-integration"), ("Update", "sam.seller"),
        ("Delete", "p2csync-integration")]
    assert changes[1].changed == ["NameAlias"] and changes[1].row["NameAlias"] == "C"
    assert all(c.entity_set == "CustomersV3" and c.company == "usmf" for c in changes)
