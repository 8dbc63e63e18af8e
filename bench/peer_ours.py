"""Figure 6, our side: p2c-sync's connectors doing the same writes as the peer, in their own process (as the
peer runs in its own), with the project's Python: ``python -m bench.peer_ours < job.json``.

Dataverse: ``DataverseClient.upsert`` (PATCH by alternate key). F&O: ``FnOClient.upsert(..., exists=False)``,
the call the product makes for a record its ledger has never written (one POST). The connectors' adaptive
concurrency is pinned to the job's, so both sides have the same number of requests in flight.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from bench.peer_protocol import Job, drive, emit, read_job
from p2csync import __version__
from p2csync.connectors import DataverseClient, FnOClient, HttpOptions, StaticTokenProvider


def options(concurrency: int) -> HttpOptions:
    return HttpOptions(initial_concurrency=concurrency, max_concurrency=concurrency,
                       limits=httpx.Limits(max_connections=concurrency * 2,
                                           max_keepalive_connections=concurrency * 2))


async def main(job: Job) -> None:
    tokens = StaticTokenProvider(job.token)
    name = f"p2c-sync {__version__}"
    if job.system == "dataverse":
        async with DataverseClient(job.url, tokens, http=options(job.concurrency)) as dv:
            async def write_dv(key: dict[str, Any], columns: dict[str, Any]) -> None:
                await dv.upsert("accounts", key, columns)

            emit(await drive(job, f"{name} DataverseClient.upsert", write_dv))
    else:
        async with FnOClient(job.url, tokens, http=options(job.concurrency)) as fno:
            async def write_fno(key: dict[str, Any], fields: dict[str, Any]) -> None:
                await fno.upsert("CustomersV3", key, fields, exists=False)

            emit(await drive(job, f"{name} FnOClient.upsert", write_fno))


if __name__ == "__main__":
    asyncio.run(main(read_job()))
