"""Figure 2, calls per record, counted from the simulators' request logs (what the product sent to each API)
in the real local world: account create, account update, an order with 20 lines, and the currency lookups of
a cold process (identical lookups must be single-flight, then cached)."""

from __future__ import annotations

import asyncio
from collections import Counter

from bench.common import Figure, at_most, pick, progress
from bench.world import account_attrs, create_accounts, local_world, settle
from sandbox.dataverse_tables import processing_status
from tests.e2e.test_orders_e2e import draft_order
from tests.e2e.test_quotes_e2e import catalogue


async def run() -> list[Figure]:
    bench = "2 calls per record"
    figures: list[Figure] = []
    async with local_world() as (stack, dv_rec, fno_rec):
        sandbox = stack.sandbox
        dataverse = sandbox.dataverse
        # Cold process: a burst of accounts with one currency; the lookups a cold cache makes are counted.
        burst = pick(4, 8)
        await asyncio.to_thread(create_accounts, sandbox, "COLD", burst)
        await settle(stack)
        lookups = [c for c in dv_rec.calls if "transactioncurrencies" in c.path]
        figures.append(at_most(bench, f"currency lookups, cold process, {burst} accounts at once",
                               len(lookups), 1, "calls", "identical lookups single-flight, then cached"))

        summary: dict[str, str] = {}

        def counted(label: str) -> tuple[int, int]:
            fno_calls = len(fno_rec.calls)
            dv_reads = len([c for c in dv_rec.calls if c.method == "GET"])
            seen = Counter(f"{c.system} {c.method} {c.path.split('(')[0]}" for c in fno_rec.calls + dv_rec.calls)
            summary[label] = ", ".join(f"{n}x {what}" for what, n in seen.items())
            progress(f"calls: {label}: {fno_calls} F&O, {dv_reads} Dataverse reads ({summary[label]})")
            return fno_calls, dv_reads

        def clear() -> None:
            dv_rec.calls.clear()
            fno_rec.calls.clear()

        clear()
        account_id = await asyncio.to_thread(dataverse.create, "account", account_attrs(sandbox, "CALLS-1"))
        await settle(stack)
        fno_calls, dv_reads = counted("account create")
        figures.append(at_most(bench, "account create: F&O calls", fno_calls, 1, "calls"))
        figures.append(at_most(bench, "account create: Dataverse reads", dv_reads, 0, "calls"))

        clear()
        # A later edit, as a user makes one: modifiedon has whole seconds, and an update in the same second as the
        # state last applied is a tie that the product re-reads on purpose (only the fetched row is sure newest).
        await asyncio.sleep(1.1)
        await asyncio.to_thread(dataverse.update, "account", account_id, {"telephone1": "+1 425 555 0199"})
        await settle(stack)
        fno_calls, dv_reads = counted("account update")
        figures.append(at_most(bench, "account update: F&O calls", fno_calls, 1, "calls"))
        figures.append(at_most(bench, "account update: Dataverse reads (post image complete)", dv_reads, 0,
                               "calls", summary["account update"]))

        lines = 20
        uom, products = await asyncio.to_thread(catalogue, dataverse, sandbox.fno, lines)
        order_id = await asyncio.to_thread(draft_order, dataverse, "BENCH-ORD-1", account_id, uom, products)
        await settle(stack)
        clear()
        await asyncio.to_thread(dataverse.update, "salesorder", order_id,
                                {"msdynce_processingstatus": processing_status("Active")})
        await settle(stack)
        fno_calls, dv_reads = counted(f"order with {lines} lines")
        figures.append(at_most(bench, f"order with {lines} lines: F&O calls", fno_calls, 3, "calls",
                               summary[f"order with {lines} lines"]))
        figures.append(at_most(bench, f"order with {lines} lines: Dataverse calls", len(dv_rec.calls), 3, "calls",
                               f"{dv_reads} reads"))
    return figures
