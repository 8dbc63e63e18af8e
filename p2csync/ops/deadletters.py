"""``deadletters list | show | replay | purge`` over any QueueAdmin (embedded queue, Service Bus).

Replay sends the dead letter's original body and properties to its queue as a new message and removes the
dead letter only after that send succeeded. The new MessageId is derived from the old one, so replaying the
same dead letter twice (a crash between send and delete) is dropped by duplicate detection. The runtime then
treats it as any delivery (the ledger skips what was already applied), except that it carries
``p2c-replayed-from``: the runtime takes its event as a notification only, so the handler reads the record's
current state from the source and a replay never writes the stale copy in its body.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel

from p2csync.ops.common import MessageClassifier
from p2csync.pauses import PAUSE_WAITS
from p2csync.queue.base import OutboundMessage, QueueAdmin, QueueTransport, ReceivedMessage
from p2csync.runtime import DEFERRALS, LEASE_WAITS, REPLAYED_FROM
#: Retry counters a replay starts again from zero. [Inferred] Kept, a MaxDeferralsExceeded dead letter would
#: be dead-lettered again at its first deferral, however well its cause was fixed.
RESET_ON_REPLAY = (DEFERRALS, LEASE_WAITS, PAUSE_WAITS)
PEEK_LIMIT = 10_000


class DeadLetterFilter(BaseModel):
    queue: str | None = None
    flow: str | None = None
    #: Case-insensitive substring of the dead-letter reason.
    reason: str | None = None
    older_than: timedelta | None = None


class DeadLetter(BaseModel):
    queue: str
    sequence_number: int
    message_id: str
    enqueued_at: AwareDatetime
    reason: str | None
    description: str | None
    flow: str | None
    record_key: str | None
    summary: str
    delivery_count: int
    size: int


class DeadLetterDetail(DeadLetter):
    content_type: str | None
    correlation_id: str | None
    properties: dict[str, Any]
    body: str


class ReplayResult(BaseModel):
    queue: str
    sequence_number: int
    old_message_id: str
    new_message_id: str | None = None
    error: str | None = None


def replay_message_id(old: str, body: bytes) -> str:
    """``<old>~replay``: deterministic (a second replay is a duplicate), distinct from the old id (which
    duplicate detection may still remember). Long or missing ids become a digest, like retry copies."""
    base = old
    if not old or len(old) > 100:
        base = "sha256:" + hashlib.sha256(old.encode() + b"\0" + body).hexdigest()[:48]
    return f"{base}~replay"


def _letter(message: ReceivedMessage, classifier: MessageClassifier) -> tuple[DeadLetter, ReceivedMessage]:
    found = classifier.classify(message)
    return DeadLetter(
        queue=message.queue, sequence_number=message.sequence_number, message_id=message.message_id,
        enqueued_at=message.enqueued_time_utc, reason=message.dead_letter_reason,
        description=message.dead_letter_error_description, flow=found.flow, record_key=found.record_key,
        summary=found.summary, delivery_count=message.delivery_count, size=len(message.body),
    ), message


def _matches(letter: DeadLetter, where: DeadLetterFilter, now: datetime) -> bool:
    if where.flow is not None and letter.flow != where.flow:
        return False
    if where.reason is not None and where.reason.lower() not in (letter.reason or "").lower():
        return False
    return where.older_than is None or letter.enqueued_at <= now - where.older_than


async def find_dead_letters(admin: QueueAdmin, queues: list[str], classifier: MessageClassifier,
                            where: DeadLetterFilter, *, now: datetime,
                            ids: list[str] | None = None) -> list[tuple[DeadLetter, ReceivedMessage]]:
    """Dead letters of ``queues`` (or ``where.queue``) matching the filter and, when given, ``ids`` (sequence
    numbers or MessageIds)."""
    found: list[tuple[DeadLetter, ReceivedMessage]] = []
    wanted = set(ids or [])
    for queue in [where.queue] if where.queue else queues:
        for message in await admin.peek_dead_letters(queue, max_messages=PEEK_LIMIT):
            if wanted and str(message.sequence_number) not in wanted and message.message_id not in wanted:
                continue
            letter, raw = _letter(message, classifier)
            if _matches(letter, where, now):
                found.append((letter, raw))
    return found


def detail(letter: DeadLetter, message: ReceivedMessage) -> DeadLetterDetail:
    return DeadLetterDetail(**letter.model_dump(), content_type=message.content_type,
                            correlation_id=message.correlation_id,
                            properties=dict(message.application_properties),
                            body=message.body.decode("utf-8", "replace"))


async def replay(admin: QueueAdmin, transport: QueueTransport,
                 letters: list[tuple[DeadLetter, ReceivedMessage]]) -> list[ReplayResult]:
    """Send each original to its queue, then delete the dead letter; one failure does not stop the rest."""
    results: list[ReplayResult] = []
    for letter, message in letters:
        properties = {k: v for k, v in message.application_properties.items() if k not in RESET_ON_REPLAY}
        properties[REPLAYED_FROM] = message.message_id
        new_id = replay_message_id(message.message_id, message.body)
        outbound = OutboundMessage(body=message.body, message_id=new_id, content_type=message.content_type,
                                   subject=message.subject, correlation_id=message.correlation_id,
                                   application_properties=properties)
        result = ReplayResult(queue=letter.queue, sequence_number=letter.sequence_number,
                              old_message_id=message.message_id)
        try:
            await transport.send(letter.queue, outbound)
        except Exception as exc:
            results.append(result.model_copy(update={"error": f"not sent ({type(exc).__name__}: {exc}); "
                                                              "the dead letter is kept"}))
            continue
        deleted = await admin.delete_dead_letters(letter.queue, [letter.sequence_number])
        results.append(result.model_copy(update={
            "new_message_id": new_id,
            "error": None if deleted else "sent, but the dead letter was already gone",
        }))
    return results


async def purge(admin: QueueAdmin, letters: list[tuple[DeadLetter, ReceivedMessage]]) -> int:
    """Delete the dead letters for good; how many were deleted."""
    total = 0
    for queue in dict.fromkeys(letter.queue for letter, _ in letters):
        numbers = [letter.sequence_number for letter, _ in letters if letter.queue == queue]
        total += len(await admin.delete_dead_letters(queue, numbers))
    return total
