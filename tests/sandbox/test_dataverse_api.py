"""Dataverse Web API behaviour the integration relies on, over loopback HTTP."""

from __future__ import annotations

import httpx

from sandbox import (
    EUR_CURRENCY_ID, INTEGRATION_USER_ID, SALES_USER_ID, USD_CURRENCY_ID, Dataverse, SandboxServer,
    default_tables,
)
from sandbox.dataverse_tables import processing_status
from tests.sandbox.conftest import client

ACCOUNT_KEY = "accounts(accountnumber='US-001')"


def test_no_or_unknown_bearer_token_is_401(sandbox: SandboxServer) -> None:
    with client(sandbox.dataverse_api_url, token=None) as anonymous:
        assert anonymous.get("accounts").status_code == 401
    with client(sandbox.dataverse_api_url, token="not-a-sandbox-token") as stranger:
        response = stranger.get("accounts")
        assert response.status_code == 401
        assert response.json()["error"]["code"].startswith("0x")


def test_whoami_maps_tokens_to_systemusers(dv: httpx.Client, dv_sales: httpx.Client) -> None:
    assert dv.get("WhoAmI").json()["UserId"] == INTEGRATION_USER_ID
    assert dv_sales.get("WhoAmI()").json()["UserId"] == SALES_USER_ID


def test_seeded_reference_rows(dv: httpx.Client) -> None:
    currencies = dv.get("transactioncurrencies", params={"$select": "isocurrencycode"}).json()["value"]
    assert {c["transactioncurrencyid"]: c["isocurrencycode"] for c in currencies} == {
        USD_CURRENCY_ID: "USD", EUR_CURRENCY_ID: "EUR"}
    users = dv.get("systemusers", params={"$select": "fullname,applicationid"}).json()["value"]
    assert {u["systemuserid"] for u in users} == {INTEGRATION_USER_ID, SALES_USER_ID}
    assert len(dv.get("businessunits").json()["value"]) == 1


def test_post_returns_204_with_entity_id_and_system_columns(dv: httpx.Client) -> None:
    response = dv.post("accounts", json={"name": "Contoso", "accountnumber": "US-001"})
    assert response.status_code == 204
    entity_id = response.headers["OData-EntityId"]
    assert entity_id.startswith(str(dv.base_url)) and entity_id.endswith(")")
    row = dv.get(entity_id).json()
    assert row["name"] == "Contoso"
    assert row["@odata.etag"] == f'W/"{row["versionnumber"]}"'
    assert row["_createdby_value"] == row["_modifiedby_value"] == row["_ownerid_value"] == INTEGRATION_USER_ID
    assert row["statecode"] == 0 and row["statuscode"] == 1
    assert row["createdon"].endswith("Z") and row["createdon"] == row["modifiedon"]
    assert row["_owningbusinessunit_value"]


def test_post_with_representation_is_201(dv: httpx.Client) -> None:
    response = dv.post("accounts?$select=name", json={"name": "Fabrikam"},
                       headers={"Prefer": "return=representation"})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"@odata.context", "@odata.etag", "accountid", "name"}
    assert response.headers["ETag"] == body["@odata.etag"]


def test_post_alternate_key_violation_is_412(dv: httpx.Client) -> None:
    assert dv.post("accounts", json={"name": "A", "accountnumber": "US-001"}).status_code == 204
    response = dv.post("accounts", json={"name": "B", "accountnumber": "us-001"})
    assert response.status_code == 412
    assert response.json()["error"]["code"] == "0x80060892"


def test_unknown_column_is_400_naming_the_property(dv: httpx.Client) -> None:
    response = dv.post("accounts", json={"name": "A", "new_colour": "red"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "0x80048d19" and "new_colour" in error["message"]
    assert dv.patch(ACCOUNT_KEY, json={"_primarycontactid_value": None}).status_code == 400


def test_patch_upsert_by_key_creates_then_updates(dv: httpx.Client) -> None:
    prefer = {"Prefer": "return=representation"}
    created = dv.patch(ACCOUNT_KEY, json={"name": "Contoso"}, headers=prefer)
    assert created.status_code == 201
    assert created.json()["accountnumber"] == "US-001"  # copied from the URL
    updated = dv.patch(ACCOUNT_KEY, json={"name": "Contoso Ltd"}, headers=prefer)
    assert updated.status_code == 200
    assert updated.json()["accountid"] == created.json()["accountid"]
    plain = dv.patch(ACCOUNT_KEY, json={"telephone1": "1"})
    assert plain.status_code == 204 and plain.headers["OData-EntityId"].endswith(ACCOUNT_KEY)
    assert len(dv.get("accounts").json()["value"]) == 1


def test_patch_key_in_url_wins_over_body(dv: httpx.Client) -> None:
    dv.patch(ACCOUNT_KEY, json={"name": "Contoso", "accountnumber": "IGNORED-1"})
    dv.patch(ACCOUNT_KEY, json={"name": "Contoso 2", "accountnumber": "IGNORED-2"})
    rows = dv.get("accounts", params={"$select": "accountnumber,name"}).json()["value"]
    assert [(r["accountnumber"], r["name"]) for r in rows] == [("US-001", "Contoso 2")]


def test_patch_by_guid_upserts(dv: httpx.Client) -> None:
    guid = "0b7e1d2c-3a4b-4c5d-8e9f-112233445566"
    assert dv.patch(f"accounts({guid})", json={"name": "By id"}).status_code == 204
    assert dv.get(f"accounts({guid})").json()["accountid"] == guid


def test_if_match_star_on_missing_row_is_404(dv: httpx.Client) -> None:
    response = dv.patch(ACCOUNT_KEY, json={"name": "x"}, headers={"If-Match": "*"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "0x80040217"
    assert dv.get("accounts").json()["value"] == []


def test_if_none_match_star_on_existing_row_is_412(dv: httpx.Client) -> None:
    assert dv.patch(ACCOUNT_KEY, json={"name": "x"}, headers={"If-None-Match": "*"}).status_code == 204
    response = dv.patch(ACCOUNT_KEY, json={"name": "y"}, headers={"If-None-Match": "*"})
    assert response.status_code == 412
    assert response.json()["error"]["message"] == "A record with matching key values already exists."
    assert dv.patch(ACCOUNT_KEY, json={"name": "z"}, headers={"If-None-Match": "null"}).status_code == 204


def test_if_match_etag_mismatch_is_412(dv: httpx.Client) -> None:
    dv.patch(ACCOUNT_KEY, json={"name": "x"})
    etag = dv.get(ACCOUNT_KEY).json()["@odata.etag"]
    assert dv.patch(ACCOUNT_KEY, json={"name": "y"}, headers={"If-Match": etag}).status_code == 204
    stale = dv.patch(ACCOUNT_KEY, json={"name": "z"}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert "RowVersion" in stale.json()["error"]["message"]
    assert dv.get(ACCOUNT_KEY).json()["name"] == "y"


def test_versionnumber_is_one_increasing_counter(dv: httpx.Client) -> None:
    dv.patch(ACCOUNT_KEY, json={"name": "x"})
    dv.patch("contacts(msdynce_contactnumber='CON-1')", json={"lastname": "Smith"})
    v1 = dv.get(ACCOUNT_KEY).json()["versionnumber"]
    v2 = dv.get("contacts(msdynce_contactnumber='CON-1')").json()["versionnumber"]
    dv.patch(ACCOUNT_KEY, json={"name": "y"})
    v3 = dv.get(ACCOUNT_KEY).json()["versionnumber"]
    assert v1 < v2 < v3


def test_delete_by_key_and_guid(dv: httpx.Client) -> None:
    dv.patch(ACCOUNT_KEY, json={"name": "x"})
    assert dv.delete(ACCOUNT_KEY).status_code == 204
    assert dv.delete(ACCOUNT_KEY).status_code == 404
    guid = dv.post("accounts", json={"name": "y"}).headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    assert dv.delete(f"accounts({guid})").status_code == 204
    assert dv.get(f"accounts({guid})").status_code == 404


def test_get_by_key_missing_is_404_and_bad_key_is_400(dv: httpx.Client) -> None:
    assert dv.get(ACCOUNT_KEY).status_code == 404
    assert dv.get("accounts(name='x')").status_code == 400
    assert dv.get("nothings").status_code == 404


def test_lookup_binds_by_guid_and_alternate_key(dv: httpx.Client) -> None:
    contact_url = dv.patch("contacts(msdynce_contactnumber='CON-1')",
                           json={"firstname": "Ada", "lastname": "Lovelace"}).headers["OData-EntityId"]
    contact = dv.get(contact_url).json()
    assert contact["fullname"] == "Ada Lovelace"
    dv.patch(ACCOUNT_KEY, json={"name": "Contoso",
                                "primarycontactid@odata.bind": "/contacts(msdynce_contactnumber='CON-1')",
                                "transactioncurrencyid@odata.bind": f"/transactioncurrencies({EUR_CURRENCY_ID})"})
    account = dv.get(ACCOUNT_KEY, params={"$select": "_primarycontactid_value,_transactioncurrencyid_value"}).json()
    assert account["_primarycontactid_value"] == contact["contactid"]
    assert account["_transactioncurrencyid_value"] == EUR_CURRENCY_ID
    assert set(account) == {"@odata.context", "@odata.etag", "accountid", "_primarycontactid_value",
                            "_transactioncurrencyid_value"}
    # polymorphic customer lookup through a typed navigation property
    dv.patch("contacts(msdynce_contactnumber='CON-1')", json={"parentcustomerid_account@odata.bind": ACCOUNT_KEY})
    assert dv.get(contact_url).json()["_parentcustomerid_value"] == account["accountid"]
    # clearing
    dv.patch(ACCOUNT_KEY, json={"primarycontactid@odata.bind": None})
    assert dv.get(ACCOUNT_KEY).json()["_primarycontactid_value"] is None


def test_bind_to_missing_row_is_an_error(dv: httpx.Client) -> None:
    response = dv.post("accounts", json={"name": "x",
                                         "primarycontactid@odata.bind": "/contacts(msdynce_contactnumber='NOPE')"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x80040217"  # contact ... Does Not Exist
    response = dv.post("accounts", json={"name": "x", "nosuchnav@odata.bind": "/contacts(x='y')"})
    assert response.status_code == 400
    assert dv.get("accounts").json()["value"] == []


def test_money_defaults_currency_and_money_reads_as_number(dv: httpx.Client) -> None:
    dv.patch(ACCOUNT_KEY, json={"name": "x", "revenue": 1234.5, "industrycode": 7})
    row = dv.get(ACCOUNT_KEY, headers={"Prefer": 'odata.include-annotations="*"'}).json()
    assert row["revenue"] == 1234.5 and row["_transactioncurrencyid_value"] == USD_CURRENCY_ID
    assert row["industrycode@OData.Community.Display.V1.FormattedValue"] == "Consulting"
    assert row["_transactioncurrencyid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "transactioncurrency"
    assert dv.patch(ACCOUNT_KEY, json={"industrycode": 99999}).status_code == 400
    assert dv.patch(ACCOUNT_KEY, json={"revenue": "lots"}).status_code == 400


def test_filter_select_top_orderby(dv: httpx.Client) -> None:
    for number, name, employees in [("A-1", "Alpha", 10), ("A-2", "Beta", 20), ("A-3", "Gamma", None)]:
        dv.patch(f"accounts(accountnumber='{number}')", json={"name": name, "numberofemployees": employees})
    values = lambda params: [r["name"] for r in dv.get("accounts", params=params).json()["value"]]  # noqa: E731
    assert values({"$filter": "name eq 'beta'"}) == ["Beta"]
    assert values({"$filter": "numberofemployees ne null and name ne 'Alpha'"}) == ["Beta"]
    assert values({"$filter": "numberofemployees eq null"}) == ["Gamma"]
    assert values({"$filter": "numberofemployees eq 10 or numberofemployees gt 15", "$orderby": "name desc"}) == [
        "Beta", "Alpha"]
    assert values({"$orderby": "name desc", "$top": "2"}) == ["Gamma", "Beta"]
    owner = dv.get("accounts", params={"$filter": f"_ownerid_value eq {INTEGRATION_USER_ID}"}).json()["value"]
    assert len(owner) == 3
    assert dv.get("accounts", params={"$filter": "nosuch eq 1"}).status_code == 400
    assert dv.get("accounts", params={"$select": "primarycontactid"}).status_code == 400
    body = dv.get("accounts", params={"$select": "name"}).json()
    assert body["@odata.context"].endswith("$metadata#accounts(name)")


def test_a_maxpagesize_over_5000_is_ignored(sandbox, dv: httpx.Client) -> None:
    """Web API "Page results": max page size requests larger than 5,000 are ignored."""
    for i in range(5):
        dv.post("accounts", json={"name": f"acc {i}"})
    default = sandbox.dataverse.default_page_size
    sandbox.dataverse.default_page_size = 3  # stands in for the default 5,000 rows
    try:
        honoured = dv.get("accounts?$select=name", headers={"Prefer": "odata.maxpagesize=4"})
        ignored = dv.get("accounts?$select=name", headers={"Prefer": "odata.maxpagesize=5001"})
    finally:
        sandbox.dataverse.default_page_size = default
    assert len(honoured.json()["value"]) == 4
    assert honoured.headers["Preference-Applied"] == "odata.maxpagesize=4"
    assert len(ignored.json()["value"]) == 3 and "@odata.nextLink" in ignored.json()
    assert "Preference-Applied" not in ignored.headers


def test_paging_with_maxpagesize(dv: httpx.Client) -> None:
    for i in range(5):
        dv.post("accounts", json={"name": f"acc {i}"})
    seen: list[str] = []
    url: str | None = "accounts?$select=name"
    pages = 0
    while url:
        response = dv.get(url, headers={"Prefer": "odata.maxpagesize=2"})
        assert response.status_code == 200
        body = response.json()
        seen.extend(r["name"] for r in body["value"])
        url = body.get("@odata.nextLink")
        pages += 1
        if url:
            assert "$skiptoken" in url or "%24skiptoken" in url
    assert pages == 3
    assert sorted(seen) == [f"acc {i}" for i in range(5)]


def test_composite_alternate_key_with_doubled_quotes() -> None:
    tables = default_tables()
    contact = next(t for t in tables if t.logical_name == "contact")
    contact.alternate_keys.append(["firstname", "emailaddress1"])
    with SandboxServer(dataverse=Dataverse(tables=tables)) as server, client(server.dataverse_api_url) as dv:
        url = "contacts(firstname='Jo''e',emailaddress1='a@b.c')"
        assert dv.patch(url, json={"lastname": "Smith"}).status_code == 204
        row = dv.get(url).json()
        assert (row["firstname"], row["emailaddress1"], row["fullname"]) == ("Jo'e", "a@b.c", "Jo'e Smith")
        assert dv.get("contacts(emailaddress1='a@b.c',firstname='Jo''e')").status_code == 200
        assert dv.get("contacts(firstname='Jo''e')").status_code == 400


def test_service_protection_request_count_and_concurrency(sandbox: SandboxServer, dv: httpx.Client) -> None:
    from sandbox import ServiceProtectionLimits

    sandbox.dataverse.protection.configure(ServiceProtectionLimits(max_requests=3, window_seconds=60))
    statuses = [dv.get("accounts").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    throttled = dv.get("accounts")
    assert throttled.json()["error"]["code"] == "0x80072322"
    assert int(throttled.headers["Retry-After"]) >= 1
    # a different user has its own budget
    with client(sandbox.dataverse_api_url, "sandbox-sales-user") as other:
        assert other.get("accounts").status_code == 200


def test_concurrent_request_limit(sandbox: SandboxServer) -> None:
    import asyncio

    from sandbox import ServiceProtectionLimits

    sandbox.dataverse.protection.configure(ServiceProtectionLimits(max_concurrent=1, max_requests=None,
                                                                   retry_after=2))
    sandbox.dataverse.faults.latency(1.0, count=1)

    async def run() -> list[httpx.Response]:
        headers = {"Authorization": "Bearer sandbox-integration-user"}
        async with httpx.AsyncClient(base_url=sandbox.dataverse_api_url, headers=headers,
                                     trust_env=False) as c:
            slow = asyncio.create_task(c.get("accounts"))
            for _ in range(500):  # until the slow request is admitted (not a fixed sleep: CPUs are shared)
                if sandbox.dataverse.protection.in_flight():
                    break
                await asyncio.sleep(0.01)
            fast = await c.get("accounts")
            return [await slow, fast]

    slow, fast = asyncio.run(run())
    assert slow.status_code == 200
    assert fast.status_code == 429
    assert fast.json()["error"]["code"] == "0x80072326"
    assert fast.headers["Retry-After"] == "2"


def test_bypass_business_logic_needs_privilege(sandbox: SandboxServer, dv: httpx.Client,
                                               dv_sales: httpx.Client) -> None:
    header = {"MSCRM.BypassBusinessLogicExecution": "CustomAsync"}
    assert dv.post("accounts", json={"name": "x"}, headers=header).status_code == 204
    denied = dv_sales.post("accounts", json={"name": "y"}, headers=header)
    assert denied.status_code == 403


def test_sales_tables_with_lookup_alternate_keys(dv: httpx.Client) -> None:
    dv.patch("products(productnumber='P-1')", json={"name": "Widget", "price": 10})
    dv.patch("salesorders(ordernumber='ORD-1')", json={
        "name": "Order 1", "customerid_account@odata.bind": "/accounts(accountnumber='US-001')"})
    assert dv.get("salesorders(ordernumber='ORD-1')").status_code == 404  # bind target missing: nothing created
    dv.patch(ACCOUNT_KEY, json={"name": "Contoso"})
    assert dv.patch("salesorders(ordernumber='ORD-1')", json={
        "name": "Order 1", "customerid_account@odata.bind": "/accounts(accountnumber='US-001')",
        "msdynce_processingstatus": processing_status("Draft")}).status_code == 204
    order_id = dv.get("salesorders(ordernumber='ORD-1')").json()["salesorderid"]
    line_url = f"salesorderdetails(_salesorderid_value={order_id},sequencenumber=1)"
    assert dv.patch(line_url, json={"quantity": 2, "productid@odata.bind": "/products(productnumber='P-1')",
                                    "productdescription": "Widget"}).status_code == 204
    line = dv.get(line_url).json()
    assert line["_salesorderid_value"] == order_id and line["sequencenumber"] == 1 and line["quantity"] == 2
