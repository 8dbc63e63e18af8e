"""FnOClient.batch against the sandbox over loopback HTTP (issue 8, "Documents, not rows").

A sales order document (header + 20 lines) is written in one call, then 3 lines changed, 1 removed and 1
added in one call; a document sync costs at most 3 F&O calls when nothing is missing (read the header, read
the lines with one ``$filter``, write in one change set), counted from the sandbox's request log. A failing
line leaves nothing written and raises no change event, under both write-error statuses and both shapes of
a failed change set; a throttled batch is sent again as a whole.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from p2csync.connectors import AlreadyExistsError, FnOClient, PermanentError
from p2csync.connectors.fno import BatchOperation, Create, Delete, Read, Update, equals_filter, same_value
from sandbox import SandboxServer
from sandbox.faults import FaultConfig, FaultRule
from tests.integration import test_connectors_sandbox as base
from tests.integration.test_connectors_sandbox import ChangeRecorder, Sleeps, _log

_server = base._server
sandbox = base.sandbox
changes = base.changes
receiver = base.receiver
sleeps = base.sleeps
fno = base.fno

H, L = "CDSSalesOrderHeaders", "CDSSalesOrderLines"
ORDER = "SO/2026-001"  # a '/' in the number: keys go double-encoded inside the batch too
HEADER_KEY = {"dataAreaId": "usmf", "SalesOrderNumber": ORDER}


@pytest.fixture(autouse=True)
def without_order_rules(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the connector's $batch; the order entities' own rules (customer, released product,
    order exists) are tested in tests/sandbox/test_order_rules.py and through the orders flow."""
    monkeypatch.setitem(sandbox.fno.validators, H, [])
    monkeypatch.setitem(sandbox.fno.validators, L, [])


def line_key(n: int) -> dict[str, Any]:
    return {**HEADER_KEY, "LineCreationSequenceNumber": n}


def line_body(n: int, quantity: int = 1) -> dict[str, Any]:
    return {"ProductNumber": f"P-{n:03d}", "OrderedSalesQuantity": Decimal(quantity), "SalesUnitSymbol": "ea",
            "SalesPrice": Decimal("12.50")}


def document_ops() -> list[BatchOperation]:
    return [Create(H, HEADER_KEY, {"SalesOrderName": "Bikes", "CurrencyCode": "USD"})] + [
        Create(L, line_key(n), line_body(n)) for n in range(1, 21)]


async def sync_lines(fno: FnOClient, wanted: dict[int, dict[str, Any]]) -> list[BatchOperation]:
    """A document sync in its steady state: read the header, read all lines in one query, write the
    difference in one change set (what the issue's document handler will do)."""
    assert await fno.get(H, HEADER_KEY) is not None
    current = {row["LineCreationSequenceNumber"]: row async for row in fno.query(L, equals_filter(HEADER_KEY))}
    ops: list[BatchOperation] = []
    for n, body in wanted.items():
        if n not in current:
            ops.append(Create(L, line_key(n), body))
        else:
            changed = {k: v for k, v in body.items() if not same_value(current[n].get(k), v)}
            if changed:
                ops.append(Update(L, line_key(n), changed))
    ops += [Delete(L, line_key(n)) for n in current if n not in wanted]
    results = await fno.batch(ops)
    assert all(result.ok for result in results), [r.error for r in results if r.error]
    return ops


async def test_header_and_20_lines_in_one_call_then_changes_in_one_call(
        sandbox: SandboxServer, fno: FnOClient, changes: ChangeRecorder) -> None:
    results = await fno.batch(document_ops())
    assert [r.status for r in results] == [201] * 21
    assert _log(sandbox, expect=1) == [("POST", 200)]  # one F&O call for the whole document
    assert len(sandbox.fno.rows(L, "usmf")) == 20
    assert [c.entity_set for c in changes.changes] == [H] + [L] * 20  # header first, then its lines

    sandbox.fno.request_log.clear()
    changes.changes.clear()
    wanted = {n: line_body(n) for n in range(1, 21) if n != 7}
    for n in (2, 3, 4):
        wanted[n] = line_body(n, quantity=5)
    wanted[21] = line_body(21)
    ops = await sync_lines(fno, wanted)
    assert sorted((type(op).__name__, op.key["LineCreationSequenceNumber"]) for op in ops) == [
        ("Create", 21), ("Delete", 7), ("Update", 2), ("Update", 3), ("Update", 4)]
    # At most 3 F&O calls for the document: GET header, GET lines ($filter), POST $batch.
    log = _log(sandbox, expect=3)
    assert log == [("GET", 200), ("GET", 200), ("POST", 200)]
    assert [r.path for r in sandbox.fno.request_log.entries()][-1] == "/data/$batch"
    rows = {row["LineCreationSequenceNumber"]: row for row in sandbox.fno.rows(L, "usmf")}
    assert sorted(rows) == [n for n in range(1, 22) if n != 7]
    assert [rows[n]["OrderedSalesQuantity"] for n in (1, 2, 3, 4)] == [1, 5, 5, 5]
    assert sorted((c.operation, c.row["LineCreationSequenceNumber"]) for c in changes.changes) == [
        ("Create", 21), ("Delete", 7), ("Update", 2), ("Update", 3), ("Update", 4)]

    # Nothing changed: still no more than 3 calls, and no write at all.
    sandbox.fno.request_log.clear()
    assert await sync_lines(fno, wanted) == []
    assert _log(sandbox, expect=2) == [("GET", 200), ("GET", 200)]


@pytest.mark.parametrize("shape", ["changeset", "single"])
@pytest.mark.parametrize("write_status", [400, 500])
async def test_a_failing_line_leaves_the_document_unwritten(
        sandbox: SandboxServer, fno: FnOClient, changes: ChangeRecorder, write_status: int, shape: str) -> None:
    sandbox.fno.configure(write_error_status=write_status, batch_failed_changeset=shape)
    sandbox.fno.create(L, {**line_key(3), "ProductNumber": "P-003"})  # line 3 already there: its create fails
    changes.changes.clear()
    results = await fno.batch(document_ops())
    assert [r.failed_here for r in results].index(True) == 3
    assert all(isinstance(r.error, AlreadyExistsError) for r in results)
    assert results[3].error.status == write_status
    assert sandbox.fno.rows(H) == [] and len(sandbox.fno.rows(L)) == 1
    assert changes.changes == []
    assert _log(sandbox, expect=1) == [("POST", 200)]  # an error inside the answer is not retried


async def test_a_validation_error_names_the_line(sandbox: SandboxServer, fno: FnOClient) -> None:
    def unit_exists(entity: Any, row: dict[str, Any], operation: str, _fno: Any) -> list[str]:
        return [] if row.get("SalesUnitSymbol") == "ea" else [f"Unit '{row.get('SalesUnitSymbol')}' does not exist."]

    sandbox.fno.add_validator(L, unit_exists)
    ops = document_ops()
    ops[5] = Create(L, line_key(5), {**line_body(5), "SalesUnitSymbol": "box"})
    results = await fno.batch(ops)
    culprit = next(r for r in results if r.failed_here)
    assert culprit.operation.key["LineCreationSequenceNumber"] == 5
    assert type(culprit.error) is PermanentError and "Unit 'box' does not exist" in culprit.error.detail
    assert sandbox.fno.rows(H) == []


async def test_a_throttled_batch_is_sent_again_and_applied_once(
        sandbox: SandboxServer, fno: FnOClient, sleeps: Sleeps) -> None:
    sandbox.fno.faults.configure(FaultConfig(rules=[
        FaultRule(kind="throttle", retry_after=3, count=1, path_contains="$batch"),
        FaultRule(kind="error", status=503, count=1, path_contains="$batch")]))
    results = await fno.batch(document_ops())
    assert all(r.ok for r in results)
    assert _log(sandbox, expect=3) == [("POST", 429), ("POST", 503), ("POST", 200)]
    assert sleeps.delays[0] == 3
    assert len(sandbox.fno.rows(L)) == 20


async def test_requests_outside_a_changeset_read_lines_in_one_call(sandbox: SandboxServer, fno: FnOClient) -> None:
    await fno.batch(document_ops())
    sandbox.fno.request_log.clear()
    results = await fno.batch([Read(L, line_key(n), select=["ProductNumber"]) for n in (1, 2, 99)], atomic=False)
    assert [r.record["ProductNumber"] if r.record else None for r in results] == ["P-001", "P-002", None]
    assert _log(sandbox, expect=1) == [("POST", 200)]
