"""DataverseClient against an in-memory fake of the Web API (wire-formats §2)."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from urllib.parse import unquote

import httpx
import pytest

from p2csync.connectors.auth import StaticTokenProvider
from p2csync.connectors.dataverse import DataverseClient, format_key, service_root
from p2csync.connectors.errors import (
    AlreadyExistsError,
    InvalidKeyError,
    NotFoundError,
    PermanentError,
    PreconditionFailedError,
)
from p2csync.connectors.http import HttpOptions

TOKEN = "dv-static-token-123"
ROOT = "/api/data/v9.2/"


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


class FakeDataverse:
    """Just enough of the Web API: alternate-key upsert with conditional headers, GET, paging, POST, DELETE."""

    KEYS = {"accounts": "accountnumber", "contacts": "emailaddress1"}

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, dict]] = {name: {} for name in self.KEYS}
        self.versions = 1000
        self.requests: list[httpx.Request] = []
        self.throttle_next = 0

    def _etag(self) -> str:
        self.versions += 1
        return f'W/"{self.versions}"'

    def _locate(self, path: str) -> tuple[str, str | None]:
        match = re.fullmatch(r"(\w+)(?:\((.*)\))?", unquote(path[len(ROOT):]))
        assert match, path
        entity_set, key = match.group(1), match.group(2)
        if key is None or entity_set not in self.KEYS:
            return entity_set, key
        if re.fullmatch(r"[0-9a-fA-F-]{36}", key):  # primary key: look the row up by its id
            return entity_set, next((k for k, r in self.rows[entity_set].items() if r.get("accountid") == key), key)
        key_match = re.fullmatch(r"(\w+)='((?:[^']|'')*)'", key)
        assert key_match and key_match.group(1) == self.KEYS[entity_set], key
        return entity_set, key_match.group(2).replace("''", "'")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Accept"] == "application/json"
        assert request.headers["OData-MaxVersion"] == "4.0" and request.headers["OData-Version"] == "4.0"
        if self.throttle_next:
            self.throttle_next -= 1
            return error(429, "0x80072322", "Number of requests exceeded the limit of 6000 over time window of "
                         "300 seconds.", {"Retry-After": "2"})
        entity_set, key = self._locate(request.url.path)
        if entity_set not in self.rows:
            return error(404, "0x80060888", f"Resource not found for the segment '{entity_set}'.")
        table = self.rows[entity_set]
        if request.method == "GET":
            assert request.headers["If-None-Match"] == "null"
            return self._get(request, entity_set, key)
        body = json.loads(request.content) if request.content else {}
        if request.method == "PATCH":
            assert request.headers["Content-Type"] == "application/json"
            existing = table.get(key)
            if request.headers.get("If-None-Match") == "*" and existing is not None:
                return error(412, "", "A record with matching key values already exists.")
            if_match = request.headers.get("If-Match")
            if if_match and existing is None:
                return error(404, "0x80040217", f"account With Id = {key} Does Not Exist")
            if if_match not in (None, "*") and existing["@odata.etag"] != if_match:
                return error(412, "", "The version of the existing record doesn't match the RowVersion property "
                             "provided.")
            created = existing is None
            row = existing or {"accountid": str(uuid.uuid4()), self.KEYS[entity_set]: key}
            row.update(body)
            row["@odata.etag"] = self._etag()
            table[key] = row
            return self._written(request, row, 201 if created else 200)
        if request.method == "POST":
            key = body.get(self.KEYS[entity_set])
            if key in table:
                return error(412, "0x80060892", "Entity Key Account Number violated. A record with the same value "
                             "for Account Number already exists.")
            row = {"accountid": str(uuid.uuid4()), **body, "@odata.etag": self._etag()}
            table[key] = row
            return self._written(request, row, 201)
        if request.method == "DELETE":
            if table.pop(key, None) is None:
                return error(404, "0x80040217", "account Does Not Exist")
            return httpx.Response(204)
        return error(405, "", "Method not allowed")

    def _written(self, request: httpx.Request, row: dict, status: int) -> httpx.Response:
        if request.headers.get("Prefer") != "return=representation":
            return httpx.Response(204, headers={"OData-EntityId": f"https://org{ROOT}accounts({row['accountid']})"})
        select = request.url.params.get("$select")
        shown = {k: v for k, v in row.items() if select is None or k in select.split(",") or k.startswith("@")}
        return httpx.Response(status, json=shown, headers={"ETag": row["@odata.etag"]})

    def _get(self, request: httpx.Request, entity_set: str, key: str | None) -> httpx.Response:
        table = self.rows[entity_set]
        if key is not None:
            row = table.get(key)
            if row is None:
                return error(404, "0x80040217", f"account With Id = {key} Does Not Exist")
            return httpx.Response(200, json=row)
        rows = sorted(table.values(), key=lambda r: r[self.KEYS[entity_set]])
        prefer = request.headers.get("Prefer", "")
        size = int(prefer.split("=")[1]) if prefer.startswith("odata.maxpagesize=") else 5000
        skip = int(request.url.params.get("$skiptoken", "0"))
        page = rows[skip: skip + size]
        body: dict = {"value": page}
        if skip + size < len(rows):
            body["@odata.nextLink"] = str(request.url.copy_set_param("$skiptoken", str(skip + size)))
        return httpx.Response(200, json=body)


@pytest.fixture
def fake() -> FakeDataverse:
    return FakeDataverse()


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
async def dv(fake, sleep):
    client = DataverseClient("https://org.crm.dynamics.com", StaticTokenProvider(TOKEN),
                             http=HttpOptions(transport=httpx.MockTransport(fake), sleep=sleep))
    async with client:
        yield client


# ------------------------------------------------------------------------------------------------ keys


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ({"accountnumber": "US-001"}, "(accountnumber='US-001')"),
        ({"firstname": "Joe", "emailaddress1": "abc@example.com"}, "(firstname='Joe',emailaddress1='abc@example.com')"),
        ({"name": "O'Neil's"}, "(name='O''Neil''s')"),
        ({"new_number": 42}, "(new_number=42)"),
        ({"new_amount": Decimal("10.50")}, "(new_amount=10.50)"),
        ("00000000-0000-0000-0000-00000000000A", "(00000000-0000-0000-0000-00000000000A)"),
        ("{00000000-0000-0000-0000-000000000001}", "(00000000-0000-0000-0000-000000000001)"),
        (uuid.UUID(int=1), "(00000000-0000-0000-0000-000000000001)"),
        ({"_primarycontactid_value": "00000000-0000-0000-0000-000000000002"},
         "(_primarycontactid_value=00000000-0000-0000-0000-000000000002)"),
        ({"accountid": uuid.UUID(int=3)}, "(accountid=00000000-0000-0000-0000-000000000003)"),
        ({"new_ref": "00000000-0000-0000-0000-000000000004"}, "(new_ref='00000000-0000-0000-0000-000000000004')"),
    ],
)
def test_format_key(key, expected):
    assert format_key(key) == expected


@pytest.mark.parametrize("char", list("/<>*%&:\\?+"))
def test_format_key_rejects_unsupported_characters(char):
    with pytest.raises(InvalidKeyError) as caught:
        format_key({"accountnumber": f"US{char}001"})
    assert char in caught.value.message
    assert "accountnumber" in caught.value.message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, PermanentError)


@pytest.mark.parametrize("key", [{}, {"accountnumber": ""}, {"accountnumber": None}, "US-001", {"bad name": "x"},
                                 {"accountnumber": object()}])
def test_format_key_rejects_malformed_keys(key):
    with pytest.raises(InvalidKeyError):
        format_key(key)


def test_service_root():
    assert service_root("https://org.crm.dynamics.com") == "https://org.crm.dynamics.com/api/data/v9.2/"
    assert service_root("https://org.crm.dynamics.com/", "v9.1") == "https://org.crm.dynamics.com/api/data/v9.1/"
    assert service_root("http://127.0.0.1:8080/api/data/v9.2") == "http://127.0.0.1:8080/api/data/v9.2/"


# ---------------------------------------------------------------------------------------------- upsert


async def test_upsert_creates_then_updates(dv, fake):
    key = {"accountnumber": "US-001"}
    first = await dv.upsert("accounts", key, {"name": "Contoso", "accountnumber": "US-001", "revenue": Decimal("5E6")})
    assert first.created is True
    assert first.record["name"] == "Contoso"
    assert first.etag == fake.rows["accounts"]["US-001"]["@odata.etag"]

    second = await dv.upsert("accounts", key, {"name": "Contoso Ltd"})
    assert second.created is False
    assert second.record["name"] == "Contoso Ltd"
    assert second.etag != first.etag
    assert fake.rows["accounts"]["US-001"]["revenue"] == 5000000

    request = fake.requests[0]
    assert request.method == "PATCH"
    assert request.url.path == "/api/data/v9.2/accounts(accountnumber='US-001')"
    assert request.headers["Prefer"] == "return=representation"
    assert "If-None-Match" not in request.headers and "If-Match" not in request.headers
    assert json.loads(request.content) == {"name": "Contoso", "revenue": 5000000}  # key column removed


async def test_upsert_appends_the_tag_and_select(dv, fake):
    await dv.upsert("accounts", {"accountnumber": "US-002"}, {"name": "A"}, select=["accountid", "name"])
    params = fake.requests[0].url.params
    assert params["tag"] == "p2c-sync"
    assert params["$select"] == "accountid,name"


async def test_no_tag_when_disabled(fake, sleep):
    async with DataverseClient("https://org.crm.dynamics.com", StaticTokenProvider(TOKEN), tag=None,
                               http=HttpOptions(transport=httpx.MockTransport(fake), sleep=sleep)) as client:
        await client.upsert("accounts", {"accountnumber": "US-003"}, {"name": "A"})
    assert "tag" not in fake.requests[0].url.params


async def test_create_only_on_an_existing_row_raises_already_exists(dv, fake):
    await dv.upsert("accounts", {"accountnumber": "US-004"}, {"name": "A"}, create_only=True)
    assert fake.requests[0].headers["If-None-Match"] == "*"
    with pytest.raises(AlreadyExistsError) as caught:
        await dv.upsert("accounts", {"accountnumber": "US-004"}, {"name": "B"}, create_only=True)
    assert caught.value.status == 412
    assert fake.rows["accounts"]["US-004"]["name"] == "A"


async def test_update_only_on_a_missing_row_raises_not_found(dv, fake):
    with pytest.raises(NotFoundError):
        await dv.upsert("accounts", {"accountnumber": "US-005"}, {"name": "A"}, update_only=True)
    assert fake.requests[0].headers["If-Match"] == "*"
    assert "US-005" not in fake.rows["accounts"]


async def test_if_match_detects_a_concurrent_change(dv, fake):
    created = await dv.upsert("accounts", {"accountnumber": "US-006"}, {"name": "A"})
    await dv.upsert("accounts", {"accountnumber": "US-006"}, {"name": "B"})
    with pytest.raises(PreconditionFailedError):
        await dv.upsert("accounts", {"accountnumber": "US-006"}, {"name": "C"}, if_match=created.etag)
    assert fake.rows["accounts"]["US-006"]["name"] == "B"


async def test_conflicting_conditions_are_rejected(dv, fake):
    with pytest.raises(ValueError):
        await dv.upsert("accounts", {"accountnumber": "X"}, {}, create_only=True, update_only=True)
    assert fake.requests == []


async def test_invalid_key_sends_nothing(dv, fake):
    with pytest.raises(InvalidKeyError):
        await dv.upsert("accounts", {"accountnumber": "US/001"}, {"name": "A"})
    with pytest.raises(ValueError):
        await dv.upsert("accounts/../systemusers", {"accountnumber": "US-001"}, {"name": "A"})
    assert fake.requests == []


async def test_key_values_are_percent_encoded_in_the_path(dv, fake):
    await dv.upsert("accounts", {"accountnumber": "US 001#7"}, {"name": "A"})
    assert fake.requests[0].url.raw_path.startswith(b"/api/data/v9.2/accounts(accountnumber='US%20001%237')")
    assert "US 001#7" in fake.rows["accounts"]


async def test_upsert_retries_after_throttling(dv, fake, sleep):
    fake.throttle_next = 2
    result = await dv.upsert("accounts", {"accountnumber": "US-007"}, {"name": "A"})
    assert result.created
    assert sleep.delays == [2.0, 2.0]
    assert len(fake.requests) == 3


async def test_upsert_without_representation_reports_204(fake, sleep):
    def ignore_prefer(request: httpx.Request) -> httpx.Response:
        request.headers.pop("Prefer", None)  # a service that ignores Prefer answers 204
        return fake(request)

    async with DataverseClient("https://org.crm.dynamics.com", StaticTokenProvider(TOKEN),
                               http=HttpOptions(transport=httpx.MockTransport(ignore_prefer), sleep=sleep)) as client:
        result = await client.upsert("accounts", {"accountnumber": "US-008"}, {"name": "A"}, create_only=True)
    assert result.created is True and result.record == {}


# ------------------------------------------------------------------------------------------------ reads


async def test_get_returns_the_row_or_none(dv, fake):
    await dv.upsert("accounts", {"accountnumber": "US-010"}, {"name": "A"})
    row = await dv.get("accounts", {"accountnumber": "US-010"}, select=["name", "accountid"])
    assert row["name"] == "A"
    request = fake.requests[-1]
    assert request.method == "GET"
    assert request.url.params["$select"] == "name,accountid"
    assert "tag" not in request.url.params
    assert await dv.get("accounts", {"accountnumber": "US-404"}) is None


async def test_get_by_guid(dv, fake):
    row_id = "00000000-0000-0000-0000-0000000000aa"
    fake.rows["accounts"]["x"] = {"accountid": row_id}
    assert await dv.get("accounts", row_id) == {"accountid": row_id}
    assert fake.requests[-1].url.path == f"/api/data/v9.2/accounts({row_id})"
    assert await dv.get("accounts", uuid.UUID(int=5)) is None


async def test_get_on_an_unknown_entity_set_raises(dv):
    with pytest.raises(PermanentError) as caught:
        await dv.get("acounts", {"accountnumber": "US-010"})
    assert not isinstance(caught.value, NotFoundError)
    assert "segment" in str(caught.value)


async def test_get_with_annotations(dv, fake):
    await dv.get("accounts", {"accountnumber": "none"}, annotations="*")
    assert fake.requests[-1].headers["Prefer"] == 'odata.include-annotations="*"'


async def test_query_follows_next_links(dv, fake):
    for n in range(5):
        fake.rows["accounts"][f"A{n}"] = {"accountnumber": f"A{n}", "name": f"n{n}"}
    rows = [row async for row in dv.query("accounts", filter="statecode eq 0", select=["name"], page_size=2)]
    assert [r["accountnumber"] for r in rows] == ["A0", "A1", "A2", "A3", "A4"]
    assert len(fake.requests) == 3
    assert all(r.headers["Prefer"] == "odata.maxpagesize=2" for r in fake.requests)
    assert fake.requests[0].url.params["$filter"] == "statecode eq 0"
    assert fake.requests[2].url.params["$skiptoken"] == "4"


async def test_query_top_stops_early(dv, fake):
    for n in range(5):
        fake.rows["accounts"][f"A{n}"] = {"accountnumber": f"A{n}"}
    rows = [row async for row in dv.query("accounts", top=3, page_size=2)]
    assert len(rows) == 3
    assert len(fake.requests) == 2
    assert fake.requests[0].url.params["$top"] == "3"


# ----------------------------------------------------------------------------------------------- others


async def test_create_and_key_violation(dv, fake):
    result = await dv.create("accounts", {"accountnumber": "US-020", "name": "A"})
    assert result.created and result.record["name"] == "A"
    assert fake.requests[-1].method == "POST" and fake.requests[-1].url.params["tag"] == "p2c-sync"
    with pytest.raises(AlreadyExistsError) as caught:
        await dv.create("accounts", {"accountnumber": "US-020", "name": "B"})
    assert caught.value.code == "0x80060892"


async def test_delete(dv, fake):
    await dv.upsert("accounts", {"accountnumber": "US-030"}, {"name": "A"})
    assert await dv.delete("accounts", {"accountnumber": "US-030"}) is True
    assert await dv.delete("accounts", {"accountnumber": "US-030"}) is False
    assert fake.requests[-1].url.params["tag"] == "p2c-sync"
