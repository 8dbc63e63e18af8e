"""Telemetry: the JSON log formatter, the change's context in contextvars, trace context on queue messages,
the HTTP layer's tracing headers and spans, the metrics, and turning export on (lazily)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace

from p2csync import telemetry
from p2csync.connectors.auth import StaticTokenProvider
from p2csync.connectors.http import ApiClient, HttpOptions, RetryPolicy
from p2csync.outcomes import Applied, Deferred, Rejected, Skipped
from p2csync.telemetry import logs, metrics, setup, traces
from p2csync.telemetry.context import change_scope, current
from tests.otel import MemoryTelemetry, memory_telemetry

ROOT = Path(__file__).resolve().parents[2]
CID = "9d4c7524-a578-4783-b608-73f7b0b68fd2"


@pytest.fixture
def otel() -> MemoryTelemetry:
    memory = memory_telemetry()
    memory.spans.clear()
    yield memory
    memory.spans.clear()


def _record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    logs.install_context_factory()
    logger = logging.getLogger("p2csync.test")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, args or ("world",), None,
                             extra=extra or None)


# ------------------------------------------------------------------------------------------------ logs


def test_json_formatter_writes_one_object_with_the_change_context_and_extras() -> None:
    with change_scope(correlation_id=CID, message_id="m-1", queue="sales-events"):
        telemetry.annotate(flow="accounts", record_key="account:42")
        record = _record(system="fno", attempt=2, at=datetime(2026, 1, 2, tzinfo=UTC))
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "hello world"
    assert data["level"] == "INFO" and data["logger"] == "p2csync.test"
    assert data["time"].endswith("+00:00")
    assert (data["correlation_id"], data["flow"], data["record_key"], data["message_id"], data["queue"]) == \
        (CID, "accounts", "account:42", "m-1", "sales-events")
    assert (data["system"], data["attempt"], data["at"]) == ("fno", 2, "2026-01-02 00:00:00+00:00")


def test_json_formatter_outside_a_change_has_no_context_and_formats_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logs.install_context_factory()
        logger = logging.getLogger("p2csync.test")
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(logs.JsonFormatter().format(record))
    assert "correlation_id" not in data and "flow" not in data
    assert "ValueError: boom" in data["exception"]


def test_a_callers_extra_never_clashes_with_the_context_attributes() -> None:
    with change_scope(correlation_id=CID):
        record = _record(correlation_id="the caller's own", flow="x")  # the logging module raises on a clash
    data = json.loads(logs.JsonFormatter().format(record))
    assert data["correlation_id"] == CID  # ours wins in the JSON; the caller's is on the record
    assert record.correlation_id == "the caller's own"


def test_text_formatter_appends_the_context() -> None:
    with change_scope(correlation_id=CID, message_id="m-1"):
        record = _record()
    text = logs.ContextTextFormatter().format(record)
    assert text.endswith(f"hello world [correlation_id={CID} message_id=m-1]")
    assert logs.ContextTextFormatter().format(_record()).endswith("hello world")


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "text"),
    ({"FUNCTIONS_WORKER_RUNTIME": "python"}, "json"),
    ({"FUNCTIONS_WORKER_RUNTIME": "python", "P2C_LOG_FORMAT": "text"}, "text"),
    ({"P2C_LOG_FORMAT": " JSON "}, "json"),
])
def test_log_format_defaults_to_json_under_the_functions_host(env: dict[str, str], expected: str) -> None:
    assert logs.log_format(env) == expected


def test_an_unknown_log_format_names_the_setting() -> None:
    with pytest.raises(ValueError, match="P2C_LOG_FORMAT"):
        logs.log_format({"P2C_LOG_FORMAT": "xml"})


def test_configure_logging_json_formats_the_hosts_handlers() -> None:
    root = logging.Logger("isolated-root")
    host_handler = logging.StreamHandler()  # stands for the Functions worker's handler
    root.addHandler(host_handler)
    logs.configure_logging("json", root)
    assert isinstance(host_handler.formatter, logs.JsonFormatter)
    bare = logging.Logger("bare-root")
    logs.configure_logging("text", bare)
    (added,) = bare.handlers
    assert isinstance(added.formatter, logs.ContextTextFormatter)


# ------------------------------------------------------------------------------------- context propagation


async def test_concurrent_changes_never_see_each_others_context() -> None:
    seen: dict[str, tuple[str | None, str | None]] = {}
    gate = asyncio.Event()

    async def one(name: str) -> None:
        with change_scope(correlation_id=f"cid-{name}"):
            telemetry.annotate(flow=name)
            await gate.wait()  # both scopes are open at once
            await asyncio.sleep(0)
            seen[name] = (current().correlation_id, current().flow)

    tasks = [asyncio.create_task(one("a")), asyncio.create_task(one("b"))]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert seen == {"a": ("cid-a", "a"), "b": ("cid-b", "b")}
    assert current().correlation_id is None


def test_a_scope_restores_the_outer_context_and_makes_an_id_when_none_is_given() -> None:
    with change_scope(correlation_id=CID):
        with change_scope() as inner:
            assert inner.correlation_id and inner.correlation_id != CID and inner.correlation_generated
            telemetry.annotate(flow="inner")
        assert current().correlation_id == CID and current().flow is None
    assert current() == type(current())()


def test_an_upstream_correlation_id_replaces_only_a_generated_one() -> None:
    with change_scope():
        telemetry.adopt_correlation_id(CID)
        assert telemetry.correlation_id() == CID
        telemetry.adopt_correlation_id("another")
        assert telemetry.correlation_id() == CID
    with change_scope(correlation_id="from-header"):
        telemetry.adopt_correlation_id(CID)
        assert telemetry.correlation_id() == "from-header"


# ------------------------------------------------------------------------- trace context on queue messages


def test_stamp_puts_traceparent_and_diagnostic_id_and_the_correlation_id_on_a_message(otel: MemoryTelemetry) -> None:
    properties: dict[str, object] = {}
    with change_scope(correlation_id=CID), trace.get_tracer("t").start_as_current_span("send") as span:
        telemetry.stamp(properties)
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert properties[traces.CORRELATION_PROPERTY] == CID
    assert properties["traceparent"] == properties["Diagnostic-Id"]
    assert str(properties["traceparent"]).split("-")[1] == trace_id
    carried = telemetry.extract(properties)
    assert carried is not None and trace.get_current_span(carried).get_span_context().trace_id == \
        span.get_span_context().trace_id


def test_stamp_keeps_what_a_message_already_carries(otel: MemoryTelemetry) -> None:
    original = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                traces.CORRELATION_PROPERTY: "first"}
    properties = dict(original)
    with change_scope(correlation_id="second"), trace.get_tracer("t").start_as_current_span("retry"):
        telemetry.stamp(properties)
    assert properties == original


def test_extract_reads_diagnostic_id_when_there_is_no_traceparent_and_ignores_garbage() -> None:
    context = telemetry.extract({"Diagnostic-Id": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert context is not None
    assert trace.get_current_span(context).get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert telemetry.extract({"Diagnostic-Id": "|abc.1."}) is None  # the old Request-Id format
    assert telemetry.extract({"traceparent": 42}) is None
    assert telemetry.extract({}) is None


@pytest.mark.parametrize(("properties", "expected"), [
    ({traces.CORRELATION_PROPERTY: CID, "x-ms-correlation-request-id": "other"}, CID),
    ({"x-ms-correlation-request-id": CID}, CID),
    ({}, None),
])
def test_processing_continues_the_messages_trace_and_correlation(otel: MemoryTelemetry, properties: dict,
                                                                 expected: str | None) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with telemetry.processing("sales-events", "m-1", 2, {**properties, "traceparent": parent}) as scope:
        cid = telemetry.correlation_id()
        scope.finish(Skipped(reason="duplicate: already applied"))
    assert cid == expected if expected else cid and cid != CID
    (span,) = otel.finished()
    assert span.name == "process sales-events" and span.kind == trace.SpanKind.CONSUMER
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331
    assert span.attributes["p2c.correlation_id"] == cid
    assert (span.attributes["p2c.outcome"], span.attributes["p2c.reason"]) == ("skipped", "duplicate")
    assert span.attributes["messaging.delivery_count"] == 2


# ------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize(("outcome", "code"), [
    (Applied(detail="created"), "applied"),
    (Rejected(reason="MaxDeferralsExceeded", description="..."), "MaxDeferralsExceeded"),
    (Skipped(reason="duplicate: this change was already applied at 2026-01-01T00:00:00Z"), "duplicate"),
    (Skipped(reason="stale: version 1 is older than applied 2"), "stale"),
    (Deferred(delay=1, reason="throttled by fno: Too many requests"), "throttled_by_fno"),
    (Deferred(delay=1, reason="paused: the accounts flow is paused", paused=True), "paused"),
    (Deferred(delay=1, reason="record account:1 is being synced", lease_wait=True), "lease_wait"),
    (Skipped(reason="no flow syncs dataverse 'x' Create"), "other"),
])
def test_reason_codes_are_short_and_low_cardinality(outcome, code: str) -> None:
    assert metrics.reason_code(outcome) == code


def test_an_applied_outcome_records_its_flow_and_the_end_to_end_latency(otel: MemoryTelemetry) -> None:
    before = otel.count(metrics.OUTCOMES, flow="telemetry-test", kind="applied")
    latencies = sum(p.count for p in otel.points(metrics.LATENCY) if p.attributes.get("flow") == "telemetry-test")
    with telemetry.processing("sales-events", "m-2", 1, {}) as scope:
        telemetry.routed(flow="telemetry-test", record_key="account:1", correlation_id=CID,
                         event_time=datetime.now(UTC) - timedelta(seconds=3))
        assert telemetry.correlation_id() == CID  # the event's own id replaces the one made for the message
        scope.finish(Applied(detail="updated"))
    assert otel.count(metrics.OUTCOMES, flow="telemetry-test", kind="applied", reason="applied") == before + 1
    (point,) = [p for p in otel.points(metrics.LATENCY) if p.attributes.get("flow") == "telemetry-test"]
    assert point.count == latencies + 1 and point.max >= 3.0


# ------------------------------------------------------------------------------------ the HTTP layer


def _api(handler, sleep_log: list[float]) -> ApiClient:
    async def sleep(delay: float) -> None:
        sleep_log.append(delay)

    options = HttpOptions(transport=httpx.MockTransport(handler), sleep=sleep,
                          retry=RetryPolicy(max_attempts=3, base_delay=0.01, jitter="none"))
    api = ApiClient("https://contoso.operations.dynamics.com/data/", StaticTokenProvider("t"), http=options)
    api.system = "fno"  # type: ignore[misc]
    return api


async def test_every_call_sends_a_client_request_id_kept_on_retries_and_the_correlation_id(
        otel: MemoryTelemetry) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "0"})
        return httpx.Response(200, json={"value": []}, headers={"ms-dyn-aid": "activity-1"})

    throttled = otel.count(metrics.HTTP_THROTTLED, system="fno")
    retried = otel.count(metrics.HTTP_RETRIES, system="fno", reason="429")
    delays: list[float] = []
    async with _api(handler, delays) as api:
        with change_scope(correlation_id=CID):
            await api.request("GET", "CustomersV3", params={"$top": "1"})
        await api.request("GET", "CustomersV3")
    first, second, third = seen
    ids = {r.headers["x-ms-client-request-id"] for r in (first, second)}
    assert len(ids) == 1 and third.headers["x-ms-client-request-id"] not in ids
    assert first.headers["x-ms-correlation-id"] == second.headers["x-ms-correlation-id"] == CID
    assert "x-ms-correlation-id" not in third.headers  # no change in hand, no correlation id
    call, _ = [s for s in otel.finished() if s.name == "fno GET"]
    assert call.attributes["p2c.http.client_request_id"] in ids
    assert call.attributes["p2c.http.attempts"] == 2 and call.attributes["http.response.status_code"] == 200
    assert call.attributes["p2c.correlation_id"] == CID and call.attributes["url.path"] == "/data/CustomersV3"
    assert call.attributes["p2c.http.ms-dyn-aid"] == "activity-1"
    assert [e.name for e in call.events] == ["retry"]
    assert otel.count(metrics.HTTP_THROTTLED, system="fno") == throttled + 1
    assert otel.count(metrics.HTTP_RETRIES, system="fno", reason="429") == retried + 1


async def test_a_failed_call_marks_its_span_as_an_error(otel: MemoryTelemetry) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"code": "x", "message": "bad field"}})

    async with _api(handler, []) as api:
        with pytest.raises(Exception):
            await api.request("PATCH", "CustomersV3(dataAreaId='usmf',CustomerAccount='C1')", json={"A": 1})
    (span,) = [s for s in otel.finished() if s.name == "fno PATCH"]
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.attributes["http.response.status_code"] == 400


# ------------------------------------------------------------------------------------ export set-up


@pytest.fixture
def fresh_setup(monkeypatch: pytest.MonkeyPatch):
    calls: list[dict] = []
    fake = types.ModuleType("azure.monitor.opentelemetry")
    fake.configure_azure_monitor = lambda **kwargs: calls.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", fake)
    monkeypatch.setattr(logs, "configure_logging", lambda fmt, root=None: None)
    monkeypatch.setattr(setup, "configure_logging", lambda fmt, root=None: None)
    setup.reset_for_tests()
    yield calls
    setup.reset_for_tests()


def test_the_distro_is_configured_when_a_connection_string_is_set(fresh_setup: list[dict]) -> None:
    setup.configure({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x;IngestionEndpoint=https://e/"})
    setup.configure({"APPLICATIONINSIGHTS_CONNECTION_STRING": "again"})  # once per process
    assert fresh_setup == [{"connection_string": "InstrumentationKey=x;IngestionEndpoint=https://e/",
                            "logger_name": "p2csync"}]


@pytest.mark.parametrize("env", [
    {},
    {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x",
     "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"},  # the Functions worker configures it itself
])
def test_the_distro_is_left_alone_otherwise(fresh_setup: list[dict], env: dict[str, str]) -> None:
    setup.configure(env)
    assert fresh_setup == []


def test_importing_the_app_loads_neither_the_distro_nor_the_sdk() -> None:
    """Cold start: the app imports only the OpenTelemetry API; the SDK and the distro come with export."""
    code = ("import sys, function_app; "
            "print(sorted(m for m in sys.modules if m.startswith(('azure.monitor', 'opentelemetry.sdk'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
