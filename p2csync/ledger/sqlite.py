"""The SQLite ledger: the local (and test) implementation of `Ledger`.

Why this shape: each method is one short transaction; lease acquisition and commit use BEGIN IMMEDIATE, so
of two processes racing on one file exactly one sees the lease free and takes it. The work runs on the
calling thread, or in a worker thread when the file is locked (`SqliteDatabase.run`), so an event loop never
waits on the file lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

from p2csync.ledger.base import (
    Clock,
    JournalEntry,
    LeaseBusy,
    LeaseLost,
    MessageEntry,
    RecordState,
)
from p2csync.queue.sqlitedb import SqliteDatabase, from_micros, to_micros

__all__ = ["SqliteLedger"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_key   TEXT PRIMARY KEY,
    version      INTEGER,
    payload_hash TEXT,
    updated_at   INTEGER,
    lease_owner  TEXT,
    lease_until  INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS message_outcomes (
    record_key  TEXT NOT NULL,
    message_key TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (record_key, message_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_key    TEXT NOT NULL,
    record_key     TEXT,
    queue          TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    delivery_count INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    reason         TEXT,
    detail         TEXT,
    at             INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_message ON journal (message_key);
CREATE INDEX IF NOT EXISTS journal_by_record ON journal (record_key);
CREATE INDEX IF NOT EXISTS journal_by_message_id ON journal (message_id);
CREATE INDEX IF NOT EXISTS journal_by_time ON journal (at);
CREATE TABLE IF NOT EXISTS shared_values (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    target_key  TEXT PRIMARY KEY,
    record_key  TEXT NOT NULL,
    claimed_at  INTEGER NOT NULL
) WITHOUT ROWID;
"""
#: Columns added after the first release: (table, column, type). Added to older files at open.
MIGRATIONS = (
    ("records", "target_key", "TEXT"),
    ("journal", "correlation_id", "TEXT"),
    ("journal", "version", "INTEGER"),
    ("journal", "target_key", "TEXT"),
)


def _system_clock() -> datetime:
    return datetime.now(UTC)


def _state(row: sqlite3.Row | None) -> RecordState:
    if row is None:
        return RecordState()
    updated = row["updated_at"]
    return RecordState(
        version=row["version"],
        payload_hash=row["payload_hash"],
        updated_at=None if updated is None else from_micros(updated),
        target_key=row["target_key"],
    )


class SqliteLedger:
    """`Ledger` (and `LedgerQueries`) on one SQLite file, shared safely by threads and processes."""

    def __init__(
        self, path: str | Path, *, clock: Clock | None = None, busy_timeout: timedelta = timedelta(seconds=30)
    ) -> None:
        self._clock = clock or _system_clock
        self._db = SqliteDatabase(path, schema=SCHEMA, busy_timeout=busy_timeout)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a file written by an older release lacks (idempotent; racing processes are fine)."""
        with self._db.write() as conn:
            for table, column, kind in MIGRATIONS:
                present = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @property
    def path(self) -> Path:
        return self._db.path

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteLedger:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # -- Ledger -------------------------------------------------------------------------------------
    async def acquire(self, record_key: str, owner: str, lease: timedelta) -> RecordState:
        """Take (or, for the same owner, extend) the lease; LeaseBusy while another owner's lease is live."""
        if lease <= timedelta(0):
            raise ValueError("lease must be positive")
        if not owner:
            raise ValueError("owner must not be empty")
        return await self._db.run(self._acquire, record_key, owner, lease)

    def _acquire(self, record_key: str, owner: str, lease: timedelta) -> RecordState:
        now = self._clock()
        with self._db.write() as conn:
            row = conn.execute("SELECT * FROM records WHERE record_key = ?", (record_key,)).fetchone()
            if (
                row is not None
                and row["lease_owner"] is not None
                and row["lease_owner"] != owner
                and row["lease_until"] > to_micros(now)
            ):
                raise LeaseBusy(record_key, row["lease_owner"], from_micros(row["lease_until"]))
            conn.execute(
                "INSERT INTO records (record_key, lease_owner, lease_until) VALUES (?, ?, ?) "
                "ON CONFLICT (record_key) DO UPDATE SET lease_owner = excluded.lease_owner, "
                "lease_until = excluded.lease_until",
                (record_key, owner, to_micros(now + lease)),
            )
        return _state(row)

    async def message_outcome(self, record_key: str, message_key: str) -> MessageEntry | None:
        return await self._db.run(self._message_outcome, record_key, message_key)

    def _message_outcome(self, record_key: str, message_key: str) -> MessageEntry | None:
        row = (
            self._db.connection()
            .execute(
                "SELECT outcome, reason, recorded_at FROM message_outcomes "
                "WHERE record_key = ? AND message_key = ?",
                (record_key, message_key),
            )
            .fetchone()
        )
        if row is None:
            return None
        return MessageEntry(
            message_key=message_key,
            outcome=row["outcome"],
            reason=row["reason"],
            recorded_at=from_micros(row["recorded_at"]),
        )

    async def commit(
        self,
        record_key: str,
        owner: str,
        *,
        message_key: str,
        outcome: str,
        reason: str | None,
        version: int | None,
        payload_hash: str | None,
        target_key: str | None = None,
        replace_version: bool = False,
    ) -> None:
        """Record the outcome (replacing an earlier one for the same message), move the record state
        forward, release the lease; all or nothing, and only while `owner` is the lease holder.

        An expired lease that nobody else has taken still belongs to its owner: no one can have written
        the record in between, so committing is safe."""
        await self._db.run(
            self._commit, record_key, owner, message_key, outcome, reason, version, payload_hash, target_key,
            replace_version,
        )

    def _commit(
        self,
        record_key: str,
        owner: str,
        message_key: str,
        outcome: str,
        reason: str | None,
        version: int | None,
        payload_hash: str | None,
        target_key: str | None = None,
        replace_version: bool = False,
    ) -> None:
        now = to_micros(self._clock())
        with self._db.write() as conn:
            row = conn.execute("SELECT * FROM records WHERE record_key = ?", (record_key,)).fetchone()
            if row is None or row["lease_owner"] != owner:
                raise LeaseLost(record_key, owner)
            conn.execute(
                "INSERT INTO message_outcomes (record_key, message_key, outcome, reason, recorded_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (record_key, message_key) DO UPDATE SET "
                "outcome = excluded.outcome, reason = excluded.reason, recorded_at = excluded.recorded_at",
                (record_key, message_key, outcome, reason, now),
            )
            stored = row["version"]
            if version is not None and (stored is None or version >= stored or replace_version):
                conn.execute(
                    "UPDATE records SET version = ?, payload_hash = ?, updated_at = ? WHERE record_key = ?",
                    (version, payload_hash, now, record_key),
                )
            elif version is None and payload_hash is not None:
                conn.execute(
                    "UPDATE records SET payload_hash = ?, updated_at = ? WHERE record_key = ?",
                    (payload_hash, now, record_key),
                )
            # else: nothing new, or an older version: the newer stored state stays.
            if target_key is not None:
                conn.execute("UPDATE records SET target_key = ? WHERE record_key = ?", (target_key, record_key))
            conn.execute(
                "UPDATE records SET lease_owner = NULL, lease_until = NULL WHERE record_key = ?",
                (record_key,),
            )

    async def renew(self, record_key: str, owner: str, lease: timedelta) -> None:
        """Extend the lease while `owner` still holds it (an expired lease nobody took counts); LeaseLost
        otherwise."""
        if lease <= timedelta(0):
            raise ValueError("lease must be positive")
        await self._db.run(self._renew, record_key, owner, lease)

    def _renew(self, record_key: str, owner: str, lease: timedelta) -> None:
        with self._db.write() as conn:
            updated = conn.execute(
                "UPDATE records SET lease_until = ? WHERE record_key = ? AND lease_owner = ?",
                (to_micros(self._clock() + lease), record_key, owner),
            ).rowcount
        if not updated:
            raise LeaseLost(record_key, owner)

    async def claim(self, target_key: str, record_key: str, *, previous: str | None = None) -> str:
        """See `Ledger.claim`: one transaction, so of two records racing for a target exactly one gets it."""
        return await self._db.run(self._claim, target_key, record_key, previous)

    def _claim(self, target_key: str, record_key: str, previous: str | None) -> str:
        with self._db.write() as conn:
            row = conn.execute("SELECT record_key FROM claims WHERE target_key = ?", (target_key,)).fetchone()
            if row is not None and row["record_key"] != record_key:
                return str(row["record_key"])
            if row is None:
                conn.execute(
                    "INSERT INTO claims (target_key, record_key, claimed_at) VALUES (?, ?, ?)",
                    (target_key, record_key, to_micros(self._clock())),
                )
            if previous is not None and previous != target_key:
                conn.execute(
                    "DELETE FROM claims WHERE target_key = ? AND record_key = ?", (previous, record_key)
                )
        return record_key

    async def unclaim(self, target_key: str, record_key: str) -> bool:
        return await self._db.run(self._unclaim, target_key, record_key)

    def _unclaim(self, target_key: str, record_key: str) -> bool:
        with self._db.write() as conn:
            deleted = conn.execute(
                "DELETE FROM claims WHERE target_key = ? AND record_key = ?", (target_key, record_key)
            ).rowcount
        return bool(deleted)

    async def release(self, record_key: str, owner: str) -> None:
        """Drop the lease if `owner` holds it; a no-op otherwise (it may have been taken over already)."""
        await self._db.run(self._release, record_key, owner)

    def _release(self, record_key: str, owner: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE records SET lease_owner = NULL, lease_until = NULL "
                "WHERE record_key = ? AND lease_owner = ?",
                (record_key, owner),
            )

    async def journal(self, entry: JournalEntry) -> None:
        await self._db.run(self._journal, entry)

    def _journal(self, entry: JournalEntry) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO journal (message_key, record_key, queue, message_id, delivery_count, outcome, "
                "reason, detail, at, correlation_id, version, target_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.message_key,
                    entry.record_key,
                    entry.queue,
                    entry.message_id,
                    entry.delivery_count,
                    entry.outcome,
                    entry.reason,
                    entry.detail,
                    to_micros(entry.at),
                    entry.correlation_id,
                    entry.version,
                    entry.target_key,
                ),
            )

    async def get_value(self, key: str) -> str | None:
        return await self._db.run(self._get_value, key)

    def _get_value(self, key: str) -> str | None:
        row = self._db.connection().execute("SELECT value FROM shared_values WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    async def put_value(self, key: str, value: str | None) -> None:
        await self._db.run(self._put_value, key, value)

    def _put_value(self, key: str, value: str | None) -> None:
        with self._db.write() as conn:
            if value is None:
                conn.execute("DELETE FROM shared_values WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO shared_values (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    (key, value, to_micros(self._clock())),
                )

    async def list_values(self, prefix: str = "") -> dict[str, str]:
        return await asyncio.to_thread(self._list_values, prefix)

    def _list_values(self, prefix: str) -> dict[str, str]:
        rows = self._db.connection().execute("SELECT key, value FROM shared_values ORDER BY key").fetchall()
        return {r["key"]: r["value"] for r in rows if str(r["key"]).startswith(prefix)}

    # -- LedgerQueries ------------------------------------------------------------------------------
    async def record_state(self, record_key: str) -> RecordState:
        return await asyncio.to_thread(self._record_state, record_key)

    def _record_state(self, record_key: str) -> RecordState:
        row = (
            self._db.connection()
            .execute(
                "SELECT version, payload_hash, updated_at, target_key FROM records WHERE record_key = ?",
                (record_key,),
            )
            .fetchone()
        )
        return _state(row)

    async def claim_owner(self, target_key: str) -> str | None:
        return await asyncio.to_thread(self._claim_owner, target_key)

    def _claim_owner(self, target_key: str) -> str | None:
        row = (
            self._db.connection()
            .execute("SELECT record_key FROM claims WHERE target_key = ?", (target_key,))
            .fetchone()
        )
        return None if row is None else str(row["record_key"])

    async def journal_entries(
        self,
        message_key: str | None = None,
        outcome: str | None = None,
        *,
        record_key: str | None = None,
        message_id: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[JournalEntry]:
        """The newest `limit` entries matching every given filter, returned oldest first."""
        return await asyncio.to_thread(self._journal_entries, message_key, outcome, record_key, message_id,
                                       since, limit)

    def _journal_entries(
        self, message_key: str | None, outcome: str | None, record_key: str | None, message_id: str | None,
        since: datetime | None, limit: int,
    ) -> list[JournalEntry]:
        filters: dict[str, object] = {"message_key": message_key, "outcome": outcome, "record_key": record_key,
                                      "message_id": message_id}
        clauses = [f"{column} = :{column}" for column, value in filters.items() if value is not None]
        if since is not None:
            clauses.append("at >= :since")
            filters["since"] = to_micros(since)
        where = " AND ".join(clauses)
        rows = (
            self._db.connection()
            .execute(
                f"SELECT * FROM journal {'WHERE ' + where if where else ''} ORDER BY id DESC LIMIT :limit",
                {**filters, "limit": limit},
            )
            .fetchall()
        )
        return [
            JournalEntry(
                message_key=r["message_key"],
                record_key=r["record_key"],
                queue=r["queue"],
                message_id=r["message_id"],
                delivery_count=r["delivery_count"],
                outcome=r["outcome"],
                reason=r["reason"],
                detail=r["detail"],
                at=from_micros(r["at"]),
                correlation_id=r["correlation_id"],
                version=r["version"],
                target_key=r["target_key"],
            )
            for r in reversed(rows)
        ]
