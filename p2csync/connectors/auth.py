"""Bearer tokens for the connectors.

In Azure: managed identity (or any azure-identity credential) through ``AzureIdentityTokenProvider``; in the
sandbox: a fixed token through ``StaticTokenProvider``. Both satisfy the ``TokenProvider`` protocol, which is
all the HTTP layer knows about.

```python
credential = default_credential(settings.managed_identity_client_id)
tokens = AzureIdentityTokenProvider(credential, scope_for(settings.dataverse_url))
```

No token ever appears in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import httpx

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.identity.aio import DefaultAzureCredential

__all__ = [
    "AzureIdentityTokenProvider",
    "StaticTokenProvider",
    "TokenProvider",
    "default_credential",
    "scope_for",
]

#: Refresh this many seconds before the token expires.
REFRESH_MARGIN = 300.0


@runtime_checkable
class TokenProvider(Protocol):
    """Anything that hands out a bearer token (without the ``Bearer`` prefix).

    A provider may also offer ``invalidate()``; the HTTP layer calls it once when a request gets 401, then
    asks for a fresh token and tries again.
    """

    async def token(self) -> str: ...


class StaticTokenProvider:
    """Always the same token: the sandbox's well-known one, or tests."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("StaticTokenProvider needs a non-empty token")
        self._token = token

    async def token(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "StaticTokenProvider(token='***')"


class AzureIdentityTokenProvider:
    """Tokens for one scope from an azure-identity async credential, cached until 5 minutes before expiry.

    Concurrent callers that find the cache stale wait on one lock, so one refresh serves them all (no
    thundering herd on the token endpoint). The credential belongs to the caller, who closes it.
    """

    def __init__(
        self,
        credential: AsyncTokenCredential,
        scope: str,
        *,
        refresh_margin: float = REFRESH_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential
        self.scope = scope
        self._margin = refresh_margin
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._expires_on - self._margin

    async def token(self) -> str:
        if self._fresh():
            return self._token  # type: ignore[return-value]
        async with self._lock:
            if self._fresh():  # another caller refreshed it while we waited
                return self._token  # type: ignore[return-value]
            access = await self._credential.get_token(self.scope)
            self._token, self._expires_on = access.token, float(access.expires_on)
            # A token that is already inside the margin is still returned; the next call refreshes again.
            return access.token

    def invalidate(self) -> None:
        """Forget the cached token (after a 401), so the next ``token()`` asks the credential again."""
        self._token = None
        self._expires_on = 0.0

    def __repr__(self) -> str:
        return f"AzureIdentityTokenProvider(scope={self.scope!r})"


def scope_for(base_url: str) -> str:
    """The ``.default`` scope of an environment: ``https://contoso.crm.dynamics.com/.default``."""
    url = httpx.URL(base_url)
    if not url.scheme or not url.host:
        raise ValueError(f"not an absolute URL: {base_url!r}")
    return f"{url.scheme}://{url.host}/.default"


def default_credential(client_id: str | None = None) -> DefaultAzureCredential:
    """``DefaultAzureCredential`` (async); with ``client_id``, the managed identity is that user-assigned one."""
    from azure.identity.aio import DefaultAzureCredential

    if client_id:
        return DefaultAzureCredential(managed_identity_client_id=client_id)
    return DefaultAzureCredential()
