"""``make demo``: the prospect-to-cash story through the real code path, against the sandbox.

First products are released in F&O and appear in Sales with their price (p2csync/demo_back.py).

A Sales user creates accounts and edits some of them; each change raises a webhook to the local host,
goes through the queue and the accounts flow, and must end as an F&O customer with the newest values.
One account has no account number: it cannot be keyed, so it must end in the dead-letter queue with that
reason (nothing is dropped silently). Then contacts: a contact of an account becomes a contact person of its
customer, an active customer a person customer, a contact of a contact is skipped with the reason, and one
contact person becomes an active customer (its contact person is then marked inactive). Then quotes: one saved
with three lines and activated, then revised (a line changed, one removed, one added), both sides printed line by
line; one with a product made in Sales, skipped with the reason. Then a sales order saved as a draft with four
lines and activated: both sides printed line by line (Sales' discount, F&O's per-unit discount and charge); F&O
confirms it and totals it, and it comes back onto the same Sales order; F&O invoices it, and Sales gets the invoice
and the order turns Invoiced; an order entered in F&O appears in Sales.
The demo prints one row per record with both sides and exits non-zero if any did not end as expected.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from p2csync import demo_back as back
from p2csync.devstack import LocalStack
from p2csync.settings import ROOT
from sandbox.dataverse_tables import processing_status

CITIES = [("Redmond", "WA", "98052"), ("Seattle", "WA", "98101"), ("Fargo", "ND", "58102"),
          ("Austin", "TX", "73301"), ("Chicago", "IL", "60601"), ("Denver", "CO", "80202"),
          ("Boston", "MA", "02108"), ("Atlanta", "GA", "30303"), ("Portland", "OR", "97201"),
          ("Phoenix", "AZ", "85001")]
NAMES = ["Contoso", "Fabrikam", "Northwind Traders", "Adventure Works", "Tailspin Toys", "Wide World Importers",
         "Litware", "Proseware", "Alpine Ski House", "Coho Winery"]


@dataclass
class DemoAccount:
    number: str | None
    name: str
    phone: str
    record_id: str = ""
    changes: int = 0
    expected: str = "applied"
    outcome: str = "missing"
    detail: str = ""
    latency_ms: float | None = None
    events: list[str] = field(default_factory=list)


def _plan(count: int) -> list[DemoAccount]:
    accounts = [
        DemoAccount(number=f"DEMO-{i + 1:03d}", name=f"{NAMES[i % len(NAMES)]} {i // len(NAMES) + 1}",
                    phone=f"+1 425 555 {100 + i:04d}")
        for i in range(count)
    ]
    accounts.append(DemoAccount(number=None, name="Account without a number", phone="+1 425 555 0999",
                                expected="rejected"))
    return accounts


async def _play(stack: LocalStack, accounts: list[DemoAccount]) -> None:
    dataverse = stack.sandbox.dataverse
    usd = next(row["transactioncurrencyid"] for row in dataverse.rows("transactioncurrency")
               if row["isocurrencycode"] == "USD")
    for i, account in enumerate(accounts):
        city, state, zip_code = CITIES[i % len(CITIES)]
        attrs = {
            "name": account.name, "telephone1": account.phone, "emailaddress1": f"sales{i}@example.com",
            "address1_line1": f"{i + 1} Main Street", "address1_city": city, "address1_stateorprovince": state,
            "address1_postalcode": zip_code, "address1_country": "United States", "creditlimit": 10000 + 500 * i,
            "transactioncurrencyid": ("transactioncurrency", usd),
        }
        if account.number:
            attrs["accountnumber"] = account.number
        account.record_id = await asyncio.to_thread(dataverse.create, "account", attrs)
        account.changes += 1
    # A Sales user edits two accounts: the edits must win in F&O, whatever order the events arrive in.
    for account in accounts[:2]:
        account.name += " (renamed)"
        account.phone = account.phone.replace("555", "556")
        await asyncio.to_thread(dataverse.update, "account", account.record_id,
                                {"name": account.name, "telephone1": account.phone})
        account.changes += 1


async def _verify(stack: LocalStack, accounts: list[DemoAccount]) -> None:
    jobs = {job.id: job for job in stack.sandbox.dataverse.system_jobs()}
    journal = await stack.ledger().journal_entries(limit=100_000)
    by_record: dict[str, list] = {}
    for entry in journal:
        parts = entry.message_key.split(":")
        if len(parts) >= 4 and parts[0] == "account":
            by_record.setdefault(parts[1], []).append(entry)
    dead = {m.message_id: m for m in stack.queue.peek_dead_letters("sales-events")}
    for account in accounts:
        entries = by_record.get(account.record_id, [])
        account.events = [e.outcome for e in entries]
        customer = stack.sandbox.fno.get("CustomersV3", {"dataAreaId": "usmf",
                                                             "CustomerAccount": account.number or ""})
        applied = [e for e in entries if e.outcome == "applied"]
        if applied:
            last = max(applied, key=lambda e: e.at)
            job = jobs.get(last.message_key.split(":")[3])
            if job is not None:  # from the Sales save (the system job is created in the same transaction)
                account.latency_ms = (last.at - job.created_on).total_seconds() * 1000
        if account.expected == "applied":
            ok = (customer is not None and customer.get("OrganizationName") == account.name
                  and customer.get("PrimaryContactPhone") == account.phone)
            account.outcome = "applied" if ok else ("stale" if customer else "missing")
            account.detail = f"usmf/{account.number}" if customer else ""
        else:
            rejected = [e for e in entries if e.outcome == "rejected"]
            letters = [m for m in dead.values() if m.message_id == (rejected[-1].message_id if rejected else None)]
            account.outcome = "rejected" if letters else "missing"
            if letters:
                account.detail = f"DLQ {letters[0].dead_letter_reason}: {letters[0].dead_letter_error_description}"


def _print(accounts: list[DemoAccount], elapsed: float) -> None:
    header = f"{'account':<10} {'source id':<10} {'target (dataAreaId/CustomerAccount)':<36} {'events':<24} " \
             f"{'outcome':<9} {'latency':>9}"
    print(header)
    print("-" * len(header))
    for a in accounts:
        latency = f"{a.latency_ms:.0f} ms" if a.latency_ms is not None else "-"
        mark = "ok" if a.outcome == a.expected else "FAILED"
        print(f"{(a.number or '(none)'):<10} {a.record_id[:8]:<10} {a.detail[:36]:<36} "
              f"{','.join(a.events)[:24]:<24} {a.outcome:<9} {latency:>9}  {mark}")
        if len(a.detail) > 36:
            print(f"{'':<21} {a.detail}")
    latencies = [a.latency_ms for a in accounts if a.latency_ms is not None]
    print()
    if latencies:
        print(f"save-in-Sales-to-F&O-write latency: median {statistics.median(latencies):.0f} ms, "
              f"max {max(latencies):.0f} ms over {len(latencies)} customers")
    print(f"demo time: {elapsed:.1f} s")


@dataclass
class DemoContact:
    number: str
    name: str
    kind: str  # what it must end as: person (contact person), customer (person customer), skipped
    parent: int | None = None  # index of its account in the account plan
    becomes_customer: bool = False
    record_id: str = ""
    outcome: str = "missing"
    detail: str = ""
    events: list[str] = field(default_factory=list)


def _contact_plan() -> list[DemoContact]:
    return [
        DemoContact("CON-001", "Nancy Davolio", "person", parent=0),
        DemoContact("CON-002", "Andrew Fuller", "person", parent=1),
        DemoContact("CON-003", "Janet Leverling", "customer"),
        DemoContact("CON-004", "Margaret Peacock", "customer", parent=2, becomes_customer=True),
        DemoContact("CON-005", "Steven Buchanan", "skipped"),  # its company is a contact: not synced
    ]


async def _play_contacts(stack: LocalStack, accounts: list[DemoAccount], contacts: list[DemoContact]) -> None:
    dataverse = stack.sandbox.dataverse
    for contact in contacts:
        first, last = contact.name.split(" ", 1)
        attrs: dict = {"firstname": first, "lastname": last, "msdynce_contactnumber": contact.number,
                       "jobtitle": "Buyer", "address1_country": "United Kingdom", "gendercode": 1,
                       "msdynce_isactivecustomer": contact.kind == "customer" and not contact.becomes_customer}
        if contact.parent is not None:
            attrs["parentcustomerid"] = ("account", accounts[contact.parent].record_id)
        elif contact.kind == "skipped":
            attrs["parentcustomerid"] = ("contact", contacts[0].record_id)
        contact.record_id = await asyncio.to_thread(dataverse.create, "contact", attrs)
    await stack.wait_settled(timeout=25)
    for contact in contacts:
        if contact.becomes_customer:  # a contact person who placed an order: now an active customer
            await asyncio.to_thread(dataverse.update, "contact", contact.record_id, {"msdynce_isactivecustomer": True})


async def _verify_contacts(stack: LocalStack, accounts: list[DemoAccount], contacts: list[DemoContact]) -> None:
    journal = await stack.ledger().journal_entries(limit=100_000)
    fno = stack.sandbox.fno
    for contact in contacts:
        entries = [e for e in journal if e.message_key.startswith(f"contact:{contact.record_id}:")]
        contact.events = [e.outcome for e in entries]
        persons = [r for r in fno.rows("CDSContactPersonsV2") if r["ContactPersonPartyNumber"] == contact.number]
        customer = fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": contact.number})
        if contact.kind == "person":
            ok = [p for p in persons if p["IsInactive"] == "No"
                  and p["AssociatedContactNumber"] == accounts[contact.parent or 0].number]
            contact.outcome = "person" if ok and customer is None else "missing"
            contact.detail = f"contact person of usmf/{ok[0]['AssociatedContactNumber']}" if ok else ""
        elif contact.kind == "customer":
            retired = all(p["IsInactive"] == "Yes" for p in persons)
            contact.outcome = "customer" if customer is not None and retired else "missing"
            contact.detail = f"person customer usmf/{contact.number}" if customer else ""
            if contact.becomes_customer and persons:
                contact.detail += f" (was contact person of {persons[0]['AssociatedContactNumber']}: now inactive)"
        else:
            skipped = [e for e in entries if e.outcome == "skipped"]
            contact.outcome = "skipped" if skipped and not persons and customer is None else "missing"
            contact.detail = (skipped[-1].reason or "") if skipped else ""


def _print_contacts(contacts: list[DemoContact]) -> None:
    header = f"{'contact':<10} {'source id':<10} {'target in F&O':<62} {'events':<16} {'outcome':<9}"
    print(header)
    print("-" * len(header))
    for c in contacts:
        mark = "ok" if c.outcome == c.kind else "FAILED"
        detail = c.detail if len(c.detail) <= 62 else c.detail[:59] + "..."
        print(f"{c.number:<10} {c.record_id[:8]:<10} {detail:<62} {','.join(c.events)[:16]:<16} {c.outcome:<9}  "
              f"{mark}")
        if len(c.detail) > 62:
            print(f"{'':<21} {c.detail}")
    print()


@dataclass
class DemoQuote:
    number: str
    account: int  # index of its customer in the account plan
    products: list[int]  # indexes into the demo catalogue
    expected: str  # applied (F&O holds it as Sales has it) or skipped
    revise: bool = False  # revised in Sales after activation: line 1 changed, line 2 removed, one line added
    record_id: str = ""
    outcome: str = "missing"
    detail: str = ""
    sales: list[str] = field(default_factory=list)
    fno: list[str] = field(default_factory=list)


#: Demo products: the first four came from F&O (externally maintained, released in usmf); the last was made in Sales.
DEMO_PRODUCTS = [("D0001", "Mountain bike", True), ("D0002", "Helmet", True), ("D0003", "Lights", True),
                 ("D0004", "Lock", True), ("SALES-1", "Gift card", False)]


def _quote_plan() -> list[DemoQuote]:
    return [DemoQuote("QUO-D01", account=0, products=[0, 1, 2], expected="applied", revise=True),
            DemoQuote("QUO-D02", account=1, products=[0, 4], expected="skipped")]


async def _play_quotes(stack: LocalStack, accounts: list[DemoAccount], quotes: list[DemoQuote]) -> None:
    dataverse = stack.sandbox.dataverse

    def catalogue() -> tuple[str, list[str]]:
        """The products released in F&O are in Sales by now (the products flow); the gift card is made in Sales."""
        by_number = {r["productnumber"]: r for r in dataverse.rows("product")}
        ids = []
        for number, name, external in DEMO_PRODUCTS:
            if not external:
                by_number[number] = {"productid": dataverse.create("product", {
                    "name": name, "productnumber": number, "msdynce_ismaintainedexternally": False})}
            ids.append(by_number[number]["productid"])
        uom = next(r["uomid"] for r in dataverse.rows("uom") if r["name"] == "Each")
        return uom, ids

    uom, products = await asyncio.to_thread(catalogue)

    def line(quote_id: str, product: int, quantity: int) -> dict:
        return {"quoteid": ("quote", quote_id), "productid": ("product", products[product]), "uomid": ("uom", uom),
                "quantity": quantity, "priceperunit": 100 + 10 * product}

    def save(quote: DemoQuote) -> None:  # a quote saved with its lines, then activated
        quote.record_id = dataverse.create("quote", {
            "name": f"Quote for {accounts[quote.account].name}", "quotenumber": quote.number,
            "customerid": ("account", accounts[quote.account].record_id), "shipto_country": "United States"})
        for n, product in enumerate(quote.products, 1):
            dataverse.create("quotedetail", line(quote.record_id, product, n))
        dataverse.update("quote", quote.record_id, {"statecode": 1})

    def revise(quote: DemoQuote) -> None:  # Revise, change line 1, remove line 2, add a line, activate
        quote.record_id = dataverse.revise_quote(quote.record_id)
        lines = {r["sequencenumber"]: r["quotedetailid"] for r in dataverse.rows("quotedetail")
                 if r["_quoteid_value"] == quote.record_id}
        dataverse.update("quotedetail", lines[1], {"quantity": 5})
        dataverse.delete("quotedetail", lines[2])
        dataverse.create("quotedetail", line(quote.record_id, 3, 2))
        dataverse.update("quote", quote.record_id, {"statecode": 1})

    for quote in quotes:
        await asyncio.to_thread(save, quote)
    await stack.wait_settled(timeout=25)
    for quote in quotes:
        if quote.revise:
            await asyncio.to_thread(revise, quote)


async def _verify_quotes(stack: LocalStack, quotes: list[DemoQuote]) -> None:
    journal = await stack.ledger().journal_entries(limit=100_000)
    dataverse, fno = stack.sandbox.dataverse, stack.sandbox.fno
    numbers = {r["productid"]: r["productnumber"] for r in dataverse.rows("product")}
    for quote in quotes:
        sales = sorted((r["sequencenumber"], numbers[r["_productid_value"]], float(r["quantity"]))
                       for r in dataverse.rows("quotedetail") if r["_quoteid_value"] == quote.record_id)
        written = sorted((r["LineCreationSequenceNumber"], r["ProductNumber"], float(r["RequestedSalesQuantity"]))
                         for r in fno.rows("CDSSalesQuotationLines", "usmf") if r["SalesQuotationNumber"] == quote.number)
        quote.sales = [f"{n}:{p} x{q:g}" for n, p, q in sales]
        quote.fno = [f"{n}:{p} x{q:g}" for n, p, q in written]
        entries = [e for e in journal if e.record_key == f"quotes:quote:{quote.record_id}"]
        header = fno.get("CDSSalesQuotationHeaders", {"dataAreaId": "usmf", "SalesQuotationNumber": quote.number})
        if quote.expected == "applied":
            quote.outcome = "applied" if header is not None and sales == written else "missing"
            applied = [e for e in entries if e.outcome == "applied"]
            quote.detail = (applied[-1].reason or "") if applied else ""
        else:
            skipped = [e for e in entries if e.outcome == "skipped" and "filtered out" in (e.reason or "")]
            quote.outcome = "skipped" if skipped and header is None else "missing"
            quote.detail = (skipped[-1].reason or "") if skipped else ""


def _print_quotes(quotes: list[DemoQuote]) -> None:
    header = f"{'quote':<8} {'Sales lines (seq:product xqty)':<40} {'F&O lines':<40} {'outcome':<9}"
    print(header)
    print("-" * len(header))
    for q in quotes:
        mark = "ok" if q.outcome == q.expected else "FAILED"
        print(f"{q.number:<8} {' '.join(q.sales)[:40]:<40} {(' '.join(q.fno) or '(none)')[:40]:<40} "
              f"{q.outcome:<9}  {mark}")
        if q.detail:
            print(f"{'':<9} {q.detail}")
    print()


@dataclass
class DemoOrder:
    number: str
    account: int  # index of its customer in the account plan
    products: list[str]  # product numbers of the demo catalogue (made by the quotes part)
    record_id: str = ""
    outcome: str = "missing"
    detail: str = ""
    sales: list[str] = field(default_factory=list)
    fno: list[str] = field(default_factory=list)


async def _play_order(stack: LocalStack, accounts: list[DemoAccount], order: DemoOrder) -> None:
    """A draft order saved with its lines (quantity 3, a $10.00 discount each), then activated (P2C processing
    status Active); F&O owns it afterwards."""
    dataverse = stack.sandbox.dataverse

    def save() -> None:
        ids = {r["productnumber"]: r["productid"] for r in dataverse.rows("product")}
        uom = next(r["uomid"] for r in dataverse.rows("uom") if r["name"] == "Each")
        order.record_id = dataverse.create("salesorder", {
            "name": f"Order for {accounts[order.account].name}", "ordernumber": order.number,
            "customerid": ("account", accounts[order.account].record_id), "shipto_country": "United States",
            "msdynce_processingstatus": processing_status("Draft")})
        for number in order.products:
            dataverse.create("salesorderdetail", {"salesorderid": ("salesorder", order.record_id),
                                                  "productid": ("product", ids[number]), "uomid": ("uom", uom),
                                                  "quantity": 3, "priceperunit": 100, "manualdiscountamount": 10})
        dataverse.update("salesorder", order.record_id, {"msdynce_processingstatus": processing_status("Active")})

    await asyncio.to_thread(save)


async def _verify_order(stack: LocalStack, order: DemoOrder) -> None:
    journal = await stack.ledger().journal_entries(limit=100_000)
    dataverse, fno = stack.sandbox.dataverse, stack.sandbox.fno
    numbers = {r["productid"]: r["productnumber"] for r in dataverse.rows("product")}
    sales = sorted((r["sequencenumber"], numbers[r["_productid_value"]], float(r["quantity"]),
                    float(r["manualdiscountamount"] or 0))
                   for r in dataverse.rows("salesorderdetail") if r["_salesorderid_value"] == order.record_id)
    written = sorted((r["LineCreationSequenceNumber"], r["ProductNumber"], float(r["OrderedSalesQuantity"]),
                      float(r["LineDiscountAmount"]), float(r["FixedPriceCharges"]))
                     for r in fno.rows("CDSSalesOrderLines", "usmf") if r["SalesOrderNumber"] == order.number)
    order.sales = [f"{n}:{p} x{q:g} disc {d:g}" for n, p, q, d in sales]
    order.fno = [f"{n}:{p} x{q:g} disc {d:g}/unit charge {c:g}" for n, p, q, d, c in written]
    applied = [e for e in journal if e.record_key == f"orders:salesorder:{order.record_id}" and e.outcome == "applied"]
    order.detail = (applied[-1].reason or "") if applied else ""
    recombined = [(n, p, q, round(q * d - c, 2)) for n, p, q, d, c in written]  # reference 6.6: 3 x 3.33 + 0.01
    order.outcome = "applied" if applied and recombined == sales else "missing"


def _print_order(order: DemoOrder) -> None:
    mark = "ok" if order.outcome == "applied" else "FAILED"
    print(f"order {order.number}: {order.outcome}  {mark}\n  {order.detail}")
    for sales, written in zip(order.sales, order.fno + [""] * len(order.sales), strict=False):
        print(f"  Sales {sales:<28} F&O {written}")
    print()


async def run_demo(accounts: int = 8, workdir: Path | None = None) -> int:
    """Play the story; 0 when every record ended as expected. ``workdir``: where the ledger and queue files go
    (default .var/demo, emptied first)."""
    started = time.perf_counter()
    workdir = workdir or ROOT / ".var" / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    plan = _plan(accounts)
    contacts = _contact_plan()
    quotes = _quote_plan()
    order = DemoOrder("ORD-D01", account=2, products=["D0001", "D0002", "D0003", "D0004"])
    async with LocalStack(workdir) as stack:
        print(f"sandbox: Dataverse {stack.sandbox.dataverse_url}, F&O {stack.sandbox.fno_url}")
        print(f"local host: {stack.host.base_url if stack.host else '?'} (webhook registered with a function key)")
        print(f"releasing {len(back.FNO_PRODUCTS)} products in F&O (OData, as an F&O user)...\n")
        latencies = await back.release_products(stack)
        settled = await stack.wait_settled(timeout=25)
        products = back.verify_products(stack, latencies)
        back.print_steps("F&O released products -> Sales products (priced in the first price list of their currency)",
                         products)
        print(f"creating {len(plan)} accounts and editing 2 as a Sales user...\n")
        await _play(stack, plan)
        settled = await stack.wait_settled(timeout=25) and settled
        print(f"creating {len(contacts)} contacts (contact persons, person customers, one of a contact) and making "
              "one contact person an active customer...\n")
        await _play_contacts(stack, plan, contacts)
        settled = await stack.wait_settled(timeout=25) and settled
        print(f"saving {len(quotes)} quotes with their lines and activating them (one has a product made in Sales), "
              "then revising one (a line changed, one removed, one added)...\n")
        await _play_quotes(stack, plan, quotes)
        settled = await stack.wait_settled(timeout=25) and settled
        print(f"saving sales order {order.number} with {len(order.products)} lines as a draft, then activating it "
              "(F&O owns it afterwards)...\n")
        await _play_order(stack, plan, order)
        settled = await stack.wait_settled(timeout=25) and settled
        await _verify_order(stack, order)
        _print_order(order)
        print(f"in F&O: confirming {order.number} and calculating its totals (the way back to Sales)...\n")
        came_back = await back.confirm_and_total(stack, order.number)
        settled = await stack.wait_settled(timeout=25) and settled
        story = [back.verify_order_back(stack, order.number, order.record_id, came_back)]
        print(f"in F&O: posting the invoice of {order.number}...\n")
        invoice, invoiced = await back.post_invoice(stack, order.number)
        settled = await stack.wait_settled(timeout=25) and settled
        story.append(back.verify_invoice(stack, invoice, order.number, invoiced))
        print("in F&O: entering order FO-D01 for a customer from Sales, confirming it, calculating totals...\n")
        entered = await back.enter_fno_order(stack, "FO-D01", plan[3].number or "")
        settled = await stack.wait_settled(timeout=25) and settled
        story.append(back.verify_fno_order(stack, "FO-D01", entered))
        back.print_steps("F&O sales orders and invoices -> Sales", story)
        await _verify(stack, plan)
        await _verify_contacts(stack, plan, contacts)
        await _verify_quotes(stack, quotes)
    _print_quotes(quotes)
    _print_contacts(contacts)
    _print(plan, time.perf_counter() - started)
    failed = [a for a in plan if a.outcome != a.expected] + [c for c in contacts if c.outcome != c.kind]
    failed += [q for q in quotes if q.outcome != q.expected]
    failed += [order] if order.outcome != "applied" else []
    failed += [step for step in [*products, *story] if not step.ok]
    if not settled:
        print("the queue did not drain in time")
    if failed or not settled:
        print(f"FAILED: {len(failed)} record(s) did not end as expected")
        return 1
    print("all products, accounts, contacts, quotes and orders ended as expected, both ways")
    return 0


