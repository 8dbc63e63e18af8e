"""The pacer over loopback HTTP against the F&O sandbox's service-protection window (sandbox/limits.py: a
sliding window per user, 429 + Retry-After in whole seconds): the first contact costs at most the requests in
flight, the client learns the window, and afterwards runs at it without 429s. Counts are asserted; the one
timing bound is generous."""

from __future__ import annotations

import asyncio
import time

from p2csync.connectors import FnOClient, HttpOptions, StaticTokenProvider
from sandbox import INTEGRATION_TOKEN, SandboxServer
from sandbox.limits import ServiceProtectionLimits

IN_FLIGHT, LIMIT, WINDOW = 4, 6, 1.0


async def _burst(fno: FnOClient, count: int) -> None:
    async def one() -> None:
        await fno.request("GET", "CustomersV3", params={"$top": "1", "cross-company": "true"})

    await asyncio.gather(*(one() for _ in range(count)))


def _throttled(sandbox: SandboxServer) -> int:
    return sum(1 for entry in sandbox.fno.request_log.entries() if entry.status == 429)


async def test_fno_client_learns_the_window_and_runs_at_it_without_a_storm_of_429s(sandbox: SandboxServer) -> None:
    sandbox.fno.protection.configure(ServiceProtectionLimits(max_concurrent=52, max_requests=LIMIT,
                                                             window_seconds=WINDOW, retry_after=1))
    options = HttpOptions(initial_concurrency=IN_FLIGHT, max_concurrency=IN_FLIGHT)
    async with FnOClient(sandbox.fno_url, StaticTokenProvider(INTEGRATION_TOKEN), http=options) as fno:
        await _burst(fno, 3 * LIMIT)
        first_contact = _throttled(sandbox)
        assert 1 <= first_contact <= IN_FLIGHT  # only what was in flight when the window filled
        assert fno.pacer.budget == LIMIT
        assert fno.pacer.period is not None and WINDOW <= fno.pacer.period <= WINDOW + 1.2

        sandbox.fno.request_log.clear()
        started = time.monotonic()
        await _burst(fno, 4 * LIMIT)
        elapsed = time.monotonic() - started
    assert _throttled(sandbox) == 0
    assert len(sandbox.fno.request_log.entries()) == 4 * LIMIT
    # at the limit: the window admits no faster than 4 windows; the pacer keeps up with its learned period
    assert elapsed <= 4 * (WINDOW + 1.2) + 2.0
