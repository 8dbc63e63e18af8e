"""DataverseClient and FnOClient against the sandbox over real loopback HTTP.

Every test talks to the simulators through a socket (uvicorn on 127.0.0.1) and checks what the services saw
in their request logs, not only what the client returned. Retries use an injected sleep that records the
delays (and yields), so the Retry-After / backoff decisions are asserted without waiting for them; one test
waits for a real one-second Retry-After to prove the wiring end to end.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from p2csync.connectors import (
    AlreadyExistsError,
    AuthenticationError,
    DataverseClient,
    FnOClient,
    HttpOptions,
    PermanentError,
    RetryPolicy,
    StaticTokenProvider,
    ThrottledError,
)
from sandbox import (
    INTEGRATION_TOKEN, INTEGRATION_USER_ID, USD_CURRENCY_ID, FnoChange, SandboxServer, WebhookStep,
)
from sandbox.server import BackgroundServers

CUSTOMERS = "CustomersV3"


# ----------------------------------------------------------------------------------------------- fixtures


class HookReceiver:
    """A webhook endpoint on loopback that keeps every delivered RemoteExecutionContext."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.payloads: list[dict[str, Any]] = []
        self.server = BackgroundServers([Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])])

    async def hook(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self.lock:
            self.payloads.append(body)
        return Response(status_code=200)

    @property
    def url(self) -> str:
        return self.server.urls[0] + "/hook"


class ChangeRecorder:
    """The one F&O change sink of the module: records every committed write; a test may add a hook."""

    def __init__(self) -> None:
        self.changes: list[FnoChange] = []
        self.hook: Callable[[FnoChange], None] | None = None

    def __call__(self, change: FnoChange) -> None:
        self.changes.append(change)
        if self.hook is not None:
            self.hook(change)


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[SandboxServer, ChangeRecorder, HookReceiver]]:
    recorder = ChangeRecorder()
    receiver = HookReceiver()
    receiver.server.start()
    try:
        with SandboxServer() as server:
            server.fno.on_change(recorder)
            yield server, recorder, receiver
    finally:
        receiver.server.stop()


@pytest.fixture
def sandbox(_server: tuple[SandboxServer, ChangeRecorder, HookReceiver]) -> Iterator[SandboxServer]:
    server, recorder, receiver = _server
    server.dataverse.reset(webhooks=True)
    server.fno.reset()
    recorder.changes.clear()
    recorder.hook = None
    with receiver.lock:
        receiver.payloads.clear()
    validators = {name: list(items) for name, items in server.fno.validators.items()}
    groups = set(server.fno.customer_groups)
    yield server
    server.fno.validators = validators
    server.fno.customer_groups = groups
    recorder.hook = None


@pytest.fixture
def changes(_server: tuple[SandboxServer, ChangeRecorder, HookReceiver]) -> ChangeRecorder:
    return _server[1]


@pytest.fixture
def receiver(_server: tuple[SandboxServer, ChangeRecorder, HookReceiver]) -> HookReceiver:
    return _server[2]


class Sleeps:
    """An injected ``sleep`` that records each requested delay and only yields to the loop."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def _options(sleeps: Sleeps, **retry: Any) -> HttpOptions:
    return HttpOptions(retry=RetryPolicy(jitter="none", **retry), sleep=sleeps)


@pytest.fixture
async def dv(sandbox: SandboxServer, sleeps: Sleeps) -> AsyncIterator[DataverseClient]:
    async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(INTEGRATION_TOKEN),
                               http=_options(sleeps)) as client:
        yield client


@pytest.fixture
async def fno(sandbox: SandboxServer, sleeps: Sleeps) -> AsyncIterator[FnOClient]:
    tokens = StaticTokenProvider(INTEGRATION_TOKEN)
    async with FnOClient(sandbox.fno_url, tokens, http=_options(sleeps)) as client:
        yield client


def _log(sandbox: SandboxServer, system: str = "fno", *, expect: int = 0) -> list[tuple[str, int | None]]:
    """(method, status) of every request the simulator answered, waiting up to 2 s for ``expect`` entries.

    The wait is needed for bodiless answers (PATCH/DELETE 204): the sandbox logs them when the (empty) body
    message passes its front, which can be just after the client already has the complete response.
    """
    simulator = sandbox.fno if system == "fno" else sandbox.dataverse
    deadline = time.monotonic() + 2.0
    while len(simulator.request_log) < expect and time.monotonic() < deadline:
        time.sleep(0.005)
    return [(r.method, r.status) for r in simulator.request_log.entries()]


def assert_log(sandbox: SandboxServer, expected: list[tuple[str, int | None]], system: str = "fno") -> None:
    assert _log(sandbox, system, expect=len(expected)) == expected


def _customer(number: str, **extra: Any) -> dict[str, Any]:
    return {"OrganizationName": f"Customer {number}", "CustomerGroupId": "10", "SalesCurrencyCode": "USD",
            "CreditLimit": Decimal("25000"), "PrimaryContactPhone": "+1 425 555 0100", **extra}


def _key(number: str, company: str = "usmf") -> dict[str, str]:
    return {"dataAreaId": company, "CustomerAccount": number}


# --------------------------------------------------------------------------------------------- Dataverse


async def test_dataverse_upsert_by_alternate_key_creates_then_updates_and_the_tag_reaches_the_event(
    sandbox: SandboxServer, dv: DataverseClient, receiver: HookReceiver
) -> None:
    sandbox.dataverse.register_webhook(receiver.url, steps=[WebhookStep(table="account", message="Create"),
                                                            WebhookStep(table="account", message="Update")])
    created = await dv.upsert("accounts", {"accountnumber": "DV-001"},
                              {"name": "Contoso", "creditlimit": 1000},
                              select=["accountid", "name"])
    assert created.created is True
    record_id = created.record["accountid"]
    updated = await dv.upsert("accounts", {"accountnumber": "DV-001"}, {"name": "Contoso Ltd"}, select="name")
    assert updated.created is False
    assert updated.record["accountid"] == record_id and updated.record["name"] == "Contoso Ltd"
    assert updated.etag and updated.etag != created.etag

    patches = sandbox.dataverse.request_log.entries(method="PATCH")
    assert [p.status for p in patches] == [201, 200]
    assert all("tag=p2c-sync" in p.query for p in patches)
    assert all(p.user == INTEGRATION_USER_ID for p in patches)
    row = sandbox.dataverse.get("account", record_id)
    assert row is not None and row["name"] == "Contoso Ltd" and row["accountnumber"] == "DV-001"

    assert await sandbox.dataverse.wait_idle_async(10)
    with receiver.lock:
        payloads = list(receiver.payloads)
    assert [p["MessageName"] for p in payloads] == ["Create", "Update"]
    for payload in payloads:
        shared = {item["key"]: item["value"] for item in payload["SharedVariables"]}
        assert shared["tag"] == "p2c-sync"
        assert payload["PrimaryEntityId"] == record_id
        assert payload["InitiatingUserId"] == INTEGRATION_USER_ID


async def test_dataverse_get_by_guid_selects_a_lookup_as_value_with_annotations(
    sandbox: SandboxServer, dv: DataverseClient
) -> None:
    record_id = sandbox.dataverse.create("account", {"name": "Fabrikam", "accountnumber": "DV-002",
                                                     "transactioncurrencyid": ("transactioncurrency",
                                                                               USD_CURRENCY_ID),
                                                     "creditlimit": 1234.5, "telephone1": "555"})
    row = await dv.get("accounts", record_id, select=["name", "creditlimit", "_transactioncurrencyid_value"],
                       annotations="*")
    assert row is not None
    assert row["accountid"] == record_id
    assert row["name"] == "Fabrikam" and row["creditlimit"] == 1234.5
    assert row["_transactioncurrencyid_value"] == USD_CURRENCY_ID
    lookup = "_transactioncurrencyid_value"
    assert row[f"{lookup}@Microsoft.Dynamics.CRM.lookuplogicalname"] == "transactioncurrency"
    assert row[f"{lookup}@OData.Community.Display.V1.FormattedValue"] == "US Dollar"
    assert row["creditlimit@OData.Community.Display.V1.FormattedValue"] == "$1,234.50"
    assert "telephone1" not in row and "accountnumber" not in row  # $select honoured
    [get] = sandbox.dataverse.request_log.entries(method="GET")
    assert "%24select=" in get.query or "$select=" in get.query

    assert await dv.get("accounts", "00000000-0000-0000-0000-0000000000aa") is None  # 404 -> None


async def test_dataverse_query_follows_next_links_across_pages(
    sandbox: SandboxServer, dv: DataverseClient
) -> None:
    for n in range(7):
        sandbox.dataverse.create("account", {"name": f"Paged {n}", "accountnumber": f"PG-{n}"})
    rows = [row async for row in dv.query("accounts", filter="startswith(accountnumber,'PG-')",
                                          select=["accountnumber"], page_size=3, orderby="accountnumber")]
    assert [r["accountnumber"] for r in rows] == [f"PG-{n}" for n in range(7)]
    gets = sandbox.dataverse.request_log.entries(method="GET", path_contains="accounts")
    assert len(gets) == 3  # 3 + 3 + 1
    assert "skiptoken" not in gets[0].query and all("skiptoken" in g.query for g in gets[1:])


# --------------------------------------------------------------------------------------------------- F&O


async def test_fno_upsert_creates_then_sends_only_changed_fields_then_writes_nothing(
    sandbox: SandboxServer, fno: FnOClient, changes: ChangeRecorder
) -> None:
    created = await fno.upsert(CUSTOMERS, _key("C-001"), _customer("C-001"))
    assert created.created is True and created.changed is True
    assert_log(sandbox, [("GET", 404), ("POST", 201)])

    sandbox.fno.request_log.clear()
    desired = _customer("C-001", OrganizationName="Renamed Ltd", CreditLimit=25000.0)  # 25000.0 == 25000
    updated = await fno.upsert(CUSTOMERS, _key("C-001"), desired)
    assert (updated.created, updated.changed) == (False, True)
    assert_log(sandbox, [("GET", 200), ("PATCH", 204)])
    assert [(c.operation, c.changed) for c in changes.changes] == [
        ("Create", sorted({"dataAreaId", "CustomerAccount", *_customer("C-001")})),
        ("Update", ["OrganizationName"]),  # the minimal PATCH: only what differs
    ]
    row = sandbox.fno.get(CUSTOMERS, _key("C-001"))
    assert row is not None and row["OrganizationName"] == "Renamed Ltd" and row["CustomerGroupId"] == "10"

    sandbox.fno.request_log.clear()
    again = await fno.upsert(CUSTOMERS, _key("C-001"), desired)
    assert (again.created, again.changed) == (False, False)
    assert _log(sandbox) == [("GET", 200)]  # no write request at all
    assert len(changes.changes) == 2


async def test_fno_cross_company_finds_and_updates_a_customer_outside_the_default_company(
    sandbox: SandboxServer, fno: FnOClient
) -> None:
    sandbox.fno.create(CUSTOMERS, {"dataAreaId": "usrt", "CustomerAccount": "RT-001",
                                   "OrganizationName": "Retail",
                                   "CustomerGroupId": "20"})
    # Control: without cross-company the integration user (default company usmf) cannot see it.
    async with httpx.AsyncClient(base_url=sandbox.fno_data_url, trust_env=False,
                                 headers={"Authorization": f"Bearer {INTEGRATION_TOKEN}"}) as raw:
        assert (await raw.get("CustomersV3(dataAreaId='usrt',CustomerAccount='RT-001')")).status_code == 404
    sandbox.fno.request_log.clear()

    result = await fno.upsert(CUSTOMERS, _key("RT-001", "usrt"), {"OrganizationName": "Retail Renamed",
                                                                   "CustomerGroupId": "20"})
    assert (result.created, result.changed) == (False, True)
    assert_log(sandbox, [("GET", 200), ("PATCH", 204)])
    entries = sandbox.fno.request_log.entries()
    assert all("cross-company=true" in e.query for e in entries)
    row = sandbox.fno.get(CUSTOMERS, _key("RT-001", "usrt"))
    assert row is not None and row["OrganizationName"] == "Retail Renamed"
    assert sandbox.fno.rows(CUSTOMERS, "usmf") == []


async def test_fno_429_retry_after_is_honoured_then_the_call_succeeds(
    sandbox: SandboxServer, fno: FnOClient, sleeps: Sleeps
) -> None:
    sandbox.fno.faults.throttle(count=1, retry_after=3, method="GET")
    result = await fno.upsert(CUSTOMERS, _key("C-429"), _customer("C-429"))
    assert result.created
    assert sleeps.delays == [3.0]  # Retry-After, not the 0.5 s backoff
    entries = sandbox.fno.request_log.entries()
    assert [(e.method, e.status, e.fault) for e in entries] == [
        ("GET", 429, "throttle"), ("GET", 404, None), ("POST", 201, None)]


async def test_dataverse_real_one_second_retry_after_is_waited_for(sandbox: SandboxServer) -> None:
    sandbox.dataverse.faults.throttle(count=1, retry_after=1)
    record_id = sandbox.dataverse.create("account", {"name": "Slow", "accountnumber": "DV-429"})
    async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(INTEGRATION_TOKEN)) as client:
        started = time.monotonic()
        row = await client.get("accounts", record_id, select=["name"])
        elapsed = time.monotonic() - started
    assert row is not None and row["name"] == "Slow"
    first, second = sandbox.dataverse.request_log.entries()
    assert (first.status, second.status) == (429, 200)
    assert (second.time - first.time).total_seconds() >= 0.95 and elapsed >= 0.95


async def test_fno_429_longer_than_the_client_waits_raises_throttled_at_once(
    sandbox: SandboxServer, fno: FnOClient, sleeps: Sleeps
) -> None:
    sandbox.fno.faults.throttle(count=1, retry_after=900)
    with pytest.raises(ThrottledError) as caught:
        await fno.upsert(CUSTOMERS, _key("C-430"), _customer("C-430"))
    assert caught.value.retry_after == 900 and caught.value.status == 429
    assert sleeps.delays == [] and _log(sandbox) == [("GET", 429)]


async def test_fno_503_twice_then_success(sandbox: SandboxServer, fno: FnOClient, sleeps: Sleeps) -> None:
    sandbox.fno.faults.error(503, count=2, method="POST")
    result = await fno.upsert(CUSTOMERS, _key("C-503"), _customer("C-503"))
    assert result.created
    assert_log(sandbox, [("GET", 404), ("POST", 503), ("POST", 503), ("POST", 201)])
    assert sleeps.delays == [0.5, 1.0]  # exponential backoff (jitter off)
    assert len(sandbox.fno.rows(CUSTOMERS)) == 1


async def test_fno_dropped_connection_on_get_is_retried(sandbox: SandboxServer, fno: FnOClient,
                                                        sleeps: Sleeps) -> None:
    sandbox.fno.faults.drop(count=1, method="GET")
    sandbox.fno.create(CUSTOMERS,
                       {"CustomerAccount": "C-DROP", "OrganizationName": "X", "CustomerGroupId": "10"},
                       user="p2csync-integration")
    row = await fno.get(CUSTOMERS, _key("C-DROP"))
    assert row is not None and row["OrganizationName"] == "X"
    assert [(e.status, e.fault) for e in sandbox.fno.request_log.entries()] == [(None, "drop"), (200, None)]
    assert len(sleeps.delays) == 1


async def test_fno_dropped_connection_on_post_is_retried_and_leaves_one_customer(
    sandbox: SandboxServer, fno: FnOClient
) -> None:
    sandbox.fno.faults.drop(count=1, method="POST")
    result = await fno.upsert(CUSTOMERS, _key("C-DPOST"), _customer("C-DPOST"))
    assert result.created
    assert [(e.method, e.status) for e in sandbox.fno.request_log.entries()] == [
        ("GET", 404), ("POST", None), ("POST", 201)]
    assert len(sandbox.fno.rows(CUSTOMERS)) == 1


async def test_fno_post_committed_but_answer_lost_ends_in_the_already_exists_path_with_one_customer(
    sandbox: SandboxServer, changes: ChangeRecorder
) -> None:
    """The sandbox's "drop" fault drops before the write; a lost answer after the commit is made here by
    holding the server (on the change hook) past the client's read timeout, so the retried POST meets the
    row the first one created."""
    blocked = threading.Event()

    def stall_first_create(change: FnoChange) -> None:
        if change.operation == "Create" and not blocked.is_set():
            blocked.set()
            time.sleep(0.5)  # runs on the server loop: the 201 leaves after the client gave up

    changes.hook = stall_first_create
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(0.4)  # retry once the server is free again

    options = HttpOptions(retry=RetryPolicy(jitter="none"), sleep=sleep, timeout=httpx.Timeout(0.25))
    async with FnOClient(sandbox.fno_url, StaticTokenProvider(INTEGRATION_TOKEN), http=options) as client:
        result = await client.upsert(CUSTOMERS, _key("C-LOST"), _customer("C-LOST"))
    assert result.created is False and result.changed is False  # found equal after "already exists"
    statuses = [(e.method, e.status) for e in sandbox.fno.request_log.entries()]
    assert statuses[0] == ("GET", 404)
    assert ("POST", 500) in statuses and statuses[-1] == ("GET", 200)
    assert [c.operation for c in changes.changes] == ["Create"]
    assert len(sandbox.fno.rows(CUSTOMERS)) == 1
    assert waits  # the POST that timed out was sent again


async def test_fno_validation_infolog_is_a_permanent_error_carrying_the_infolog(
    sandbox: SandboxServer, fno: FnOClient, sleeps: Sleeps
) -> None:
    with pytest.raises(PermanentError) as caught:
        await fno.upsert(CUSTOMERS, _key("C-BAD"), _customer("C-BAD", CustomerGroupId="Local"))
    error = caught.value
    assert not isinstance(error, AlreadyExistsError)
    assert error.status == 500
    assert "The value 'Local' in field 'Customer group' is not found in the related table" in str(error)
    assert "validateField failed on field 'CustCustomerV3Entity.CustomerGroupId'" in (error.infolog or "")
    assert sleeps.delays == []  # not retried
    assert_log(sandbox, [("GET", 404), ("POST", 500)])
    assert sandbox.fno.rows(CUSTOMERS) == []


async def test_fno_validator_on_update_is_a_permanent_error_and_nothing_changes(
    sandbox: SandboxServer, fno: FnOClient
) -> None:
    sandbox.fno.create(CUSTOMERS,
                       {"CustomerAccount": "C-VAL", "OrganizationName": "Old", "CustomerGroupId": "10"},
                       user="p2csync-integration")

    def no_blocked_names(entity: Any, row: dict[str, Any], operation: str, fno_: Any) -> list[str]:
        return ["Customer name 'Blocked' is reserved."] if row.get("OrganizationName") == "Blocked" else []

    sandbox.fno.add_validator(CUSTOMERS, no_blocked_names)
    with pytest.raises(PermanentError) as caught:
        await fno.upsert(CUSTOMERS, _key("C-VAL"), {"OrganizationName": "Blocked", "CustomerGroupId": "10"})
    assert "Customer name 'Blocked' is reserved." in str(caught.value)
    assert caught.value.method == "PATCH"
    assert sandbox.fno.get(CUSTOMERS, _key("C-VAL"))["OrganizationName"] == "Old"  # type: ignore[index]


async def test_wrong_token_is_an_authentication_error_without_retries(
    sandbox: SandboxServer, sleeps: Sleeps
) -> None:
    wrong = StaticTokenProvider("not-a-sandbox-token")
    async with FnOClient(sandbox.fno_url, wrong, http=_options(sleeps)) as f:
        with pytest.raises(AuthenticationError) as caught:
            await f.upsert(CUSTOMERS, _key("C-401"), _customer("C-401"))
    assert caught.value.status == 401 and "not-a-sandbox-token" not in str(caught.value)
    async with DataverseClient(sandbox.dataverse_url, wrong, http=_options(sleeps)) as d:
        with pytest.raises(AuthenticationError):
            await d.upsert("accounts", {"accountnumber": "DV-401"}, {"name": "x"})
    assert_log(sandbox, [("GET", 401)])
    assert_log(sandbox, [("PATCH", 401)], "dataverse")
    assert sleeps.delays == []
    assert sandbox.fno.rows(CUSTOMERS) == [] and sandbox.dataverse.rows("account") == []


class RaceTransport(httpx.AsyncBaseTransport):
    """Forwards to the real loopback transport; just before the first POST leaves, another F&O user
    creates the same customer through the sandbox's Python API (the race between our GET and our POST)."""

    def __init__(self, act: Callable[[], None]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.act: Callable[[], None] | None = act

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and self.act is not None:
            act, self.act = self.act, None
            await asyncio.to_thread(act)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_customer_created_between_our_get_and_post_ends_as_an_update(
    sandbox: SandboxServer, changes: ChangeRecorder
) -> None:
    def someone_else_creates() -> None:
        sandbox.fno.create(CUSTOMERS, {"CustomerAccount": "C-RACE", "OrganizationName": "Theirs",
                                       "CustomerGroupId": "10"}, user="sam.seller")

    options = HttpOptions(transport=RaceTransport(someone_else_creates))
    async with FnOClient(sandbox.fno_url, StaticTokenProvider(INTEGRATION_TOKEN), http=options) as client:
        result = await client.upsert(CUSTOMERS, _key("C-RACE"), _customer("C-RACE"))
    assert (result.created, result.changed) == (False, True)
    assert_log(sandbox, [("GET", 404), ("POST", 500), ("GET", 200), ("PATCH", 204)])
    rows = sandbox.fno.rows(CUSTOMERS)
    assert len(rows) == 1 and rows[0]["OrganizationName"] == "Customer C-RACE"
    assert [(c.operation, c.user) for c in changes.changes] == [("Create", "sam.seller"),
                                                                ("Update", "p2csync-integration")]
