"""The product as its own process, as users run it locally: ``python -m p2csync run`` (the local host: webhook,
embedded queue, queue trigger) against a sandbox in this process, with the webhook registered in the sandbox's
Dataverse. Figures 1, 5 and 7 drive it, so what they measure is the product's process, not this one."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from mappings import load_mappings
from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.queue.embedded import EmbeddedQueue
from p2csync.registration import register
from p2csync.settings import ROOT
from sandbox.server import SandboxServer

KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HostProcess:
    proc: subprocess.Popen[bytes]
    sandbox: SandboxServer
    queue: EmbeddedQueue
    log: Path
    ledger_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def drain(self, timeout: float = 300, poll: float = 0.005) -> float:
        """Wait until every webhook was delivered and the queue holds nothing; the perf_counter time it saw it."""
        deadline = time.monotonic() + timeout
        webhooks = self.sandbox.dataverse.webhooks
        while time.monotonic() < deadline:
            if webhooks.pending == 0:
                counts = await asyncio.to_thread(self.queue.counts, "sales-events")
                if counts.active == counts.scheduled == counts.locked == 0 and webhooks.pending == 0:
                    return time.perf_counter()
            if self.proc.poll() is not None:
                raise RuntimeError(f"the host exited: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(poll)
        raise TimeoutError(f"the host did not drain its queue: {self.log.read_text()[-2000:]}")


@asynccontextmanager
async def host_process(sandbox: SandboxServer, *, max_concurrent_calls: int | None = None) -> AsyncIterator[HostProcess]:
    """Register the webhook in ``sandbox``, start the local host on a free port, stop it on exit."""
    dataverse = sandbox.dataverse
    with tempfile.TemporaryDirectory(prefix="p2c-bench-host-") as tmp:
        env = {**os.environ, "DATAVERSE_URL": sandbox.dataverse_url, "FNO_URL": sandbox.fno_url,
               "FNO_DEFAULT_COMPANY": "usmf", "P2C_AUTH_MODE": "static",
               "P2C_STATIC_TOKEN": dataverse.integration_user.token,
               "INTEGRATION_USER_IDS": dataverse.integration_user.id,
               "P2C_LEDGER_PATH": f"{tmp}/ledger.sqlite", "P2C_LOCAL_QUEUE_PATH": f"{tmp}/queue.sqlite"}
        port = free_port()
        log = Path(tmp) / "host.log"
        async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(dataverse.integration_user.token),
                                   tag=None) as dv:
            await register(dv, load_mappings(ROOT / "mappings"), key=KEY, out=lambda line: None,
                           url=f"http://127.0.0.1:{port}/api/dataverse/webhook")
        args = ["--port", str(port), "--function-key", KEY, "--settings", f"{tmp}/absent.json"]
        if max_concurrent_calls is not None:
            args += ["--max-concurrent-calls", str(max_concurrent_calls)]
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "p2csync", "run", *args], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while b"local host ready" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"host did not start: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.05)
            queue = EmbeddedQueue(Path(tmp) / "queue.sqlite")
            try:
                yield HostProcess(proc, sandbox, queue, log, Path(tmp) / "ledger.sqlite")
            finally:
                queue.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
