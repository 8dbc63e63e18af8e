"""End to end through the local host: Sales quotes -> webhook POSTs -> queue -> quotes flow -> F&O, over real
loopback HTTP: a quote saved with its lines and activated becomes a quotation with its lines; a revision with a
changed header, a line added, changed and removed follows; and a host killed (SIGKILL) in the middle of a
quote's sync leaves F&O with no quotation or the whole one, never half, and the restarted host converges to the
Sales document."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mappings import load_mappings
from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.devstack import LocalStack
from p2csync.queue.embedded import EmbeddedQueue
from p2csync.registration import register
from p2csync.settings import ROOT
from sandbox.dataverse import Dataverse
from sandbox.fno import FnO
from sandbox.server import SandboxServer
from tests.e2e.test_crash_recovery import KEY, HostProcess, _free_port

pytestmark = pytest.mark.e2e

HEADERS, LINES = "CDSSalesQuotationHeaders", "CDSSalesQuotationLines"


def catalogue(dataverse: Dataverse, fno: FnO, count: int) -> tuple[str, list[str]]:
    """A Sales unit and ``count`` products that came from F&O (externally maintained, released in usmf)."""
    uom = dataverse.create("uom", {"name": "Primary Unit", "quantity": 1})
    products = []
    for n in range(1, count + 1):
        number = f"E2E-P{n:02d}"
        products.append(dataverse.create("product", {"name": number, "productnumber": number,
                                                     "msdynce_ismaintainedexternally": True}))
        fno.create("CDSReleasedDistinctProducts", {"dataAreaId": "usmf", "ProductNumber": number})
    return uom, products


def save_quote(dataverse: Dataverse, number: str, account_id: str, uom: str, products: list[str]) -> str:
    """A quote saved with one line per product (quantity n for line n), then activated."""
    quote_id = dataverse.create("quote", {"name": f"Quote {number}", "quotenumber": number,
                                          "customerid": ("account", account_id), "shipto_country": "USA"})
    for n, product in enumerate(products, 1):
        dataverse.create("quotedetail", {"quoteid": ("quote", quote_id), "productid": ("product", product),
                                         "uomid": ("uom", uom), "quantity": n, "priceperunit": 10})
    dataverse.update("quote", quote_id, {"statecode": 1})
    return quote_id


def sales_lines(dataverse: Dataverse, quote_id: str) -> dict[int, tuple[str, Decimal]]:
    numbers = {r["productid"]: r["productnumber"] for r in dataverse.rows("product")}
    return {r["sequencenumber"]: (numbers[r["_productid_value"]], Decimal(str(r["quantity"])))
            for r in dataverse.rows("quotedetail") if r["_quoteid_value"] == quote_id}


def fno_lines(fno: FnO, number: str) -> dict[int, tuple[str, Decimal]]:
    return {r["LineCreationSequenceNumber"]: (r["ProductNumber"], Decimal(str(r["RequestedSalesQuantity"])))
            for r in fno.rows(LINES, "usmf") if r["SalesQuotationNumber"] == number}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        yield local


async def test_a_quote_and_its_revision_through_the_local_host(stack: LocalStack) -> None:
    dataverse, fno = stack.sandbox.dataverse, stack.sandbox.fno
    account_id = await asyncio.to_thread(dataverse.create, "account", {"name": "Fabrikam", "accountnumber": "E2E-Q01"})
    assert await stack.wait_settled(20)  # the customer exists before its quotes (as P2C requires)
    uom, products = await asyncio.to_thread(catalogue, dataverse, fno, 3)

    quote_id = await asyncio.to_thread(save_quote, dataverse, "E2E-QUO-1", account_id, uom, products)
    assert await stack.wait_settled(30)
    header = fno.get(HEADERS, {"dataAreaId": "usmf", "SalesQuotationNumber": "E2E-QUO-1"})
    assert header is not None and header["RequestingCustomerAccountNumber"] == "E2E-Q01"
    assert fno_lines(fno, "E2E-QUO-1") == sales_lines(dataverse, quote_id)

    def revise() -> str:
        revision = dataverse.revise_quote(quote_id)
        lines = {r["sequencenumber"]: r["quotedetailid"] for r in dataverse.rows("quotedetail")
                 if r["_quoteid_value"] == revision}
        dataverse.update("quote", revision, {"name": "Quote E2E-QUO-1, revised"})
        dataverse.update("quotedetail", lines[1], {"quantity": 9})
        dataverse.delete("quotedetail", lines[2])
        dataverse.create("quotedetail", {"quoteid": ("quote", revision), "productid": ("product", products[0]),
                                         "uomid": ("uom", uom), "quantity": 4, "priceperunit": 10})
        dataverse.update("quote", revision, {"statecode": 1})
        return revision

    revision = await asyncio.to_thread(revise)
    assert await stack.wait_settled(30)
    assert fno_lines(fno, "E2E-QUO-1") == sales_lines(dataverse, revision)
    assert sorted(fno_lines(fno, "E2E-QUO-1")) == [1, 3, 4]
    header = fno.get(HEADERS, {"dataAreaId": "usmf", "SalesQuotationNumber": "E2E-QUO-1"})
    assert header is not None and header["SalesQuotationName"] == "Quote E2E-QUO-1, revised"
    dead = stack.queue.peek_dead_letters("sales-events")
    assert dead == [], [(m.dead_letter_reason, m.dead_letter_description) for m in dead]


# ------------------------------------------------------------------------------------------------ the kill



async def test_a_host_killed_mid_quote_leaves_no_half_quotation_and_converges(
        sandbox: SandboxServer, tmp_path: Path) -> None:
    dataverse, fno = sandbox.dataverse, sandbox.fno
    await killed_mid_document(
        sandbox, tmp_path, "CRQ",
        save=lambda account_id, uom, products: save_quote(dataverse, "CRQ-QUO-1", account_id, uom, products),
        in_sales=lambda quote_id: sales_lines(dataverse, quote_id),
        in_fno=lambda: (fno.get(HEADERS, {"dataAreaId": "usmf", "SalesQuotationNumber": "CRQ-QUO-1"}),
                        fno_lines(fno, "CRQ-QUO-1")))
    assert len(fno.rows(HEADERS, "usmf")) == 1


async def killed_mid_document(sandbox: SandboxServer, tmp_path: Path, prefix: str, *,
                              save: Callable[[str, str, list[str]], str],
                              in_sales: Callable[[str], dict[int, Any]],
                              in_fno: Callable[[], tuple[dict[str, Any] | None, dict[int, Any]]]) -> None:
    """A host process killed (SIGKILL) while it syncs a 20-line document: F&O then holds nothing or the whole
    document, and a restarted host converges to the Sales document. ``save`` creates the document in Sales from
    (account id, unit, products) and returns its id; ``in_fno`` returns F&O's header and lines of it."""
    dataverse, fno = sandbox.dataverse, sandbox.fno
    env = {**os.environ, "DATAVERSE_URL": sandbox.dataverse_url, "FNO_URL": sandbox.fno_url,
           "P2C_AUTH_MODE": "static", "P2C_STATIC_TOKEN": dataverse.integration_user.token,
           "INTEGRATION_USER_IDS": dataverse.integration_user.id,
           "P2C_LEDGER_PATH": str(tmp_path / "ledger.sqlite"), "P2C_LOCAL_QUEUE_PATH": str(tmp_path / "queue.sqlite"),
           "P2C_LOCAL_LOCK_SECONDS": "2", "P2C_LEASE_SECONDS": "3"}
    port = _free_port()
    host = HostProcess(env, port, tmp_path / "host.log")
    async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(dataverse.integration_user.token),
                               tag=None) as dv:
        await register(dv, load_mappings(ROOT / "mappings"), key=KEY, out=lambda line: None,
                       url=f"http://127.0.0.1:{port}/api/dataverse/webhook")
    try:
        host.start()
        account_id = dataverse.create("account", {"name": f"Crash {prefix}", "accountnumber": f"{prefix}-001"})
        await _until(lambda: fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": f"{prefix}-001"}), 20)
        uom, products = catalogue(dataverse, fno, 20)
        # Slow F&O batches: the sync's read batch answers after 2 s, and the host is killed as soon as it has;
        # the change set is then unsent or in flight.
        fno.faults.latency(2.0, path_contains="$batch")
        fno.request_log.clear()
        document_id = save(account_id, uom, products)
        await _until(lambda: any("$batch" in r.path for r in fno.request_log.entries()), 30)
        host.kill()
        await asyncio.sleep(2.5)  # a change set already in flight lands (or not) as a whole
        header, written = in_fno()
        assert (header is None and written == {}) or (header is not None and len(written) == 20), written
        print(f"after the kill: {'nothing' if header is None else 'the whole document'} in F&O")

        fno.faults.clear()
        host.start()
        expected = in_sales(document_id)
        await _until(lambda: in_fno()[1] == expected or None, 45)
        queue = EmbeddedQueue(tmp_path / "queue.sqlite")
        await _until(lambda: (lambda c: c.active == c.scheduled == c.locked == 0 or None)(
            queue.counts("sales-events")), 45)
        assert queue.peek_dead_letters("sales-events") == []
    finally:
        host.stop()
    assert in_fno()[1] == in_sales(document_id)


async def _until(probe: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := await asyncio.to_thread(probe):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {seconds} s")
