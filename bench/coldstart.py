"""Figure 5, cold start and memory.

* Import cost: ``import function_app`` minus importing the platform packages it must bind (azure.functions
  and the Service Bus SDK-type binding extension), each timed inside a fresh interpreter, median of several.
* Memory: the product as its own process (``python -m p2csync run``, the local host) with the sandbox in this
  process; RSS of the host after N account events, and its growth per event between N/3 and N (flat = 0),
  extrapolated to 10,000 events. The same run feeds figure 7 (CPU of the sandbox vs the product).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Figure, at_most, median, pick, progress
from bench.host import host_process
from bench.world import WEBHOOK_WORKERS, create_accounts
from p2csync.settings import ROOT
from sandbox.dataverse import Dataverse
from sandbox.server import SandboxServer

PLATFORM = "azure.functions, azurefunctions.extensions.bindings.servicebus"
TARGET_EVENTS = 10_000


def import_seconds(modules: str) -> float:
    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "0"})
    return float(done.stdout.strip())


def import_cost(runs: int) -> tuple[float, str]:
    import_seconds("function_app")  # bytecode compiled once, outside the timing
    ours, platform = [], []
    for _ in range(runs):  # interleaved, so a noisy neighbour hits both alike
        ours.append(import_seconds("function_app"))
        platform.append(import_seconds(PLATFORM))
    full, base = median(ours), median(platform)
    return (full - base) * 1000, f"function_app {full * 1000:.0f} ms - platform {base * 1000:.0f} ms, median of {runs}"


@dataclass
class HostRun:
    events: int
    rss_mb: float
    growth_kb: float
    host_cpu: float
    sandbox_cpu: float
    seconds: float


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_cached: HostRun | None = None


async def host_run(events: int) -> HostRun:
    """N account events through the local host as a separate process; cached for figure 7."""
    global _cached
    if _cached is not None and _cached.events == events:
        return _cached
    with SandboxServer(dataverse=Dataverse(webhook_workers=WEBHOOK_WORKERS)) as sandbox:
        async with host_process(sandbox) as host:
            first = max(1, events // 3)
            await asyncio.to_thread(create_accounts, sandbox, "MEMA", first)
            await host.drain()
            rss_first = _rss_kb(host.pid)
            cpu_host, cpu_self, started = _cpu_seconds(host.pid), time.process_time(), time.perf_counter()
            await asyncio.to_thread(create_accounts, sandbox, "MEMB", events - first)
            await host.drain()
            seconds = time.perf_counter() - started
            host_cpu, sandbox_cpu = _cpu_seconds(host.pid) - cpu_host, time.process_time() - cpu_self
            rss = _rss_kb(host.pid)
            customers = len(sandbox.fno.rows("CustomersV3"))
            if customers != events:
                raise RuntimeError(f"{customers} customers for {events} events: {host.log.read_text()[-2000:]}")
    _cached = HostRun(events, rss / 1024, (rss - rss_first) / (events - first), host_cpu, sandbox_cpu, seconds)
    return _cached


async def run() -> list[Figure]:
    bench = "5 cold start and memory"
    ms, detail = await asyncio.to_thread(import_cost, pick(1, 7))
    progress(f"cold start: own import cost {ms:.0f} ms ({detail})")
    figures = [at_most(bench, "own import cost (function_app - platform packages)", round(ms, 1), 40, "ms", detail)]
    events = pick(12, 1500)
    host = await host_run(events)
    at_target = host.rss_mb + max(0.0, host.growth_kb) * (TARGET_EVENTS - events) / 1024
    progress(f"memory: RSS {host.rss_mb:.0f} MB after {events} events, {host.growth_kb:.2f} KB/event")
    figures.append(at_most(bench, f"host RSS after {TARGET_EVENTS} events (extrapolated)", round(at_target, 1), 150,
                           "MB", f"{host.rss_mb:.1f} MB measured after {events} events, sandbox in another process"))
    figures.append(at_most(bench, "RSS growth per event", round(host.growth_kb, 2), 1, "KB",
                           f"between event {max(1, events // 3)} and {events} (flat: ~0; 1 KB allows allocator noise)"))
    return figures
