"""The operator commands against the local world (LocalStack): status after traffic, a dead letter replayed
after its cause was fixed in Sales, trace across a retry, a paused flow that loses nothing, and send of a
saved webhook body. The commands run in-process through ``main([...])`` (in a thread: each runs its own
event loop) or through their plain functions on the stack's ledger and queue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from p2csync.cli import main
from p2csync.devstack import LocalStack
from p2csync.ops.pause import pause, resume
from p2csync.ops.status import status
from p2csync.ops.trace import trace
from p2csync.queue.embedded import EmbeddedTransport

pytestmark = pytest.mark.e2e

NO_SETTINGS = ["--settings", "/nonexistent/local.settings.json"]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    settings = {"P2C_PAUSE_RECHECK_SECONDS": "0.3", "P2C_PAUSE_CACHE_SECONDS": "0"}
    async with LocalStack(tmp_path / "stack", settings=settings) as local:
        yield local


def _account(stack: LocalStack, number: str | None) -> str:
    usd = next(r for r in stack.sandbox.dataverse.rows("transactioncurrency") if r["isocurrencycode"] == "USD")
    attrs: dict[str, Any] = {"name": f"Ops {number}", "transactioncurrencyid": ("transactioncurrency",
                                                                              usd["transactioncurrencyid"])}
    if number:
        attrs["accountnumber"] = number
    return stack.sandbox.dataverse.create("account", attrs)


def _customer(stack: LocalStack, number: str) -> dict[str, Any] | None:
    return stack.sandbox.fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": number})


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*argv, *NO_SETTINGS])
    return code, capsys.readouterr().out


async def _until(check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_status_after_some_traffic(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    await asyncio.to_thread(_account, stack, "OPS-S1")
    await asyncio.to_thread(_account, stack, "OPS-S2")
    await asyncio.to_thread(_account, stack, None)  # no account number: MappingFailed, dead-lettered
    assert await stack.wait_settled(20)
    report = await status(stack.ledger(), EmbeddedTransport(stack.queue), ["sales-events", "fno-events"],
                          ["accounts"], window=timedelta(hours=1), now=datetime.now(UTC))
    accounts = next(f for f in report.flows if f.flow == "accounts")
    assert accounts.outcomes == {"applied": 2, "rejected": 1}
    assert accounts.reasons["rejected: MappingFailed"] == 1 and accounts.reasons["applied: created"] == 2
    assert accounts.last_applied is not None and accounts.paused is None
    sales = next(q for q in report.queues if q.queue == "sales-events")
    assert (sales.active, sales.scheduled, sales.dead_lettered) == (0, 0, 1)

    code, out = await _cli(capsys, "status", "--since", "1h", "--json")
    assert code == 0
    data = json.loads(out)
    assert next(f for f in data["flows"] if f["flow"] == "accounts")["outcomes"]["applied"] == 2
    code, out = await _cli(capsys, "status")
    assert code == 0 and "sales-events" in out and "accounts" in out and "MappingFailed" in out


async def test_a_dead_letter_replayed_after_fixing_its_cause_in_sales_is_applied(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    record_id = await asyncio.to_thread(_account, stack, None)
    assert await stack.wait_settled(20)
    [dead] = stack.queue.peek_dead_letters("sales-events")
    assert dead.dead_letter_reason == "MappingFailed"
    code, out = await _cli(capsys, "deadletters", "list", "--flow", "accounts", "--json")
    [listed] = json.loads(out)
    assert code == 0 and listed["record_key"] == f"accounts:account:{record_id}" and listed["flow"] == "accounts"

    # The fix, in Sales. Its own webhook is held back, so only the replay can bring the account over.
    stack.sandbox.dataverse.webhooks.pause()
    await asyncio.to_thread(stack.sandbox.dataverse.update, "account", record_id, {"accountnumber": "OPS-D1"})
    code, out = await _cli(capsys, "deadletters", "replay", "--reason", "mappingfailed", "--json")
    [result] = json.loads(out)
    assert code == 0 and result["error"] is None
    assert result["new_message_id"] == f"{dead.message_id}~replay"
    assert stack.queue.peek_dead_letters("sales-events") == []  # removed after the send

    record_key = f"accounts:account:{record_id}"

    async def journaled() -> bool:  # the journal line follows the F&O write: wait for it, not for the write
        return len(await stack.ledger().journal_entries(record_key=record_key)) >= 2
    await _until(journaled)
    assert _customer(stack, "OPS-D1") is not None
    entries = await stack.ledger().journal_entries(record_key=record_key)
    assert [e.outcome for e in entries] == ["rejected", "applied"]
    assert entries[1].message_id == f"{dead.message_id}~replay"
    stack.sandbox.dataverse.webhooks.resume()
    assert await stack.wait_settled(20)  # the held update: the newest state is already there
    assert len([r for r in stack.sandbox.fno.rows("CustomersV3") if r["CustomerAccount"] == "OPS-D1"]) == 1


async def test_trace_shows_a_records_history_across_a_retry(stack: LocalStack,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    dataverse = stack.sandbox.dataverse
    dataverse.webhooks.pause()
    record_id = await asyncio.to_thread(_account, stack, "OPS-T1")
    record_key = f"accounts:account:{record_id}"
    # another worker holds the record for a moment: the first delivery is deferred, the retry applies
    await stack.ledger().acquire(record_key, "another-worker", timedelta(seconds=1.5))
    dataverse.webhooks.resume()
    assert await stack.wait_settled(20)
    report = await trace(stack.ledger(), record_id)  # by source id (the Dataverse GUID)
    assert report.matched_by == "source id"
    [record] = report.records
    assert record.record_key == record_key and record.flow == "accounts"
    outcomes = [d.outcome for d in record.deliveries]
    assert outcomes[0] == "deferred" and outcomes[-1] == "applied" and "rejected" not in outcomes
    first, last = record.deliveries[0], record.deliveries[-1]
    assert "another worker" in (first.reason or "")
    assert last.message_id.startswith(first.message_id + "~")  # the retry is a scheduled copy
    assert last.version is not None and "ops-t1" in (last.target_key or "").lower()
    job = next(j for j in dataverse.webhooks.jobs if j.record_id == record_id)
    assert last.correlation_id == job.correlation_id and first.correlation_id == job.correlation_id
    assert record.state is not None and record.state.version == last.version

    code, out = await _cli(capsys, "trace", record_key)
    assert code == 0 and "deferred" in out and "applied" in out and "ops-t1" in out.lower()
    code, _ = await _cli(capsys, "trace", "no-such-record")
    assert code == 1


async def test_a_paused_flow_loses_nothing_and_catches_up_on_resume(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await _cli(capsys, "pause", "accounts", "--note", "F&O maintenance")
    assert code == 0 and "paused" in out
    ledger = stack.ledger()
    numbers = [f"OPS-P{i}" for i in range(4)]
    for number in numbers:
        await asyncio.to_thread(_account, stack, number)

    async def all_waiting() -> bool:
        entries = await ledger.journal_entries(outcome="deferred")
        return len({e.message_key for e in entries if "paused" in (e.reason or "")}) == len(numbers)
    await _until(all_waiting)
    await asyncio.sleep(1.0)  # several re-checks: still waiting, none written, none dead-lettered
    assert all(_customer(stack, n) is None for n in numbers)
    assert stack.queue.peek_dead_letters("sales-events") == []
    report = await status(ledger, None, [], ["accounts"], window=timedelta(hours=1), now=datetime.now(UTC))
    accounts = next(f for f in report.flows if f.flow == "accounts")
    assert accounts.paused is not None and accounts.paused.note == "F&O maintenance"
    assert accounts.waiting == len(numbers)
    assert "applied" not in accounts.outcomes

    assert (await resume(ledger, "accounts", ["accounts"])).was_paused
    assert await stack.wait_settled(20)
    assert all(_customer(stack, n) is not None for n in numbers)
    # (the fno-events queue holds F&O's endpoint test message of the business event the invoices flow activates)
    final = [e for e in await ledger.journal_entries() if e.outcome != "deferred" and e.queue == "sales-events"]
    assert sorted(e.outcome for e in final) == ["applied"] * len(numbers)
    with pytest.raises(ValueError, match="not a flow"):
        await pause(ledger, "acounts", ["accounts", "contacts"])


async def test_send_puts_a_saved_webhook_body_on_the_queue_as_dataverse_would(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    webhooks = stack.sandbox.dataverse.webhooks
    webhooks.pause()
    await asyncio.to_thread(_account, stack, "OPS-W1")
    saved = tmp_path / "webhook.json"
    saved.write_bytes(webhooks._queue[0].body)  # the body Dataverse would POST; then the delivery is lost
    webhooks.clear()
    code, out = await _cli(capsys, "send", "--queue", "sales-events", str(saved), "--property", "source=manual",
                           "--json")
    sent = json.loads(out)
    assert code == 0 and sent["content_type"] == "application/json" and sent["message_id"].startswith("send:")
    assert await stack.wait_settled(20)
    assert _customer(stack, "OPS-W1") is not None
    code, _ = await _cli(capsys, "send", "--queue", "sales-events", str(saved))  # the same file again
    assert code == 0 and await stack.wait_settled(20)
    entries = await stack.ledger().journal_entries(message_id=sent["message_id"])
    assert [e.outcome for e in entries] == ["applied"]  # the second send was a duplicate MessageId: dropped
