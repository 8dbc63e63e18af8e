"""``trace``: the whole story of one record from the journal, found by record key, message id, message key
(dedupe key, F&O EventId) or source id (the Dataverse GUID or F&O natural key at the end of a record key)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel

from p2csync.ledger.base import JournalEntry, RecordState
from p2csync.ops.common import flow_of

#: How many of the newest journal entries a search by source id reads.
SCAN_LIMIT = 50_000


class Delivery(BaseModel):
    at: AwareDatetime
    outcome: str
    reason: str | None
    queue: str
    message_id: str
    delivery_count: int
    message_key: str
    record_key: str | None
    version: int | None = None
    target_key: str | None = None
    correlation_id: str | None = None


class RecordTrace(BaseModel):
    record_key: str | None
    flow: str | None
    state: RecordState | None = None
    deliveries: list[Delivery]


class TraceReport(BaseModel):
    query: str
    matched_by: Literal["record key", "message id", "message key", "source id", "nothing"]
    records: list[RecordTrace]


def _delivery(entry: JournalEntry) -> Delivery:
    return Delivery(**entry.model_dump(include=set(Delivery.model_fields)))


async def _find(ledger: object, query: str) -> tuple[str, list[JournalEntry]]:
    journal = ledger.journal_entries  # type: ignore[attr-defined]
    if found := await journal(record_key=query, limit=SCAN_LIMIT):
        return "record key", found
    if found := await journal(message_id=query, limit=SCAN_LIMIT):
        return "message id", found
    if found := await journal(message_key=query, limit=SCAN_LIMIT):
        return "message key", found
    needle = query.strip().strip("{}").lower()
    if not needle:
        return "nothing", []
    newest = await journal(limit=SCAN_LIMIT)
    found = [e for e in newest if (e.record_key or "").lower().endswith(":" + needle)
             or needle in e.message_key.lower()]
    return ("source id", found) if found else ("nothing", [])


async def trace(ledger: object, query: str) -> TraceReport:
    """Every delivery of every record the query names, oldest first, with the record's current state."""
    matched_by, hits = await _find(ledger, query)
    records: list[RecordTrace] = []
    for record_key in dict.fromkeys(e.record_key for e in hits):
        if record_key is None:  # never routed to a record (unreadable, no flow): the messages themselves
            entries = [e for e in hits if e.record_key is None]
            records.append(RecordTrace(record_key=None, flow=None, deliveries=[_delivery(e) for e in entries]))
            continue
        entries = await ledger.journal_entries(record_key=record_key, limit=SCAN_LIMIT)  # type: ignore[attr-defined]
        state = await ledger.record_state(record_key)  # type: ignore[attr-defined]
        records.append(RecordTrace(record_key=record_key, flow=flow_of(record_key), state=state,
                                   deliveries=[_delivery(e) for e in entries]))
    return TraceReport(query=query, matched_by=matched_by, records=records)  # type: ignore[arg-type]
