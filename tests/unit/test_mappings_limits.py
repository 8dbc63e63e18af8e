"""F&O value rules in the mapping engine: dates zone-qualified for Edm.DateTimeOffset, texts within their EDT
length, numbers within their type's range; checked when a record is mapped (before any write) and, for
constants, when the file is loaded."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal

import pytest

from mappings import MappedValueError, MappingError, load_mappings, parse_mapping
from mappings.catalog.limits import field_edt, limits, max_length, parse_limits, utf16_length, utf16_truncate
from mappings.fno_values import EMPTY_DATE, DoesNotFit, fit
from p2csync.connectors.http import dumps_json
from p2csync.settings import ROOT

ACCOUNTS = load_mappings(ROOT / "mappings")["accounts"]
QUOTE_HEADER = """\
flow: quotes
direction: sales_to_fno
source: {system: dataverse, table: quote, entity_set: quotes}
target: {system: fno, entity_set: CDSSalesQuotationHeaders, key: [dataAreaId, SalesQuotationNumber]}
company: {default: usmf}
fields:
  - {target: SalesQuotationNumber, source: quotenumber}
"""


def quotes(fields: str = "", company: str = ""):
    return parse_mapping(QUOTE_HEADER + fields + company, "quotes.yaml")


def account(**extra: object) -> dict[str, object]:
    return {"accountnumber": "A-1", "name": "Contoso", **extra}


# --------------------------------------------------------------------------------------------- point 6: dates


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (date(2026, 1, 31), "2026-01-31T00:00:00Z"),
        ("2026-01-31", "2026-01-31T00:00:00Z"),
        ("2026-01-31T23:30:00-02:00", "2026-02-01T00:00:00Z"),  # the UTC date
        (datetime(2026, 1, 31, 10, 0), "2026-01-31T00:00:00Z"),
    ],
)
def test_the_date_transform_writes_midnight_utc_to_a_datetimeoffset_field(value: object, expected: str) -> None:
    spec = quotes("  - {target: SalesQuotationExpiryDate, source: expireson, transform: date}\n")
    payload = spec.apply({"quotenumber": "Q-1", "expireson": value}).payload
    assert payload["SalesQuotationExpiryDate"] == expected


def test_the_date_transform_writes_a_plain_date_to_dataverse() -> None:
    spec = parse_mapping(
        "flow: back\ndirection: fno_to_sales\n"
        "source: {system: fno, table: SalesInvoiceHeaderV2, entity_set: SalesInvoiceHeadersV2,\n"
        "         key: [dataAreaId, InvoiceNumber]}\n"
        "target: {system: dataverse, entity_set: invoices, table: invoice, key: [invoicenumber]}\n"
        "fields:\n  - {target: invoicenumber, source: InvoiceNumber}\n"
        "  - {target: datedelivered, source: InvoiceDate, transform: date}\n",
        "back.yaml",
    )
    payload = spec.apply({"InvoiceNumber": "I-1", "InvoiceDate": "2026-01-31T00:00:00Z", "dataAreaId": "usmf"}).payload
    assert payload["datedelivered"] == "2026-01-31"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-31T10:00:00", "2026-01-31T10:00:00Z"),  # no zone: taken as UTC
        (datetime(2026, 1, 31, 10, 0), "2026-01-31T10:00:00Z"),
        ("2026-01-31T10:00:00+01:00", "2026-01-31T09:00:00Z"),  # a zone: re-rendered in UTC
        ("2026-01-31 10:00:00+02:00", "2026-01-31T08:00:00Z"),  # space instead of T: ODataLib refuses it
        ("2026-01-31T10:00:00+0200", "2026-01-31T08:00:00Z"),  # offset without a colon: refused too
        ("2026-01-31T10:00:00.500-05:00", "2026-01-31T15:00:00Z"),
        ("", EMPTY_DATE),  # blank: F&O's "no date"
    ],
)
def test_any_value_for_a_datetimeoffset_field_is_sent_with_a_zone(value: object, expected: str) -> None:
    spec = quotes("  - {target: SalesQuotationFollowUpDate, source: followup, on_empty: blank}\n")
    payload = spec.apply({"quotenumber": "Q-1", "followup": value}).payload
    assert payload["SalesQuotationFollowUpDate"] == expected


@pytest.mark.parametrize("value", ["2026-01-31 10:00:00+02:00", "2026-01-31T10:00:00+0200",
                                   "2026-01-31T10:00:00+01:00", "2026-01-31T10:00:00Z"])
def test_a_zoned_date_time_is_sent_in_the_one_form_the_sandbox_accepts(value: str) -> None:
    from sandbox.fno_entities import DATETIME_OFFSET_RE

    sent = fit("CDSSalesQuotationHeaders", "SalesQuotationFollowUpDate", value)
    assert DATETIME_OFFSET_RE.match(sent) and sent.endswith("Z")


INVOICE = """\
flow: invoices
direction: sales_to_fno
source: {system: dataverse, table: invoice, entity_set: invoices}
target: {system: fno, entity_set: SalesInvoiceHeaders, key: [dataAreaId, InvoiceNumber, InvoiceDate]}
company: {default: usmf}
fields:
  - {target: InvoiceNumber, source: invoicenumber}
  - {target: InvoiceDate, source: datedelivered, transform: date}
"""


@pytest.mark.parametrize("value", ["2026-01-31", date(2026, 1, 31), "2026-01-31T00:00:00Z"])
def test_a_datetimeoffset_key_field_reaches_the_connector_as_an_aware_utc_datetime(value: object) -> None:
    from datetime import timezone

    mapped = parse_mapping(INVOICE, "invoices.yaml").apply({"invoicenumber": "INV-1", "datedelivered": value})
    assert mapped.key["InvoiceDate"] == datetime(2026, 1, 31, tzinfo=timezone.utc)
    assert mapped.key["InvoiceDate"].utcoffset() is not None
    assert mapped.payload["InvoiceDate"] == "2026-01-31T00:00:00Z"  # the JSON body keeps the text
    assert isinstance(mapped.key["InvoiceNumber"], str)


def test_a_datetimeoffset_key_is_written_unquoted_in_the_url() -> None:
    from p2csync.connectors.fno import key_path

    mapped = parse_mapping(INVOICE, "invoices.yaml").apply({"invoicenumber": "INV-1", "datedelivered": "2026-01-31"})
    assert key_path(mapped.key) == "(dataAreaId='usmf',InvoiceNumber='INV-1',InvoiceDate=2026-01-31T00:00:00Z)"


@pytest.mark.parametrize(("value", "kind"), [(10**29, "int"), (Decimal("12.5"), "Decimal"), (True, "bool")])
def test_a_non_text_value_for_a_string_field_is_refused_naming_field_and_type(value: object, kind: str) -> None:
    with pytest.raises(MappedValueError) as info:
        ACCOUNTS.apply(account(accountnumber=value))
    message = str(info.value)
    assert message.startswith("accounts: CustomerAccount <- accountnumber: ")
    assert f"is a {kind}, not text: the field is Edm.String" in message


def test_a_number_made_text_is_checked_against_the_length_of_the_text() -> None:
    spec = quotes("  - {target: SalesQuotationName, source: n, transform: string}\n")
    assert spec.apply({"quotenumber": "Q-1", "n": 10**29}).payload["SalesQuotationName"] == "1" + "0" * 29
    with pytest.raises(MappedValueError, match="SalesQuotationNumber <- quotenumber: 30 characters, the limit is 20"):
        quotes().apply({"quotenumber": str(10**29)})


def test_a_non_date_for_a_datetimeoffset_field_is_rejected_naming_the_field() -> None:
    spec = quotes("  - {target: SalesQuotationFollowUpDate, source: followup}\n")
    with pytest.raises(MappedValueError) as info:
        spec.apply({"quotenumber": "Q-1", "followup": "next Tuesday"})
    assert str(info.value) == (
        "quotes: SalesQuotationFollowUpDate <- followup: 'next Tuesday' is not an ISO 8601 date or date-time"
    )


def test_dates_in_an_fno_json_body_carry_a_zone_and_stay_plain_for_dataverse() -> None:
    body = {"d": date(2026, 1, 31), "t": datetime(2026, 1, 31, 10, 0)}
    assert json.loads(dumps_json(body, dates_as_datetimes=True)) == {"d": "2026-01-31T00:00:00Z",
                                                                     "t": "2026-01-31T10:00:00Z"}
    assert json.loads(dumps_json(body)) == {"d": "2026-01-31", "t": "2026-01-31T10:00:00Z"}


# ----------------------------------------------------------------------------- point 7: lengths and ranges


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (account(accountnumber="A" * 5000),
         "CustomerAccount <- accountnumber: 5000 characters, the limit is 20 (EDT CustAccount)"),
        (account(name="N" * 101), "OrganizationName <- name: 101 characters, the limit is 100 (EDT DirPartyName)"),
        (account(address1_city="C" * 59 + "\N{GRINNING FACE}"),  # 60 characters, 61 UTF-16 code units
         "AddressCity <- address1_city: 61 characters, the limit is 60 (EDT LogisticsAddressCityName)"),
        (account(address1_postalcode="98052-6399-X"),
         "AddressZipCode <- address1_postalcode: 12 characters, the limit is 10 (EDT LogisticsAddressZipCodeId)"),
        (account(creditlimit=Decimal("1e308")), "CreditLimit <- creditlimit: 1E+308 is out of range for Edm.Decimal"),
        (account(creditlimit=Decimal("-1e16")), "CreditLimit <- creditlimit: -1E+16 is out of range for Edm.Decimal"),
        (account(numberofemployees=2**31), "OrganizationNumberOfEmployees <- numberofemployees: 2147483648 is out of "
                                           "range for Edm.Int32: -2147483648 to 2147483647"),
    ],
)
def test_a_value_that_does_not_fit_its_fno_field_is_rejected_with_field_limit_and_length(
    record: dict[str, object], reason: str
) -> None:
    with pytest.raises(MappedValueError) as info:
        ACCOUNTS.apply(record)
    assert str(info.value).startswith(f"accounts: {reason}")


def test_values_at_the_limits_fit() -> None:
    payload = ACCOUNTS.apply(account(accountnumber="A" * 20, name="N" * 100, address1_city="C" * 60,
                                     creditlimit=Decimal("9999999999999999.9999999999999999"),
                                     numberofemployees=2**31 - 1)).payload
    assert payload["CustomerAccount"] == "A" * 20
    assert payload["CreditLimit"] == Decimal("9999999999999999.9999999999999999")


def test_too_long_truncate_cuts_to_the_limit_only_where_the_field_says_so() -> None:
    spec = quotes("  - {target: SalesQuotationName, source: name}\n"
                  "  - {target: DeliveryAddressCity, source: city, too_long: truncate}\n")
    payload = spec.apply({"quotenumber": "Q-1", "name": "fits", "city": "C" * 59 + "\N{GRINNING FACE}"}).payload
    assert payload["DeliveryAddressCity"] == "C" * 59
    with pytest.raises(MappedValueError, match="DeliveryAddressCity"):
        quotes("  - {target: DeliveryAddressCity, source: city}\n").apply({"quotenumber": "Q-1", "city": "C" * 61})


def test_key_fields_are_checked_and_never_truncated() -> None:
    with pytest.raises(MappedValueError, match="SalesQuotationNumber <- quotenumber: 21 characters, the limit is 20"):
        quotes().apply({"quotenumber": "Q" * 21})
    with pytest.raises(MappingError, match="'SalesQuotationNumber' is a key field"):
        parse_mapping(QUOTE_HEADER.replace("source: quotenumber}", "source: quotenumber, too_long: truncate}"),
                      "quotes.yaml")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  - {target: CurrencyCode, value: EURO}\n",
         "fields[1].value: 'EURO' does not fit CurrencyCode: 4 characters"),
        ("  - {target: DeliveryAddressCountryRegionISOCode, source: c, default: USA}\n",
         "fields[1].default: 'USA' does not fit DeliveryAddressCountryRegionISOCode: 3 characters, the limit is 2"),
    ],
)
def test_a_constant_or_default_that_does_not_fit_stops_the_file_at_load(extra: str, message: str) -> None:
    with pytest.raises(MappingError) as info:
        quotes(extra)
    assert message in str(info.value)


def test_a_company_longer_than_dataareaid_stops_the_file_at_load() -> None:
    with pytest.raises(MappingError, match="company 'contoso' does not fit dataAreaId: 7 characters, the limit is 4"):
        parse_mapping(QUOTE_HEADER.replace("company: {default: usmf}", "company: {default: contoso}"), "q.yaml")


def test_the_accounts_mapping_fits_the_limits() -> None:
    constants = [(f.target, f.value) for f in ACCOUNTS.fields if f.is_constant]
    for target, value in constants:
        assert fit(ACCOUNTS.target.entity_set, target, value) == value


# ------------------------------------------------------------------------------------------ the limits file


def test_the_limits_file_records_the_sourced_edt_lengths() -> None:
    assert {name: max_length("CustomersV3", name)[0] for name in  # type: ignore[index]
            ("CustomerAccount", "OrganizationName", "AddressStreet", "AddressCity", "AddressZipCode",
             "AddressCountryRegionISOCode", "CustomerGroupId", "SiteId", "WarehouseId", "LanguageId",
             "SalesCurrencyCode", "PrimaryContactEmail", "dataAreaId", "PartyNumber")} == {
        "CustomerAccount": 20, "OrganizationName": 100, "AddressStreet": 250, "AddressCity": 60,
        "AddressZipCode": 10, "AddressCountryRegionISOCode": 2, "CustomerGroupId": 10, "SiteId": 10,
        "WarehouseId": 10, "LanguageId": 7, "SalesCurrencyCode": 3, "PrimaryContactEmail": 255, "dataAreaId": 4,
        "PartyNumber": 40}
    assert max_length("CustomersV3", "SalesMemo") is None  # a memo: no known limit, not checked


def test_field_rules_resolve_by_entity_then_name_then_longest_suffix() -> None:
    parsed = parse_limits("== edts\nA 1\nB 2\nC 3\n== fields\nX.City A\nCity B\n*City C\n")
    assert parsed.fields == {"X.City": "A", "City": "B", "*City": "C"}
    assert field_edt("CustomersV3", "DeliveryAddressCity") == "LogisticsAddressCityName"
    assert field_edt("CustomersV3", "AddressCityInKana") is None
    with pytest.raises(ValueError, match="fields name EDTs without a size: Nope"):
        parse_limits("== edts\nA 1\n== fields\nCity Nope\n")


def test_the_sandbox_reads_the_same_limits_file() -> None:
    from sandbox.fno_entities import EDT_LENGTHS, LIMITS_FILE, RANGES
    from mappings.catalog.limits import LIMITS_FILE as PRODUCT_FILE

    assert LIMITS_FILE.resolve() == PRODUCT_FILE.resolve()
    assert EDT_LENGTHS == limits().edt_lengths and RANGES == limits().ranges


def test_utf16_helpers_count_and_cut_like_nvarchar() -> None:
    assert utf16_length("a\N{GRINNING FACE}") == 3
    assert utf16_truncate("ab\N{GRINNING FACE}c", 3) == "ab"
    with pytest.raises(DoesNotFit, match="not a finite number"):
        fit("CustomersV3", "CreditLimit", float("nan"))
