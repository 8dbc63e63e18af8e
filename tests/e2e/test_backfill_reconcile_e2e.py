"""backfill, reconcile and the scheduled catch-up against the local world (LocalStack): the functions of
p2csync/ops on the stack's runtime (its connectors, ledger and queue), the local host applying what they send."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from p2csync.devstack import LocalStack
from p2csync.ops.backfill import backfill, load_checkpoint, wait_applied
from p2csync.ops.reconcile import reconcile
from p2csync.queue.embedded import EmbeddedTransport
from sandbox.server import SandboxServer

pytestmark = pytest.mark.e2e


def _seed_accounts(sandbox: SandboxServer, count: int, prefix: str) -> list[str]:
    """Accounts that were in Sales before the integration: made before the webhook is registered (no event).
    The sandbox's alternate-key check scans every row (quadratic over 5,000 creates); the numbers here are
    unique by construction, so the seeding skips it."""
    dv = sandbox.dataverse
    usd = next(r for r in dv.rows("transactioncurrency") if r["isocurrencycode"] == "USD")
    check = dv._check_alternate_keys
    dv._check_alternate_keys = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        return [dv.create("account", {"name": f"Backfill {i}", "accountnumber": f"{prefix}{i:05d}",
                                      "transactioncurrencyid": ("transactioncurrency", usd["transactioncurrencyid"])})
                for i in range(count)]
    finally:
        dv._check_alternate_keys = check  # type: ignore[method-assign]


def _customers(stack: LocalStack, prefix: str) -> list[dict[str, Any]]:
    return [r for r in stack.sandbox.fno.rows("CustomersV3") if str(r["CustomerAccount"]).startswith(prefix)]


async def test_a_5000_account_backfill_killed_halfway_and_resumed_syncs_every_record_once(tmp_path: Path) -> None:
    sandbox = SandboxServer()
    ids = await asyncio.to_thread(_seed_accounts, sandbox, 5000, "BF-")
    async with LocalStack(tmp_path / "stack", sandbox=sandbox, max_concurrent_calls=32) as stack:
        runtime = stack.runtime
        spec = runtime.mappings["accounts"]
        transport = EmbeddedTransport(stack.queue)
        ledger = stack.ledger()
        started = time.monotonic()
        sent_before_kill = 0

        def kill_halfway(advance: int, total: int | None) -> None:
            nonlocal sent_before_kill
            sent_before_kill += advance
            if sent_before_kill >= 2500:
                raise KeyboardInterrupt  # the operator's Ctrl-C, between two checkpoints' sends
        with pytest.raises(KeyboardInterrupt):
            await backfill(spec, runtime.dataverse, transport, ledger, "sales-events", page_size=1000,
                           progress=kill_halfway)
        checkpoint = await load_checkpoint(ledger, "accounts")
        assert checkpoint is not None and not checkpoint.done and 2400 <= checkpoint.sent < 5000

        errors = tmp_path / "errors.csv"
        report = await backfill(spec, runtime.dataverse, transport, ledger, "sales-events", page_size=1000,
                                errors_csv=errors)
        assert report.resumed and report.run == checkpoint.run and report.sent == 5000 and report.total == 5000
        report = await wait_applied(ledger, report, timeout=400, poll=0.5, errors_csv=errors)
        elapsed = time.monotonic() - started
        print(f"\nbackfill of 5000 accounts: sent in {report.seconds:.1f} s after resume, all applied "
              f"{elapsed:.1f} s after start ({5000 / elapsed:.0f} records/s)")
        assert report.outcomes == {"applied": 5000}, report.outcomes
        assert report.errors == [] and errors.read_text().count("\n") == 1  # the header only
        assert len(_customers(stack, "BF-")) == 5000
        applied = await ledger.journal_entries(outcome="applied", limit=100_000)
        per_record: dict[str | None, int] = {}
        for entry in applied:
            per_record[entry.record_key] = per_record.get(entry.record_key, 0) + 1
        assert len(per_record) == 5000 and set(per_record.values()) == {1}
        assert set(per_record) == {f"accounts:account:{i}" for i in ids}
        assert (await load_checkpoint(ledger, "accounts")).done  # type: ignore[union-attr]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        yield local
