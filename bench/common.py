"""What every benchmark shares: the figure it reports, the size it runs at, the local world it drives.

Figures are ratios or counts taken within one run (the machine is shared and noisy), never absolute timings
compared across runs.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

Scale = Literal["tiny", "full"]


class Figure(BaseModel):
    """One measured figure beside its target. ``passed`` is None when it was not measured."""

    bench: str
    name: str
    value: float | None
    unit: str
    target: str
    passed: bool | None
    detail: str = ""


def scale() -> Scale:
    """``BENCH_SCALE=tiny`` runs every benchmark at a size that only proves the code works (the smoke test)."""
    return "tiny" if os.environ.get("BENCH_SCALE", "full") == "tiny" else "full"


def pick(tiny: int, full: int) -> int:
    return tiny if scale() == "tiny" else full


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def at_most(bench: str, name: str, value: float | None, limit: float, unit: str, detail: str = "",
            fmt: str = "{:g}") -> Figure:
    return Figure(bench=bench, name=name, value=value, unit=unit, target=f"<= {fmt.format(limit)}",
                  passed=None if value is None else value <= limit, detail=detail)


def at_least(bench: str, name: str, value: float | None, limit: float, unit: str, detail: str = "",
             fmt: str = "{:g}") -> Figure:
    return Figure(bench=bench, name=name, value=value, unit=unit, target=f">= {fmt.format(limit)}",
                  passed=None if value is None else value >= limit, detail=detail)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


# ------------------------------------------------------------------------------ recording the calls made
@dataclass
class Call:
    """One request a simulator received, with its body: what a bare client must send to do the same."""

    system: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    correlation: str | None = None
    started: float = 0.0  # perf_counter when the request came in
    ended: float = 0.0  # and when it was answered


@dataclass
class Recorder:
    """Wraps a simulator's ASGI app and keeps every request it answers (admin paths excluded)."""

    system: str
    calls: list[Call] = field(default_factory=list)
    enabled: bool = True

    def wrap(self, app: Any) -> Any:
        recorder = self

        async def recording(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or not recorder.enabled or scope["path"].startswith("/_sandbox"):
                await app(scope, receive, send)
                return
            chunks: list[bytes] = []

            async def tapped_receive() -> Any:
                message = await receive()
                if message["type"] == "http.request":
                    chunks.append(message.get("body", b""))
                return message

            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            call = Call(system=recorder.system, method=scope["method"], path=scope["path"],
                        query=scope.get("query_string", b"").decode("latin-1"), headers=headers, body=b"",
                        correlation=headers.get("x-ms-correlation-id"), started=time.perf_counter())

            async def tapped_send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    call.status = message["status"]
                await send(message)

            try:
                await app(scope, tapped_receive, tapped_send)
            finally:
                call.body = b"".join(chunks)
                call.ended = time.perf_counter()
                recorder.calls.append(call)

        return recording


def json_dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
