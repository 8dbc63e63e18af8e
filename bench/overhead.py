"""Figure 1, overhead: the real path (webhook -> queue -> handler -> mapping -> connector -> sandbox over
loopback) against a bare httpx loop that replays exactly the requests the product made, with the same
bodies, one record's calls in order, the same number of records in flight, on a fresh sandbox with the same
injected latency."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import httpx

from bench.common import Call, Figure, at_most, pick, progress
from bench.world import create_accounts, local_world, settle
from sandbox.server import SandboxServer

CONCURRENCY = 16  # LocalStack's max_concurrent_calls: handler invocations in flight
SKIP_HEADERS = {"host", "content-length", "connection", "accept-encoding", "user-agent"}


def chains(calls: list[Call]) -> list[list[Call]]:
    """The calls grouped per change (the correlation id the connectors send), in the order they were made."""
    grouped: dict[str, list[Call]] = defaultdict(list)
    for index, call in enumerate(calls):
        grouped[call.correlation or f"uncorrelated-{index}"].append(call)
    return list(grouped.values())


async def bare_loop(sandbox: SandboxServer, work: list[list[Call]], concurrency: int) -> float:
    """Replay the chains with plain httpx at the given concurrency; seconds from first to last answer."""
    urls = {"dataverse": sandbox.dataverse_url, "fno": sandbox.fno_url}
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=60) as client:
        gate = asyncio.Semaphore(concurrency)

        async def run(chain: list[Call]) -> None:
            async with gate:
                for call in chain:
                    headers = {k: v for k, v in call.headers.items() if k not in SKIP_HEADERS}
                    url = f"{urls[call.system]}{call.path}" + (f"?{call.query}" if call.query else "")
                    response = await client.request(call.method, url, content=call.body or None, headers=headers)
                    await response.aread()

        started = time.perf_counter()
        await asyncio.gather(*(run(chain) for chain in work))
        return time.perf_counter() - started


async def one(latency: float, records: int) -> tuple[float, float, int]:
    """(real seconds, bare seconds, calls per record) for `records` account creates."""
    async with local_world(CONCURRENCY) as (stack, dv_rec, fno_rec):
        sandbox = stack.sandbox
        await asyncio.to_thread(create_accounts, sandbox, "WARM", 4)  # cold caches are figure 2's business
        await settle(stack)
        for sim in (sandbox.dataverse, sandbox.fno):
            if latency:
                sim.faults.latency(latency)
        dv_rec.calls.clear()
        fno_rec.calls.clear()
        started = time.perf_counter()
        await asyncio.to_thread(create_accounts, sandbox, "OVH", records)
        real = await settle(stack) - started
        made = [c for c in dv_rec.calls + fno_rec.calls]
        made.sort(key=lambda c: 0)  # keep recording order within each system
    work = chains(fno_rec.calls + dv_rec.calls)
    with SandboxServer() as fresh:
        if latency:
            fresh.dataverse.faults.latency(latency)
            fresh.fno.faults.latency(latency)
        bare = await bare_loop(fresh, work, CONCURRENCY)
    return real, bare, round(len(made) / records)


async def run() -> list[Figure]:
    figures = []
    for latency, limit, records in ((0.05, 1.10, pick(8, 320)), (0.0, 1.4, pick(8, 320))):
        ratios = []
        for attempt in range(pick(1, 3)):
            real, bare, per = await one(latency, records)
            ratios.append(real / bare)
            progress(f"overhead {latency * 1000:.0f} ms run {attempt + 1}: real {real:.2f}s, bare {bare:.2f}s, "
                     f"ratio {real / bare:.2f} ({records} accounts, {per} calls each)")
        ratios.sort()
        figures.append(at_most("1 overhead", f"real path / bare httpx, {latency * 1000:.0f} ms latency",
                               round(ratios[len(ratios) // 2], 3), limit, "x",
                               f"median of {len(ratios)}: {', '.join(f'{r:.2f}' for r in ratios)}; "
                               f"{records} account creates, {CONCURRENCY} in flight"))
    return figures
