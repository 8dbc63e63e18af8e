"""Per-transaction durability of the SQLite files (p2csync.queue.sqlitedb): WAL with synchronous=NORMAL for
ledger writes and settlements, an fsynced (FULL) commit for a message accepted onto the embedded queue."""

from __future__ import annotations

from pathlib import Path

from p2csync.queue.base import OutboundMessage
from p2csync.queue.embedded import EmbeddedQueue
from p2csync.queue.sqlitedb import SqliteDatabase


def traced(db: SqliteDatabase) -> list[str]:
    statements: list[str] = []
    db.connection().set_trace_callback(statements.append)
    return statements


def synchronous(db: SqliteDatabase) -> int:
    return int(db.connection().execute("PRAGMA synchronous").fetchone()[0])


def test_a_durable_write_commits_with_full_and_goes_back_to_normal(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "x.sqlite", schema="CREATE TABLE IF NOT EXISTS t (a INTEGER);")
    assert synchronous(db) == 1  # NORMAL
    statements = traced(db)
    with db.write(durable=True) as conn:
        assert synchronous(db) == 2  # FULL while the transaction commits
        conn.execute("INSERT INTO t VALUES (1)")
    assert synchronous(db) == 1
    assert statements.index("PRAGMA synchronous=FULL") < statements.index("BEGIN IMMEDIATE") \
        < statements.index("COMMIT") < statements.index("PRAGMA synchronous=NORMAL")


def test_a_failed_durable_write_rolls_back_and_still_restores_normal(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "x.sqlite", schema="CREATE TABLE IF NOT EXISTS t (a INTEGER);")
    try:
        with db.write(durable=True) as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert synchronous(db) == 1
    assert db.connection().execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0


def test_the_queue_fsyncs_what_it_accepts_and_nothing_else(tmp_path: Path) -> None:
    queue = EmbeddedQueue(tmp_path / "q.sqlite")
    statements = traced(queue._db)
    queue.send("sales-events", OutboundMessage(body=b"{}", message_id="m1"))
    assert statements.count("PRAGMA synchronous=FULL") == 1
    statements.clear()
    [message] = queue.receive("sales-events", 1)
    queue.complete(message.lock_token or "")
    assert "PRAGMA synchronous=FULL" not in statements  # settlements ride on the next fsync


async def test_run_commits_on_the_calling_thread_when_the_file_is_free(tmp_path: Path) -> None:
    import threading

    db = SqliteDatabase(tmp_path / "x.sqlite", schema="CREATE TABLE IF NOT EXISTS t (a INTEGER);")

    def insert() -> int:
        with db.write() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
        return threading.get_ident()

    assert await db.run(insert) == threading.get_ident()  # no hand-off to a worker thread


async def test_run_gives_way_to_a_worker_thread_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    import asyncio
    import sqlite3
    import threading

    db = SqliteDatabase(tmp_path / "x.sqlite", schema="CREATE TABLE IF NOT EXISTS t (a INTEGER);")
    other = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None)  # another process, as far as SQLite knows
    other.execute("BEGIN IMMEDIATE")
    threads: list[int] = []

    def insert() -> None:
        with db.write() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
        threads.append(threading.get_ident())

    pending = asyncio.ensure_future(db.run(insert))
    await asyncio.sleep(0.2)
    assert not pending.done()  # waiting with the busy timeout, in a worker thread: the event loop runs on
    other.execute("COMMIT")
    await asyncio.wait_for(pending, 10)
    assert threads and threads[0] != threading.get_ident()
    assert db.connection().execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1  # written once, not twice


async def test_a_durable_write_never_runs_on_the_event_loop(tmp_path: Path) -> None:
    import threading

    db = SqliteDatabase(tmp_path / "x.sqlite", schema="CREATE TABLE IF NOT EXISTS t (a INTEGER);")

    def insert() -> int:
        with db.write(durable=True) as conn:
            conn.execute("INSERT INTO t VALUES (1)")
        return threading.get_ident()

    assert await db.run(insert) != threading.get_ident()  # an fsync would block the loop


async def test_concurrent_sends_share_durable_writes_and_each_waits_for_its_own(tmp_path: Path) -> None:
    import asyncio

    from p2csync.queue.embedded import EmbeddedTransport
    from p2csync.queue.sizing import MessageSizeExceeded

    queue = EmbeddedQueue(tmp_path / "q.sqlite", max_message_bytes=64 * 1024)
    groups: list[int] = []
    write = queue.send_each

    def counted(items: list[tuple[str, OutboundMessage]]) -> list[int | None]:
        groups.append(len(items))
        return write(items)

    queue.send_each = counted  # type: ignore[method-assign]
    transport = EmbeddedTransport(queue)
    await asyncio.gather(*(transport.send("sales-events", OutboundMessage(body=b"{}", message_id=f"m{i}"))
                           for i in range(20)))
    assert sum(groups) == 20 and len(groups) < 20  # one fsync for many
    assert queue.counts("sales-events").active == 20  # every sender returned after its message was on disk
    too_large = OutboundMessage(body=b"x" * (70 * 1024), message_id="big")
    results = await asyncio.gather(transport.send("sales-events", too_large),
                                   transport.send("sales-events", OutboundMessage(body=b"{}", message_id="ok")),
                                   return_exceptions=True)
    assert isinstance(results[0], MessageSizeExceeded) and results[1] is None  # a message too large fails alone


def test_each_connection_keeps_a_small_page_cache(tmp_path: Path) -> None:
    from p2csync.queue.sqlitedb import PAGE_CACHE_KIB

    db = SqliteDatabase(tmp_path / "x.sqlite", schema="CREATE TABLE IF NOT EXISTS t (a INTEGER);")
    assert db.connection().execute("PRAGMA cache_size").fetchone()[0] == -PAGE_CACHE_KIB  # KiB, not pages
