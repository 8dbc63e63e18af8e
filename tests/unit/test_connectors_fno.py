"""FnOClient against an in-memory fake of F&O OData (wire-formats §4): upsert paths, races, errors, paging."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import unquote

import httpx
import pytest

from p2csync.connectors.auth import StaticTokenProvider
from p2csync.connectors.errors import (
    AuthenticationError,
    InvalidKeyError,
    PermanentError,
    RouteNotFoundError,
    ThrottledError,
    TransientError,
)
from p2csync.connectors.fno import FnOClient, format_key, same_value, service_root
from p2csync.connectors.http import HttpOptions, RetryPolicy
from p2csync.connectors.odata import ODataEnum, odata_literal

TOKEN = "fno-static-token-456"
WRITE_EXCEPTION = "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"
STACK = "   at Microsoft.Dynamics.Platform.Integration.Services.OData.Update.UpdateProcessor.CreateEntity_Save()"


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def fno_error(status: int, infolog: str, type_: str = WRITE_EXCEPTION) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": "", "message": "An error has occurred.", "innererror": {
        "message": infolog, "type": type_, "stacktrace": STACK}}})


class FakeFnO:
    """CustomersV3 with the behaviours the connector relies on.

    * Rows of companies other than the default one are invisible without ``cross-company=true``.
    * POST on an existing key -> 500 AxODataWriteException "...The record already exists."
    * PATCH on a missing key -> 400 "No resources were found when selecting for update."
    * CustomerGroupId must exist -> 500 "Write failed ... Infolog: ..." otherwise.
    * Hooks run after a GET by key, to simulate concurrent writers.
    """

    DEFAULT_COMPANY = "dat"
    GROUPS = {"10", "20", "30"}

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict] = {}
        self.requests: list[httpx.Request] = []
        self.after_get: list[Callable[[], None]] = []
        self.expected_token = TOKEN
        self.page_size = 2
        self.throttle_next = 0

    def add(self, company: str, account: str, **fields) -> dict:
        row = {"@odata.etag": 'W/"JzEsNTYzNzE0NDU3Nic="', "dataAreaId": company, "CustomerAccount": account,
               "OrganizationName": "", "CustomerGroupId": "10", "CreditLimit": 0.0, "OnHoldStatus": "No",
               "SalesCurrencyCode": "USD", "ValidFrom": "1900-01-01T00:00:00Z", **fields}
        self.rows[(company, account)] = row
        return row

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") != f"Bearer {self.expected_token}":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if self.throttle_next:
            self.throttle_next -= 1
            return httpx.Response(429, headers={"Retry-After": "1"}, json={"error": {"code": "", "message": (
                "This request could not be processed at this time due to system experiencing high resource "
                "utilization.")}})
        cross = request.url.params.get("cross-company") == "true"
        match = re.fullmatch(r"/data/(\w+)(?:\((.*)\))?", unquote(request.url.path))
        if not match or match.group(1) != "CustomersV3":
            return httpx.Response(404, json={"error": {"code": "", "message": "No HTTP resource was found."}})
        key = self._key(match.group(2)) if match.group(2) else None
        visible = (lambda company: cross or company == self.DEFAULT_COMPANY)
        if request.method == "GET" and key is not None:
            row = self.rows.get(key) if visible(key[0]) else None
            hooks, self.after_get = self.after_get, []
            for hook in hooks:
                hook()
            return httpx.Response(200, json=row) if row else httpx.Response(404)
        if request.method == "GET":
            rows = [r for (company, _), r in sorted(self.rows.items()) if visible(company)]
            skip = int(request.url.params.get("$skiptoken", "0"))
            body: dict = {"value": rows[skip: skip + self.page_size]}
            if skip + self.page_size < len(rows):
                body["@odata.nextLink"] = str(request.url.copy_set_param("$skiptoken", str(skip + self.page_size)))
            return httpx.Response(200, json=body)
        body = json.loads(request.content)
        if request.method == "POST":
            key = (body["dataAreaId"], body["CustomerAccount"])
            if key in self.rows:
                return fno_error(500, "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Error: "
                                 f"Cannot create a record in Customers (CustTable). Customer account: {key[1]}, "
                                 "The record already exists.")
            if failure := self._validate(body):
                return failure
            row = self.add(*key, **{k: v for k, v in body.items() if k not in ("dataAreaId", "CustomerAccount")})
            return httpx.Response(201, json=row, headers={"ETag": row["@odata.etag"]})
        if request.method == "PATCH":
            if key not in self.rows or not visible(key[0]):
                return fno_error(400, "No resources were found when selecting for update.",
                                 "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataException")
            if failure := self._validate(body):
                return failure
            self.rows[key].update(body)
            return httpx.Response(204)
        return httpx.Response(405)

    def _validate(self, body: dict) -> httpx.Response | None:
        group = body.get("CustomerGroupId")
        if group is not None and group not in self.GROUPS:
            return fno_error(500, "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Warning: The "
                             f"value '{group}' in field 'Customer group' is not found in the related table "
                             "'Customer groups'.; Warning: validateField failed on field "
                             "'CustCustomerV3Entity.CustomerGroupId'.")
        return None

    @staticmethod
    def _key(text: str) -> tuple[str, str]:
        fields = dict(re.findall(r"(\w+)='((?:[^']|'')*)'", text))
        return fields["dataAreaId"], fields["CustomerAccount"].replace("''", "'")

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]


@pytest.fixture
def fake() -> FakeFnO:
    return FakeFnO()


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
async def fno(fake, sleep):
    async with FnOClient("https://contoso.operations.dynamics.com", StaticTokenProvider(TOKEN),
                         http=HttpOptions(transport=httpx.MockTransport(fake), sleep=sleep)) as client:
        yield client


KEY = {"dataAreaId": "usmf", "CustomerAccount": "US-001"}


# ---------------------------------------------------------------------------------------------- upsert


async def test_create_path_posts_key_and_body(fno, fake):
    result = await fno.upsert("CustomersV3", KEY, {"OrganizationName": "Contoso", "CustomerGroupId": "10",
                                                   "CreditLimit": Decimal("2500.00")})
    assert result.created is True and result.changed is True
    assert result.record["OrganizationName"] == "Contoso"
    assert result.etag
    assert fake.methods() == ["GET", "POST"]
    post = fake.requests[1]
    assert post.url.path == "/data/CustomersV3"
    assert json.loads(post.content) == {"dataAreaId": "usmf", "CustomerAccount": "US-001",
                                        "OrganizationName": "Contoso", "CustomerGroupId": "10", "CreditLimit": 2500}
    assert all(r.url.params["cross-company"] == "true" for r in fake.requests)
    assert fake.rows[("usmf", "US-001")]["OrganizationName"] == "Contoso"


async def test_update_path_patches_only_the_fields_that_differ(fno, fake):
    fake.add("usmf", "US-001", OrganizationName="Old name", CreditLimit=1000.0, OnHoldStatus="No")
    result = await fno.upsert("CustomersV3", KEY, {
        "OrganizationName": "New name",
        "CreditLimit": Decimal("1000.00"),                       # Decimal vs float
        "OnHoldStatus": ODataEnum("CustVendorBlocked", "No"),     # enum vs its string
        "CustomerGroupId": "10",
        "CustomerAccount": "US-001",                              # key fields are never patched
        "ValidFrom": None,                                        # 1900-01-01 is F&O's empty date
    })
    assert result.created is False and result.changed is True
    assert fake.methods() == ["GET", "PATCH"]
    patch = fake.requests[1]
    assert patch.url.path == "/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')"
    assert patch.url.params["cross-company"] == "true"
    assert json.loads(patch.content) == {"OrganizationName": "New name"}
    assert result.record["OrganizationName"] == "New name"
    assert "@odata.etag" not in result.record  # the read's ETag is stale after the write


async def test_no_request_when_nothing_differs(fno, fake):
    fake.add("usmf", "US-001", OrganizationName="Contoso", CreditLimit=1000.5, OnHoldStatus="Yes")
    result = await fno.upsert("CustomersV3", KEY, {"OrganizationName": "Contoso", "CreditLimit": Decimal("1000.50"),
                                                   "OnHoldStatus": "Yes"})
    assert result.changed is False and result.created is False
    assert result.etag == 'W/"JzEsNTYzNzE0NDU3Nic="'
    assert fake.methods() == ["GET"]


async def test_rows_of_other_companies_are_found_through_cross_company(fno, fake):
    fake.add("usrt", "US-009", OrganizationName="Retail")
    result = await fno.upsert("CustomersV3", {"dataAreaId": "usrt", "CustomerAccount": "US-009"},
                              {"OrganizationName": "Retail"})
    assert result.changed is False
    assert fake.methods() == ["GET"]


async def test_race_post_already_exists_rereads_and_patches(fno, fake):
    # Someone else creates the row between our read and our POST.
    fake.after_get.append(lambda: fake.add("usmf", "US-001", OrganizationName="Theirs"))
    result = await fno.upsert("CustomersV3", KEY, {"OrganizationName": "Ours"})
    assert fake.methods() == ["GET", "POST", "GET", "PATCH"]
    assert result.created is False and result.changed is True
    assert fake.rows[("usmf", "US-001")]["OrganizationName"] == "Ours"
    assert json.loads(fake.requests[3].content) == {"OrganizationName": "Ours"}


async def test_race_post_already_exists_with_same_values_is_a_no_op(fno, fake):
    fake.after_get.append(lambda: fake.add("usmf", "US-001", OrganizationName="Same"))
    result = await fno.upsert("CustomersV3", KEY, {"OrganizationName": "Same"})
    assert fake.methods() == ["GET", "POST", "GET"]
    assert result.created is False and result.changed is False


async def test_race_patch_not_found_posts(fno, fake):
    fake.add("usmf", "US-001", OrganizationName="Old")
    fake.after_get.append(lambda: fake.rows.pop(("usmf", "US-001")))  # deleted between our read and our PATCH
    result = await fno.upsert("CustomersV3", KEY, {"OrganizationName": "New", "CustomerGroupId": "20"})
    assert fake.methods() == ["GET", "PATCH", "POST"]
    assert result.created is True
    post = json.loads(fake.requests[2].content)
    assert post == {"dataAreaId": "usmf", "CustomerAccount": "US-001", "OrganizationName": "New",
                    "CustomerGroupId": "20"}


async def test_race_flapping_row_becomes_transient(fake):
    fake.add("usmf", "US-001", OrganizationName="Old")
    fake.after_get.append(lambda: fake.rows.pop(("usmf", "US-001")))  # gone before our PATCH...

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":  # ...and back before our POST
            fake.add("usmf", "US-001", OrganizationName="Recreated")
        return fake(request)

    async with FnOClient("https://contoso.operations.dynamics.com", StaticTokenProvider(TOKEN),
                         http=HttpOptions(transport=httpx.MockTransport(handler), sleep=FakeSleep())) as client:
        with pytest.raises(TransientError) as caught:
            await client.upsert("CustomersV3", KEY, {"OrganizationName": "New"})
    assert "concurrent" in str(caught.value)
    assert fake.methods() == ["GET", "PATCH", "POST"]


async def test_validation_infolog_is_a_permanent_error_with_the_infolog(fno, fake):
    with pytest.raises(PermanentError) as caught:
        await fno.upsert("CustomersV3", KEY, {"OrganizationName": "Contoso", "CustomerGroupId": "Local"})
    error = caught.value
    assert type(error) is PermanentError
    assert error.status == 500
    assert "The value 'Local' in field 'Customer group' is not found" in error.infolog
    assert "Customer groups" in str(error)
    assert "UpdateProcessor" not in str(error) and "UpdateProcessor" not in repr(error)
    assert fake.methods() == ["GET", "POST"]  # not retried


async def test_wrong_token_is_an_authentication_error(fake):
    fake.expected_token = "another-token"
    async with FnOClient("https://contoso.operations.dynamics.com", StaticTokenProvider(TOKEN),
                         http=HttpOptions(transport=httpx.MockTransport(fake), sleep=FakeSleep())) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get("CustomersV3", KEY)
    assert caught.value.status == 401
    assert TOKEN not in str(caught.value)
    assert len(fake.requests) == 1


async def test_throttling_is_retried_then_reported(fake, sleep):
    fake.throttle_next = 1
    options = HttpOptions(transport=httpx.MockTransport(fake), sleep=sleep, retry=RetryPolicy(max_attempts=2))
    async with FnOClient("https://contoso.operations.dynamics.com", StaticTokenProvider(TOKEN), http=options) as client:
        assert await client.get("CustomersV3", KEY) is None
        assert sleep.delays == [1.0]
        fake.throttle_next = 5
        with pytest.raises(ThrottledError) as caught:
            await client.get("CustomersV3", KEY)
    assert caught.value.retry_after == 1.0
    assert "high resource utilization" in str(caught.value)


async def test_generic_server_error_is_transient():
    calls: list[str] = []

    def broken(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(500, json={"error": {"code": "", "message": "An error has occurred."}})

    async with FnOClient("https://contoso.operations.dynamics.com", StaticTokenProvider(TOKEN),
                         http=HttpOptions(transport=httpx.MockTransport(broken), sleep=FakeSleep())) as client:
        with pytest.raises(TransientError) as caught:
            await client.upsert("CustomersV3", KEY, {"OrganizationName": "X"})
    assert type(caught.value) is TransientError and caught.value.status == 500
    assert calls == ["GET"]


# ------------------------------------------------------------------------------------------- reads, keys


async def test_get_needs_every_key_field(fno, fake):
    with pytest.raises(InvalidKeyError) as caught:
        await fno.get("CustomersV3", {"CustomerAccount": "US-001"})
    assert "dataAreaId" in str(caught.value)
    with pytest.raises(InvalidKeyError):
        await fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": ""})
    with pytest.raises(InvalidKeyError):
        await fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "US-001", "Extra": "x"})
    with pytest.raises(InvalidKeyError):
        await fno.upsert("CustomersV3", KEY, {"CustomerAccount": "US-002"})  # body contradicts the key
    assert fake.requests == []


async def test_get_returns_row_or_none(fno, fake):
    fake.add("usmf", "O'Brien", OrganizationName="Quoted")
    row = await fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "O'Brien"},
                        select=["OrganizationName"])
    assert row["OrganizationName"] == "Quoted"
    assert fake.requests[0].url.params["$select"] == "OrganizationName"
    assert await fno.get("CustomersV3", KEY) is None


async def test_unknown_entities_accept_any_complete_key_and_custom_keys_are_checked(fake, sleep):
    options = HttpOptions(transport=httpx.MockTransport(fake), sleep=sleep)
    async with FnOClient("https://contoso.operations.dynamics.com", StaticTokenProvider(TOKEN), http=options,
                         entity_keys={"MyEntities": ["dataAreaId", "MyId"]}) as client:
        with pytest.raises(RouteNotFoundError):  # a URL that reaches no resource is not "no row"
            await client.get("SomethingElse", {"Id": 7})
        assert fake.requests[-1].url.path == "/data/SomethingElse(Id=7)"
        with pytest.raises(InvalidKeyError):
            await client.get("MyEntities", {"MyId": "1"})


async def test_query_pages_through_next_links_cross_company(fno, fake):
    for n in range(5):
        fake.add("usmf" if n % 2 else "usrt", f"C{n}")
    rows = [row async for row in fno.query("CustomersV3", filter=f"SalesCurrencyCode eq {odata_literal('USD')}",
                                           select=["CustomerAccount", "dataAreaId"])]
    assert sorted(r["CustomerAccount"] for r in rows) == ["C0", "C1", "C2", "C3", "C4"]
    assert len(fake.requests) == 3
    assert all(r.url.params["cross-company"] == "true" for r in fake.requests)
    assert fake.requests[0].url.params["$filter"] == "SalesCurrencyCode eq 'USD'"


async def test_query_adds_cross_company_to_next_links_without_it(fno, fake):
    for n in range(3):
        fake.add("usrt", f"C{n}")
    original = fake.__call__

    def strip(request: httpx.Request) -> httpx.Response:
        response = original(request)
        body = json.loads(response.content)
        if "@odata.nextLink" in body:
            body["@odata.nextLink"] = str(httpx.URL(body["@odata.nextLink"]).copy_remove_param("cross-company"))
        return httpx.Response(response.status_code, json=body)

    async with FnOClient("https://contoso.operations.dynamics.com", StaticTokenProvider(TOKEN),
                         http=HttpOptions(transport=httpx.MockTransport(strip), sleep=FakeSleep())) as client:
        rows = [row async for row in client.query("CustomersV3", top=10)]
    assert len(rows) == 3


def test_format_key_and_service_root():
    assert format_key(KEY) == "(dataAreaId='usmf',CustomerAccount='US-001')"
    assert format_key({"dataAreaId": "usmf", "SalesOrderNumber": "SO-1", "LineCreationSequenceNumber": 3}) == (
        "(dataAreaId='usmf',SalesOrderNumber='SO-1',LineCreationSequenceNumber=3)")
    assert service_root("https://contoso.operations.dynamics.com") == "https://contoso.operations.dynamics.com/data/"
    assert service_root("http://127.0.0.1:9000/data") == "http://127.0.0.1:9000/data/"


# ------------------------------------------------------------------------------------------ OData literals


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("US-001", "'US-001'"),
        ("O'Neil's", "'O''Neil''s'"),
        ("", "''"),
        (42, "42"),
        (-1.5, "-1.5"),
        (Decimal("1000.50"), "1000.50"),
        (Decimal("1E+3"), "1000"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        (ODataEnum("NoYes", "Yes"), "Microsoft.Dynamics.DataEntities.NoYes'Yes'"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (datetime(2024, 5, 31, 10, 0, tzinfo=timezone.utc), "2024-05-31T10:00:00Z"),
        (datetime(2024, 5, 31, 12, 0, tzinfo=timezone(timedelta(hours=2))), "2024-05-31T10:00:00Z"),
        (datetime(2024, 5, 31, 10, 0), "2024-05-31T10:00:00Z"),
        (date(2024, 5, 31), "2024-05-31"),
    ],
)
def test_odata_literal(value, literal):
    assert odata_literal(value) == literal


def test_odata_literal_rejects_what_has_no_literal():
    with pytest.raises(ValueError):
        odata_literal(float("nan"))
    with pytest.raises(TypeError):
        odata_literal(object())


def test_odata_enum_is_a_string_in_json():
    value = ODataEnum("CustVendorBlocked", "All")
    assert json.dumps({"OnHoldStatus": value}) == '{"OnHoldStatus": "All"}'
    assert value == "All" and value.type_name == "CustVendorBlocked"
    with pytest.raises(ValueError):
        ODataEnum("No Yes", "Yes")


@pytest.mark.parametrize(
    ("current", "desired", "same"),
    [
        (5000000.0, Decimal("5000000"), True),
        (0.1, Decimal("0.1"), True),
        (1000.5, Decimal("1000.51"), False),
        ("Yes", ODataEnum("NoYes", "Yes"), True),
        ("Yes", True, True),
        ("No", True, False),
        ("No", False, True),
        ("", None, True),
        ("1900-01-01T00:00:00Z", None, True),
        ("2024-05-31T00:00:00Z", date(2024, 5, 31), True),
        ("2024-05-31T10:00:00Z", datetime(2024, 5, 31, 12, 0, tzinfo=timezone(timedelta(hours=2))), True),
        ("2024-05-31T10:00:00Z", "2024-05-31T10:00:01Z", False),
        ("Contoso", "contoso", False),
        ("007", 7, False),
        (1, True, False),
    ],
)
def test_same_value(current, desired, same):
    assert same_value(current, desired) is same


async def test_race_row_created_then_deleted_becomes_transient(fno, fake):
    def created_by_someone() -> None:
        fake.add("usmf", "US-001", OrganizationName="Theirs")
        fake.after_get.append(lambda: fake.rows.pop(("usmf", "US-001")))  # ...and deleted after our re-read

    fake.after_get.append(created_by_someone)
    with pytest.raises(TransientError) as caught:
        await fno.upsert("CustomersV3", KEY, {"OrganizationName": "Ours"})
    assert "concurrent" in str(caught.value)
    assert fake.methods() == ["GET", "POST", "GET", "PATCH"]
