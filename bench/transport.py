"""CPU per request of the connectors' HTTP layer (``ApiClient.request``: a JSON POST) on each transport, httpx's
own (httpcore) and ``AiohttpTransport``, in one run, rounds interleaved, against a trivial loopback server in
another process (its CPU is not counted). ``python -m bench.transport``; ``BENCH_SCALE=tiny`` for a smoke run.

Why it exists: httpcore's pool looked at every connection on every request (the profile of the bare httpx loop);
this keeps the figure that justified the aiohttp transport measurable."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

import httpx

from bench.common import Figure, at_most, pick, progress
from p2csync.connectors.aiohttp_transport import AiohttpTransport
from p2csync.connectors.auth import StaticTokenProvider
from p2csync.connectors.http import DEFAULT_LIMITS, ApiClient, HttpOptions

IN_FLIGHT = 16
ANSWER = b'{"@odata.etag":"W/\\"1\\"","accountid":"00000000-0000-0000-0000-000000000001","name":"Contoso"}'
RECORD = {"name": "Contoso", "accountnumber": "ACC-0001", "telephone1": "+1 425 555 0100", "creditlimit": 1000}


async def _serve() -> None:
    """A keep-alive HTTP/1.1 server that answers every request 201 with a fixed body (prints its port)."""
    head = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json; odata.metadata=minimal\r\n"
            b"OData-Version: 4.0\r\nContent-Length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in request.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                writer.write(head)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def _transport(name: str) -> httpx.AsyncBaseTransport:
    return AiohttpTransport(DEFAULT_LIMITS) if name == "aiohttp" else httpx.AsyncHTTPTransport(limits=DEFAULT_LIMITS)


async def _round(url: str, name: str, requests: int) -> tuple[float, float]:
    """CPU ms and wall ms per request for ``requests`` POSTs, ``IN_FLIGHT`` at a time, after a warm-up."""
    options = HttpOptions(transport=_transport(name), initial_concurrency=IN_FLIGHT, max_concurrency=IN_FLIGHT)
    async with ApiClient(url, StaticTokenProvider("bench"), http=options) as api:
        async def worker(count: int) -> None:
            for _ in range(count):
                await api.request("POST", "accounts", json=RECORD)

        await asyncio.gather(*(worker(4) for _ in range(IN_FLIGHT)))
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(requests // IN_FLIGHT) for _ in range(IN_FLIGHT)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = requests // IN_FLIGHT * IN_FLIGHT
    return cpu * 1000 / done, wall * 1000 / done


async def measure(rounds: int, requests: int) -> dict[str, list[float]]:
    server = subprocess.Popen([sys.executable, "-m", "bench.transport", "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/data/"
        cpu: dict[str, list[float]] = {"httpx": [], "aiohttp": []}
        for index in range(rounds):
            for name in (("httpx", "aiohttp") if index % 2 == 0 else ("aiohttp", "httpx")):
                per_request, wall = await _round(url, name, requests)
                cpu[name].append(per_request)
                progress(f"transport: {name} round {index + 1}: {per_request:.3f} ms CPU, {wall:.3f} ms wall per request")
        return cpu
    finally:
        server.terminate()
        server.wait(timeout=10)


async def run() -> list[Figure]:
    bench = "transport"
    cpu = await measure(pick(1, 5), pick(64, 3000))
    httpcore, aiohttp = statistics.median(cpu["httpx"]), statistics.median(cpu["aiohttp"])
    detail = (f"ApiClient JSON POST, {IN_FLIGHT} in flight, loopback server in another process; median of "
              f"{len(cpu['httpx'])} interleaved rounds; httpx (httpcore) {httpcore:.3f} ms")
    return [at_most(bench, "CPU per request, aiohttp transport vs httpcore", round(aiohttp / httpcore, 3), 0.5,
                    "x", detail + f", aiohttp {aiohttp:.3f} ms")]


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        asyncio.run(_serve())
    else:
        for figure in asyncio.run(run()):
            print(figure.model_dump_json())
