"""End to end through the local host: Sales sandbox -> webhook POST -> queue -> accounts flow -> F&O sandbox,
all over real loopback HTTP, with the real SQLite queue and ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from p2csync.devstack import LocalStack
from p2csync.queue.base import OutboundMessage

pytestmark = pytest.mark.e2e

USD = "USD"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        yield local


def _usd(stack: LocalStack) -> tuple[str, str]:
    row = next(r for r in stack.sandbox.dataverse.rows("transactioncurrency") if r["isocurrencycode"] == USD)
    return ("transactioncurrency", row["transactioncurrencyid"])


def _account(stack: LocalStack, number: str | None, **extra: Any) -> str:
    attrs: dict[str, Any] = {"name": f"Account {number}", "telephone1": "+1 425 555 0100",
                             "address1_city": "Redmond", "address1_country": "United States",
                             "creditlimit": 25000, "transactioncurrencyid": _usd(stack), **extra}
    if number:
        attrs["accountnumber"] = number
    return stack.sandbox.dataverse.create("account", attrs)


def _customer(stack: LocalStack, number: str, company: str = "usmf") -> dict[str, Any] | None:
    return stack.sandbox.fno.get("CustomersV3", {"dataAreaId": company, "CustomerAccount": number})


async def _journal(stack: LocalStack, record_id: str) -> list[Any]:
    entries = await stack.ledger().journal_entries(limit=10_000)
    return [e for e in entries if e.message_key.startswith(f"account:{record_id}:")]


async def test_a_new_account_becomes_an_fno_customer(stack: LocalStack) -> None:
    record_id = await asyncio.to_thread(_account, stack, "E2E-001")
    assert await stack.wait_settled(20)
    customer = _customer(stack, "E2E-001")
    assert customer is not None
    assert customer["OrganizationName"] == "Account E2E-001"
    assert customer["PartyNumber"] == "E2E-001"
    assert customer["CustomerGroupId"] == "10"
    assert customer["SalesCurrencyCode"] == "USD"
    assert customer["IsExternallyMaintained"] == "Yes"
    assert customer["PrimaryContactPhone"] == "+1 425 555 0100"
    assert float(customer["CreditLimit"]) == 25000
    assert [e.outcome for e in await _journal(stack, record_id)] == ["applied"]


async def test_an_update_carrying_only_changed_columns_syncs_the_whole_newest_state(stack: LocalStack) -> None:
    record_id = await asyncio.to_thread(_account, stack, "E2E-002")
    assert await stack.wait_settled(20)
    await asyncio.to_thread(stack.sandbox.dataverse.update, "account", record_id,
                            {"telephone1": "+1 425 555 0199", "name": "Renamed Ltd"})
    assert await stack.wait_settled(20)
    customer = _customer(stack, "E2E-002")
    assert customer is not None
    assert (customer["PrimaryContactPhone"], customer["OrganizationName"]) == ("+1 425 555 0199", "Renamed Ltd")
    assert customer["SalesCurrencyCode"] == "USD"  # not in the Update's Target: came from the fetch
    assert [e.outcome for e in await _journal(stack, record_id)] == ["applied", "applied"]


async def test_the_same_event_three_times_leaves_one_customer_and_two_recorded_skips(stack: LocalStack) -> None:
    stack.sandbox.dataverse.webhooks.duplicates = 3
    record_id = await asyncio.to_thread(_account, stack, "E2E-003")
    assert await stack.wait_settled(20)
    rows = [r for r in stack.sandbox.fno.rows("CustomersV3") if r["CustomerAccount"] == "E2E-003"]
    assert len(rows) == 1
    # Dataverse's three POSTs carry one MessageId: the queue's duplicate detection keeps one of them.
    # Delivered again from the queue (as after a lost lock), the ledger skips it with a reason.
    journal = await _journal(stack, record_id)
    assert [e.outcome for e in journal] == ["applied"]
    jobs = [j for j in stack.sandbox.dataverse.system_jobs() if j.record_id == record_id]
    assert len(jobs) == 1 and jobs[0].deliveries == 3
    original = stack.queue.peek("sales-events")  # completed: nothing left
    assert original == []
    payload = next(p for p in stack.sandbox.dataverse.webhooks.delivered_payloads
                   if p.get("PrimaryEntityId") == record_id)

    for attempt in range(2):
        stack.queue.send("sales-events", OutboundMessage(body=json.dumps(payload).encode(),
                                                         message_id=f"redelivery-{attempt}"))
    assert await stack.wait_settled(20)
    # The two copies may race for the record's lease: the loser is deferred, then skipped.
    final = [e for e in await _journal(stack, record_id) if e.outcome != "deferred"]
    assert [e.outcome for e in final] == ["applied", "skipped", "skipped"]
    assert all("duplicate" in (e.reason or "") for e in final[1:])
    assert len([r for r in stack.sandbox.fno.rows("CustomersV3") if r["CustomerAccount"] == "E2E-003"]) == 1


@pytest.fixture
async def serial_stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    """One message at a time, so the queue order is the processing order."""
    async with LocalStack(tmp_path / "serial", max_concurrent_calls=1) as local:
        yield local


async def test_an_older_version_arriving_after_a_newer_one_changes_nothing(serial_stack: LocalStack) -> None:
    stack = serial_stack
    dataverse = stack.sandbox.dataverse
    dataverse.webhooks.pause()
    record_id = await asyncio.to_thread(_account, stack, "E2E-004")
    await asyncio.sleep(1.05)  # Dataverse stores modifiedon to the second: let the versions differ
    await asyncio.to_thread(dataverse.update, "account", record_id, {"name": "Newest name"})
    dataverse.webhooks.resume(order="reversed")  # the Update arrives before the Create
    assert await stack.wait_settled(20)
    customer = _customer(stack, "E2E-004")
    assert customer is not None and customer["OrganizationName"] == "Newest name"
    outcomes = [(e.outcome, e.reason or "") for e in await _journal(stack, record_id)]
    assert outcomes[0][0] == "applied"
    assert outcomes[1][0] == "skipped" and "stale" in outcomes[1][1]
    writes = [r for r in stack.sandbox.fno.request_log.entries() if r.method in ("POST", "PATCH")]
    assert len(writes) == 1  # the stale Create wrote nothing


async def test_bad_input_gets_a_clear_error_and_crashes_nothing(stack: LocalStack) -> None:
    url = stack.webhook_url
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(url, content=b"{}")).status_code == 401
        assert (await client.post(url, params={"code": "wrong"}, content=b"{}")).status_code == 401
        code = {"code": stack.function_key}
        not_json = await client.post(url, params=code, content=b"<xml/>")
        assert not_json.status_code == 400 and not_json.json()["error"]["message"]
        wrong_shape = await client.post(url, params=code, json={"MessageName": "Create", "PrimaryEntityName": "account"})
        assert wrong_shape.status_code == 400
        error = wrong_shape.json()["error"]
        assert error["member"] in ("PrimaryEntityId", "OperationId") and "missing" in error["message"]
        too_big = await client.post(url, params=code, content=b"{" + b" " * (300 * 1024) + b"}")
        assert too_big.status_code == 413
        stack.queue.send("sales-events", OutboundMessage(body=b"\x00garbage", message_id="garbage-1"))
        assert await stack.wait_settled(20)
        dead = stack.queue.peek_dead_letters("sales-events")
        assert [m.message_id for m in dead] == ["garbage-1"]
        assert dead[0].dead_letter_reason == "MalformedMessage"
        assert dead[0].dead_letter_error_description and dead[0].body == b"\x00garbage"
        # and the host still works
        health = await client.get(url.replace("dataverse/webhook", "health"))
        assert health.status_code == 200
    record_id = await asyncio.to_thread(_account, stack, "E2E-005")
    assert await stack.wait_settled(20)
    assert _customer(stack, "E2E-005") is not None and record_id


async def test_an_account_that_cannot_be_keyed_is_dead_lettered_with_the_reason(stack: LocalStack) -> None:
    record_id = await asyncio.to_thread(_account, stack, None)
    assert await stack.wait_settled(20)
    dead = stack.queue.peek_dead_letters("sales-events")
    assert len(dead) == 1
    assert dead[0].dead_letter_reason == "MappingFailed"
    assert "accountnumber" in (dead[0].dead_letter_error_description or "")
    assert [e.outcome for e in await _journal(stack, record_id)] == ["rejected"]
