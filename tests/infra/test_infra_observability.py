"""infra/modules/observability.bicep: the dead-letter and latency alerts and the workbook watch what the code
emits (the metric names in p2csync/telemetry/metrics.py), and the app exports OpenTelemetry as the Functions
guidance says (host.json telemetryMode + PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY)."""

from __future__ import annotations

import json
import re

from p2csync.telemetry import metrics
from tests.infra._bicep import ROOT, app_settings, body, dumps, main, module, resources

EMITTED = {metrics.OUTCOMES, metrics.LATENCY, metrics.HTTP_RETRIES, metrics.HTTP_THROTTLED}


def _observability() -> dict:
    return module("observability")


def _resource(type_: str) -> dict:
    (_, res), = resources(_observability(), type_)
    return body(res)


def test_main_wires_the_namespace_and_the_component_into_the_alerts() -> None:
    params = dumps(main()["modules"]["observability"]["config"]["params"])
    assert "serviceBus" in params and '"id"' in params
    assert "monitoring" in params and "applicationInsightsId" in params


def test_a_dead_lettered_message_on_any_queue_fires_the_alert() -> None:
    alert = _resource("Microsoft.Insights/metricAlerts")["properties"]
    (criterion,) = alert["criteria"]["allOf"]
    assert criterion["metricNamespace"] == "Microsoft.ServiceBus/namespaces"
    assert criterion["metricName"] == "DeadletteredMessages"
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 0)
    assert criterion["dimensions"][0]["name"] == "EntityName" and criterion["dimensions"][0]["values"] == ["*"]
    assert alert["scopes"] == ["serviceBusNamespaceId"] and alert["enabled"] is True


def test_the_latency_alert_queries_the_metric_the_runtime_records() -> None:
    rule = _resource("Microsoft.Insights/scheduledQueryRules")["properties"]
    (criterion,) = rule["criteria"]["allOf"]
    assert f'name == "{metrics.LATENCY}"' in criterion["query"]
    assert criterion["metricMeasureColumn"] in criterion["query"]
    assert criterion["operator"] == "GreaterThan" and criterion["threshold"] == "latencyThresholdSeconds"
    assert rule["scopes"] == ["applicationInsightsId"]


def test_the_workbook_shows_every_metric_the_code_emits_and_the_queue_metrics() -> None:
    text = dumps(_observability()["variables"]["workbookItems"])
    named = set(re.findall(r"p2c\.[a-z_.]+[a-z]", text))
    assert named == EMITTED, named ^ EMITTED
    assert "DeadletteredMessages" in text and "ActiveMessages" in text
    workbook = _resource("Microsoft.Insights/workbooks")
    assert workbook["kind"] == "shared" and "workbookItems" in dumps(workbook["properties"]["serializedData"])


def test_the_worker_exports_opentelemetry_as_the_functions_guidance_says() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["telemetryMode"] == "OpenTelemetry"
    settings = app_settings()
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].endswith("Authorization=AAD")
