"""Pull-through: a record whose parent's counterpart is missing in F&O syncs that parent first, inline.

Why: a parent can be missing for good, not just late (an account created before the webhook was registered has
no event that will ever come). Waiting for it would dead-letter the child after the deferral limit; syncing it
through its own flow makes the child land in one delivery.

How (docs/architecture.md, "One change, one lease"): the parent is synced by its own flow's handler, under its
OWN ledger record and lease, as if an event of it had arrived: take the parent's record key, run the handler
(which reads the parent's newest state from Dataverse), commit an Applied outcome with the message key
``pull:<child dedupe key>``, or release the lease on anything else. The parent's ledger state (version, hash,
claim) is then what its own event would have left, so its next real event is deduplicated or skipped as
unchanged: no second write.

Bounded depth: [Inferred] one level (PULL_DEPTH). A document pulls its customer; a contact person pulls its
account. The pulled parent runs with pull-through off, so a chain never grows (nor loops). When the parent's
lease is busy, or its sync does not write it (filtered out, rejected, deferred, failed), the child is deferred
as before, with a reason naming the parent and the parent's own reason.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from handlers.base import FlowContext
from mappings import MappingError
from p2csync.connectors.errors import ConnectorError
from p2csync.envelopes import ChangeEvent
from p2csync.ledger.base import JournalEntry, LeaseBusy, LeaseLost
from p2csync.outcomes import Applied, Outcome, describe

log = logging.getLogger("p2csync.handlers.pull")

#: [Inferred] How many parent levels a record may pull through: one (a document its customer, a contact its account).
PULL_DEPTH = 1
#: The message-key prefix of a parent's outcome committed by a pull-through.
PULL_PREFIX = "pull:"


def pull_key(child: ChangeEvent) -> str:
    """The message key a pulled parent's outcome is recorded under: names the child that pulled it."""
    return f"{PULL_PREFIX}{child.dedupe_key}"


async def pull_parent(ctx: FlowContext, table: str, record_id: str, child: ChangeEvent) -> str | None:
    """Sync the parent row ``table``/``record_id`` through its own flow. None when its counterpart was written
    (Applied); else why not, for the child's deferral reason."""
    if ctx.pull_depth <= 0:
        return f"pull-through is limited to {PULL_DEPTH} level(s)"
    parent_event = ChangeEvent(
        source="dataverse", entity=table, record_id=record_id.lower(), message_name="Update",
        source_message_name="Update", dedupe_key=pull_key(child), version=None, attributes={}, is_complete=False,
        raw_size=0,
    )
    registry = ctx.registry
    if registry is None:  # a context built without a runtime (tests): build one
        from handlers import build_registry  # the registry imports the flows, which import this module

        registry = build_registry(ctx.mappings)
    handler = registry.route(parent_event)
    if handler is None:
        return f"no flow syncs {table} (it cannot be pulled through)"
    record_key = handler.record_key(parent_event)
    owner = f"{PULL_PREFIX}{uuid.uuid4().hex[:12]}:{child.dedupe_key}"
    lease = timedelta(seconds=ctx.settings.lease_seconds)
    try:
        state = await ctx.ledger.acquire(record_key, owner, lease)
    except LeaseBusy:
        return f"{record_key} is being synced by another worker"
    from p2csync.runtime import LeaseKeeper  # the runtime imports the handlers

    keeper = LeaseKeeper(ctx.ledger, record_key, owner, lease)
    committed = False
    try:
        try:
            outcome: Outcome = await keeper.guard(handler.sync(parent_event, state, replace(ctx, pull_depth=0)))
        except (ConnectorError, MappingError) as exc:
            return f"its sync failed: {exc}"
        if not isinstance(outcome, Applied):
            return describe(outcome)
        await keeper.stop()
        await ctx.ledger.commit(record_key, owner, message_key=parent_event.dedupe_key, outcome=outcome.kind,
                                reason=outcome.detail, version=outcome.version, payload_hash=outcome.payload_hash,
                                target_key=outcome.target_key)
        committed = True
        log.info("pulled %s through for %s: %s", record_key, child.dedupe_key, outcome.detail)
        await _journal(ctx, parent_event, record_key, outcome)
        return None
    except LeaseLost:
        return f"the lease on {record_key} was lost while syncing it"
    finally:
        await keeper.stop()
        if not committed:
            try:
                await ctx.ledger.release(record_key, owner)
            except Exception:  # pragma: no cover - the lease then expires on its own
                log.exception("could not release %s", record_key)


async def _journal(ctx: FlowContext, event: ChangeEvent, record_key: str, outcome: Applied) -> None:
    """The parent's write in the audit trail, as its own delivery would have left it."""
    entry = JournalEntry(message_key=event.dedupe_key, record_key=record_key, queue="pull-through",
                         message_id=event.dedupe_key, delivery_count=0, outcome=outcome.kind,
                         reason=describe(outcome), at=datetime.now(UTC))
    try:
        await ctx.ledger.journal(entry)
    except Exception:  # pragma: no cover - bookkeeping only
        log.exception("could not journal the pull-through of %s", record_key)
