"""F&O key addressing and write-error classification (issue 7, points 1 and 4), against httpx MockTransport.

F&O decodes the request path once before routing and OData decodes the key segment again, so string key
values are sent double-encoded; control characters are refused before any request; a routing miss is never
read as "no row"; and write errors are classified by their infolog whether F&O answers 400 or 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from urllib.parse import unquote

import httpx
import pytest

from p2csync.connectors.auth import StaticTokenProvider
from p2csync.connectors.errors import (
    AlreadyExistsError,
    InvalidKeyError,
    NotFoundError,
    PermanentError,
    RouteNotFoundError,
    TransientError,
    error_from_response,
    parse_error_body,
)
from p2csync.connectors.fno import FnOClient, fno_literal, format_key, key_path
from p2csync.connectors.http import HttpOptions, RetryPolicy
from p2csync.connectors.odata import ODataEnum

TOKEN = "fno-static-token-789"
BASE = "https://contoso.operations.dynamics.com"
WRITE_EXCEPTION = "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"
ODATA_EXCEPTION = "Microsoft.OData.ODataException"
NO_ROUTE = {"Message": "No HTTP resource was found that matches the request URI "
                       f"'{BASE}/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US/001')'. "
                       "No route data was found for this request."}


def fno_error(status: int, infolog: str, type_: str = WRITE_EXCEPTION) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": "", "message": "An error has occurred.", "innererror": {
        "message": infolog, "type": type_, "stacktrace": "   at X()"}}})


def classify(response: httpx.Response, system: str = "fno", method: str = "POST") -> Exception:
    response.request = httpx.Request(method, f"{BASE}/data/CustomersV3")
    return error_from_response(system, response)


def two_decodes(raw_path: bytes) -> str:
    """What F&O makes of the path: decoded once by IIS/ASP.NET, the key decoded again by OData."""
    return unquote(unquote(raw_path.decode("ascii")))


class Sleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client(handler: Callable[[httpx.Request], httpx.Response], sleep: Sleep | None = None) -> FnOClient:
    options = HttpOptions(transport=httpx.MockTransport(handler), sleep=sleep or Sleep(),
                          retry=RetryPolicy(jitter="none"))
    return FnOClient(BASE, StaticTokenProvider(TOKEN), http=options)


# ------------------------------------------------------------------------------------------ point 1: keys

ACCOUNTS = ["US/001", "A\\B", "A+B", "50% off", "O'Neil & Co", "Ünïcode", "a#b?c", "X%2FY", "T:1*<2>|\"{}",
            " lead and trail ", "日本-001"]


@pytest.mark.parametrize("account", ACCOUNTS)
def test_key_values_are_double_encoded_so_that_two_decodes_give_the_value_back(account: str) -> None:
    path = key_path({"dataAreaId": "usmf", "CustomerAccount": account})
    raw = httpx.URL(f"{BASE}/data/CustomersV3{path}").raw_path
    once = unquote(raw.decode("ascii"))
    # After IIS/ASP.NET's decode the routed path holds no separator, plus, control character or raw
    # non-ASCII inside the key: only unreserved characters, quotes and %XX escapes.
    key_text = once[once.index("(") + 1: once.rindex(")")]
    assert not set(key_text) & set("/\\+?#& "), key_text
    assert two_decodes(raw) == "/data/CustomersV3(dataAreaId='usmf',CustomerAccount='" + \
        account.replace("'", "''") + "')"


def test_plain_keys_and_non_string_literals_are_sent_as_before() -> None:
    assert key_path({"dataAreaId": "usmf", "CustomerAccount": "US-001"}) == \
        "(dataAreaId='usmf',CustomerAccount='US-001')"
    assert key_path({"dataAreaId": "usmf", "SalesOrderNumber": "SO/7", "LineCreationSequenceNumber": 3}) == \
        "(dataAreaId='usmf',SalesOrderNumber='SO%252F7',LineCreationSequenceNumber=3)"
    assert key_path({"dataAreaId": "usmf", "AssociatedContactType": ODataEnum("ContactType", "Customer")}) == \
        "(dataAreaId='usmf',AssociatedContactType=Microsoft.Dynamics.DataEntities.ContactType'Customer')"


@pytest.mark.parametrize("bad", ["A\nB", "A\x00B", "\tTAB", "A\x1fB", "A\x7fB", "A\x85B", "CR\r"])
async def test_control_characters_are_refused_before_any_request(bad: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404)

    key = {"dataAreaId": "usmf", "CustomerAccount": bad}
    async with client(handler) as fno:
        for call in (lambda: fno.upsert("CustomersV3", key, {"OrganizationName": "X"}),
                     lambda: fno.get("CustomersV3", key), lambda: fno.delete("CustomersV3", key)):
            with pytest.raises(InvalidKeyError) as caught:
                await call()
            assert "'CustomerAccount'" in str(caught.value) and "control character" in str(caught.value)
            assert f"U+{ord(next(c for c in bad if c.isprintable() is False)):04X}" in str(caught.value)
            assert caught.value.status is None
    assert seen == []  # nothing was read, nothing was written


def test_the_control_character_refusal_says_why_the_row_could_not_be_used() -> None:
    with pytest.raises(InvalidKeyError) as caught:
        format_key({"dataAreaId": "usmf", "CustomerAccount": "A\nB"})
    reason = str(caught.value)
    assert "F&O's web server refuses control characters in URLs" in reason
    assert "could not be read, updated or deleted again" in reason and "nothing is written" in reason


async def test_a_composite_key_with_a_control_character_in_any_field_is_refused() -> None:
    async with client(lambda request: httpx.Response(500)) as fno:
        with pytest.raises(InvalidKeyError, match="'SalesOrderNumber'"):
            await fno.upsert("CDSSalesOrderLines", {"dataAreaId": "usmf", "SalesOrderNumber": "SO\n1",
                                                    "LineCreationSequenceNumber": 1}, {"ProductNumber": "P"})


async def test_a_routing_miss_on_the_read_is_an_error_not_a_missing_row_so_nothing_is_posted() -> None:
    """Today's main read the 404 "No HTTP resource was found" as "no row" and POSTed a duplicate."""
    methods: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        return httpx.Response(404, json=NO_ROUTE)

    async with client(handler) as fno:
        with pytest.raises(RouteNotFoundError) as caught:
            await fno.upsert("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "US-001"}, {"NameAlias": "x"})
    assert methods == ["GET"]
    assert "No route data was found" in str(caught.value)


def test_the_web_api_error_shape_is_read() -> None:
    code, message, infolog, inner = parse_error_body(json.dumps(NO_ROUTE).encode())
    assert (code, infolog, inner) == (None, None, None)
    assert message.startswith("No HTTP resource was found") and "No route data" in message
    assert isinstance(classify(httpx.Response(404, json=NO_ROUTE), method="GET"), RouteNotFoundError)
    missing_row = httpx.Response(404, json={"error": {"code": "", "message": "Resource not found for the segment "
                                                      "'CustomersV3'.", "innererror": {"message": "No resources "
                                                      "were found for the key.", "type": ODATA_EXCEPTION}}})
    assert not isinstance(classify(missing_row, method="GET"), RouteNotFoundError)


async def test_an_update_of_a_plain_key_costs_one_read_and_one_write() -> None:
    requests: list[httpx.Request] = []
    row = {"@odata.etag": 'W/"x"', "dataAreaId": "usmf", "CustomerAccount": "US-001", "NameAlias": "old"}

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=row) if request.method == "GET" else httpx.Response(204)

    async with client(handler) as fno:
        result = await fno.upsert("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "US-001"},
                                  {"NameAlias": "new"})
    assert result.changed and [r.method for r in requests] == ["GET", "PATCH"]
    assert {r.url.raw_path.split(b"?")[0] for r in requests} == {
        b"/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')"}


# ------------------------------------------------------------------------------- point 4: 400 as well as 500

ALREADY_EXISTS = ("Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Error: Cannot create a "
                  "record in Customers (CustTable). Customer account: US-001. The record already exists.")
UPDATE_CONFLICT = ("Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Error: Cannot edit a "
                   "record in Customers (CustTable). An update conflict occurred due to another user process "
                   "deleting the record or changing one or more fields in the record.")
VALIDATION = ("Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Warning: The value 'Local' "
              "in field 'Customer group' is not found in the related table 'Customer groups'.; Warning: "
              "validateField failed on field 'CustCustomerV3Entity.CustomerGroupId'.")


@pytest.mark.parametrize("status", [400, 500])
def test_fno_write_errors_are_classified_by_their_infolog_under_either_status(status: int) -> None:
    exists = classify(fno_error(status, ALREADY_EXISTS))
    assert isinstance(exists, AlreadyExistsError) and exists.status == status
    conflict = classify(fno_error(status, UPDATE_CONFLICT), method="PATCH")
    assert isinstance(conflict, TransientError) and conflict.retryable
    invalid = classify(fno_error(status, VALIDATION))
    assert type(invalid) is PermanentError and "Customer group" in str(invalid)
    gone = classify(fno_error(status, "No resources were found when selecting for update."), method="PATCH")
    assert isinstance(gone, NotFoundError)


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("infolog", [
    "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Warning: The value 'X' in field "
    "'Terms of payment' is not valid; please correct and try again.",
    "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Error: The customer is on hold for "
    "another user group.",
    "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Warning: Field 'Timeout' must be "
    "filled in.",
    "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Warning: The update conflict policy "
    "'Manual' is not valid.",
])
def test_a_validation_infolog_with_loose_transient_words_stays_permanent(status: int, infolog: str) -> None:
    error = classify(fno_error(status, infolog))
    assert type(error) is PermanentError and not error.retryable


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("infolog", [
    UPDATE_CONFLICT,
    "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Error: Cannot edit a record in "
    "Customers (CustTable). An update conflict occured due to another user process deleting the record or "
    "changing one or more field in the record.",
    "Write failed. Infolog: Error: Cannot create a record in Customers (CustTable). Deadlock, where one or more "
    "users have simultaneously locked the whole table or part of it.",
    "Write failed. Infolog: Error: The database reported (session 7 (Admin)): [Microsoft][ODBC Driver 17 for SQL "
    "Server][SQL Server]Transaction (Process ID 71) was deadlocked on lock resources with another process and "
    "has been chosen as the deadlock victim. Rerun the transaction.",
    "Write failed. Infolog: Error: The database reported (session 7 (Admin)): [SQL Server]Lock request time out "
    "period exceeded.",
    "Write failed. Infolog: Error: Cannot edit a record in Customers (CustTable). The record has been updated by "
    "another user.",
])
def test_the_known_transient_x_plus_plus_texts_are_transient(status: int, infolog: str) -> None:
    error = classify(fno_error(status, infolog), method="PATCH")
    assert isinstance(error, TransientError) and error.retryable


@pytest.mark.parametrize("body", [
    {"error": {"code": "", "message": "The property 'FavouriteColour' does not exist on type "
               "'Microsoft.Dynamics.DataEntities.CustomerV3'.", "innererror": {
               "message": "The property 'FavouriteColour' does not exist on type 'CustomerV3'. Make sure to only "
               "use property names that are defined by the type.", "type": ODATA_EXCEPTION}}},
    {"error": {"code": "", "message": "An error has occurred.", "innererror": {
               "message": "Cannot convert the literal 'Maybe' to the expected type 'NoYes'. Try again with a "
               "valid value.", "type": ODATA_EXCEPTION}}},
    {"error": {"code": "", "message": "An error has occurred.", "innererror": {
               "message": "More than one resource was found when selecting for update.",
               "type": "Microsoft.Dynamics.Platform.Integration.Services.OData.ODataArgumentException"}}},
    {"error": {"code": "", "message": "The request body is not valid JSON."}},
])
def test_a_plain_400_that_is_not_a_write_error_stays_permanent(body: dict) -> None:
    error = classify(httpx.Response(400, json=body))
    assert type(error) is PermanentError and not error.retryable


def test_a_500_without_a_recognisable_infolog_stays_transient_and_dataverse_is_unchanged() -> None:
    assert isinstance(classify(fno_error(500, "Object reference not set to an instance of an object.",
                                         "System.NullReferenceException")), TransientError)
    # Dataverse: a 400 mentioning "already exists" is still a plain permanent error (no body-based reading).
    dataverse = classify(fno_error(400, ALREADY_EXISTS), system="dataverse")
    assert type(dataverse) is PermanentError


class RaceFnO:
    """CustomersV3 where another writer creates the row between our read and our create, and an update can
    meet an update conflict (``conflicts``); write errors come with ``status``."""

    def __init__(self, status: int, *, conflicts: int = 0) -> None:
        self.status = status
        self.conflicts = conflicts
        self.row: dict | None = None
        self.log: list[tuple[str, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        response = self.answer(request)
        self.log.append((request.method, response.status_code))
        return response

    def answer(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=self.row) if self.row else httpx.Response(404)
        if request.method == "POST":
            if self.row is None:  # someone else won the race
                self.row = {"@odata.etag": 'W/"1"', "dataAreaId": "usmf", "CustomerAccount": "US/001",
                            "OrganizationName": "Theirs"}
            return fno_error(self.status, ALREADY_EXISTS)
        if self.conflicts:
            self.conflicts -= 1
            return fno_error(self.status, UPDATE_CONFLICT)
        assert self.row is not None
        self.row.update(json.loads(request.content))
        return httpx.Response(204)


@pytest.mark.parametrize("status", [400, 500])
async def test_create_race_ends_as_an_update_and_an_update_conflict_is_transient_under_either_status(
    status: int,
) -> None:
    fake, sleep = RaceFnO(status), Sleep()
    key = {"dataAreaId": "usmf", "CustomerAccount": "US/001"}
    async with client(fake, sleep) as fno:
        result = await fno.upsert("CustomersV3", key, {"OrganizationName": "Ours"})
        assert (result.created, result.changed) == (False, True)
        assert fake.log == [("GET", 404), ("POST", status), ("GET", 200), ("PATCH", 204)]

        fake.log.clear()
        fake.conflicts = 1
        with pytest.raises(TransientError) as caught:  # deferred by the runtime, not dead-lettered
            await fno.upsert("CustomersV3", key, {"OrganizationName": "Ours again"})
        assert caught.value.status == status and "update conflict" in str(caught.value)
        assert await fno.upsert("CustomersV3", key, {"OrganizationName": "Ours again"})  # the later retry
    assert fake.log == [("GET", 200), ("PATCH", status), ("GET", 200), ("PATCH", 204)]
    assert fake.row is not None and fake.row["OrganizationName"] == "Ours again"


# ---------------------------------------------------------------------- point 6: dates in keys and filters

INVOICE_KEY = {"dataAreaId": "usmf", "InvoiceNumber": "INV-1", "InvoiceDate": date(2026, 1, 31)}


@pytest.mark.parametrize("when", [date(2026, 1, 31), datetime(2026, 1, 31, tzinfo=timezone.utc),
                                  datetime(2026, 1, 31, 2, tzinfo=timezone(timedelta(hours=2)))])
def test_a_date_in_an_fno_key_is_midnight_utc_and_unquoted(when: date) -> None:
    key = {**INVOICE_KEY, "InvoiceDate": when}
    assert key_path(key) == "(dataAreaId='usmf',InvoiceNumber='INV-1',InvoiceDate=2026-01-31T00:00:00Z)"
    assert format_key(key) == "(dataAreaId='usmf',InvoiceNumber='INV-1',InvoiceDate=2026-01-31T00:00:00Z)"


def test_a_date_in_an_fno_filter_is_midnight_utc_and_dataverse_keeps_edm_date() -> None:
    from p2csync.connectors.odata import odata_literal

    assert fno_literal(date(2026, 1, 31)) == "2026-01-31T00:00:00Z"
    assert fno_literal("2026-01-31") == "'2026-01-31'"  # text stays text
    assert odata_literal(date(2026, 1, 31)) == "2026-01-31"  # Dataverse: Edm.Date


async def test_the_client_addresses_a_date_key_with_a_datetimeoffset_literal() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode("ascii").split("?")[0])
        return httpx.Response(404, json={"error": {"code": "", "message": "Resource not found for the segment "
                                                   "'SalesInvoiceHeaders'."}})

    async with client(handler) as fno:
        assert await fno.get("SalesInvoiceHeaders", INVOICE_KEY) is None
    assert paths == ["/data/SalesInvoiceHeaders(dataAreaId='usmf',InvoiceNumber='INV-1',"
                     "InvoiceDate=2026-01-31T00:00:00Z)"]
