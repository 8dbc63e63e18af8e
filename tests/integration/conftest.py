"""Fixtures of the runtime integration tests (helpers in runtime_world.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from p2csync.runtime import SyncRuntime
from sandbox import SandboxServer
from tests.integration.runtime_world import Capture, Runtimes, _register


@pytest.fixture(scope="module")
def _world() -> Iterator[tuple[SandboxServer, Capture]]:
    capture = Capture()
    capture.server.start()
    try:
        with SandboxServer() as server:
            server.dataverse.webhooks.retry_delay = 0.01
            yield server, capture
    finally:
        capture.server.stop()


@pytest.fixture
def capture(_world: tuple[SandboxServer, Capture]) -> Capture:
    return _world[1]


@pytest.fixture
def sandbox(_world: tuple[SandboxServer, Capture]) -> Iterator[SandboxServer]:
    server, capture = _world
    server.dataverse.reset(webhooks=True)
    server.fno.reset()
    server.fno.events.deactivate_all()
    capture.take()
    groups = set(server.fno.customer_groups)
    # The `register` command over the Web API: Create, and Update filtered on the mapped columns.
    asyncio.run(_register(server, capture.url))
    server.dataverse.request_log.clear()
    yield server
    server.fno.customer_groups = groups


@pytest.fixture
async def runtimes(sandbox: SandboxServer, tmp_path: Path) -> AsyncIterator[Runtimes]:
    built = Runtimes(sandbox, tmp_path)
    yield built
    await built.aclose()


@pytest.fixture
async def runtime(runtimes: Runtimes) -> SyncRuntime:
    return runtimes.build()
