"""End to end through the local host: Sales contacts -> webhook POST -> queue -> contacts flow -> F&O, over real
loopback HTTP with the real SQLite queue and ledger: a contact of an account becomes a contact person of its
customer, an active customer becomes a person customer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2csync.devstack import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        yield local


async def _journal(stack: LocalStack, record_id: str) -> list[str]:
    entries = await stack.ledger().journal_entries(limit=10_000)
    return [e.outcome for e in entries if e.message_key.startswith(f"contact:{record_id}:")]


async def test_a_contact_person_and_a_person_customer_through_the_local_host(stack: LocalStack) -> None:
    dataverse = stack.sandbox.dataverse
    account_id = await asyncio.to_thread(dataverse.create, "account", {"name": "Contoso", "accountnumber": "E2E-A01",
                                                                     "address1_country": "USA"})
    assert await stack.wait_settled(20)  # the customer exists before its contacts arrive (as P2C required)

    person_id = await asyncio.to_thread(dataverse.create, "contact", {
        "firstname": "Nancy", "lastname": "Davolio", "msdynce_contactnumber": "E2E-C01", "jobtitle": "Buyer",
        "parentcustomerid": ("account", account_id), "msdynce_isactivecustomer": False, "donotemail": False})
    customer_id = await asyncio.to_thread(dataverse.create, "contact", {
        "firstname": "Janet", "lastname": "Leverling", "msdynce_contactnumber": "E2E-C02",
        "msdynce_isactivecustomer": True, "address1_country": "Deutschland"})
    assert await stack.wait_settled(20)

    fno = stack.sandbox.fno
    person = fno.get("CDSContactPersonsV2", {"dataAreaId": "usmf", "ContactPersonPartyNumber": "E2E-C01",
                                             "AssociatedContactType": "Customer", "AssociatedContactNumber": "E2E-A01"})
    assert person is not None
    assert (person["LastName"], person["EmploymentProfession"], person["IsReceivingDirectMail"]) == (
        "Davolio", "Buyer", "Yes")
    assert person["IsContactPersonExternallyMaintained"] == "Yes"
    customer = fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "E2E-C02"})
    assert customer is not None
    assert (customer["PartyType"], customer["PersonLastName"], customer["AddressCountryRegionISOCode"]) == (
        "Person", "Leverling", "DE")
    assert await _journal(stack, person_id) == ["applied"]
    assert await _journal(stack, customer_id) == ["applied"]

    # The contact person becomes an active customer: one more event, a person customer, the old one inactive.
    await asyncio.to_thread(dataverse.update, "contact", person_id, {"msdynce_isactivecustomer": True})
    assert await stack.wait_settled(20)
    assert fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "E2E-C01"}) is not None
    person = fno.get("CDSContactPersonsV2", {"dataAreaId": "usmf", "ContactPersonPartyNumber": "E2E-C01",
                                             "AssociatedContactType": "Customer", "AssociatedContactNumber": "E2E-A01"})
    assert person is not None and person["IsInactive"] == "Yes"
    assert await _journal(stack, person_id) == ["applied", "applied"]
