"""The embedded queue survives SIGKILL and serves competing consumer processes on one file.

These start real Python subprocesses; each test stays well under five seconds.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import p2csync
from p2csync.queue.base import OutboundMessage, QueueCounts
from p2csync.queue.embedded import EmbeddedQueue

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")

REPO = Path(p2csync.__file__).resolve().parent.parent
Q = "fno-events"


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=5)
    assert proc.returncode == -signal.SIGKILL


HOLDER = """
    import sys, time
    from datetime import timedelta
    from p2csync.queue.embedded import EmbeddedQueue
    q = EmbeddedQueue(sys.argv[1], lock_duration=timedelta(seconds=10))
    [m] = q.receive(sys.argv[2])
    print(m.lock_token, m.delivery_count, flush=True)
    time.sleep(60)  # "processing": killed here
"""


def test_message_locked_by_a_killed_process_is_delivered_again(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    clock = FakeClock(datetime.now(UTC))
    queue = EmbeddedQueue(path, clock=clock, lock_duration=timedelta(seconds=10))
    queue.send(
        Q,
        OutboundMessage(
            body=b'{"order": 42}', message_id="order-42", application_properties={"LegalEntity": "usmf"}
        ),
    )
    child = spawn(HOLDER, str(path), Q)
    try:
        assert child.stdout is not None
        token, count = child.stdout.readline().split()
        assert count == "1", child.stderr.read() if child.stderr else ""
    finally:
        kill(child)

    assert queue.receive(Q) == []  # the dead process's lock is still live
    assert queue.counts(Q) == QueueCounts(active=0, scheduled=0, locked=1, dead_lettered=0)
    clock.now += timedelta(seconds=12)  # past the lock the child took (it started after `clock.now`)
    [m] = queue.receive(Q)
    assert (m.message_id, m.body, m.application_properties) == (
        "order-42",
        b'{"order": 42}',
        {"LegalEntity": "usmf"},
    )
    assert m.delivery_count == 2 and m.lock_token != token
    with pytest.raises(Exception, match="lock"):
        queue.complete(token)
    queue.complete(m.lock_token or "")
    assert queue.counts(Q) == QueueCounts(0, 0, 0, 0)
    queue.close()


WORKER = """
    import sys
    from datetime import timedelta
    from p2csync.queue.base import OutboundMessage
    from p2csync.queue.embedded import EmbeddedQueue
    q = EmbeddedQueue(sys.argv[1], lock_duration=timedelta(seconds=30), max_delivery_count=1000)
    out = sys.stdout
    print("ready", flush=True)
    i = 0
    while True:
        mid = f"m{i}"
        out.write(f"s {mid}\\n"); out.flush()          # about to send
        q.send("work", OutboundMessage(body=mid.encode(), message_id=mid))
        out.write(f"S {mid}\\n"); out.flush()          # sent (committed)
        for m in q.receive("work", 2):
            if i % 3 == 0:
                q.abandon(m.lock_token)
            elif i % 3 == 1:
                out.write(f"c {m.message_id}\\n"); out.flush()   # about to complete
                q.complete(m.lock_token)
                out.write(f"C {m.message_id}\\n"); out.flush()   # completed (committed)
            # else: keep it locked, as a handler still working would
        i += 1
"""


def test_sigkill_at_a_random_point_loses_nothing(tmp_path: Path) -> None:
    """Kill a busy producer/consumer at an arbitrary moment: every message it sent is afterwards either
    completed, or still in the queue exactly once, and the file is intact."""
    path = tmp_path / "q.db"
    EmbeddedQueue(path).close()
    child = spawn(WORKER, str(path))
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(random.uniform(0.25, 0.6))
    kill(child)
    log = [line.split() for line in child.stdout.read().splitlines() if line.strip()]
    complete_lines = [line for line in log if len(line) == 2]  # the last line may be cut mid-write
    marks: dict[str, set[str]] = {}
    for mark, mid in complete_lines:
        marks.setdefault(mark, set()).add(mid)
    sent, maybe_sent = marks.get("S", set()), marks.get("s", set())
    completed, maybe_completed = marks.get("C", set()), marks.get("c", set())
    assert len(sent) > 5, "the worker did too little work before the kill"

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    clock = FakeClock(datetime.now(UTC) + timedelta(minutes=1))  # every lock the child held has expired
    queue = EmbeddedQueue(path, clock=clock, max_delivery_count=1000)
    remaining = [m.message_id for m in queue.peek("work", 100_000)]
    assert len(remaining) == len(set(remaining)), "a message is in the queue twice"
    present = set(remaining)
    assert not present & completed, "a completed message came back"
    assert sent - completed - present <= maybe_completed - completed, "a sent message was lost"
    assert len(sent - completed - present) <= 1  # at most the one whose completion was cut short
    assert present <= maybe_sent
    assert len(present - sent) <= 1  # at most the one whose send was cut short

    drained: list[str] = []
    while batch := queue.receive("work", 50):
        for m in batch:
            drained.append(m.message_id)
            queue.complete(m.lock_token or "")
    assert sorted(drained) == sorted(present)
    assert queue.counts("work") == QueueCounts(0, 0, 0, 0)
    queue.close()


CONSUMER = """
    import sys
    from datetime import timedelta
    from p2csync.queue.embedded import EmbeddedQueue
    q = EmbeddedQueue(sys.argv[1], lock_duration=timedelta(minutes=5))
    while batch := q.receive("work", 3):
        for m in batch:
            print(m.message_id, m.delivery_count, flush=True)
            q.complete(m.lock_token)
"""


def test_competing_consumer_processes_share_the_work(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with EmbeddedQueue(path) as queue:
        queue.send_many("work", [OutboundMessage(body=b"{}", message_id=f"m{i}") for i in range(150)])
        consumers = [spawn(CONSUMER, str(path)) for _ in range(3)]
        outputs = [c.communicate(timeout=20) for c in consumers]
        assert all(c.returncode == 0 for c in consumers), [err for _, err in outputs]
        lines = [line.split() for out, _ in outputs for line in out.splitlines()]
        assert sorted(mid for mid, _ in lines) == sorted(f"m{i}" for i in range(150))
        assert {count for _, count in lines} == {"1"}
        assert queue.counts("work") == QueueCounts(0, 0, 0, 0)
