"""The orders flow (a document: order + order products) against the sandbox over real loopback HTTP.

Every Sales change goes through the registered webhook, the ingress and the runtime. Covered: an order saved with
20 lines and activated (22 webhooks) written header and lines, with the discount split of reference 6.6, in at most
3 F&O calls (counted from the sandbox's request log) and nothing when replayed; a later Sales change of an order F&O
owns skipped with that reason and no call; a draft order and an order with a product made in Sales skipped with the
reason; a customer missing in F&O deferred (naming it) and applied once it exists; a quote and an order landing
in their customer's company (an account's, a contact's), not their own business unit's."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from p2csync.outcomes import Applied, Skipped
from p2csync.runtime import InboundMessage, SyncRuntime
from p2csync.settings import ROOT
from sandbox import USD_CURRENCY_ID, SandboxServer
from sandbox.dataverse_tables import processing_status
from tests.integration.runtime_world import Capture, Runtimes, created_account, sales_change, scheduled
from tests.integration import test_quotes_sandbox as quotes
from tests.integration.test_quotes_sandbox import Catalogue, fno_calls, handled, synced_account

registered = quotes.registered  # fixtures shared with the quotes flow: every mapping registered, 20 products
catalogue = quotes.catalogue

HEADERS, LINES = "CDSSalesOrderHeaders", "CDSSalesOrderLines"
DRAFT, ACTIVE = processing_status("Draft"), processing_status("Active")  # reference 6.7


def order_attrs(number: str, account_id: str, **extra: Any) -> dict[str, Any]:
    return {"name": f"Order {number}", "ordernumber": number, "customerid": ("account", account_id),
            "transactioncurrencyid": ("transactioncurrency", USD_CURRENCY_ID), "shipto_line1": "1 Main St",
            "shipto_city": "Redmond", "shipto_postalcode": "98052", "shipto_country": "United States",
            "msdynce_processingstatus": DRAFT, **extra}


def order_line(catalogue: Catalogue, order_id: str, number: str, quantity: int = 3, **extra: Any) -> dict[str, Any]:
    return {"salesorderid": ("salesorder", order_id), "productid": ("product", catalogue.products[number]),
            "uomid": ("uom", catalogue.uom), "quantity": quantity, "priceperunit": 12.5,
            "manualdiscountamount": 10, **extra}


async def draft_order(sandbox: SandboxServer, capture: Capture, catalogue: Catalogue, number: str, account_id: str,
                      products: list[str]) -> tuple[str, list[InboundMessage]]:
    """A draft order saved with its lines: one webhook for the order, one per line."""
    made: dict[str, str] = {}

    def act() -> None:
        made["id"] = sandbox.dataverse.create("salesorder", order_attrs(number, account_id))
        for product in products:
            sandbox.dataverse.create("salesorderdetail", order_line(catalogue, made["id"], product))

    messages = await sales_change(sandbox, capture, act, expect=1 + len(products))
    return made["id"], messages


async def activate(sandbox: SandboxServer, capture: Capture, order_id: str) -> InboundMessage:
    """Activate as P2C does: the processing status goes from Draft to Active (the order stays statecode 0)."""
    [message] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "salesorder", order_id, {"msdynce_processingstatus": ACTIVE}))
    return message


def fno_lines(sandbox: SandboxServer, number: str) -> dict[int, dict[str, Any]]:
    return {row["LineCreationSequenceNumber"]: row for row in sandbox.fno.rows(LINES, "usmf")
            if row["SalesOrderNumber"] == number}


def fno_header(sandbox: SandboxServer, number: str) -> dict[str, Any] | None:
    return sandbox.fno.get(HEADERS, {"dataAreaId": "usmf", "SalesOrderNumber": number})


async def test_an_order_activated_with_20_lines_costs_at_most_3_fno_calls_then_f_and_o_owns_it(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-O01")
    products = [f"D{n:04d}" for n in range(1, 21)]
    order_id, drafts = await draft_order(sandbox, capture, catalogue, "ORD-1001", account_id, products)
    assert len(drafts) == 21
    events = [*drafts, await activate(sandbox, capture, order_id)]
    sandbox.fno.request_log.clear()
    sandbox.dataverse.request_log.clear()
    outcomes = [await handled(runtime, message) for message in events]
    applied = [o for o in outcomes if isinstance(o, Applied)]
    assert len(applied) == 1, outcomes
    assert applied[0].detail.startswith("created CDSSalesOrderHeaders(dataAreaId=usmf,SalesOrderNumber=ORD-1001) "
                                        "with 20 lines in one change set of 21 operations")
    # Sales is read with 3 GETs: the order, its lines with their products and units ($expand), the customer.
    reads = [(r.path.split("/")[-1].split("(")[0], r.query) for r in sandbox.dataverse.request_log.entries(method="GET")]
    assert [path for path, _ in reads] == ["salesorders", "salesorderdetails", "accounts"], reads
    assert "$expand=productid" in unquote(reads[1][1]) and "uomid($select=name)" in unquote(reads[1][1])
    # 22 events, one document sync: a $batch of reads (header, customer, 20 products) and one change set.
    assert fno_calls(sandbox) == [("POST", "$batch"), ("POST", "$batch")]
    header = fno_header(sandbox, "ORD-1001")
    assert header is not None and header["OrderingCustomerAccountNumber"] == "ACC-O01"
    assert header["CustomersOrderReference"] == "Order ORD-1001"
    lines = fno_lines(sandbox, "ORD-1001")
    assert sorted(lines) == list(range(1, 21))
    one = lines[1]  # reference 6.6: qty 3, discount $10.00 -> line discount 3.33, charge -0.01
    assert (one["ProductNumber"], Decimal(str(one["OrderedSalesQuantity"]))) == ("D0001", Decimal(3))
    assert (Decimal(str(one["LineDiscountAmount"])), Decimal(str(one["FixedPriceCharges"]))) == \
        (Decimal("3.33"), Decimal("-0.01"))
    assert one["SalesUnitSymbol"] == "ea" and Decimal(str(one["SalesPrice"])) == Decimal("12.5")

    sandbox.fno.request_log.clear()
    replays = [await handled(runtime, message) for message in events]  # at-least-once delivery: all again
    assert all(isinstance(o, Skipped) and o.reason.startswith("duplicate") for o in replays)
    [later] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "salesorder", order_id, {"name": "Renamed after activation"}))
    outcome = await handled(runtime, later)
    assert isinstance(outcome, Skipped)
    assert outcome.reason.startswith("owned by F&O: CDSSalesOrderHeaders")
    assert "after activation F&O is the master of the order" in outcome.reason
    assert fno_calls(sandbox) == []
    assert fno_header(sandbox, "ORD-1001")["CustomersOrderReference"] == "Order ORD-1001"  # type: ignore[index]


async def test_a_draft_order_and_an_order_with_a_sales_product_are_skipped_with_the_reason(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-O02")
    catalogue.product("S-200", external=False, released=False)  # made in Sales
    order_id, drafts = await draft_order(sandbox, capture, catalogue, "ORD-2001", account_id, ["D0001", "S-200"])
    sandbox.fno.request_log.clear()
    first = await handled(runtime, drafts[0])
    assert isinstance(first, Skipped) and first.reason == f"filtered out: msdynce_processingstatus is {DRAFT}, expected Active ({ACTIVE})"
    outcome = await handled(runtime, await activate(sandbox, capture, order_id))
    assert isinstance(outcome, Skipped)
    assert outcome.reason.startswith("filtered out: salesorderdetail 2 (S-200")
    assert outcome.reason.endswith("the whole salesorder is not synced")
    assert fno_calls(sandbox) == []


async def test_a_customer_never_synced_is_pulled_through_and_the_order_applied_in_one_delivery(
        registered: SandboxServer, capture: Capture, runtimes: Runtimes, runtime: SyncRuntime,
        catalogue: Catalogue) -> None:
    sandbox = registered
    account_message = await created_account(sandbox, capture, "ACC-O03")  # not synced yet
    account_id = str(json.loads(account_message.body)["PrimaryEntityId"])
    order_id, drafts = await draft_order(sandbox, capture, catalogue, "ORD-3001", account_id, ["D0001", "D0002"])
    for message in drafts:
        await handled(runtime, message)
    sandbox.fno.request_log.clear()
    outcome = await handled(runtime, await activate(sandbox, capture, order_id))
    assert isinstance(outcome, Applied), outcome  # the account was synced first, in the same delivery
    assert sorted(fno_lines(sandbox, "ORD-3001")) == [1, 2]
    writes = [c for c in fno_calls(sandbox) if c[0] != "GET"]
    assert writes == [("POST", "$batch"), ("POST", "CustomersV3"), ("POST", "$batch"), ("POST", "$batch")]
    assert scheduled(runtime) == []

    late = await handled(runtime, account_message)  # the account's own event: already done, no second write
    assert isinstance(late, Skipped) and late.reason.startswith("unchanged"), late


@pytest.fixture
def customers_routed(tmp_path: Path) -> Path:
    """The shipped mappings with the sandbox's business unit routed to usrt for accounts and to demf for contact
    customers; quotes and orders list no business units (they follow their customer)."""
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings, ignore=shutil.ignore_patterns("*.py", "__pycache__", "catalog"))
    for name, company in (("accounts.yaml", "usrt"), ("contacts_customers.yaml", "demf")):
        text = (mappings / name).read_text(encoding="utf-8")
        assert "  business_units: {}\n" in text
        (mappings / name).write_text(text.replace(
            "  business_units: {}\n", f'  business_units:\n    "P2CSyncSandbox": {company}\n'), encoding="utf-8")
    return mappings


async def test_a_lookup_dataverse_cannot_expand_is_read_by_table_instead(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A custom lookup's navigation property is its schema name, not its column name: when Dataverse refuses the
    $expand (400), the lines are read again without it and their products and units by table, and that lookup is
    not expanded again."""
    from p2csync.connectors.errors import ConnectorError

    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-O09")
    order_id, drafts = await draft_order(sandbox, capture, catalogue, "ORD-1009", account_id, ["D0001", "D0002"])
    query, refused = runtime.dataverse.query, []

    def refusing(entity_set: str, *args: Any, expand: Any = None, **kwargs: Any) -> Any:
        if expand:
            refused.append(dict(expand))
            raise ConnectorError("dataverse", 400, "0x80060888", "Could not find a property named 'productid'.")
        return query(entity_set, *args, **kwargs)

    monkeypatch.setattr(runtime.dataverse, "query", refusing)
    sandbox.dataverse.request_log.clear()
    outcomes = [await handled(runtime, m) for m in [*drafts, await activate(sandbox, capture, order_id)]]
    assert [o for o in outcomes if isinstance(o, Applied)], outcomes
    assert fno_lines(sandbox, "ORD-1009")[1]["ProductNumber"] == "D0001"
    reads = [r.path.split("/")[-1].split("(")[0] for r in sandbox.dataverse.request_log.entries(method="GET")]
    assert "products" in reads and "uoms" in reads  # read by table
    assert len(refused) == 1  # one refused attempt, then the same query without $expand


async def test_a_quote_and_an_order_land_in_their_customer_s_company(
        registered: SandboxServer, capture: Capture, runtimes: Runtimes, catalogue: Catalogue,
        customers_routed: Path) -> None:
    sandbox = registered
    runtime = runtimes.build(P2C_MAPPINGS_DIR=str(customers_routed))
    for company in ("usrt", "demf"):
        sandbox.fno.create("CDSReleasedDistinctProducts", {"dataAreaId": company, "ProductNumber": "D0001"})
    account_id = await synced_account(sandbox, capture, runtime, "ACC-O04")
    [contact] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.create("contact", {
        "firstname": "Nancy", "lastname": "Davolio", "msdynce_contactnumber": "CON-O04",
        "msdynce_isactivecustomer": True}))
    assert isinstance(await handled(runtime, contact), Applied)
    assert {r["CustomerAccount"]: r["dataAreaId"] for r in sandbox.fno.rows("CustomersV3")} == {
        "ACC-O04": "usrt", "CON-O04": "demf"}

    # A quote of the account: in usrt, where the account's customer is (its own business unit would say usmf).
    quote_id, drafts = await quotes.draft_quote(sandbox, capture, catalogue, "QUO-O04", account_id, ["D0001"])
    for message in [*drafts, await quotes.activate(sandbox, capture, quote_id)]:
        await handled(runtime, message)
    assert [(r["dataAreaId"], r["SalesQuotationNumber"]) for r in sandbox.fno.rows("CDSSalesQuotationHeaders")] == [
        ("usrt", "QUO-O04")]
    # An order of the contact: in demf, where the contact's customer is.
    contact_id = str(json.loads(contact.body)["PrimaryEntityId"])
    made: dict[str, str] = {}

    def order() -> None:
        made["id"] = sandbox.dataverse.create("salesorder", order_attrs(
            "ORD-4001", account_id, customerid=("contact", contact_id)))
        sandbox.dataverse.create("salesorderdetail", order_line(catalogue, made["id"], "D0001"))

    messages = await sales_change(sandbox, capture, order, expect=2)
    outcomes = [await handled(runtime, m) for m in [*messages, await activate(sandbox, capture, made["id"])]]
    assert sum(isinstance(o, Applied) for o in outcomes) == 1, outcomes  # the first event reads the active order
    assert [(r["dataAreaId"], r["OrderingCustomerAccountNumber"]) for r in sandbox.fno.rows(HEADERS)] == [
        ("demf", "CON-O04")]
    assert [r["dataAreaId"] for r in sandbox.fno.rows(LINES)] == ["demf"]


async def test_an_order_already_in_fno_is_never_updated_from_sales_even_when_the_ledger_forgot_it(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-OWN")
    order_id, _ = await draft_order(sandbox, capture, catalogue, "ORD-OWN", account_id, ["D0001"])
    # F&O has the order already (written before a ledger was rebuilt, or confirmed and changed in F&O since).
    sandbox.fno.create(HEADERS, {"dataAreaId": "usmf", "SalesOrderNumber": "ORD-OWN",
                                 "OrderingCustomerAccountNumber": "ACC-OWN", "CurrencyCode": "USD"},
                       user="p2csync-integration")
    changes: list[Any] = []
    sink = sandbox.fno.on_change(changes.append)
    try:
        outcome = await handled(runtime, await activate(sandbox, capture, order_id))
    finally:
        sandbox.fno._sinks.remove(sink)
    assert isinstance(outcome, Skipped), outcome
    assert outcome.reason.startswith("owned by F&O") and "exists already" in outcome.reason
    assert changes == [] and fno_lines(sandbox, "ORD-OWN") == {}  # nothing written over F&O's order
