"""DataverseClient.batch against the Dataverse sandbox over loopback HTTP (issue 9).

A document's header and lines in one change set, upserted by alternate key (the lines bind their header by
its order number); a failing line rolls the header back and raises no webhook; a second write of the same
document updates (200) instead of creating; 1001 operations are refused before anything is sent; a
throttled batch is sent again as a whole; both shapes of a failed change set read the same.
"""

from __future__ import annotations

from typing import Any

import pytest

from p2csync.connectors import DataverseClient, PermanentError
from p2csync.connectors.dataverse import MAX_BATCH_REQUESTS, Create, Delete, Upsert, bind
from sandbox import SandboxServer
from sandbox.dataverse_events import WebhookStep
from sandbox.dataverse_tables import processing_status
from sandbox.faults import FaultConfig, FaultRule
from tests.integration import test_connectors_sandbox as base
from tests.integration.test_connectors_sandbox import HookReceiver, Sleeps

_server = base._server
sandbox = base.sandbox
receiver = base.receiver
sleeps = base.sleeps
dv = base.dv


def document(number: str, lines: int, *, bad_line: int | None = None) -> list[Upsert]:
    header = Upsert("salesorders", {"ordernumber": number},
                    {"name": number, "msdynce_ismaintainedexternally": True, "msdynce_processingstatus": processing_status("Confirmed")})
    ops = [header]
    for n in range(1, lines + 1):
        body: dict[str, Any] = {"quantity": "oops" if n == bad_line else n, "isproductoverridden": True,
                                "productdescription": f"Line {n}", "priceperunit": 10, "ispriceoverridden": True,
                                "salesorderid@odata.bind": bind("salesorders", {"ordernumber": number})}
        ops.append(Upsert("salesorderdetails", {"msdynce_ordernumber": number, "sequencenumber": n}, body))
    return ops


async def test_header_and_lines_in_one_change_set_then_updated_in_place(
        sandbox: SandboxServer, dv: DataverseClient) -> None:
    first = await dv.batch(document("SO-100", 3))
    assert [r.status for r in first] == [201] * 4 and all(r.ok and r.created for r in first)
    order_id = first[0].record["salesorderid"]
    lines = sandbox.dataverse.rows("salesorderdetail")
    assert sorted(line["sequencenumber"] for line in lines) == [1, 2, 3]
    assert {line["_salesorderid_value"] for line in lines} == {order_id}
    again = await dv.batch(document("SO-100", 3))
    assert [r.status for r in again] == [200] * 4 and not any(r.created for r in again)
    assert len(sandbox.dataverse.rows("salesorderdetail")) == 3
    batches = sandbox.dataverse.request_log.entries(method="POST")
    assert len(batches) == 2 and all(entry.path.endswith("$batch") for entry in batches)


@pytest.mark.parametrize("shape", ["single", "changeset"])
async def test_a_failing_line_rolls_back_the_header_and_raises_no_webhook(
        sandbox: SandboxServer, dv: DataverseClient, receiver: HookReceiver, shape: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.dataverse, "batch_failed_changeset", shape)
    sandbox.dataverse.register_webhook(receiver.url, steps=[WebhookStep(table="salesorder", message="Create"),
                                                            WebhookStep(table="salesorderdetail", message="Create")])
    results = await dv.batch(document("SO-200", 3, bad_line=2))
    assert [r.failed_here for r in results] == [False, False, True, False]
    assert all(isinstance(r.error, PermanentError) and r.error.status == 400 for r in results)
    assert "quantity" in results[2].error.message
    assert sandbox.dataverse.rows("salesorder") == [] and sandbox.dataverse.rows("salesorderdetail") == []
    ok = await dv.batch(document("SO-201", 1))
    assert all(r.ok for r in ok)
    assert await sandbox.dataverse.wait_idle_async(10)
    with receiver.lock:
        delivered = [(p["PrimaryEntityName"], p["MessageName"]) for p in receiver.payloads]
    assert delivered == [("salesorder", "Create"), ("salesorderdetail", "Create")]  # only the committed set


async def test_create_only_and_delete_in_a_batch(sandbox: SandboxServer, dv: DataverseClient) -> None:
    await dv.batch(document("SO-300", 2))
    results = await dv.batch([Upsert("salesorders", {"ordernumber": "SO-300"}, {"name": "x"}, create_only=True)])
    assert results[0].status == 412 and results[0].error is not None
    removed = await dv.batch([Delete("salesorderdetails", {"msdynce_ordernumber": "SO-300", "sequencenumber": 2}),
                              Create("accounts", {"name": "Created in a batch", "accountnumber": "B-1"})])
    assert [r.status for r in removed] == [204, 201] and removed[1].created is True
    assert len(sandbox.dataverse.rows("salesorderdetail")) == 1


async def test_non_atomic_batch_continues_after_a_failure(sandbox: SandboxServer, dv: DataverseClient) -> None:
    results = await dv.batch([Upsert("accounts", {"accountnumber": "A-1"}, {"creditlimit": "bad"}),
                              Upsert("accounts", {"accountnumber": "A-2"}, {"name": "Two"})], atomic=False)
    assert [r.ok for r in results] == [False, True] and results[0].failed_here
    assert [row["accountnumber"] for row in sandbox.dataverse.rows("account")] == ["A-2"]


async def test_1001_operations_are_refused_before_sending(sandbox: SandboxServer, dv: DataverseClient) -> None:
    sandbox.dataverse.request_log.clear()
    ops = [Upsert("accounts", {"accountnumber": f"N-{n}"}, {"name": "n"}) for n in range(MAX_BATCH_REQUESTS + 1)]
    with pytest.raises(ValueError, match="1001 operations exceed"):
        await dv.batch(ops)
    assert sandbox.dataverse.request_log.entries() == []
    done = await dv.batch(ops[:MAX_BATCH_REQUESTS])
    assert len(done) == MAX_BATCH_REQUESTS and all(r.ok for r in done)


async def test_a_throttled_batch_is_sent_again_whole(sandbox: SandboxServer, dv: DataverseClient,
                                                     sleeps: Sleeps) -> None:
    sandbox.dataverse.faults.configure(FaultConfig(rules=[FaultRule(kind="throttle", count=1, retry_after=2,
                                                                    path_contains="$batch")]))
    results = await dv.batch(document("SO-400", 2))
    assert all(r.ok for r in results) and sleeps.delays == [2]
    assert len(sandbox.dataverse.rows("salesorderdetail")) == 2
