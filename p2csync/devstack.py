"""The local world in one object: the sandbox, the local host running function_app.py, the webhook.

Used by ``make demo`` and by the end-to-end tests, so both exercise exactly the path a deployment runs:
Sales sandbox -> webhook POST over loopback HTTP -> embedded queue -> queue trigger -> runtime -> F&O
sandbox over loopback HTTP. The webhook itself is registered by the code of ``python -m p2csync register``,
through the sandbox's Web API.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from mappings import load_mappings
from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.ledger.sqlite import SqliteLedger
from p2csync.localhost import LocalHost
from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport
from p2csync.registration import Plan, register
from p2csync.queue.base import QueueConsumer
from p2csync.queue.servicebus import ServiceBusTransport
from p2csync.runtime import SyncRuntime, close_runtimes, get_runtime, reset_runtimes
from p2csync.settings import ROOT
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

    def ledger(self) -> SqliteLedger:
        return SqliteLedger(self.ledger_path)

    async def wait_settled(self, timeout: float = 30.0) -> bool:
        """Until every webhook was delivered and the embedded queue holds nothing active, scheduled or locked
        (with a real namespace, the live tests wait on outcomes instead)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await self.sandbox.dataverse.wait_idle_async(timeout):
            return False
        while loop.time() < deadline:
            counts = await asyncio.to_thread(self.queue.counts, "sales-events")
            if counts.active == 0 and counts.scheduled == 0 and counts.locked == 0:
                return True
            await asyncio.sleep(0.05)
        return False
