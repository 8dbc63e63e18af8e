"""The shared HTTP layer: retry policy, Retry-After, adaptive concurrency, tokens, error classification."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from uuid import UUID

import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from p2csync.connectors.auth import (
    AzureIdentityTokenProvider,
    StaticTokenProvider,
    TokenProvider,
    default_credential,
    scope_for,
)
from p2csync.connectors.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConnectorError,
    NotFoundError,
    PermanentError,
    PreconditionFailedError,
    ThrottledError,
    TransientError,
    error_from_response,
    parse_retry_after,
    redact_url,
)
from p2csync.connectors.http import AdaptiveConcurrency, ApiClient, HttpOptions, RetryPolicy, dumps_json

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJlLXBhcnQ"
BASE = "https://contoso.crm.dynamics.com/api/data/v9.2/"


class FakeSleep:
    """Records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Script:
    """A MockTransport handler that answers from a list (the last answer repeats) and records requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def client(handler, *, sleep: FakeSleep | None = None, tokens: TokenProvider | None = None,
           retry: RetryPolicy | None = None, concurrency: AdaptiveConcurrency | None = None,
           system: str = "dataverse") -> ApiClient:
    options = HttpOptions(
        transport=httpx.MockTransport(handler), sleep=sleep or FakeSleep(), retry=retry or RetryPolicy(),
        rng=random.Random(7), concurrency=concurrency,
    )
    api = ApiClient(BASE, tokens or StaticTokenProvider(TOKEN), http=options)
    api.system = system  # type: ignore[misc]
    return api


def dv_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


def fno_error(status: int, message: str, infolog: str | None, type_: str | None) -> httpx.Response:
    inner = {"message": infolog, "type": type_, "stacktrace": "   at Dynamics.Ax.Secret.StackFrame(Int32 x)"}
    return httpx.Response(status, json={"error": {"code": "", "message": message, "innererror": inner}})


THROTTLED = dv_error(429, "0x80072322", "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
                     {"Retry-After": "7"})
OK = httpx.Response(200, json={"value": []})


# ------------------------------------------------------------------------------------------ Retry-After


async def test_retry_after_seconds_is_honoured_on_429():
    sleep = FakeSleep()
    script = Script(THROTTLED, THROTTLED, OK)
    async with client(script, sleep=sleep) as api:
        response = await api.request("GET", "accounts")
    assert response.status_code == 200
    assert len(script.requests) == 3
    assert sleep.delays == [7.0, 7.0]


async def test_retry_after_http_date_is_honoured_on_503():
    sleep = FakeSleep()
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    busy = dv_error(503, "", "Service Unavailable", {"Retry-After": format_datetime(when, usegmt=True)})
    script = Script(busy, OK)
    async with client(script, sleep=sleep) as api:
        await api.request("GET", "accounts")
    assert len(sleep.delays) == 1
    assert 115 <= sleep.delays[0] <= 121


def test_parse_retry_after_forms():
    now = datetime(2024, 5, 31, 10, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Fri, 31 May 2024 10:01:30 GMT", now=now) == 90.0
    assert parse_retry_after("Fri, 31 May 2024 09:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


async def test_retry_after_longer_than_the_cap_raises_at_once():
    sleep = FakeSleep()
    script = Script(dv_error(429, "0x80072321", "Combined execution time exceeded", {"Retry-After": "900"}))
    async with client(script, sleep=sleep) as api:
        with pytest.raises(ThrottledError) as caught:
            await api.request("GET", "accounts")
    assert caught.value.retry_after == 900.0
    assert len(script.requests) == 1
    assert sleep.delays == []


async def test_retry_after_ignored_when_policy_says_so():
    sleep = FakeSleep()
    script = Script(THROTTLED, OK)
    policy = RetryPolicy(respect_retry_after=False, jitter="none", base_delay=0.25)
    async with client(script, sleep=sleep, retry=policy) as api:
        await api.request("GET", "accounts")
    assert sleep.delays == [0.25]


# ------------------------------------------------------------------------------------------------ backoff


def test_backoff_without_jitter_doubles_up_to_the_cap():
    policy = RetryPolicy(jitter="none", base_delay=0.5, max_delay=30.0)
    assert [policy.backoff(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


@pytest.mark.parametrize("jitter", ["full", "equal"])
def test_backoff_with_jitter_stays_within_bounds(jitter):
    policy = RetryPolicy(jitter=jitter, base_delay=0.5, max_delay=30.0)
    rng = random.Random(1)
    for failures in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (failures - 1))
        floor = ceiling / 2 if jitter == "equal" else 0.0
        samples = [policy.backoff(failures, rng) for _ in range(200)]
        assert all(floor <= s <= ceiling for s in samples), (failures, min(samples), max(samples))
        # jitter really spreads the delays (not a constant)
        assert max(samples) - min(samples) > (ceiling - floor) * 0.5


def test_retry_policy_validates():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter="sometimes")  # type: ignore[arg-type]
    assert RetryPolicy(retry_statuses={429}).retry_statuses == frozenset({429})


async def test_transient_status_retried_until_exhausted():
    sleep = FakeSleep()
    script = Script(httpx.Response(502, text="Bad Gateway"))
    async with client(script, sleep=sleep) as api:
        with pytest.raises(TransientError) as caught:
            await api.request("GET", "accounts")
    assert not isinstance(caught.value, ThrottledError)
    assert caught.value.status == 502
    assert len(script.requests) == 6
    assert len(sleep.delays) == 5
    for failures, delay in enumerate(sleep.delays, start=1):
        assert 0 <= delay <= min(30.0, 0.5 * 2 ** (failures - 1))


async def test_throttling_exhausted_raises_throttled_error_with_retry_after():
    sleep = FakeSleep()
    script = Script(dv_error(429, "0x80072326", "Number of concurrent requests exceeded the limit of 52.",
                             {"Retry-After": "3"}))
    async with client(script, sleep=sleep, retry=RetryPolicy(max_attempts=3)) as api:
        with pytest.raises(ThrottledError) as caught:
            await api.request("GET", "accounts")
    assert caught.value.retry_after == 3.0
    assert caught.value.code == "0x80072326"
    assert caught.value.retryable
    assert len(script.requests) == 3
    assert sleep.delays == [3.0, 3.0]


async def test_bad_request_is_not_retried():
    sleep = FakeSleep()
    script = Script(dv_error(400, "0x80048d19", "Error identified in Payload provided by the user for Entity :''"))
    async with client(script, sleep=sleep) as api:
        with pytest.raises(PermanentError) as caught:
            await api.request("PATCH", "accounts(accountnumber='A')", json={"nmae": "x"})
    assert caught.value.status == 400
    assert caught.value.code == "0x80048d19"
    assert "Payload" in caught.value.message
    assert not caught.value.retryable
    assert len(script.requests) == 1
    assert sleep.delays == []


async def test_connection_error_is_retried():
    sleep = FakeSleep()
    script = Script(httpx.ConnectError("connection refused"), httpx.ReadTimeout("read timed out"), OK)
    async with client(script, sleep=sleep) as api:
        response = await api.request("GET", "accounts")
    assert response.status_code == 200
    assert len(script.requests) == 3
    assert len(sleep.delays) == 2


async def test_connection_errors_exhausted_raise_transient_error():
    script = Script(httpx.ConnectTimeout("timed out connecting"))
    async with client(script, retry=RetryPolicy(max_attempts=2)) as api:
        with pytest.raises(TransientError) as caught:
            await api.request("GET", "accounts")
    assert caught.value.status is None
    assert caught.value.code == "ConnectTimeout"
    assert len(script.requests) == 2


async def test_post_is_not_repeated_after_an_ambiguous_failure_unless_safe():
    script = Script(httpx.ReadTimeout("read timed out"), OK)
    async with client(script) as api:
        with pytest.raises(TransientError):
            await api.request("POST", "accounts", json={"name": "A"})
    assert len(script.requests) == 1

    script = Script(httpx.ReadTimeout("read timed out"), OK)
    async with client(script) as api:
        response = await api.request("POST", "accounts", json={"name": "A"}, idempotent=True)
    assert response.status_code == 200
    assert len(script.requests) == 2


async def test_post_is_repeated_when_it_was_never_sent_or_was_throttled():
    script = Script(httpx.ConnectError("refused"), THROTTLED, OK)
    async with client(script) as api:
        response = await api.request("POST", "accounts", json={"name": "A"})
    assert response.status_code == 200
    assert len(script.requests) == 3


async def test_post_is_not_repeated_on_gateway_errors():
    script = Script(httpx.Response(504, text="Gateway Timeout"), OK)
    async with client(script) as api:
        with pytest.raises(TransientError) as caught:
            await api.request("POST", "accounts", json={"name": "A"})
    assert caught.value.status == 504
    assert len(script.requests) == 1


async def test_generic_500_is_transient_but_not_retried_in_process():
    script = Script(dv_error(500, "0x80040216", "An unexpected error occurred."), OK)
    async with client(script) as api:
        with pytest.raises(TransientError) as caught:
            await api.request("GET", "accounts")
    assert caught.value.status == 500
    assert len(script.requests) == 1


# ------------------------------------------------------------------------------------- secrets and logs


@pytest.mark.parametrize("token", [TOKEN, "opaque-token-not-a-jwt~123", "dev-tok"])
async def test_token_never_appears_in_errors_or_logs(caplog, token):
    caplog.set_level(logging.DEBUG)
    # A service that echoes the Authorization header back in its error message.
    def echo(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("step") == "1":
            return httpx.Response(503, json={"error": {"code": "", "message": f"busy: {request.headers['Authorization']}"}})
        return httpx.Response(401, json={"error": {"code": "BadAuthTicket",
                                                   "message": f"rejected {request.headers['Authorization']}"}})

    errors: list[ConnectorError] = []
    async with client(echo, retry=RetryPolicy(max_attempts=2), tokens=StaticTokenProvider(token)) as api:
        for step in ("1", "2"):
            try:
                await api.request("GET", "accounts", params={"step": step, "sig": "sas-signature"})
            except ConnectorError as exc:
                errors.append(exc)
                logging.getLogger("test").exception("request failed: %s", exc)
    assert [type(e) for e in errors] == [TransientError, AuthenticationError]
    for error in errors:
        for text in (str(error), repr(error), error.message, error.url or ""):
            assert token not in text
            assert "sas-signature" not in text
    assert "Bearer ***" in errors[1].message and "Bearer ***" in str(errors[0])
    assert caplog.records, "expected at least the retry line"
    for record in caplog.records:
        assert token not in record.getMessage()
        if record.name.startswith("p2csync") or record.name == "test":  # httpx itself logs raw URLs at INFO
            assert "sas-signature" not in record.getMessage()
    assert token not in caplog.text
    assert any(r.name == "p2csync.http" for r in caplog.records)


async def test_one_log_line_per_retry_with_method_path_status_attempt_delay(caplog):
    caplog.set_level(logging.WARNING, logger="p2csync.http")
    script = Script(THROTTLED, THROTTLED, OK)
    async with client(script) as api:
        await api.request("GET", "accounts", params={"$select": "name"})
    lines = [r for r in caplog.records if r.name == "p2csync.http"]
    assert len(lines) == 2
    message = lines[0].getMessage()
    assert "GET" in message and "/api/data/v9.2/accounts" in message and "429" in message
    assert "attempt 1 of 6" in message and "7.00s" in lines[0].getMessage()
    assert lines[1].attempt == 2 and lines[1].retry_delay == 7.0


def test_redact_url_hides_secret_query_values_and_userinfo():
    url = "https://user:pw@host/path?sig=abc&code=xyz&$filter=name eq 'a'"
    redacted = redact_url(url)
    assert "abc" not in redacted and "xyz" not in redacted and "pw" not in redacted
    assert "sig=***" in redacted and "name" in redacted


async def test_401_fetches_a_fresh_token_once_then_gives_up():
    class Rotating:
        def __init__(self) -> None:
            self.issued = 0
            self.invalidated = 0

        async def token(self) -> str:
            self.issued += 1
            return f"token-{self.issued}"

        def invalidate(self) -> None:
            self.invalidated += 1

    tokens = Rotating()
    script = Script(dv_error(401, "ExpiredAuthTicket", "expired"))
    async with client(script, tokens=tokens) as api:
        with pytest.raises(AuthenticationError):
            await api.request("GET", "accounts")
    assert tokens.invalidated == 1
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer token-1", "Bearer token-2"]

    script = Script(dv_error(401, "ExpiredAuthTicket", "expired"), OK)
    async with client(script, tokens=Rotating()) as api:
        assert (await api.request("GET", "accounts")).status_code == 200


async def test_static_token_401_is_an_authentication_error_without_retry():
    script = Script(dv_error(401, "BadAuthTicket", "bad ticket"))
    async with client(script) as api:
        with pytest.raises(AuthenticationError) as caught:
            await api.request("GET", "accounts")
    assert isinstance(caught.value, PermanentError)
    assert len(script.requests) == 1


async def test_credential_failure_becomes_authentication_error():
    class Broken:
        async def token(self) -> str:
            raise ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.")

    script = Script(OK)
    async with client(script, tokens=Broken()) as api:
        with pytest.raises(AuthenticationError) as caught:
            await api.request("GET", "accounts")
    assert "AADSTS7000215" in str(caught.value)
    assert script.requests == []


async def test_credentials_are_never_sent_to_another_host():
    script = Script(OK)
    async with client(script) as api:
        with pytest.raises(PermanentError) as caught:
            await api.request("GET", "https://attacker.example/api/data/v9.2/accounts")
    assert caught.value.code == "ForeignHost"
    assert script.requests == []


URLS = [
    "accounts", "/accounts", "accounts(accountnumber='A 1/2')", "accounts(accountnumber='%C3%A9 50%25')",
    "accounts?$select=name,accountnumber&$filter=name eq 'O''Brien & Co'", "contacts(éàü)", "$batch",
    "accounts?$top=5#frag", "https://contoso.crm.dynamics.com/api/data/v9.2/accounts?$skiptoken=%3Ccookie%3E",
    "https://contoso.crm.dynamics.com:443/api/data/v9.2/accounts", "accounts?a=1&a=2",
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("params", [None, {"$select": "name", "$top": 3}])
async def test_requests_are_built_as_httpx_builds_them(url, params):
    """The client builds its requests itself (issue 11: httpx's build_request was a fifth of the client's CPU per
    request); what goes on the wire must be what ``AsyncClient.build_request`` makes of the same call."""
    async with client(Script(OK)) as api:
        headers = {"Prefer": "return=representation", "accept": "application/json;odata.metadata=none"}
        ours = api._build("PATCH", api._url(url), b"{}", headers, params)
        theirs = api._client.build_request("PATCH", url, content=b"{}", headers=headers, params=params)
        assert str(ours.url) == str(theirs.url)
        assert ours.url.raw_path == theirs.url.raw_path
        assert ours.headers.multi_items() == theirs.headers.multi_items()
        assert ours.extensions == theirs.extensions
        assert ours.content == theirs.content


async def test_a_url_inside_a_key_is_a_path_not_another_host():
    script = Script(OK)
    async with client(script) as api:
        await api.request("GET", "accounts(websiteurl='http://x.example')")
    assert str(script.requests[0].url).startswith(BASE + "accounts(websiteurl=")


async def test_a_closed_client_sends_nothing_and_a_transport_error_names_its_request():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")  # raised without its request, as httpcore's errors are

    async with client(refuse) as api:
        request = api._build("GET", api._url("accounts"), None, {}, None)
        with pytest.raises(httpx.ConnectError) as caught:
            await api._send(request)
        assert caught.value.request is request
    with pytest.raises(RuntimeError, match="client has been closed"):
        await api._send(request)


async def test_no_cookie_is_kept_between_requests():
    """Dataverse's affinity cookie would pin every request to one server; parallel clients should drop it
    (Power Apps docs, "Send parallel requests", "Server affinity")."""
    script = Script(httpx.Response(200, json={"value": []},
                                   headers={"Set-Cookie": "ARRAffinity=abc123; Path=/; HttpOnly; Secure"}))
    async with client(script) as api:
        await api.request("GET", "accounts")
        await api.request("GET", "accounts")
    assert [r.headers.get("Cookie") for r in script.requests] == [None, None]


# ----------------------------------------------------------------------------------- adaptive concurrency


async def test_adaptive_concurrency_halves_once_per_burst_and_grows_back():
    limiter = AdaptiveConcurrency(8, maximum=32, increase_after=3)
    generations = [await limiter.acquire() for _ in range(8)]
    assert limiter.in_flight == 8
    for generation in generations[:4]:  # four 429s from the same burst: one cut
        limiter.release(generation, "throttled")
    assert limiter.limit == 4
    for generation in generations[4:]:
        limiter.release(generation, "neutral")
    generation = await limiter.acquire()
    limiter.release(generation, "throttled")  # a new burst: cut again
    assert limiter.limit == 2
    for _ in range(3):
        limiter.release(await limiter.acquire(), "success")
    assert limiter.limit == 3
    for _ in range(6):
        limiter.release(await limiter.acquire(), "success")
    assert limiter.limit == 5
    for _ in range(3):
        limiter.release(await limiter.acquire(), "throttled")
    assert limiter.limit == 1  # 5 -> 2 -> 1 -> 1 (never below the minimum)
    assert limiter.in_flight == 0


async def test_adaptive_concurrency_caps_at_maximum():
    limiter = AdaptiveConcurrency(2, maximum=3, increase_after=1)
    for _ in range(10):
        limiter.release(await limiter.acquire(), "success")
    assert limiter.limit == 3


async def test_limiter_bounds_requests_in_flight():
    limiter = AdaptiveConcurrency(2, maximum=2)
    in_flight = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json={})

    async with client(slow, concurrency=limiter) as api:
        await asyncio.gather(*(api.request("GET", "accounts") for _ in range(7)))
    assert peak == 2
    assert limiter.in_flight == 0


async def test_client_halves_concurrency_on_429_and_recovers():
    limiter = AdaptiveConcurrency(8, maximum=32, increase_after=2)
    script = Script(THROTTLED, OK)
    async with client(script, concurrency=limiter) as api:
        await api.request("GET", "accounts")
        assert limiter.limit == 4
        for _ in range(3):
            await api.request("GET", "accounts")
    # 1 success after the retry + 3 more = 4 successes -> +2
    assert limiter.limit == 6


async def test_cancelled_waiter_does_not_leak_a_slot():
    limiter = AdaptiveConcurrency(1, maximum=1)
    held = await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release(held, "success")
    assert limiter.in_flight == 0
    await asyncio.wait_for(limiter.acquire(), timeout=1)


# ------------------------------------------------------------------------------------------------ tokens


class FakeCredential:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.calls = 0
        self.scopes: list[str] = []

    async def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        self.calls += 1
        self.scopes.extend(scopes)
        await asyncio.sleep(0)  # let other callers pile up on the lock
        return AccessToken(f"access-{self.calls}", int(time.time() + self.lifetime))


async def test_azure_identity_provider_caches_until_five_minutes_before_expiry():
    credential = FakeCredential(lifetime=3600)
    provider = AzureIdentityTokenProvider(credential, "https://contoso.crm.dynamics.com/.default")
    assert await provider.token() == "access-1"
    assert await provider.token() == "access-1"
    assert credential.calls == 1
    assert credential.scopes == ["https://contoso.crm.dynamics.com/.default"]

    clock = [time.time()]
    provider = AzureIdentityTokenProvider(credential, "s", clock=lambda: clock[0])
    await provider.token()
    clock[0] += 3600 - 301
    await provider.token()
    assert credential.calls == 2
    clock[0] += 2  # now inside the 5-minute margin
    await provider.token()
    assert credential.calls == 3


async def test_azure_identity_provider_refreshes_once_for_concurrent_callers():
    credential = FakeCredential(lifetime=3600)
    provider = AzureIdentityTokenProvider(credential, "s")
    tokens = await asyncio.gather(*(provider.token() for _ in range(20)))
    assert set(tokens) == {"access-1"}
    assert credential.calls == 1
    provider.invalidate()
    assert await provider.token() == "access-2"
    assert "access" not in repr(provider)


def test_static_token_provider_hides_the_token():
    assert TOKEN not in repr(StaticTokenProvider(TOKEN))
    assert isinstance(StaticTokenProvider(TOKEN), TokenProvider)
    with pytest.raises(ValueError):
        StaticTokenProvider("")


def test_scope_for():
    assert scope_for("https://contoso.crm.dynamics.com/api/data/v9.2/") == "https://contoso.crm.dynamics.com/.default"
    assert scope_for("https://Contoso.Operations.Dynamics.com") == "https://contoso.operations.dynamics.com/.default"
    with pytest.raises(ValueError):
        scope_for("contoso")


async def test_default_credential_builds_async_default_azure_credential():
    from azure.identity.aio import DefaultAzureCredential

    for client_id in (None, "11111111-2222-3333-4444-555555555555"):
        credential = default_credential(client_id)
        assert isinstance(credential, DefaultAzureCredential)
        await credential.close()


# --------------------------------------------------------------------------------------- classification


def classify(response: httpx.Response, system: str = "fno") -> ConnectorError:
    response.request = httpx.Request("POST", "https://contoso.operations.dynamics.com/data/CustomersV3")
    return error_from_response(system, response)


def test_fno_validation_infolog_is_permanent_and_kept_without_stacktrace():
    infolog = ("Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Warning: The value 'Local' in "
               "field 'Customer group' is not found in the related table 'Customer groups'.")
    error = classify(fno_error(500, "An error has occurred.", infolog,
                               "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"))
    assert type(error) is PermanentError
    assert error.infolog == infolog
    assert "Customer groups" in str(error)
    assert "StackFrame" not in str(error) and "StackFrame" not in repr(error)
    assert error.error_type.endswith("AxODataWriteException")


def test_fno_already_exists_and_not_found_for_update():
    exists = classify(fno_error(500, "An error has occurred.",
                                "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Error: Cannot "
                                "create a record in Customers (CustTable). Customer account: US-001. The record "
                                "already exists.", "AxODataWriteException"))
    assert isinstance(exists, AlreadyExistsError)
    missing = classify(fno_error(400, "An error has occurred.",
                                 "No resources were found when selecting for update.", None))
    assert isinstance(missing, NotFoundError)


def test_generic_500_and_deadlock_infolog_are_transient():
    assert type(classify(httpx.Response(500, text="oops"))) is TransientError
    deadlock = classify(fno_error(500, "An error has occurred.", "Write failed. Infolog: Error: Deadlock, where "
                                  "one or more users have simultaneously locked the whole table",
                                  "AxODataWriteException"))
    assert type(deadlock) is TransientError


def test_dataverse_status_mapping():
    assert isinstance(classify(dv_error(412, "0x80060892", "Entity Key violated"), "dataverse"), AlreadyExistsError)
    assert isinstance(classify(dv_error(412, "", "A record with matching key values already exists."), "dataverse"),
                      AlreadyExistsError)
    mismatch = classify(dv_error(412, "", "The version of the existing record doesn't match the RowVersion "
                                 "property provided."), "dataverse")
    assert type(mismatch) is PreconditionFailedError
    assert type(classify(dv_error(403, "0x80040220", "PrivilegeDenied"), "dataverse")) is PermanentError
    assert isinstance(classify(dv_error(404, "0x80040217", "account With Id = x Does Not Exist"), "dataverse"),
                      NotFoundError)
    bad_route = classify(dv_error(404, "0x80060888", "Resource not found for the segment 'acounts'."), "dataverse")
    assert type(bad_route) is PermanentError
    assert type(classify(httpx.Response(504), "dataverse")) is TransientError
    assert isinstance(classify(dv_error(503, "", "busy", {"Retry-After": "4"}), "dataverse"), ThrottledError)


def test_error_pickles():
    import pickle

    error = ThrottledError("fno", 429, None, "busy", "GET", "https://x/data/A", retry_after=3.0)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ThrottledError and copy.retry_after == 3.0 and str(copy) == str(error)


def test_dumps_json_handles_decimal_datetime_uuid():
    body = json.loads(dumps_json({
        "revenue": Decimal("5000000.00"), "rate": Decimal("0.15"),
        "when": datetime(2024, 5, 31, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        "id": UUID("00000000-0000-0000-0000-000000000001"),
    }))
    assert body == {"revenue": 5000000, "rate": 0.15, "when": "2024-05-31T10:00:00Z",
                    "id": "00000000-0000-0000-0000-000000000001"}
    with pytest.raises(ValueError):
        dumps_json({"x": Decimal("NaN")})
