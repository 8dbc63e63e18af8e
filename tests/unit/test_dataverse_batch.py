"""DataverseClient.batch offline (issue 9): what goes on the wire (change set, Content-ID, upsert headers, ``?tag=``,
``@odata.bind`` by alternate key) and how Dataverse's answers are read (a failed batch answers with the failing
request's status and one part; both shapes of a failed change set; continue-on-error), over a mock transport."""

from __future__ import annotations

import httpx
import pytest

from p2csync.connectors import AlreadyExistsError, PermanentError, StaticTokenProvider, TransientError
from p2csync.connectors.dataverse import Create, DataverseClient, Delete, Upsert, bind
from p2csync.connectors.http import HttpOptions, RetryPolicy
from tests.unit.test_fno_batch import Script, Sleeps, batch_answer, http_part


def client(script: Script, sleeps: Sleeps | None = None) -> DataverseClient:
    options = HttpOptions(transport=httpx.MockTransport(script), retry=RetryPolicy(jitter="none"),
                          sleep=sleeps or Sleeps())
    return DataverseClient("https://contoso.crm.dynamics.com", StaticTokenProvider("dv-batch-token"), http=options,
                           headers={"MSCRM.SuppressDuplicateDetection": "false"})


def failed(status: int, *parts: str, shape: str = "single") -> httpx.Response:
    answer = batch_answer(*parts) if shape == "single" else batch_answer(list(parts))
    return httpx.Response(status, content=answer.content, headers=dict(answer.headers))


OPS = [Upsert("salesorders", {"ordernumber": "SO-1"}, {"name": "SO-1", "ordernumber": "SO-1"}),
       Upsert("salesorderdetails", {"msdynce_ordernumber": "SO-1", "sequencenumber": 1},
              {"quantity": 1, "salesorderid@odata.bind": bind("salesorders", {"ordernumber": "SO-1"})},
              create_only=True),
       Delete("salesorderdetails", {"msdynce_ordernumber": "SO-1", "sequencenumber": 2}, if_match='W/"7"')]


async def test_a_changeset_on_the_wire() -> None:
    script = Script(batch_answer([http_part(201, b'{"salesorderid": "a"}', "1"), http_part(201, b"{}", "2"),
                                  http_part(204, b"", "3")]))
    async with client(script) as dv:
        results = await dv.batch(OPS)
    assert [(r.status, r.created) for r in results] == [(201, True), (201, True), (204, None)]
    request = script.requests[0]
    assert request.url.path == "/api/data/v9.2/$batch" and "Prefer" not in request.headers
    text = request.content.decode()
    assert text.count("Content-Type: multipart/mixed; boundary=changeset_") == 1
    assert "PATCH salesorders(ordernumber='SO-1')?tag=p2c-sync HTTP/1.1" in text
    assert "PATCH salesorderdetails(msdynce_ordernumber='SO-1',sequencenumber=1)?tag=p2c-sync HTTP/1.1" in text
    assert "DELETE salesorderdetails(msdynce_ordernumber='SO-1',sequencenumber=2)?tag=p2c-sync" in text
    assert '"ordernumber"' not in text.split("sequencenumber=1)")[0].split("HTTP/1.1", 1)[1]  # key not in body
    assert '"salesorderid@odata.bind":"/salesorders(ordernumber=\'SO-1\')"' in text.replace(" ", "")
    assert "If-None-Match: *" in text and 'If-Match: W/"7"' in text and "Content-ID: 3" in text
    assert text.count("MSCRM.SuppressDuplicateDetection: false") == 3


@pytest.mark.parametrize("shape", ["single", "changeset"])
async def test_a_failed_changeset_is_read_from_its_one_error_part(shape: str) -> None:
    error = b'{"error":{"code":"0x80060892","message":"Entity Key salesorderdetail violated."}}'
    script = Script(failed(412, http_part(412, error, "2"), shape=shape))
    async with client(script) as dv:
        results = await dv.batch(OPS)
    assert [r.failed_here for r in results] == [False, True, False]
    assert [r.status for r in results] == [None, 412, None]
    assert all(isinstance(r.error, AlreadyExistsError) for r in results)
    assert len(script.requests) == 1  # a readable 4xx answer is not retried


async def test_non_atomic_batch_reads_each_answer_and_asks_to_continue() -> None:
    bad = b'{"error":{"code":"0x80048d19","message":"Invalid property"}}'
    script = Script(batch_answer(http_part(400, bad), http_part(204, b"", None, {"OData-EntityId": "x(1)"})))
    async with client(script) as dv:
        results = await dv.batch([Create("accounts", {"bad": 1}), Create("accounts", {"name": "ok"})], atomic=False)
    assert isinstance(results[0].error, PermanentError) and results[1].ok and results[1].entity_id == "x(1)"
    assert script.requests[0].headers["Prefer"] == "odata.continue-on-error"


async def test_a_throttled_batch_is_resent_whole_but_a_create_is_not_resent_after_a_502() -> None:
    sleeps = Sleeps()
    throttled = httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"code": "0x80072322", "message": "x"}})
    script = Script(throttled, batch_answer([http_part(200, b"{}", "1")]))
    async with client(script, sleeps) as dv:
        assert (await dv.batch(OPS[:1]))[0].created is False
    assert sleeps.delays == [3] and len(script.requests) == 2
    script = Script(httpx.Response(502), batch_answer([http_part(201, b"{}", "1")]))
    async with client(script) as dv:
        with pytest.raises(TransientError):
            await dv.batch([Create("accounts", {"name": "once"})])
    assert len(script.requests) == 1


async def test_over_1000_operations_are_refused_before_sending() -> None:
    script = Script()
    async with client(script) as dv:
        with pytest.raises(ValueError, match="1001 operations exceed Dataverse's limit of 1000"):
            await dv.batch([Delete("accounts", {"accountnumber": f"A{n}"}) for n in range(1001)])
    assert script.requests == []
