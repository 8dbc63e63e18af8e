"""The local host killed mid-run (SIGKILL) and restarted: every accepted event ends applied or dead-lettered.

The host runs as a real subprocess (`python -m p2csync run`), the sandbox in this process; F&O answers
slowly, so the kill lands while messages are locked and records are leased.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.ledger.sqlite import SqliteLedger
from p2csync.queue.embedded import EmbeddedQueue
from p2csync.registration import register
from p2csync.settings import ROOT
from mappings import load_mappings
from sandbox.server import SandboxServer

pytestmark = pytest.mark.e2e

ACCOUNTS = 16
KEY = "crash-test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HostProcess:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2csync", "run", "--port", str(self.port), "--function-key", KEY,
             "--settings", str(self.log.parent / "absent.json")],
            cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if b"local host ready" in self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"host exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError("host did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)



async def test_killed_host_restarts_and_every_accepted_event_ends_applied_or_dead_lettered(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    dataverse = sandbox.dataverse
    env = {
        **os.environ,
        "DATAVERSE_URL": sandbox.dataverse_url,
        "FNO_URL": sandbox.fno_url,
        "P2C_AUTH_MODE": "static",
        "P2C_STATIC_TOKEN": dataverse.integration_user.token,
        "INTEGRATION_USER_IDS": dataverse.integration_user.id,
        "P2C_LEDGER_PATH": str(tmp_path / "ledger.sqlite"),
        "P2C_LOCAL_QUEUE_PATH": str(tmp_path / "queue.sqlite"),
        "P2C_LOCAL_LOCK_SECONDS": "2",
    }
    port = _free_port()
    host = HostProcess(env, port, tmp_path / "host.log")
    async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(dataverse.integration_user.token),
                               tag=None) as dv:
        await register(dv, load_mappings(ROOT / "mappings"), key=KEY, out=lambda line: None,
                       url=f"http://127.0.0.1:{port}/api/dataverse/webhook")
    sandbox.fno.faults.latency(1.5, method="POST")  # slow F&O creates: the kill lands mid-write
    usd = next(r["transactioncurrencyid"] for r in dataverse.rows("transactioncurrency")
               if r["isocurrencycode"] == "USD")
    try:
        host.start()
        ids = [dataverse.create("account", {"name": f"Crash {i}", "accountnumber": f"CR-{i:03d}",
                                            "transactioncurrencyid": ("transactioncurrency", usd)})
               for i in range(ACCOUNTS)]
        assert await dataverse.wait_idle_async(20)
        accepted = [j for j in dataverse.system_jobs() if j.statuscode == 30]
        assert len(accepted) == ACCOUNTS  # every webhook answered 2xx: these events must not be lost
        await asyncio.sleep(0.3)
        host.kill()
        created_before_restart = len(sandbox.fno.rows("CustomersV3"))
        assert created_before_restart < ACCOUNTS, "the kill came too late to test anything"

        host.start()
        queue = EmbeddedQueue(tmp_path / "queue.sqlite")
        deadline = time.monotonic() + 90  # generous: the machine may be shared; convergence is what counts
        while time.monotonic() < deadline:
            counts = queue.counts("sales-events")
            if counts.active == counts.scheduled == counts.locked == 0:
                break
            await asyncio.sleep(0.1)
        counts = queue.counts("sales-events")
        assert counts.active == counts.scheduled == counts.locked == 0, counts
    finally:
        host.stop()

    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    journal = await ledger.journal_entries(limit=10_000)
    assert queue.peek_dead_letters("sales-events") == []  # every account is valid: none may be dead-lettered
    for job in accepted:
        outcomes = {e.outcome for e in journal if e.message_key.endswith(f":{job.id}")}
        assert "applied" in outcomes, (job.record_id, outcomes)
    # The dead host's leases end within one (default, renewed) lease: messages that found their record held
    # come back when it ends rather than burning their deferrals.
    deferrals: dict[str, int] = {}
    for entry in journal:
        if entry.outcome == "deferred":
            deferrals[entry.message_key] = deferrals.get(entry.message_key, 0) + 1
    print(f"deferrals per message after the kill: {sorted(deferrals.values(), reverse=True)}")
    assert max(deferrals.values(), default=0) <= 4, deferrals
    waits = [line for line in (tmp_path / "host.log").read_text().splitlines() if "is held by" in line]
    assert all("s more; message" in line for line in waits)
    numbers = sorted(r["CustomerAccount"] for r in sandbox.fno.rows("CustomersV3"))
    assert numbers == [f"CR-{i:03d}" for i in range(ACCOUNTS)]  # all there, none twice
    assert len(ids) == ACCOUNTS
