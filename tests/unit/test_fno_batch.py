"""F&O ``$batch`` in the connector (issue 8): the OData 4.0 multipart codec and ``FnOClient.batch`` against
scripted answers (serialisation, both shapes of a failed change set, per-operation error classification,
retries of the whole batch)."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest

from p2csync.connectors.auth import StaticTokenProvider
from p2csync.connectors.errors import (
    AlreadyExistsError,
    NotFoundError,
    PermanentError,
    RouteNotFoundError,
    TransientError,
)
from p2csync.connectors.fno import (
    BatchResult,
    Create,
    Delete,
    FnOClient,
    Read,
    Update,
    chunk_operations,
    equals_filter,
)
from p2csync.connectors.http import HttpOptions, RetryPolicy
from p2csync.connectors.odata import (
    BatchFormatError,
    BatchRequestPart,
    decode_batch_response,
    encode_batch,
)

WRITE_EXCEPTION = "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"
HEADERS, LINES = "CDSSalesOrderHeaders", "CDSSalesOrderLines"
HEADER_KEY = {"dataAreaId": "usmf", "SalesOrderNumber": "SO/1"}
DUPLICATE = ("Write failed for table row of type 'SalesOrderLineCDSEntity'. Infolog: Error: Cannot create a record "
             "in SalesOrderLineCDSEntity (SO/1, 3, usmf). The record already exists.")


def line_key(number: int) -> dict[str, object]:
    return {**HEADER_KEY, "LineCreationSequenceNumber": number}


def error_body(infolog: str, type_: str = WRITE_EXCEPTION) -> bytes:
    return json.dumps({"error": {"code": "", "message": "An error has occurred.", "innererror": {
        "message": infolog, "type": type_, "stacktrace": ""}}}).encode()


def http_part(status: int, body: bytes = b"", content_id: str | None = None, headers: dict[str, str] | None = None,
              *, crlf: str = "\r\n") -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id is not None:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"HTTP/1.1 {status} Whatever"]
    lines += [f"{k}: {v}" for k, v in {"Content-Type": "application/json", **(headers or {})}.items()]
    return crlf.join(lines) + crlf + crlf + body.decode()


def batch_answer(*items: str | list[str], crlf: str = "\r\n") -> httpx.Response:
    """A batch response: a str is a part as it is, a list the parts of a change set response."""
    out = []
    for item in items:
        out.append("--batchresponse_1" + crlf)
        if isinstance(item, str):
            out.append(item + crlf)
        else:
            out.append("Content-Type: multipart/mixed; boundary=changesetresponse_2" + crlf + crlf)
            out.extend("--changesetresponse_2" + crlf + part + crlf for part in item)
            out.append("--changesetresponse_2--" + crlf)
    out.append("--batchresponse_1--" + crlf)
    return httpx.Response(200, content="".join(out).encode(),
                          headers={"Content-Type": "multipart/mixed; boundary=batchresponse_1"})


class Script:
    """Answers each request with the next scripted response and keeps the requests."""

    def __init__(self, *answers: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        return answer(request) if callable(answer) else answer


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client(script: Script, sleeps: Sleeps | None = None, **kwargs: object) -> FnOClient:
    options = HttpOptions(transport=httpx.MockTransport(script), retry=RetryPolicy(jitter="none"),
                          sleep=sleeps or Sleeps())
    return FnOClient("https://contoso.operations.dynamics.com", StaticTokenProvider("fno-batch-token-789"), http=options,
                     **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- codec


def test_encode_batch_writes_crlf_multipart_with_a_changeset_and_content_ids() -> None:
    content_type, body = encode_batch(
        [BatchRequestPart("GET", "A(1)?cross-company=true"),
         [BatchRequestPart("POST", "A?cross-company=true", b'{"x":1}', content_id="1"),
          BatchRequestPart("DELETE", "A(2)?cross-company=true", content_id="2")]],
        boundary="batch_fixed")
    assert content_type == "multipart/mixed; boundary=batch_fixed"
    text = body.decode()
    assert text.startswith("--batch_fixed\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n")
    assert "\r\nGET A(1)?cross-company=true HTTP/1.1\r\n" in text
    assert "Content-Type: multipart/mixed; boundary=changeset_" in text
    assert "Content-ID: 1\r\n\r\nPOST A?cross-company=true HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"x\":1}" in text
    assert text.endswith("--batch_fixed--\r\n")
    assert "\n" not in text.replace("\r\n", "")  # no bare line feed anywhere


def test_encode_batch_refuses_a_get_in_a_changeset_and_whitespace_in_urls() -> None:
    with pytest.raises(ValueError, match="GET cannot be inside a change set"):
        encode_batch([[BatchRequestPart("GET", "A(1)")]])
    with pytest.raises(ValueError, match="whitespace"):
        encode_batch([BatchRequestPart("GET", "A('a b')")])
    with pytest.raises(ValueError, match="at least one"):
        encode_batch([[]])


@pytest.mark.parametrize("crlf", ["\r\n", "\n"])
def test_decode_reads_changeset_and_single_parts_with_either_line_ending(crlf: str) -> None:
    answer = batch_answer(http_part(200, b'{"a":1}', crlf=crlf),
                          [http_part(201, b'{"b":2}', "1", {"ETag": 'W/"x"'}, crlf=crlf),
                           http_part(204, content_id="2", crlf=crlf)], crlf=crlf)
    items = decode_batch_response(answer.headers["Content-Type"], answer.content)
    assert [[p.status for p in item] for item in items] == [[200], [201, 204]]
    assert json.loads(items[0][0].body) == {"a": 1}
    assert items[1][0].content_id == "1" and items[1][0].headers["etag"] == 'W/"x"'


@pytest.mark.parametrize("content_type, body, reason", [
    ("application/json", b"{}", "not multipart/mixed"),
    ("multipart/mixed; boundary=b", b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n", "closing"),
    ("multipart/mixed; boundary=b", b"--b\r\nContent-Type: application/http\r\n\r\nnot a status\r\n--b--", "status line"),
])
def test_decode_names_what_is_wrong(content_type: str, body: bytes, reason: str) -> None:
    with pytest.raises(BatchFormatError, match=reason):
        decode_batch_response(content_type, body)


def test_chunks_and_equals_filter() -> None:
    ops = [Delete(LINES, line_key(n)) for n in range(1, 6)]
    assert [len(chunk) for chunk in chunk_operations(ops, 2)] == [2, 2, 1]
    assert equals_filter({"dataAreaId": "usmf", "SalesOrderNumber": "O'1"}) == (
        "dataAreaId eq 'usmf' and SalesOrderNumber eq 'O''1'")
    with pytest.raises(ValueError):
        equals_filter({"bad name": 1})


# ---------------------------------------------------------------------------------------------- requests


async def test_an_atomic_batch_is_one_request_with_one_changeset_in_order() -> None:
    script = Script(batch_answer([http_part(201, b'{"SalesOrderNumber":"SO/1"}', "1", {"ETag": 'W/"h"'}),
                                  http_part(204, content_id="2", headers={"ETag": 'W/"l"'}),
                                  http_part(204, content_id="3")]))
    async with client(script) as fno:
        results = await fno.batch([
            Create(HEADERS, HEADER_KEY, {"SalesOrderName": "Bikes", "OrderTotalAmount": Decimal("10.50")}),
            Update(LINES, line_key(1), {"OrderedSalesQuantity": 3, "SalesOrderNumber": "SO/1"}, if_match='W/"e"'),
            Delete(LINES, line_key(2)),
        ])
    assert len(script.requests) == 1
    request = script.requests[0]
    assert request.method == "POST" and request.url.path == "/data/$batch"
    assert request.headers["Accept"] == "multipart/mixed"
    text = request.content.decode()
    assert text.count("Content-Type: multipart/mixed; boundary=changeset_") == 1
    # Same URLs as single requests: cross-company on each, keys double-encoded (US/001 -> US%252F001).
    assert "POST CDSSalesOrderHeaders?cross-company=true HTTP/1.1" in text
    assert ("PATCH CDSSalesOrderLines(dataAreaId='usmf',SalesOrderNumber='SO%252F1',LineCreationSequenceNumber=1)"
            "?cross-company=true HTTP/1.1") in text
    assert "If-Match: W/\"e\"" in text
    assert text.index("POST CDSSalesOrderHeaders") < text.index("PATCH CDSSalesOrderLines") < text.index("DELETE")
    assert '{"SalesOrderName":"Bikes","OrderTotalAmount":10.5,"dataAreaId":"usmf","SalesOrderNumber":"SO/1"}' in text
    assert '{"OrderedSalesQuantity":3}' in text  # the key field is not PATCHed
    assert [r.status for r in results] == [201, 204, 204] and all(r.ok for r in results)
    assert results[0].record == {"SalesOrderNumber": "SO/1"} and results[0].etag == 'W/"h"'
    assert results[1].etag == 'W/"l"'


async def test_answers_are_matched_by_content_id_not_position() -> None:
    script = Script(batch_answer([http_part(204, content_id="2"), http_part(201, b'{"n":1}', "1")]))
    async with client(script) as fno:
        results = await fno.batch([Create(LINES, line_key(1)), Delete(LINES, line_key(2))])
    assert [r.status for r in results] == [201, 204]


@pytest.mark.parametrize("shape", ["changeset", "single"])
@pytest.mark.parametrize("status", [400, 500])
async def test_a_failed_changeset_fails_every_operation_with_the_culprits_classified_error(
        shape: str, status: int) -> None:
    failing = http_part(status, error_body(DUPLICATE), "3")
    script = Script(batch_answer([failing] if shape == "changeset" else failing))
    async with client(script) as fno:
        results = await fno.batch([Create(HEADERS, HEADER_KEY)] + [Create(LINES, line_key(n)) for n in (1, 2)])
    assert len(script.requests) == 1  # a write error inside the answer is not retried
    assert [r.failed_here for r in results] == [False, False, True]
    assert [r.status for r in results] == [None, None, status]
    assert all(isinstance(r.error, AlreadyExistsError) for r in results)
    assert results[2].error is results[0].error
    assert results[2].error.status == status and "already exists" in results[2].error.detail
    assert results[2].error.method == "POST" and "CDSSalesOrderLines" in (results[2].error.url or "")


@pytest.mark.parametrize("infolog, kind", [
    ("Write failed for table row of type 'X'. Infolog: Warning: The value 'Z' in field 'Unit' is not found.",
     PermanentError),
    ("Write failed for table row of type 'X'. Infolog: Error: Cannot edit a record in X. An update conflict occurred "
     "due to another user process deleting the record or changing one or more fields in the record.", TransientError),
    ("No resources were found when selecting for update.", NotFoundError),
])
async def test_inner_errors_are_classified_as_single_requests_are(infolog: str, kind: type) -> None:
    script = Script(batch_answer([http_part(500, error_body(infolog), "1")]))
    async with client(script) as fno:
        [result] = await fno.batch([Update(LINES, line_key(1), {"SalesUnitSymbol": "Z"})])
    assert type(result.error) is kind and result.failed_here


async def test_a_non_atomic_batch_reads_and_writes_each_on_its_own() -> None:
    no_route = json.dumps({"Message": "No HTTP resource was found that matches the request URI 'x'."}).encode()
    script = Script(batch_answer(
        http_part(200, b'{"ProductNumber":"P1","@odata.etag":"W/\\"1\\""}', "1"),
        http_part(404, error_body("Resource not found for the segment 'CDSSalesOrderLines'.",
                                  "Microsoft.OData.ODataException"), "2"),
        http_part(404, no_route, "3"),
        http_part(500, error_body(DUPLICATE), "4"),
    ))
    async with client(script) as fno:
        results = await fno.batch([Read(LINES, line_key(1), select=["ProductNumber"]), Read(LINES, line_key(2)),
                                   Read(LINES, line_key(3)), Create(LINES, line_key(4)),
                                   Delete(LINES, line_key(5))], atomic=False)
    text = script.requests[0].content.decode()
    assert "boundary=changeset_" not in text
    assert "$select=ProductNumber" in text
    assert script.requests[0].headers["Prefer"] == "odata.continue-on-error"
    assert results[0].record == {"ProductNumber": "P1", "@odata.etag": 'W/"1"'} and results[0].etag == 'W/"1"'
    assert results[1].ok and results[1].record is None and results[1].status == 404  # no such row
    assert isinstance(results[2].error, RouteNotFoundError)  # never "no row"
    assert isinstance(results[3].error, AlreadyExistsError) and results[3].failed_here
    # The service stopped after the failure: the last operation was not run, and says so.
    assert isinstance(results[4].error, TransientError) and results[4].status is None
    assert "not run" in results[4].error.detail


async def test_a_throttled_batch_is_sent_again_as_a_whole() -> None:
    throttled = httpx.Response(429, headers={"Retry-After": "2"}, json={"error": {"code": "", "message": "busy"}})
    unavailable = httpx.Response(503, json={"error": {"code": "", "message": "unavailable"}})
    ok = batch_answer([http_part(201, b"{}", "1"), http_part(201, b"{}", "2")])
    script = Script(throttled, unavailable, ok)
    sleeps = Sleeps()
    async with client(script, sleeps) as fno:
        results = await fno.batch([Create(HEADERS, HEADER_KEY), Create(LINES, line_key(1))])
    assert len(script.requests) == 3 and sleeps.delays[0] == 2.0
    assert script.requests[0].content == script.requests[2].content  # the same batch, whole
    assert all(r.ok for r in results)


async def test_refusals_before_any_request() -> None:
    script = Script()
    async with client(script, batch_size=2) as fno:
        with pytest.raises(ValueError, match="change set"):
            await fno.batch([Read(LINES, line_key(1))])
        with pytest.raises(ValueError, match="batch size of 2"):
            await fno.batch([Delete(LINES, line_key(n)) for n in range(3)])
        with pytest.raises(PermanentError, match="addressed by all of"):
            await fno.batch([Delete(LINES, HEADER_KEY)])
        with pytest.raises(PermanentError, match="contradicts the key"):
            await fno.batch([Update(LINES, line_key(1), {"SalesOrderNumber": "SO/2"})])
        assert await fno.batch([]) == []
    assert script.requests == []


async def test_batch_chunks_sends_one_request_per_chunk_and_stops_after_a_failed_one() -> None:
    script = Script(batch_answer([http_part(204, content_id="1"), http_part(204, content_id="2")]),
                    batch_answer([http_part(500, error_body(DUPLICATE), "1")]))
    async with client(script, batch_size=2) as fno:
        results = await fno.batch_chunks([Delete(LINES, line_key(n)) for n in range(1, 7)])
    assert len(script.requests) == 2
    assert [r.ok for r in results] == [True, True, False, False, False, False]
    assert isinstance(results[4].error, TransientError) and "earlier chunk" in results[4].error.detail
    assert all(isinstance(r, BatchResult) for r in results)


async def test_an_unreadable_answer_is_a_permanent_error() -> None:
    script = Script(httpx.Response(200, content=b"{}", headers={"Content-Type": "application/json"}))
    async with client(script) as fno:
        with pytest.raises(PermanentError, match="unreadable"):
            await fno.batch([Delete(LINES, line_key(1))])
