"""In-memory OpenTelemetry for tests: one tracer provider and one meter provider per test process (the API
allows setting each only once), exporting to memory. ``memory_telemetry()`` installs them on first use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass
class MemoryTelemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        """Data points of metric ``name`` collected now (cumulative since the provider was installed)."""
        data = self.metrics.get_metrics_data()
        found = []
        for resource in (data.resource_metrics if data else []):
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def count(self, name: str, **attributes: str) -> float:
        """The sum of a counter's points whose attributes include ``attributes``."""
        return sum(p.value for p in self.points(name)
                   if all(p.attributes.get(k) == v for k, v in attributes.items()))


_installed: MemoryTelemetry | None = None


def memory_telemetry() -> MemoryTelemetry:
    global _installed
    if _installed is None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _installed = MemoryTelemetry(exporter, reader)
    return _installed
