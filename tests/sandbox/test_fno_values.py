"""F&O sandbox value rules over loopback HTTP: Edm.DateTimeOffset needs a zone, numbers stay in range and texts
fit their EDT length (both behaviours of an over-long text: an infolog error, or the first characters kept)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from sandbox import FnO, SandboxServer
from tests.sandbox.conftest import client

QUOTES = "CDSSalesQuotationHeaders"
QUOTE = f"{QUOTES}(dataAreaId='usmf',SalesQuotationNumber='Q-1')"
ODATA_EXCEPTION = "Microsoft.OData.ODataException"


def quote(**extra: object) -> dict[str, object]:
    return {"SalesQuotationNumber": "Q-1", "CurrencyCode": "USD", **extra}


def customer(**extra: object) -> dict[str, object]:
    return {"CustomerAccount": "US-001", "OrganizationName": "Contoso", "CustomerGroupId": "10", **extra}


def inner(response: httpx.Response) -> dict[str, str]:
    return response.json()["error"]["innererror"]


@pytest.mark.parametrize("literal", ["2026-01-31", "2026-01-31T00:00:00", "2026-01-31T10:00:00.5"])
def test_a_datetimeoffset_without_a_zone_is_400_odataexception(fo: httpx.Client, sandbox: SandboxServer,
                                                              literal: str) -> None:
    response = fo.post(QUOTES, json=quote(SalesQuotationExpiryDate=literal))
    assert response.status_code == 400
    error = inner(response)
    assert error["type"] == ODATA_EXCEPTION
    assert error["message"].startswith(f"Cannot convert the literal '{literal}' to the expected type "
                                       "'Edm.DateTimeOffset'")
    assert sandbox.fno.rows(QUOTES) == []


@pytest.mark.parametrize(("literal", "stored"), [("2026-01-31T00:00:00Z", "2026-01-31T00:00:00Z"),
                                                 ("2026-01-31T01:00:00+02:00", "2026-01-30T23:00:00Z")])
def test_a_zone_qualified_datetimeoffset_is_accepted(fo: httpx.Client, literal: str, stored: str) -> None:
    assert fo.post(QUOTES, json=quote(SalesQuotationExpiryDate=literal)).status_code == 201
    assert fo.patch(QUOTE, json={"SalesQuotationFollowUpDate": literal}).status_code == 204
    row = fo.get(QUOTE).json()
    assert (row["SalesQuotationExpiryDate"], row["SalesQuotationFollowUpDate"]) == (stored, stored)
    assert fo.patch(QUOTE, json={"SalesQuotationFollowUpDate": "2026-02-01"}).status_code == 400


@pytest.mark.parametrize(("field", "value"), [("CreditLimit", 1e308), ("CreditLimit", 1e29),
                                              ("CreditLimit", float("inf")), ("OrganizationNumberOfEmployees", 2**31),
                                              ("OrganizationNumberOfEmployees", -(2**31) - 1)])
def test_a_number_out_of_its_types_range_is_400_odataexception(fo: httpx.Client, field: str, value: float) -> None:
    response = fo.post("CustomersV3", content=json.dumps(customer(**{field: value})),
                       headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert inner(response)["type"] == ODATA_EXCEPTION
    assert "Cannot convert the literal" in inner(response)["message"]


def test_a_decimal_beyond_fnos_real_is_a_write_error_and_its_limit_is_accepted(fo: httpx.Client) -> None:
    response = fo.post("CustomersV3", json=customer(CreditLimit=1e20))  # a .NET decimal, not a numeric(32,16)
    assert response.status_code == 500
    assert "Arithmetic overflow" in inner(response)["message"] and "CreditLimit" in inner(response)["message"]
    ok = fo.post("CustomersV3", json=customer(CreditLimit=9999999999999999, OrganizationNumberOfEmployees=2**31 - 1))
    assert ok.status_code == 201


@pytest.fixture(params=["error", "truncate"])
def overflow_fo(request: pytest.FixtureRequest) -> Iterator[tuple[str, httpx.Client, FnO]]:
    fno = FnO(string_overflow=request.param)
    with SandboxServer(dataverse=None, fno=fno) as server, client(server.fno_data_url) as fo:
        yield request.param, fo, fno


@pytest.mark.parametrize(("field", "limit"), [("CustomerAccount", 20), ("AddressCity", 60),
                                              ("AddressCountryRegionISOCode", 2), ("OrganizationName", 100)])
def test_a_text_longer_than_its_edt_fails_or_is_cut_per_setting(overflow_fo: tuple[str, httpx.Client, FnO],
                                                                 field: str, limit: int) -> None:
    mode, fo, fno = overflow_fo
    assert fo.post("CustomersV3", json=customer(**{"CustomerAccount": "FITS", field: "x" * limit})).status_code == 201
    response = fo.post("CustomersV3", json=customer(**{field: "y" * (limit + 1)}))
    account = "y" * limit if field == "CustomerAccount" else "US-001"
    if mode == "error":
        assert response.status_code == 500
        message = inner(response)["message"]
        assert message.startswith("Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Error:")
        assert f"{field}' ({limit + 1} characters, the field holds {limit})" in message
        assert fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": account}) is None
    else:
        assert response.status_code == 201
        stored = fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": account})
        assert stored is not None and stored[field] == "y" * limit


def test_length_counts_utf16_code_units_like_nvarchar(overflow_fo: tuple[str, httpx.Client, FnO]) -> None:
    mode, fo, fno = overflow_fo
    city = "a" * 59 + "\N{GRINNING FACE}"  # 60 characters, 61 UTF-16 code units
    response = fo.post("CustomersV3", json=customer(AddressCity=city))
    if mode == "error":
        assert response.status_code == 500
    else:
        assert response.status_code == 201
        stored = fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "US-001"})
        assert stored is not None and stored["AddressCity"] == "a" * 59  # never half a surrogate pair
