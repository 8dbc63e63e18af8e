"""Shared fixtures: one sandbox and one webhook receiver per session, reset before every test."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import INTEGRATION_TOKEN, SALES_TOKEN, SandboxServer
from sandbox.server import BackgroundServers


class Receiver:
    """A webhook endpoint that records every POST and answers with scripted statuses (default 200)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.server = BackgroundServers([Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.calls.append({"query": dict(request.query_params), "headers": dict(request.headers),
                               "raw": body, "json": json.loads(body)})
            status = self.statuses.pop(0) if self.statuses else 200
        return Response(status_code=status)

    @property
    def url(self) -> str:
        return self.server.urls[0] + "/hook"

    def payloads(self) -> list[dict[str, Any]]:
        with self.lock:
            return [call["json"] for call in self.calls]

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.statuses.clear()


@pytest.fixture(scope="session")
def _session_sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(dataverse=None, fno=None)
    with server:
        server.dataverse.webhooks.retry_delay = 0.01
        yield server


@pytest.fixture(scope="session")
def _session_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.server.start()
    yield receiver
    receiver.server.stop()


@pytest.fixture
def sandbox(_session_sandbox: SandboxServer) -> SandboxServer:
    _session_sandbox.dataverse.reset(webhooks=True)
    _session_sandbox.fno.reset()
    return _session_sandbox


@pytest.fixture
def receiver(_session_receiver: Receiver) -> Receiver:
    _session_receiver.reset()
    return _session_receiver


def client(base_url: str, token: str | None = INTEGRATION_TOKEN) -> httpx.Client:
    headers = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=base_url, headers=headers, trust_env=False, timeout=10)


@pytest.fixture
def dv(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with client(sandbox.dataverse_api_url) as c:
        yield c


@pytest.fixture
def dv_sales(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with client(sandbox.dataverse_api_url, SALES_TOKEN) as c:
        yield c


@pytest.fixture
def fo(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with client(sandbox.fno_data_url) as c:
        yield c
