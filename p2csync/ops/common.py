"""What the operator commands share: durations, the flow of a record key, reason categories, and the
classifier that names the flow and record of a queued message."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from p2csync.envelopes import EndpointTestMessage, EnvelopeError, parse_change_event
from p2csync.ledger.base import JournalEntry
from p2csync.queue.base import ReceivedMessage

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``2d``, ``1w`` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use a number and s, m, h, d or w (e.g. 1h, 30m)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])


def flow_of(record_key: str | None) -> str | None:
    """Record keys start with their flow (``accounts:account:<id>``, handlers.base)."""
    if not record_key or ":" not in record_key:
        return None
    return record_key.split(":", 1)[0]


_REJECTED = re.compile(r"^rejected \(([^)]*)\)")
_DEFERRED = re.compile(r"^deferred [\d.]+s: ")


def reason_category(entry: JournalEntry) -> str:
    """A reason to group by: the journal keeps a full sentence per delivery (``describe(outcome)``), whose
    first clause names the kind of reason. [Inferred] The clause up to the first ``:`` (rejections: the
    dead-letter reason in brackets; applied: the verb), cut to 60 characters."""
    text = entry.reason or ""
    if match := _REJECTED.match(text):
        return match.group(1)
    text = _DEFERRED.sub("", text)
    for prefix in ("applied: ", "skipped: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if entry.outcome == "applied":
        return text.split(" ", 1)[0] or "applied"
    if "is being synced by another worker" in text:
        return "waiting for another worker"
    return text.split(":", 1)[0].strip()[:60] or entry.outcome


def is_throttled(entry: JournalEntry) -> bool:
    """A deferral because a system answered 429 (the runtime's reason says ``throttled by <system>``)."""
    return entry.outcome == "deferred" and "throttled by " in (entry.reason or "")


def is_pause_wait(entry: JournalEntry) -> bool:
    return entry.outcome == "deferred" and "paused: the " in (entry.reason or "")


@dataclass(frozen=True)
class Classified:
    """What a queued message is about: its flow and record (None when the body cannot be read or routed)."""

    flow: str | None
    record_key: str | None
    summary: str


class MessageClassifier:
    """Names the flow and record of a message as the runtime would route it (envelope parser + flow
    registry), so dead letters can be filtered by flow without a journal entry for them."""

    def __init__(self, registry: object | None) -> None:
        self.registry = registry

    def classify(self, message: ReceivedMessage) -> Classified:
        try:
            event = parse_change_event(message.body, message.application_properties,
                                       content_type=message.content_type)
        except EndpointTestMessage:
            return Classified(None, None, "an endpoint test message")
        except EnvelopeError as exc:
            return Classified(None, None, f"unreadable: {exc}"[:200])
        summary = f"{event.source} {event.entity} {event.message_name} {event.record_id or ''}".strip()
        route = getattr(self.registry, "route", None)
        handler = route(event) if route is not None else None
        if handler is None:
            return Classified(None, None, summary)
        return Classified(handler.flow, handler.record_key(event), summary)
