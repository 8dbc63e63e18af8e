"""What every F&O -> Sales flow shares: one F&O entity row synced to one Dataverse row through a mapping file.

F&O events are notifications. A data event (relayed by Dataverse for the entity's ``mserp_`` virtual table)
names the row by its key columns (``mserp_<field>``); a business event by its members. Either way the handler
reads the row as it is now from F&O OData by the mapping's ``source.key``, so an event replayed, reordered or
caught up by the scheduled catch-up writes the current state, never an old copy.

Dataverse is written by native upsert: PATCH on the target's alternate key (``target.key``). A key value
Dataverse cannot take in a key URL (``/ < > * % & : \\ ? +``, wire-formats 2.1) is found by ``$filter``
instead and the row written by its id, so an F&O number like ``A/100`` still syncs.

Lookups in the target are written as paths, like the source paths of the other direction:
``transactioncurrencyid.isocurrencycode`` (the currency whose ISO code is the value),
``defaultuomid.uom(name)`` (a lookup whose table is not its name without ``id``), and
``customerid.account(accountnumber).contact(msdynce_contactnumber)`` (polymorphic: the first table that has a
row with that value). Each becomes an ``@odata.bind`` to the row found; a row that is not (yet) in Sales defers
the message, naming it, and the deferral limit ends in a dead letter that says which row never appeared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handlers.base import FlowContext
from mappings import MappedRecord, MappedValueError, MappingSpec, payload_hash, to_json_ready
from mappings.catalog import fno_fields
from mappings.model import DATA_EVENT_MESSAGES, Condition, SourcePath, default_entity_set, parse_path
from mappings.values import is_empty
from p2csync.connectors.errors import InvalidKeyError
from p2csync.connectors.fno import equals_filter, format_key
from p2csync.connectors.odata import odata_literal
from p2csync.connectors.results import UpsertResult
from p2csync.envelopes import RESYNC, ChangeEvent
from p2csync.ledger.base import RecordState
from p2csync.outcomes import Applied, Deferred, Outcome, Rejected, Skipped

log = logging.getLogger("p2csync.handlers")

#: Column prefix of F&O fields on their Dataverse virtual tables (data events name the row with them).
VIRTUAL_PREFIX = "mserp_"
#: Data-event messages (as normalised by the envelope parser); any other trigger is a business event id.
DATA_MESSAGES = DATA_EVENT_MESSAGES
#: [Inferred] How long a row found in Sales for a lookup (a currency, a unit, a customer) is trusted. Such rows
#: are renamed rarely; a wrong bind would be refused by Dataverse or show in the record, not corrupt silently.
LOOKUP_TTL = 600.0
#: [Inferred] How long a record waits for a Sales row it points at (a customer synced the other way, a unit
#: someone must still create) before it looks again; P2C_MAX_DEFERRALS such waits, then a dead letter.
LOOKUP_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class TargetLookup:
    """One lookup column of the target, written as a path: the tables it may point to and the column matched."""

    path: SourcePath

    @property
    def candidates(self) -> list[tuple[str, str]]:
        """(table, column) to try in order."""
        if self.path.by_table:
            return [(table.lower(), column) for table, column in self.path.by_table]
        attribute = self.path.attribute
        table = attribute[:-2] if attribute.lower().endswith("id") else attribute
        return [(table.lower(), str(self.path.column))]

    def navigation(self, table: str) -> str:
        """The single-valued navigation property to bind: the lookup's name, or ``<lookup>_<table>`` for a
        lookup that can point to several tables (customerid_account)."""
        return f"{self.path.attribute}_{table}" if len(self.path.by_table) > 1 else self.path.attribute


_UNKNOWN = object()
#: Edm types whose event values are the values themselves (enums arrive as option values with a label).
_PLAIN_EDM = ("Edm.String", "Edm.Decimal", "Edm.Int32", "Edm.Int64", "Edm.Boolean")


def _shown_value(cond: Condition, value: Any, label: str | None, edm: str) -> Any:
    """The F&O value a data event shows for a filter condition's field, or _UNKNOWN when it does not show it
    plainly (see FnOToSalesRecordSync.filtered_by_event)."""
    if value is _UNKNOWN or value is None:
        return _UNKNOWN
    if edm in _PLAIN_EDM:
        return value
    if label is None:  # an enum's option value without its label (a PreImage): nothing to compare with
        return _UNKNOWN
    named = [v for v in (cond.equals, cond.not_equals, *(cond.in_ or []), *(cond.not_in or [])) if isinstance(v, str)]
    if edm == "NoYes":
        named += ["No", "Yes"]
    return next((symbol for symbol in named if symbol.casefold() == label.strip().casefold()), _UNKNOWN)


class MissingRow(Exception):
    """A row the target record points at is not in Sales."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)


class FnOToSalesRecordSync:
    """Sync one F&O entity row to one Dataverse row through a mapping file (products; the base of orders and
    invoices coming back). Order of work: read the row from F&O by key -> filter -> map -> bind lookups ->
    skip if unchanged -> upsert by alternate key."""

    def __init__(self, flow: str) -> None:
        self.flow = flow
        self.table = ""
        self.entity_set = ""
        self.key_fields: list[str] = []
        self.business_events: frozenset[str] = frozenset()
        #: business event id -> {key field: the event member carrying it} (source.event_keys).
        self.event_keys: dict[str, dict[str, str]] = {}
        self.messages: frozenset[str] = frozenset()
        #: F&O fields the flow's code reads beyond those the mapping names.
        self.header_columns: list[str] = []

    @property
    def flows(self) -> tuple[str, ...]:
        return (self.flow,)

    def bind(self, *specs: MappingSpec) -> FnOToSalesRecordSync:
        spec = specs[0]
        self.table = spec.source.table.lower()
        self.entity_set = str(spec.source.entity_set)
        self.key_fields = list(spec.source.key)
        self.messages = frozenset(t for t in spec.source.triggers if t in DATA_MESSAGES)
        self.business_events = frozenset(t for t in spec.source.triggers if t not in DATA_MESSAGES)
        self.event_keys = {event: dict(members) for event, members in spec.source.event_keys.items()}
        return self

    # ------------------------------------------------------------------------------------------- routing

    def accepts(self, event: ChangeEvent) -> bool:
        if event.source in ("fno_data_event", RESYNC):  # a resync names the data events' table, its key by name
            return event.entity.lower() == self.table
        if event.source == "fno_business_event":
            return event.entity in self.business_events
        return False

    def source_key(self, event: ChangeEvent) -> dict[str, Any] | None:
        """The F&O key of the event's row (dataAreaId lower case), or None when the event does not carry it."""
        key: dict[str, Any] = {}
        images = [event.attributes, *event.pre_images.values(), *event.post_images.values()]
        for name in self.key_fields:
            value: Any = None
            for values in images:
                value = values.get(VIRTUAL_PREFIX + name.lower()) if event.source == "fno_data_event" \
                    else values.get(self.event_member(event, name))
                if not is_empty(value):
                    break
            if is_empty(value) and name == "dataAreaId":
                value = event.company
            if is_empty(value):
                return None
            key[name] = value.strip().lower() if name == "dataAreaId" and isinstance(value, str) else value
        return key

    def event_member(self, event: ChangeEvent, name: str) -> str:
        """The business event member that carries key field ``name`` (source.event_keys; else the same name)."""
        return self.event_keys.get(event.entity, {}).get(name, name)

    def record_key(self, event: ChangeEvent) -> str:
        """``products:CDSReleasedDistinctProducts:(dataAreaId='usmf',ProductNumber='D0001')``: the same for a data
        event, a business event and the catch-up, so all of them serialise on one ledger record."""
        key = self.source_key(event)
        if key is None:
            return f"{self.flow}:{event.entity}:{event.record_id}"
        folded = {k: v.rstrip(" ").casefold() if isinstance(v, str) else v for k, v in key.items()}
        return f"{self.flow}:{self.entity_set}:{format_key(folded)}"

    # ---------------------------------------------------------------------------------------------- sync

    def without_key(self, event: ChangeEvent) -> Rejected:
        """The dead letter of an event that does not say which F&O row it is about."""
        wanted = ", ".join(VIRTUAL_PREFIX + k.lower() if event.source == "fno_data_event"
                           else self.event_member(event, k) for k in self.key_fields)
        return Rejected(reason="EventWithoutKey",
                        description=f"{event.entity} event {event.dedupe_key} does not name its {self.entity_set} "
                                    f"row: it lacks {wanted} (source.key of {self.flow}.yaml)")

    async def sync(self, event: ChangeEvent, state: RecordState, ctx: FlowContext) -> Outcome:
        spec = ctx.mapping(self.flow)
        key = self.source_key(event)
        if key is None:
            return self.without_key(event)
        described = f"{self.entity_set}{format_key(key)}"
        if skipped := self.not_synced(event, described) or self.filtered_by_event(event, spec, described):
            return skipped
        row = await self.read_row(key, [*spec.source_columns(), *self.header_columns], ctx)
        if row is None:
            return Skipped(reason=f"{described} no longer exists in F&O")
        return await self.write(spec, key, row, state, ctx, described)

    async def read_row(self, key: Mapping[str, Any], select: list[str], ctx: FlowContext) -> dict[str, Any] | None:
        """The row by its key. A source key that is only part of the entity's OData key (an invoice is named by
        its number; SalesInvoiceHeadersV2 adds its date and voucher) finds the row with one ``$filter`` query:
        F&O addresses a row only by all its key fields (wire-formats 4.1). Two rows: an error naming them."""
        full = ctx.fno.entity_keys.get(self.entity_set)
        if full is None or set(full) == set(key):
            return await ctx.fno.get(self.entity_set, key, select=select)
        rows = [r async for r in ctx.fno.query(self.entity_set, filter=equals_filter(key), select=select, top=2)]
        if len(rows) > 1:
            raise MappedValueError(self.flow, ", ".join(key), None,
                                   f"two {self.entity_set} rows have {format_key(dict(key))}; source.key must name "
                                   "one row")
        return rows[0] if rows else None

    def event_filter_fields(self, event: ChangeEvent, spec: MappingSpec) -> tuple[str, dict[str, str]]:
        """(entity set of the event's row, {filter field: the field of that row holding its value}): the fields
        of ``spec.filter`` a data event on the header entity shows directly."""
        if event.entity.lower() != self.table:
            return self.entity_set, {}
        return self.entity_set, {column: column for cond in spec.filter for column in cond.columns()}

    def filtered_by_event(self, event: ChangeEvent, spec: MappingSpec, described: str) -> Skipped | None:
        """Skip, without reading F&O, a Create/Update data event whose own values show its row failing the filter.

        Sound because every later state raises its own event (read as usual), and replaying an old one changes
        nothing. Only values the event shows plainly count: the Target over the PreImage (an update's Target
        holds what changed, wire-formats 3.2); an enum only by a label that is a symbol the condition names (or
        No/Yes of a NoYes field), since labels may be translated. Anything else -> read F&O, as without this.
        This is what keeps an order written from Sales (20 lines, all Active) at zero F&O reads here."""
        if event.source != "fno_data_event" or event.message_name not in ("Create", "Update"):
            return None
        entity_set, fields = self.event_filter_fields(event, spec)
        if not fields:
            return None
        values: dict[str, Any] = {}
        for image in event.pre_images.values():
            values.update((name.lower(), value) for name, value in image.items())
        values.update((name.lower(), value) for name, value in event.attributes.items())
        labels = {name.lower(): label for name, label in event.formatted.items() if isinstance(label, str)}
        types = fno_fields(entity_set) or {}
        for cond in spec.filter:
            if cond.field is None or cond.field not in fields:
                continue
            column = fields[cond.field]
            name = VIRTUAL_PREFIX + column.lower()
            value = _shown_value(cond, values.get(name, _UNKNOWN), labels.get(name), types.get(column, ""))
            if value is _UNKNOWN:
                continue
            if (why := cond.failure({cond.field: value})) is not None:
                shown = f"filtered out: {why} (as the {event.message_name} event shows it; F&O not read)"
                return Skipped(reason=self.explain_filtered(shown, {cond.field: value}, described))
        return None

    def explain_filtered(self, reason: str, row: Mapping[str, Any], described: str) -> str:
        """The skip reason of a row the filter keeps out (flows say more: a free-text invoice)."""
        return reason

    def not_synced(self, event: ChangeEvent, described: str) -> Skipped | None:
        """A data-event message the flow does not take (a Delete, usually): skipped with that reason."""
        if event.source == "fno_data_event" and event.message_name not in self.messages:
            return Skipped(reason=f"{event.message_name} of {described} is not synced by the {self.flow} flow "
                                  f"(its triggers: {', '.join(sorted(self.messages)) or 'none'})")
        return None

    async def write(self, spec: MappingSpec, key: Mapping[str, Any], row: Mapping[str, Any], state: RecordState,
                    ctx: FlowContext, described: str) -> Outcome:
        """Filter, map, bind and upsert one F&O row (also the entry point of the catch-up)."""
        prepared = await self.prepare(spec, row, ctx, described)
        if not isinstance(prepared, tuple):
            return prepared
        mapped, body = prepared
        digest = payload_hash(body)
        target = self.target_key(spec, mapped.key)
        if unchanged := self.unchanged(digest, target, state):
            return unchanged
        result = await self.upsert(spec, mapped.key, body, ctx)
        verb = "created" if result.created else "updated"
        return Applied(detail=f"{verb} {spec.target.entity_set}{format_key(mapped.key)} from {described}",
                       payload_hash=digest, target_key=target)

    async def prepare(self, spec: MappingSpec, row: Mapping[str, Any], ctx: FlowContext,
                      described: str) -> tuple[MappedRecord, dict[str, Any]] | Outcome:
        """The mapped record and the Web API body with its lookups bound; or why not (filtered, waiting)."""
        if reason := spec.filter_reason(row):
            return Skipped(reason=self.explain_filtered(f"filtered out: {reason}", row, described))
        mapped = spec.apply(row, default_company=ctx.settings.fno_default_company)
        try:
            body = await self.bind_lookups(spec, mapped.payload, ctx)
        except MissingRow as missing:
            return Deferred(delay=LOOKUP_WAIT_SECONDS,
                            reason=f"waiting for {missing.text} in Sales (the {described} points at it)")
        return mapped, body

    @staticmethod
    def target_key(spec: MappingSpec, key: Mapping[str, Any]) -> str:
        return f"dataverse:{spec.target.entity_set}:{format_key(dict(key))}"

    @staticmethod
    def unchanged(digest: str, target: str, state: RecordState) -> Skipped | None:
        if digest == state.payload_hash and target == state.target_key:
            return Skipped(reason="unchanged: the mapped record equals the last one written", payload_hash=digest,
                           target_key=target)
        return None

    async def upsert(self, spec: MappingSpec, key: dict[str, Any], body: dict[str, Any], ctx: FlowContext,
                     select: list[str] | None = None) -> UpsertResult:
        """Native upsert on the alternate key; a key value Dataverse refuses in a URL is found by $filter and
        the row written by its id (or created)."""
        entity_set = spec.target.entity_set
        try:
            return await ctx.dataverse.upsert(entity_set, key, body, select=select)
        except InvalidKeyError:
            pass
        primary = f"{spec.target.table or entity_set[:-1]}id"
        condition = " and ".join(f"{name} eq {odata_literal(value)}" for name, value in key.items())
        found = [r async for r in ctx.dataverse.query(entity_set, filter=condition, select=[primary], top=2)]
        if len(found) > 1:
            raise MappedValueError(spec.flow, ", ".join(key), None,
                                   f"two {entity_set} rows have {format_key(key)}; Sales must hold one")
        if found:
            return await ctx.dataverse.upsert(entity_set, str(found[0][primary]), body, update_only=True,
                                              select=select)
        return await ctx.dataverse.create(entity_set, body, select=select)

    # ------------------------------------------------------------------------------------------- lookups

    async def bind_lookups(self, spec: MappingSpec, payload: Mapping[str, Any],
                           ctx: FlowContext) -> dict[str, Any]:
        """The payload as the Web API takes it: lookup paths become ``<navigation>@odata.bind`` to the row found
        (an empty value clears the lookup: ``null``). Raises MissingRow naming the row not found."""
        body: dict[str, Any] = {}
        for name, value in payload.items():
            if "." not in name:
                body[name] = to_json_ready(value)
                continue
            lookup = TargetLookup(parse_path(name))
            if is_empty(value):
                body[lookup.navigation(lookup.candidates[0][0]) + "@odata.bind"] = None
                continue
            table, row_id = await self.find_row(lookup, value, ctx)
            body[f"{lookup.navigation(table)}@odata.bind"] = f"/{default_entity_set(table)}({row_id})"
        return body

    async def find_row(self, lookup: TargetLookup, value: Any, ctx: FlowContext) -> tuple[str, str]:
        """The (table, id) of the first candidate table holding a row whose column equals ``value``; cached."""
        now = time.monotonic()
        for table, column in lookup.candidates:
            cache_key = (table, column, str(value).casefold())
            cached = ctx.lookup_cache.get(cache_key)
            if cached is not None and cached[1] > now:
                return table, cached[0]
            primary = f"{table}id"
            rows = [r async for r in ctx.dataverse.query(default_entity_set(table), select=[primary], top=2,
                                                         filter=f"{column} eq {odata_literal(value)}")]
            if len(rows) > 1:
                raise MappedValueError(self.flow, lookup.path.text, None,
                                       f"more than one {table} has {column} {value!r}; the lookup must name one row")
            if rows:
                ctx.lookup_cache[cache_key] = (str(rows[0][primary]), now + LOOKUP_TTL)
                return table, str(rows[0][primary])
        tried = " or ".join(f"a {table} with {column} {value!r}" for table, column in lookup.candidates)
        raise MissingRow(tried)
