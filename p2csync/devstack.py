"""The local world in one object: the sandbox, the local host running function_app.py, the webhook.

Used by ``make demo`` and by the end-to-end tests, so both exercise exactly the path a deployment runs:
Sales sandbox -> webhook POST over loopback HTTP -> embedded queue -> queue trigger -> runtime -> F&O
sandbox over loopback HTTP. The webhook itself is registered by the code of ``python -m p2csync register``,
through the sandbox's Web API. The other way, the F&O sandbox's business events endpoint sends to the
``fno-events`` queue, with the business events and data events the F&O-sourced mappings need activated.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from mappings import MappingSpec, load_mappings
from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.ledger.sqlite import SqliteLedger
from p2csync.localhost import LocalHost
from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport
from p2csync.registration import Plan, register
from p2csync.queue.base import OutboundMessage, QueueConsumer
from p2csync.queue.servicebus import ServiceBusTransport
from p2csync.runtime import SyncRuntime, close_runtimes, get_runtime, reset_runtimes
from p2csync.settings import ROOT
from sandbox.fno_events import BUSINESS_EVENTS, FnoMessage, virtual_table
from sandbox.server import SandboxServer


class LocalStack:
    """Sandbox + local host in this process. ``async with LocalStack(workdir) as stack: ...``"""

    def __init__(self, workdir: Path, *, lock_seconds: float = 30.0, settings: dict[str, str] | None = None,
                 sandbox: SandboxServer | None = None, max_concurrent_calls: int = 16,
                 servicebus_namespace: str | None = None) -> None:
        """``servicebus_namespace``: run the queues on that real namespace instead of the embedded queue
        (the live tests); everything else stays local."""
        self.workdir = workdir
        self.servicebus_namespace = servicebus_namespace
        self.max_concurrent_calls = max_concurrent_calls
        self.lock_seconds = lock_seconds
        self.extra_settings = settings or {}
        self.sandbox = sandbox or SandboxServer()
        self.function_key = secrets.token_urlsafe(18)
        self._saved_env: dict[str, str | None] = {}
        self._serving: asyncio.Task[None] | None = None
        self._queue: EmbeddedQueue | None = None
        self.host: LocalHost | None = None

    @property
    def queue(self) -> EmbeddedQueue:
        """The embedded queue (not with a namespace: the live tests wait on outcomes instead)."""
        if self._queue is None:
            raise RuntimeError("this stack runs its queues on a Service Bus namespace, not the embedded queue")
        return self._queue

    @property
    def queue_path(self) -> Path:
        return self.workdir / "queue.sqlite"

    @property
    def ledger_path(self) -> Path:
        return self.workdir / "ledger.sqlite"

    @property
    def webhook_url(self) -> str:
        assert self.host is not None
        return f"{self.host.base_url}/dataverse/webhook"

    def settings_env(self) -> dict[str, str]:
        dataverse = self.sandbox.dataverse
        return {
            "DATAVERSE_URL": self.sandbox.dataverse_url,
            "FNO_URL": self.sandbox.fno_url,
            "FNO_DEFAULT_COMPANY": "usmf",
            "P2C_AUTH_MODE": "static",
            "P2C_STATIC_TOKEN": dataverse.integration_user.token,
            "INTEGRATION_USER_IDS": dataverse.integration_user.id,
            "P2C_LEDGER_PATH": str(self.ledger_path),
            **({"ServiceBusConnection__fullyQualifiedNamespace": self.servicebus_namespace}
               if self.servicebus_namespace else {"P2C_LOCAL_QUEUE_PATH": str(self.queue_path)}),
            **self.extra_settings,
        }

    @property
    def runtime(self) -> SyncRuntime:
        """The runtime the local host's functions use (this event loop's)."""
        return get_runtime()

    async def __aenter__(self) -> LocalStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.sandbox.start)
        try:
            for key, value in self.settings_env().items():
                self._saved_env[key] = os.environ.get(key)
                os.environ[key] = value
            if self.servicebus_namespace:  # a local queue file would win over the namespace
                self._saved_env.setdefault("P2C_LOCAL_QUEUE_PATH", os.environ.pop("P2C_LOCAL_QUEUE_PATH", None))
            reset_runtimes()
            if not self.servicebus_namespace:
                self._queue = EmbeddedQueue(self.queue_path, lock_duration=timedelta(seconds=self.lock_seconds))
            import function_app

            runtime = get_runtime()  # start-up validation (mappings, settings) before serving
            await runtime.start()  # the mappings' choice labels, against the sandbox's metadata
            consumer: QueueConsumer
            if self._queue is not None:
                consumer = EmbeddedTransport(self._queue)
            elif isinstance(runtime.transport, ServiceBusTransport):
                consumer = runtime.transport
            else:
                raise RuntimeError(f"expected the Service Bus transport, got {type(runtime.transport).__name__}")
            self.host = LocalHost(function_app.app, consumer, function_key=self.function_key, port=0,
                                  max_concurrent_calls=self.max_concurrent_calls,
                                  receive_wait=1.0 if self.servicebus_namespace else None)
            self._serving = asyncio.create_task(self.host.serve())
            await asyncio.wait_for(self.host.started.wait(), 10)
            await self.register_webhook()
            self.connect_fno_events(runtime)
        except BaseException:
            await self._teardown()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        if self.host is not None and self._serving is not None:
            self.host.stop()
            await asyncio.wait_for(self._serving, 15)
        events = self.sandbox.fno.events
        events.deactivate_all()
        events.endpoint = None  # its sink sends to this stack's queue
        await close_runtimes()
        await asyncio.to_thread(self.sandbox.stop)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    async def register_webhook(self) -> Plan:
        """The `register` command's code, over HTTP against the Dataverse sandbox: the webhook endpoint with
        the function key, the steps and images the mappings need. Those rows are what makes the sandbox
        POST."""
        tokens = StaticTokenProvider(self.sandbox.dataverse.integration_user.token)
        async with DataverseClient(self.sandbox.dataverse_url, tokens, tag=None) as dv:
            return await register(dv, load_mappings(ROOT / "mappings"), url=self.webhook_url.split("?")[0],
                                  key=self.function_key, out=lambda line: None)

    def connect_fno_events(self, runtime: SyncRuntime) -> None:
        """What a customer sets up in F&O: an endpoint on the ``fno-events`` queue (Business events >
        Endpoints), and on it the business events and data events the F&O-sourced mappings name."""
        queue = runtime.settings.fno_events_queue
        loop = asyncio.get_running_loop()
        transport = runtime.transport if self.servicebus_namespace else None

        def send(message: FnoMessage) -> None:
            # MessageId = the event id, so a redelivered event is dropped by duplicate detection.
            outbound = OutboundMessage(body=message.body, message_id=message.message_id,
                                       content_type=message.content_type,
                                       application_properties=dict(message.application_properties))
            if transport is None:
                self.queue.send(queue, outbound)
            else:  # the delivery thread hands the message to the Service Bus sender on the stack's loop
                asyncio.run_coroutine_threadsafe(transport.send(queue, outbound), loop).result(30)

        events = self.sandbox.fno.events
        events.set_endpoint(send, queue=queue)
        business, data = fno_activations(load_mappings(ROOT / "mappings").values(), self.sandbox)
        for event_id in sorted(business):
            events.activate_business_event(event_id)
        for entity_set in sorted(data):
            events.activate_data_event(entity_set)

    def ledger(self) -> SqliteLedger:
        return SqliteLedger(self.ledger_path)

    async def wait_settled(self, timeout: float = 30.0) -> bool:
        """Until every webhook was delivered and the embedded queue holds nothing active, scheduled or locked
        (with a real namespace, the live tests wait on outcomes instead)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await self.sandbox.dataverse.wait_idle_async(timeout):
            return False
        if not await asyncio.to_thread(self.sandbox.fno.events.wait_idle, timeout):
            return False
        while loop.time() < deadline:
            counts = [await asyncio.to_thread(self.queue.counts, q) for q in ("sales-events", "fno-events")]
            if all(c.active == 0 and c.scheduled == 0 and c.locked == 0 for c in counts):
                return True
            await asyncio.sleep(0.05)
        return False


def fno_activations(specs: Any, sandbox: SandboxServer) -> tuple[set[str], set[str]]:
    """(business event ids, entity sets for data events) that the F&O-sourced mappings trigger on: a trigger
    that is a business event id of the catalog activates that event; a message (Create, Update, Delete) a data
    event on the mapping's entity (its OData entity set, or the entity whose virtual table it names)."""
    entities = sandbox.fno.entities
    by_table = {virtual_table(entity): name for name, entity in entities.items()}
    business: set[str] = set()
    data: set[str] = set()
    for spec in specs:
        if not isinstance(spec, MappingSpec) or spec.source.system != "fno":
            continue
        sources = [(spec.source.entity_set, spec.source.table, spec.source.triggers)]
        sources += [(line.source.entity_set, line.source.table, line.source.triggers) for line in spec.lines]
        for entity_set, table, triggers in sources:
            business.update(t for t in triggers if t in BUSINESS_EVENTS)
            name = entity_set if entity_set in entities else by_table.get(table.lower()) or \
                (table if table in entities else None)
            if name and any(t not in BUSINESS_EVENTS for t in triggers):
                data.add(name)
    return business, data
