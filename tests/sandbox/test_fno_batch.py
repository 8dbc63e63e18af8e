"""The sandbox's F&O `POST /data/$batch` over loopback HTTP (issue 8): change sets all-or-nothing without
change events when rolled back, answers in order, requests outside change sets one by one, the same rules as
single requests inside, one request in the log and to service protection, 400 for malformed batches."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox import FnoChange, SandboxServer
from sandbox.faults import FaultConfig, FaultRule

H, L = "CDSSalesOrderHeaders", "CDSSalesOrderLines"
CRLF = "\r\n"


def request_part(method: str, url: str, body: dict[str, Any] | None = None, content_id: str | None = None,
                 headers: dict[str, str] | None = None) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id is not None:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"{method} {url} HTTP/1.1"]
    all_headers = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return CRLF.join(lines) + CRLF + CRLF + (json.dumps(body) if body is not None else "")


def batch(*items: str | list[str]) -> tuple[str, bytes]:
    boundary = f"batch_{uuid.uuid4()}"
    out = []
    for item in items:
        out.append(f"--{boundary}{CRLF}")
        if isinstance(item, str):
            out.append(item + CRLF)
            continue
        changeset = f"changeset_{uuid.uuid4()}"
        out.append(f"Content-Type: multipart/mixed; boundary={changeset}{CRLF}{CRLF}")
        out += [f"--{changeset}{CRLF}{part}{CRLF}" for part in item]
        out.append(f"--{changeset}--{CRLF}")
    out.append(f"--{boundary}--{CRLF}")
    return f"multipart/mixed; boundary={boundary}", "".join(out).encode()


def answers(response: httpx.Response) -> list[list[tuple[int, str | None, dict[str, Any] | None]]]:
    """(status, Content-ID, JSON body) of each answer, grouped per batch item (sandbox-independent parser)."""
    from p2csync.connectors.odata import decode_batch_response

    assert response.status_code == 200, response.text
    items = decode_batch_response(response.headers["content-type"], response.content)
    return [[(p.status, p.content_id, json.loads(p.body) if p.body.strip() else None) for p in item]
            for item in items]


def header(number: str = "SO-1", **fields: Any) -> dict[str, Any]:
    return {"dataAreaId": "usmf", "SalesOrderNumber": number, **fields}


def line(n: int, number: str = "SO-1", **fields: Any) -> dict[str, Any]:
    return {"dataAreaId": "usmf", "SalesOrderNumber": number, "LineCreationSequenceNumber": n, **fields}


def line_url(n: int, number: str = "SO-1") -> str:
    return (f"{L}(dataAreaId='usmf',SalesOrderNumber='{number}',LineCreationSequenceNumber={n})"
            "?cross-company=true")


@pytest.fixture(autouse=True)
def without_order_rules(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about $batch itself; the order entities' own rules (customer, released product, order
    exists) are tested in test_order_rules.py."""
    monkeypatch.setitem(sandbox.fno.validators, H, [])
    monkeypatch.setitem(sandbox.fno.validators, L, [])


@pytest.fixture
def events(sandbox: SandboxServer) -> Iterator[list[FnoChange]]:
    seen: list[FnoChange] = []
    sandbox.fno.on_change(seen.append)
    yield seen
    sandbox.fno._sinks.remove(seen.append)


def post(fo: httpx.Client, content_type: str, body: bytes, **headers: str) -> httpx.Response:
    return fo.post("$batch", content=body, headers={"Content-Type": content_type, **headers})


def test_a_changeset_writes_header_and_lines_in_order_and_answers_each(
        sandbox: SandboxServer, fo: httpx.Client, events: list[FnoChange]) -> None:
    parts = [request_part("POST", f"{H}?cross-company=true", header(SalesOrderName="Bikes"), "1")]
    parts += [request_part("POST", f"{L}?cross-company=true", line(n, ProductNumber=f"P{n}"), str(n + 1))
              for n in range(1, 4)]
    response = post(fo, *batch(parts))
    [changeset] = answers(response)
    assert [(status, cid) for status, cid, _ in changeset] == [(201, "1"), (201, "2"), (201, "3"), (201, "4")]
    assert changeset[1][2]["ProductNumber"] == "P1" and changeset[1][2]["@odata.etag"]
    assert [(e.entity_set, e.operation) for e in events] == [(H, "Create")] + [(L, "Create")] * 3
    assert len(sandbox.fno.rows(L)) == 3
    # One HTTP request: one entry in the log (the issue counts F&O calls from it).
    assert [(r.method, r.path, r.status) for r in sandbox.fno.request_log.entries()] == [("POST", "/data/$batch", 200)]


@pytest.mark.parametrize("shape", ["changeset", "single"])
@pytest.mark.parametrize("write_status", [400, 500])
def test_a_changeset_with_a_failing_third_operation_leaves_nothing_written_and_raises_no_event(
        sandbox: SandboxServer, fo: httpx.Client, events: list[FnoChange], shape: str, write_status: int) -> None:
    sandbox.fno.configure(batch_failed_changeset=shape, write_error_status=write_status)
    sandbox.fno.create(L, line(9, ProductNumber="before"))
    sandbox.fno.create(L, line(3, ProductNumber="exists"))
    events.clear()
    parts = [request_part("POST", f"{H}?cross-company=true", header(), "1"),
             request_part("PATCH", line_url(9), {"ProductNumber": "after"}, "2"),
             request_part("POST", f"{L}?cross-company=true", line(3), "3"),  # already exists
             request_part("DELETE", line_url(9), None, "4")]
    [changeset] = answers(post(fo, *batch(parts)))
    # One answer for the whole set: the failing request's, with F&O's write-error status and body.
    assert len(changeset) == 1
    status, content_id, body = changeset[0]
    assert (status, content_id) == (write_status, "3")
    assert "The record already exists" in body["error"]["innererror"]["message"]
    assert sandbox.fno.rows(H) == []
    assert sandbox.fno.get(L, line(9))["ProductNumber"] == "before"
    assert events == []
    # The raw shape: a nested changeset response, or one application/http part (OData 4.0 §11.7.4).
    response = post(fo, *batch(parts))
    nested = "boundary=changesetresponse_" in response.text
    assert nested is (shape == "changeset")


def test_requests_outside_changesets_run_one_by_one_and_a_get_sees_earlier_writes(
        sandbox: SandboxServer, fo: httpx.Client) -> None:
    items = [request_part("POST", f"{L}?cross-company=true", line(1), "a"),
             request_part("POST", f"{L}?cross-company=true", line(1), "b"),  # fails alone
             request_part("POST", f"{L}?cross-company=true", line(2), "c"),
             request_part("GET", f"{L}?cross-company=true&$select=LineCreationSequenceNumber&$orderby="
                                 "LineCreationSequenceNumber", None, "d")]
    result = answers(post(fo, *batch(*items)))
    assert [item[0][0] for item in result] == [201, 500, 201, 200]
    assert [row["LineCreationSequenceNumber"] for row in result[3][0][2]["value"]] == [1, 2]


@pytest.mark.parametrize("prefer", [None, "odata.continue-on-error"])
def test_stop_after_error_setting(sandbox: SandboxServer, fo: httpx.Client, prefer: str | None) -> None:
    sandbox.fno.configure(batch_after_error="stop")
    items = [request_part("GET", line_url(7)), request_part("POST", f"{L}?cross-company=true", line(1))]
    headers = {"Prefer": prefer} if prefer else {}
    result = answers(post(fo, *batch(*items), **headers))
    assert [item[0][0] for item in result] == ([404, 201] if prefer else [404])
    assert len(sandbox.fno.rows(L)) == (1 if prefer else 0)


def test_inner_requests_follow_single_request_rules(sandbox: SandboxServer, fo: httpx.Client) -> None:
    sandbox.fno.create(L, line(1, "SO/1"), user="p2csync-integration")
    sandbox.fno.create(H, {"dataAreaId": "usrt", "SalesOrderNumber": "RT-1"}, user="p2csync-integration")
    items = [
        request_part("GET", f"{L}(dataAreaId='usmf',SalesOrderNumber='SO%252F1',LineCreationSequenceNumber=1)"
                            "?cross-company=true"),  # double-encoded key: found
        request_part("GET", f"{L}(dataAreaId='usmf',SalesOrderNumber='SO%2F1',LineCreationSequenceNumber=1)"
                            "?cross-company=true"),  # once-encoded '/': a routing miss
        request_part("GET", f"{H}(dataAreaId='usrt',SalesOrderNumber='RT-1')"),  # no cross-company: not visible
        request_part("GET", f"{H}(dataAreaId='usrt',SalesOrderNumber='RT-1')?cross-company=true"),
        [request_part("POST", f"{H}?cross-company=true", header(Nope=1))],  # unknown property
    ]
    result = answers(post(fo, *batch(*items)))
    assert [item[0][0] for item in result] == [200, 404, 404, 200, 400]
    assert "No HTTP resource was found" in result[1][0][2]["Message"]
    assert "Nope" in result[4][0][2]["error"]["innererror"]["message"]


def test_content_id_reference_names_the_entity_created_earlier_in_the_set(
        sandbox: SandboxServer, fo: httpx.Client) -> None:
    parts = [request_part("POST", f"{H}?cross-company=true", header(), "1"),
             request_part("PATCH", "$1?cross-company=true", {"SalesOrderName": "renamed"}, "2")]
    [changeset] = answers(post(fo, *batch(parts)))
    assert [status for status, _, _ in changeset] == [201, 204]
    assert sandbox.fno.get(H, header())["SalesOrderName"] == "renamed"


def test_a_batch_counts_as_one_request_for_service_protection_and_faults(
        sandbox: SandboxServer, fo: httpx.Client) -> None:
    sandbox.fno.protection.configure(sandbox.fno.protection.limits.model_copy(update={"max_requests": 2}))
    parts = [request_part("POST", f"{L}?cross-company=true", line(n)) for n in range(1, 30)]
    assert post(fo, *batch(parts)).status_code == 200
    assert len(sandbox.fno.rows(L)) == 29
    assert fo.get(f"{L}?cross-company=true&$top=1").status_code == 200
    assert post(fo, *batch([request_part("DELETE", line_url(1))])).status_code == 429  # the 3rd request
    sandbox.fno.protection.reset()
    sandbox.fno.faults.configure(FaultConfig(rules=[FaultRule(kind="error", status=503, count=1,
                                                              path_contains="$batch")]))
    assert post(fo, *batch([request_part("DELETE", line_url(1))])).status_code == 503
    assert len(sandbox.fno.rows(L)) == 29


@pytest.mark.parametrize("content_type, body, message", [
    (None, b"x", 'must have a "Content-Type" header'),
    ("application/json", b'{"requests": []}', "'multipart/mixed' as the media type"),  # OData 4.01 JSON batch
    ("multipart/mixed", b"x", "boundary specification"),
])
def test_a_batch_that_is_not_multipart_is_refused_like_web_api(
        sandbox: SandboxServer, fo: httpx.Client, content_type: str | None, body: bytes, message: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    request = fo.build_request("POST", "$batch", content=body, headers=headers)
    request.headers.pop("Content-Type", None)
    if content_type:
        request.headers["Content-Type"] = content_type
    response = fo.send(request)
    assert response.status_code == 400 and message in response.json()["Message"]


def _malformed() -> list[tuple[str, tuple[str, bytes], str]]:
    get = request_part("GET", line_url(1))
    ct, good = batch(get)
    return [
        ("unterminated", (ct, good[:good.rindex(b"--batch_")]), "unexpected end of input"),
        ("get in changeset", batch([get]), "invalid HTTP method 'GET'"),
        ("not application/http", batch(get.replace("application/http", "text/plain")), "content type"),
        ("bad request line", batch(get.replace(" HTTP/1.1", "")), "request line"),
        ("duplicate content id", batch([request_part("DELETE", line_url(1), None, "1"),
                                        request_part("DELETE", line_url(2), None, "1")]), "content ID '1'"),
    ]


@pytest.mark.parametrize("name, payload, message", _malformed(), ids=[m[0] for m in _malformed()])
def test_a_malformed_batch_is_400_and_runs_nothing(
        sandbox: SandboxServer, fo: httpx.Client, name: str, payload: tuple[str, bytes], message: str) -> None:
    content_type, body = payload
    response = post(fo, content_type, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message.lower() in error["innererror"]["message"].lower()
    assert error["innererror"]["type"] == "Microsoft.OData.ODataException"


@pytest.mark.parametrize("limit, changeset_limit, message", [
    (3, 5000, "maximum number of '3' query operations and change sets"),
    (5000, 3, "change sets with a maximum number of '3' operations"),
])
def test_over_the_quotas_the_whole_batch_is_refused(
        sandbox: SandboxServer, fo: httpx.Client, limit: int, changeset_limit: int, message: str) -> None:
    sandbox.fno.configure(batch_max_operations=limit, batch_max_changeset=changeset_limit)
    parts = [request_part("POST", f"{L}?cross-company=true", line(n)) for n in range(1, 5)]
    response = post(fo, *batch(parts))
    assert response.status_code == 400 and message in response.json()["error"]["innererror"]["message"]
    assert sandbox.fno.rows(L) == []
    sandbox.fno.configure(batch_max_operations=4, batch_max_changeset=4)
    assert post(fo, *batch(parts)).status_code == 200 and len(sandbox.fno.rows(L)) == 4
