"""Spans across webhook -> queue -> handler -> connector, and the trace context on the queue message.

One change is one trace: the webhook's ``ingress`` span, the ``process`` span of every delivery of its
message (a consumer span whose parent is the context the message carries), the flow handler's ``sync``
span, and one span per logical HTTP call (retries are events on it; under the Azure Monitor distro the
httpx instrumentation adds a span per attempt below it).

On the message, the context travels as the application properties Service Bus defines for it: ``Diagnostic-Id``
holding a W3C ``traceparent`` value ("Distributed tracing and correlation through Service Bus messaging"),
and ``traceparent``/``tracestate`` as the Azure SDKs' OpenTelemetry tracing writes them (same value); a
reader takes ``traceparent`` first, then ``Diagnostic-Id``. Our correlation id travels beside it as
``p2c-correlation-id``: a trace id is not a correlation id Dataverse or F&O know, and the correlation id
must survive where no trace is recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from p2csync import __version__
from p2csync.telemetry import metrics
from p2csync.telemetry.context import adopt_correlation_id, annotate, change_scope, current

#: Application properties on a queue message.
CORRELATION_PROPERTY = "p2c-correlation-id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
DIAGNOSTIC_ID = "Diagnostic-Id"
#: The Dataverse webhook's tracking id (wire-formats 1.2); the ingress copies it as a property of this name.
WEBHOOK_CORRELATION_HEADER = "x-ms-correlation-request-id"
#: Sent on every call to Dataverse and F&O. F&O documents ``x-ms-client-request-id`` ("Service request
#: tracing": a GUID per client request, logged by the service); Microsoft's Dataverse SDK for Python sends
#: the same header and the caller's correlation id as ``x-ms-correlation-id``.
CLIENT_REQUEST_ID_HEADER = "x-ms-client-request-id"
CORRELATION_HEADER = "x-ms-correlation-id"
#: Response headers naming the request on the service side: Dataverse, F&O (activity id).
SERVICE_REQUEST_ID_HEADERS = ("x-ms-service-request-id", "ms-dyn-aid")

if TYPE_CHECKING:
    from p2csync.outcomes import Outcome

_propagator = TraceContextTextMapPropagator()


def tracer() -> trace.Tracer:
    return trace.get_tracer("p2csync", __version__)


def _context_attributes() -> dict[str, str]:
    return {f"p2c.{key}": value for key, value in current().fields().items()}


# ------------------------------------------------------------------------------------------ propagation


def stamp(properties: MutableMapping[str, Any]) -> None:
    """Put the current correlation id and trace context on a message's properties, keeping any already
    there (a retry copy keeps the original's)."""
    if (cid := current().correlation_id) and not properties.get(CORRELATION_PROPERTY):
        properties[CORRELATION_PROPERTY] = cid
    if TRACEPARENT in properties or DIAGNOSTIC_ID in properties:
        return
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    if parent := carrier.get(TRACEPARENT):
        properties[TRACEPARENT] = parent
        properties[DIAGNOSTIC_ID] = parent
        if state := carrier.get(TRACESTATE):
            properties[TRACESTATE] = state


def extract(properties: Mapping[str, Any]) -> Context | None:
    """The trace context a message carries (``traceparent``, else ``Diagnostic-Id``), or None."""
    parent = properties.get(TRACEPARENT) or properties.get(DIAGNOSTIC_ID)
    if not isinstance(parent, str) or not parent:
        return None
    carrier = {TRACEPARENT: parent}
    if isinstance(state := properties.get(TRACESTATE), str) and state:
        carrier[TRACESTATE] = state
    context = _propagator.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def message_correlation_id(properties: Mapping[str, Any]) -> str | None:
    """The correlation id a message carries: ours, else the Dataverse webhook header the ingress copied."""
    for name in (CORRELATION_PROPERTY, WEBHOOK_CORRELATION_HEADER):
        if isinstance(value := properties.get(name), str) and value.strip():
            return value.strip()
    return None


# ------------------------------------------------------------------------------------------------ spans


@dataclass
class Ingress:
    span: trace.Span

    def finish(self, status: int, message_id: str | None = None) -> None:
        self.span.set_attributes(_context_attributes())
        self.span.set_attribute("http.response.status_code", status)
        if message_id:
            self.span.set_attribute("messaging.message.id", message_id)
        if status >= 400:
            self.span.set_status(Status(StatusCode.ERROR, f"answered {status}"))


@contextmanager
def ingress(headers: Mapping[str, str], *, name: str = "dataverse_webhook") -> Iterator[Ingress]:
    """The webhook's scope: its correlation id (Dataverse's ``x-ms-correlation-request-id`` when present,
    else a new one) and its span; everything it enqueues carries both (``stamp``)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    with change_scope(correlation_id=(lowered.get(WEBHOOK_CORRELATION_HEADER) or "").strip().lower() or None):
        with tracer().start_as_current_span(f"ingress {name}", kind=SpanKind.INTERNAL) as span:
            span.set_attributes(_context_attributes())
            yield Ingress(span)


@dataclass
class Processing:
    span: trace.Span
    outcome: Outcome | None = field(default=None)

    def finish(self, outcome: Outcome) -> None:
        """Record the outcome on the span and in the metrics; the end-to-end latency when it was applied
        and the source event's time is known."""
        context = current()
        self.outcome = outcome
        self.span.set_attributes({**_context_attributes(), "p2c.outcome": outcome.kind,
                                  "p2c.reason": metrics.reason_code(outcome)})
        if outcome.kind == "rejected":
            self.span.set_status(Status(StatusCode.ERROR, metrics.reason_code(outcome)))
        metrics.record_outcome(outcome, context.flow)
        if outcome.kind == "applied" and context.event_time is not None:
            metrics.record_latency((datetime.now(UTC) - context.event_time).total_seconds(), context.flow)


@contextmanager
def processing(queue: str, message_id: str, delivery_count: int,
               properties: Mapping[str, Any]) -> Iterator[Processing]:
    """One delivery's scope: the correlation id the message carries (or a new one), and a consumer span
    continuing the trace the message carries (or the current one)."""
    with change_scope(correlation_id=message_correlation_id(properties), message_id=message_id or None,
                      queue=queue):
        parent = extract(properties)
        with tracer().start_as_current_span(f"process {queue}", context=parent, kind=SpanKind.CONSUMER,
                                            attributes={"messaging.system": "servicebus",
                                                        "messaging.destination.name": queue,
                                                        "messaging.message.id": message_id,
                                                        "messaging.delivery_count": delivery_count}) as span:
            span.set_attributes(_context_attributes())
            yield Processing(span)


def routed(*, flow: str | None, record_key: str | None, correlation_id: str | None,
           event_time: datetime | None) -> None:
    """What the runtime learns from the parsed event: its flow, record key, time, and the upstream
    correlation id (used when the message carried none)."""
    adopt_correlation_id(correlation_id)
    annotate(flow=flow, record_key=record_key, event_time=event_time)
    span = trace.get_current_span()
    span.set_attributes(_context_attributes())


@contextmanager
def sync(flow: str) -> Iterator[trace.Span]:
    """The flow handler's span."""
    with tracer().start_as_current_span(f"sync {flow}", attributes=_context_attributes()) as span:
        yield span


@dataclass
class HttpCall:
    span: trace.Span
    system: str
    client_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    attempts: int = 1

    def headers(self) -> dict[str, str]:
        """The tracing headers of this call: a client request id per logical request (kept on its
        retries), and the change's correlation id when there is one."""
        headers = {CLIENT_REQUEST_ID_HEADER: self.client_request_id}
        if cid := current().correlation_id:
            headers[CORRELATION_HEADER] = cid
        return headers

    def retry(self, reason: str, delay: float) -> None:
        self.attempts += 1
        self.span.add_event("retry", {"reason": reason, "delay_s": delay, "attempt": self.attempts})
        metrics.record_http_retry(self.system, reason)

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        self.span.set_attribute("http.response.status_code", status)
        self.span.set_attribute("p2c.http.attempts", self.attempts)
        for name in SERVICE_REQUEST_ID_HEADERS:
            if value := headers.get(name):
                self.span.set_attribute(f"p2c.http.{name}", value)
        if status >= 400:
            self.span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))

    def failed(self, error: BaseException) -> None:
        self.span.set_attribute("p2c.http.attempts", self.attempts)
        status = getattr(error, "status", None)
        if isinstance(status, int):
            self.span.set_attribute("http.response.status_code", status)
        self.span.set_status(Status(StatusCode.ERROR, type(error).__name__))



_call: ContextVar[HttpCall | None] = ContextVar("p2c_http_call", default=None)


def http_retried(system: str, reason: str, delay: float) -> None:
    """A request of the current call is sent again (an event on its span, and the retry metric)."""
    call = _call.get()
    if call is not None and call.system == system:
        call.retry(reason, delay)
    else:
        metrics.record_http_retry(system, reason)


@contextmanager
def http_call(system: str, method: str, path: str) -> Iterator[HttpCall]:
    """One logical HTTP request to ``system`` (all its attempts). ``path`` must already be redacted.

    [Inferred] An internal span, not a client span: under the Azure Monitor distro the httpx instrumentation
    adds a client span per attempt below it, so Application Insights counts each request sent once."""
    attributes = {"http.request.method": method, "url.path": path, "p2c.system": system, **_context_attributes()}
    with tracer().start_as_current_span(f"{system} {method}", kind=SpanKind.INTERNAL, attributes=attributes,
                                        record_exception=False) as span:
        call = HttpCall(span, system)
        span.set_attribute("p2c.http.client_request_id", call.client_request_id)
        token = _call.set(call)
        try:
            yield call
        except BaseException as exc:
            call.failed(exc)
            raise
        finally:
            _call.reset(token)
