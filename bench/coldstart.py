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
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Figure, at_most, median, pick, progress
from bench.world import WEBHOOK_WORKERS, create_accounts
from mappings import load_mappings
from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.queue.embedded import EmbeddedQueue
from p2csync.registration import register
from p2csync.settings import ROOT
from sandbox.dataverse import Dataverse
from sandbox.server import SandboxServer

PLATFORM = "azure.functions, azurefunctions.extensions.bindings.servicebus"
KEY = "bench-key"
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drain(sandbox: SandboxServer, queue: EmbeddedQueue, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sandbox.dataverse.webhooks.pending == 0:
            counts = await asyncio.to_thread(queue.counts, "sales-events")
            if counts.active == counts.scheduled == counts.locked == 0:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError("the host did not drain its queue")


_cached: HostRun | None = None


async def host_run(events: int) -> HostRun:
    """N account events through the local host as a separate process; cached for figure 7."""
    global _cached
    if _cached is not None and _cached.events == events:
        return _cached
    with tempfile.TemporaryDirectory(prefix="p2c-bench-host-") as tmp, SandboxServer(
            dataverse=Dataverse(webhook_workers=WEBHOOK_WORKERS)) as sandbox:
        dataverse = sandbox.dataverse
        env = {**os.environ, "DATAVERSE_URL": sandbox.dataverse_url, "FNO_URL": sandbox.fno_url,
               "FNO_DEFAULT_COMPANY": "usmf", "P2C_AUTH_MODE": "static",
               "P2C_STATIC_TOKEN": dataverse.integration_user.token,
               "INTEGRATION_USER_IDS": dataverse.integration_user.id,
               "P2C_LEDGER_PATH": f"{tmp}/ledger.sqlite", "P2C_LOCAL_QUEUE_PATH": f"{tmp}/queue.sqlite"}
        port = _free_port()
        log = Path(tmp) / "host.log"
        async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(dataverse.integration_user.token),
                                   tag=None) as dv:
            await register(dv, load_mappings(ROOT / "mappings"), key=KEY, out=lambda line: None,
                           url=f"http://127.0.0.1:{port}/api/dataverse/webhook")
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "p2csync", "run", "--port", str(port), "--function-key",
                                     KEY, "--settings", f"{tmp}/absent.json"], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while b"local host ready" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"host did not start: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.05)
            queue = EmbeddedQueue(Path(tmp) / "queue.sqlite")
            first = max(1, events // 3)
            await asyncio.to_thread(create_accounts, sandbox, "MEMA", first)
            await _drain(sandbox, queue)
            rss_first = _rss_kb(proc.pid)
            cpu_host, cpu_self, started = _cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
            await asyncio.to_thread(create_accounts, sandbox, "MEMB", events - first)
            await _drain(sandbox, queue)
            seconds = time.perf_counter() - started
            host_cpu, sandbox_cpu = _cpu_seconds(proc.pid) - cpu_host, time.process_time() - cpu_self
            rss = _rss_kb(proc.pid)
            customers = len(sandbox.fno.rows("CustomersV3"))
            if customers != events:
                raise RuntimeError(f"{customers} customers for {events} events: {log.read_text()[-2000:]}")
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
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
