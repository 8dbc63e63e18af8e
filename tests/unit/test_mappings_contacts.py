"""The shipped contacts mappings (Sales contact -> F&O person customer, or contact person of an account's customer)
loaded and applied to realistic records: each template, its filter, its value maps and its decisions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from handlers import build_registry
from handlers.base import parse_target_key, target_key
from handlers.contacts import ContactSync
from mappings import MappedValueError, load_mappings, parse_mapping
from p2csync.connectors.fno import key_path
from p2csync.connectors.odata import ODataEnum
from p2csync.registration import desired_registration

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
PARENT = "parentcustomerid.Account(accountnumber)"
CURRENCY = "transactioncurrencyid.isocurrencycode"


@dataclass(frozen=True)
class Ref:
    id: str
    logical_name: str
    name: str | None = None


@pytest.fixture(scope="module")
def specs():
    return load_mappings(MAPPINGS)


@pytest.fixture(scope="module")
def customers(specs):
    return specs["contacts_customers"]


@pytest.fixture(scope="module")
def persons(specs):
    return specs["contacts_persons"]


def contact(**changes):
    record = {
        "contactid": "1b2c3d4e-0000-4000-8000-00000000c001",
        "modifiedon": datetime(2024, 5, 31, 10, 0, tzinfo=UTC),
        "msdynce_contactnumber": "CON-01000-BVRCPS",
        "firstname": "Nancy", "middlename": "J", "lastname": "Davolio", "fullname": "Nancy Davolio",
        "emailaddress1": "nancy@contoso.example", "telephone1": "+1 425 555 0101", "fax": None,
        "jobtitle": "Buyer", "department": "Purchasing", "governmentid": "123-45-6789",
        "websiteurl": "https://nancy.example", "description": "Prefers email",
        "address1_line1": "1 Pine St", "address1_city": "Seattle", "address1_stateorprovince": "WA",
        "address1_postalcode": "98101", "address1_country": "England",
        "gendercode": 2, "familystatuscode": 2, "donotemail": False, "statecode": 0,
        "creditlimit": Decimal("1500.0000"),
        "msdynce_isactivecustomer": False,
        "parentcustomerid": Ref("6f2f1b3c-1d2e-4f5a-8b9c-0a1b2c3d4e5f", "account", "Contoso"),
        "transactioncurrencyid": Ref("7a1c2d3e-0000-4000-8000-000000000001", "transactioncurrency"),
        "owningbusinessunit": Ref("0f3c8f2e-5a9b-4c1d-9e7f-2b6a1d4c8e90", "businessunit", "Contoso"),
    }
    record.update(changes)
    return record


# ------------------------------------------------------------------------------------------- person customer


def test_an_active_customer_maps_to_a_person_customer_keyed_by_its_contact_number(customers):
    record = contact(msdynce_isactivecustomer=True, parentcustomerid=None)
    assert customers.filter_reason(record) is None
    mapped = customers.apply(record, resolved={CURRENCY: "USD"}, default_company="usmf")
    assert mapped.key == {"dataAreaId": "usmf", "CustomerAccount": "CON-01000-BVRCPS"}
    p = mapped.payload
    assert (p["PartyNumber"], p["PartyType"], p["IsExternallyMaintained"]) == ("CON-01000-BVRCPS", "Person", "Yes")
    assert (p["PersonFirstName"], p["PersonMiddleName"], p["PersonLastName"]) == ("Nancy", "J", "Davolio")
    assert (p["CustomerGroupId"], p["LanguageId"], p["SalesCurrencyCode"]) == ("10", "en-us", "USD")
    assert p["CreditLimit"] == Decimal("1500.0000")
    assert (p["AddressDescription"], p["AddressCity"], p["AddressCountryRegionISOCode"]) == (
        "Nancy Davolio", "Seattle", "GB")
    assert (p["PersonGender"], p["PersonMaritalStatus"]) == ("Female", "Married")
    assert "SiteId" not in p and "WarehouseId" not in p  # none in the template for contacts (reference 3.2)


def test_a_contact_that_is_not_an_active_customer_is_not_a_person_customer(customers):
    assert customers.filter_reason(contact()) == "msdynce_isactivecustomer is False, expected True"
    assert customers.filter_reason(contact(msdynce_isactivecustomer=None)) is not None


# --------------------------------------------------------------------------------------------- contact person


def test_a_contact_of_an_account_maps_to_a_contact_person_of_the_accounts_customer(persons):
    record = contact()
    assert persons.filter_reason(record) is None
    [lookup] = [r for r in persons.lookups(record) if r.path == PARENT]
    assert (lookup.table, lookup.column, lookup.entity_set) == ("account", "accountnumber", "accounts")
    mapped = persons.apply(record, resolved={PARENT: "ACC-01000-BVRCPS"}, company="USMF")
    assert mapped.key == {"dataAreaId": "usmf", "ContactPersonPartyNumber": "CON-01000-BVRCPS",
                          "AssociatedContactType": "Customer", "AssociatedContactNumber": "ACC-01000-BVRCPS"}
    p = mapped.payload
    assert (p["ContactPersonPartyType"], p["IsContactPersonExternallyMaintained"], p["IsInactive"]) == (
        "Person", "Yes", "No")
    assert (p["Gender"], p["MaritalStatus"], p["IsReceivingDirectMail"]) == ("Female", "Married", "Yes")
    assert (p["EmploymentProfession"], p["EmploymentDepartment"], p["Notes"]) == ("Buyer", "Purchasing",
                                                                                 "Prefers email")
    assert (p["PrimaryAddressStateId"], p["PrimaryAddressCountryRegionISOCode"]) == ("WA", "GB")


def test_the_enum_key_field_addresses_the_row_as_an_odata_enum_literal(persons):
    mapped = persons.apply(contact(), resolved={PARENT: "ACC-1"}, company="usmf")
    kind = mapped.key["AssociatedContactType"]
    assert isinstance(kind, ODataEnum) and kind == "Customer"
    assert "AssociatedContactType=Microsoft.Dynamics.DataEntities.SmmContactPersonCdsAssociatedContactType" \
           "'Customer'" in key_path(mapped.key)
    assert mapped.payload["AssociatedContactType"] == "Customer"  # the JSON body carries the plain symbol


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"parentcustomerid": Ref("9a9a9a9a-0000-4000-8000-000000000009", "contact")},
         "parentcustomerid points to a contact, expected account"),
        ({"parentcustomerid": None}, "parentcustomerid is empty, expected a lookup to account"),
        ({"msdynce_isactivecustomer": True}, "msdynce_isactivecustomer is True, expected anything else"),
        ({"msdynce_contactnumber": "  "}, "msdynce_contactnumber is empty, expected it not to be empty"),
    ],
)
def test_contacts_that_are_not_contact_persons_are_filtered_with_the_reason(persons, changes, reason):
    assert persons.filter_reason(contact(**changes)) == reason


@pytest.mark.parametrize(("code", "gender"), [(1, "Male"), (2, "Female"), (None, "Unknown"), (3, "Unknown")])
def test_gender_value_map(persons, code, gender):
    assert persons.apply(contact(gendercode=code), resolved={PARENT: "A"}, company="usmf").payload["Gender"] == gender


@pytest.mark.parametrize(("code", "status"), [(1, "Single"), (2, "Married"), (3, "Divorced"), (4, "Widowed"),
                                              (None, "None"), (9, "None")])
def test_marital_status_value_map(persons, code, status):
    payload = persons.apply(contact(familystatuscode=code), resolved={PARENT: "A"}, company="usmf").payload
    assert payload["MaritalStatus"] == status


@pytest.mark.parametrize(("donotemail", "mail"), [(True, "No"), (False, "Yes"), (None, "No")])
def test_do_not_email_is_inverted_into_receiving_direct_mail(persons, donotemail, mail):
    payload = persons.apply(contact(donotemail=donotemail), resolved={PARENT: "A"}, company="usmf").payload
    assert payload["IsReceivingDirectMail"] == mail


@pytest.mark.parametrize(("state", "inactive"), [(0, "No"), (1, "Yes")])
def test_status_maps_to_is_inactive(persons, state, inactive):
    payload = persons.apply(contact(statecode=state), resolved={PARENT: "A"}, company="usmf").payload
    assert payload["IsInactive"] == inactive


def test_a_contact_whose_account_has_no_number_cannot_be_keyed(persons):
    with pytest.raises(MappedValueError) as info:
        persons.apply(contact(), resolved={PARENT: None}, company="usmf")
    assert (info.value.target, info.value.source) == ("AssociatedContactNumber", PARENT)


def test_the_filters_of_the_two_templates_exclude_each_other(customers, persons):
    for active in (True, False, None):
        for parent in (Ref("a", "account"), Ref("c", "contact"), None):
            record = contact(msdynce_isactivecustomer=active, parentcustomerid=parent)
            taken = [s.flow for s in (customers, persons) if s.filter_reason(record) is None]
            assert len(taken) <= 1, (active, parent, taken)


# ------------------------------------------------------------------------------------------------ decisions


def test_retire_decisions(customers, persons):
    assert persons.retire == {"IsInactive": "Yes"}  # the old contact person is marked inactive
    assert customers.retire == {}  # the old person customer is left as it is
    assert persons.company.parent is not None
    assert (persons.company.parent.lookup, persons.company.parent.flow) == ("parentcustomerid", "accounts")


def test_retire_names_only_writable_non_key_fields():
    base = (MAPPINGS / "contacts_persons.yaml").read_text(encoding="utf-8")
    with pytest.raises(Exception) as info:
        parse_mapping(base.replace('  IsInactive: "Yes"', '  IsInactiv: "Yes"'), "x.yaml")
    assert "retire.IsInactiv: 'IsInactiv' is not a field of F&O entity set CDSContactPersonsV2; did you mean " \
           "'IsInactive'?" in str(info.value)
    with pytest.raises(Exception) as info:
        parse_mapping(base.replace('  IsInactive: "Yes"', '  AssociatedContactNumber: "X"'), "x.yaml")
    assert "'AssociatedContactNumber' is a key field" in str(info.value)


def test_one_handler_takes_the_contact_table_with_both_templates(specs):
    registry = build_registry(specs)
    handlers = {h.table: h for h in registry.handlers}  # type: ignore[attr-defined]
    handler = handlers["contact"]
    assert isinstance(handler, ContactSync)
    assert [s.flow for s in handler.specs] == ["contacts_customers", "contacts_persons"]
    assert handlers["account"].flow == "accounts"


def test_registration_merges_both_templates_into_one_step_per_message(specs):
    desired = desired_registration(specs, url="https://example.invalid/api/webhook")
    contact_steps = [s for s in desired.steps if s.table == "contact"]
    assert sorted(s.message for s in contact_steps) == ["Create", "Delete", "Update"]
    update = next(s for s in contact_steps if s.message == "Update")
    assert update.flows == ["contacts_customers", "contacts_persons"]
    for column in ("msdynce_isactivecustomer", "parentcustomerid", "gendercode", "donotemail", "fullname"):
        assert column in update.image.attributes  # type: ignore[union-attr]
        assert column in update.filteringattributes


def test_the_ledger_target_key_parses_back_to_an_addressable_key():
    key = {"dataAreaId": "usmf", "ContactPersonPartyNumber": "CON-1'A",
           "AssociatedContactType": ODataEnum("SmmContactPersonCdsAssociatedContactType", "Customer"),
           "AssociatedContactNumber": "ACC, 1 "}
    entity_set, parsed = parse_target_key(target_key("fno", "CDSContactPersonsV2", key))
    assert entity_set == "CDSContactPersonsV2"
    assert parsed == {"dataAreaId": "usmf", "ContactPersonPartyNumber": "con-1'a",
                      "AssociatedContactType": "customer", "AssociatedContactNumber": "acc, 1"}
