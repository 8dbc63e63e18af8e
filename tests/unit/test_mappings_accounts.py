"""The shipped accounts mapping (Sales account -> F&O CustomersV3) loaded and applied to realistic records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from mappings import LookupRequest, MappedValueError, load_mapping, load_mappings, parse_mapping, payload_hash
from mappings.catalog import fno_fields

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
ACCOUNTS = MAPPINGS / "accounts.yaml"
CURRENCY = "transactioncurrencyid.isocurrencycode"


@dataclass(frozen=True)
class Ref:
    id: str
    logical_name: str
    name: str | None = None


@pytest.fixture(scope="module")
def spec():
    return load_mapping(ACCOUNTS)


def account(**changes):
    record = {
        "accountid": "6f2f1b3c-1d2e-4f5a-8b9c-0a1b2c3d4e5f",
        "modifiedon": datetime(2024, 5, 31, 10, 0, tzinfo=UTC),
        "accountnumber": "ACC-01000-BVRCPS",
        "name": "Contoso Pharmaceuticals",
        "creditlimit": Decimal("5000000.0000"),
        "numberofemployees": 250,
        "description": "Key account, net 30",
        "telephone1": "+1 425 555 0100",
        "fax": "+1 425 555 0199",
        "emailaddress1": "ap@contoso.example",
        "websiteurl": "https://contoso.example",
        "address1_line1": "1 Microsoft Way",
        "address1_city": "Redmond",
        "address1_stateorprovince": "WA",
        "address1_postalcode": "98052",
        "address1_country": "United States",
        "address2_line1": "500 Dock Street",
        "address2_city": "Tacoma",
        "address2_stateorprovince": "WA",
        "address2_postalcode": "98402",
        "address2_country": " usa ",
        "transactioncurrencyid": Ref("7a1c2d3e-0000-4000-8000-000000000001", "transactioncurrency", "US Dollar"),
        "owningbusinessunit": Ref("0f3c8f2e-5a9b-4c1d-9e7f-2b6a1d4c8e90", "businessunit", "Contoso"),
        "statecode": 0,
    }
    record.update(changes)
    return record


EXPECTED = {
    "dataAreaId": "usmf",
    "CustomerAccount": "ACC-01000-BVRCPS",
    "PartyNumber": "ACC-01000-BVRCPS",
    "PartyType": "Organization",
    "OrganizationName": "Contoso Pharmaceuticals",
    "IsExternallyMaintained": "Yes",
    "CustomerGroupId": "10",
    "SiteId": "1",
    "WarehouseId": "13",
    "LanguageId": "en-us",
    "SalesCurrencyCode": "USD",
    "CreditLimit": Decimal("5000000.0000"),
    "OrganizationNumberOfEmployees": 250,
    "SalesMemo": "Key account, net 30",
    "PrimaryContactPhone": "+1 425 555 0100",
    "PrimaryContactFax": "+1 425 555 0199",
    "PrimaryContactEmail": "ap@contoso.example",
    "PrimaryContactURL": "https://contoso.example",
    "AddressDescription": "Contoso Pharmaceuticals",
    "AddressStreet": "1 Microsoft Way",
    "AddressCity": "Redmond",
    "AddressState": "WA",
    "AddressZipCode": "98052",
    "AddressCountryRegionISOCode": "US",
    "AddressLocationRoles": "Invoice",
    "DeliveryAddressDescription": "Contoso Pharmaceuticals",
    "DeliveryAddressStreet": "500 Dock Street",
    "DeliveryAddressCity": "Tacoma",
    "DeliveryAddressState": "WA",
    "DeliveryAddressZipCode": "98402",
    "DeliveryAddressCountryRegionISOCode": "US",
}


def test_file_starts_with_the_schema_comment():
    assert ACCOUNTS.read_text(encoding="utf-8").splitlines()[0] == (
        "# yaml-language-server: $schema=./mapping.schema.json"
    )


def test_shape_of_the_accounts_flow(spec):
    assert spec.flow == "accounts"
    assert spec.direction == "sales_to_fno"
    assert (spec.source.system, spec.source.table, spec.source.entity_set) == ("dataverse", "account", "accounts")
    assert spec.source.version_field == "modifiedon"
    assert (spec.target.system, spec.target.entity_set) == ("fno", "CustomersV3")
    assert spec.target.key == ["dataAreaId", "CustomerAccount"]
    assert spec.filter == []
    assert spec.lines == []
    # the 30 rows of the P2C template, one target field each
    assert len(spec.fields) == 30
    assert [f.target for f in spec.fields if f.required] == ["CustomerAccount", "PartyNumber"]


def test_every_target_field_is_a_customersv3_field(spec):
    fields = fno_fields("CustomersV3")
    assert fields is not None and len(fields) == 305
    targets = [f.target for f in spec.fields] + spec.target.key
    assert [t for t in targets if t not in fields] == []


def test_load_mappings_finds_the_shipped_flows():
    specs = load_mappings(MAPPINGS)
    assert "accounts" in specs
    assert specs["accounts"].target.entity_set == "CustomersV3"


def test_source_columns_are_derived_from_the_fields(spec):
    columns = spec.source_columns()
    assert columns[:3] == ["accountid", "modifiedon", "accountnumber"]
    assert "transactioncurrencyid" in columns and CURRENCY not in columns
    assert "address2_country" in columns
    assert "owningbusinessunit" not in columns  # no business units mapped: routing reads nothing
    assert len(columns) == len(set(columns)) == 22
    assert spec.lookup_columns() == ["transactioncurrencyid"]
    assert spec.money_columns() == ["creditlimit"]


def test_lookups_ask_for_the_currency_code(spec):
    record = account()
    assert spec.lookups(record) == [
        LookupRequest(CURRENCY, "transactioncurrencyid", "transactioncurrency", record["transactioncurrencyid"].id,
                      "isocurrencycode", "transactioncurrencies")
    ]
    assert spec.lookups(account(transactioncurrencyid=None)) == []


def test_apply_to_a_realistic_account(spec):
    mapped = spec.apply(account(), resolved={CURRENCY: "USD"}, default_company="USMF")
    assert mapped.payload == EXPECTED
    assert list(mapped.payload)[:2] == ["dataAreaId", "CustomerAccount"]
    assert mapped.key == {"dataAreaId": "usmf", "CustomerAccount": "ACC-01000-BVRCPS"}
    assert mapped.company == "usmf"
    assert mapped.payload_hash == payload_hash(EXPECTED)


def test_empty_columns_send_blank_text_and_omit_numbers(spec):
    record = account(
        fax=None, description="", numberofemployees=None, creditlimit=None, transactioncurrencyid=None,
        address2_line1=None, address2_city=None, address2_stateorprovince=None, address2_postalcode=None,
        address2_country=None, address1_country="   ",
    )
    payload = spec.apply(record, default_company="usmf").payload
    assert payload["PrimaryContactFax"] == ""
    assert payload["SalesMemo"] == ""
    for omitted in ("OrganizationNumberOfEmployees", "CreditLimit", "SalesCurrencyCode"):
        assert omitted not in payload
    # blank country -> the P2C default
    assert payload["AddressCountryRegionISOCode"] == "US"
    assert payload["DeliveryAddressCountryRegionISOCode"] == "US"
    assert payload["DeliveryAddressStreet"] == ""


@pytest.mark.parametrize(
    ("country", "iso"),
    [("United States of America", "US"), ("U.S.", "US"), ("CANADA", "CA"), ("Norway", "NO"), ("NO", "NO"),
     ("Deutschland", "DE"), ("uk", "GB")],
)
def test_country_value_map(spec, country, iso):
    payload = spec.apply(account(address1_country=country), resolved={CURRENCY: "USD"}, default_company="usmf").payload
    assert payload["AddressCountryRegionISOCode"] == iso


def test_unknown_country_is_rejected_with_the_value(spec):
    with pytest.raises(MappedValueError) as info:
        spec.apply(account(address2_country="Atlantis"), resolved={CURRENCY: "USD"}, default_company="usmf")
    assert str(info.value) == (
        "accounts: DeliveryAddressCountryRegionISOCode <- address2_country: transform 'country': 'Atlantis' is "
        "neither an ISO 3166 country name nor a code; add the spelling to the field's value map"
    )


#: The countries value map as it was before the 'country' transform (every spelling listed by hand): each must
#: still map as before, now through the local map (spellings ISO does not know) or the ISO library.
HAND_LISTED_COUNTRIES = {
    "United States": "US", "United States of America": "US", "USA": "US", "U.S.A.": "US", "US": "US", "U.S.": "US",
    "America": "US", "Canada": "CA", "CA": "CA", "CAN": "CA", "Mexico": "MX", "México": "MX", "MX": "MX",
    "MEX": "MX", "United Kingdom": "GB", "UK": "GB", "U.K.": "GB", "Great Britain": "GB", "England": "GB",
    "Scotland": "GB", "Wales": "GB", "GB": "GB", "GBR": "GB", "Ireland": "IE", "IE": "IE", "IRL": "IE",
    "Germany": "DE", "Deutschland": "DE", "DE": "DE", "DEU": "DE", "France": "FR", "FR": "FR", "FRA": "FR",
    "Netherlands": "NL", "The Netherlands": "NL", "Holland": "NL", "NL": "NL", "NLD": "NL", "Belgium": "BE",
    "BE": "BE", "BEL": "BE", "Luxembourg": "LU", "LU": "LU", "LUX": "LU", "Switzerland": "CH", "CH": "CH",
    "CHE": "CH", "Austria": "AT", "AT": "AT", "AUT": "AT", "Italy": "IT", "IT": "IT", "ITA": "IT", "Spain": "ES",
    "ES": "ES", "ESP": "ES", "Portugal": "PT", "PT": "PT", "PRT": "PT", "Poland": "PL", "PL": "PL", "POL": "PL",
    "Czech Republic": "CZ", "Czechia": "CZ", "CZ": "CZ", "CZE": "CZ", "Denmark": "DK", "DK": "DK", "DNK": "DK",
    "Norway": "NO", "NO": "NO", "NOR": "NO", "Sweden": "SE", "SE": "SE", "SWE": "SE", "Finland": "FI", "FI": "FI",
    "FIN": "FI", "Australia": "AU", "AU": "AU", "AUS": "AU", "New Zealand": "NZ", "NZ": "NZ", "NZL": "NZ",
    "Japan": "JP", "JP": "JP", "JPN": "JP", "China": "CN", "CN": "CN", "CHN": "CN", "India": "IN", "IN": "IN",
    "IND": "IN", "Singapore": "SG", "SG": "SG", "SGP": "SG", "Brazil": "BR", "BR": "BR", "BRA": "BR",
    "South Africa": "ZA", "ZA": "ZA", "ZAF": "ZA", "United Arab Emirates": "AE", "UAE": "AE", "AE": "AE",
    "ARE": "AE",
}


@pytest.mark.parametrize(("spelling", "iso"), sorted(HAND_LISTED_COUNTRIES.items()))
def test_every_formerly_listed_country_spelling_maps_as_before(spec, spelling, iso):
    payload = spec.apply(account(address1_country=spelling, address2_country=f"  {spelling.lower()} "),
                         resolved={CURRENCY: "USD"}, default_company="usmf").payload
    assert (payload["AddressCountryRegionISOCode"], payload["DeliveryAddressCountryRegionISOCode"]) == (iso, iso)


def test_the_countries_map_lists_only_spellings_iso_does_not_know(spec):
    """The map is for local spellings: a line the library already reads is noise that hides the real list."""
    from mappings.transforms import TransformError, _country
    known = []
    for spelling in spec.value_maps["countries"].map:
        try:
            _country(str(spelling))
            known.append(spelling)
        except TransformError:
            pass
    assert known == []


@pytest.mark.parametrize(
    ("country", "iso"),
    [("Federal Republic of Germany", "DE"), ("Bolivia", "BO"), ("Bolivia, Plurinational State of", "BO"),
     ("KOR", "KR"), ("276", "DE"), ("viet nam", "VN"), ("Türkiye", "TR")],
)
def test_country_names_the_old_list_never_had_come_from_the_iso_library(spec, country, iso):
    payload = spec.apply(account(address1_country=country), resolved={CURRENCY: "USD"}, default_company="usmf").payload
    assert payload["AddressCountryRegionISOCode"] == iso


@pytest.mark.parametrize("number", [None, "", "   "])
def test_account_without_number_is_rejected(spec, number):
    with pytest.raises(MappedValueError) as info:
        spec.apply(account(accountnumber=number), resolved={CURRENCY: "USD"}, default_company="usmf")
    err = info.value
    assert (err.flow, err.target, err.source) == ("accounts", "CustomerAccount", "accountnumber")
    assert str(err) == "accounts: CustomerAccount <- accountnumber: required value is empty"


def test_unresolved_currency_lookup_is_an_error(spec):
    with pytest.raises(MappedValueError, match="SalesCurrencyCode <- transactioncurrencyid.isocurrencycode: lookup"):
        spec.apply(account(), default_company="usmf")


def test_company_comes_from_the_setting_then_the_file_default(spec):
    assert spec.apply(account(), resolved={CURRENCY: "USD"}, default_company="DEMF").company == "demf"
    assert spec.apply(account(), resolved={CURRENCY: "USD"}).company == "usmf"


def test_company_routing_by_business_unit(spec):
    text = ACCOUNTS.read_text(encoding="utf-8").replace(
        "  business_units: {}\n",
        '  business_units:\n    "0F3C8F2E-5A9B-4C1D-9E7F-2B6A1D4C8E90": gbsi\n    Contoso Europe: DEMF\n',
    )
    routed = parse_mapping(text, "accounts.yaml")
    assert "owningbusinessunit" in routed.source_columns()
    # by GUID, ignoring case
    assert routed.apply(account(), resolved={CURRENCY: "USD"}, default_company="usmf").company == "gbsi"
    # by name
    europe = Ref("11111111-2222-3333-4444-555555555555", "businessunit", "contoso europe")
    mapped = routed.apply(account(owningbusinessunit=europe), resolved={CURRENCY: "USD"}, default_company="usmf")
    assert (mapped.company, mapped.key["dataAreaId"], mapped.payload["dataAreaId"]) == ("demf", "demf", "demf")
    # not listed -> default
    other = Ref("99999999-2222-3333-4444-555555555555", "businessunit", None)
    assert routed.apply(account(owningbusinessunit=other), resolved={CURRENCY: "USD"},
                        default_company="usmf").company == "usmf"
    strict = parse_mapping(text.replace("unmapped: default ", "unmapped: error   "), "accounts.yaml")
    with pytest.raises(MappedValueError, match=r"accounts: dataAreaId <- owningbusinessunit: businessunit 9999"):
        strict.apply(account(owningbusinessunit=other), resolved={CURRENCY: "USD"}, default_company="usmf")


def test_the_payload_hash_ignores_number_types_and_order(spec):
    one = spec.apply(account(), resolved={CURRENCY: "USD"}, default_company="usmf")
    two = spec.apply(account(creditlimit=5000000), resolved={CURRENCY: "USD"}, default_company="usmf")
    assert (one.payload["CreditLimit"], two.payload["CreditLimit"]) == (Decimal("5000000.0000"), Decimal(5000000))
    assert str(one.payload["CreditLimit"]) != str(two.payload["CreditLimit"])
    assert one.payload_hash == two.payload_hash
    changed = spec.apply(account(name="Contoso Ltd"), resolved={CURRENCY: "USD"}, default_company="usmf")
    assert changed.payload_hash != one.payload_hash
