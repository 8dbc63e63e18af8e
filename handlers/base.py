"""What every flow handler shares: the context it runs in and the Sales -> F&O record sync.

A handler receives a change event that the runtime has already deduplicated and checked for staleness
and echo, under the record's ledger lease. It works from the newest state of the source record, maps it
and upserts the counterpart. It returns an outcome; it never settles messages itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mappings import MappedRecord, MappedValueError, MappingSpec, payload_hash
from mappings.model import default_entity_set
from mappings.values import is_empty, is_entity_ref
from p2csync.connectors.dataverse import DataverseClient
from p2csync.connectors.fno import FnOClient, format_key
from p2csync.envelopes import RESYNC, ChangeEvent
from p2csync.envelopes.dataverse import EntityRef
from p2csync.ledger.base import Ledger, RecordState
from p2csync.outcomes import Applied, Deferred, Outcome, Rejected, Skipped
from p2csync.records import epoch_ms, image_alias, record_from_webapi, webapi_select
from p2csync.settings import Settings

log = logging.getLogger("p2csync.handlers")


@dataclass
class FlowContext:
    """The services a handler may use: one pooled client per system, the loaded mappings, the settings."""

    settings: Settings
    dataverse: DataverseClient
    fno: FnOClient
    mappings: dict[str, MappingSpec]
    ledger: Ledger
    lookup_cache: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    #: Parent levels a missing parent may still be synced through (handlers/pull.py); 0 inside a pulled parent.
    pull_depth: int = 1
    #: The runtime's flow registry (a FlowRegistry), so a pull-through routes the parent without rebuilding it.
    registry: Any = None

    def mapping(self, flow: str) -> MappingSpec:
        return self.mappings[flow]


#: How long a business unit's name is trusted (renames are rare; a stale name would route to another company).
BUSINESS_UNIT_NAME_TTL = 600.0
#: [Inferred] How long a record waits for its parent's counterpart (company.parent, must_exist) before it looks
#: again: an account normally reaches F&O within seconds of its own event; P2C_MAX_DEFERRALS (20) such waits is
#: about 10 minutes, after which the message is dead-lettered naming the parent.
PARENT_WAIT_SECONDS = 30.0
#: The column holding the display name of the tables a company routing column can point at.
PRIMARY_NAME_COLUMNS = {"businessunit": "name", "team": "name", "systemuser": "fullname"}


def target_key(system: str, entity_set: str, key: dict[str, Any]) -> str:
    """The ledger's name of one counterpart record: ``fno:CustomersV3:(dataAreaId='usmf',CustomerAccount='us-001')``.

    Text values are case-folded and lose trailing spaces because F&O (SQL Server) compares keys that way:
    ``US-001``, ``us-001`` and ``US-001 `` are one customer, so source records carrying them conflict."""
    folded = {name: value.rstrip(" ").casefold() if isinstance(value, str) else value for name, value in key.items()}
    return f"{system}:{entity_set}:{format_key(folded)}"


def describe_target(target: str) -> str:
    """``fno:CustomersV3:(...)`` -> ``CustomersV3(...)``."""
    _, entity_set, key = target.split(":", 2)
    return f"{entity_set}{key}"


_KEY_PART = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)=('(?:[^']|'')*'|[^,)]*)\s*(?:,|$)")


def parse_target_key(target: str) -> tuple[str, dict[str, Any]]:
    """``fno:CDSContactPersonsV2:(dataAreaId='usmf',...)`` -> (entity set, key) with the key's values as the
    ledger keeps them (text case-folded: F&O compares keys without case, so they still address the row).
    Numbers come back as int, enum and other unquoted literals as text."""
    _, entity_set, predicate = target.split(":", 2)
    body = predicate.strip()
    if not (body.startswith("(") and body.endswith(")")):
        raise ValueError(f"not a key predicate: {predicate!r}")
    key: dict[str, Any] = {}
    for name, raw in _KEY_PART.findall(body[1:-1]):
        if raw.startswith("'"):
            key[name] = raw[1:-1].replace("''", "'")
        elif enum := re.match(r"^[\w.]+'(.*)'$", raw):
            key[name] = enum.group(1).replace("''", "'")
        elif re.fullmatch(r"-?\d+", raw):
            key[name] = int(raw)
        else:
            key[name] = raw
    return entity_set, key


def source_id(record_key: str) -> str:
    """The source record's own id from a ledger record key (``accounts:account:<guid>`` -> ``<guid>``)."""
    return record_key.rsplit(":", 1)[-1]


class FlowHandler(Protocol):
    """One flow (accounts, contacts, ...). The registry asks each handler whether it takes an event."""

    flow: str

    def accepts(self, event: ChangeEvent) -> bool: ...

    def record_key(self, event: ChangeEvent) -> str: ...

    async def sync(self, event: ChangeEvent, state: RecordState, ctx: FlowContext) -> Outcome: ...


class SalesToFnORecordSync:
    """Sync one Dataverse row to one F&O entity row through a mapping file.

    Used as is by flows whose source is a single Dataverse table (accounts), and as the building block of
    the others. The mapping file names the tables, entity sets and fields; this class holds the order of
    work: newest state -> filter -> lookups -> map -> skip if unchanged -> upsert.
    """

    def __init__(self, flow: str, *, sync_deletes: bool = False) -> None:
        self.flow = flow
        self.sync_deletes = sync_deletes
        self.table = ""  # set by bind(): the mapping file names the source table

    @property
    def flows(self) -> tuple[str, ...]:
        """The mapping files this handler serves (the registry binds those present)."""
        return (self.flow,)

    def bind(self, *specs: MappingSpec) -> SalesToFnORecordSync:
        """Take the source table from the mapping, so the registry routes by data, not by code."""
        self.table = specs[0].source.table
        return self

    def accepts(self, event: ChangeEvent) -> bool:
        """Events of the table, and resyncs of it (backfill, reconcile: a notification to re-read the row)."""
        return event.source in ("dataverse", RESYNC) and event.entity == self.table

    def record_key(self, event: ChangeEvent) -> str:
        return f"{self.flow}:{event.entity}:{event.record_id}"

    async def sync(self, event: ChangeEvent, state: RecordState, ctx: FlowContext) -> Outcome:
        if event.message_name == "Delete" and not self.sync_deletes:
            return await self._deleted(event, state, ctx)
        spec = ctx.mapping(self.flow)

        record, version = await self._newest_state(event, state, spec, ctx)
        if record is None:
            return Skipped(reason=f"{event.entity} {event.record_id} no longer exists in Dataverse")
        if state.version is not None and version is not None and version < state.version:
            return Skipped(reason=f"stale: fetched version {version} is older than applied {state.version}")

        if reason := spec.filter_reason(record):
            return Skipped(reason=f"filtered out: {reason}", version=version)

        mapped = await self._map_record(spec, record, ctx, event)
        if isinstance(mapped, Deferred):
            return mapped
        target = target_key("fno", spec.target.entity_set, mapped.key)
        if conflict := await self._claim(event, state, target, ctx):
            return conflict
        digest = payload_hash(mapped.payload)
        if digest == state.payload_hash:
            return Skipped(reason="unchanged: the mapped payload equals the last one written", version=version,
                           payload_hash=digest, target_key=target)

        done = await self._upsert(spec, mapped, state, target, ctx)
        return Applied(detail=done, version=version, payload_hash=digest, target_key=target)

    @staticmethod
    async def _upsert(spec: MappingSpec, mapped: MappedRecord, state: RecordState, target: str,
                      ctx: FlowContext) -> str:
        """Write the counterpart in one F&O call when the ledger's guess holds: PATCH a row this record wrote
        before (its target key is the ledger's), POST one it never wrote; the other call only when F&O says
        otherwise. What was done, e.g. ``created CustomersV3(dataAreaId=usmf,CustomerAccount=US-001)``."""
        result = await ctx.fno.upsert(spec.target.entity_set, mapped.key, mapped.payload,
                                      exists=state.target_key == target)
        key_text = ",".join(f"{k}={v}" for k, v in mapped.key.items())
        verb = "created" if result.created else ("updated" if result.changed else "already up to date")
        return f"{verb} {spec.target.entity_set}({key_text})"

    async def _deleted(self, event: ChangeEvent, state: RecordState, ctx: FlowContext) -> Outcome:
        """Deletes are not synced (F&O records with transactions cannot go); the record's claim is released, so
        its number may now be used by another Sales record."""
        reason = f"{event.entity} deletes are not synced by the {self.flow} flow"
        if state.target_key and await ctx.ledger.unclaim(state.target_key, self.record_key(event)):
            reason += f"; {describe_target(state.target_key)} is no longer claimed by this {event.entity}"
        return Skipped(reason=reason)

    async def _claim(self, event: ChangeEvent, state: RecordState, target: str, ctx: FlowContext) -> Outcome | None:
        """Make this source record the owner of its counterpart, before anything is written.

        Where Sales has no alternate key on the number (an optional install step of P2C), two Sales records
        can carry the same number; writing both would merge them into one F&O record, the second silently
        overwriting the first. The first keeps it; the second is dead-lettered naming both. Free when the
        record already owns this target (the ledger state says so): no extra call on the common path."""
        if target == state.target_key:
            return None
        record_key = self.record_key(event)
        owner = await ctx.ledger.claim(target, record_key, previous=state.target_key)
        if owner == record_key:
            return None
        return Rejected(
            reason="TargetConflict",
            description=(
                f"{event.entity} {source_id(record_key)} and {event.entity} {source_id(owner)} both map to "
                f"{describe_target(target)}; it is already synced from {source_id(owner)}, so nothing was "
                f"written for {source_id(record_key)}. Two {event.entity} records must not share one F&O key "
                "(duplicate numbers are not supported, as in the Prospect to cash templates): give one of them "
                f"another number (or delete {source_id(owner)} in Sales, which frees the number), then replay "
                "this message."
            ),
        )

    async def _resolve_company_name(
        self, spec: MappingSpec, record: dict[str, Any], ctx: FlowContext
    ) -> dict[str, Any]:
        """Fill in the name of the record's business unit when the mapping routes companies by name.

        Webhook payloads carry EntityReference names as null (a Create's owningbusinessunit has only its id),
        while a fetched row has the formatted name: without this, the Create would route by name to the
        default company and the next Update to the named one, making two customers in two companies."""
        column = spec.company_source_column
        ref = record.get(column)
        if not spec.company_routes_by_name or not is_entity_ref(ref) or ref.name:
            return record
        cache_key = (ref.logical_name, ref.id, "@name")
        cached = ctx.lookup_cache.get(cache_key)
        now = time.monotonic()
        if cached is None or cached[1] <= now:
            name_column = PRIMARY_NAME_COLUMNS.get(ref.logical_name, "name")
            entity_set = spec.source.lookup_entity_sets.get(ref.logical_name) or default_entity_set(ref.logical_name)
            row = await ctx.dataverse.get(entity_set, ref.id, select=[name_column])
            cached = ctx.lookup_cache[cache_key] = (None if row is None else row.get(name_column),
                                                    now + BUSINESS_UNIT_NAME_TTL)
        name = cached[0]
        if not name:
            # Routing on without the name would send the record to the default company, and its next
            # (fetched) event to the named one: two records in two companies. Refuse instead.
            raise MappedValueError(self.flow, spec.company_target_field or "company", column,
                                   f"{ref.logical_name} {ref.id} has no name Dataverse returns to this user, and "
                                   "company.business_units routes by name")
        return {**record, column: EntityRef(id=str(ref.id), logical_name=ref.logical_name, name=str(name))}

    async def _map_record(self, spec: MappingSpec, record: Mapping[str, Any], ctx: FlowContext,
                          child: ChangeEvent | None = None) -> MappedRecord | Deferred:
        """Route the record's company (by its parent row when the mapping says ``company.parent``, else by its
        business unit, resolving the unit's name when routing by name), resolve its lookups, and map it; or a
        Deferred while the parent's counterpart is not in F&O (``child`` lets the parent be pulled through)."""
        company: str | None = None
        known: dict[str, Any] = {}
        if spec.company.parent is not None:
            routed = await self._parent_company(spec, record, ctx, child)
            if isinstance(routed, Deferred):
                return routed
            company, known = routed
        resolved = await self._resolve_lookups(spec, record, ctx, known)
        if company is None:
            record = await self._resolve_company_name(spec, record, ctx)
        return spec.apply(record, resolved=resolved, default_company=ctx.settings.fno_default_company,
                          company=company)

    async def _parent_company(
        self, spec: MappingSpec, record: Mapping[str, Any], ctx: FlowContext, child: ChangeEvent | None = None
    ) -> tuple[str, dict[str, Any]] | Deferred:
        """The company of the record's parent (routed by the parent flow's mapping), the parent's columns the
        record's lookup paths read (fresh: a renumbered account must not leave a stale number), or a Deferred
        naming the parent while its counterpart is not in F&O yet. With ``child`` (the event being synced) a
        missing counterpart is first synced through the parent's own flow (handlers/pull.py)."""
        parent_rule = spec.company.parent
        assert parent_rule is not None
        ref = record.get(parent_rule.lookup)
        if not is_entity_ref(ref):  # the filter normally says so first
            raise MappedValueError(spec.flow, spec.company_target_field or "company", parent_rule.lookup,
                                   "no parent row to route by")
        parent_spec = ctx.mappings.get(parent_rule.flow_for(ref.logical_name), spec)
        paths = [p for f in spec.fields for p in f.source if p.attribute == parent_rule.lookup and p.is_lookup]
        columns = [c for p in paths if (c := p.column_for(ref.logical_name)) is not None]
        routing_column = parent_spec.company_source_column
        lookups = {routing_column} if routing_column else set()
        own_set = parent_spec.source.entity_set if parent_spec.source.table == ref.logical_name else None
        entity_set = (spec.source.lookup_entity_sets.get(ref.logical_name) or own_set
                      or default_entity_set(ref.logical_name))
        select = webapi_select(list(dict.fromkeys([*columns, *lookups])), lookups)
        row = await ctx.dataverse.get(entity_set, str(ref.id), select=select, annotations="*")
        name = f"{ref.logical_name} {ref.id}" + (f" ({ref.name})" if ref.name else "")
        if row is None:
            return Deferred(delay=PARENT_WAIT_SECONDS, reason=f"waiting for {name}: it is not readable in "
                            "Dataverse (deleted, or not shared with the integration user)")
        parent = record_from_webapi(row)
        known = {p.text: parent.get(c) for p in paths if (c := p.column_for(ref.logical_name)) is not None}
        parent = await self._resolve_company_name(parent_spec, parent, ctx)
        company = parent_spec.route_company(parent, ctx.settings.fno_default_company)
        if parent_rule.must_exist:
            number = next((v for v in known.values() if not is_empty(v)), None)
            if number is None:
                return Deferred(delay=PARENT_WAIT_SECONDS,
                                reason=f"waiting for {name}: it has no {', '.join(columns)} yet, so it has no "
                                       f"F&O counterpart for this {spec.source.table} to belong to")
            missing = await self._parent_missing(parent_spec, company, str(number), ctx)
            if missing and child is not None:
                from handlers.pull import pull_parent  # pull imports this module

                why = await pull_parent(ctx, ref.logical_name, str(ref.id), child)
                if why is None:
                    return company, known
            if missing:
                pulled = f"; it could not be pulled through ({why})" if child is not None else ""
                return Deferred(delay=PARENT_WAIT_SECONDS,
                                reason=f"waiting for {name}: {missing} does not exist in F&O yet (the "
                                       f"{parent_spec.flow} flow creates it){pulled}")
        return company, known

    @staticmethod
    async def _parent_missing(parent_spec: MappingSpec, company: str, number: str, ctx: FlowContext) -> str | None:
        """``CustomersV3(dataAreaId=usmf,CustomerAccount=X)`` when the parent's counterpart is not in F&O, else
        None. The parent flow's key is its company field plus one number field."""
        company_field = parent_spec.company_target_field
        others = [name for name in parent_spec.target.key if name != company_field]
        if company_field is None or len(others) != 1:
            return None  # not a (company, number) key: nothing this check can address
        key = {company_field: company, others[0]: number}
        row = await ctx.fno.get(parent_spec.target.entity_set, key, select=list(key))
        if row is not None:
            return None
        return f"{parent_spec.target.entity_set}({company_field}={company},{others[0]}={number})"

    async def _newest_state(
        self, event: ChangeEvent, state: RecordState, spec: MappingSpec | Sequence[MappingSpec], ctx: FlowContext
    ) -> tuple[dict[str, Any] | None, int | None]:
        """The event's own image when it is complete and strictly newer than what was applied; else a fetch.

        Strictly newer, because two states of one record can share a modifiedon second: on a tie only the
        fetched row is known to be the newest. Several specs (flows of one table): one fetch of what they all
        read.
        """
        newer = event.version is not None and (state.version is None or event.version > state.version)
        if event.is_complete and newer:
            return dict(event.attributes), event.version
        specs = [spec] if isinstance(spec, MappingSpec) else list(spec)
        if newer and (image := self._trusted_image(event, specs)) is not None:
            return image, event.version
        lookups: set[str] = set()
        columns: list[str] = []
        money: list[str] = []
        for one in specs:
            lookups.update(one.lookup_columns())
            if one.company_source_column:
                lookups.add(one.company_source_column)  # business unit / owner: lookups by nature
            columns += one.source_columns()
            money += one.money_columns()
        select = webapi_select(list(dict.fromkeys(columns)), lookups)
        first = specs[0]
        row = await ctx.dataverse.get(first.source.entity_set, event.record_id, select=select, annotations="*")
        if row is None:
            return None, None
        record = record_from_webapi(row, money_columns=list(dict.fromkeys(money)))
        return record, epoch_ms(record.get(first.source.version_field))

    @staticmethod
    def _trusted_image(event: ChangeEvent, specs: Sequence[MappingSpec]) -> dict[str, Any] | None:
        """An Update's post image when it was registered with every column these mappings read (its alias says
        so, records.image_alias): the record as of the event, absent columns being null (Dataverse leaves nulls
        out of images). None when the registration predates a mapping change: the record is fetched."""
        columns = {c for one in specs for c in one.source_columns() if c != one.source.id_column}
        image = event.post_images.get(image_alias(columns))
        if image is None:
            return None
        return {**dict.fromkeys(columns), **image, **event.attributes}

    async def _resolve_lookups(
        self, spec: MappingSpec, record: dict[str, Any], ctx: FlowContext, known: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Fetch the columns that dotted source paths read through lookups (cached per process, single-flight:
        concurrent records naming one currency share one read); paths in ``known`` are already answered (read
        fresh by the caller)."""
        resolved: dict[str, Any] = dict(known or {})
        for request in spec.lookups(record):
            if request.path in resolved:
                continue
            cache_key = (request.table, request.id, request.column)
            pending = ctx.lookup_cache.get(cache_key)
            if pending is None:
                pending = ctx.lookup_cache[cache_key] = asyncio.ensure_future(
                    ctx.dataverse.get(request.entity_set, request.id, select=[request.column]))
            try:
                row = await asyncio.shield(pending)
            except BaseException:
                if pending.done():  # a failed read is not cached: the next record tries again
                    ctx.lookup_cache.pop(cache_key, None)
                raise
            resolved[request.path] = None if row is None else row.get(request.column)
        return resolved
