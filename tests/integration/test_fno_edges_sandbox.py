"""FnOClient against the sandbox over loopback HTTP at the edges F&O is strict about (issue 7, points 1, 4).

Point 1: key values with reserved characters (the sandbox routes them the way F&O does: the path is decoded
once before routing, so a once-encoded ``/``, ``\\`` or ``+`` in a key is a routing miss). Every account is
created, then updated, then read and deleted by key, composite keys too; control characters are refused
before any request. Point 4: the sandbox's write-error status is 500 or 400 and the create race, the re-sent
POST after a lost answer and update conflicts behave the same under both.
"""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal

import httpx
import pytest

from p2csync.connectors import (
    AlreadyExistsError,
    FnOClient,
    HttpOptions,
    InvalidKeyError,
    PermanentError,
    RetryPolicy,
    StaticTokenProvider,
    TransientError,
)
from sandbox import INTEGRATION_TOKEN, FnoChange, SandboxServer
from tests.integration import test_connectors_sandbox as base
from tests.integration.test_connectors_sandbox import (
    CUSTOMERS,
    ChangeRecorder,
    RaceTransport,
    Sleeps,
    _customer,
    _key,
    _log,
    assert_log,
)

# The loopback sandbox fixtures of the connector tests (one sandbox for this module, reset per test).
_server = base._server
sandbox = base.sandbox
changes = base.changes
receiver = base.receiver
sleeps = base.sleeps
fno = base.fno

ACCOUNTS = ["US/001", "A\\B", "A+B", "50% off", "O'Neil & Co", "Ünïcode", "X%2FY", "a#b?c&d=e", "T:1*<2>"]
PLUS_MODES = ["route", "space"]


@pytest.fixture(params=PLUS_MODES)
def plus_mode(request: pytest.FixtureRequest, sandbox: SandboxServer) -> str:
    """Both readings of the published "+ fails in a key" reports (``FnoSettings.plus_in_key``)."""
    sandbox.fno.configure(plus_in_key=request.param)
    return str(request.param)


@pytest.fixture(params=[500, 400])
def write_status(request: pytest.FixtureRequest, sandbox: SandboxServer) -> int:
    """Both write-error statuses seen in public F&O captures (``FnoSettings.write_error_status``)."""
    sandbox.fno.configure(write_error_status=request.param)
    return int(request.param)


# ------------------------------------------------------------------------------------------ point 1: keys


@pytest.mark.parametrize("account", ACCOUNTS)
async def test_a_customer_with_reserved_characters_is_created_updated_read_and_deleted_by_its_key(
    sandbox: SandboxServer, fno: FnOClient, changes: ChangeRecorder, plus_mode: str, account: str
) -> None:
    key = _key(account)
    created = await fno.upsert(CUSTOMERS, key, _customer("X"))
    assert created.created
    assert_log(sandbox, [("GET", 404), ("POST", 201)])

    sandbox.fno.request_log.clear()
    updated = await fno.upsert(CUSTOMERS, key, _customer("X", OrganizationName="Renamed"))
    assert (updated.created, updated.changed) == (False, True)
    assert_log(sandbox, [("GET", 200), ("PATCH", 204)])  # one read, one write: no detour

    row = await fno.get(CUSTOMERS, key, select=["CustomerAccount", "OrganizationName"])
    assert row is not None and row["CustomerAccount"] == account and row["OrganizationName"] == "Renamed"
    assert [r["CustomerAccount"] for r in sandbox.fno.rows(CUSTOMERS)] == [account]
    assert [(c.operation, c.row["CustomerAccount"]) for c in changes.changes] == [("Create", account),
                                                                                  ("Update", account)]
    assert await fno.delete(CUSTOMERS, key) is True
    assert sandbox.fno.rows(CUSTOMERS) == []


async def test_composite_keys_with_reserved_characters_address_the_right_line(
    sandbox: SandboxServer, fno: FnOClient
) -> None:
    lines = "CDSSalesOrderLines"
    order = "SO/2024+1 50%"
    sandbox.fno.create("CDSSalesOrderHeaders", {"dataAreaId": "usmf", "SalesOrderNumber": order})  # lines need it
    for number in (1, 2):
        sandbox.fno.create("CDSReleasedDistinctProducts", {"dataAreaId": "usmf", "ProductNumber": f"P-{number}"})
        created = await fno.upsert(lines, {"dataAreaId": "usmf", "SalesOrderNumber": order,
                                           "LineCreationSequenceNumber": number},
                                   {"ProductNumber": f"P-{number}", "OrderedSalesQuantity": Decimal(number)})
        assert created.created
    sandbox.fno.request_log.clear()
    second = {"dataAreaId": "usmf", "SalesOrderNumber": order, "LineCreationSequenceNumber": 2}
    result = await fno.upsert(lines, second, {"ProductNumber": "P-2", "OrderedSalesQuantity": Decimal(7)})
    assert (result.created, result.changed) == (False, True)
    assert_log(sandbox, [("GET", 200), ("PATCH", 204)])
    quantities = {r["LineCreationSequenceNumber"]: r["OrderedSalesQuantity"] for r in sandbox.fno.rows(lines)}
    assert quantities == {1: 1, 2: 7}
    assert {r["SalesOrderNumber"] for r in sandbox.fno.rows(lines)} == {order}


@pytest.mark.parametrize("bad", ["US\n001", "US\x00001", "US\t001", "US\x7f001"])
async def test_a_key_with_a_control_character_is_refused_before_any_request_and_nothing_is_written(
    sandbox: SandboxServer, fno: FnOClient, bad: str
) -> None:
    with pytest.raises(InvalidKeyError) as caught:
        await fno.upsert(CUSTOMERS, _key(bad), _customer("X"))
    assert "'CustomerAccount'" in str(caught.value)
    assert _log(sandbox) == [] and sandbox.fno.rows(CUSTOMERS) == []


# ------------------------------------------------------------------------------- point 4: 400 as well as 500


async def test_customer_created_between_our_get_and_post_ends_as_an_update_under_either_status(
    sandbox: SandboxServer, changes: ChangeRecorder, write_status: int
) -> None:
    def someone_else_creates() -> None:
        sandbox.fno.create(CUSTOMERS, {"CustomerAccount": "C/RACE", "OrganizationName": "Theirs",
                                       "CustomerGroupId": "10"}, user="sam.seller")

    options = HttpOptions(transport=RaceTransport(someone_else_creates))
    async with FnOClient(sandbox.fno_url, StaticTokenProvider(INTEGRATION_TOKEN), http=options) as client:
        result = await client.upsert(CUSTOMERS, _key("C/RACE"), _customer("C/RACE"))
    assert (result.created, result.changed) == (False, True)
    assert_log(sandbox, [("GET", 404), ("POST", write_status), ("GET", 200), ("PATCH", 204)])
    rows = sandbox.fno.rows(CUSTOMERS)
    assert len(rows) == 1 and rows[0]["OrganizationName"] == "Customer C/RACE"
    assert [c.operation for c in changes.changes] == ["Create", "Update"]


async def test_post_committed_but_answer_lost_ends_in_the_already_exists_path_under_either_status(
    sandbox: SandboxServer, changes: ChangeRecorder, write_status: int
) -> None:
    blocked = threading.Event()

    def stall_first_create(change: FnoChange) -> None:
        if change.operation == "Create" and not blocked.is_set():
            blocked.set()
            time.sleep(0.5)  # on the server loop: the 201 leaves after the client gave up

    changes.hook = stall_first_create

    async def sleep(delay: float) -> None:
        await asyncio.sleep(0.4)

    options = HttpOptions(retry=RetryPolicy(jitter="none"), sleep=sleep, timeout=httpx.Timeout(0.25))
    async with FnOClient(sandbox.fno_url, StaticTokenProvider(INTEGRATION_TOKEN), http=options) as client:
        result = await client.upsert(CUSTOMERS, _key("C-LOST"), _customer("C-LOST"))
    assert (result.created, result.changed) == (False, False)
    statuses = [(e.method, e.status) for e in sandbox.fno.request_log.entries()]
    assert ("POST", write_status) in statuses and statuses[-1] == ("GET", 200)
    assert [c.operation for c in changes.changes] == ["Create"] and len(sandbox.fno.rows(CUSTOMERS)) == 1


async def test_an_update_conflict_is_transient_under_either_status_and_the_retry_applies_it(
    sandbox: SandboxServer, fno: FnOClient, write_status: int
) -> None:
    await fno.upsert(CUSTOMERS, _key("C-CONFLICT"), _customer("C-CONFLICT"))
    sandbox.fno.configure(update_conflicts=1)
    sandbox.fno.request_log.clear()
    with pytest.raises(TransientError) as caught:
        await fno.upsert(CUSTOMERS, _key("C-CONFLICT"), _customer("C-CONFLICT", OrganizationName="New"))
    assert caught.value.status == write_status and "update conflict" in str(caught.value)
    result = await fno.upsert(CUSTOMERS, _key("C-CONFLICT"), _customer("C-CONFLICT", OrganizationName="New"))
    assert result.changed
    assert_log(sandbox, [("GET", 200), ("PATCH", write_status), ("GET", 200), ("PATCH", 204)])
    assert sandbox.fno.rows(CUSTOMERS)[0]["OrganizationName"] == "New"


async def test_validation_infolog_and_bad_property_stay_permanent_under_either_status(
    sandbox: SandboxServer, fno: FnOClient, sleeps: Sleeps, write_status: int
) -> None:
    with pytest.raises(PermanentError) as invalid:
        await fno.upsert(CUSTOMERS, _key("C-BAD"), _customer("C-BAD", CustomerGroupId="Local"))
    assert not isinstance(invalid.value, (AlreadyExistsError, TransientError))
    assert invalid.value.status == write_status and "Customer group" in str(invalid.value)
    with pytest.raises(PermanentError) as unknown:
        await fno.upsert(CUSTOMERS, _key("C-BAD"), _customer("C-BAD", FavouriteColour="red"))
    assert unknown.value.status == 400 and "FavouriteColour" in str(unknown.value)
    assert not isinstance(unknown.value, (AlreadyExistsError, TransientError))
    assert sleeps.delays == [] and sandbox.fno.rows(CUSTOMERS) == []


async def test_a_validation_infolog_that_says_try_again_stays_permanent_under_either_status(
    sandbox: SandboxServer, fno: FnOClient, sleeps: Sleeps, write_status: int
) -> None:
    """Review of point 4: loose words ("try again", "timeout", "another user") in a validation text used to
    mark it transient, so it was retried until the deferrals ran out."""
    def reject(entity: object, row: dict, operation: str, _fno: object) -> list[str]:
        return ["The payment terms 'Net 90' are blocked for another user group. Please correct the value and "
                "try again."]

    sandbox.fno.add_validator(CUSTOMERS, reject)
    with pytest.raises(PermanentError) as caught:
        await fno.upsert(CUSTOMERS, _key("C-AGAIN"), _customer("C-AGAIN"))
    assert not isinstance(caught.value, TransientError) and not caught.value.retryable
    assert caught.value.status == write_status and "try again" in str(caught.value)
    assert sleeps.delays == [] and sandbox.fno.rows(CUSTOMERS) == []


# ------------------------------------------------------------------------ point 6: date-time keys in F&O


INVOICES = "SalesInvoiceHeadersV2"
INVOICE_MAPPING = """\
flow: invoices
direction: sales_to_fno
source: {system: dataverse, table: invoice, entity_set: invoices}
target: {system: fno, entity_set: SalesInvoiceHeadersV2, key: [dataAreaId, InvoiceNumber, InvoiceDate, LedgerVoucher]}
company: {default: usmf}
fields:
  - {target: InvoiceNumber, source: invoicenumber}
  - {target: InvoiceDate, source: datedelivered, transform: date}
  - {target: LedgerVoucher, source: voucher}
  - {target: TotalInvoiceAmount, source: totalamount}
"""


async def test_a_mapped_record_with_a_date_key_is_created_then_found_and_updated_by_its_key(
    sandbox: SandboxServer, fno: FnOClient
) -> None:
    from mappings import parse_mapping

    spec = parse_mapping(INVOICE_MAPPING, "invoices.yaml")
    record = {"invoicenumber": "INV/1", "datedelivered": "2026-01-31", "voucher": "V-1", "totalamount": 100}
    for amount, (created, changed) in ((100, (True, True)), (250, (False, True)), (250, (False, False))):
        mapped = spec.apply({**record, "totalamount": amount})
        result = await fno.upsert(INVOICES, mapped.key, mapped.payload)
        assert (result.created, result.changed) == (created, changed)
    rows = sandbox.fno.rows(INVOICES)
    assert len(rows) == 1 and rows[0]["TotalInvoiceAmount"] == 250
    assert rows[0]["InvoiceDate"] == "2026-01-31T00:00:00Z"
    assert [method for method, _ in _log(sandbox)].count("POST") == 1


async def test_a_python_date_in_a_key_addresses_the_row_as_midnight_utc(sandbox: SandboxServer,
                                                                        fno: FnOClient) -> None:
    from datetime import date

    key = {"dataAreaId": "usmf", "InvoiceNumber": "INV-2", "InvoiceDate": date(2026, 1, 31), "LedgerVoucher": "V-2"}
    assert (await fno.upsert(INVOICES, key, {"TotalInvoiceAmount": 1})).created
    assert await fno.get(INVOICES, key) is not None
    updated = await fno.upsert(INVOICES, key, {"TotalInvoiceAmount": 2})
    assert (updated.created, updated.changed) == (False, True)
    assert await fno.delete(INVOICES, key)
