"""AiohttpTransport under an httpx client, against real loopback servers (asyncio.start_server) that answer
exactly what each test needs: the round trip, and above all the exception map (a failure after the request
was sent must never look like "not sent", or ApiClient would resend a POST that may have been applied)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace

import aiohttp
import httpx
import pytest

from p2csync.connectors.aiohttp_transport import AiohttpTransport, default_transport, map_exception
from p2csync.connectors.auth import StaticTokenProvider
from p2csync.connectors.errors import TransientError
from p2csync.connectors.http import _NOT_SENT, ApiClient, HttpOptions, RetryPolicy, create_http_client
from tests.otel import memory_telemetry


class Server:
    """A loopback HTTP/1.1 server: ``answer(request_head, body)`` returns the bytes to write (or None to
    close without answering); counts connections and requests."""

    def __init__(self, answer: Callable[[bytes, bytes], Awaitable[bytes | None]]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.requests.append((head, body))
                out = await self.answer(head, body)
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
        finally:
            writer.close()


@asynccontextmanager
async def serving(answer: Callable[[bytes, bytes], Awaitable[bytes | None]]) -> AsyncIterator[Server]:
    server = Server(answer)
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    try:
        yield server
    finally:
        server.server.close()
        await server.server.wait_closed()


def reply(status: str, body: bytes, *headers: tuple[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def client(base: str, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, transport=AiohttpTransport(), **kwargs)  # type: ignore[arg-type]


async def echo(head: bytes, body: bytes) -> bytes:
    """Answers with what it received: method line, headers as a list, body."""
    lines = head.decode().split("\r\n")
    payload = json.dumps({"line": lines[0], "headers": [line for line in lines[1:] if line],
                          "body": body.decode()}).encode()
    return reply("201 Created Indeed", payload, ("Content-Type", "application/json"),
                 ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Many", "one"), ("X-Many", "two"))


async def test_post_round_trip_keeps_body_status_reason_and_repeated_headers() -> None:
    async with serving(echo) as server, client(server.url) as http:
        response = await http.post("/accounts?$filter=name eq 'A&B'", json={"name": "Contoso", "n": 1},
                                   headers=[("X-Twice", "1"), ("X-Twice", "2")])
    assert response.status_code == 201
    assert response.reason_phrase == "Created Indeed"
    assert response.http_version == "HTTP/1.1"
    assert response.headers.get_list("x-many") == ["one", "two"]
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    seen = response.json()
    assert seen["line"] == f"POST {response.request.url.raw_path.decode()} HTTP/1.1"  # httpx's encoding, as is
    assert seen["line"] == "POST /accounts?$filter=name%20eq%20'A&B' HTTP/1.1"
    assert json.loads(seen["body"]) == {"name": "Contoso", "n": 1}
    sent = [h.lower() for h in seen["headers"]]
    assert "x-twice: 1" in sent and "x-twice: 2" in sent
    assert "content-type: application/json" in sent
    assert sum(h.startswith("content-type:") for h in sent) == 1  # aiohttp adds none of its own
    assert any(h.startswith("user-agent: python-httpx/") for h in sent)


async def test_get_sends_no_body_and_no_cookies_from_aiohttp() -> None:
    async with serving(echo) as server, client(server.url) as http:
        await http.get("/one")
        http.cookies.clear()
        second = (await http.get("/two")).json()
    assert second["line"] == "GET /two HTTP/1.1"
    assert second["body"] == ""
    lowered = [h.lower() for h in second["headers"]]
    assert not any(h.startswith(("cookie:", "content-length:", "content-type:")) for h in lowered)


async def test_gzip_body_is_decoded_by_httpx_as_with_the_default_transport() -> None:
    raw = json.dumps({"value": list(range(200))}).encode()

    async def gzipped(head: bytes, body: bytes) -> bytes:
        return reply("200 OK", gzip.compress(raw), ("Content-Encoding", "gzip"), ("Content-Type", "application/json"))

    async with serving(gzipped) as server:
        async with client(server.url) as http:
            ours = await http.get("/")
        async with httpx.AsyncClient(base_url=server.url) as http:
            theirs = await http.get("/")
    assert ours.content == theirs.content == raw
    assert ours.headers["content-encoding"] == "gzip"
    assert int(ours.headers["content-length"]) < len(raw)  # the wire bytes, passed through untouched


async def test_streamed_request_body_and_streamed_response() -> None:
    async def chunked_echo(head: bytes, body: bytes) -> bytes:
        return reply("200 OK", b"x" * 100_000)

    async def parts() -> AsyncIterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    async def read_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        writer.write(reply("200 OK", head.split(b"\r\n")[0] + b"|" + body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(read_chunked, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with client(f"http://127.0.0.1:{port}") as http:
            response = await http.post("/up", content=parts())
        assert response.content == b'POST /up HTTP/1.1|{"a":1}'
    finally:
        server.close()
        await server.wait_closed()

    async with serving(chunked_echo) as big, client(big.url) as http:
        async with http.stream("GET", "/") as response:
            received = [chunk async for chunk in response.aiter_raw()]
        assert sum(map(len, received)) == 100_000


async def test_keep_alive_reuses_connections() -> None:
    async def ok(head: bytes, body: bytes) -> bytes:
        await asyncio.sleep(0.005)
        return reply("200 OK", b"{}")

    async with serving(ok) as server, client(server.url) as http:
        for _ in range(5):
            await http.get("/")
        assert server.connections == 1
        await asyncio.gather(*(http.post("/", content=b"x") for _ in range(40)))
    assert len(server.requests) == 45
    assert server.connections < 45


async def test_pool_limit_comes_from_httpx_limits() -> None:
    in_flight = peak = 0

    async def slow(head: bytes, body: bytes) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return reply("200 OK", b"")

    async with serving(slow) as server:
        transport = AiohttpTransport(httpx.Limits(max_connections=3))
        async with httpx.AsyncClient(base_url=server.url, transport=transport) as http:
            await asyncio.gather(*(http.get("/") for _ in range(12)))
    assert peak == 3
    assert server.connections == 3


async def test_connection_refused_is_connect_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with client(f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.post("/", content=b"x")


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("after", ["close", "reset", "half_answer"])
async def test_failure_after_sending_is_never_a_not_sent_error(after: str, method: str) -> None:
    """The server read the whole request (a POST may have been applied), then closed, reset, or sent half an
    answer. The error reaches the caller after one request: aiohttp does not resend a GET on its own."""
    received = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        received += 1
        if method == "POST":
            await reader.readexactly(4)
        if after == "half_answer":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"par")
            await writer.drain()
        if after == "reset":
            writer.transport.abort()
        else:
            writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    try:
        async with client(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}") as http:
            with pytest.raises(httpx.TransportError) as caught:
                await http.request(method, "/$batch", content=b"body" if method == "POST" else None)
    finally:
        server.close()
        await server.wait_closed()
    assert received == 1
    assert isinstance(caught.value, (httpx.RemoteProtocolError, httpx.ReadError))
    assert not isinstance(caught.value, _NOT_SENT)


async def test_api_client_does_not_resend_a_post_the_server_may_have_applied() -> None:
    async def drop(head: bytes, body: bytes) -> None:
        return None

    async def no_sleep(delay: float) -> None:
        return None

    async with serving(drop) as server:
        api = ApiClient(server.url, StaticTokenProvider("t"), http=HttpOptions(retry=RetryPolicy(), sleep=no_sleep))
        assert isinstance(api._client._transport, AiohttpTransport)
        async with api:
            with pytest.raises(TransientError) as caught:
                await api.request("POST", "accounts", json={"name": "x"})
    assert len(server.requests) == 1
    assert caught.value.code == "RemoteProtocolError"


async def test_read_timeout_is_read_timeout() -> None:
    async def silent(head: bytes, body: bytes) -> bytes:
        await asyncio.sleep(1)
        return reply("200 OK", b"")

    async with serving(silent) as server, client(server.url, timeout=httpx.Timeout(5, read=0.1)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/")


async def test_read_timeout_in_the_middle_of_the_body() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(stalls, "127.0.0.1", 0)
    try:
        async with client(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                          timeout=httpx.Timeout(5, read=0.1)) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/")
    finally:
        server.close()
        await server.wait_closed()


async def test_connect_timeout_is_connect_timeout() -> None:
    """A full pool whose only connection never answers: the wait for a connection times out, not sent."""

    async def silent(head: bytes, body: bytes) -> bytes:
        await asyncio.sleep(1)
        return reply("200 OK", b"")

    async with serving(silent) as server:
        transport = AiohttpTransport(httpx.Limits(max_connections=1))
        async with httpx.AsyncClient(base_url=server.url, transport=transport,
                                     timeout=httpx.Timeout(5, connect=0.05, pool=0.05)) as http:
            first = asyncio.ensure_future(http.get("/"))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.ConnectTimeout):
                await http.get("/")
            first.cancel()


async def test_unsupported_scheme() -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


async def test_aclose_closes_the_session_and_connections() -> None:
    async def ok(head: bytes, body: bytes) -> bytes:
        return reply("200 OK", b"")

    async with serving(ok) as server:
        transport = AiohttpTransport()
        http = httpx.AsyncClient(base_url=server.url, transport=transport)
        await http.get("/")
        session = transport._session
        assert session is not None and not session.closed
        await http.aclose()
        assert session.closed
        assert transport._session is None


def test_create_http_client_chooses_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2C_HTTP_TRANSPORT", raising=False)
    assert isinstance(create_http_client("http://x")._transport, AiohttpTransport)
    monkeypatch.setenv("P2C_HTTP_TRANSPORT", "httpx")
    assert isinstance(create_http_client("http://x")._transport, httpx.AsyncHTTPTransport)
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    assert create_http_client("http://x", options=HttpOptions(transport=mock))._transport is mock
    with pytest.raises(ValueError, match="P2C_HTTP_TRANSPORT"):
        default_transport(httpx.Limits(), {"P2C_HTTP_TRANSPORT": "curl"})


async def test_otel_httpx_instrumentation_spans_cover_the_aiohttp_transport() -> None:
    """The httpx instrumentation (the Azure Monitor distro enables it) patches only httpx's own transport class,
    so a bare client on AiohttpTransport records nothing; the connectors' clients get its client span per attempt
    below our own span per call, and the traceparent header, as with httpx's transport."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    otel = memory_telemetry()
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument()
    try:
        async with serving(echo) as server:
            before = len(otel.finished())
            async with client(server.url) as bare:
                await bare.get("/bare")
            assert len(otel.finished()) == before  # the global patch misses a custom transport
            async with ApiClient(server.url, StaticTokenProvider("t")) as api:
                sent = (await api.request("GET", "accounts")).json()
    finally:
        instrumentor.uninstrument()
    spans = otel.finished()[before:]
    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"GET", "http GET"}
    assert by_name["GET"].parent is not None
    assert by_name["GET"].parent.span_id == by_name["http GET"].context.span_id
    traceparent = next(h for h in sent["headers"] if h.lower().startswith("traceparent:"))
    assert f"{by_name['GET'].context.span_id:016x}" in traceparent


_KEY = SimpleNamespace(host="h", port=1, ssl=True, is_ssl=False)
_INFO = SimpleNamespace(real_url="http://h/")
EXCEPTION_MAP = [
    (aiohttp.InvalidUrlClientError("x"), httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError("ftp://h"), httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectorError(_KEY, OSError(111, "refused")), httpx.ConnectError),
    (aiohttp.ClientConnectorDNSError(_KEY, OSError(-2, "no such host")), httpx.ConnectError),
    (aiohttp.ClientConnectorCertificateError(_KEY, OSError(1, "bad cert")), httpx.ConnectError),
    (aiohttp.ServerFingerprintMismatch(b"a", b"b", "h", 1), httpx.ConnectError),
    (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError("?"), httpx.ReadTimeout),
    (asyncio.TimeoutError(), httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError("truncated"), httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError(_INFO, (), status=400, message="bad status line"), httpx.RemoteProtocolError),
    (aiohttp.UploadAbortedError("body"), httpx.WriteError),
    (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
    (aiohttp.ClientConnectionResetError("Connection lost"), httpx.ReadError),
    (aiohttp.ClientConnectionError("Connector is closed."), httpx.ReadError),
    (ConnectionResetError(104, "reset"), httpx.ReadError),
]


@pytest.mark.parametrize(("raised", "expected"), EXCEPTION_MAP, ids=[type(e).__name__ for e, _ in EXCEPTION_MAP])
def test_exception_map(raised: BaseException, expected: type[httpx.TransportError]) -> None:
    mapped = map_exception(raised)
    assert type(mapped) is expected
    sent_before_failing = not isinstance(raised, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError,
                                                  aiohttp.ClientConnectorError, aiohttp.ServerFingerprintMismatch,
                                                  aiohttp.ConnectionTimeoutError))
    assert isinstance(mapped, _NOT_SENT) is (not sent_before_failing and expected is not httpx.UnsupportedProtocol)
