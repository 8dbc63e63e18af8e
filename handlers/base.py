"""What every flow handler shares: the context it runs in and the Sales -> F&O record sync.

A handler receives a change event that the runtime has already deduplicated and checked for staleness
and echo, under the record's ledger lease. It works from the newest state of the source record, maps it
and upserts the counterpart. It returns an outcome; it never settles messages itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from mappings import MappingSpec, payload_hash
from p2csync.connectors.dataverse import DataverseClient
from p2csync.connectors.fno import FnOClient
from p2csync.envelopes import ChangeEvent
from p2csync.ledger.base import RecordState
from p2csync.outcomes import Applied, Outcome, Skipped
from p2csync.records import epoch_ms, record_from_webapi, webapi_select
from p2csync.settings import Settings

log = logging.getLogger("p2csync.handlers")


@dataclass
class FlowContext:
    """The services a handler may use: one pooled client per system, the loaded mappings, the settings."""

    settings: Settings
    dataverse: DataverseClient
    fno: FnOClient
    mappings: dict[str, MappingSpec]
    lookup_cache: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    def mapping(self, flow: str) -> MappingSpec:
        return self.mappings[flow]


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

    def bind(self, spec: MappingSpec) -> SalesToFnORecordSync:
        """Take the source table from the mapping, so the registry routes by data, not by code."""
        self.table = spec.source.table
        return self

    def accepts(self, event: ChangeEvent) -> bool:
        return event.source == "dataverse" and event.entity == self.table

    def record_key(self, event: ChangeEvent) -> str:
        return f"{self.flow}:{event.entity}:{event.record_id}"

    async def sync(self, event: ChangeEvent, state: RecordState, ctx: FlowContext) -> Outcome:
        spec = ctx.mapping(self.flow)
        if event.message_name == "Delete" and not self.sync_deletes:
            return Skipped(reason=f"{event.entity} deletes are not synced by the {self.flow} flow")

        record, version = await self._newest_state(event, state, spec, ctx)
        if record is None:
            return Skipped(reason=f"{event.entity} {event.record_id} no longer exists in Dataverse")
        if state.version is not None and version is not None and version < state.version:
            return Skipped(reason=f"stale: fetched version {version} is older than applied {state.version}")

        if reason := spec.filter_reason(record):
            return Skipped(reason=f"filtered out: {reason}", version=version)

        resolved = await self._resolve_lookups(spec, record, ctx)
        mapped = spec.apply(record, resolved=resolved, default_company=ctx.settings.fno_default_company)
        digest = payload_hash(mapped.payload)
        if digest == state.payload_hash:
            return Skipped(reason="unchanged: the mapped payload equals the last one written", version=version,
                           payload_hash=digest)

        result = await ctx.fno.upsert(spec.target.entity_set, mapped.key, mapped.payload)
        key_text = ",".join(f"{k}={v}" for k, v in mapped.key.items())
        verb = "created" if result.created else ("updated" if result.changed else "already up to date")
        return Applied(detail=f"{verb} {spec.target.entity_set}({key_text})", version=version, payload_hash=digest)

    async def _newest_state(
        self, event: ChangeEvent, state: RecordState, spec: MappingSpec, ctx: FlowContext
    ) -> tuple[dict[str, Any] | None, int | None]:
        """The event's own image when it is complete and strictly newer than what was applied; else a fetch.

        Strictly newer, because two states of one record can share a modifiedon second: on a tie only the
        fetched row is known to be the newest.
        """
        newer = event.version is not None and (state.version is None or event.version > state.version)
        if event.is_complete and newer:
            return dict(event.attributes), event.version
        lookups = set(spec.lookup_columns())
        if spec.company_source_column:
            lookups.add(spec.company_source_column)  # business unit / owner: lookups by nature
        select = webapi_select(spec.source_columns(), lookups)
        row = await ctx.dataverse.get(spec.source.entity_set, event.record_id, select=select, annotations="*")
        if row is None:
            return None, None
        record = record_from_webapi(row, money_columns=spec.money_columns())
        return record, epoch_ms(record.get(spec.source.version_field))

    async def _resolve_lookups(self, spec: MappingSpec, record: dict[str, Any], ctx: FlowContext) -> dict[str, Any]:
        """Fetch the columns that dotted source paths read through lookups (cached per process)."""
        resolved: dict[str, Any] = {}
        for request in spec.lookups(record):
            cache_key = (request.table, request.id, request.column)
            if cache_key not in ctx.lookup_cache:
                row = await ctx.dataverse.get(request.entity_set, request.id, select=[request.column])
                ctx.lookup_cache[cache_key] = None if row is None else row.get(request.column)
            resolved[request.path] = ctx.lookup_cache[cache_key]
        return resolved
