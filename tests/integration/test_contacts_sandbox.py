"""The contacts flow against the sandbox over real loopback HTTP: contact persons of an account's customer, person
customers, filtered-out contacts, a parent customer not yet in F&O (deferred, then applied), a contact that
changes category both ways, and a contact person routed to its account's company."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from handlers.base import target_key
from mappings import load_mappings
from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.outcomes import Applied, Deferred, Skipped
from p2csync.registration import register
from p2csync.runtime import InboundMessage, SyncRuntime
from p2csync.settings import ROOT
from sandbox import INTEGRATION_TOKEN, SandboxServer
from tests.integration.runtime_world import (
    CUSTOMERS,
    Capture,
    RecordingActions,
    Runtimes,
    created_account,
    customer,
    sales_change,
)

PERSONS = "CDSContactPersonsV2"


@pytest.fixture
async def registered(sandbox: SandboxServer, capture: Capture) -> SandboxServer:
    """The `register` command with every shipped mapping: accounts, and one step per message for both contact
    templates."""
    async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(INTEGRATION_TOKEN), tag=None) as dv:
        await register(dv, load_mappings(ROOT / "mappings"), url=capture.url, key="function-key",
                       out=lambda line: None)
    capture.take()
    return sandbox


def _id(message: InboundMessage) -> str:
    return str(json.loads(message.body)["PrimaryEntityId"])


def person_contact(number: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"firstname": "Nancy", "lastname": f"Davolio {number}", "msdynce_contactnumber": number,
                             "emailaddress1": "nancy@contoso.example", "jobtitle": "Buyer", "gendercode": 2,
                             "familystatuscode": 1, "donotemail": True, "address1_country": "Holland",
                             "msdynce_isactivecustomer": False, **extra}
    if parent is not None:
        attrs["parentcustomerid"] = ("account", parent)
    return attrs


async def create_contact(sandbox: SandboxServer, capture: Capture, attrs: dict[str, Any]) -> InboundMessage:
    [message] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.create("contact", attrs))
    return message


async def update_contact(sandbox: SandboxServer, capture: Capture, contact_id: str,
                         attrs: dict[str, Any]) -> InboundMessage:
    [message] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update("contact", contact_id, attrs))
    return message


async def handled(runtime: SyncRuntime, message: InboundMessage) -> Any:
    return await runtime.handle(message, message, RecordingActions())


async def synced_account(sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime, number: str) -> str:
    message = await created_account(sandbox, capture, number)
    assert isinstance(await handled(runtime, message), Applied)
    return _id(message)


def contact_person(sandbox: SandboxServer, number: str, account: str, company: str = "usmf") -> dict | None:
    return sandbox.fno.get(PERSONS, {"dataAreaId": company, "ContactPersonPartyNumber": number,
                                     "AssociatedContactType": "Customer", "AssociatedContactNumber": account})


async def test_a_contact_of_an_account_becomes_a_contact_person_of_its_customer_and_follows_updates(
    registered: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-C01")
    created = await create_contact(sandbox, capture, person_contact("CON-C01", account_id))
    outcome = await handled(runtime, created)
    assert isinstance(outcome, Applied), outcome
    assert outcome.detail.startswith("created CDSContactPersonsV2(") and "as contacts_persons" in outcome.detail
    row = contact_person(sandbox, "CON-C01", "ACC-C01")
    assert row is not None
    assert (row["FirstName"], row["Gender"], row["MaritalStatus"], row["IsReceivingDirectMail"]) == (
        "Nancy", "Female", "Single", "No")
    assert (row["IsContactPersonExternallyMaintained"], row["IsInactive"], row["ContactPersonPartyType"]) == (
        "Yes", "No", "Person")
    assert row["PrimaryAddressCountryRegionISOCode"] == "NL"

    update = await update_contact(sandbox, capture, _id(created), {"jobtitle": "Head of purchasing"})
    outcome = await handled(runtime, update)
    assert isinstance(outcome, Applied) and outcome.detail.startswith("updated"), outcome
    assert contact_person(sandbox, "CON-C01", "ACC-C01")["EmploymentProfession"] == "Head of purchasing"  # type: ignore[index]
    assert len(sandbox.fno.rows(PERSONS)) == 1


async def test_an_active_customer_becomes_a_person_customer(
    registered: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    sandbox = registered
    created = await create_contact(sandbox, capture, person_contact("CON-P01", msdynce_isactivecustomer=True,
                                                                    creditlimit=2500))
    outcome = await handled(runtime, created)
    assert isinstance(outcome, Applied), outcome
    row = customer(sandbox, "CON-P01")
    assert row is not None
    assert (row["PartyType"], row["PartyNumber"], row["IsExternallyMaintained"]) == ("Person", "CON-P01", "Yes")
    assert (row["PersonFirstName"], row["PersonLastName"], row["CreditLimit"]) == ("Nancy", "Davolio CON-P01", 2500)
    assert sandbox.fno.rows(PERSONS) == []


@pytest.mark.parametrize("parent", ["contact", None])
async def test_a_contact_neither_template_takes_is_skipped_with_the_reason(
    registered: SandboxServer, capture: Capture, runtime: SyncRuntime, parent: str | None
) -> None:
    sandbox = registered
    attrs = person_contact("CON-F01")
    if parent == "contact":
        boss = await create_contact(sandbox, capture, person_contact("CON-F00", msdynce_isactivecustomer=True))
        attrs["parentcustomerid"] = ("contact", _id(boss))
    created = await create_contact(sandbox, capture, attrs)
    outcome = await handled(runtime, created)
    assert isinstance(outcome, Skipped), outcome
    expected = "points to a contact, expected account" if parent else "parentcustomerid is empty"
    assert outcome.reason.startswith("filtered out: not contacts_customers (msdynce_isactivecustomer is False")
    assert expected in outcome.reason
    assert sandbox.fno.rows(PERSONS) == [] and customer(sandbox, "CON-F01") is None


async def test_a_contact_whose_account_was_never_synced_pulls_it_through_in_one_delivery(
    registered: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    sandbox = registered
    account = await created_account(sandbox, capture, "ACC-D01")  # in Sales; its event is never delivered
    created = await create_contact(sandbox, capture, person_contact("CON-D01", _id(account)))
    sandbox.fno.request_log.clear()
    outcome = await handled(runtime, created)
    assert isinstance(outcome, Applied), outcome
    assert contact_person(sandbox, "CON-D01", "ACC-D01") is not None
    writes = [r.path.rsplit("/", 1)[-1] for r in sandbox.fno.request_log.entries() if r.method == "POST"]
    assert writes == ["CustomersV3", "CDSContactPersonsV2"]  # the account's customer first
    assert await runtime.ledger.message_outcome(  # type: ignore[attr-defined]
        f"accounts:account:{_id(account)}", f"pull:{_event(created).dedupe_key}") is not None

    sandbox.fno.request_log.clear()
    late = await handled(runtime, account)  # the account's own event: already applied, nothing written again
    assert isinstance(late, Skipped) and late.reason.startswith("unchanged"), late
    assert [r for r in sandbox.fno.request_log.entries() if r.method != "GET"] == []


async def test_a_contact_whose_account_is_busy_or_has_no_number_is_deferred_naming_it(
    registered: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    """The pull-through falls back to waiting: the account's lease is held by another worker (its own event is
    being synced), or the account has no number yet (no counterpart to pull)."""
    sandbox = registered
    account = await created_account(sandbox, capture, "ACC-D02")
    record_key = f"accounts:account:{_id(account)}"
    await runtime.ledger.acquire(record_key, "another-worker", timedelta(seconds=60))
    created = await create_contact(sandbox, capture, person_contact("CON-D02", _id(account)))
    outcome = await handled(runtime, created)
    assert isinstance(outcome, Deferred), outcome
    assert f"waiting for account {_id(account)}" in outcome.reason
    assert "CustomersV3(dataAreaId=usmf,CustomerAccount=ACC-D02) does not exist in F&O yet" in outcome.reason
    assert f"it could not be pulled through ({record_key} is being synced by another worker)" in outcome.reason
    assert sandbox.fno.rows(PERSONS) == [] and customer(sandbox, "ACC-D02") is None

    await runtime.ledger.release(record_key, "another-worker")
    assert isinstance(await handled(runtime, account), Applied)  # the accounts flow creates the customer
    outcome = await handled(runtime, created)  # the deferred copy comes back
    assert isinstance(outcome, Applied), outcome

    numberless = await created_account(sandbox, capture, "ACC-D03", accountnumber=None)
    created = await create_contact(sandbox, capture, person_contact("CON-D03", _id(numberless)))
    outcome = await handled(runtime, created)
    assert isinstance(outcome, Deferred), outcome
    assert f"waiting for account {_id(numberless)}" in outcome.reason and "no accountnumber yet" in outcome.reason


def _event(message: InboundMessage) -> Any:
    from p2csync.envelopes import parse_change_event

    return parse_change_event(message.body, message.application_properties, content_type=message.content_type)


async def test_a_contact_person_that_becomes_an_active_customer_and_back(
    registered: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-X01")
    created = await create_contact(sandbox, capture, person_contact("CON-X01", account_id))
    assert isinstance(await handled(runtime, created), Applied)
    record_key = f"contacts:contact:{_id(created)}"
    old_target = target_key("fno", PERSONS, {"dataAreaId": "usmf", "ContactPersonPartyNumber": "CON-X01",
                                              "AssociatedContactType": "Customer",
                                              "AssociatedContactNumber": "ACC-X01"})
    new_target = target_key("fno", CUSTOMERS, {"dataAreaId": "usmf", "CustomerAccount": "CON-X01"})
    assert await runtime.ledger.claim_owner(old_target) == record_key  # type: ignore[attr-defined]

    # Person -> customer: the customer is created, the contact person it leaves is marked inactive.
    became = await update_contact(sandbox, capture, _id(created), {"msdynce_isactivecustomer": True})
    outcome = await handled(runtime, became)
    assert isinstance(outcome, Applied), outcome
    assert outcome.detail.startswith("created CustomersV3(dataAreaId=usmf,CustomerAccount=CON-X01)")
    assert "written earlier, retired (IsInactive=Yes)" in outcome.detail
    assert customer(sandbox, "CON-X01")["PartyType"] == "Person"  # type: ignore[index]
    assert contact_person(sandbox, "CON-X01", "ACC-X01")["IsInactive"] == "Yes"  # type: ignore[index]
    # One ledger record, its claim moved from the contact person to the customer.
    assert await runtime.ledger.claim_owner(new_target) == record_key  # type: ignore[attr-defined]
    assert await runtime.ledger.claim_owner(old_target) is None  # type: ignore[attr-defined]

    # Customer -> person: the contact person is active again, the customer is left as it is (and says so).
    back = await update_contact(sandbox, capture, _id(created), {"msdynce_isactivecustomer": False})
    outcome = await handled(runtime, back)
    assert isinstance(outcome, Applied), outcome
    assert outcome.detail.startswith("updated CDSContactPersonsV2(")
    assert "CustomersV3(dataAreaId='usmf',CustomerAccount='con-x01'), written earlier, is left as it is " \
           "(contacts_customers has no 'retire' in its mapping)" in outcome.detail
    assert contact_person(sandbox, "CON-X01", "ACC-X01")["IsInactive"] == "No"  # type: ignore[index]
    assert customer(sandbox, "CON-X01") is not None
    assert await runtime.ledger.claim_owner(old_target) == record_key  # type: ignore[attr-defined]


async def test_a_contact_moved_to_another_account_retires_its_old_contact_person(
    registered: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    sandbox = registered
    first = await synced_account(sandbox, capture, runtime, "ACC-M01")
    second = await synced_account(sandbox, capture, runtime, "ACC-M02")
    created = await create_contact(sandbox, capture, person_contact("CON-M01", first))
    assert isinstance(await handled(runtime, created), Applied)
    moved = await update_contact(sandbox, capture, _id(created), {"parentcustomerid": ("account", second)})
    outcome = await handled(runtime, moved)
    assert isinstance(outcome, Applied), outcome
    assert contact_person(sandbox, "CON-M01", "ACC-M02")["IsInactive"] == "No"  # type: ignore[index]
    assert contact_person(sandbox, "CON-M01", "ACC-M01")["IsInactive"] == "Yes"  # type: ignore[index]


@pytest.fixture
def accounts_in_usrt(tmp_path: Path) -> Path:
    """The shipped mappings with the sandbox's business unit routed to usrt by the accounts mapping only."""
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings, ignore=shutil.ignore_patterns("*.py", "__pycache__", "catalog"))
    text = (mappings / "accounts.yaml").read_text(encoding="utf-8")
    assert "  business_units: {}\n" in text
    (mappings / "accounts.yaml").write_text(
        text.replace("  business_units: {}\n", '  business_units:\n    "P2CSyncSandbox": usrt\n'), encoding="utf-8")
    return mappings


async def test_a_contact_person_lands_in_its_accounts_company(
    registered: SandboxServer, capture: Capture, runtimes: Runtimes, accounts_in_usrt: Path
) -> None:
    sandbox = registered
    runtime = runtimes.build(P2C_MAPPINGS_DIR=str(accounts_in_usrt))
    account_id = await synced_account(sandbox, capture, runtime, "ACC-R01")
    assert [r["dataAreaId"] for r in sandbox.fno.rows(CUSTOMERS)] == ["usrt"]
    # The contact's own business unit would route it to usmf (contacts_* list no business units): the contact
    # person follows its account to usrt instead.
    created = await create_contact(sandbox, capture, person_contact("CON-R01", account_id))
    outcome = await handled(runtime, created)
    assert isinstance(outcome, Applied), outcome
    assert [(r["dataAreaId"], r["AssociatedContactNumber"]) for r in sandbox.fno.rows(PERSONS)] == [
        ("usrt", "ACC-R01")]
    # A person customer routes by its own business unit (here: the default company).
    active = await create_contact(sandbox, capture, person_contact("CON-R02", msdynce_isactivecustomer=True))
    assert isinstance(await handled(runtime, active), Applied)
    assert customer(sandbox, "CON-R02") is not None  # usmf
