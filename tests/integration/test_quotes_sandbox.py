"""The quotes flow (a document: quote + quote products) against the sandbox over real loopback HTTP.

Every Sales change goes through the registered webhook, the ingress and the runtime. Covered: an activated quote
written header and lines in one change set; a quote saved with 20 lines (21 webhooks) plus its activation costing
at most 3 F&O calls and one write, and nothing at all when replayed; a revision whose header and lines changed
(line added, changed, removed) written in one change set; a draft quote and a quote with a product made in Sales
skipped with the reason; a customer never synced pulled through (synced first, the quote applied in one delivery,
the account's own later events handled normally); a customer that cannot be pulled deferred naming it, then
dead-lettered; a product not
released in F&O deferred; the line Delete routed to its document through the pre image."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from mappings import load_mappings
from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.outcomes import Applied, Deferred, Outcome, Rejected, Skipped
from p2csync.registration import register
from p2csync.runtime import DEFERRALS, InboundMessage, SyncRuntime
from p2csync.settings import ROOT
from sandbox import INTEGRATION_TOKEN, USD_CURRENCY_ID, SandboxServer
from tests.integration.runtime_world import (
    Capture,
    RecordingActions,
    as_inbound,
    created_account,
    sales_change,
    scheduled,
)

HEADERS, LINES = "CDSSalesQuotationHeaders", "CDSSalesQuotationLines"
PRODUCTS = "CDSReleasedDistinctProducts"


@pytest.fixture
async def registered(sandbox: SandboxServer, capture: Capture) -> SandboxServer:
    """`register` with every shipped mapping: the quote steps and the quotedetail steps (Delete with a pre image)."""
    async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(INTEGRATION_TOKEN), tag=None) as dv:
        await register(dv, load_mappings(ROOT / "mappings"), url=capture.url, key="function-key",
                       out=lambda line: None)
    capture.take()
    return sandbox


async def handled(runtime: SyncRuntime, message: InboundMessage) -> Outcome:
    return await runtime.handle(message, message, RecordingActions())


def fno_calls(sandbox: SandboxServer) -> list[tuple[str, str]]:
    return [(r.method, r.path.rsplit("/", 1)[-1].split("?")[0]) for r in sandbox.fno.request_log.entries()]


class Catalogue:
    """Products that came from F&O (externally maintained in Sales, released in F&O) and the Sales unit."""

    def __init__(self, sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        self.uom = sandbox.dataverse.create("uom", {"name": "Primary Unit", "quantity": 1})
        self.products: dict[str, str] = {}

    def product(self, number: str, *, external: bool = True, released: bool = True) -> str:
        self.products[number] = self.sandbox.dataverse.create("product", {
            "name": f"Product {number}", "productnumber": number, "msdynce_ismaintainedexternally": external,
            "defaultuomid": ("uom", self.uom)})
        if released:
            self.sandbox.fno.create(PRODUCTS, {"dataAreaId": "usmf", "ProductNumber": number,
                                               "ProductName": f"Product {number}"})
        return self.products[number]

    def line(self, quote_id: str, number: str, quantity: int = 1, **extra: Any) -> dict[str, Any]:
        return {"quoteid": ("quote", quote_id), "productid": ("product", self.products[number]),
                "uomid": ("uom", self.uom), "quantity": quantity, "priceperunit": 12.5, **extra}


@pytest.fixture
def catalogue(registered: SandboxServer) -> Catalogue:
    catalogue = Catalogue(registered)
    for n in range(1, 21):
        catalogue.product(f"D{n:04d}")
    return catalogue


async def synced_account(sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime, number: str) -> str:
    message = await created_account(sandbox, capture, number)
    assert isinstance(await handled(runtime, message), Applied)
    return str(json.loads(message.body)["PrimaryEntityId"])


def quote_attrs(number: str, account_id: str, **extra: Any) -> dict[str, Any]:
    return {"name": f"Bikes for {number}", "quotenumber": number, "customerid": ("account", account_id),
            "transactioncurrencyid": ("transactioncurrency", USD_CURRENCY_ID), "shipto_line1": "1 Main St",
            "shipto_city": "Redmond", "shipto_postalcode": "98052", "shipto_country": "United States", **extra}


async def draft_quote(sandbox: SandboxServer, capture: Capture, catalogue: Catalogue, number: str, account_id: str,
                      products: list[str]) -> tuple[str, list[InboundMessage]]:
    """A draft quote saved with its lines: one webhook for the quote, one per line."""
    made: dict[str, str] = {}

    def act() -> None:
        made["id"] = sandbox.dataverse.create("quote", quote_attrs(number, account_id))
        for product in products:
            sandbox.dataverse.create("quotedetail", catalogue.line(made["id"], product))

    messages = await sales_change(sandbox, capture, act, expect=1 + len(products))
    return made["id"], messages


async def activate(sandbox: SandboxServer, capture: Capture, quote_id: str) -> InboundMessage:
    """Activate as the Web API does it: PATCH statecode 1 (statuscode 2, In Progress, set by the platform)."""
    [message] = await sales_change(sandbox, capture,
                                   lambda: sandbox.dataverse.update("quote", quote_id, {"statecode": 1}))
    return message


def fno_header(sandbox: SandboxServer, number: str) -> dict[str, Any] | None:
    return sandbox.fno.get(HEADERS, {"dataAreaId": "usmf", "SalesQuotationNumber": number})


def fno_lines(sandbox: SandboxServer, number: str) -> dict[int, dict[str, Any]]:
    return {row["LineCreationSequenceNumber"]: row for row in sandbox.fno.rows(LINES, "usmf")
            if row["SalesQuotationNumber"] == number}


async def test_an_activated_quote_is_written_header_then_lines_in_one_change_set(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-Q01")
    quote_id, drafts = await draft_quote(sandbox, capture, catalogue, "QUO-1001", account_id,
                                         ["D0001", "D0002", "D0003"])
    sandbox.fno.request_log.clear()
    for message in drafts:  # a draft is still being edited: read in Sales, nothing in F&O
        outcome = await handled(runtime, message)
        assert isinstance(outcome, Skipped)
        assert "statecode is 0, expected 1" in outcome.reason or outcome.reason.startswith("stale")
    assert fno_calls(sandbox) == []

    changes: list[Any] = []
    sink = sandbox.fno.on_change(changes.append)
    try:
        outcome = await handled(runtime, await activate(sandbox, capture, quote_id))
    finally:
        sandbox.fno._sinks.remove(sink)
    assert isinstance(outcome, Applied), outcome
    assert outcome.detail.startswith(f"created {HEADERS}(dataAreaId=usmf,SalesQuotationNumber=QUO-1001) with 3 lines")
    assert [c.entity_set for c in changes] == [HEADERS, LINES, LINES, LINES]  # header first
    assert fno_calls(sandbox) == [("POST", "$batch"), ("POST", "$batch")]  # reads (header, customer, products), write
    header = fno_header(sandbox, "QUO-1001")
    assert header is not None
    assert header["RequestingCustomerAccountNumber"] == "ACC-Q01"
    assert header["CurrencyCode"] == "USD" and header["DeliveryAddressCountryRegionISOCode"] == "US"
    created = datetime.fromisoformat(sandbox.dataverse.get("quote", quote_id)["createdon"])  # type: ignore[index]
    # no Due By: the day the quote was created (midnight UTC: F&O's DateTimeOffset needs a zone)
    assert header["RequestedShippingDate"] == f"{created.astimezone(UTC):%Y-%m-%d}T00:00:00Z"
    lines = fno_lines(sandbox, "QUO-1001")
    assert sorted(lines) == [1, 2, 3]
    assert lines[2]["ProductNumber"] == "D0002" and lines[2]["SalesUnitSymbol"] == "ea"
    assert Decimal(str(lines[2]["SalesPrice"])) == Decimal("12.5")


async def test_a_quote_saved_with_20_lines_costs_at_most_3_fno_calls_and_nothing_when_replayed(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-Q02")
    products = [f"D{n:04d}" for n in range(1, 21)]
    quote_id, drafts = await draft_quote(sandbox, capture, catalogue, "QUO-2001", account_id, products)
    assert len(drafts) == 21
    activation = await activate(sandbox, capture, quote_id)
    events = [*drafts, activation]
    sandbox.fno.request_log.clear()
    outcomes = [await handled(runtime, message) for message in events]
    assert sum(isinstance(o, Applied) for o in outcomes) == 1, outcomes
    # 22 events, one document sync: one $batch of reads (header, customer, 20 products), one change set (header +
    # 20 lines); the lines query is not needed for a quotation F&O does not have yet.
    assert fno_calls(sandbox) == [("POST", "$batch"), ("POST", "$batch")]
    assert [r.status for r in sandbox.fno.request_log.entries()] == [200, 200]
    assert len(fno_lines(sandbox, "QUO-2001")) == 20

    sandbox.fno.request_log.clear()
    replays = [await handled(runtime, message) for message in events]  # at-least-once delivery: all again
    assert all(isinstance(o, Skipped) and o.reason.startswith("duplicate") for o in replays)
    assert fno_calls(sandbox) == []


async def test_a_revision_changes_header_and_lines_in_one_change_set(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-Q03")
    quote_id, drafts = await draft_quote(sandbox, capture, catalogue, "QUO-3001", account_id,
                                         ["D0001", "D0002", "D0003"])
    for message in [*drafts, await activate(sandbox, capture, quote_id)]:
        await handled(runtime, message)
    assert sorted(fno_lines(sandbox, "QUO-3001")) == [1, 2, 3]

    # Sales: Revise (the active quote is closed as Revised, a draft revision with copies of the lines opens),
    # then change the header, change line 2, remove line 3, add a line; activate the revision.
    made: dict[str, str] = {}
    messages = await sales_change(sandbox, capture, lambda: made.update(id=sandbox.dataverse.revise_quote(quote_id)),
                                  expect=5)
    revision = made["id"]
    lines = {row["sequencenumber"]: row["quotedetailid"] for row in sandbox.dataverse.rows("quotedetail")
             if row["_quoteid_value"] == revision}

    def edit() -> None:
        sandbox.dataverse.update("quote", revision, {"name": "Bikes, revised"})
        sandbox.dataverse.update("quotedetail", lines[2], {"quantity": 7})
        sandbox.dataverse.delete("quotedetail", lines[3])
        sandbox.dataverse.create("quotedetail", catalogue.line(revision, "D0004", 2))

    messages += await sales_change(sandbox, capture, edit, expect=4)
    [delete] = [m for m in messages if json.loads(m.body)["MessageName"] == "Delete"]
    assert runtime.registry.route(_event(delete)).record_key(_event(delete)) == f"quotes:quote:{revision}"
    activation = await activate(sandbox, capture, revision)
    sandbox.fno.request_log.clear()
    outcomes = [await handled(runtime, message) for message in [*messages, activation]]
    applied = [o for o in outcomes if isinstance(o, Applied)]
    assert len(applied) == 1, outcomes
    # the name also feeds the delivery name and description (quotes.yaml rows 12, 14)
    assert ("(header: DeliveryAddressDescription, DeliveryAddressName, SalesQuotationName; lines: 1 added, "
            "1 changed, 1 removed) in one change set of 4 operations") in applied[0].detail
    assert len(fno_calls(sandbox)) == 3  # reads (header + references), the lines, the change set
    assert [c for c in fno_calls(sandbox) if c[0] != "GET"] == [("POST", "$batch"), ("POST", "$batch")]
    after = fno_lines(sandbox, "QUO-3001")
    assert sorted(after) == [1, 2, 4]
    assert after[2]["RequestedSalesQuantity"] == 7 and after[4]["ProductNumber"] == "D0004"
    assert fno_header(sandbox, "QUO-3001")["SalesQuotationName"] == "Bikes, revised"  # type: ignore[index]


async def test_a_line_stamped_before_the_read_but_committed_after_it_is_not_skipped_as_stale(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """modifiedon is stamped when a write starts, not when it commits: a line whose transaction began before the
    quote's activation (so Dataverse let it in, and stamped it earlier than the activation) can commit after the
    sync read the activated quote. Its event is older than the version that sync saw; it must still be synced."""
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-Q09")
    quote_id, drafts = await draft_quote(sandbox, capture, catalogue, "QUO-9001", account_id, ["D0001"])
    activation = await activate(sandbox, capture, quote_id)
    for message in [*drafts, activation]:
        await handled(runtime, message)
    assert sorted(fno_lines(sandbox, "QUO-9001")) == [1]
    activated_at = datetime.fromisoformat(sandbox.dataverse.get("quote", quote_id)["modifiedon"])  # type: ignore[index]

    # The late line: checked and stamped a second before the activation, committed (and announced) now.
    monkeypatch.setattr(sandbox.dataverse, "_check_parent_editable", lambda *args: None)
    monkeypatch.setattr(sandbox.dataverse, "clock", lambda: activated_at - timedelta(seconds=1))
    [late] = await sales_change(sandbox, capture,
                                lambda: sandbox.dataverse.create("quotedetail", catalogue.line(quote_id, "D0002")))
    monkeypatch.undo()
    outcome = await handled(runtime, late)
    assert isinstance(outcome, Applied), outcome
    assert sorted(fno_lines(sandbox, "QUO-9001")) == [1, 2]


def _event(message: InboundMessage) -> Any:
    from p2csync.envelopes import parse_change_event

    return parse_change_event(message.body, message.application_properties, content_type=message.content_type)


async def test_a_draft_quote_and_a_quote_with_a_sales_product_are_skipped_with_the_reason(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-Q04")
    catalogue.product("S-100", external=False, released=False)  # made in Sales
    quote_id, drafts = await draft_quote(sandbox, capture, catalogue, "QUO-4001", account_id, ["D0001", "S-100"])
    sandbox.fno.request_log.clear()
    first = await handled(runtime, drafts[0])
    assert isinstance(first, Skipped) and first.reason == "filtered out: statecode is 0, expected 1"
    outcome = await handled(runtime, await activate(sandbox, capture, quote_id))
    assert isinstance(outcome, Skipped)
    assert outcome.reason.startswith("filtered out: quotedetail 2 (S-100")
    assert "msdynce_ismaintainedexternally is False, expected True" in outcome.reason
    assert "the whole quote is not synced; an active quote is read-only in Sales" in outcome.reason
    assert outcome.reason.endswith("Revise the quote and activate the revision to sync it")
    assert fno_calls(sandbox) == []


async def test_a_customer_never_synced_is_pulled_through_and_the_quote_applied_in_one_delivery(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    """An account made before the webhook was registered has no event of its own: the quote syncs it first,
    through the accounts flow and under the account's own ledger record, then lands in the same delivery."""
    sandbox = registered
    account_message = await created_account(sandbox, capture, "ACC-Q05")  # its event is never delivered
    account_id = str(json.loads(account_message.body)["PrimaryEntityId"])
    quote_id, drafts = await draft_quote(sandbox, capture, catalogue, "QUO-5001", account_id, ["D0001"])
    for message in drafts:
        await handled(runtime, message)
    sandbox.fno.request_log.clear()
    activated = await activate(sandbox, capture, quote_id)
    outcome = await handled(runtime, activated)
    assert isinstance(outcome, Applied), outcome
    assert sorted(fno_lines(sandbox, "QUO-5001")) == [1]
    assert scheduled(runtime) == []  # nothing deferred
    writes = [c for c in fno_calls(sandbox) if c[0] != "GET"]
    assert writes.index(("POST", "CustomersV3")) < len(writes) - 1 and writes[-1] == ("POST", "$batch")
    state = await runtime.ledger.acquire(f"accounts:account:{account_id}", "test", timedelta(seconds=1))
    await runtime.ledger.release(f"accounts:account:{account_id}", "test")
    assert state.target_key == "fno:CustomersV3:(dataAreaId='usmf',CustomerAccount='acc-q05')"
    assert await runtime.ledger.message_outcome(  # the parent's outcome names the pull-through
        f"accounts:account:{account_id}", f"pull:{_event(activated).dedupe_key}") is not None

    # The account's own event, delivered late, and its next real change: handled as for any synced account.
    sandbox.fno.request_log.clear()
    late = await handled(runtime, account_message)
    assert isinstance(late, Skipped) and late.reason.startswith("unchanged"), late
    assert [c for c in fno_calls(sandbox) if c[0] != "GET"] == []  # no second write
    [changed] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", account_id, {"telephone1": "+1 425 555 0199"}))
    assert isinstance(await handled(runtime, changed), Applied)
    assert [c for c in fno_calls(sandbox) if c[0] != "GET"] == [("PATCH", "CustomersV3(dataAreaId='usmf',"
                                                                          "CustomerAccount='ACC-Q05')")]


async def test_a_customer_that_cannot_be_pulled_defers_naming_it_then_dead_letters(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    """A contact customer that neither contacts file takes (not an active customer, no company) is filtered out
    by its own flow: the quote waits, naming the contact and why it was not pulled, and is dead-lettered naming
    it after the deferral limit."""
    sandbox = registered
    [made] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.create("contact", {
        "firstname": "Ann", "lastname": "Pull", "msdynce_contactnumber": "CON-Q07", "msdynce_isactivecustomer": False}))
    contact_id = str(json.loads(made.body)["PrimaryEntityId"])
    made_quote: dict[str, str] = {}

    def act() -> None:
        made_quote["id"] = sandbox.dataverse.create("quote", {**quote_attrs("QUO-7001", contact_id),
                                                              "customerid": ("contact", contact_id)})
        sandbox.dataverse.create("quotedetail", catalogue.line(made_quote["id"], "D0001"))

    await sales_change(sandbox, capture, act, expect=2)
    activated = await activate(sandbox, capture, made_quote["id"])
    outcome = await handled(runtime, activated)
    assert isinstance(outcome, Deferred), outcome
    assert "CustomersV3(dataAreaId=usmf,CustomerAccount=CON-Q07) does not exist in F&O yet" in outcome.reason
    assert f"could not be pulled through (contact {contact_id}: skipped: filtered out: not contacts_customers" \
        in outcome.reason
    assert fno_header(sandbox, "QUO-7001") is None and customer_row(sandbox, "CON-Q07") is None
    assert await runtime.ledger.message_outcome(f"contacts:contact:{contact_id}",
                                                f"pull:{_event(activated).dedupe_key}") is None

    [retry] = scheduled(runtime)
    last = as_inbound(retry)
    last = InboundMessage(**{**last.__dict__, "application_properties": {
        **last.application_properties, DEFERRALS: runtime.settings.max_deferrals}})
    actions = RecordingActions()
    outcome = await runtime.handle(last, last, actions)
    assert isinstance(outcome, Rejected) and outcome.reason == "MaxDeferralsExceeded"
    assert "CustomersV3(dataAreaId=usmf,CustomerAccount=CON-Q07) does not exist in F&O yet" in outcome.description


async def test_pull_through_is_one_level_deep(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    """A quote's contact customer whose own account is not in F&O either: the quote pulls the contact, the pulled
    contact does not pull its account in turn (depth 1), so nothing is written and the quote waits naming both."""
    sandbox = registered
    account_message = await created_account(sandbox, capture, "ACC-Q08")  # never synced
    account_id = str(json.loads(account_message.body)["PrimaryEntityId"])
    [made] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.create("contact", {
        "firstname": "Bo", "lastname": "Deep", "msdynce_contactnumber": "CON-Q08", "msdynce_isactivecustomer": False,
        "parentcustomerid": ("account", account_id)}))
    contact_id = str(json.loads(made.body)["PrimaryEntityId"])
    made_quote: dict[str, str] = {}

    def act() -> None:
        made_quote["id"] = sandbox.dataverse.create("quote", {**quote_attrs("QUO-8001", account_id),
                                                              "customerid": ("contact", contact_id)})
        sandbox.dataverse.create("quotedetail", catalogue.line(made_quote["id"], "D0001"))

    await sales_change(sandbox, capture, act, expect=2)
    sandbox.fno.request_log.clear()
    outcome = await handled(runtime, await activate(sandbox, capture, made_quote["id"]))
    assert isinstance(outcome, Deferred), outcome
    assert f"could not be pulled through (contact {contact_id}: deferred" in outcome.reason
    assert f"waiting for account {account_id}" in outcome.reason
    assert "pull-through is limited to 1 level(s)" in outcome.reason
    assert [c for c in fno_calls(sandbox) if c[0] != "GET"] == [("POST", "$batch")]  # the reads only
    assert customer_row(sandbox, "ACC-Q08") is None


def customer_row(sandbox: SandboxServer, number: str) -> dict[str, Any] | None:
    return sandbox.fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": number})


async def test_a_product_not_released_in_the_company_defers_naming_it(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-Q06")
    catalogue.product("D9999", released=False)
    quote_id, drafts = await draft_quote(sandbox, capture, catalogue, "QUO-6001", account_id, ["D0001", "D9999"])
    for message in drafts:
        await handled(runtime, message)
    outcome = await handled(runtime, await activate(sandbox, capture, quote_id))
    assert isinstance(outcome, Deferred)
    assert f"{PRODUCTS}(dataAreaId=usmf,ProductNumber=D9999) does not exist in F&O yet" in outcome.reason
    assert fno_header(sandbox, "QUO-6001") is None and fno_lines(sandbox, "QUO-6001") == {}


async def test_two_lines_with_one_line_number_are_refused_naming_it_not_collapsed(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue) -> None:
    # Out of the box Dataverse has no alternate key on (quoteid, sequencenumber): duplicates can happen there.
    sandbox = registered
    table = sandbox.dataverse.tables["quotedetail"]
    keys = list(table.alternate_keys)
    table.alternate_keys.clear()
    try:
        account_id = await synced_account(sandbox, capture, runtime, "ACC-QDUP")
        made: dict[str, str] = {}

        def act() -> None:
            made["id"] = sandbox.dataverse.create("quote", quote_attrs("QUO-DUP", account_id))
            for product in ("D0001", "D0002"):
                sandbox.dataverse.create("quotedetail", {**catalogue.line(made["id"], product), "sequencenumber": 1})

        await sales_change(sandbox, capture, act, expect=3)
        sandbox.fno.request_log.clear()
        outcome = await handled(runtime, await activate(sandbox, capture, made["id"]))
    finally:
        table.alternate_keys.extend(keys)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == "DuplicateLineNumber" and "line number 1" in outcome.description
    assert fno_header(sandbox, "QUO-DUP") is None  # nothing written: not one line silently lost


async def test_a_document_larger_than_one_change_set_is_refused_not_half_written(
        registered: SandboxServer, capture: Capture, runtime: SyncRuntime, catalogue: Catalogue,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.fno, "batch_size", 3)  # one change set takes 3 here; header + 3 lines is 4
    sandbox = registered
    account_id = await synced_account(sandbox, capture, runtime, "ACC-QBIG")
    quote_id, _ = await draft_quote(sandbox, capture, catalogue, "QUO-BIG", account_id, ["D0001", "D0002", "D0003"])
    sandbox.fno.request_log.clear()
    outcome = await handled(runtime, await activate(sandbox, capture, quote_id))
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == "DocumentTooLarge" and "needs 4 operations" in outcome.description
    assert fno_header(sandbox, "QUO-BIG") is None and fno_lines(sandbox, "QUO-BIG") == {}
