"""Telemetry: one correlation id through every layer of one change, structured logs, OpenTelemetry traces and
metrics, exported to Application Insights when configured. See README "Telemetry".

``context`` holds the change's ids in contextvars; ``logs`` puts them on every log record; ``traces`` makes
the spans and carries the trace context on queue messages; ``metrics`` records outcomes, latency, retries and
429s; ``setup`` turns it on.
"""

from p2csync.telemetry.context import adopt_correlation_id, annotate, change_scope, correlation_id, current
from p2csync.telemetry.metrics import record_throttled
from p2csync.telemetry.setup import configure
from p2csync.telemetry.traces import (
    CORRELATION_PROPERTY,
    extract,
    http_call,
    http_retried,
    ingress,
    processing,
    routed,
    stamp,
    sync,
)

__all__ = [
    "CORRELATION_PROPERTY",
    "adopt_correlation_id",
    "annotate",
    "change_scope",
    "configure",
    "correlation_id",
    "current",
    "extract",
    "http_call",
    "http_retried",
    "ingress",
    "processing",
    "record_throttled",
    "routed",
    "stamp",
    "sync",
]
