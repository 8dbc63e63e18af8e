"""backfill, reconcile and the scheduled catch-up against the local world (LocalStack): the functions of
p2csync/ops on the stack's runtime (its connectors, ledger and queue), the local host applying what they send."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from p2csync import functions
from p2csync.cli import main
from p2csync.devstack import LocalStack
from p2csync.ops.backfill import backfill, load_checkpoint, wait_applied
from p2csync.ops.catchup import catch_up
from p2csync.ops.reconcile import reconcile
from p2csync.queue.embedded import EmbeddedTransport
from sandbox import SALES_TOKEN
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
        assert report.errors == [] and not errors.exists()  # no error, no file
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


def _account(stack: LocalStack, number: str, name: str) -> str:
    usd = next(r for r in stack.sandbox.dataverse.rows("transactioncurrency") if r["isocurrencycode"] == "USD")
    return stack.sandbox.dataverse.create("account", {"name": name, "accountnumber": number, "transactioncurrencyid":
                                                      ("transactioncurrency", usd["transactioncurrencyid"])})


async def test_reconcile_finds_exactly_the_drift_introduced_and_fix_repairs_it(stack: LocalStack) -> None:
    for number in ("RC-1", "RC-2", "RC-3"):
        await asyncio.to_thread(_account, stack, number, f"Reconcile {number}")
    assert await stack.wait_settled(30)
    fno = stack.sandbox.fno
    # Drift 1: a customer changed directly in F&O. Drift 2: an account whose event never arrived.
    await asyncio.to_thread(fno.update, "CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "RC-2"},
                            {"OrganizationName": "Changed in F&O"})
    dataverse = stack.sandbox.dataverse
    dataverse.webhooks.pause()
    lost = await asyncio.to_thread(_account, stack, "RC-4", "Reconcile RC-4")
    dataverse.webhooks.clear()  # the event is lost (Dataverse gave up on it)

    runtime = stack.runtime
    spec = runtime.mappings["accounts"]
    report = await reconcile(spec, runtime.context, runtime.registry)
    drift = {d.source: d for d in report.drift}
    assert report.checked == 4 and report.in_sync == 2 and len(drift) == 2, report
    changed = next(d for d in report.drift if d.kind == "differs")
    assert changed.fields == ["OrganizationName"] and "CustomersV3" in changed.detail
    assert drift[lost].kind == "missing"

    fixed = await reconcile(spec, runtime.context, runtime.registry, fix=True, transport=EmbeddedTransport(stack.queue),
                            queue="sales-events")
    assert fixed.fixed == 2
    assert await stack.wait_settled(30)
    assert fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "RC-2"})["OrganizationName"] == \
        "Reconcile RC-2"
    assert fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "RC-4"}) is not None
    after = await reconcile(spec, runtime.context, runtime.registry)
    assert after.drift == [] and after.in_sync == 4


async def _product(stack: LocalStack, number: str, name: str) -> None:
    async with httpx.AsyncClient(base_url=stack.sandbox.fno_url, trust_env=False,
                                 headers={"Authorization": f"Bearer {SALES_TOKEN}"}) as http:
        created = await http.post("/data/CDSReleasedDistinctProducts",
                                  json={"dataAreaId": "usmf", "ProductNumber": number, "ProductName": name,
                                        "SalesUnitSymbol": "ea", "SalesPrice": 99})
        assert created.status_code == 201, created.text


def _sales_product(stack: LocalStack, number: str) -> dict[str, Any] | None:
    return next((r for r in stack.sandbox.dataverse.rows("product") if r.get("productnumber") == number), None)


async def test_the_catch_up_finds_a_product_change_whose_data_event_was_lost(stack: LocalStack) -> None:
    stack.sandbox.fno.events.retry_wait = 0.01
    await _product(stack, "CU-1", "Speaker")
    await _product(stack, "CU-2", "Cable")
    assert await stack.wait_settled(30)
    assert _sales_product(stack, "CU-1")["name"] == "Speaker"  # type: ignore[index]
    nothing = await catch_up(stack.runtime)
    assert [(r.flow, r.drift, r.fixed) for r in nothing if r.flow == "products"] == [("products", [], 0)]

    # The customer's data event is off (or F&O gave up on it): the change never reaches the queue.
    stack.sandbox.fno.events.deactivate("CDSReleasedDistinctProducts")
    await asyncio.to_thread(stack.sandbox.fno.update, "CDSReleasedDistinctProducts",
                            {"dataAreaId": "usmf", "ProductNumber": "CU-1"}, {"ProductName": "Speaker II"})
    assert await stack.wait_settled(30)
    assert _sales_product(stack, "CU-1")["name"] == "Speaker"  # type: ignore[index]

    await functions.catch_up(None)  # what the timer trigger runs
    assert await stack.wait_settled(30)
    assert _sales_product(stack, "CU-1")["name"] == "Speaker II"  # type: ignore[index]
    entries = await stack.ledger().journal_entries(
        record_key="products:CDSReleasedDistinctProducts:(dataAreaId='usmf',ProductNumber='cu-1')")
    assert entries[-1].outcome == "applied" and entries[-1].message_key.startswith("resync:reconcile-")
    again = await catch_up(stack.runtime, ["products"])
    assert again[0].drift == [] and again[0].in_sync == 2


async def test_the_backfill_and_reconcile_commands(stack: LocalStack, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI over the same functions: a dry run, a backfill of accounts made before the integration (their
    events lost), its errors CSV, and reconcile's table, CSV and JSON."""
    dataverse = stack.sandbox.dataverse
    dataverse.webhooks.pause()
    for number in ("CL-1", "CL-2", "CL-3"):
        await asyncio.to_thread(_account, stack, number, f"CLI {number}")
    await asyncio.to_thread(dataverse.create, "account", {"name": "No number"})  # the mapping rejects it
    dataverse.webhooks.clear()
    settings = ["--settings", "/nonexistent/local.settings.json"]

    async def cli(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, [*argv, *settings])
        out = capsys.readouterr().out
        print(out)
        return code, out

    code, out = await cli("backfill", "accounts", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["would"] == {"rows": 4, "filtered out": 0, "new": 4, "in ledger": 0}
    errors = tmp_path / "errors.csv"
    code, out = await cli("backfill", "accounts", "--errors", str(errors), "--timeout", "60s")
    assert code == 1 and "applied" in out and "errors" in out  # one account has no number: rejected
    rows = errors.read_text().splitlines()
    assert len(rows) == 2 and "MappingFailed" in rows[1]
    assert {r["CustomerAccount"] for r in _customers(stack, "CL-")} == {"CL-1", "CL-2", "CL-3"}

    await asyncio.to_thread(stack.sandbox.fno.update, "CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "CL-3"},
                            {"OrganizationName": "Edited in F&O"})
    drift_csv = tmp_path / "drift.csv"
    code, out = await cli("reconcile", "accounts", "--csv", str(drift_csv))
    assert code == 0 and "differs" in out and "OrganizationName" in out
    assert "error" in out  # the account without a number cannot be compared: its mapping fails
    assert len(drift_csv.read_text().splitlines()) == 3
    code, out = await cli("reconcile", "accounts", "--fix", "--json")
    assert json.loads(out)["fixed"] == 1
    assert await stack.wait_settled(30)
    code, out = await cli("reconcile", "accounts", "--json")
    assert [d["kind"] for d in json.loads(out)["drift"]] == ["error"]
