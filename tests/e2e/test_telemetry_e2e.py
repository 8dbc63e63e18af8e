"""One change, one correlation id, one trace: from the Sales sandbox's webhook through the queue and the
runtime to the F&O write, through the local host over loopback HTTP (in-memory OpenTelemetry exporter)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2csync.devstack import LocalStack
from tests.otel import MemoryTelemetry, memory_telemetry

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        yield local


@pytest.fixture
def otel() -> MemoryTelemetry:
    memory = memory_telemetry()
    memory.spans.clear()
    yield memory
    memory.spans.clear()


async def test_one_correlation_id_and_one_trace_from_the_webhook_to_the_fno_write(
        stack: LocalStack, otel: MemoryTelemetry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2csync")
    usd = next(r for r in stack.sandbox.dataverse.rows("transactioncurrency") if r["isocurrencycode"] == "USD")
    stack.sandbox.fno.request_log.clear()
    record_id = await asyncio.to_thread(stack.sandbox.dataverse.create, "account", {
        "name": "Traced Ltd", "accountnumber": "TEL-001", "address1_country": "United States",
        "transactioncurrencyid": ("transactioncurrency", usd["transactioncurrencyid"])})
    assert await stack.wait_settled(20)
    assert stack.sandbox.fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "TEL-001"}) is not None

    spans = otel.finished()
    (ingress,) = [s for s in spans if s.name == "ingress dataverse_webhook"]
    processing = [s for s in spans if s.name == "process sales-events"
                  and s.attributes.get("p2c.record_key", "").endswith(record_id)]
    writes = [s for s in spans if s.attributes.get("p2c.system") == "fno"
              and s.attributes["http.request.method"] in ("POST", "PATCH")
              and "CustomersV3" in s.attributes["url.path"]]
    assert processing and writes
    cid = ingress.attributes["p2c.correlation_id"]
    # The id Dataverse gave the change (its webhook header and the context's CorrelationId), not a new one.
    journal = [e for e in await stack.ledger().journal_entries(limit=1000) if e.message_key.startswith(
        f"account:{record_id}:")]
    assert [e.outcome for e in journal] == ["applied"] and journal[0].correlation_id == cid
    # One trace, one correlation id: ingress -> processing -> the handler -> the F&O write.
    trace_id = ingress.context.trace_id
    for span in [*processing, *writes]:
        assert span.context.trace_id == trace_id, span.name
        assert span.attributes["p2c.correlation_id"] == cid, span.name
    assert all(s.parent is not None and s.parent.span_id == ingress.context.span_id for s in processing)
    (sync,) = [s for s in spans if s.name == "sync accounts" and s.context.trace_id == trace_id]
    assert all(s.parent is not None and s.parent.span_id == sync.context.span_id for s in writes)
    assert processing[-1].attributes["p2c.outcome"] == "applied"
    # F&O received the correlation id and the client request id the span names.
    logged = [r for r in stack.sandbox.fno.request_log.entries(path_contains="CustomersV3")
              if r.method in ("POST", "PATCH")]
    assert logged and all(r.correlation_id == cid for r in logged)
    assert {r.client_request_id for r in logged} == {s.attributes["p2c.http.client_request_id"] for s in writes}
    # The log lines of the change carry it too.
    applied = [r for r in caplog.records if r.name == "p2csync.runtime" and "applied" in r.getMessage()
               and getattr(r, "p2c.record_key", "").endswith(record_id)]
    assert applied and all(getattr(r, "p2c.correlation_id") == cid for r in applied)
