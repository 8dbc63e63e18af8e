"""The bare client of figure 1, run as its own process (as the product's host is): replays recorded request
chains with a bare httpx client at a given concurrency (one chain's calls in order) and prints the seconds from
its first request to its last answer. It uses the transport the product's connectors use (P2C_HTTP_TRANSPORT,
aiohttp by default) and the local host's event loop (uvloop where installed, ``P2C_EVENT_LOOP``), so the figure is
what the product's own code adds, not a difference of HTTP stacks or loops.

``python -m bench.bare_client CHAINS.json BASE_URLS.json CONCURRENCY``; CHAINS.json is a list of chains, each a
list of {system, method, path, query, headers, body (base64)}; BASE_URLS.json maps system -> base URL."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from p2csync.connectors.aiohttp_transport import default_transport
from p2csync.localhost import run_on_local_loop


async def replay(chains: list[list[dict[str, Any]]], urls: dict[str, str], concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=60,
                                 transport=default_transport(limits)) as client:
        gate = asyncio.Semaphore(concurrency)

        async def run(chain: list[dict[str, Any]]) -> None:
            async with gate:
                for call in chain:
                    url = f"{urls[call['system']]}{call['path']}" + (f"?{call['query']}" if call["query"] else "")
                    response = await client.request(call["method"], url, headers=call["headers"],
                                                    content=base64.b64decode(call["body"]) or None)
                    await response.aread()

        started = time.perf_counter()
        await asyncio.gather(*(run(chain) for chain in chains))
        return time.perf_counter() - started


def main(argv: list[str]) -> int:
    chains = json.loads(Path(argv[0]).read_text())
    urls = json.loads(Path(argv[1]).read_text())
    print(f"{run_on_local_loop(replay(chains, urls, int(argv[2]))):.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
