"""The world of the runtime integration tests: the sandbox, a webhook capture endpoint, runtimes built
from settings, and helpers that turn a Sales change into the queue message the runtime handles."""


from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mappings import load_mappings
from p2csync.connectors import DataverseClient, FnOClient, HttpOptions, RetryPolicy, StaticTokenProvider
from p2csync.ingress import accept_dataverse_webhook
from p2csync.ledger.sqlite import SqliteLedger
from p2csync.queue.base import OutboundMessage, ReceivedMessage
from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport
from p2csync.registration import register
from p2csync.runtime import InboundMessage, SyncRuntime
from p2csync.settings import ROOT, Settings
from sandbox import INTEGRATION_TOKEN, INTEGRATION_USER_ID, USD_CURRENCY_ID, SandboxServer
from sandbox.fno_events import FnoMessage
from sandbox.server import BackgroundServers

QUEUE = "sales-events"
CUSTOMERS = "CustomersV3"
SPEC = load_mappings(ROOT / "mappings")["accounts"]


# ----------------------------------------------------------------------------------------------- helpers


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]


class Capture:
    """The webhook endpoint: keeps each POST's raw body and headers, answers 200."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.server = BackgroundServers([Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])])

    async def hook(self, request: Request) -> Response:
        delivery = Delivery(await request.body(), dict(request.headers))
        with self.lock:
            self.deliveries.append(delivery)
        return Response(status_code=200)

    @property
    def url(self) -> str:
        return self.server.urls[0] + "/hook"

    def take(self) -> list[Delivery]:
        with self.lock:
            taken, self.deliveries = self.deliveries, []
        return taken


class SentMessages:
    """A QueueTransport for the ingress step: keeps what the webhook would enqueue."""

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    async def send(self, queue: str, message: OutboundMessage) -> None:
        self.sent.append(message)

    async def schedule(self, queue: str, message: OutboundMessage, at: datetime) -> int:
        raise AssertionError("ingress never schedules")


@dataclass
class Settlement:
    action: str
    message: Any
    reason: str | None = None
    description: str | None = None


@dataclass
class RecordingActions:
    """``MessageActions`` that records each settlement (the Functions SDK binding's shape)."""

    calls: list[Settlement] = field(default_factory=list)

    def complete(self, message: Any) -> None:
        self.calls.append(Settlement("complete", message))

    def abandon(self, message: Any) -> None:
        self.calls.append(Settlement("abandon", message))

    def deadletter(self, message: Any, deadletter_reason: str | None = None,
                   deadletter_error_description: str | None = None) -> None:
        self.calls.append(Settlement("deadletter", message, deadletter_reason, deadletter_error_description))

    @property
    def actions(self) -> list[str]:
        return [call.action for call in self.calls]


async def _register(server: SandboxServer, url: str) -> None:
    async with DataverseClient(server.dataverse_url, StaticTokenProvider(INTEGRATION_TOKEN), tag=None) as dv:
        await register(dv, {"accounts": SPEC}, url=url, key="function-key", out=lambda line: None)


def settings_env(sandbox: SandboxServer, workdir: Path, **extra: str) -> dict[str, str]:
    return {
        "DATAVERSE_URL": sandbox.dataverse_url,
        "FNO_URL": sandbox.fno_url,
        "FNO_DEFAULT_COMPANY": "usmf",
        "P2C_AUTH_MODE": "static",
        "P2C_STATIC_TOKEN": INTEGRATION_TOKEN,
        "INTEGRATION_USER_IDS": INTEGRATION_USER_ID,
        "P2C_LEDGER_PATH": str(workdir / "ledger.sqlite"),
        "P2C_LOCAL_QUEUE_PATH": str(workdir / "queue.sqlite"),
        **extra,
    }


FAST_RETRIES = HttpOptions(retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02))


class Runtimes:
    """Builds runtimes from settings and closes everything they opened."""

    def __init__(self, sandbox: SandboxServer, workdir: Path) -> None:
        self.sandbox = sandbox
        self.workdir = workdir
        self.built: list[SyncRuntime] = []

    def settings(self, **extra: str) -> Settings:
        return Settings.from_env(settings_env(self.sandbox, self.workdir, **extra))

    def build(self, *, http: HttpOptions | None = None, **extra: str) -> SyncRuntime:
        """``SyncRuntime.from_settings``; with ``http``, the same parts but clients with that retry policy
        (so a persistent 503 is given up on in milliseconds rather than the production ~8 s)."""
        settings = self.settings(**extra)
        if http is None:
            runtime = SyncRuntime.from_settings(settings)
        else:
            assert settings.ledger_path is not None and settings.local_queue_path is not None
            tokens = StaticTokenProvider(INTEGRATION_TOKEN)
            runtime = SyncRuntime(
                settings,
                ledger=SqliteLedger(settings.ledger_path),
                transport=EmbeddedTransport(EmbeddedQueue(settings.local_queue_path)),
                dataverse=DataverseClient(settings.dataverse_url, tokens, tag=settings.write_tag, http=http),
                fno=FnOClient(settings.fno_url, tokens, http=http),
                mappings=load_mappings(settings.mappings_dir),
            )
        self.built.append(runtime)
        return runtime

    async def aclose(self) -> None:
        for runtime in self.built:
            await runtime.aclose()
            runtime.ledger.close()  # type: ignore[attr-defined]
            if isinstance(runtime.transport, EmbeddedTransport):
                runtime.transport.queue.close()


async def sales_change(sandbox: SandboxServer, capture: Capture, act: Callable[[], Any],
                       expect: int = 1) -> list[InboundMessage]:
    """Do ``act`` in the Sales sandbox, wait for its webhook deliveries, return them as queue messages."""
    await asyncio.to_thread(act)
    assert await sandbox.dataverse.wait_idle_async(10)
    deliveries = capture.take()
    assert len(deliveries) == expect, [json.loads(d.body)["MessageName"] for d in deliveries]
    messages = []
    for delivery in deliveries:
        sent = SentMessages()
        result = await accept_dataverse_webhook(delivery.body, delivery.headers, sent, QUEUE)
        assert result.status == 202, result.body
        [out] = sent.sent
        messages.append(InboundMessage(queue=QUEUE, body=out.body, message_id=out.message_id,
                                       application_properties=dict(out.application_properties),
                                       content_type=out.content_type, enqueued_time_utc=datetime.now(UTC),
                                       lock_token=f"lock-{out.message_id}"))
    return messages


FNO_QUEUE = "fno-events"


async def fno_change(sandbox: SandboxServer, act: Callable[[], Any], expect: int | None = 1,
                     data_events: tuple[str, ...] = (), business_events: tuple[str, ...] = ()) -> list[InboundMessage]:
    """Do ``act`` in the F&O sandbox with those events activated on an endpoint; wait for the events it raises
    and return them as the fno-events queue messages the runtime handles (the endpoint test messages of the
    activations are left out). ``expect=None``: however many ``act`` raises."""
    fno = sandbox.fno
    sent: list[FnoMessage] = []
    if fno.events.endpoint is None:
        fno.events.set_endpoint(sent.append)
    else:
        fno.events.endpoint.sink = sent.append
    for entity_set in data_events:
        fno.events.activate_data_event(entity_set)
    for event_id in business_events:
        fno.events.activate_business_event(event_id)
    assert await asyncio.to_thread(fno.events.wait_idle, 10)
    sent.clear()
    await asyncio.to_thread(act)
    assert await asyncio.to_thread(fno.events.wait_idle, 10)
    assert expect is None or len(sent) == expect, [m.kind for m in sent]
    return [fno_message(m) for m in sent]


def fno_message(message: FnoMessage) -> InboundMessage:
    """What the fno-events queue trigger hands the runtime for a message the F&O endpoint sent."""
    return InboundMessage(queue=FNO_QUEUE, body=message.body, message_id=message.message_id,
                          application_properties=dict(message.application_properties),
                          content_type=message.content_type, enqueued_time_utc=datetime.now(UTC),
                          lock_token=f"lock-{message.message_id}")


def account(number: str, **extra: Any) -> dict[str, Any]:
    return {"name": f"Account {number}", "accountnumber": number, "telephone1": "+1 425 555 0100",
            "address1_city": "Redmond", "address1_country": "United States", "creditlimit": 25000,
            "transactioncurrencyid": ("transactioncurrency", USD_CURRENCY_ID), **extra}


def customer(sandbox: SandboxServer, number: str) -> dict[str, Any] | None:
    return sandbox.fno.get(CUSTOMERS, {"dataAreaId": "usmf", "CustomerAccount": number})


def fno_writes(sandbox: SandboxServer) -> list[tuple[str, int | None]]:
    return [(r.method, r.status) for r in sandbox.fno.request_log.entries() if r.method != "GET"]


def scheduled(runtime: SyncRuntime) -> list[ReceivedMessage]:
    assert isinstance(runtime.transport, EmbeddedTransport)
    return runtime.transport.queue.peek(QUEUE)


def as_inbound(message: ReceivedMessage) -> InboundMessage:
    return InboundMessage(queue=message.queue, body=message.body, message_id=message.message_id,
                          delivery_count=max(1, message.delivery_count),
                          application_properties=dict(message.application_properties),
                          content_type=message.content_type, lock_token=message.lock_token)


async def journal(runtime: SyncRuntime) -> list[tuple[str, str | None]]:
    entries = await runtime.ledger.journal_entries()  # type: ignore[attr-defined]
    return [(e.outcome, e.reason) for e in entries]


async def created_account(
    sandbox: SandboxServer, capture: Capture, number: str, **extra: Any
) -> InboundMessage:
    [message] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.create("account",
                                                                                    account(number, **extra)))
    return message



