"""Live: the local host against a real Service Bus namespace (`make test-live`, docs/deploy.md).

Not part of `make test`: no namespace can be reached from the build machine, and `make test` never needs
the network. The settlement logic these tests exercise is covered offline at the SDK boundary
(tests/unit/test_servicebus_transport.py, tests/integration/test_servicebus_binding.py); this module checks
what only the real service can show: our messages survive the AMQP round trip, duplicate detection drops
the webhook's repeats, a rejected message lands in the dead-letter queue with our reason, and a deferral
comes back as a scheduled message.

It needs `P2C_LIVE_SERVICEBUS_NAMESPACE` (`<name>.servicebus.windows.net`) with the queues `sales-events`
and `fno-events` as infra/ creates them, an Azure identity the SDK can use (`az login`, or the
AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET variables) holding *Azure Service Bus Data Owner* on
the namespace, and a namespace no function app reads (the local host would compete for the messages):
`azd env new p2c-live && azd provision` and then stop the function app, or a namespace of its own.
Without the variable every test fails, saying so: a live run that checks nothing must not look green.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from p2csync.connectors.auth import default_credential
from p2csync.devstack import LocalStack
from p2csync.queue.base import OutboundMessage

pytestmark = pytest.mark.live

NAMESPACE_VARIABLE = "P2C_LIVE_SERVICEBUS_NAMESPACE"
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "account_create.json"


def _namespace() -> str:
    namespace = os.environ.get(NAMESPACE_VARIABLE, "").strip()
    if not namespace:
        pytest.fail(f"{NAMESPACE_VARIABLE} is not set: the live tests need a Service Bus namespace "
                    "(see the module docstring and docs/deploy.md, 'Run against a real namespace')")
    return namespace


async def _drain(namespace: str, queue: str, *, dead_letters: bool = False) -> list[Any]:
    """Receive and complete everything in the queue (or its dead-letter queue); returns what was there."""
    from azure.servicebus import ServiceBusSubQueue
    from azure.servicebus.aio import ServiceBusClient

    received = []
    credential = default_credential(None)
    async with ServiceBusClient(namespace, credential) as client:
        receiver = client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER if dead_letters else None)
        async with receiver:
            while batch := await receiver.receive_messages(max_message_count=50, max_wait_time=3):
                for message in batch:
                    received.append(message)
                    await receiver.complete_message(message)
    await credential.close()
    return received


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    namespace = _namespace()
    for queue in ("sales-events", "fno-events"):
        left = await _drain(namespace, queue)
        assert not left, (f"{queue} held {len(left)} messages before the test: is a function app reading this "
                          "namespace? Use a namespace of its own")
        await _drain(namespace, queue, dead_letters=True)
    async with LocalStack(tmp_path / "stack", servicebus_namespace=namespace) as local:
        yield local


def _usd(stack: LocalStack) -> tuple[str, str]:
    row = next(r for r in stack.sandbox.dataverse.rows("transactioncurrency") if r["isocurrencycode"] == "USD")
    return ("transactioncurrency", row["transactioncurrencyid"])


def _customer(stack: LocalStack, number: str) -> dict[str, Any] | None:
    return stack.sandbox.fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": number})


async def _journal(stack: LocalStack, queue: str = "sales-events") -> list[Any]:
    return [e for e in await stack.ledger().journal_entries(limit=1000) if e.queue == queue]


async def _until_journal(stack: LocalStack, condition: Any, timeout: float = 60.0) -> list[Any]:
    """The journal (oldest first) once ``condition(entries)`` holds; it is written after the F&O write."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    entries = await _journal(stack)
    while not condition(entries) and loop.time() < deadline:
        await asyncio.sleep(0.25)
        entries = await _journal(stack)
    return entries


async def test_an_account_reaches_fno_through_the_real_queue(stack: LocalStack) -> None:
    number = f"LIVE-{uuid.uuid4().hex[:6].upper()}"
    await asyncio.to_thread(stack.sandbox.dataverse.create, "account", {
        "name": f"Live {number}", "accountnumber": number, "transactioncurrencyid": _usd(stack)})
    entries = await _until_journal(stack, lambda e: any(x.outcome == "applied" for x in e))
    assert [e.outcome for e in entries] == ["applied"], "the account did not go through Service Bus once"
    assert _customer(stack, number) is not None


async def test_the_webhooks_repeats_are_dropped_by_duplicate_detection(stack: LocalStack) -> None:
    url = f"{stack.webhook_url}?code={stack.function_key}"
    async with httpx.AsyncClient() as client:
        answers = [await client.post(url, content=FIXTURE.read_bytes(), headers={"content-type": "application/json"})
                   for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    [message_id] = {a.json()["messageId"] for a in answers}

    async def deliveries() -> list[Any]:
        return [e for e in await stack.ledger().journal_entries(limit=100) if e.message_id == message_id]

    for _ in range(40):
        if await deliveries():
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(10)  # time for a repeat that got past duplicate detection to be delivered too
    assert len(await deliveries()) == 1


async def test_a_malformed_message_is_dead_lettered_with_our_reason(stack: LocalStack) -> None:
    message_id = f"live-bad-{uuid.uuid4().hex[:8]}"
    assert stack.runtime.transport is not None
    await stack.runtime.transport.send("sales-events", OutboundMessage(body=b'{"MessageName": 5}',
                                                                         message_id=message_id))
    dead: list[Any] = []
    for _ in range(20):
        dead = [m for m in await _drain(stack.servicebus_namespace or "", "sales-events", dead_letters=True)
                if m.message_id == message_id]
        if dead:
            break
        await asyncio.sleep(1)
    assert dead, "the malformed message did not reach the dead-letter queue"
    assert dead[0].dead_letter_reason == "MalformedMessage"
    assert "MessageName" in (dead[0].dead_letter_error_description or "")
    assert b"".join(dead[0].body) == b'{"MessageName": 5}'


async def test_a_busy_record_is_deferred_as_a_scheduled_message_then_applied(stack: LocalStack) -> None:
    number = f"LIVE-{uuid.uuid4().hex[:6].upper()}"
    ledger = stack.runtime.ledger
    record_id = str(uuid.uuid4())
    key = f"accounts:account:{record_id}"
    await ledger.acquire(key, "live-test", timedelta(minutes=5))  # another worker holds the record
    await asyncio.to_thread(stack.sandbox.dataverse.create, "account", {
        "accountid": record_id, "name": f"Live {number}", "accountnumber": number,
        "transactioncurrencyid": _usd(stack)})
    deferred = await _until_journal(stack, lambda e: any(x.outcome == "deferred" for x in e))
    assert deferred and deferred[0].outcome == "deferred", "the busy record was not deferred"
    await ledger.release(key, "live-test")  # the other worker is done: the scheduled copy can apply
    entries = await _until_journal(stack, lambda e: e[-1].outcome == "applied" if e else False)
    assert entries[-1].outcome == "applied", [(e.message_id, e.outcome) for e in entries]
    original = entries[0].message_id
    assert entries[-1].message_id.startswith(f"{original}~")  # the scheduled copy, MessageId <original>~N
    assert _customer(stack, number) is not None
