"""The one HTTP layer both connectors share: retry policy, adaptive concurrency, client factory, ``ApiClient``.

``ApiClient.request`` sends one logical request and either returns a 2xx ``httpx.Response`` or raises a
typed ``ConnectorError`` (see ``errors``). On the way it

* injects the bearer token (``Authorization`` is added per attempt and never logged),
* waits for a slot of the ``AdaptiveConcurrency`` limiter (AIMD: halve on 429, +1 after a run of successes),
* waits for the ``RequestPacer`` (``pacing``): no request starts while a 429's ``Retry-After`` runs, and at most
  the window's learned budget starts per period, so the client runs at the service's limit without 429s,
* retries what is worth retrying (``RetryPolicy``): 429/502/503/504 and connection errors, honouring
  ``Retry-After``, with capped exponential backoff and jitter otherwise,
* logs one line per retry on ``p2csync.http``.

Which requests are repeated: a request that never reached the server (connect error, connect/pool timeout)
and a 429 (the service rejected it unprocessed) are always safe to send again. Anything else that failed
ambiguously (read timeout, dropped connection, 502/503/504) is only repeated when the request is
idempotent: GET, HEAD, OPTIONS, PUT, DELETE and PATCH by default (both services' PATCH is a merge of
the given values, so repeating it is harmless), POST only when the caller passes ``idempotent=True``.

```python
async with ApiClient("https://contoso.crm.dynamics.com/api/data/v9.2/", tokens) as api:
    response = await api.request("GET", "accounts", params={"$top": "1"})
```
"""

from __future__ import annotations

import asyncio
import enum
import json as jsonlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import partial
from types import TracebackType
from typing import Any, ClassVar, Literal, Self, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import httpx

from p2csync import __version__, telemetry
from p2csync.connectors.auth import TokenProvider
from p2csync.connectors.errors import (
    AuthenticationError,
    ConnectorError,
    PermanentError,
    ThrottledError,
    TransientError,
    error_from_response,
    parse_retry_after,
    redact_url,
    scrub,
)
from p2csync.connectors.odata import BatchFormatError, BatchRequestPart, BatchResponsePart, decode_batch_response
from p2csync.connectors.pacing import GateTooLong, PaceTicket, PacingPolicy, RequestPacer

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "AdaptiveConcurrency",
    "ApiClient",
    "HttpOptions",
    "PacingPolicy",
    "RetryPolicy",
    "create_http_client",
    "dumps_json",
    "parse_retry_after",
]

log = logging.getLogger("p2csync.http")

#: connect 5 s, read 60 s (Dataverse allows 2 min per request, but a minute without a byte is a dead call).
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0, pool=30.0)
#: More connections than the limiter's maximum, so the pool is never the bottleneck.
DEFAULT_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=30.0)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})

DATETIME_ONLY_SYSTEMS = frozenset({"fno"})
"""Systems whose OData has no Edm.Date: F&O exposes every date as Edm.DateTimeOffset, and ODataLib refuses
one without a zone ("2026-01-31"), so a ``date`` in their request bodies is sent as midnight UTC."""

#: Transport errors raised before the request left this process: always safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport errors worth retrying at all (the rest, e.g. UnsupportedProtocol, are configuration errors).
_TRANSIENT_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

Sleep = Callable[[float], Awaitable[None]]

#: The Dataverse error code of "Number of concurrent requests exceeded the limit of 52": a 429 that says
#: nothing about the request window, so the pacer only waits for it and learns no budget from it.
CONCURRENCY_LIMIT_CODE = b"0x80072326"


# ------------------------------------------------------------------------------------------ retry policy


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to wait before sending a failed request again.

    ``max_attempts`` counts the first try. Delays grow ``base_delay * 2**n`` up to ``max_delay`` with
    ``jitter`` ("full": uniform in [0, d]; "equal": d/2 + uniform in [0, d/2]; "none": d). A ``Retry-After``
    on 429/503 replaces the computed delay when ``respect_retry_after``; one longer than
    ``max_retry_after`` is not waited for here: the error is raised at once (``ThrottledError.retry_after``
    says when to come back), since the caller can defer the message more cheaply than a function can sleep.
    """

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: Literal["full", "equal", "none"] = "full"
    retry_statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    respect_retry_after: bool = True
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError(f"unknown jitter {self.jitter!r}")
        object.__setattr__(self, "retry_statuses", frozenset(self.retry_statuses))

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """The delay after the ``failures``-th failed attempt (1-based), before jitter is capped."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, failures - 1)))
        if self.jitter == "none":
            return ceiling
        uniform = (rng or random).uniform
        if self.jitter == "equal":
            return ceiling / 2 + uniform(0, ceiling / 2)
        return uniform(0, ceiling)

    def delay(self, failures: int, retry_after: float | None = None, rng: random.Random | None = None) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when the server asks for too long a wait."""
        if retry_after is not None and self.respect_retry_after:
            return None if retry_after > self.max_retry_after else retry_after
        return self.backoff(failures, rng)


# ----------------------------------------------------------------------------------- adaptive concurrency


class AdaptiveConcurrency:
    """An AIMD limit on requests in flight to one service.

    Starts at ``initial``; a 429 halves the limit (not below ``minimum``), ``increase_after`` successes in a
    row raise it by one (not above ``maximum``). Throttles of requests that were already in flight when the
    limit was last cut do not cut it again, so one burst of 429s halves it once. The default maximum of 32
    stays well below the services' 52 concurrent requests per user.
    """

    def __init__(self, initial: int = 8, *, minimum: int = 1, maximum: int = 32, increase_after: int = 10) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ValueError("need 1 <= minimum <= initial <= maximum")
        if increase_after < 1:
            raise ValueError("increase_after must be at least 1")
        self._limit = initial
        self.minimum = minimum
        self.maximum = maximum
        self.increase_after = increase_after
        self._in_flight = 0
        self._successes = 0
        self._generation = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self) -> int:
        """Wait for a slot; returns the generation to hand back to ``release``."""
        while self._in_flight >= self._limit:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # we were woken but will not use the slot: pass it on
                raise
        self._in_flight += 1
        return self._generation

    def release(self, generation: int, outcome: Literal["success", "throttled", "neutral"] = "neutral") -> None:
        """Give the slot back and adapt the limit to the outcome of the request."""
        self._in_flight = max(0, self._in_flight - 1)
        if outcome == "throttled":
            self._successes = 0
            if generation == self._generation:
                self._limit = max(self.minimum, self._limit // 2)
                self._generation += 1
        elif outcome == "success":
            self._successes += 1
            if self._successes >= self.increase_after:
                self._successes = 0
                if self._limit < self.maximum:
                    self._limit += 1
        self._wake()

    def _wake(self) -> None:
        free = self._limit - self._in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def __repr__(self) -> str:
        return f"AdaptiveConcurrency(limit={self._limit}, in_flight={self._in_flight})"


# ----------------------------------------------------------------------------------------- client factory


@dataclass(frozen=True)
class HttpOptions:
    """How a connector talks HTTP. Tests pass ``transport`` (``httpx.MockTransport``), a fake ``sleep`` and
    ``clock``.

    Concurrency starts at its maximum: 32 stays well under the 52 concurrent requests per user both services
    allow, and a 429 halves it (once per burst) while the pacer holds the request rate to the window.
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)
    limits: httpx.Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    initial_concurrency: int = 32
    max_concurrency: int = 32
    concurrency: AdaptiveConcurrency | None = None
    pacing: PacingPolicy = field(default_factory=PacingPolicy)
    transport: httpx.AsyncBaseTransport | None = None
    sleep: Sleep = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random | None = None


def create_http_client(
    base_url: str | httpx.URL, *, headers: Mapping[str, str] | None = None, options: HttpOptions | None = None
) -> httpx.AsyncClient:
    """The pooled ``httpx.AsyncClient`` for one system (one per process and system, reused by every call)."""
    from p2csync.connectors.aiohttp_transport import default_transport, instrument  # aiohttp: on first use

    options = options or HttpOptions()
    base = httpx.URL(str(base_url))
    if not base.path.endswith("/"):
        base = base.copy_with(path=base.path + "/")
    return instrument(httpx.AsyncClient(
        base_url=base,
        headers={"User-Agent": f"p2c-sync/{__version__} httpx/{httpx.__version__}", **dict(headers or {})},
        timeout=options.timeout,
        limits=options.limits,
        transport=options.transport or default_transport(options.limits),  # P2C_HTTP_TRANSPORT; aiohttp unless "httpx"
        follow_redirects=False,
    ))


def _json_default(value: Any, *, dates_as_datetimes: bool = False) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot send {value} as JSON")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00Z" if dates_as_datetimes else value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_body(response: httpx.Response) -> dict[str, Any]:
    """A response's JSON object ({} when empty; a bare array is read as ``{"value": [...]}``)."""
    if not response.content:
        return {}
    data = response.json()
    return data if isinstance(data, dict) else {"value": data}


def dumps_json(value: Any, *, dates_as_datetimes: bool = False) -> bytes:
    """JSON for a request body: Decimal as a number, datetimes as ISO-8601 UTC (``Z``; naive taken as UTC),
    UUIDs and enums. A ``date`` is ``2024-05-31`` (Dataverse Edm.Date), or with ``dates_as_datetimes``
    midnight UTC ``2024-05-31T00:00:00Z`` (F&O: only Edm.DateTimeOffset, which needs a zone)."""
    return jsonlib.dumps(value, default=partial(_json_default, dates_as_datetimes=dates_as_datetimes),
                         ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


_Op = TypeVar("_Op")
_R = TypeVar("_R")

#: A URL with a scheme (RFC 3986 section 3.1); anything else is a path under the base URL, "://" in a key included.
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _path(url: httpx.URL) -> str:
    """The path of a URL as sent (percent-encoded), for a span: no query, so no secret."""
    return url.raw_path.decode("ascii").split("?", 1)[0]


def _target(url: httpx.URL) -> str:
    """Path and query of a URL for a log line, secrets redacted."""
    parts = urlsplit(redact_url(url) or "")
    return parts.path + (f"?{parts.query}" if parts.query else "")


# ------------------------------------------------------------------------------------------------ client


class ApiClient:
    """Base of both connectors: one pooled client, token injection, retries, adaptive concurrency."""

    system: ClassVar[str] = "http"

    def __init__(
        self,
        base_url: str | httpx.URL,
        tokens: TokenProvider,
        *,
        headers: Mapping[str, str] | None = None,
        http: HttpOptions | None = None,
    ) -> None:
        options = http or HttpOptions()
        self.tokens = tokens
        self.retry = options.retry
        self.concurrency = options.concurrency or AdaptiveConcurrency(
            min(options.initial_concurrency, options.max_concurrency), maximum=options.max_concurrency
        )
        self.pacer = RequestPacer(options.pacing, clock=options.clock, sleep=options.sleep, name=self.system)
        self._rng = options.rng
        self._client = create_http_client(base_url, headers=headers, options=options)
        base = self._client.base_url  # its path ends with "/"
        self._base_text = f"{base.scheme}://{base.netloc.decode('ascii')}{base.raw_path.decode('ascii')}"
        self._timeout = self._client.timeout.as_dict()
        self._last_token: str | None = None

    @property
    def base_url(self) -> httpx.URL:
        return self._client.base_url

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool | None = None,
        readable: Callable[[httpx.Response], bool] | None = None,
    ) -> httpx.Response:
        """``_request`` inside one span per logical call, sending the call's tracing headers (a client request
        id, the change's correlation id; see ``telemetry.traces``). A caller's own header of the same name wins."""
        url = self._url(url)
        with telemetry.http_call(self.system, method.upper(), _path(url)) as call:
            response = await self._request(method, url, json=json, content=content,
                                           headers={**call.headers(), **dict(headers or {})}, params=params,
                                           idempotent=idempotent, readable=readable)
            call.answered(response.status_code, response.headers)
            return response

    async def _request(
        self,
        method: str,
        url: httpx.URL,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool | None = None,
        readable: Callable[[httpx.Response], bool] | None = None,
    ) -> httpx.Response:
        """Send ``method url`` (resolved by ``request``: an absolute URL, which must be on the base URL's host).

        Returns the 2xx response; raises ``TransientError``/``ThrottledError`` when the retries are used up
        (or a retry would not be safe) and ``PermanentError`` (or a subclass) for everything else.
        ``readable``: a non-2xx answer for which it is true, and whose status is not one the policy retries,
        is returned instead of raised (Dataverse answers a failed ``$batch`` with the failing request's status
        and a multipart body the caller reads part by part).
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        dates_as_datetimes = self.system in DATETIME_ONLY_SYSTEMS
        body = dumps_json(json, dates_as_datetimes=dates_as_datetimes) if json is not None else content
        request_headers = dict(headers or {})
        if json is not None:
            request_headers.setdefault("Content-Type", "application/json")
        request = self._build(method, url, body, request_headers, params)
        self._check_origin(request)

        failures = 0
        reauthenticated = False
        waited_for: float | None = None  # the gate a retried 429 already slept through
        while True:
            attempt = failures + 1
            if attempt > 1 or reauthenticated:
                # A fresh request per retry: a new token, and nothing of a failed attempt carried over.
                request = self._build(method, url, body, request_headers, params)
            try:
                response, waited_for = await self._send_once(request, waited_for)
            except _TRANSIENT_TRANSPORT as exc:
                error = TransientError(
                    self.system, None, type(exc).__name__, scrub(str(exc)) or type(exc).__name__, method, request.url
                )
                if (idempotent or isinstance(exc, _NOT_SENT)) and attempt < self.retry.max_attempts:
                    failures += 1
                    await self._pause(request, type(exc).__name__, attempt, self.retry.backoff(failures, self._rng))
                    continue
                raise self._redact(error) from exc
            except httpx.TransportError as exc:  # UnsupportedProtocol, ProxyError, LocalProtocolError, ...
                raise PermanentError(
                    self.system, None, type(exc).__name__, scrub(str(exc)) or type(exc).__name__, method, request.url
                ) from exc

            if response.is_success:
                return response

            status = response.status_code
            invalidate = getattr(self.tokens, "invalidate", None)
            if status == 401 and not reauthenticated and callable(invalidate):
                reauthenticated = True  # a revoked or rotated token: one fresh token, one more try
                invalidate()
                continue
            if readable is not None and status not in self.retry.retry_statuses and readable(response):
                return response

            error = self._redact(error_from_response(self.system, response, method=method))
            if status in self.retry.retry_statuses and attempt < self.retry.max_attempts:
                retry_after = error.retry_after if isinstance(error, ThrottledError) else None
                rejected_unprocessed = status == 429 or (status == 503 and retry_after is not None)
                if idempotent or rejected_unprocessed:
                    failures += 1
                    delay = self.retry.delay(failures, retry_after, self._rng)
                    if delay is None:
                        raise error  # asks for longer than we are willing to wait in-process
                    await self._pause(request, str(status), attempt, delay)
                    continue
            raise error

    def part_error(self, part: BatchResponsePart, request: BatchRequestPart) -> ConnectorError:
        """Classify an answer inside a ``$batch`` exactly as ``request`` classifies the same single answer."""
        answer = httpx.Response(part.status, headers=dict(part.headers), content=part.body,
                                request=httpx.Request(request.method, self.base_url.join(request.url)))
        return self._redact(error_from_response(self.system, answer, method=request.method))

    #: Who a "not run" error of a $batch names ("F&O", "Dataverse").
    service: ClassVar[str] = "the service"

    def batch_results(self, ops: Sequence[_Op], parts: Sequence[BatchRequestPart], response: httpx.Response, *,
                      atomic: bool, applied: Callable[[_Op, BatchResponsePart], _R],
                      result: Callable[..., _R],
                      absent: Callable[[_Op, BatchResponsePart, ConnectorError], _R | None] | None = None,
                      ) -> list[_R]:
        """One result per operation of a ``$batch`` answered by ``response``: one change set (``atomic``: all
        applied, or all failed with the error of the one the service rejected) or independent requests (each
        its own answer; those after a failure the service stopped at are "not run", transient). The connector
        says how an answer becomes its result: ``applied`` for a success, ``result(op, status, error=...,
        failed_here=...)`` for a failure, ``absent`` for a failed status that is not a failure (F&O: a read
        finding no row)."""
        try:
            answered = decode_batch_response(response.headers.get("Content-Type", ""), response.content)
        except BatchFormatError as exc:
            raise PermanentError(self.system, response.status_code, "BatchResponse",
                                 f"unreadable $batch answer: {exc}", "POST", response.request.url) from exc
        if atomic:
            ordered, failed, culprit = self.match_changeset(len(ops), parts, answered, status=response.status_code,
                                                            url=response.request.url, applied=response.is_success)
            if failed is None:
                return [applied(op, answer) for op, answer in zip(ops, ordered or [], strict=True)]
            error = self.part_error(failed, parts[culprit] if culprit is not None else BatchRequestPart("POST", "$batch"))
            return [result(op, failed.status if index == culprit else None, error=error, failed_here=index == culprit)
                    for index, op in enumerate(ops)]
        results = []
        for index, op in enumerate(ops):
            if index >= len(answered):  # the service stopped at an earlier failure
                results.append(result(op, None, error=TransientError(
                    self.system, None, "NotRun", f"not run: {self.service} stopped the batch at an earlier failure")))
                continue
            answer = answered[index][0]
            if answer.status < 400:
                results.append(applied(op, answer))
                continue
            error = self.part_error(answer, parts[index])
            found = absent(op, answer, error) if absent is not None else None
            results.append(found if found is not None else result(op, answer.status, error=error, failed_here=True))
        return results

    def match_changeset(
        self, count: int, parts: Sequence[BatchRequestPart], answered: list[list[BatchResponsePart]], *,
        status: int, url: httpx.URL, applied: bool = True,
    ) -> tuple[list[BatchResponsePart], None, None] | tuple[None, BatchResponsePart, int | None]:
        """The answers of a one-change-set ``$batch``: every operation's answer in operation order (matched by
        Content-ID), or the one failing answer that stands for the whole set (nothing of it was applied, OData 4.0
        11.7.4) and the index of the operation it answers (None when it does not say). ``applied``: the outer
        status allows success. Anything else is an answer the service never gives: PermanentError."""
        if len(answered) != 1:
            raise PermanentError(self.system, status, "BatchResponse",
                                 f"a $batch with one change set was answered with {len(answered)} items", "POST", url)
        answers = answered[0]
        by_id = {part.content_id: index for index, part in enumerate(parts)}
        failed = next((answer for answer in answers if answer.status >= 400), None)
        if failed is None and len(answers) == count and applied:
            return sorted(answers, key=lambda a: by_id.get(a.content_id, answers.index(a))), None, None
        if failed is None:
            raise PermanentError(self.system, status, "BatchResponse", f"a change set of {count} operations was "
                                 f"answered with {len(answers)} parts and no error", "POST", url)
        return None, failed, by_id.get(failed.content_id)

    def _redact(self, error: ConnectorError) -> ConnectorError:
        """Belt and braces: remove the exact token in use even where the patterns in ``scrub`` miss it."""
        token = self._last_token
        if token:
            if token in error.message:
                error.message = error.message.replace(token, "***")
                error.args = (error.message,)
            if error.infolog and token in error.infolog:
                error.infolog = error.infolog.replace(token, "***")
        return error

    async def _send_once(self, request: httpx.Request, waited_for: float | None
                         ) -> tuple[httpx.Response, float | None]:
        """One attempt: a concurrency slot, the pacer's go, the send. Returns the answer and, for a 429, the
        pacer's gate it closed (the retry sleeps its ``Retry-After`` itself and passes it as ``waited_for``)."""
        token = await self._token()
        self._last_token = token
        request.headers["Authorization"] = f"Bearer {token}"
        generation = await self.concurrency.acquire()
        outcome: Literal["success", "throttled", "neutral"] = "neutral"
        try:
            ticket = await self._paced(request, waited_for)
            try:
                response = await self._send(request)
            except BaseException:
                self.pacer.answered(ticket, None)
                raise
            if response.status_code != 429:
                self.pacer.answered(ticket, response.status_code)
                outcome = "success" if response.is_success else "neutral"
                return response, None
            outcome = "throttled"
            telemetry.record_throttled(self.system)
            return response, self.pacer.answered(ticket, 429, parse_retry_after(response.headers.get("Retry-After")),
                                                 learn=CONCURRENCY_LIMIT_CODE not in response.content)
        finally:
            self.concurrency.release(generation, outcome)

    def _url(self, url: str | httpx.URL) -> httpx.URL:
        """``url`` as ``httpx.AsyncClient`` resolves it: absolute as given; relative appended to the base URL's
        path (a leading "/" dropped). One parse of the joined text instead of httpx's two parses and a copy."""
        if isinstance(url, httpx.URL):
            return url if url.is_absolute_url else self._url(str(url))
        if _ABSOLUTE.match(url):
            return httpx.URL(url)
        return httpx.URL(self._base_text + url.lstrip("/").split("#", 1)[0])  # httpx drops a relative fragment

    def _build(self, method: str, url: httpx.URL, body: bytes | None, headers: Mapping[str, str],
               params: Mapping[str, Any] | None) -> httpx.Request:
        """The request ``httpx.AsyncClient.build_request`` would make (the client's headers under the call's,
        the client's timeout), without its per-call merging of settings this client never varies."""
        merged = self._client.headers.copy()
        merged.update(headers)
        return httpx.Request(method, url, params=params, content=body, headers=merged,
                             extensions={"timeout": self._timeout})

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send and read one request on the client's transport (or its proxy's). Not ``AsyncClient.send``:
        this client follows no redirects, has no auth flow or event hooks, and keeps no cookies. Dataverse's
        affinity cookie pins every later request to one server; "Send parallel requests" (Power Apps docs,
        "Server affinity") advises clients sending in parallel to drop it, so each request may go to any
        server and each server's limits apply to its own share. Issue 11: the client's layers cost more CPU
        per request than the transport itself."""
        if self._client.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")  # as httpx says it
        try:
            response = await self._client._transport_for_url(request.url).handle_async_request(request)
        except httpx.RequestError as exc:
            try:
                exc.request  # noqa: B018 - set by the transport?
            except RuntimeError:
                exc.request = request  # as httpx's request_context does
            raise
        response.request = request
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return response

    async def _paced(self, request: httpx.Request, waited_for: float | None) -> PaceTicket:
        """The pacer's go; a gate closed for longer than the policy waits in-process is a ``ThrottledError``
        now (the caller defers the message), as a 429 with that ``Retry-After`` would be."""
        try:
            return await self.pacer.admit(max_wait=self.retry.max_retry_after, waited_for=waited_for)
        except GateTooLong as exc:
            raise ThrottledError(
                self.system, 429, "Throttled", f"{self.system} asked this client to wait another "
                f"{exc.retry_after:.0f} s (Retry-After of an earlier 429)", request.method, request.url,
                retry_after=exc.retry_after,
            ) from None

    async def _token(self) -> str:
        try:
            return await self.tokens.token()
        except ConnectorError:
            raise
        except Exception as exc:
            from azure.core.exceptions import ServiceRequestError, ServiceResponseError

            kind = TransientError if isinstance(exc, (ServiceRequestError, ServiceResponseError, OSError,
                                                      TimeoutError)) else AuthenticationError
            raise kind(
                self.system, None, type(exc).__name__,
                f"could not obtain an access token: {scrub(str(exc).splitlines()[0] if str(exc) else '')}",
            ) from exc

    async def _pause(self, request: httpx.Request, reason: str, attempt: int, delay: float) -> None:
        log.warning(
            "%s %s %s failed (%s), attempt %d of %d; retrying in %.2fs",
            self.system, request.method, _target(request.url), reason, attempt, self.retry.max_attempts, delay,
            extra={"system": self.system, "http_method": request.method, "http_path": _target(request.url),
                   "http_status": reason, "attempt": attempt, "retry_delay": delay},
        )
        telemetry.http_retried(self.system, reason, delay)
        await self.pacer.pause(delay)

    def _check_origin(self, request: httpx.Request) -> None:
        base = self._client.base_url
        if (request.url.scheme, request.url.host, request.url.port) != (base.scheme, base.host, base.port):
            raise PermanentError(
                self.system, None, "ForeignHost",
                f"refusing to send credentials to {request.url.host!r} (client is for {base.host!r})",
                request.method, request.url,
            )

    async def paged_rows(
        self,
        url: str | httpx.URL,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        top: int | None = None,
        next_url: Callable[[str], str | httpx.URL] = lambda link: link,
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows of an OData collection, page by page: ``@odata.nextLink`` carries the query and the skip
        token, so later pages are requested without ``params``; stop after ``top`` rows."""
        seen = 0
        while True:
            page = json_body(await self.request("GET", url, headers=headers, params=params))
            for row in page.get("value", []):
                yield row
                seen += 1
                if top is not None and seen >= top:
                    return
            link = page.get("@odata.nextLink")
            if not link:
                return
            url, params = next_url(link), None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={str(self.base_url)!r})"
