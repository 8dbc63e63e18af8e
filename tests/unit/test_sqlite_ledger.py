"""SqliteLedger: the shared ledger contract, plus what only a file-backed ledger must show (persistence,
WAL, and two processes racing on one file)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import p2csync
from p2csync.ledger.base import JournalEntry, LeaseBusy, RecordState
from p2csync.ledger.sqlite import SqliteLedger

pytest.register_assert_rewrite("ledger_contract", "tests.unit.ledger_contract")
try:
    from ledger_contract import LEASE, RK, FakeClock, LedgerContract, LedgerFactory, commit
except ImportError:  # tests/unit imported as a package
    from tests.unit.ledger_contract import LEASE, RK, FakeClock, LedgerContract, LedgerFactory, commit

REPO = Path(p2csync.__file__).resolve().parent.parent


class TestSqliteLedgerContract(LedgerContract):
    @pytest.fixture
    def ledger_factory(self, tmp_path: Path) -> Iterator[LedgerFactory]:
        opened: list[SqliteLedger] = []

        def factory(clock: FakeClock) -> SqliteLedger:
            ledger = SqliteLedger(tmp_path / "ledger.db", clock=clock)
            opened.append(ledger)
            return ledger

        yield factory
        for ledger in opened:
            ledger.close()


async def test_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "ledger.db"
    clock = FakeClock()
    with SqliteLedger(path, clock=clock) as ledger:
        await ledger.acquire(RK, "w1", LEASE)
        await commit(ledger, "w1", "m1", version=9, payload_hash="h9")
        await ledger.acquire(RK, "w2", LEASE)
        await ledger.journal(
            JournalEntry(
                message_key="m1",
                record_key=RK,
                queue="q",
                message_id="id",
                delivery_count=1,
                outcome="applied",
            )
        )
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with SqliteLedger(path, clock=clock) as ledger:
        assert (await ledger.record_state(RK)).version == 9
        assert (await ledger.message_outcome(RK, "m1")) is not None
        assert [e.message_id for e in await ledger.journal_entries()] == ["id"]
        with pytest.raises(LeaseBusy):  # the lease is durable too
            await ledger.acquire(RK, "w3", LEASE)


def test_journal_entry_defaults_and_validation() -> None:
    entry = JournalEntry(message_key="k", queue="q", message_id="m", delivery_count=1, outcome="skipped")
    assert entry.record_key is None and entry.reason is None and entry.detail is None
    assert entry.at.tzinfo is not None and abs(entry.at - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(ValueError):
        JournalEntry(message_key="k", queue="q", message_id="m", delivery_count=-1, outcome="x")
    with pytest.raises(ValueError):
        JournalEntry(
            message_key="k", queue="q", message_id="m", delivery_count=1, outcome="x", at=datetime(2025, 1, 1)
        )  # naive


def test_two_threads_with_their_own_event_loops_apply_once(tmp_path: Path) -> None:
    results: list[str] = []
    applied: list[str] = []
    barrier = threading.Barrier(2)

    async def worker(name: str) -> str:
        with SqliteLedger(tmp_path / "ledger.db") as ledger:
            barrier.wait()
            while True:
                try:
                    await ledger.acquire(RK, name, timedelta(seconds=10))
                except LeaseBusy:
                    await asyncio.sleep(0.001)
                    continue
                if await ledger.message_outcome(RK, "m") is not None:
                    await ledger.release(RK, name)
                    return "skipped"
                applied.append(name)
                await asyncio.sleep(0.01)
                await commit(ledger, name, "m", version=1, payload_hash=name)
                return "applied"

    threads = [
        threading.Thread(target=lambda n=n: results.append(asyncio.run(worker(n)))) for n in ("t1", "t2")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(results) == ["applied", "skipped"] and len(applied) == 1


RACER = """
    import asyncio, os, sys
    from datetime import timedelta
    from p2csync.ledger.base import LeaseBusy
    from p2csync.ledger.sqlite import SqliteLedger

    async def main(path, name, applied_log):
        ledger = SqliteLedger(path)
        print("ready", flush=True)
        sys.stdin.readline()  # wait for "go" so every process races at once
        while True:
            try:
                await ledger.acquire("accounts:account:1", name, timedelta(seconds=10))
            except LeaseBusy:
                await asyncio.sleep(0.001)
                continue
            if await ledger.message_outcome("accounts:account:1", "msg") is not None:
                await ledger.release("accounts:account:1", name)
                return "skipped"
            fd = os.open(applied_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, (name + "\\n").encode())
            os.close(fd)
            await asyncio.sleep(0.02)
            await ledger.commit("accounts:account:1", name, message_key="msg", outcome="applied", reason=None,
                                version=1, payload_hash=name)
            return "applied"

    print(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3])), flush=True)
"""


def test_processes_racing_on_one_file_apply_once(tmp_path: Path) -> None:
    path, applied_log = tmp_path / "ledger.db", tmp_path / "applied.log"
    SqliteLedger(path).close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(RACER), str(path), f"p{i}", str(applied_log)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=20) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    results = sorted(out.strip() for out, _ in outputs)
    assert results == ["applied", "skipped", "skipped", "skipped"]
    writers = applied_log.read_text().split()
    assert len(writers) == 1
    with SqliteLedger(path) as ledger:
        assert asyncio.run(ledger.record_state("accounts:account:1")).payload_hash == writers[0]
        assert asyncio.run(ledger.record_state("unknown")) == RecordState()


async def test_a_ledger_file_from_an_older_release_is_migrated_and_its_journal_stays_readable(tmp_path: Path) -> None:
    """A journal row written before correlation_id / version / target_key existed reads with them None."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE records (record_key TEXT PRIMARY KEY, version INTEGER, payload_hash TEXT, "
            "updated_at INTEGER, lease_owner TEXT, lease_until INTEGER) WITHOUT ROWID;"
            "CREATE TABLE journal (id INTEGER PRIMARY KEY AUTOINCREMENT, message_key TEXT NOT NULL, record_key TEXT,"
            " queue TEXT NOT NULL, message_id TEXT NOT NULL, delivery_count INTEGER NOT NULL, outcome TEXT NOT NULL,"
            " reason TEXT, detail TEXT, at INTEGER NOT NULL);"
            "INSERT INTO journal (message_key, record_key, queue, message_id, delivery_count, outcome, reason, at) "
            "VALUES ('k', 'accounts:account:1', 'sales-events', 'm', 1, 'applied', 'applied: created X', 1);"
        )
    with SqliteLedger(path) as ledger:
        [old] = await ledger.journal_entries()
        assert (old.outcome, old.correlation_id, old.version, old.target_key) == ("applied", None, None, None)
        await ledger.journal(JournalEntry(message_key="k2", queue="q", message_id="m2", delivery_count=1,
                                          outcome="applied", version=7, target_key="fno:t", correlation_id="c"))
        new = (await ledger.journal_entries(message_id="m2"))[0]
        assert (new.version, new.target_key, new.correlation_id) == (7, "fno:t", "c")
