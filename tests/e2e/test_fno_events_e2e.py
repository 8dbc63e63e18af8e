"""F&O -> the local world: a change in the F&O sandbox (an OData write, a sandbox action) ends as a message on
the local world's `fno-events` queue, which the queue trigger reads with `parse_change_event`. No F&O-sourced
flow takes the test message, and the order's customer is not from Sales (so neither its order nor its invoice is
synced), so the runtime skips those with their reason; the product's data event is applied by the products flow. What is asserted is that each
arrived, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mappings import MappingSpec
from p2csync.devstack import LocalStack, fno_activations
from sandbox import SALES_TOKEN, SandboxServer

PRODUCTS = "CDSReleasedDistinctProducts"
INVOICE_EVENT = "SalesInvoicePostedBusinessEvent"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        local.sandbox.fno.events.retry_wait = 0.01
        yield local


def _spec(flow: str, table: str, entity_set: str, triggers: list[str]) -> MappingSpec:
    return MappingSpec.model_validate({
        "flow": flow, "direction": "fno_to_sales",
        "source": {"system": "fno", "table": table, "entity_set": entity_set, "triggers": triggers,
                   "key": ["dataAreaId"]},
        "target": {"system": "dataverse", "entity_set": "products", "table": "product", "key": ["productnumber"]},
        "fields": [{"target": "productnumber", "source": "dataAreaId"}]})


def test_the_events_activated_are_those_the_fno_sourced_mappings_trigger_on() -> None:
    specs = [_spec("products", "mserp_ecoresreleaseddistinctproductcdsentity", "ProductsOfSomeOtherName",
                   ["Create", "Update"]),
             _spec("invoices", "SalesInvoiceHeadersV2", "SalesInvoiceHeadersV2", [INVOICE_EVENT])]
    assert fno_activations(specs, SandboxServer()) == ({INVOICE_EVENT}, {PRODUCTS})


async def _journal(stack: LocalStack) -> list[tuple[str, str, str | None]]:
    entries = await stack.ledger().journal_entries(limit=10_000)
    return [(e.message_id, e.outcome, e.reason) for e in entries if e.queue == "fno-events"]


async def test_a_change_in_fno_ends_on_the_fno_events_queue(stack: LocalStack) -> None:
    fno = stack.sandbox.fno
    events = fno.events
    await asyncio.to_thread(events.activate_data_event, PRODUCTS)
    await asyncio.to_thread(events.activate_business_event, INVOICE_EVENT)
    fno.create("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "C-1", "CustomerGroupId": "10"})
    async with httpx.AsyncClient(base_url=stack.sandbox.fno_url, trust_env=False,
                                 headers={"Authorization": f"Bearer {SALES_TOKEN}"}) as http:
        created = await http.post("/data/CDSReleasedDistinctProducts",
                                  json={"dataAreaId": "usmf", "ProductNumber": "D0001", "ProductName": "Speaker",
                                        "SalesUnitSymbol": "ea", "SalesPrice": 99})
        assert created.status_code == 201
        fno.create("CDSSalesOrderHeaders", {"dataAreaId": "usmf", "SalesOrderNumber": "SO-1",
                                            "OrderingCustomerAccountNumber": "C-1"})
        fno.create("CDSSalesOrderLines", {"dataAreaId": "usmf", "SalesOrderNumber": "SO-1", "ProductNumber": "D0001",
                                          "LineCreationSequenceNumber": 1, "OrderedSalesQuantity": 1,
                                          "SalesPrice": 10})
        order = {"dataAreaId": "usmf", "SalesOrderNumber": "SO-1"}
        assert (await http.post("/_sandbox/actions/confirm-sales-order", json=order)).status_code == 200
        invoice = (await http.post("/_sandbox/actions/post-sales-invoice", json=order)).json()["InvoiceNumber"]
    assert await stack.wait_settled(30)

    delivered = events.delivered()
    assert {m.kind for m in delivered} == {"test", "data_event", "business_event"}
    sent = {m.kind: m for m in delivered if m.kind != "data_event"}
    sent["data_event"] = next(m for m in delivered if b"mserp_ecoresreleaseddistinctproductcdsentity" in m.body)
    # Final outcomes only, by the id of the message F&O sent: a message that waited (the invoice's business event and
    # its header's data event name one record, so one waits for the other's lease) ends as its copy "<id>~<n>".
    journal = [(m.split("~")[0], outcome, reason) for m, outcome, reason in await _journal(stack)
               if outcome != "deferred"]
    by_id = {message_id: reason for message_id, _, reason in journal}
    outcomes = {message_id: outcome for message_id, outcome, _ in journal}
    assert outcomes.pop(sent["data_event"].message_id) == "applied"  # the products flow took it
    # the rest: the test message, the invoice and the order's events (their customer is not from Sales)
    assert set(outcomes.values()) == {"skipped"}, journal
    assert "endpoint test message" in by_id[sent["test"].message_id]
    assert "created products(productnumber='D0001') from CDSReleasedDistinctProducts(" in by_id[sent["data_event"].message_id]
    assert by_id[sent["business_event"].message_id] == ("skipped: filtered out: the invoice customer 'C-1' has "
                                                        "IsExternallyMaintained 'No': only invoices of customers that "
                                                        "came from Sales are synced (P2C's externally maintained "
                                                        "customer invoices)") and invoice

    # F&O sending the same event again (at-least-once) is dropped by the queue's duplicate detection.
    assert events.endpoint is not None
    await asyncio.to_thread(events.endpoint.sink, sent["business_event"])
    assert await stack.wait_settled(30)
    assert [m for m, _, _ in await _journal(stack)].count(sent["business_event"].message_id) == 1
