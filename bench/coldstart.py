"""Figure 5, cold start and memory.

* Import cost: ``import function_app`` in a fresh interpreter that has already imported the platform packages it
  must bind (azure.functions and the Service Bus SDK-type binding extension): what the product adds, median of
  several.
* Memory: the product as its own process (``python -m p2csync run``, the local host) with the sandbox in this
  process; RSS of the host sampled every N/12 of N account events. Its growth per event is the least-squares slope
  over the second half (flat = 0): the first half is where bounded things fill up (SQLite's page caches to their
  cap, the pacer's log to ``max_log``, the allocators' free lists), and its growth is shown beside it. RSS after
  10,000 events: the last sample plus that slope. The same run feeds figure 7: CPU of the sandbox vs the product
  between event N/3 and N.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
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
#: RSS samples per run; the slope is fitted to those of the second half.
SAMPLES = 12


def memory_events() -> int:
    """Events of figure 5's host run (figure 7 reads the same run: ``host_run(memory_events())``)."""
    return pick(12, 6000)


def import_seconds(modules: str, *, after: str | None = None) -> float:
    """Seconds to import ``modules`` in a fresh interpreter, once ``after`` (if any) is imported, untimed."""
    first = f"import {after}; " if after else ""
    code = f"{first}import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "0"})
    return float(done.stdout.strip())


def import_cost(runs: int) -> tuple[float, str]:
    """What ``import function_app`` adds to the platform packages: timed in the interpreter that has just imported
    them. (Stop 14 subtracted two half-second imports timed in separate interpreters; their noise, +-50 ms on this
    machine, was larger than the figure.)"""
    import_seconds("function_app")  # bytecode compiled once, outside the timing
    ours, platform = [], []
    for _ in range(runs):  # interleaved, so a noisy neighbour hits both alike
        ours.append(import_seconds("function_app", after=PLATFORM))
        platform.append(import_seconds(PLATFORM))
    own, base = median(ours), median(platform)
    first = median(first_message_seconds() for _ in range(3))
    return own * 1000, (f"import function_app after the platform packages ({base * 1000:.0f} ms on their own), "
                        f"median of {runs} fresh interpreters; the first message then imports and builds the "
                        f"runtime (mapping files, models, clients, ledger): {first * 1000:.0f} ms, once per worker")


#: What the runtime's first build reads (placeholders: nothing is called; the files are a temporary directory's).
_FIRST_MESSAGE = """
import asyncio, time
import {platform}
import function_app
t = time.perf_counter()
from p2csync.runtime import get_runtime
async def build():
    await get_runtime().aclose()
asyncio.run(build())
print(time.perf_counter() - t)
"""


def first_message_seconds() -> float:
    """Seconds the first invocation spends importing and building the runtime (``function_app`` defers it)."""
    with tempfile.TemporaryDirectory(prefix="p2c-bench-cold-") as tmp:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0", "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
               "FNO_URL": "https://contoso.operations.dynamics.com", "FNO_DEFAULT_COMPANY": "usmf",
               "P2C_AUTH_MODE": "static", "P2C_STATIC_TOKEN": "cold-start", "P2C_LEDGER_PATH": f"{tmp}/ledger.sqlite",
               "P2C_LOCAL_QUEUE_PATH": f"{tmp}/queue.sqlite"}
        done = subprocess.run([sys.executable, "-c", _FIRST_MESSAGE.format(platform=PLATFORM)], cwd=ROOT,
                              capture_output=True, text=True, check=True, env=env)
    return float(done.stdout.strip().splitlines()[-1])


@dataclass
class HostRun:
    """One host run: RSS after ``events``; growth per event over the second half (KB, a least-squares slope) and over
    the first (``fill_kb``); CPU of each side and wall time between event ``events // 3`` and ``events``."""

    events: int
    rss_mb: float
    growth_kb: float
    host_cpu: float
    sandbox_cpu: float
    seconds: float
    fill_kb: float = 0.0
    samples: tuple[tuple[int, int], ...] = ()  # (events, RSS KB)


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
    """N account events through the local host as a separate process, in SAMPLES batches (RSS after each drained
    batch); cached for figure 7."""
    global _cached
    if _cached is not None and _cached.events == events:
        return _cached
    first = max(1, events // 3)
    step = max(1, events // SAMPLES)
    ends = sorted({*range(step, events, step), first, events})
    samples: list[tuple[int, int]] = []
    cpu_host = cpu_self = started = 0.0  # set when event `first` is drained
    with SandboxServer(dataverse=Dataverse(webhook_workers=WEBHOOK_WORKERS)) as sandbox:
        async with host_process(sandbox) as host:
            done = 0
            for batch, end in enumerate(ends):
                await asyncio.to_thread(create_accounts, sandbox, f"M{batch:03d}", end - done)
                await host.drain()
                done = end
                samples.append((done, _rss_kb(host.pid)))
                if done == first:
                    cpu_host, cpu_self, started = _cpu_seconds(host.pid), time.process_time(), time.perf_counter()
            seconds = time.perf_counter() - started
            host_cpu, sandbox_cpu = _cpu_seconds(host.pid) - cpu_host, time.process_time() - cpu_self
            customers = len(sandbox.fno.rows("CustomersV3"))
            if customers != events:
                raise RuntimeError(f"{customers} customers for {events} events: {host.log.read_text()[-2000:]}")
    half = [sample for sample in samples if sample[0] >= events / 2]
    growth = _slope(half)
    fill = _slope([sample for sample in samples if sample[0] <= half[0][0]])
    _cached = HostRun(events, samples[-1][1] / 1024, growth, host_cpu, sandbox_cpu, seconds, fill, tuple(samples))
    return _cached


def _slope(samples: list[tuple[int, int]]) -> float:
    """KB per event: the least-squares slope of RSS over events (one allocator step weighs less than between two
    samples); 0 for fewer than two samples."""
    if len(samples) < 2:
        return 0.0
    return statistics.linear_regression([float(n) for n, _ in samples], [float(kb) for _, kb in samples]).slope


async def run() -> list[Figure]:
    bench = "5 cold start and memory"
    ms, detail = await asyncio.to_thread(import_cost, pick(1, 7))
    progress(f"cold start: own import cost {ms:.0f} ms ({detail})")
    figures = [at_most(bench, "own import cost (function_app - platform packages)", round(ms, 1), 40, "ms", detail)]
    events = memory_events()
    host = await host_run(events)
    at_target = host.rss_mb + max(0.0, host.growth_kb) * max(0, TARGET_EVENTS - events) / 1024
    half = next(n for n, _ in host.samples if n >= events / 2)
    progress(f"memory: RSS {host.rss_mb:.0f} MB after {events} events, {host.growth_kb:.2f} KB/event over the second "
             f"half ({host.fill_kb:.2f} KB/event over the first)")
    figures.append(at_most(bench, f"host RSS after {TARGET_EVENTS} events (extrapolated)", round(at_target, 1), 150,
                           "MB", f"{host.rss_mb:.1f} MB measured after {events} events, sandbox in another process"))
    figures.append(at_most(bench, "RSS growth per event", round(host.growth_kb, 2), 1, "KB",
                           f"slope over events {half}-{events} (flat: ~0; 1 KB allows allocator noise); "
                           f"{host.fill_kb:.2f} KB/event over events {host.samples[0][0]}-{half}, while bounded caches fill"))
    return figures
