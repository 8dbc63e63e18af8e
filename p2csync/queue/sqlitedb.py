"""A small SQLite access layer shared by the embedded queue and the SQLite ledger.

Why it exists: `sqlite3` connections must not be shared between threads, several processes open the same
file, and every operation must be one short transaction. This class hands each thread (and each process,
after a fork) its own connection in WAL mode with a busy timeout, and offers `write()` (BEGIN IMMEDIATE, so
the write lock is taken up front and two writers never deadlock on a lock upgrade) and `read()` (one
consistent snapshot).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

__all__ = ["SqliteDatabase", "to_micros", "from_micros", "utc"]

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
T = TypeVar("T")
PAGE_CACHE_KIB = 512

#: Set while SqliteDatabase.run tries a transaction on the calling thread: connections do not wait for locks then.
_INLINE: ContextVar[bool] = ContextVar("p2c_sqlite_inline", default=False)


class _Busy(Exception):
    """An inline attempt met a lock someone holds: the transaction goes to a worker thread, which may wait."""


def utc(value: datetime) -> datetime:
    """Normalise an aware datetime to UTC; naive datetimes are refused because their zone is a guess."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware datetime (e.g. datetime.now(UTC))")
    return value.astimezone(UTC)


def to_micros(value: datetime) -> int:
    """Integer microseconds since the epoch: exact, and compares correctly in SQL."""
    delta = utc(value) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def from_micros(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


class SqliteDatabase:
    """One SQLite file: per-thread connections, WAL, busy timeout, short transactions.

    Durability is chosen per transaction. WAL with ``synchronous=NORMAL`` (the default here) survives a crash
    of the process: every committed transaction is in the WAL file. Only a crash of the operating system or a
    power loss can roll back the newest transactions, always a suffix of them, in order (SQLite "WAL mode",
    "PRAGMA synchronous"). ``write(durable=True)`` commits with ``FULL`` (the WAL is fsynced before COMMIT
    returns): used where the commit answers someone outside this machine, i.e. a message accepted onto the
    embedded queue. An fsync costs about a millisecond here against 40 microseconds for a NORMAL commit
    (issue 11, figure 1), and a lost suffix of ledger writes or settlements only means a message processed
    again, which the ledger's idempotency already absorbs.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        schema: str,
        busy_timeout: timedelta = timedelta(seconds=30),
        synchronous: Synchronous = "NORMAL",
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = max(0, int(busy_timeout.total_seconds() * 1000))
        self._synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.Lock()
        #: Writers of this process queue here rather than in SQLite's busy handler, which sleeps in steps of
        #: milliseconds however soon the lock frees; other processes still meet the busy timeout.
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._initialise(schema)

    def _initialise(self, schema: str) -> None:
        """Switch to WAL and create the tables. Retried briefly: another process may be doing the same."""
        deadline = time.monotonic() + max(self._busy_ms / 1000, 1.0)
        while True:
            try:
                conn = self.connection()
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(schema)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork: a parent's connection is unusable there). Inside
        ``run``'s attempt on the calling thread, a second connection of this thread that never waits for a lock."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"{self.path} is closed")
        inline = _INLINE.get()
        name = "inline" if inline else "conn"
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is not None and getattr(self._local, f"{name}_pid", None) == pid:
            return conn
        busy_ms = 0 if inline else self._busy_ms
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout={busy_ms}")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        # 512 KiB of page cache per connection (SQLite's default is 2 MB): every transaction here touches a few
        # pages by key, and the default grew the host's RSS with the files (issue 11, figure 5: 3.2 -> 1.3 KB/event).
        conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        conn.row_factory = sqlite3.Row
        setattr(self._local, name, conn)
        setattr(self._local, f"{name}_pid", pid)
        with self._lock:
            self._connections.append(conn)
        return conn

    async def run(self, transaction: Callable[..., T], *args: object) -> T:
        """Run one short transaction (a function doing at most ONE ``write()``) from async code.

        On the calling thread when nobody holds the lock: a NORMAL commit takes tens of microseconds, while a
        worker thread costs a hand-off and then waits for the GIL behind a busy event loop (up to the 5 ms
        switch interval, holding the write lock meanwhile: issue 11's profile found ledger writes queueing
        there). When the lock is held (another thread or process is writing), the attempt gives way at once
        and the transaction runs in a worker thread, which waits with the busy timeout as before, so the event
        loop never waits on a lock. Not for durable writes: an fsync would block the loop."""
        token = _INLINE.set(True)
        try:
            return transaction(*args)
        except _Busy:
            pass
        finally:
            _INLINE.reset(token)
        return await asyncio.to_thread(transaction, *args)

    @contextmanager
    def write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the database's write lock from its first statement; ``durable``: on
        disk (fsynced) when it returns, whatever the database's ``synchronous`` setting."""
        inline = _INLINE.get()
        if inline and durable:
            raise _Busy()  # an fsync must not block the event loop: a worker thread does it
        conn = self.connection()
        upgrade = durable and self._synchronous not in ("FULL", "EXTRA")
        if upgrade:
            conn.execute("PRAGMA synchronous=FULL")  # not allowed inside a transaction: set before BEGIN
        try:
            if not self._write_lock.acquire(blocking=not inline):
                raise _Busy()
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if inline and _is_busy(exc):
                        raise _Busy() from exc
                    raise
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                self._write_lock.release()
        finally:
            if upgrade:
                conn.execute(f"PRAGMA synchronous={self._synchronous}")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: all queries in it see the same snapshot."""
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass
