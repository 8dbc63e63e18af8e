"""Table layout of the embedded queue and the row <-> model conversion (kept apart from the queue logic).

One table holds every message of every queue; `dead_lettered` says whether a row sits in the queue's
dead-letter sub-queue. Times are integer microseconds since the epoch (UTC). A second table remembers
accepted MessageIds for duplicate detection.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta

from p2csync.queue.base import MessageState, PropertyValue, ReceivedMessage
from p2csync.queue.sqlitedb import from_micros

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    sequence_number               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue                         TEXT    NOT NULL,
    dead_lettered                 INTEGER NOT NULL DEFAULT 0,
    message_id                    TEXT    NOT NULL,
    body                          BLOB    NOT NULL,
    content_type                  TEXT,
    subject                       TEXT,
    correlation_id                TEXT,
    application_properties        TEXT    NOT NULL,
    scheduled_at                  INTEGER,           -- requested scheduled enqueue time, if any
    enqueued_at                   INTEGER NOT NULL,  -- when the message is (or was) visible
    time_to_live                  INTEGER,           -- effective TTL in microseconds
    expires_at                    INTEGER,
    delivery_count                INTEGER NOT NULL DEFAULT 0,
    lock_token                    TEXT UNIQUE,
    locked_until                  INTEGER,
    dead_letter_reason            TEXT,
    dead_letter_error_description TEXT,
    dead_letter_source            TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, dead_lettered, sequence_number);
CREATE TABLE IF NOT EXISTS accepted_ids (
    queue           TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    accepted_at     INTEGER NOT NULL,
    sequence_number INTEGER NOT NULL,
    PRIMARY KEY (queue, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS accepted_ids_by_time ON accepted_ids (accepted_at);
"""

COLUMNS = (
    "sequence_number, queue, dead_lettered, message_id, body, content_type, subject, correlation_id, "
    "application_properties, scheduled_at, enqueued_at, time_to_live, expires_at, delivery_count, "
    "lock_token, locked_until, dead_letter_reason, dead_letter_error_description, dead_letter_source"
)


def dump_properties(properties: dict[str, PropertyValue]) -> str:
    """JSON keeps str/int/float/bool apart (1, 1.0 and true round-trip to their own types)."""
    return json.dumps(properties, separators=(",", ":"), sort_keys=True)


def to_message(row: sqlite3.Row, now_us: int, *, holder_view: bool) -> ReceivedMessage:
    """Build the model of one row. Only the receiver (`holder_view`) gets the lock token; a peek shows
    when a live lock ends but never the token, so peeking cannot be used to settle someone else's message."""
    locked = row["locked_until"] is not None and row["locked_until"] > now_us
    return ReceivedMessage(
        queue=row["queue"],
        sequence_number=row["sequence_number"],
        message_id=row["message_id"],
        body=bytes(row["body"]),
        content_type=row["content_type"],
        subject=row["subject"],
        correlation_id=row["correlation_id"],
        application_properties=json.loads(row["application_properties"]),
        scheduled_enqueue_time_utc=_dt(row["scheduled_at"]),
        time_to_live=None if row["time_to_live"] is None else timedelta(microseconds=row["time_to_live"]),
        delivery_count=row["delivery_count"],
        enqueued_time_utc=from_micros(row["enqueued_at"]),
        expires_at_utc=_dt(row["expires_at"]),
        lock_token=row["lock_token"] if holder_view else None,
        locked_until_utc=_dt(row["locked_until"]) if holder_view or locked else None,
        dead_letter_reason=row["dead_letter_reason"],
        dead_letter_error_description=row["dead_letter_error_description"],
        dead_letter_source=row["dead_letter_source"],
        state=MessageState.SCHEDULED if row["enqueued_at"] > now_us else MessageState.ACTIVE,
    )


def _dt(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)
