"""The runtime: one message in, one outcome out, one settlement.

``SyncRuntime.process`` is the path of one change (docs/architecture.md): parse the envelope, route it to a
flow, drop echoes, take the record's lease in the ledger, skip duplicates and stale versions, let the flow
handler sync the record, record the outcome. ``SyncRuntime.handle`` adds the settlement. Nothing here
knows whether it runs in Azure, in the local host or in a test.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.amqp import AmqpMessageBodyType

from handlers import FlowContext, FlowRegistry, build_registry
from mappings import MappingError, MappingSpec, load_mappings
from mappings.choices import ChoiceLabelError
from p2csync import telemetry
from p2csync.choices import resolve_choice_labels
from p2csync.connectors.auth import (
    AzureIdentityTokenProvider,
    StaticTokenProvider,
    TokenProvider,
    default_credential,
    scope_for,
)
from p2csync.connectors.dataverse import DataverseClient
from p2csync.connectors.errors import ConnectorError, PermanentError, ThrottledError, TransientError
from p2csync.connectors.fno import FnOClient
from p2csync.envelopes import (INGRESS_PROPERTY, WEBHOOK_INGRESS, ChangeEvent, EndpointTestMessage, EnvelopeError,
                               parse_change_event, recent_parses)
from p2csync.ledger.base import JournalEntry, Ledger, LeaseBusy, LeaseLost
from p2csync.outcomes import Applied, Deferred, Outcome, Rejected, Skipped, describe
from p2csync.pauses import PAUSE_WAITS, PauseCache
from p2csync.queue.base import OutboundMessage, PropertyValue, QueueTransport
from p2csync.queue.sizing import MessageSizeExceeded
from p2csync.settings import Settings, SettingsError
from p2csync.settlement import MessageActions, settle

log = logging.getLogger("p2csync.runtime")

DEFERRALS = "p2c-deferrals"
#: A message finding its record held comes back soon this many times (backing off to LEASE_WAIT_CAP seconds,
#: jittered, never past the lease), then when the holder's lease ends.
SHORT_LEASE_WAITS = 3
LEASE_WAIT_CAP = 5.0
#: Waits for a record held by another worker: counted apart from deferrals, because a live holder renews its
#: lease for as long as its sync runs (a throttled F&O, a large document) and waiting on it is not a failure.
LEASE_WAITS = "p2c-lease-waits"
#: Sources whose versions are times (modifiedon in epoch ms), so a version can be checked against the clock.
TIME_VERSIONED_SOURCES = frozenset({"dataverse", "fno_data_event"})
ORIGINAL_MESSAGE_ID = "p2c-original-message-id"
#: After a choice label was found missing, messages wait this long before the metadata is read again (a burst of
#: messages does not become a burst of metadata reads). [Inferred] value.
CHOICE_RECHECK_SECONDS = 60.0
#: Set by ``deadletters replay`` (the MessageId of the dead letter): the body is an old copy, so the event is
#: only a notification and the handler reads the record's current state from the source.
REPLAYED_FROM = "p2c-replayed-from"


def notification_only(event: ChangeEvent, *, drop_version: bool = False) -> ChangeEvent:
    """The event as a mere notification: the handler reads the record's current state from the source, trusting
    neither the event's Target nor its post images (``drop_version``: nor its version)."""
    update: dict[str, Any] = {"is_complete": False, "post_images": {}}
    if drop_version:
        update["version"] = None
    return event.model_copy(update=update)


@dataclass(frozen=True)
class InboundMessage:
    """A queue message as any trigger delivers it (Functions binding, SDK, embedded queue)."""

    queue: str
    body: bytes
    message_id: str
    delivery_count: int = 1
    application_properties: Mapping[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    enqueued_time_utc: datetime | None = None
    lock_token: str | None = None
    body_error: str | None = None  # why the body could not be read as bytes (the message is then rejected)

    @property
    def deferrals(self) -> int:
        return self._count(DEFERRALS)

    @property
    def lease_waits(self) -> int:
        return self._count(LEASE_WAITS)

    @property
    def pause_waits(self) -> int:
        return self._count(PAUSE_WAITS)

    def _count(self, name: str) -> int:
        try:
            return int(self.application_properties.get(name, 0))
        except (TypeError, ValueError):
            return 0

    @classmethod
    def from_trigger(cls, queue: str, msg: Any) -> InboundMessage:
        """From what a queue trigger hands over: the Service Bus SDK's ``ServiceBusReceivedMessage`` (the
        SDK-type binding in Azure, a receiver in the local host) or the embedded queue's ``ReceivedMessage``.

        The SDK gives AMQP strings as bytes (property keys and values) and the raw AMQP delivery count, which
        counts earlier attempts (0 on the first delivery; the embedded queue and .NET count from 1). A body
        that is not binary data is not read at all: the message is rejected with the reason.
        """
        props = {_text(k): _text(v) for k, v in (getattr(msg, "application_properties", None) or {}).items()}
        body, body_error = _body_bytes(msg)
        delivery_count = getattr(msg, "delivery_count", None) or 0
        if isinstance(msg, ServiceBusReceivedMessage):
            delivery_count += 1
        return cls(
            queue=queue,
            body=body,
            body_error=body_error,
            message_id=_text(getattr(msg, "message_id", None) or ""),
            delivery_count=max(delivery_count, 1),
            application_properties=props,
            content_type=_text(getattr(msg, "content_type", None)),
            enqueued_time_utc=getattr(msg, "enqueued_time_utc", None),
            lock_token=str(token) if (token := getattr(msg, "lock_token", None)) else None,
        )


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else value


def _body_bytes(msg: Any) -> tuple[bytes, str | None]:
    """The body as bytes, or an empty body and the reason it is not binary data.

    Dataverse, F&O and our own sender all send AMQP data sections. A value or sequence body (another
    publisher on the queue) is refused rather than guessed at: converting arbitrary values could allocate
    without bound (``bytes(n)``) or turn a dict into its keys.
    """
    body_type = getattr(msg, "body_type", None)
    if body_type is not None and body_type != AmqpMessageBodyType.DATA:
        return b"", f"the message body is an AMQP {getattr(body_type, 'value', body_type)} section, not data"
    body = getattr(msg, "body", None)
    if body is None and callable(getattr(msg, "get_body", None)):
        body = msg.get_body()
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), None
    try:  # the SDK's data body: a generator of byte chunks
        chunks = list(body) if body is not None else []
    except TypeError:
        chunks = [body]
    if all(isinstance(chunk, bytes | bytearray | memoryview) for chunk in chunks):
        return b"".join(bytes(chunk) for chunk in chunks), None
    return b"", f"the message body is {type(body).__name__}, not bytes"


def retry_message_id(original: str, body: bytes, attempt: int) -> str:
    """The MessageId of a deferral's scheduled copy: distinct per original and attempt (duplicate detection
    must not drop it), and the same for the same attempt (scheduling twice after a crash stays one copy).
    An id too long to extend, or none at all, is replaced by a digest of the id and the body."""
    base = original
    if not original or len(original) > 100:
        base = "sha256:" + hashlib.sha256(original.encode() + b"\0" + body).hexdigest()[:48]
    return f"{base}~{attempt}"


def property_value(value: Any) -> PropertyValue | None:
    """An application property as the copy can carry it: AMQP timestamps, UUIDs and the like become text."""
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def backoff(attempt: int, *, base: float = 5.0, cap: float = 300.0, floor: float = 1.0) -> float:
    """Delay before the next try of a deferred message: exponential with full jitter, at least ``floor``."""
    return max(floor, random.uniform(0, min(cap, base * 2**attempt)))


class SyncRuntime:
    """Holds one pooled client per system, the ledger, the queue transport and the flows of one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        transport: QueueTransport | None,
        dataverse: DataverseClient,
        fno: FnOClient,
        mappings: dict[str, MappingSpec],
        registry: FlowRegistry | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.transport = transport
        self.dataverse = dataverse
        self.fno = fno
        self.mappings = mappings
        self.registry = registry or build_registry(mappings)
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.context = FlowContext(settings=settings, dataverse=dataverse, fno=fno, mappings=mappings, ledger=ledger,
                                   registry=self.registry)
        self.pauses = PauseCache(ledger, settings.pause_cache_seconds)
        self._choices_ready = False
        self._choices_lock = asyncio.Lock()
        self._choices_failed: tuple[float, str] | None = None  # (monotonic time to re-check, reason)

    async def start(self) -> None:
        """Resolve the mappings' choice labels against the Dataverse environment (one metadata read per column,
        kept for the process). Building the runtime does no I/O (it is built inside a Functions invocation, and
        by tests), so this runs before the first sync (``process``) or at a local host's start. Raises
        ChoiceLabelError naming the file, the place, the label and the labels that exist; ConnectorError when
        the metadata cannot be read."""
        if self._choices_ready:
            return
        async with self._choices_lock:
            if not self._choices_ready:
                await resolve_choice_labels(self.dataverse, self.mappings)
                self._choices_ready = True

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings) -> SyncRuntime:
        """Build every part from the settings; a wrong mapping file or setting fails here, at start-up."""
        mappings = load_mappings(settings.mappings_dir)
        dataverse_tokens, fno_tokens = _token_providers(settings)
        http = settings.http_options()  # one HttpOptions, but each client builds its own limiter and pacer
        dataverse = DataverseClient(settings.dataverse_url, dataverse_tokens, tag=settings.write_tag, http=http)
        fno = FnOClient(settings.fno_url, fno_tokens, http=http)
        return cls(
            settings,
            ledger=_ledger(settings),
            transport=_transport(settings),
            dataverse=dataverse,
            fno=fno,
            mappings=mappings,
        )

    async def aclose(self) -> None:
        await self.dataverse.aclose()
        await self.fno.aclose()
        if closer := getattr(self.transport, "aclose", None):
            await closer()
        if (close := getattr(self.ledger, "close", None)) is not None:
            result = close()  # SQLite closes synchronously, Table Storage asynchronously
            if asyncio.iscoroutine(result):
                await result

    # -- processing ---------------------------------------------------------------------------------
    async def process(self, message: InboundMessage) -> tuple[Outcome, ChangeEvent | None, str | None]:
        """Decide what becomes of one message. Returns the outcome, the parsed event and the record key."""
        if message.body_error:
            return Rejected(reason="MalformedMessage", description=message.body_error), None, None
        try:
            event = recent_parses.take(message.body) \
                if message.application_properties.get(INGRESS_PROPERTY) == WEBHOOK_INGRESS else None
            if event is None:
                event = parse_change_event(
                    message.body, message.application_properties, content_type=message.content_type
                )
        except EnvelopeError as exc:
            return Rejected(reason="MalformedMessage", description=str(exc)), None, None
        except EndpointTestMessage as test:
            return Skipped(reason=str(test)), None, None

        handler = self.registry.route(event)
        if handler is None:
            return Skipped(reason=f"no flow syncs {event.source} '{event.entity}' {event.message_name}"), event, None
        if echo := self._echo_reason(event):
            return Skipped(reason=echo), event, None

        event = self._distrust_future(event)
        if REPLAYED_FROM in message.application_properties:
            event = notification_only(event)
        record_key = handler.record_key(event)
        telemetry.routed(flow=handler.flow, record_key=record_key, correlation_id=event.correlation_id,
                         event_time=event.event_time)
        if await self.pauses.is_paused(handler.flow):
            # Before the lease: a paused flow's message touches neither the record nor the counterpart. The
            # same delay for every one (no jitter) brings them back in the order they were paused.
            return Deferred(delay=self.settings.pause_recheck_seconds, paused=True,
                            reason=f"paused: the {handler.flow} flow is paused"), event, record_key
        owner = f"{self.instance_id}:{message.message_id}:{message.delivery_count}"
        lease = timedelta(seconds=self.settings.lease_seconds)
        try:
            state = await self.ledger.acquire(record_key, owner, lease)
        except LeaseBusy as busy:
            return self._wait_for_lease(busy, message), event, record_key

        keeper = LeaseKeeper(self.ledger, record_key, owner, lease)
        committed = False
        try:
            prior = await self.ledger.message_outcome(record_key, event.dedupe_key)
            if prior is not None:
                outcome: Outcome = Skipped(reason=f"duplicate: this change was already {prior.outcome} "
                                                  f"at {prior.recorded_at:%Y-%m-%dT%H:%M:%SZ}")
                return outcome, event, record_key
            untrusted_state = self._is_future_version(event, state.version)
            if untrusted_state:  # nothing to compare with: only the record's current state is safe to write
                log.warning("%s: the applied version %s lies in the future; not trusting it", record_key,
                            state.version)
                state = state.model_copy(update={"version": None})
                event = notification_only(event)
            stale = event.version is not None and state.version is not None and event.version < state.version
            if stale and event.source not in TIME_VERSIONED_SOURCES:
                # A control number cannot be checked against the clock, so a forged or corrupt one could make
                # every later event look stale forever: such an event is only a notification (re-read).
                event = notification_only(event, drop_version=True)
                stale = False
            if stale:
                outcome = Skipped(reason=f"stale: version {event.version} is older than applied {state.version}")
            else:
                outcome = await keeper.guard(self._sync(handler, event, state, message))
            if outcome.is_final:
                version = getattr(outcome, "version", None)
                if self._is_future_version(event, version):
                    log.warning("%s: not recording version %s, which lies in the future", record_key, version)
                    version = None
                await keeper.stop()
                await self.ledger.commit(
                    record_key, owner, message_key=event.dedupe_key, outcome=outcome.kind,
                    reason=getattr(outcome, "reason", None) or getattr(outcome, "detail", None),
                    version=version, payload_hash=getattr(outcome, "payload_hash", None),
                    target_key=getattr(outcome, "target_key", None),
                    replace_version=untrusted_state and version is not None,
                )
                committed = True
            return outcome, event, record_key
        except LeaseLost:
            return Deferred(delay=1.0, reason=f"lease on {record_key} expired while syncing; will re-check"), \
                event, record_key
        finally:
            await keeper.stop()
            if not committed:
                await _quietly(self.ledger.release(record_key, owner))

    async def _choices_pending(self, message: InboundMessage) -> Deferred | None:
        """None once the choice labels are resolved. Until then every message waits (deferred, so nothing is
        lost while the mapping or the environment is fixed, and dead-lettered with the reason after
        P2C_MAX_DEFERRALS): a label the environment does not have is a configuration error, like a bad mapping
        file, not a fault of the message."""
        if self._choices_ready:
            return None
        failed = self._choices_failed
        if failed is not None and time.monotonic() < failed[0]:
            return Deferred(delay=backoff(message.deferrals), reason=failed[1])
        try:
            await self.start()
        except ChoiceLabelError as exc:
            reason = f"mapping choice labels do not match this Dataverse environment: {exc}"
            log.error("%s", reason)
            self._choices_failed = (time.monotonic() + CHOICE_RECHECK_SECONDS, reason)
            return Deferred(delay=backoff(message.deferrals), reason=reason)
        except ConnectorError as exc:
            return Deferred(delay=backoff(message.deferrals),
                            reason=f"cannot read the mappings' choice columns from Dataverse: {exc}")
        self._choices_failed = None
        return None

    def _wait_for_lease(self, busy: LeaseBusy, message: InboundMessage) -> Deferred:
        """Come back soon SHORT_LEASE_WAITS times, backing off to at most LEASE_WAIT_CAP seconds (a live holder
        usually finishes within a second), then when the holder's lease ends: a crashed holder stops renewing, so
        its lease runs out within P2C_LEASE_SECONDS and the record is free again. Two short tries held some of
        the 20 line events of one document a whole lease behind a sync that took a second (issue 11: the demo
        spent 30 s so). These waits are counted apart from deferrals (P2C_MAX_LEASE_WAITS), so a long
        but live sync of the record does not use up the deferrals of the messages queued behind it."""
        remaining = max(0.0, (busy.until - datetime.now(UTC)).total_seconds())
        at_lease_end = remaining + random.uniform(0.1, 0.5)
        waits = message.lease_waits
        short = min(backoff(waits, base=0.5, cap=LEASE_WAIT_CAP, floor=0.2), at_lease_end)
        delay = short if waits < SHORT_LEASE_WAITS else at_lease_end
        log.info("record %s is held by %s for %.1f s more; message %s comes back in %.1f s (wait %d)",
                 busy.record_key, busy.holder, remaining, message.message_id, delay, waits + 1)
        return Deferred(delay=delay, lease_wait=True,
                        reason=f"record {busy.record_key} is being synced by another worker "
                               f"(its lease ends in {remaining:.1f} s)")

    def _future_horizon_ms(self) -> int:
        return int((datetime.now(UTC).timestamp() + self.settings.max_future_seconds) * 1000)

    def _is_future_version(self, event: ChangeEvent, version: int | None) -> bool:
        """A time-based version (modifiedon in epoch ms) further ahead of our clock than allowed."""
        return (version is not None and event.source in TIME_VERSIONED_SOURCES
                and version > self._future_horizon_ms())

    def _distrust_future(self, event: ChangeEvent) -> ChangeEvent:
        """An event whose version or time lies too far in the future (forged, corrupt, or a skewed clock) is
        only a notification: its version is dropped (so it neither skips real changes as stale nor gets
        recorded) and the handler reads the record's current state from the source."""
        horizon = self._future_horizon_ms()
        future_time = event.event_time is not None and event.event_time.timestamp() * 1000 > horizon
        if not (future_time or self._is_future_version(event, event.version)):
            return event
        log.warning("%s: version %s / time %s lies more than %.0f s ahead of this clock; re-reading the "
                    "record instead of trusting the event", event.dedupe_key, event.version,
                    event.event_time, self.settings.max_future_seconds)
        return notification_only(event, drop_version=True)

    async def _sync(self, handler: Any, event: ChangeEvent, state: Any, message: InboundMessage) -> Outcome:
        """Run the flow handler and classify what it raises (first, once, resolve the choice labels)."""
        if (waiting := await self._choices_pending(message)) is not None:
            return waiting
        try:
            with telemetry.sync(handler.flow):
                return await handler.sync(event, state, self.context)
        except ThrottledError as exc:
            delay = exc.retry_after if exc.retry_after is not None else backoff(message.deferrals)
            return Deferred(delay=delay, reason=f"throttled by {exc.system}: {exc.message}")
        except TransientError as exc:
            return Deferred(delay=backoff(message.deferrals), reason=f"{exc.system} unavailable: {exc}")
        except PermanentError as exc:
            return Rejected(reason=f"{exc.system}Rejected", description=str(exc))
        except ConnectorError as exc:
            return Rejected(reason=f"{exc.system}Error", description=str(exc))
        except MappingError as exc:
            return Rejected(reason="MappingFailed", description=str(exc))

    def _echo_reason(self, event: ChangeEvent) -> str | None:
        """Layers 1 and 2 of echo suppression: our own user, our own write tag. (Layer 3 is the hash.)"""
        if event.tag and event.tag == self.settings.write_tag:
            return f"echo: the change carries our write tag '{event.tag}'"
        users = set(self.settings.integration_user_ids)
        if users and (event.initiating_user_id in users or event.user_id in users):
            return "echo: the change was made by the integration's own user"
        return None

    # -- settlement ---------------------------------------------------------------------------------
    async def handle(self, message: InboundMessage, raw: Any, actions: MessageActions) -> Outcome:
        """Process one delivery and settle it (``_handle``) inside its telemetry scope: the correlation id
        and trace context the message carries, a span, the outcome metrics."""
        with telemetry.processing(message.queue, message.message_id, message.delivery_count,
                                  message.application_properties) as scope:
            outcome = await self._handle(message, raw, actions)
            scope.finish(outcome)
        return outcome

    async def _handle(self, message: InboundMessage, raw: Any, actions: MessageActions) -> Outcome:
        """Process one delivery and settle ``raw`` (the trigger's message) through ``actions``.

        Never raises for a bad message. An unexpected error (a bug, the ledger unreachable) is deferred like a
        transient one, with backoff, so a short outage does not burn the queue's delivery count in seconds;
        if it persists, the message is dead-lettered with the error as its reason (MaxDeferralsExceeded).
        """
        try:
            outcome, event, record_key = await self.process(message)
        except Exception as exc:
            log.exception("unexpected error on message %s (delivery %d)", message.message_id, message.delivery_count)
            outcome = Deferred(delay=backoff(message.deferrals), reason=f"unexpected {type(exc).__name__}: {exc}")
            event = record_key = None

        if isinstance(outcome, Deferred) and outcome.lease_wait and message.lease_waits >= self.settings.max_lease_waits:
            outcome = Rejected(reason="MaxDeferralsExceeded",
                               description=f"waited {message.lease_waits} times for a record another worker "
                                           f"kept syncing; last reason: {outcome.reason}")
        elif (isinstance(outcome, Deferred) and not outcome.lease_wait and not outcome.paused
              and message.deferrals >= self.settings.max_deferrals):
            outcome = Rejected(reason="MaxDeferralsExceeded",
                               description=f"deferred {message.deferrals} times; last reason: {outcome.reason}")
        if isinstance(outcome, Deferred) and self.transport is None:
            log.warning("no queue transport to reschedule %s; abandoning instead", message.message_id)
            await self._journal(message, event, record_key, outcome.kind, outcome.reason, outcome)
            await settle(actions.abandon, raw)
            return outcome
        if isinstance(outcome, Deferred):
            try:
                await self._reschedule(message, outcome)
            except MessageSizeExceeded as exc:  # our retry properties pushed it over: no retry can be queued
                outcome = Rejected(reason="RetryCopyTooLarge",
                                   description=f"{outcome.reason}; its retry copy cannot be queued: {exc}")
            except Exception:  # the queue is unreachable: let it redeliver the original instead
                log.exception("could not schedule the retry of %s; abandoning it", message.message_id)
                await self._journal(message, event, record_key, outcome.kind, describe(outcome), outcome)
                await settle(actions.abandon, raw)
                return outcome

        await self._journal(message, event, record_key, outcome.kind, describe(outcome), outcome)
        log.info("%s %s -> %s", message.queue, message.message_id, describe(outcome))
        match outcome:
            case Applied() | Skipped() | Deferred():
                await settle(actions.complete, raw)  # a deferral's copy is scheduled: complete the original
            case Rejected(reason=reason, description=description):
                # Service Bus caps both at 4096 UTF-16 units; 2000 code points always fit (the journal has it all)
                await settle(actions.deadletter, raw, deadletter_reason=reason[:2000],
                             deadletter_error_description=description[:2000])
        return outcome

    async def _reschedule(self, message: InboundMessage, deferred: Deferred) -> None:
        """A deferral is a new scheduled copy of the message (then the original is completed). Its MessageId
        differs so duplicate detection keeps it; the dedupe key inside the body is unchanged."""
        assert self.transport is not None
        delay = deferred.delay
        attempt = message.deferrals + message.lease_waits + message.pause_waits + 1  # distinct per copy
        props = message.application_properties
        original = str(props[ORIGINAL_MESSAGE_ID]) if ORIGINAL_MESSAGE_ID in props else message.message_id
        properties = {key: kept for key, value in props.items() if (kept := property_value(value)) is not None}
        properties.update({ORIGINAL_MESSAGE_ID: original})
        telemetry.stamp(properties)  # the copy keeps the change's correlation id and trace
        if deferred.paused:
            properties[PAUSE_WAITS] = message.pause_waits + 1
        elif deferred.lease_wait:
            properties[LEASE_WAITS] = message.lease_waits + 1
        else:
            properties[DEFERRALS] = message.deferrals + 1
        copy = OutboundMessage(
            body=message.body,
            message_id=retry_message_id(original, message.body, attempt),
            content_type=message.content_type or "application/json",
            application_properties=properties,
        )
        await self.transport.schedule(message.queue, copy, datetime.now(UTC) + timedelta(seconds=delay))

    async def _journal(
        self, message: InboundMessage, event: ChangeEvent | None, record_key: str | None, outcome: str, reason: str,
        result: Outcome | None = None,
    ) -> None:
        entry = JournalEntry(
            message_key=event.dedupe_key if event else message.message_id,
            record_key=record_key,
            queue=message.queue,
            message_id=message.message_id,
            delivery_count=message.delivery_count,
            outcome=outcome,
            reason=reason,
            detail=None,
            at=datetime.now(UTC),
            correlation_id=event.correlation_id if event else None,
            version=getattr(result, "version", None),
            target_key=getattr(result, "target_key", None),
        )
        await _quietly(self.ledger.journal(entry))


class LeaseKeeper:
    """Renews a record's lease every third of its length while a handler works on the record.

    Why: the lease can then be short (seconds), so the records of a worker that crashed are free again
    within one lease, while a slow sync (a throttled F&O, a large document) keeps its hold for as long as it
    runs. A renewal never re-takes a lease (``Ledger.renew``), so one landing after the commit is harmless.
    When the hold is lost (taken over, or renewals failing until it could have been), the guarded work is
    cancelled: another worker may be writing the record, and an older state must not land after its newer one.
    """

    def __init__(self, ledger: Ledger, record_key: str, owner: str, lease: timedelta) -> None:
        self.ledger, self.record_key, self.owner, self.lease = ledger, record_key, owner, lease
        self.renewals = 0
        self.lost = False
        self._work: asyncio.Task[Any] | None = None
        self._loop = asyncio.get_running_loop()
        self._valid_until = self._loop.time() + lease.total_seconds()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"lease:{record_key}")

    async def guard(self, work: Any) -> Any:
        """Run ``work`` (a coroutine); LeaseLost if the hold is lost before it ends (the work is cancelled)."""
        self._work = asyncio.ensure_future(work)
        try:
            return await self._work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.lost and not (current is not None and current.cancelling()):
                raise LeaseLost(self.record_key, self.owner) from None
            raise
        finally:
            self._work = None

    def _lose(self, why: str) -> None:
        log.warning("lost the lease on %s while syncing it (%s); stopping the sync", self.record_key, why)
        self.lost = True
        if self._work is not None:
            self._work.cancel()

    async def _run(self) -> None:
        interval = self.lease.total_seconds() / 3
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                await self.ledger.renew(self.record_key, self.owner, self.lease)
            except LeaseLost:
                self._lose("another worker holds it, or it was released")
                return
            except Exception as exc:
                if self._loop.time() >= self._valid_until - interval / 2:
                    self._lose(f"renewals failing until it could expire: {type(exc).__name__}")
                    return
                log.warning("could not renew the lease on %s (%s); trying again", self.record_key, exc)
            else:
                self.renewals += 1
                self._valid_until = self._loop.time() + self.lease.total_seconds()

    async def stop(self) -> None:
        """Stop renewing. Waits briefly for a renewal in flight (harmless either way: a renewal never re-takes
        a lease), then gives up on it."""
        self._stop.set()
        done, _ = await asyncio.wait({self._task}, timeout=2.0)
        if not done:
            self._task.cancel()


async def _quietly(awaitable: Any) -> None:
    """Best effort for bookkeeping that must not turn a settled outcome into a failure."""
    try:
        await awaitable
    except Exception:  # pragma: no cover - logged, not raised
        log.exception("ledger bookkeeping failed")


def _token_providers(settings: Settings) -> tuple[TokenProvider, TokenProvider]:
    if settings.auth_mode == "static":
        if not settings.static_token:
            raise SettingsError("P2C_STATIC_TOKEN: required when P2C_AUTH_MODE=static")
        token = StaticTokenProvider(settings.static_token)
        return token, token
    credential = default_credential(settings.managed_identity_client_id)
    return (
        AzureIdentityTokenProvider(credential, scope_for(settings.dataverse_url)),
        AzureIdentityTokenProvider(credential, scope_for(settings.fno_url)),
    )


def _ledger(settings: Settings) -> Ledger:
    """SQLite when a local file is set; else Table Storage with the app's identity (shared-key access is off)."""
    if settings.ledger_path is not None:
        from p2csync.ledger.sqlite import SqliteLedger

        return SqliteLedger(settings.ledger_path)
    if settings.ledger_table_endpoint:
        from p2csync.ledger.table import TableLedger

        credential = default_credential(settings.managed_identity_client_id)
        return TableLedger.from_endpoint(settings.ledger_table_endpoint, settings.ledger_table_name, credential)
    raise SettingsError("no ledger configured: set P2C_LEDGER_PATH (SQLite) or LEDGER_TABLE_ENDPOINT (Table Storage)")


def _transport(settings: Settings) -> QueueTransport | None:
    """The embedded queue when a local queue file is set (local host), else the Service Bus namespace of the
    triggers' own connection (Azure), else none (the webhook then answers 503)."""
    if settings.local_queue_path is not None:
        from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport

        return EmbeddedTransport(EmbeddedQueue(settings.local_queue_path,
                                               max_message_bytes=settings.servicebus_max_message_bytes))
    if settings.servicebus_namespace:
        from p2csync.queue.servicebus import ServiceBusTransport

        credential = default_credential(settings.managed_identity_client_id)
        return ServiceBusTransport.for_namespace(settings.servicebus_namespace, credential,
                                                 max_message_bytes=settings.servicebus_max_message_bytes)
    return None


_runtimes: dict[int, SyncRuntime] = {}


def get_runtime() -> SyncRuntime:
    """The process's runtime for the running event loop (pooled clients are bound to their loop)."""
    loop_id = id(asyncio.get_running_loop())
    runtime = _runtimes.get(loop_id)
    if runtime is None:
        telemetry.configure()
        runtime = _runtimes[loop_id] = SyncRuntime.from_settings(Settings.from_env())
    return runtime


def reset_runtimes() -> None:
    """Forget cached runtimes (tests and the local host use it between configurations)."""
    _runtimes.clear()


async def close_runtimes() -> None:
    """Close the pooled clients of every cached runtime, then forget them."""
    for runtime in list(_runtimes.values()):
        await runtime.aclose()
    _runtimes.clear()
