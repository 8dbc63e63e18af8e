"""Figure 1, overhead: the real path (webhook -> queue -> handler -> mapping -> connector -> sandbox over
loopback) against a bare httpx loop that replays exactly the requests the product made, with the same bodies,
one record's calls in order, the same number of records in flight, on a fresh sandbox with the same injected
latency.

Both clients run as their own process beside the sandbox (this process): the product as users run it locally
(``python -m p2csync run``, bench/host.py), the bare loop as ``python -m bench.bare_client``. The real path is
timed from the release of the webhooks (the accounts are made first, with delivery held, since making them is
the user's work, not the product's) until every webhook was delivered and the queue is empty; the bare loop from
its first request to its last answer."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.common import Call, Figure, at_most, pick, progress
from bench.host import host_process
from bench.world import create_accounts, recorded_sandbox
from p2csync.settings import ROOT
from sandbox.server import SandboxServer

CONCURRENCY = 16  # the local host's max concurrent calls: handler invocations in flight
SKIP_HEADERS = {"host", "content-length", "connection", "accept-encoding", "user-agent"}


def chains(calls: list[Call]) -> list[list[Call]]:
    """The calls grouped per change (the correlation id the connectors send), in the order they were made."""
    grouped: dict[str, list[Call]] = defaultdict(list)
    for index, call in enumerate(calls):
        grouped[call.correlation or f"uncorrelated-{index}"].append(call)
    return list(grouped.values())


def bare_seconds(sandbox: SandboxServer, work: list[list[Call]], concurrency: int) -> float:
    """Replay the chains with the bare client (its own process) against ``sandbox``."""
    with tempfile.TemporaryDirectory(prefix="p2c-bench-bare-") as tmp:
        chains_file, urls_file = Path(tmp) / "chains.json", Path(tmp) / "urls.json"
        chains_file.write_text(json.dumps([[{
            "system": c.system, "method": c.method, "path": c.path, "query": c.query,
            "headers": {k: v for k, v in c.headers.items() if k not in SKIP_HEADERS},
            "body": base64.b64encode(c.body).decode()} for c in chain] for chain in work]))
        urls_file.write_text(json.dumps({"dataverse": sandbox.dataverse_url, "fno": sandbox.fno_url}))
        done = subprocess.run([sys.executable, "-m", "bench.bare_client", str(chains_file), str(urls_file),
                               str(concurrency)], cwd=ROOT, capture_output=True, text=True, check=True, timeout=600)
        return float(done.stdout.strip())


async def one(latency: float, records: int) -> tuple[float, float, int]:
    """(real seconds, bare seconds, calls per record) for `records` account creates."""
    sandbox, dv_rec, fno_rec = recorded_sandbox()
    with sandbox:
        async with host_process(sandbox, max_concurrent_calls=CONCURRENCY) as host:
            await asyncio.to_thread(create_accounts, sandbox, "WARM", 4)  # cold caches are figure 2's business
            await host.drain()
            for sim in (sandbox.dataverse, sandbox.fno):
                if latency:
                    sim.faults.latency(latency)
            webhooks = sandbox.dataverse.webhooks
            webhooks.pause()
            await asyncio.to_thread(create_accounts, sandbox, "OVH", records)
            dv_rec.calls.clear()
            fno_rec.calls.clear()
            started = time.perf_counter()
            webhooks.resume()
            real = await host.drain() - started
            made = [*fno_rec.calls, *dv_rec.calls]
            customers = len(sandbox.fno.rows("CustomersV3"))
        if customers < records:
            raise RuntimeError(f"{customers} customers after {records} account events")
    fresh = SandboxServer()
    with fresh:
        if latency:
            fresh.dataverse.faults.latency(latency)
            fresh.fno.faults.latency(latency)
        bare = await asyncio.to_thread(bare_seconds, fresh, chains(made), CONCURRENCY)
    return real, bare, round(len(made) / records)


async def run() -> list[Figure]:
    figures = []
    for latency, limit, records in ((0.05, 1.10, pick(8, 400)), (0.0, 1.4, pick(8, 400))):
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
                               f"{records} account creates, {CONCURRENCY} in flight; product and bare client each "
                               "in its own process, the sandbox in a third"))
    return figures
