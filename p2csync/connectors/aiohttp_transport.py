"""An httpx transport on aiohttp: the connectors' httpx client, with aiohttp's C-accelerated pool underneath.

Why: httpcore's pool checks every connection (``is_idle``/``has_expired``: socket attribute look-ups) for every
request; with 16 calls in flight a plain httpx POST costs 2.1-2.8 ms CPU, the same client on aiohttp 0.5-0.7 ms.
The rest of httpx stays as it is: URL and header building, content-encoding decoding (aiohttp passes the raw
bytes and headers through: ``auto_decompress`` off), cookies (aiohttp's jar is a dummy), no redirects.

Exceptions: ``ApiClient`` resends *any* request after ``ConnectError``/``ConnectTimeout``/``PoolTimeout`` (it
never reached the server) but a POST after any other failure only when the caller says it is idempotent. So a
failure after the request may have been written must never become one of those three. The map, read from
aiohttp 3.14's ``client_exceptions`` and where ``client.py``/``client_proto.py`` raise them:

====================================================  ====================================  ==========================
aiohttp                                               where it is raised                    httpx
====================================================  ====================================  ==========================
InvalidURL, NonHttpUrlClientError                     before connecting                     UnsupportedProtocol
ClientConnectorError (+ DNS, SSL, certificate, ...)   ``TCPConnector`` cannot connect       ConnectError
ServerFingerprintMismatch                             TLS handshake                         ConnectError
ClientHttpProxyError                                  proxy refused CONNECT                 ProxyError
ConnectionTimeoutError                                ``connector.connect``: pool wait or   ConnectTimeout [1]
                                                      new connection (``ClientTimeout``
                                                      ``connect``/``sock_connect``)
SocketTimeoutError, other ServerTimeoutError,         no byte for ``sock_read`` s after     ReadTimeout
plain ``TimeoutError``                                the body was written
ServerDisconnectedError                               closed without a (complete) answer    RemoteProtocolError
ClientPayloadError, ClientResponseError               malformed or truncated answer         RemoteProtocolError
UploadAbortedError                                    request body not fully written        WriteError
ClientOSError, ClientConnectionResetError,            reset / OS error on a connection in   ReadError
other ClientConnectionError, OSError                  use (possibly after sending)
any other ``aiohttp.ClientError``                     [Inferred] unknown phase              ReadError
====================================================  ====================================  ==========================

[1] aiohttp raises one ``ConnectionTimeoutError`` for both waiting for a free pool slot and opening the socket,
so a pool wait that times out is reported as ``ConnectTimeout``, not ``PoolTimeout``; both mean "not sent".

Timeouts (httpx ``timeout`` extension -> ``aiohttp.ClientTimeout``): ``connect`` -> ``sock_connect``; ``pool``
+ ``connect`` -> ``connect`` (aiohttp's ``connect`` covers the pool wait *and* the new connection); ``read`` ->
``sock_read`` (between two reads, started once the body is written); no ``total``. httpx's ``write`` has no
aiohttp counterpart: [Inferred] acceptable for our bodies (a few MB at most, handed to the kernel at once);
a server that stops reading mid-body is not timed out by this transport.

Retries: none here. aiohttp's own silent resend of an idempotent request over a dropped connection is turned
off, so every resend goes through ``ApiClient``'s policy (and its log line and metric), as with httpcore.

Limits: ``max_connections`` -> connector ``limit``; ``keepalive_expiry`` -> ``keepalive_timeout``;
``max_keepalive_connections`` = 0 -> ``force_close`` (aiohttp has no other cap on idle connections).

``P2C_HTTP_TRANSPORT=httpx`` switches the connectors back to httpx's own (httpcore) transport, in case aiohttp
misbehaves somewhere; the default is ``aiohttp``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx
from yarl import URL

__all__ = ["TRANSPORT_SETTING", "AiohttpTransport", "default_transport", "instrument", "map_exception"]

TRANSPORT_SETTING = "P2C_HTTP_TRANSPORT"
_TRANSPORTS = ("aiohttp", "httpx")

#: Headers aiohttp would add on its own: httpx has already set the ones it sends, the rest stay unsent.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
#: [Inferred] h11 (httpcore) accepts header blocks up to 100 KB; aiohttp's default 8190 per line is tighter.
_MAX_LINE = 65536
_HTTP_VERSIONS = {(1, 1): b"HTTP/1.1", (1, 0): b"HTTP/1.0"}


def map_exception(exc: BaseException, request: httpx.Request | None = None) -> httpx.TransportError:
    """The httpx error for an aiohttp failure (see the module docstring for the table and why)."""
    message = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        kind = httpx.UnsupportedProtocol
    elif isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ServerFingerprintMismatch)):
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        kind = httpx.ProxyError
    elif isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        kind = httpx.ReadTimeout
    elif isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.UploadAbortedError):
        kind = httpx.WriteError
    else:  # ClientOSError, ClientConnectionResetError, ClientConnectionError, OSError, any other ClientError
        kind = httpx.ReadError
    return kind(message, request=request)


_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class _ResponseStream(httpx.AsyncByteStream):
    """The body of an aiohttp response as httpx reads it; ``aclose`` hands the connection back (or closes it
    when the body was not read to the end)."""

    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _FAILURES as exc:
            raise map_exception(exc, self._request) from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests sent by one aiohttp ``ClientSession`` (created on first use, inside the running loop)."""

    def __init__(self, limits: httpx.Limits | None = None, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._limits = limits or httpx.Limits()
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is not None and self._loop is loop and not self._session.closed:
            return self._session
        limits = self._limits
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()  # the same trust store as httpx's own transport
        force_close = limits.max_keepalive_connections == 0
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections or 0, limit_per_host=0, ssl=self._ssl_context, force_close=force_close,
            keepalive_timeout=None if force_close else limits.keepalive_expiry,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS, timeout=aiohttp.ClientTimeout(), raise_for_status=False,
            max_line_size=_MAX_LINE, max_field_size=_MAX_LINE,
        )
        # [Inferred] aiohttp resends an idempotent request once, silently, when its connection drops; retries are
        # ApiClient's alone (backoff, log line, retry metric), so that is switched off (no public switch for it).
        self._session._retry_connection = False
        self._loop = loop
        return self._session

    def _timeout(self, extension: Mapping[str, float | None] | None) -> aiohttp.ClientTimeout:
        """httpx's connect/read/pool timeouts as aiohttp's (cached: a handful of distinct values per process)."""
        spec = extension or {}
        connect, read, pool = spec.get("connect"), spec.get("read"), spec.get("pool")
        key = (connect, read, pool)
        timeout = self._timeouts.get(key)
        if timeout is None:
            acquire = None if connect is None or pool is None else connect + pool
            timeout = aiohttp.ClientTimeout(total=None, connect=acquire, sock_connect=connect, sock_read=read)
            if len(self._timeouts) < 64:
                self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{url.scheme}://'.",
                                            request=request)
        session = self._open()
        headers = request.headers.multi_items()
        try:
            body: Any = request.content or None
        except httpx.RequestNotRead:  # a streamed body: aiohttp sends it chunked and sets the header itself
            body = _chunks(request.stream)  # type: ignore[arg-type]
            headers = [(name, value) for name, value in headers if name.lower() != "transfer-encoding"]
        try:
            response = await session.request(
                request.method, URL(str(url), encoded=True), headers=headers, data=body,
                allow_redirects=False, timeout=self._timeout(request.extensions.get("timeout")),
            )
        except _FAILURES as exc:
            raise map_exception(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, request),
            extensions={
                "http_version": _HTTP_VERSIONS.get(tuple(response.version or (1, 1)), b"HTTP/1.1"),
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


async def _chunks(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


def default_transport(limits: httpx.Limits, env: Mapping[str, str] | None = None) -> httpx.AsyncBaseTransport | None:
    """The connectors' transport as ``P2C_HTTP_TRANSPORT`` chooses: ``aiohttp`` (default) or ``httpx`` (None:
    httpx builds its own httpcore transport)."""
    choice = ((os.environ if env is None else env).get(TRANSPORT_SETTING) or "aiohttp").strip().lower()
    if choice not in _TRANSPORTS:
        raise ValueError(f"{TRANSPORT_SETTING}: must be one of {', '.join(_TRANSPORTS)}, not {choice!r}")
    return AiohttpTransport(limits) if choice == "aiohttp" else None


def instrument(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Give a client on ``AiohttpTransport`` the OpenTelemetry httpx client spans.

    The httpx instrumentation, once enabled (the Azure Monitor distro does it), patches only
    ``httpx.AsyncHTTPTransport.handle_async_request``; a client with another transport must be instrumented
    one by one. Nothing is imported when the instrumentation was never loaded (cold start)."""
    import sys

    if not isinstance(client._transport, AiohttpTransport) or "opentelemetry.instrumentation.httpx" not in sys.modules:
        return client
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if HTTPXClientInstrumentor().is_instrumented_by_opentelemetry:
        HTTPXClientInstrumentor.instrument_client(client)
    return client
