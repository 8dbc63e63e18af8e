"""The real local world (``p2csync.devstack.LocalStack``) with both simulators' requests recorded, and the
records the benchmarks sync through it."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.common import Recorder
from p2csync.devstack import LocalStack
from sandbox.dataverse import Dataverse
from sandbox.fno import FnO
from sandbox.server import SandboxServer


WEBHOOK_WORKERS = 32  # as many deliveries in flight as the product takes calls (figure 4)


def recorded_sandbox(**dataverse_kwargs: Any) -> tuple[SandboxServer, Recorder, Recorder]:
    """A sandbox whose Dataverse and F&O apps record every request with its body."""
    # Deliveries in parallel, as the asynchronous service runs them; the product must not need their order.
    dataverse, fno = Dataverse(**{"webhook_workers": WEBHOOK_WORKERS, **dataverse_kwargs}), FnO()
    dv_rec, fno_rec = Recorder("dataverse"), Recorder("fno")
    dataverse.app = dv_rec.wrap(dataverse.app)
    fno.app = fno_rec.wrap(fno.app)
    return SandboxServer(dataverse=dataverse, fno=fno), dv_rec, fno_rec


@asynccontextmanager
async def local_world(concurrency: int = 16, **dataverse_kwargs: Any
                      ) -> AsyncIterator[tuple[LocalStack, Recorder, Recorder]]:
    sandbox, dv_rec, fno_rec = recorded_sandbox(**dataverse_kwargs)
    with tempfile.TemporaryDirectory(prefix="p2c-bench-") as tmp:
        async with LocalStack(Path(tmp) / "stack", sandbox=sandbox, max_concurrent_calls=concurrency) as stack:
            yield stack, dv_rec, fno_rec


def usd(sandbox: SandboxServer) -> tuple[str, str]:
    row = next(r for r in sandbox.dataverse.rows("transactioncurrency") if r["isocurrencycode"] == "USD")
    return ("transactioncurrency", row["transactioncurrencyid"])


def account_attrs(sandbox: SandboxServer, number: str) -> dict[str, Any]:
    return {"name": f"Bench {number}", "accountnumber": number, "telephone1": "+1 425 555 0100",
            "address1_city": "Redmond", "address1_country": "United States", "creditlimit": 25000,
            "transactioncurrencyid": usd(sandbox)}


def create_accounts(sandbox: SandboxServer, prefix: str, count: int) -> list[str]:
    """Accounts created by the sales user, as in the UI; each raises its Create webhook."""
    currency = usd(sandbox)
    ids = []
    for index in range(count):
        attrs = account_attrs(sandbox, f"{prefix}{index:05d}")
        attrs["transactioncurrencyid"] = currency
        ids.append(sandbox.dataverse.create("account", attrs))
    return ids


async def settle(stack: LocalStack, timeout: float = 120.0, poll: float = 0.01) -> float:
    """Wait (polling tightly, so the wait adds little to a timing) until every webhook was delivered and both
    queues are empty; returns the monotonic time it saw that."""
    deadline = time.monotonic() + timeout
    webhooks = stack.sandbox.dataverse.webhooks
    while time.monotonic() < deadline:
        if webhooks.pending == 0:
            counts = [await asyncio.to_thread(stack.queue.counts, q) for q in ("sales-events", "fno-events")]
            if all(c.active == 0 and c.scheduled == 0 and c.locked == 0 for c in counts) \
                    and webhooks.pending == 0:
                return time.perf_counter()
        await asyncio.sleep(poll)
    raise TimeoutError("the local world did not settle")
