"""``status``: queue depths, and per flow what the journal says about a recent window."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from pydantic import AwareDatetime, BaseModel

from p2csync.ledger.base import JournalEntry
from p2csync.ops.common import flow_of, is_pause_wait, is_throttled, reason_category
from p2csync.pauses import PauseRecord, paused_flows
from p2csync.queue.base import QueueAdmin

#: At most this many journal entries are read for one window; more sets ``truncated``.
MAX_WINDOW_ENTRIES = 200_000
UNROUTED = "(no flow)"


class QueueStatus(BaseModel):
    queue: str
    active: int | None = None
    scheduled: int | None = None
    locked: int | None = None
    dead_lettered: int | None = None
    error: str | None = None


class FlowStatus(BaseModel):
    flow: str
    last_applied: AwareDatetime | None = None
    outcomes: dict[str, int] = {}
    #: "<outcome>: <reason category>" -> deliveries in the window
    reasons: dict[str, int] = {}
    deferrals: int = 0
    throttled: int = 0
    paused: PauseRecord | None = None
    #: Messages whose newest journal entry is a wait for this paused flow.
    waiting: int = 0


class StatusReport(BaseModel):
    at: AwareDatetime
    since: AwareDatetime
    queues: list[QueueStatus]
    flows: list[FlowStatus]
    truncated: bool = False


async def queue_status(admin: QueueAdmin, queue: str) -> QueueStatus:
    """One queue's counts; an error (no rights to the management API, say) is reported, not raised."""
    try:
        counts = await admin.counts(queue)
    except Exception as exc:
        return QueueStatus(queue=queue, error=f"{type(exc).__name__}: {exc}"[:300])
    return QueueStatus(queue=queue, active=counts.active, scheduled=counts.scheduled, locked=counts.locked,
                       dead_lettered=counts.dead_lettered)


async def status(ledger: object, admin: QueueAdmin | None, queues: list[str], flows: list[str], *,
                 window: timedelta, now: datetime) -> StatusReport:
    """The report: ``flows`` are listed even when quiet; flows met in the journal are added."""
    since = now - window
    entries: list[JournalEntry] = await ledger.journal_entries(since=since,  # type: ignore[attr-defined]
                                                               limit=MAX_WINDOW_ENTRIES)
    applied = await ledger.journal_entries(outcome="applied", limit=5000)  # type: ignore[attr-defined]
    paused = await paused_flows(ledger)  # type: ignore[arg-type]
    by_flow: dict[str, FlowStatus] = {f: FlowStatus(flow=f) for f in [*flows, *paused]}
    last: dict[str, JournalEntry] = {}
    for entry in entries:
        flow = flow_of(entry.record_key) or UNROUTED
        report = by_flow.setdefault(flow, FlowStatus(flow=flow))
        report.outcomes[entry.outcome] = report.outcomes.get(entry.outcome, 0) + 1
        key = f"{entry.outcome}: {reason_category(entry)}"
        report.reasons[key] = report.reasons.get(key, 0) + 1
        report.deferrals += entry.outcome == "deferred"
        report.throttled += is_throttled(entry)
        last[entry.message_key] = entry
    waiting = Counter(flow_of(e.record_key) for e in last.values() if is_pause_wait(e))
    for entry in applied:
        flow = flow_of(entry.record_key)
        if flow is not None and flow in by_flow:
            current = by_flow[flow].last_applied
            by_flow[flow].last_applied = entry.at if current is None or entry.at > current else current
    for flow, report in by_flow.items():
        report.paused = paused.get(flow)
        report.waiting = waiting.get(flow, 0)
        report.reasons = dict(sorted(report.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    queue_reports = [await queue_status(admin, q) for q in queues] if admin is not None else []
    return StatusReport(at=now, since=since, queues=queue_reports,
                        flows=sorted(by_flow.values(), key=lambda f: (f.flow == UNROUTED, f.flow)),
                        truncated=len(entries) >= MAX_WINDOW_ENTRIES)
