"""Service Bus semantics on SQLite (peek-lock, delivery count, DLQ, schedules, dedupe, TTL)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from p2csync.queue.base import (
    InvalidQueueOperation,
    MessageLockLost,
    MessageNotFound,
    MessageState,
    OutboundMessage,
    QueueCounts,
    QueueConsumer,
    QueueTransport,
)
from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport

Q = "sales-events"
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A settable clock: lock expiry, schedules, TTL and dedupe windows without sleeping."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def msg(message_id: str = "m1", body: bytes = b'{"n": 1}', **extra: object) -> OutboundMessage:
    return OutboundMessage(body=body, message_id=message_id, **extra)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock):  # type: ignore[no-untyped-def]
    q = EmbeddedQueue(
        tmp_path / "queue.db", clock=clock, lock_duration=timedelta(seconds=30), max_delivery_count=3
    )
    yield q
    q.close()


# -- send and receive -------------------------------------------------------------------------------
def test_round_trip_keeps_every_property(queue: EmbeddedQueue, clock: FakeClock) -> None:
    props = {
        "http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName": "account",
        "count": 3,
        "ratio": 1.0,
        "trimmed": True,
    }
    seq = queue.send(
        Q,
        msg(
            "id-1",
            body=b"\x00\xffraw",
            content_type="text/plain",
            subject="Update",
            correlation_id="corr-9",
            application_properties=props,
        ),
    )
    [m] = queue.receive(Q)
    assert m.sequence_number == seq
    assert (m.body, m.message_id, m.content_type, m.subject, m.correlation_id) == (
        b"\x00\xffraw",
        "id-1",
        "text/plain",
        "Update",
        "corr-9",
    )
    assert m.application_properties == props
    assert [type(m.application_properties[k]) for k in ("count", "ratio", "trimmed")] == [int, float, bool]
    assert m.queue == Q
    assert m.delivery_count == 1
    assert uuid.UUID(m.lock_token or "")
    assert m.enqueued_time_utc == START
    assert m.locked_until_utc == START + timedelta(seconds=30)
    assert m.expires_at_utc is None and m.time_to_live is None
    assert m.state is MessageState.ACTIVE
    assert m.dead_letter_reason is None and m.dead_letter_source is None


def test_receive_on_empty_queue_returns_nothing(queue: EmbeddedQueue) -> None:
    assert queue.receive(Q, 10) == []
    assert queue.counts(Q) == QueueCounts(0, 0, 0, 0)


def test_receive_in_sequence_order_up_to_max(queue: EmbeddedQueue) -> None:
    seqs = [queue.send(Q, msg(f"m{i}")) for i in range(5)]
    numbers = [s for s in seqs if s is not None]
    assert numbers == seqs and numbers == sorted(numbers) and len(set(numbers)) == 5
    first = queue.receive(Q, 3)
    assert [m.message_id for m in first] == ["m0", "m1", "m2"]
    assert [m.message_id for m in queue.receive(Q, 10)] == ["m3", "m4"]
    assert len({m.lock_token for m in first}) == 3


def test_queues_are_isolated(queue: EmbeddedQueue) -> None:
    queue.send("a", msg("x"))
    assert queue.receive("b") == []
    assert [m.message_id for m in queue.receive("a")] == ["x"]
    assert queue.queues() == ["a"]


def test_invalid_arguments(queue: EmbeddedQueue) -> None:
    with pytest.raises(ValueError):
        queue.receive(Q, 0)
    with pytest.raises(ValueError):
        queue.send("", msg())
    with pytest.raises(ValueError):
        OutboundMessage(body=b"", message_id="")
    with pytest.raises(ValueError):
        OutboundMessage(body=b"", message_id="x" * 129)
    with pytest.raises(ValueError):
        OutboundMessage(body=b"", message_id="x", time_to_live=timedelta(0))
    with pytest.raises(ValueError):
        queue.schedule(Q, msg(), datetime(2025, 1, 1))  # naive: zone unknown


# -- peek-lock --------------------------------------------------------------------------------------
def test_locked_message_is_not_delivered_twice_until_lock_expires(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send(Q, msg())
    [first] = queue.receive(Q)
    clock.advance(seconds=29)
    assert queue.receive(Q) == []
    assert queue.counts(Q) == QueueCounts(active=0, scheduled=0, locked=1, dead_lettered=0)
    clock.advance(seconds=1)  # lock expired exactly now
    assert queue.counts(Q).active == 1
    [second] = queue.receive(Q)
    assert second.delivery_count == 2
    assert second.lock_token != first.lock_token
    assert second.locked_until_utc == clock.now + timedelta(seconds=30)
    with pytest.raises(MessageLockLost):
        queue.complete(first.lock_token or "")
    queue.complete(second.lock_token or "")
    assert queue.counts(Q) == QueueCounts(0, 0, 0, 0)


def test_complete_removes_and_second_complete_loses_lock(queue: EmbeddedQueue, clock: FakeClock) -> None:
    queue.send(Q, msg())
    [m] = queue.receive(Q)
    queue.complete(m.lock_token or "")
    clock.advance(minutes=5)
    assert queue.receive(Q) == [] and queue.peek(Q) == []
    with pytest.raises(MessageLockLost):
        queue.complete(m.lock_token or "")


def test_abandon_unlocks_at_once_and_counts_next_delivery(queue: EmbeddedQueue) -> None:
    queue.send(Q, msg())
    [m] = queue.receive(Q)
    queue.abandon(m.lock_token or "")
    [again] = queue.receive(Q)
    assert again.delivery_count == 2 and again.sequence_number == m.sequence_number
    with pytest.raises(MessageLockLost):
        queue.abandon(m.lock_token or "")


@pytest.mark.parametrize("action", ["complete", "abandon", "dead_letter", "renew_lock"])
def test_settling_with_expired_or_unknown_lock_changes_nothing(
    queue: EmbeddedQueue, clock: FakeClock, action: str
) -> None:
    queue.send(Q, msg())
    [m] = queue.receive(Q)
    clock.advance(seconds=31)
    for token in (m.lock_token or "", str(uuid.uuid4()), None):
        with pytest.raises(MessageLockLost) as raised:
            getattr(queue, action)(token)
        assert raised.value.lock_token == token
    assert queue.counts(Q) == QueueCounts(active=1, scheduled=0, locked=0, dead_lettered=0)
    [again] = queue.receive(Q)
    assert again.delivery_count == 2 and again.dead_letter_reason is None


def test_renew_lock_extends_from_now(queue: EmbeddedQueue, clock: FakeClock) -> None:
    queue.send(Q, msg())
    [m] = queue.receive(Q)
    clock.advance(seconds=20)
    until = queue.renew_lock(m.lock_token or "")
    assert until == clock.now + timedelta(seconds=30)
    clock.advance(seconds=25)  # past the original lock, inside the renewed one
    assert queue.receive(Q) == []
    queue.complete(m.lock_token or "")
    assert queue.counts(Q) == QueueCounts(0, 0, 0, 0)


# -- delivery count and dead-lettering --------------------------------------------------------------
def test_lock_expiries_beyond_max_delivery_count_dead_letter(queue: EmbeddedQueue, clock: FakeClock) -> None:
    queue.send(Q, msg(application_properties={"k": "v"}))
    for expected in (1, 2, 3):
        [m] = queue.receive(Q)
        assert m.delivery_count == expected
        clock.advance(seconds=31)
    assert queue.receive(Q) == []  # a 4th delivery would exceed max_delivery_count=3
    [dead] = queue.peek_dead_letters(Q)
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert "3 delivery attempts" in (dead.dead_letter_error_description or "")
    assert dead.dead_letter_source == Q
    assert (dead.message_id, dead.body, dead.application_properties, dead.delivery_count) == (
        "m1",
        b'{"n": 1}',
        {"k": "v"},
        3,
    )
    assert queue.counts(Q) == QueueCounts(active=0, scheduled=0, locked=0, dead_lettered=1)


def test_abandon_on_last_delivery_dead_letters_at_once(queue: EmbeddedQueue) -> None:
    queue.send(Q, msg())
    for _ in range(2):
        [m] = queue.receive(Q)
        queue.abandon(m.lock_token or "")
        assert queue.counts(Q).active == 1
    [m] = queue.receive(Q)
    assert m.delivery_count == 3
    queue.abandon(m.lock_token or "")
    assert queue.counts(Q) == QueueCounts(active=0, scheduled=0, locked=0, dead_lettered=1)
    assert queue.peek_dead_letters(Q)[0].dead_letter_reason == "MaxDeliveryCountExceeded"


def test_dead_letter_keeps_message_intact(queue: EmbeddedQueue) -> None:
    props = {"BusinessEventId": "SalesOrderConfirmed", "n": 7}
    seq = queue.send(Q, msg("bad-1", body=b"not json", correlation_id="c", application_properties=props))
    [m] = queue.receive(Q)
    queue.dead_letter(m.lock_token or "", "MalformedMessage", "body is not JSON")
    assert queue.receive(Q) == []
    [dead] = queue.peek_dead_letters(Q)
    assert (dead.sequence_number, dead.message_id, dead.body, dead.correlation_id) == (
        seq,
        "bad-1",
        b"not json",
        "c",
    )
    assert dead.application_properties == props
    assert (dead.dead_letter_reason, dead.dead_letter_error_description, dead.dead_letter_source) == (
        "MalformedMessage",
        "body is not JSON",
        Q,
    )
    assert dead.lock_token is None  # peeking does not lock
    with pytest.raises(MessageLockLost):
        queue.complete(m.lock_token or "")


def test_dead_letter_queue_is_peek_locked_and_settled_like_a_queue(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send(Q, msg("a"))
    queue.send(Q, msg("b"))
    for m in queue.receive(Q, 2):
        queue.dead_letter(m.lock_token or "", "R", None)
    [a] = queue.receive_dead_letters(Q)
    assert a.message_id == "a" and a.delivery_count == 2 and a.dead_letter_reason == "R"
    assert [m.message_id for m in queue.receive_dead_letters(Q, 5)] == ["b"]
    assert queue.receive_dead_letters(Q) == []
    with pytest.raises(InvalidQueueOperation):
        queue.dead_letter(a.lock_token or "", "again", None)
    # never dead-lettered "further", whatever the delivery count
    for _ in range(5):
        queue.abandon(a.lock_token or "")
        [a] = queue.receive_dead_letters(Q)
    assert a.message_id == "a" and a.dead_letter_reason == "R"
    queue.complete(a.lock_token or "")
    clock.advance(seconds=31)  # b's lock expires: b is back in the DLQ
    assert [m.message_id for m in queue.peek_dead_letters(Q)] == ["b"]
    assert queue.receive(Q) == []


def test_resubmit_dead_letter_gives_fresh_delivery_count(queue: EmbeddedQueue, clock: FakeClock) -> None:
    queue.send(Q, msg("replay-me", application_properties={"p": 1}, time_to_live=timedelta(hours=1)))
    for _ in range(3):
        [m] = queue.receive(Q)
        queue.abandon(m.lock_token or "")
    [dead] = queue.peek_dead_letters(Q)
    clock.advance(hours=2)  # the TTL would have passed; resubmission restarts it
    new_seq = queue.resubmit_dead_letter(Q, dead.sequence_number)
    assert new_seq > dead.sequence_number
    assert queue.peek_dead_letters(Q) == []
    [m] = queue.receive(Q)
    assert (m.sequence_number, m.message_id, m.application_properties, m.delivery_count) == (
        new_seq,
        "replay-me",
        {"p": 1},
        1,
    )
    assert m.dead_letter_reason is None and m.dead_letter_source is None
    assert m.enqueued_time_utc == clock.now and m.expires_at_utc == clock.now + timedelta(hours=1)
    with pytest.raises(MessageNotFound):
        queue.resubmit_dead_letter(Q, dead.sequence_number)
    with pytest.raises(MessageNotFound):
        queue.resubmit_dead_letter(Q, new_seq)  # active, not dead-lettered


def test_resubmit_ignores_duplicate_detection(queue: EmbeddedQueue) -> None:
    queue.send(Q, msg("dup"))
    [m] = queue.receive(Q)
    queue.dead_letter(m.lock_token or "", "X", None)
    queue.resubmit_dead_letter(Q, m.sequence_number)
    assert [x.message_id for x in queue.peek(Q)] == ["dup"]
    assert queue.send(Q, msg("dup")) is None  # but a plain second send is still a duplicate


# -- scheduling -------------------------------------------------------------------------------------
def test_scheduled_message_appears_when_due(queue: EmbeddedQueue, clock: FakeClock) -> None:
    at = START + timedelta(minutes=5)
    seq = queue.schedule(Q, msg("later"), at)
    queue.send(Q, msg("now"))
    [now] = queue.receive(Q, 10)
    assert now.message_id == "now"
    assert queue.counts(Q) == QueueCounts(active=0, scheduled=1, locked=1, dead_lettered=0)
    [peeked, now_msg] = queue.peek(Q)
    assert now_msg.message_id == "now" and now_msg.state is MessageState.ACTIVE
    assert peeked.sequence_number == seq and peeked.state is MessageState.SCHEDULED
    assert peeked.scheduled_enqueue_time_utc == at and peeked.enqueued_time_utc == at
    queue.complete(now.lock_token or "")
    clock.advance(minutes=4, seconds=59)
    assert queue.receive(Q) == []
    clock.advance(seconds=1)
    [m] = queue.receive(Q)
    assert m.message_id == "later" and m.state is MessageState.ACTIVE and m.delivery_count == 1


def test_schedule_via_message_field_and_past_time(queue: EmbeddedQueue, clock: FakeClock) -> None:
    queue.send(Q, msg("field", scheduled_enqueue_time_utc=START + timedelta(seconds=10)))
    queue.schedule(Q, msg("past"), START - timedelta(hours=1))  # already due
    assert [m.message_id for m in queue.receive(Q, 5)] == ["past"]
    clock.advance(seconds=10)
    assert [m.message_id for m in queue.receive(Q, 5)] == ["field"]


def test_cancel_scheduled(queue: EmbeddedQueue, clock: FakeClock) -> None:
    seq = queue.schedule(Q, msg("s"), START + timedelta(minutes=1))
    assert seq is not None
    queue.cancel_scheduled(seq)
    clock.advance(minutes=2)
    assert queue.receive(Q) == [] and queue.counts(Q) == QueueCounts(0, 0, 0, 0)
    with pytest.raises(MessageNotFound):
        queue.cancel_scheduled(seq)
    due = queue.schedule(Q, msg("s2"), clock.now)
    assert due is not None
    with pytest.raises(MessageNotFound):
        queue.cancel_scheduled(due)  # already enqueued: too late to cancel
    assert queue.counts(Q).active == 1


# -- duplicate detection ----------------------------------------------------------------------------
def test_duplicate_message_id_is_dropped_within_window(queue: EmbeddedQueue, clock: FakeClock) -> None:
    assert queue.send(Q, msg("same", body=b"1")) is not None
    assert queue.send(Q, msg("same", body=b"2")) is None
    assert queue.send("other-queue", msg("same")) is not None  # detection is per queue
    [m] = queue.receive(Q, 10)
    queue.complete(m.lock_token or "")
    clock.advance(minutes=9, seconds=59)
    assert queue.send(Q, msg("same", body=b"3")) is None  # completed, but still inside the window
    assert queue.schedule(Q, msg("same"), clock.now + timedelta(hours=1)) is None
    clock.advance(seconds=1)
    assert queue.send(Q, msg("same", body=b"4")) is not None
    assert [x.body for x in queue.receive(Q, 10)] == [b"4"]


def test_send_many_is_atomic_and_dedupes_within_batch(queue: EmbeddedQueue) -> None:
    result = queue.send_many(Q, [msg("a"), msg("b"), msg("a"), msg("c")])
    assert result[2] is None and all(isinstance(s, int) for s in (result[0], result[1], result[3]))
    assert [m.message_id for m in queue.peek(Q)] == ["a", "b", "c"]
    assert queue.send_many(Q, []) == []


def test_duplicate_detection_can_be_disabled(tmp_path: Path, clock: FakeClock) -> None:
    with EmbeddedQueue(tmp_path / "q.db", clock=clock, duplicate_detection_window=None) as q:
        assert q.send(Q, msg("x")) is not None and q.send(Q, msg("x")) is not None
        assert q.counts(Q).active == 2


# -- time to live -----------------------------------------------------------------------------------
def test_expired_message_goes_to_dead_letter_queue(queue: EmbeddedQueue, clock: FakeClock) -> None:
    queue.send(Q, msg("short", time_to_live=timedelta(seconds=10)))
    queue.send(Q, msg("long", time_to_live=timedelta(hours=1)))
    [peeked, _] = queue.peek(Q)
    assert peeked.expires_at_utc == START + timedelta(seconds=10)
    clock.advance(seconds=10)
    assert [m.message_id for m in queue.receive(Q, 5)] == ["long"]
    [dead] = queue.peek_dead_letters(Q)
    assert (dead.message_id, dead.dead_letter_reason, dead.dead_letter_source) == (
        "short",
        "TTLExpiredException",
        Q,
    )
    assert dead.delivery_count == 0


def test_locked_message_does_not_expire_while_held(queue: EmbeddedQueue, clock: FakeClock) -> None:
    queue.send(Q, msg(time_to_live=timedelta(seconds=10)))
    [m] = queue.receive(Q)
    clock.advance(seconds=20)
    queue.complete(m.lock_token or "")  # the holder may still settle it
    assert queue.counts(Q) == QueueCounts(0, 0, 0, 0)


def test_default_ttl_caps_message_ttl_and_scheduled_ttl_starts_at_enqueue(
    tmp_path: Path, clock: FakeClock
) -> None:
    with EmbeddedQueue(tmp_path / "q.db", clock=clock, default_time_to_live=timedelta(minutes=1)) as q:
        q.send(Q, msg("default"))
        q.send(Q, msg("longer", time_to_live=timedelta(hours=1)))
        q.send(Q, msg("shorter", time_to_live=timedelta(seconds=5)))
        q.schedule(Q, msg("sched"), START + timedelta(minutes=10))
        ttl = {m.message_id: (m.time_to_live, m.expires_at_utc) for m in q.peek(Q)}
        assert ttl == {
            "default": (timedelta(minutes=1), START + timedelta(minutes=1)),
            "longer": (timedelta(minutes=1), START + timedelta(minutes=1)),
            "shorter": (timedelta(seconds=5), START + timedelta(seconds=5)),
            "sched": (timedelta(minutes=1), START + timedelta(minutes=11)),
        }
        clock.advance(minutes=10)
        assert [m.message_id for m in q.receive(Q, 10)] == ["sched"]
        assert q.counts(Q).dead_lettered == 3


def test_expiry_can_drop_instead_of_dead_lettering(tmp_path: Path, clock: FakeClock) -> None:
    with EmbeddedQueue(tmp_path / "q.db", clock=clock, dead_letter_on_expiration=False) as q:
        q.send(Q, msg(time_to_live=timedelta(seconds=1)))
        clock.advance(seconds=2)
        assert q.receive(Q) == [] and q.counts(Q) == QueueCounts(0, 0, 0, 0)


# -- inspection -------------------------------------------------------------------------------------
def test_peek_does_not_lock_or_count(queue: EmbeddedQueue) -> None:
    for i in range(3):
        queue.send(Q, msg(f"m{i}"))
    [locked] = queue.receive(Q)
    peeked = queue.peek(Q)
    assert [m.message_id for m in peeked] == ["m0", "m1", "m2"]
    assert [m.delivery_count for m in peeked] == [1, 0, 0]
    assert [m.lock_token for m in peeked] == [None, None, None]  # peeking never hands out a lock
    assert peeked[0].locked_until_utc == locked.locked_until_utc and peeked[1].locked_until_utc is None
    assert [m.message_id for m in queue.peek(Q, 1, from_sequence_number=peeked[1].sequence_number)] == ["m1"]
    assert [m.delivery_count for m in queue.receive(Q, 5)] == [1, 1]


def test_wal_mode_and_persistence_across_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "q.db"
    with EmbeddedQueue(path, clock=clock) as q:
        q.send(Q, msg("kept"))
        [m] = q.receive(Q)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with EmbeddedQueue(path, clock=clock) as q:
        assert q.receive(Q) == []  # still locked by the first instance
        q.complete(m.lock_token or "")  # lock tokens are durable too
        assert q.counts(Q) == QueueCounts(0, 0, 0, 0)


def test_closed_queue_refuses_work(tmp_path: Path) -> None:
    q = EmbeddedQueue(tmp_path / "q.db")
    q.close()
    with pytest.raises(sqlite3.ProgrammingError):
        q.send(Q, msg())


# -- concurrency ------------------------------------------------------------------------------------
def test_competing_threads_each_message_delivered_once(tmp_path: Path) -> None:
    q = EmbeddedQueue(tmp_path / "q.db")
    q.send_many(Q, [msg(f"m{i}") for i in range(120)])
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def consume() -> None:
        while batch := q.receive(Q, 4):
            for m in batch:
                with lock:
                    seen.append((m.message_id, m.delivery_count))
                q.complete(m.lock_token or "")

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    q.close()
    assert sorted(mid for mid, _ in seen) == sorted(f"m{i}" for i in range(120))
    assert {count for _, count in seen} == {1}


# -- async ------------------------------------------------------------------------------------------
async def test_receive_wait_returns_when_a_message_arrives(queue: EmbeddedQueue) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, queue.send, Q, msg("late"))
    started = loop.time()
    [m] = await queue.receive_wait(Q, 5, timeout=2.0)
    assert m.message_id == "late" and loop.time() - started < 1.0


async def test_receive_wait_times_out_empty(queue: EmbeddedQueue) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await queue.receive_wait(Q, 1, timeout=timedelta(milliseconds=100)) == []
    assert 0.09 <= loop.time() - started < 0.6


async def test_transport_implements_protocol_and_settles(queue: EmbeddedQueue, clock: FakeClock) -> None:
    transport = EmbeddedTransport(queue)
    assert isinstance(transport, QueueTransport)
    await transport.send(Q, msg("t1"))
    await transport.send(Q, msg("t1"))  # duplicate: dropped, no error
    seq = await transport.schedule(Q, msg("t2"), START + timedelta(seconds=30))
    again = await transport.schedule(Q, msg("t2"), START + timedelta(seconds=60))
    assert again == seq  # idempotent: the first scheduled copy's sequence number
    assert isinstance(transport, QueueConsumer)
    [m] = await transport.receive_wait(Q, 5, timeout=0)
    assert m.message_id == "t1"
    assert await transport.renew_lock(m) == START + timedelta(seconds=30)
    await transport.complete(m)
    with pytest.raises(MessageLockLost):
        await transport.complete(m)  # settled already
    clock.advance(seconds=30)
    [s] = await transport.receive_wait(Q, 5, timeout=1)
    assert s.sequence_number == seq
    await transport.abandon(s)
    [s] = await transport.receive_wait(Q, timeout=0)
    await transport.dead_letter(s, "Why", "because")
    assert queue.counts(Q) == QueueCounts(0, 0, 0, 1)
    other = await transport.schedule(Q, msg("t3"), clock.now + timedelta(hours=1))
    await transport.cancel_scheduled(other)
    assert queue.counts(Q).scheduled == 0
