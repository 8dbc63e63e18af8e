"""``backfill <flow>``: the initial sync. Pages the flow's source in key order and puts one resync message per
record on the flow's queue; the runtime applies them through the flow's handler, exactly as events (bounded by
the trigger's concurrency, deduplicated, leased, deferred and dead-lettered the same way).

Why enqueue rather than sync in this process: it is the one path every record takes anyway, it survives this
process being killed (what is on the queue is applied whatever happens here), and the queue's consumers, not
an operator's laptop, set the pace. A checkpoint (the last key sent, in the ledger's shared values) is saved
after every batch, so a killed run resumes after it under the same run id: the messages of a batch that was
in flight are sent again with the same MessageIds and dedupe keys, so each record is still synced once.
"""

from __future__ import annotations

import asyncio
import csv
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mappings import MappingSpec
from p2csync.ledger.base import JournalEntry
from p2csync.ops.sources import DEFAULT_PAGE_SIZE, FlowSource, count, pages
from p2csync.queue.base import OutboundMessage
from p2csync.records import record_from_webapi

#: Records sent between two checkpoints. [Inferred] small enough that a kill repeats little, large enough that
#: the checkpoint write is noise next to the sends.
DEFAULT_BATCH = 200
#: Sends in flight at once to a queue without a batch send (Service Bus).
SEND_CONCURRENCY = 16
FINAL = ("applied", "skipped", "rejected")


class Checkpoint(BaseModel):
    """A backfill run's progress, kept in the ledger under ``backfill:<flow>``."""

    flow: str
    run: str
    started_at: datetime
    updated_at: datetime
    #: The key of the last record sent; the next batch starts after it.
    after: dict[str, Any] | None = None
    sent: int = 0
    done: bool = False


class BackfillError(BaseModel):
    """One record that could not be sent, or whose resync ended rejected."""

    record: str
    stage: str  # "read" (the source row), "send" (the queue), "apply" (the handler's outcome)
    reason: str
    description: str = ""


class BackfillReport(BaseModel):
    flow: str
    run: str
    queue: str
    started_at: datetime
    resumed: bool
    dry_run: bool = False
    total: int | None = None
    sent: int = 0
    seconds: float = 0.0
    #: Dry run: what a run would do (rows read, filtered out, new, already in the ledger).
    would: dict[str, int] = Field(default_factory=dict)
    #: After ``wait_applied``: final outcomes by kind, and how long until the last one.
    outcomes: dict[str, int] = Field(default_factory=dict)
    applied_seconds: float | None = None
    errors: list[BackfillError] = Field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def checkpoint_key(flow: str) -> str:
    return f"backfill:{flow}"


async def load_checkpoint(ledger: Any, flow: str) -> Checkpoint | None:
    text = await ledger.get_value(checkpoint_key(flow))
    return Checkpoint.model_validate_json(text) if text else None


class ErrorLog:
    """Every error, appended to a CSV as it happens (a killed run keeps what it found) and kept for the report."""

    COLUMNS = ("flow", "run", "record", "stage", "reason", "description")

    def __init__(self, path: Path | None, flow: str, run: str) -> None:
        self.path, self.flow, self.run = path, flow, run
        self.errors: list[BackfillError] = []

    def add(self, error: BackfillError) -> None:
        """Append one error; the file (with its header) is made by the first one: no errors, no file."""
        self.errors.append(error)
        if self.path is not None:
            if not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("w", newline="", encoding="utf-8") as handle:
                    csv.writer(handle).writerow(self.COLUMNS)
            with self.path.open("a", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow([self.flow, self.run, error.record, error.stage, error.reason,
                                             error.description])


async def send_all(transport: Any, queue: str, messages: Sequence[OutboundMessage]) -> None:
    """Send messages: in one transaction on the embedded queue, else a few at a time."""
    embedded = getattr(transport, "queue", None)
    if embedded is not None and hasattr(embedded, "send_many"):
        await asyncio.to_thread(embedded.send_many, queue, list(messages))
        return
    slots = asyncio.Semaphore(SEND_CONCURRENCY)

    async def one(message: OutboundMessage) -> None:
        async with slots:
            await transport.send(queue, message)

    await asyncio.gather(*(one(m) for m in messages))


def queue_of(spec: MappingSpec, settings: Any) -> str:
    """Dataverse sources are on the Sales queue, F&O sources on the F&O queue, as their events."""
    return settings.sales_events_queue if spec.source.system == "dataverse" else settings.fno_events_queue


async def backfill(
    spec: MappingSpec,
    source_client: Any,
    transport: Any,
    ledger: Any,
    queue: str,
    *,
    restart: bool = False,
    dry_run: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
    batch: int = DEFAULT_BATCH,
    errors_csv: Path | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    with_total: bool = True,
    registry: Any = None,
) -> BackfillReport:
    """Send a resync for every source record of ``spec``'s flow, resuming an unfinished run unless ``restart``.

    ``progress(advance, total)`` is called with the total first (``advance`` 0), then per batch. A dry run
    reads the rows with the mapping's columns and counts what a run would do, sending and saving nothing."""
    source = FlowSource.of(spec)
    now = datetime.now(UTC)
    checkpoint = None if restart else await load_checkpoint(ledger, spec.flow)
    resumed = checkpoint is not None and not checkpoint.done
    if checkpoint is None or checkpoint.done:
        checkpoint = Checkpoint(flow=spec.flow, run=f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", started_at=now,
                                updated_at=now)
    report = BackfillReport(flow=spec.flow, run=checkpoint.run, queue=queue, started_at=checkpoint.started_at,
                            resumed=resumed, dry_run=dry_run)
    errors = ErrorLog(errors_csv, spec.flow, checkpoint.run)
    if with_total:
        report.total = checkpoint.sent + await count(source_client, source, after=checkpoint.after,
                                                     page_size=page_size)
    if progress:
        progress(checkpoint.sent if resumed else 0, report.total)
    started = time.monotonic()
    if dry_run:
        report.would = await _dry_run(spec, source, source_client, ledger, registry, page_size, errors, progress)
    else:
        report.sent = checkpoint.sent
        async for page in pages(source_client, source, after=checkpoint.after, page_size=page_size):
            for start in range(0, len(page), batch):
                rows = page[start:start + batch]
                messages = []
                for row in rows:
                    try:
                        messages.append(source.message(source.key_of(row), checkpoint.run))
                    except (KeyError, ValueError) as exc:
                        errors.add(BackfillError(record=str(row)[:200], stage="read", reason="UnreadableKey",
                                                 description=str(exc)))
                await send_all(transport, queue, messages)
                checkpoint.after = source.key_of(rows[-1]) if messages else checkpoint.after
                checkpoint.sent += len(messages)
                checkpoint.updated_at = datetime.now(UTC)
                await ledger.put_value(checkpoint_key(spec.flow), checkpoint.model_dump_json())
                report.sent = checkpoint.sent
                if progress:
                    progress(len(rows), report.total)
        checkpoint.done = True
        await ledger.put_value(checkpoint_key(spec.flow), checkpoint.model_dump_json())
    report.seconds = time.monotonic() - started
    report.errors = errors.errors
    return report


async def _dry_run(spec: MappingSpec, source: FlowSource, client: Any, ledger: Any, registry: Any, page_size: int,
                   errors: ErrorLog, progress: Callable[[int, int | None], None] | None) -> dict[str, int]:
    """Read every row with the mapping's columns: how many the filter drops, how many are new to the ledger."""
    from p2csync.ops.reconcile import record_key_of

    would = {"rows": 0, "filtered out": 0, "new": 0, "in ledger": 0}
    columns = [c for c in spec.source_columns() if "." not in c] if source.system == "fno" else None
    async for page in pages(client, source, select=columns, page_size=page_size):
        for row in page:
            would["rows"] += 1
            record = record_from_webapi(row) if source.system == "dataverse" else row
            try:
                why = spec.filter_reason(record)
            except Exception as exc:  # a row the filter cannot read is an error a run would meet too
                errors.add(BackfillError(record=str(source.key_of(row)), stage="read", reason="FilterFailed",
                                         description=str(exc)))
                continue
            if why:
                would["filtered out"] += 1
                continue
            handler, event = record_key_of(registry, source, source.key_of(row))
            state = await ledger.record_state(handler.record_key(event))
            would["in ledger" if state.payload_hash else "new"] += 1
        if progress:
            progress(len(page), None)
    return would


async def wait_applied(ledger: Any, report: BackfillReport, *, timeout: float,
                       errors_csv: Path | None = None, poll: float = 1.0,
                       progress: Callable[[int, int | None], None] | None = None) -> BackfillReport:
    """Follow the run's records through the journal until each has a final outcome (or ``timeout``); rejected
    ones are added to the errors (and the CSV). Counts distinct records: a resent duplicate counts once."""
    prefix = f"resync:{report.run}:{report.flow}:"
    expected = report.sent
    started = time.monotonic()
    final: dict[str, JournalEntry] = {}
    shown = 0
    while True:
        entries = await ledger.journal_entries(since=report.started_at, limit=10_000_000)
        for entry in entries:
            if entry.message_key.startswith(prefix) and entry.outcome in FINAL:
                final.setdefault(entry.message_key, entry)
        if progress and len(final) > shown:
            progress(len(final) - shown, expected)
            shown = len(final)
        if len(final) >= expected or time.monotonic() - started > timeout:
            break
        await asyncio.sleep(poll)
    report.applied_seconds = time.monotonic() - started
    report.outcomes = {}
    log = ErrorLog(errors_csv, report.flow, report.run)
    for entry in final.values():
        report.outcomes[entry.outcome] = report.outcomes.get(entry.outcome, 0) + 1
        if entry.outcome == "rejected":
            log.add(BackfillError(record=entry.record_key or entry.message_key, stage="apply",
                                  reason=(entry.reason or "rejected")[:200], description=entry.reason or ""))
    if len(final) < expected:
        report.outcomes["pending"] = expected - len(final)
    report.errors += log.errors
    return report
