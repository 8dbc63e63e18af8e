"""The F&O sandbox routes key segments the way F&O does, and its write-error status is a setting.

Published captures: `GET /data/ProductsV2(ProductNumber='105E11%2F74N')` answers 404 "No HTTP resource was
found that matches the request URI '…(ProductNumber='105E11/74N')'. No route data was found for this
request."; the same value double-encoded (`%252F`) is found; `/`, `\\` and `+` behave alike. http.sys refuses
URLs that decode to control characters (400 "Bad Request - Invalid URL").
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from sandbox import FnO, SandboxServer

from tests.sandbox.conftest import client


def customer(account: str, **extra: object) -> dict[str, object]:
    return {"CustomerAccount": account, "OrganizationName": "Contoso", "CustomerGroupId": "10", **extra}


def url(encoded_account: str) -> str:
    return f"CustomersV3(dataAreaId='usmf',CustomerAccount='{encoded_account}')"


def assert_no_route(response: httpx.Response, decoded_account: str) -> None:
    assert response.status_code == 404
    body = response.json()
    assert "error" not in body  # ASP.NET's HttpError, not an OData error
    assert body["Message"].startswith("No HTTP resource was found that matches the request URI '")
    assert f"CustomerAccount='{decoded_account}')" in body["Message"]
    assert body["Message"].endswith("No route data was found for this request.")


@pytest.mark.parametrize(("account", "once", "twice"), [
    ("US/001", "US%2F001", "US%252F001"),
    ("A\\B", "A%5CB", "A%255CB"),
    ("A+B", "A%2BB", "A%252BB"),
])
def test_a_once_encoded_separator_or_plus_is_a_routing_miss_and_double_encoding_finds_the_row(
    fo: httpx.Client, sandbox: SandboxServer, account: str, once: str, twice: str
) -> None:
    assert fo.post("CustomersV3", json=customer(account)).status_code == 201
    assert_no_route(fo.get(url(once)), account)
    assert_no_route(fo.patch(url(once), json={"NameAlias": "x"}), account)
    assert_no_route(fo.delete(url(once)), account)
    assert fo.get(url(twice)).json()["CustomerAccount"] == account
    assert fo.patch(url(twice), json={"NameAlias": "x"}).status_code == 204
    assert sandbox.fno.rows("CustomersV3")[0]["NameAlias"] == "x"
    assert fo.delete(url(twice)).status_code == 204 and sandbox.fno.rows("CustomersV3") == []


def test_plus_read_as_a_space_is_the_other_setting(fo: httpx.Client, sandbox: SandboxServer) -> None:
    sandbox.fno.configure(plus_in_key="space")
    fo.post("CustomersV3", json=customer("A+B"))
    fo.post("CustomersV3", json=customer("A B", OrganizationName="The other one"))
    assert fo.get(url("A%2BB")).json()["OrganizationName"] == "The other one"  # '+' became ' '
    assert fo.get(url("A%252BB")).json()["CustomerAccount"] == "A+B"
    sandbox.fno.reset()
    assert sandbox.fno.settings.plus_in_key == "route"


@pytest.mark.parametrize("account", ["50% off", "O'Neil & Co", "Ünïcode", "a#b?c", "T:1*"])
def test_other_characters_survive_one_or_two_encodings(fo: httpx.Client, account: str) -> None:
    assert fo.post("CustomersV3", json=customer(account)).status_code == 201
    literal = account.replace("'", "''")
    once = quote(literal, safe="'")
    assert fo.get(url(once)).json()["CustomerAccount"] == account
    assert fo.get(url(once.replace("%", "%25"))).json()["CustomerAccount"] == account


def test_a_literal_percent_escape_in_a_value_needs_the_second_encoding(fo: httpx.Client) -> None:
    fo.post("CustomersV3", json=customer("X%41Y"))
    assert fo.get(url("X%2541Y")).status_code == 404  # decoded twice: the key 'XAY', no such row
    assert fo.get(url("X%252541Y")).json()["CustomerAccount"] == "X%41Y"


def test_a_key_with_a_control_character_can_be_created_but_never_addressed_again(
    fo: httpx.Client, sandbox: SandboxServer
) -> None:
    created = fo.post("CustomersV3", json=customer("US\n001"))
    assert created.status_code == 201  # the key travels in the body
    assert "%0A" in created.headers["Location"] and "\n" not in created.headers["Location"]
    for response in (fo.get(url("US%0A001")), fo.patch(url("US%0A001"), json={"NameAlias": "x"}),
                     fo.delete(url("US%0A001"))):
        assert response.status_code == 400
        assert "Bad Request - Invalid URL" in response.text
    assert [r["CustomerAccount"] for r in sandbox.fno.rows("CustomersV3")] == ["US\n001"]


def test_write_error_status_is_a_setting_changed_over_http(sandbox: SandboxServer, fo: httpx.Client) -> None:
    with client(sandbox.fno_url) as admin:
        assert admin.get("/_sandbox/settings").json()["write_error_status"] == 500
        assert admin.post("/_sandbox/settings", json={"write_error_status": 418}).status_code == 400
        changed = admin.post("/_sandbox/settings", json={"write_error_status": 400})
        assert changed.json()["write_error_status"] == 400 and changed.json()["plus_in_key"] == "route"
    assert fo.post("CustomersV3", json=customer("US-001")).status_code == 201
    duplicate = fo.post("CustomersV3", json=customer("US-001"))
    invalid = fo.post("CustomersV3", json=customer("US-002", CustomerGroupId="Local"))
    for response, text in ((duplicate, "The record already exists."), (invalid, "Customer group")):
        assert response.status_code == 400
        inner = response.json()["error"]["innererror"]
        assert inner["type"].endswith("AxODataWriteException") and text in inner["message"]
    sandbox.fno.reset()
    assert fo.post("CustomersV3", json=customer("US-001")).status_code == 201
    assert fo.post("CustomersV3", json=customer("US-001")).status_code == 500


@pytest.mark.parametrize("status", [500, 400])
def test_update_conflicts_are_injected_once_with_the_write_error_status(
    sandbox: SandboxServer, fo: httpx.Client, status: int
) -> None:
    sandbox.fno.configure(write_error_status=status, update_conflicts=1)
    fo.post("CustomersV3", json=customer("US-001"))
    first = fo.patch(url("US-001"), json={"NameAlias": "x"})
    assert first.status_code == status
    assert "An update conflict occurred" in first.json()["error"]["innererror"]["message"]
    assert sandbox.fno.rows("CustomersV3")[0]["NameAlias"] == ""
    assert fo.patch(url("US-001"), json={"NameAlias": "x"}).status_code == 204


def test_settings_are_constructor_arguments_too() -> None:
    fno = FnO(write_error_status=400, plus_in_key="space")
    assert (fno.settings.write_error_status, fno.settings.plus_in_key) == (400, "space")
    with pytest.raises(ValueError):
        fno.configure(plus_in_key="maybe")


# ---------------------------------------------------------------------- date-time keys and key comparison

INVOICE = {"dataAreaId": "usmf", "InvoiceNumber": "CIV-1", "InvoiceDate": "2026-01-31T00:00:00Z",
           "LedgerVoucher": "V-1", "TotalInvoiceAmount": 100}


def invoice_url(date_literal: str) -> str:
    return f"SalesInvoiceHeadersV2(dataAreaId='usmf',InvoiceNumber='CIV-1',InvoiceDate={date_literal}," \
           "LedgerVoucher='V-1')"


@pytest.mark.parametrize("literal", ["2026-01-31T00:00:00Z", "2026-01-30T23:00:00-01:00"])
def test_a_datetimeoffset_key_is_found_by_an_unquoted_zoned_literal(fo: httpx.Client, literal: str) -> None:
    assert fo.post("SalesInvoiceHeadersV2", json=INVOICE).status_code == 201
    assert fo.get(invoice_url(literal)).json()["TotalInvoiceAmount"] == 100


@pytest.mark.parametrize("literal", ["'2026-01-31T00:00:00Z'", "2026-01-31", "'2026-01-31'", "2026-01-31T00:00:00"])
def test_a_datetimeoffset_key_as_a_quoted_string_or_a_bare_date_is_refused_not_read_as_no_row(
    fo: httpx.Client, literal: str
) -> None:
    assert fo.post("SalesInvoiceHeadersV2", json=INVOICE).status_code == 201
    for response in (fo.get(invoice_url(literal)), fo.patch(invoice_url(literal), json={"TotalInvoiceAmount": 5}),
                     fo.delete(invoice_url(literal))):
        assert response.status_code == 400
        inner = response.json()["error"]["innererror"]
        assert inner["type"] == "Microsoft.OData.ODataException"
        assert inner["message"].startswith("The key in the request URI is not valid for resource "
                                           "'Microsoft.Dynamics.DataEntities.SalesInvoiceHeaderV2'.")
    assert fo.get(invoice_url("2026-01-31T00:00:00Z")).json()["TotalInvoiceAmount"] == 100  # untouched


def test_string_keys_ignore_trailing_spaces_as_well_as_case(fo: httpx.Client, sandbox: SandboxServer) -> None:
    assert fo.post("CustomersV3", json=customer("HAND-001")).status_code == 201
    duplicate = fo.post("CustomersV3", json=customer("hand-001 "))
    assert duplicate.status_code == sandbox.fno.settings.write_error_status
    assert "The record already exists." in duplicate.json()["error"]["innererror"]["message"]
    assert fo.get(url("HAND-001%2520%2520")).json()["CustomerAccount"] == "HAND-001"
    assert fo.get(url("%2520HAND-001")).status_code == 404  # a leading space names another key
