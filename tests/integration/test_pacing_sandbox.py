"""The pacer over loopback HTTP against each sandbox's service-protection window (sandbox/limits.py: a
sliding window per user, 429 + Retry-After in whole seconds): the first contact costs at most the requests in
flight, the client learns the window, and afterwards runs at it without 429s. Counts are asserted; the one
timing bound is generous."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from p2csync.connectors import DataverseClient, FnOClient, HttpOptions, StaticTokenProvider
from p2csync.connectors.http import ApiClient
from sandbox import INTEGRATION_TOKEN, SandboxServer
from sandbox.limits import ServiceProtectionLimits

IN_FLIGHT, LIMIT, WINDOW = 4, 6, 1.0
#: per system: the simulator, the client, a cheap read
SYSTEMS: dict[str, tuple[str, type[ApiClient], str]] = {
    "fno": ("fno", FnOClient, "CustomersV3"),
    "dataverse": ("dataverse", DataverseClient, "accounts"),
}


async def _burst(client: ApiClient, path: str, count: int) -> None:
    async def one() -> None:
        await client.request("GET", path, params={"$top": "1"})

    await asyncio.gather(*(one() for _ in range(count)))


def _log(sim: Any) -> list[Any]:
    return [entry for entry in sim.request_log.entries() if "/_sandbox" not in entry.path]


@pytest.mark.parametrize("system", sorted(SYSTEMS))
async def test_client_learns_the_window_and_runs_at_it_without_a_storm_of_429s(
    sandbox: SandboxServer, system: str
) -> None:
    name, client_type, path = SYSTEMS[system]
    sim = getattr(sandbox, name)
    url = getattr(sandbox, f"{name}_url")
    sim.protection.configure(ServiceProtectionLimits(max_concurrent=52, max_requests=LIMIT, window_seconds=WINDOW,
                                                     retry_after=1))
    sim.protection.reset()  # a clean window (the fixture's registration used the Dataverse one)
    sim.request_log.clear()
    options = HttpOptions(initial_concurrency=IN_FLIGHT, max_concurrency=IN_FLIGHT)
    async with client_type(url, StaticTokenProvider(INTEGRATION_TOKEN), http=options) as client:
        await _burst(client, path, 3 * LIMIT)
        first_contact = sum(1 for entry in _log(sim) if entry.status == 429)
        assert 1 <= first_contact <= IN_FLIGHT  # only what was in flight when the window filled
        assert client.pacer.budget == LIMIT
        assert client.pacer.period is not None and WINDOW <= client.pacer.period <= WINDOW + 1.2

        sim.request_log.clear()
        started = time.monotonic()
        await _burst(client, path, 4 * LIMIT)
        elapsed = time.monotonic() - started
    assert [entry.status for entry in _log(sim)] == [200] * (4 * LIMIT)
    # at the limit: the window admits no faster than 4 windows; the pacer keeps up with its learned period
    assert elapsed <= 4 * (WINDOW + 1.2) + 2.0
