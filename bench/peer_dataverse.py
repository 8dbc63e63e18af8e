"""Figure 6, peer side for Dataverse: Microsoft's ``powerplatform-dataverse-client`` (its async client,
``AsyncDataverseClient``) upserting accounts by alternate key, run by the peer venv's Python:
``python -m bench.peer_dataverse < job.json``. Prints one result line (bench.peer_protocol).

One adaptation to the sandbox, outside the timed loop: auth, a minimal ``AsyncTokenCredential`` that hands out
the sandbox's bearer token (the client takes any azure-core credential; azure-identity would ask Entra ID).
The client's own metadata reads (the entity set by ``EntityDefinitions?$filter=LogicalName eq 'account'``, the
table's choice columns by ``EntityDefinitions(...)/Attributes/...PicklistAttributeMetadata``) go to the sandbox
as they would to the service, once per client; until stop 16 the sandbox could not answer them and this module
filled the client's caches instead.
"""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import version
from typing import Any

from bench.peer_protocol import Job, drive, emit, read_job

DISTRIBUTION = "powerplatform-dataverse-client"


class SandboxCredential:
    """An azure-core ``AsyncTokenCredential`` returning the sandbox's static bearer token."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> SandboxCredential:
        return self

    async def __aexit__(self, *args: Any) -> None:
        return None


async def main(job: Job) -> None:
    from PowerPlatform.Dataverse.aio.async_client import AsyncDataverseClient
    from PowerPlatform.Dataverse.core.config import DataverseConfig

    config = DataverseConfig.from_env()
    async with AsyncDataverseClient(job.url, SandboxCredential(job.token), config) as client:
        async def write(key: dict[str, Any], columns: dict[str, Any]) -> None:
            await client.records.upsert("account", [{"alternate_key": key, "record": columns}])

        emit(await drive(job, f"{DISTRIBUTION} {version(DISTRIBUTION)} (AsyncDataverseClient)", write))


if __name__ == "__main__":
    asyncio.run(main(read_job()))
