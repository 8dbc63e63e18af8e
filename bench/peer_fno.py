"""Figure 6, peer side for F&O: the ``d365fo-client`` package (``FOClient``, aiohttp) creating CustomersV3 rows,
run by the peer venv's Python: ``python -m bench.peer_fno < job.json``. Prints one result line
(bench.peer_protocol).

The package has no upsert: ``create_entity`` (one POST) is compared with our upsert of a row the ledger never
wrote (also one POST). ``skip_validation=True`` is the package's own switch for bulk writes; without it each
create first looks the entity up in its metadata cache, which it fills from F&O's ``/Metadata`` API (not served
by the sandbox). Its metadata cache is switched off (``enable_metadata_cache=False``) for the same reason.

Auth: the package sends a fixed ``mock-token-for-localhost`` to any loopback URL (``AuthenticationManager``), which
the sandbox refuses like F&O would; its ``get_token`` is replaced by one returning the sandbox's bearer token.
"""

from __future__ import annotations

import asyncio
import tempfile
from importlib.metadata import version
from typing import Any

from bench.peer_protocol import Job, drive, emit, read_job

DISTRIBUTION = "d365fo-client"


async def main(job: Job) -> None:
    from d365fo_client import FOClient, FOClientConfig

    with tempfile.TemporaryDirectory(prefix="p2c-peer-fo-") as cache:
        config = FOClientConfig(base_url=job.url, enable_metadata_cache=False, metadata_cache_dir=cache,
                                timeout=60, trace_client_id="p2c-sync-bench-peer")
        client = FOClient(config)

        async def token() -> str:
            return job.token

        client.auth_manager.get_token = token  # type: ignore[method-assign]
        try:
            async def write(key: dict[str, Any], fields: dict[str, Any]) -> None:
                await client.create_entity("CustomersV3", {**key, **fields}, skip_validation=True)

            emit(await drive(job, f"{DISTRIBUTION} {version(DISTRIBUTION)} (FOClient)", write))
        finally:
            await client.close()


if __name__ == "__main__":
    asyncio.run(main(read_job()))
