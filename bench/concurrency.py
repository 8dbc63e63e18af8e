"""Figure 4, concurrency efficiency: 200 ms latency on every F&O call, 32 in flight. Ideal = records x calls
per record x 200 ms / 32; efficiency = ideal / measured, for the event path (webhooks -> queue -> handler) and
for a backfill (``p2csync.ops.backfill``: the source paged, one resync message per record, applied by the
same handler). Timed from the first F&O request to the last answer, so the ramp-up of the product's adaptive
concurrency counts; end to end (from the first Sales write) is in the detail.

The product runs as its own process (bench/host.py: ``python -m p2csync run`` with 32 concurrent calls), the
sandbox in this one. The detail also gives the same figure for a bare httpx loop, as its own process, replaying
the product's F&O calls (bench/overhead.py) on a fresh sandbox with the same latency and 32 in flight: what any
client reaches against this sandbox on this machine; the gap between the two is the product's.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import Call, Figure, at_least, pick, progress
from bench.host import host_process
from bench.overhead import bare_seconds, chains
from bench.world import create_accounts, recorded_sandbox
from mappings import load_mappings
from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.ledger.sqlite import SqliteLedger
from p2csync.ops.backfill import backfill, wait_applied
from p2csync.queue.embedded import EmbeddedTransport
from p2csync.settings import ROOT
from sandbox.server import SandboxServer

LATENCY, IN_FLIGHT = 0.2, 32


def efficiency(calls: list[Call], started: float, settled: float) -> tuple[float, str]:
    ok = [c for c in calls if c.status is not None and c.status < 400]
    ideal = len(ok) * LATENCY / IN_FLIGHT
    span = max(c.ended for c in ok) - min(c.started for c in ok)
    return ideal / span, (f"{len(ok)} F&O calls in {span:.2f} s (ideal {ideal:.2f} s); end to end "
                          f"{settled - started:.2f} s ({ideal / (settled - started) * 100:.0f}%)")


async def bare_reference(calls: list[Call]) -> str:
    """The same calls replayed by a bare httpx loop on a fresh sandbox, same latency and concurrency."""
    ok = [c for c in calls if c.status is not None and c.status < 400]
    with SandboxServer() as fresh:
        fresh.fno.faults.latency(LATENCY)
        seconds = await asyncio.to_thread(bare_seconds, fresh, chains(ok), IN_FLIGHT)
    return f"; a bare httpx loop making the same calls: {len(ok) * LATENCY / IN_FLIGHT / seconds * 100:.0f}%"


async def event_path(records: int) -> tuple[float, str]:
    sandbox, _dv_rec, fno_rec = recorded_sandbox()
    with sandbox:
        async with host_process(sandbox, max_concurrent_calls=IN_FLIGHT) as host:
            await asyncio.to_thread(create_accounts, sandbox, "WARM", 2)
            await host.drain()
            sandbox.fno.faults.latency(LATENCY)
            fno_rec.calls.clear()
            started = time.perf_counter()
            await asyncio.to_thread(create_accounts, sandbox, "CON", records)
            settled = await host.drain()
            value, detail = efficiency(fno_rec.calls, started, settled)
            calls = list(fno_rec.calls)
    return value, detail + await bare_reference(calls)


async def backfill_path(records: int) -> tuple[float, str]:
    """``p2csync backfill`` from this process (it pages Dataverse and enqueues one resync per record) into the
    host's queue; the host process applies them, as the operator command does against a running host."""
    sandbox, _dv_rec, fno_rec = recorded_sandbox()
    with sandbox:
        async with host_process(sandbox, max_concurrent_calls=IN_FLIGHT) as host:
            sandbox.dataverse.webhooks.pause()  # records made "before the integration": no events
            await asyncio.to_thread(create_accounts, sandbox, "BF", records)
            sandbox.dataverse.webhooks.clear()
            sandbox.fno.faults.latency(LATENCY)
            fno_rec.calls.clear()
            spec = load_mappings(ROOT / "mappings")["accounts"]
            tokens = StaticTokenProvider(sandbox.dataverse.integration_user.token)
            with SqliteLedger(host.ledger_path) as ledger:
                async with DataverseClient(sandbox.dataverse_url, tokens, tag=None) as dataverse:
                    started = time.perf_counter()
                    report = await backfill(spec, dataverse, EmbeddedTransport(host.queue), ledger, "sales-events")
                    report = await wait_applied(ledger, report, timeout=300, poll=0.05)
                    settled = time.perf_counter()
            assert report.outcomes == {"applied": records}, report.outcomes
            return efficiency(fno_rec.calls, started, settled)


async def run() -> list[Figure]:
    bench = "4 concurrency efficiency"
    records = pick(8, 480)
    figures = []
    for label, path in (("event path", event_path), ("backfill", backfill_path)):
        value, detail = await path(records)
        progress(f"concurrency {label}: {value * 100:.0f}% ({detail})")
        figures.append(at_least(bench, f"{label}: share of ideal throughput, {records} accounts",
                                round(value * 100, 1), 95, "%", detail))
    return figures
