"""The integration's own metrics, through the OpenTelemetry metrics API.

Until a meter provider is configured (``p2csync.telemetry.setup``), the API's meters are no-ops, so
recording costs next to nothing locally and in tests that do not install one. Names and attributes are
what the workbook and the alerts in infra/modules/alerts.bicep query (customMetrics in Application
Insights); change them together.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics

from p2csync import __version__

if TYPE_CHECKING:  # the outcome models are read by their fields only: no import order imposed on the app
    from p2csync.outcomes import Outcome

OUTCOMES = "p2c.outcomes"
LATENCY = "p2c.sync.latency"
HTTP_RETRIES = "p2c.http.retries"
HTTP_THROTTLED = "p2c.http.throttled"

_REASON_HEAD = re.compile(r"^[A-Za-z][A-Za-z0-9_ &-]{0,39}$")


@lru_cache(maxsize=1)
def _instruments() -> dict[str, Any]:
    meter = metrics.get_meter("p2csync", __version__)
    return {
        OUTCOMES: meter.create_counter(OUTCOMES, unit="{message}",
                                       description="Messages processed, by flow, outcome kind and reason"),
        LATENCY: meter.create_histogram(LATENCY, unit="s",
                                        description="From the source event's time to the counterpart written"),
        HTTP_RETRIES: meter.create_counter(HTTP_RETRIES, unit="{request}",
                                           description="HTTP requests sent again, by system and reason"),
        HTTP_THROTTLED: meter.create_counter(HTTP_THROTTLED, unit="{response}",
                                             description="429 answers, by system"),
    }


def reason_code(outcome: Outcome) -> str:
    """A short, low-cardinality reason for a metric attribute (the full reason is in the journal and the
    log line): the dead-letter reason of a rejection, else the words before the first colon of the reason
    ("duplicate", "stale", "echo", "throttled by fno"), else "other"."""
    kind = outcome.kind
    if kind == "applied":
        return "applied"
    reason = str(getattr(outcome, "reason", ""))
    if kind == "rejected":
        return reason[:64]
    if getattr(outcome, "paused", False):
        return "paused"
    if getattr(outcome, "lease_wait", False):
        return "lease_wait"
    head = reason.split(":", 1)[0].strip()
    return head.lower().replace(" ", "_") if _REASON_HEAD.match(head) else "other"


def record_outcome(outcome: Outcome, flow: str | None) -> None:
    _instruments()[OUTCOMES].add(1, {"flow": flow or "unrouted", "kind": outcome.kind,
                                     "reason": reason_code(outcome)})


def record_latency(seconds: float, flow: str | None) -> None:
    _instruments()[LATENCY].record(max(0.0, seconds), {"flow": flow or "unrouted"})


def record_http_retry(system: str, reason: str) -> None:
    _instruments()[HTTP_RETRIES].add(1, {"system": system, "reason": reason})


def record_throttled(system: str) -> None:
    _instruments()[HTTP_THROTTLED].add(1, {"system": system})
