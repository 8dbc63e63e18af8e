"""The embedded queue: a durable SQLite stand-in for Azure Service Bus queues (local host and tests).

Why SQLite: every state change (send, lock, settle, dead-letter) is one committed transaction in one file,
so a process killed at any point loses nothing, and several processes can compete for the same queues.
Semantics follow Service Bus: peek-lock with lock expiry and renewal, delivery count, max delivery count ->
dead-letter queue, explicit dead-lettering, scheduled messages, duplicate detection on MessageId, TTL, and
the maximum message size (body and properties; `MessageSizeExceeded` as Service Bus refuses it).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from p2csync.queue._store import COLUMNS, SCHEMA, dump_properties, to_message
from p2csync.queue.base import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    TTL_EXPIRED,
    InvalidQueueOperation,
    MessageLockLost,
    MessageNotFound,
    OutboundMessage,
    QueueCounts,
    ReceivedMessage,
)
from p2csync.queue.sizing import MAX_MESSAGE_BYTES_STANDARD, MessageSizeExceeded, serialized_size
from p2csync.queue.sqlitedb import SqliteDatabase, from_micros, to_micros, utc

T = TypeVar("T")

__all__ = ["Clock", "EmbeddedQueue", "EmbeddedTransport"]

Clock = Callable[[], datetime]
_SECOND = 1_000_000


def _system_clock() -> datetime:
    return datetime.now(UTC)


def _micros(value: timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * _SECOND + value.microseconds


class EmbeddedQueue:
    """Service Bus queue semantics on one SQLite file. Synchronous; safe across threads and processes."""

    def __init__(
        self,
        path: str | Path,
        *,
        lock_duration: timedelta = timedelta(seconds=60),
        max_delivery_count: int = 10,
        duplicate_detection_window: timedelta | None = timedelta(minutes=10),
        default_time_to_live: timedelta | None = None,
        dead_letter_on_expiration: bool = True,
        clock: Clock | None = None,
        busy_timeout: timedelta = timedelta(seconds=30),
        max_message_bytes: int = MAX_MESSAGE_BYTES_STANDARD,
    ) -> None:
        """``max_message_bytes``: the entity's maximum message size (Standard tier 256 KB by default); a
        larger message (body and properties, see p2csync.queue.sizing) is refused before anything is
        written."""
        if lock_duration <= timedelta(0):
            raise ValueError("lock_duration must be positive")
        if max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        if default_time_to_live is not None and default_time_to_live <= timedelta(0):
            raise ValueError("default_time_to_live must be positive")
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.duplicate_detection_window = duplicate_detection_window or None
        self.default_time_to_live = default_time_to_live
        self.dead_letter_on_expiration = dead_letter_on_expiration
        self.max_message_bytes = max_message_bytes
        self._clock = clock or _system_clock
        self._db = SqliteDatabase(path, schema=SCHEMA, busy_timeout=busy_timeout)

    @property
    def path(self) -> Path:
        return self._db.path

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddedQueue:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _now(self) -> int:
        return to_micros(self._clock())

    async def run(self, transaction: Callable[..., T], *args: object) -> T:
        """Run one of this queue's single-transaction methods from async code (``SqliteDatabase.run``)."""
        return await self._db.run(transaction, *args)

    # -- sending ------------------------------------------------------------------------------------
    def send(self, queue: str, message: OutboundMessage) -> int | None:
        """Enqueue one message; its sequence number, or None when dropped as a duplicate MessageId."""
        [(sequence_number, accepted)] = self._enqueue(queue, [message])
        return sequence_number if accepted else None

    def send_many(self, queue: str, messages: Iterable[OutboundMessage]) -> list[int | None]:
        """Enqueue several messages atomically (duplicates within the batch are dropped too)."""
        return [seq if accepted else None for seq, accepted in self._enqueue(queue, list(messages))]

    def send_each(self, items: Sequence[tuple[str, OutboundMessage]]) -> list[int | None]:
        """Enqueue messages for any queues in one durable transaction (one fsync for all: group commit); as
        ``send`` for each. The caller checks sizes first (``check_size``): one too large fails them all."""
        return [seq if accepted else None for seq, accepted in self._enqueue_pairs(list(items))]

    def check_size(self, message: OutboundMessage) -> None:
        """Raise MessageSizeExceeded when the message (body and properties) is over the entity's limit."""
        if (size := serialized_size(message)) > self.max_message_bytes:
            raise MessageSizeExceeded(size, self.max_message_bytes)

    def schedule(self, queue: str, message: OutboundMessage, at: datetime) -> int | None:
        """Enqueue a message that becomes visible at `at` (None when dropped as a duplicate)."""
        return self.send(queue, message.model_copy(update={"scheduled_enqueue_time_utc": utc(at)}))

    def cancel_scheduled(self, sequence_number: int) -> None:
        """Remove a scheduled message that is not due yet (else MessageNotFound)."""
        now = self._now()
        with self._db.write() as conn:
            deleted = conn.execute(
                "DELETE FROM messages WHERE sequence_number = ? AND dead_lettered = 0 AND enqueued_at > ?",
                (sequence_number, now),
            ).rowcount
        if not deleted:
            raise MessageNotFound(sequence_number, "no scheduled message that is not yet due")

    def _enqueue(self, queue: str, messages: list[OutboundMessage]) -> list[tuple[int, bool]]:
        return self._enqueue_pairs([(queue, message) for message in messages])

    def _enqueue_pairs(self, items: list[tuple[str, OutboundMessage]]) -> list[tuple[int, bool]]:
        """Insert messages in one transaction; (sequence number, accepted) per message. A dropped duplicate
        reports the sequence number of the message first accepted with that MessageId."""
        for queue, message in items:
            _check_queue(queue)
            self.check_size(message)
        now = self._now()
        window = self.duplicate_detection_window
        results: list[tuple[int, bool]] = []
        with self._db.write(durable=True) as conn:  # accepting a message answers its sender: on disk first
            if window is not None:
                conn.execute("DELETE FROM accepted_ids WHERE accepted_at <= ?", (now - _micros(window),))
            for queue, message in items:
                if window is not None:
                    seen = conn.execute(
                        "SELECT sequence_number FROM accepted_ids WHERE queue = ? AND message_id = ?",
                        (queue, message.message_id),
                    ).fetchone()
                    if seen is not None:
                        results.append((seen[0], False))
                        continue
                sequence_number = self._insert(conn, queue, message, now)
                if window is not None:
                    conn.execute(
                        "INSERT INTO accepted_ids (queue, message_id, accepted_at, sequence_number) "
                        "VALUES (?, ?, ?, ?)",
                        (queue, message.message_id, now, sequence_number),
                    )
                results.append((sequence_number, True))
        return results

    def _insert(self, conn: sqlite3.Connection, queue: str, message: OutboundMessage, now: int) -> int:
        scheduled = message.scheduled_enqueue_time_utc
        scheduled_at = None if scheduled is None else to_micros(scheduled)
        visible_at = now if scheduled_at is None else max(now, scheduled_at)
        ttl = self._effective_ttl(message.time_to_live)
        cursor = conn.execute(
            "INSERT INTO messages (queue, message_id, body, content_type, subject, correlation_id, "
            "application_properties, scheduled_at, enqueued_at, time_to_live, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                queue,
                message.message_id,
                message.body,
                message.content_type,
                message.subject,
                message.correlation_id,
                dump_properties(message.application_properties),
                scheduled_at,
                visible_at,
                ttl,
                None if ttl is None else visible_at + ttl,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _effective_ttl(self, requested: timedelta | None) -> int | None:
        """The message's TTL capped by the queue default (Service Bus uses the smaller of the two)."""
        candidates = [_micros(t) for t in (requested, self.default_time_to_live) if t is not None]
        return min(candidates) if candidates else None

    # -- receiving ----------------------------------------------------------------------------------
    def receive(self, queue: str, max_messages: int = 1) -> list[ReceivedMessage]:
        """Peek-lock up to `max_messages` due, unlocked messages in sequence order.

        Each delivery increments the delivery count and hands out a fresh lock token. A message that would
        exceed `max_delivery_count`, or whose TTL passed, moves to the dead-letter queue instead."""
        return self._receive(queue, max_messages, dead_lettered=False)

    def receive_dead_letters(self, queue: str, max_messages: int = 1) -> list[ReceivedMessage]:
        """Peek-lock messages of the queue's dead-letter queue (settle them like any other message)."""
        return self._receive(queue, max_messages, dead_lettered=True)

    async def receive_wait(
        self, queue: str, max_messages: int = 1, timeout: float | timedelta = 5.0, *,
        arrival: asyncio.Event | None = None,
    ) -> list[ReceivedMessage]:
        """Receive, polling with short sleeps until something arrives or `timeout`; ``arrival`` (set by a send of
        this process) ends a sleep early. The transaction runs as ``run`` places it (off the loop when locked)."""
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        deadline = time.monotonic() + seconds
        pause = 0.002
        while True:
            if arrival is not None:
                arrival.clear()  # before looking: a send after the look sets it again, so none is missed
            received = await self.run(self.receive, queue, max_messages)
            remaining = deadline - time.monotonic()
            if received or remaining <= 0:
                return received
            if arrival is None:
                await asyncio.sleep(min(pause, remaining))
            else:
                try:
                    await asyncio.wait_for(arrival.wait(), min(pause, remaining))
                except TimeoutError:
                    pass
            pause = min(pause * 2, 0.05)

    def _receive(self, queue: str, max_messages: int, *, dead_lettered: bool) -> list[ReceivedMessage]:
        _check_queue(queue)
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        now = self._now()
        due = (
            "queue = ? AND dead_lettered = ? AND enqueued_at <= ? "
            "AND (locked_until IS NULL OR locked_until <= ?)"
        )
        args = (queue, int(dead_lettered), now, now)
        # A cheap read first, so idle pollers never take the write lock.
        if (
            self._db.connection().execute(f"SELECT 1 FROM messages WHERE {due} LIMIT 1", args).fetchone()
            is None
        ):
            return []
        locked: list[int] = []
        until = now + _micros(self.lock_duration)
        with self._db.write() as conn:
            while len(locked) < max_messages:
                rows = conn.execute(
                    f"SELECT sequence_number, delivery_count, expires_at FROM messages WHERE {due} "
                    "ORDER BY sequence_number LIMIT ?",
                    (*args, max_messages - len(locked)),
                ).fetchall()
                if not rows:
                    break
                for sequence_number, delivery_count, expires_at in rows:
                    if not dead_lettered and expires_at is not None and expires_at <= now:
                        self._expire(conn, queue, sequence_number, expires_at)
                    elif not dead_lettered and delivery_count >= self.max_delivery_count:
                        self._move_to_dead_letters(
                            conn,
                            queue,
                            sequence_number,
                            MAX_DELIVERY_COUNT_EXCEEDED,
                            self._max_delivery_description(),
                        )
                    else:
                        conn.execute(
                            "UPDATE messages SET delivery_count = delivery_count + 1, lock_token = ?, "
                            "locked_until = ? WHERE sequence_number = ?",
                            (str(uuid.uuid4()), until, sequence_number),
                        )
                        locked.append(sequence_number)
            rows = (
                conn.execute(
                    f"SELECT {COLUMNS} FROM messages "
                    f"WHERE sequence_number IN ({','.join('?' * len(locked))}) ORDER BY sequence_number",
                    locked,
                ).fetchall()
                if locked
                else []
            )
        return [to_message(row, now, holder_view=True) for row in rows]

    def _expire(self, conn: sqlite3.Connection, queue: str, sequence_number: int, expires_at: int) -> None:
        if self.dead_letter_on_expiration:
            self._move_to_dead_letters(
                conn,
                queue,
                sequence_number,
                TTL_EXPIRED,
                f"The message expired at {from_micros(expires_at).isoformat()} "
                "(time to live elapsed) and was dead-lettered.",
            )
        else:
            conn.execute("DELETE FROM messages WHERE sequence_number = ?", (sequence_number,))

    def _max_delivery_description(self) -> str:
        return f"Message could not be consumed after {self.max_delivery_count} delivery attempts."

    @staticmethod
    def _move_to_dead_letters(
        conn: sqlite3.Connection,
        queue: str,
        sequence_number: int,
        reason: str | None,
        description: str | None,
    ) -> None:
        """Into the dead-letter sub-queue; body, properties, MessageId and delivery count are kept."""
        conn.execute(
            "UPDATE messages SET dead_lettered = 1, lock_token = NULL, locked_until = NULL, "
            "dead_letter_reason = ?, dead_letter_error_description = ?, dead_letter_source = ? "
            "WHERE sequence_number = ?",
            (reason, description, queue, sequence_number),
        )

    # -- settlement ---------------------------------------------------------------------------------
    def _held(self, conn: sqlite3.Connection, lock_token: str | None, now: int) -> sqlite3.Row:
        """The row locked by `lock_token`, or MessageLockLost when the lock is unknown or expired."""
        row: sqlite3.Row | None = conn.execute(
            "SELECT sequence_number, queue, dead_lettered, delivery_count FROM messages "
            "WHERE lock_token = ? AND locked_until > ?",
            (lock_token, now),
        ).fetchone()
        if row is None:
            raise MessageLockLost(lock_token)
        return row

    def complete(self, lock_token: str | None) -> None:
        """Remove the message for good (it was processed)."""
        now = self._now()
        with self._db.write() as conn:
            row = self._held(conn, lock_token, now)
            conn.execute("DELETE FROM messages WHERE sequence_number = ?", (row["sequence_number"],))

    def abandon(self, lock_token: str | None) -> None:
        """Release the lock now so the message can be received again. The delivery was already counted; on
        the last allowed delivery the message goes straight to the dead-letter queue (as Service Bus does)."""
        now = self._now()
        with self._db.write() as conn:
            row = self._held(conn, lock_token, now)
            if not row["dead_lettered"] and row["delivery_count"] >= self.max_delivery_count:
                self._move_to_dead_letters(
                    conn,
                    row["queue"],
                    row["sequence_number"],
                    MAX_DELIVERY_COUNT_EXCEEDED,
                    self._max_delivery_description(),
                )
            else:
                conn.execute(
                    "UPDATE messages SET lock_token = NULL, locked_until = NULL WHERE sequence_number = ?",
                    (row["sequence_number"],),
                )

    def dead_letter(
        self, lock_token: str | None, reason: str | None = None, description: str | None = None
    ) -> None:
        """Move the locked message to the dead-letter queue with a reason; nothing else about it changes."""
        now = self._now()
        with self._db.write() as conn:
            row = self._held(conn, lock_token, now)
            if row["dead_lettered"]:
                raise InvalidQueueOperation("the message is already in the dead-letter queue")
            self._move_to_dead_letters(conn, row["queue"], row["sequence_number"], reason, description)

    def renew_lock(self, lock_token: str | None) -> datetime:
        """Extend a live lock by the lock duration from now; returns the new locked-until time."""
        now = self._now()
        until = now + _micros(self.lock_duration)
        with self._db.write() as conn:
            row = self._held(conn, lock_token, now)
            conn.execute(
                "UPDATE messages SET locked_until = ? WHERE sequence_number = ?",
                (until, row["sequence_number"]),
            )
        return from_micros(until)

    # -- dead letters -------------------------------------------------------------------------------
    def resubmit_dead_letter(self, queue: str, sequence_number: int) -> int:
        """Move a dead-lettered message back to its queue as a new message (new sequence number, delivery
        count 0, TTL from now, dead-letter fields cleared); returns the new sequence number. Duplicate
        detection does not apply: this is a deliberate replay, not a second send."""
        now = self._now()
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT message_id, body, content_type, subject, correlation_id, application_properties, "
                "time_to_live FROM messages WHERE sequence_number = ? AND queue = ? AND dead_lettered = 1",
                (sequence_number, queue),
            ).fetchone()
            if row is None:
                raise MessageNotFound(sequence_number, f"not in the dead-letter queue of {queue!r}")
            ttl = row["time_to_live"]
            cursor = conn.execute(
                "INSERT INTO messages (queue, message_id, body, content_type, subject, correlation_id, "
                "application_properties, enqueued_at, time_to_live, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    queue,
                    row["message_id"],
                    row["body"],
                    row["content_type"],
                    row["subject"],
                    row["correlation_id"],
                    row["application_properties"],
                    now,
                    ttl,
                    None if ttl is None else now + ttl,
                ),
            )
            conn.execute("DELETE FROM messages WHERE sequence_number = ?", (sequence_number,))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def delete_dead_letters(self, queue: str, sequence_numbers: Iterable[int]) -> set[int]:
        """Delete those messages from the dead-letter queue of `queue`; the sequence numbers deleted."""
        wanted = sorted(set(sequence_numbers))
        deleted: set[int] = set()
        with self._db.write() as conn:
            for number in wanted:
                if conn.execute("DELETE FROM messages WHERE sequence_number = ? AND queue = ? AND dead_lettered = 1",
                                (number, queue)).rowcount:
                    deleted.add(number)
        return deleted

    # -- inspection ---------------------------------------------------------------------------------
    def peek(
        self, queue: str, max_messages: int = 100, from_sequence_number: int = 0
    ) -> list[ReceivedMessage]:
        """Look at active and scheduled messages in sequence order without locking or counting a delivery."""
        return self._peek(queue, max_messages, from_sequence_number, dead_lettered=False)

    def peek_dead_letters(
        self, queue: str, max_messages: int = 100, from_sequence_number: int = 0
    ) -> list[ReceivedMessage]:
        """Look at the dead-letter queue without locking anything."""
        return self._peek(queue, max_messages, from_sequence_number, dead_lettered=True)

    def _peek(
        self, queue: str, max_messages: int, start: int, *, dead_lettered: bool
    ) -> list[ReceivedMessage]:
        now = self._now()
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM messages "
                "WHERE queue = ? AND dead_lettered = ? AND sequence_number >= ? "
                "ORDER BY sequence_number LIMIT ?",
                (queue, int(dead_lettered), start, max_messages),
            ).fetchall()
        return [to_message(row, now, holder_view=False) for row in rows]

    def counts(self, queue: str) -> QueueCounts:
        """Counts by state (read-only: expiry and max-delivery moves happen when a receiver meets them)."""
        now = self._now()
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT "
                " COALESCE(SUM(dead_lettered = 0 AND enqueued_at <= :now "
                "              AND (locked_until IS NULL OR locked_until <= :now)), 0),"
                " COALESCE(SUM(dead_lettered = 0 AND enqueued_at > :now), 0),"
                " COALESCE(SUM(dead_lettered = 0 AND locked_until > :now), 0),"
                " COALESCE(SUM(dead_lettered = 1), 0) "
                "FROM messages WHERE queue = :queue",
                {"now": now, "queue": queue},
            ).fetchone()
        return QueueCounts(active=row[0], scheduled=row[1], locked=row[2], dead_lettered=row[3])

    def queues(self) -> list[str]:
        """Names of the queues that hold messages (active, scheduled or dead-lettered)."""
        with self._db.read() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT queue FROM messages ORDER BY queue")]


class EmbeddedTransport:
    """`QueueTransport` and `QueueConsumer` (for the local host) over an `EmbeddedQueue`;
    the SQLite work runs in a worker thread so the event loop never blocks on the file lock."""

    def __init__(self, queue: EmbeddedQueue) -> None:
        self.queue = queue
        #: Set when this process sends to the queue: a waiting receiver looks at once instead of at its next poll
        #: (the webhook and the queue trigger of the local host share one process). Other processes' sends are
        #: still found by polling.
        self._arrivals: dict[str, asyncio.Event] = {}
        #: Sends waiting for the next durable write (group commit) and the task writing them.
        self._outbox: list[tuple[str, OutboundMessage, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    def _arrival(self, queue: str) -> asyncio.Event:
        event = self._arrivals.get(queue)
        if event is None:
            event = self._arrivals[queue] = asyncio.Event()
        return event

    async def send(self, queue: str, message: OutboundMessage) -> None:
        """Enqueue durably. Sends that arrive while one is being written go together in the next transaction:
        one fsync for the group, not one each (webhooks arrive in parallel; an fsync took 1-20 ms here and
        serialised them, issue 11). Each sender still returns only once its own message is on disk."""
        self.queue.check_size(message)  # before joining a group: a message too large fails alone
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((queue, message, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_outbox())
        await asyncio.shield(done)  # a cancelled sender does not cancel the others' write

    async def _write_outbox(self) -> None:
        while self._outbox:
            group, self._outbox = self._outbox, []
            try:
                await asyncio.to_thread(self.queue.send_each, [(queue, message) for queue, message, _ in group])
            except BaseException as exc:
                for _, _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for queue, _, done in group:
                self._arrival(queue).set()
                if not done.done():
                    done.set_result(None)

    async def schedule(self, queue: str, message: OutboundMessage, at: datetime) -> int:
        """Schedule a copy; a dropped duplicate returns the sequence number of the one already accepted, so
        scheduling with a deterministic MessageId is idempotent."""
        copy = message.model_copy(update={"scheduled_enqueue_time_utc": utc(at)})
        [(sequence_number, _)] = await asyncio.to_thread(self.queue._enqueue, queue, [copy])
        return sequence_number

    async def cancel_scheduled(self, sequence_number: int) -> None:
        await asyncio.to_thread(self.queue.cancel_scheduled, sequence_number)

    async def receive_wait(
        self, queue: str, max_messages: int = 1, timeout: float | timedelta = 5.0
    ) -> list[ReceivedMessage]:
        """``EmbeddedQueue.receive_wait``, woken early by a send of this process."""
        return await self.queue.receive_wait(queue, max_messages, timeout, arrival=self._arrival(queue))

    async def complete(self, message: ReceivedMessage) -> None:
        await self.queue.run(self.queue.complete, message.lock_token)

    async def abandon(self, message: ReceivedMessage) -> None:
        await self.queue.run(self.queue.abandon, message.lock_token)

    async def dead_letter(
        self, message: ReceivedMessage, reason: str | None = None, description: str | None = None
    ) -> None:
        await self.queue.run(self.queue.dead_letter, message.lock_token, reason, description)

    async def renew_lock(self, message: ReceivedMessage) -> datetime:
        return await self.queue.run(self.queue.renew_lock, message.lock_token)

    # -- QueueAdmin (operator commands) ---------------------------------------------------------------
    async def counts(self, queue: str) -> QueueCounts:
        return await asyncio.to_thread(self.queue.counts, queue)

    async def peek_dead_letters(self, queue: str, max_messages: int = 100,
                                from_sequence_number: int = 0) -> list[ReceivedMessage]:
        return await asyncio.to_thread(self.queue.peek_dead_letters, queue, max_messages, from_sequence_number)

    async def delete_dead_letters(self, queue: str, sequence_numbers: Iterable[int]) -> set[int]:
        return await asyncio.to_thread(self.queue.delete_dead_letters, queue, list(sequence_numbers))


def _check_queue(queue: str) -> None:
    if not queue or len(queue) > 260:
        raise ValueError(f"invalid queue name {queue!r}")
