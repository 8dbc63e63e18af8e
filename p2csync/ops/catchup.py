"""The scheduled catch-up of the F&O -> Sales flows (issue 9): F&O gives up on an event after a few retries
(its Errors tab keeps it; nothing reaches us), so on a timer every F&O-sourced flow is reconciled and what
differs is resynced through the queue, the same path as an event. The timer is function_app.py's
``catch_up`` (schedule: the app setting P2C_CATCHUP_SCHEDULE, an NCRONTAB expression)."""

from __future__ import annotations

import json
import logging
from typing import Any

from p2csync.ops.reconcile import ReconcileReport, reconcile

log = logging.getLogger("p2csync.catchup")


async def catch_up(runtime: Any, flows: list[str] | None = None) -> list[ReconcileReport]:
    """Reconcile each F&O -> Sales flow (or those named) with ``fix``; log one JSON line per flow."""
    await runtime.start()  # the mappings' choice labels, as before any sync
    reports = []
    for name, spec in sorted(runtime.mappings.items()):
        if spec.source.system != "fno" or (flows is not None and name not in flows):
            continue
        report = await reconcile(spec, runtime.context, runtime.registry, fix=True, transport=runtime.transport,
                                 queue=runtime.settings.fno_events_queue)
        log.info("catch-up %s", json.dumps({
            "flow": name, "run": report.run, "checked": report.checked, "in_sync": report.in_sync,
            "drift": report.counts(), "resynced": report.fixed, "seconds": round(report.seconds, 2),
            "records": [d.record_key for d in report.drift][:20]}))
        reports.append(report)
    return reports
