"""``reconcile <flow>`` and the scheduled catch-up: do both systems still agree, through the flow's mapping?

For every source record (paged in key order, p2csync/ops/sources.py) the flow's own handler runs as a dry run
(p2csync/ops/dryrun.py): it reads the source and the target for real and says what it would write. Drift is:

* ``missing``: the target has no counterpart (never synced, deleted there, or an event was lost);
* ``differs``: the counterpart's fields differ from the mapped source (changed directly in the target, or the
  source changed and its event was lost); the fields are named;
* ``ledger``: the target holds the mapped record but the ledger does not know it (or recorded another hash);
* ``waiting`` / ``error``: the record could not be compared (a missing reference; a mapping or service error).

``fix`` sends a resync message per drifted record (the same path as an event). Where the target was changed
behind the ledger's back, the ledger's hash of "what was last written" is no longer true, and the handler would
skip the record as unchanged: the fix first sets that hash to a marker naming the reconcile run [Inferred], so
the resync writes the mapped record again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from mappings import MappingError, MappingSpec
from p2csync.connectors.errors import ConnectorError
from p2csync.envelopes import parse_change_event, resync_body
from p2csync.ledger.base import JournalEntry, LeaseBusy, RecordState
from p2csync.ops.backfill import send_all
from p2csync.ops.dryrun import DryDataverse, DryFnO, ReadOnlyLedger, Recorder
from p2csync.ops.sources import DEFAULT_PAGE_SIZE, FlowSource, pages
from p2csync.outcomes import Applied, Deferred, Rejected, Skipped

DriftKind = Literal["missing", "differs", "ledger", "waiting", "error"]
#: Records compared at once (each is a few reads of each system).
DEFAULT_CONCURRENCY = 8
FIX_LEASE = timedelta(seconds=30)


class Drift(BaseModel):
    flow: str
    record_key: str
    source: str
    kind: DriftKind
    fields: list[str] = Field(default_factory=list)
    detail: str = ""


class ReconcileReport(BaseModel):
    flow: str
    run: str
    checked: int = 0
    in_sync: int = 0
    filtered: int = 0
    skipped: int = 0
    drift: list[Drift] = Field(default_factory=list)
    fixed: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for d in self.drift:
            found[d.kind] = found.get(d.kind, 0) + 1
        return found


def record_key_of(registry: Any, source: FlowSource, key: dict[str, Any], run: str = "check") -> tuple[Any, Any]:
    """(handler, event) for a resync of ``key``: the registry routes it as the runtime would."""
    event = parse_change_event(resync_body(source.request(key, run)))
    handler = registry.route(event)
    if handler is None:
        raise ValueError(f"no flow handler takes table {source.table!r} (flow {source.flow})")
    return handler, event


async def check_record(ctx: Any, registry: Any, source: FlowSource, key: dict[str, Any], run: str) -> Drift | str:
    """One record's drift, or "in_sync" / "filtered" / "skipped"."""
    handler, event = record_key_of(registry, source, key, run)
    record_key = handler.record_key(event)
    described = event.record_id or record_key
    state = await ctx.ledger.record_state(record_key)
    recorder = Recorder()
    dry = replace(ctx, dataverse=DryDataverse(ctx.dataverse, recorder), fno=DryFnO(ctx.fno, recorder),
                  ledger=ReadOnlyLedger(ctx.ledger))

    def drift(kind: DriftKind, detail: str, fields: list[str] | None = None) -> Drift:
        return Drift(flow=source.flow, record_key=record_key, source=str(described), kind=kind,
                     fields=fields or [], detail=detail[:500])

    try:
        outcome = await handler.sync(event, RecordState(), dry)
    except (ConnectorError, MappingError) as exc:
        return drift("error", f"{type(exc).__name__}: {exc}")
    if isinstance(outcome, Deferred):
        return drift("waiting", outcome.reason)
    if isinstance(outcome, Rejected):
        return drift("error", f"{outcome.reason}: {outcome.description}")
    if isinstance(outcome, Skipped):
        return "filtered" if outcome.reason.startswith("filtered out") else "skipped"
    assert isinstance(outcome, Applied)
    if recorder.changes:
        main = recorder.changes[0]
        missing = main.action == "create"
        fields = [] if missing else sorted({f for c in recorder.changes for f in c.fields})
        return drift("missing" if missing else "differs", "; ".join(c.text() for c in recorder.changes), fields)
    if state.payload_hash is None:
        return drift("ledger", "the target holds the mapped record; the ledger has no record of writing it")
    if outcome.payload_hash and outcome.payload_hash != state.payload_hash:
        return drift("ledger", "the target holds the mapped record; the ledger recorded another write")
    return "in_sync"


async def reconcile(
    spec: MappingSpec,
    ctx: Any,
    registry: Any,
    *,
    fix: bool = False,
    transport: Any = None,
    queue: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    where: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> ReconcileReport:
    """Compare every source record of the flow with the target; with ``fix``, resync the drifted ones.

    ``ctx`` is the runtime's FlowContext (real connectors, ledger, mappings); ``where`` an extra ``$filter``
    on the source (e.g. one company)."""
    source = FlowSource.of(spec)
    run = f"reconcile-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    report = ReconcileReport(flow=spec.flow, run=run)
    started = time.monotonic()
    client = ctx.dataverse if source.system == "dataverse" else ctx.fno
    slots = asyncio.Semaphore(concurrency)

    async def one(key: dict[str, Any]) -> Drift | str:
        async with slots:
            return await check_record(ctx, registry, source, key, run)

    async for page in pages(client, source, page_size=page_size, where=where):
        results = await asyncio.gather(*(one(source.key_of(row)) for row in page))
        for result in results:
            report.checked += 1
            if isinstance(result, Drift):
                report.drift.append(result)
            elif result == "in_sync":
                report.in_sync += 1
            elif result == "filtered":
                report.filtered += 1
            else:
                report.skipped += 1
        if progress:
            progress(len(page), None)
    if fix:
        report.fixed = await fix_drift(report, source, ctx.ledger, transport, queue)
    report.seconds = time.monotonic() - started
    return report


async def fix_drift(report: ReconcileReport, source: FlowSource, ledger: Any, transport: Any,
                    queue: str | None) -> int:
    """Resync every drifted record that a write can repair (not those waiting for a reference or in error:
    their own messages say why). Returns how many were sent."""
    if transport is None or queue is None:
        raise ValueError("reconcile --fix needs the queue transport")
    fixable = [d for d in report.drift if d.kind in ("missing", "differs", "ledger")]
    messages = []
    for drift in fixable:
        await forget_written(ledger, drift, report.run)
        key = _key_from(source, drift)
        messages.append(source.message(key, report.run))
    if messages:
        await send_all(transport, queue, messages)
    return len(messages)


async def forget_written(ledger: Any, drift: Drift, run: str) -> None:
    """Mark the ledger's hash of the record's last write as no longer true, so its resync writes again."""
    owner = f"{run}:fix"
    try:
        await ledger.acquire(drift.record_key, owner, FIX_LEASE)
    except LeaseBusy:
        return  # a worker is syncing it right now; its write is the newest state anyway
    reason = f"reconcile {run}: {drift.kind} in the target ({drift.detail[:200]})"
    await ledger.commit(drift.record_key, owner, message_key=f"{run}:{drift.record_key}", outcome="skipped",
                        reason=reason, version=None, payload_hash=f"drift:{run}")
    await ledger.journal(JournalEntry(message_key=f"{run}:{drift.record_key}", record_key=drift.record_key,
                                      queue="-", message_id=run, delivery_count=0, outcome="reconciled",
                                      reason=reason))


def _key_from(source: FlowSource, drift: Drift) -> dict[str, Any]:
    if source.system == "dataverse":
        return {source.key[0]: drift.source}
    import json

    return json.loads(drift.source)
