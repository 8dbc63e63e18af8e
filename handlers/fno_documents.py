"""The F&O -> Sales document core: an F&O document (a header and its lines: a sales order, an invoice) written to
Sales as ONE unit, the mirror of handlers/documents.py.

* One ledger record per document, ``<flow>:<header entity set>:(dataAreaId=...,<number>=...)``. A line's data
  event names its document by the header's key fields, which the CDS line entities carry under the same names
  (dataAreaId, SalesOrderNumber; InvoiceNumber): header and line events of one document serialise on it.
* A sync reads the document from F&O as it is now: the header by key and its lines with one ``$filter`` query.
  It maps both, binds their lookups (customer, currency, products, units: by value, cached), and compares the
  whole mapped document with the ledger: unchanged -> nothing is written (no Dataverse call beyond the reads).
* Sales is read once: the header by its alternate key and its lines. The writes go in ONE ``$batch`` change set
  (all or nothing): the header (upsert by alternate key), then each line matched on its sequence number within
  the document: changed lines updated, new lines created and bound to the header, lines F&O no longer has
  deleted. A document Sales already holds in the same state costs no write.
* Lines are matched on the sequence number within their document (reference 9.5), so the lines of an order made
  in Sales (which carry no F&O order number) are the ones updated when the order comes back.

Everything flow-specific (entities, fields, filters, value maps) is in the mapping file; flows add what the
mapping cannot say (orders: the header tax write-in line; the closed order Sales keeps) by overriding hooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from handlers.base import FlowContext
from handlers.fno_records import FnOToSalesRecordSync, MissingRow
from mappings import MappedValueError, MappingSpec, canonical_json, payload_hash
from mappings.model import LineSpec, parse_path
from mappings.values import is_empty
from p2csync.connectors.dataverse import Create, Delete, Upsert, bind
from p2csync.connectors.fno import format_key
from p2csync.connectors.odata import odata_literal
from p2csync.envelopes import ChangeEvent
from p2csync.ledger.base import RecordState
from p2csync.outcomes import Applied, Deferred, Outcome, Rejected, Skipped

LINE_WAIT_SECONDS = 30.0


@dataclass
class MappedLines:
    """The lines of one line set as Sales should hold them: sequence number -> Web API body."""

    spec: LineSpec
    bodies: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SalesState:
    """What Sales holds of the document: the header row (None: not there) and its lines by sequence number."""

    header: dict[str, Any] | None
    lines: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)


class FnOToSalesDocumentSync(FnOToSalesRecordSync):
    """An F&O document -> a Sales document, header and lines in one change set."""

    def __init__(self, flow: str) -> None:
        super().__init__(flow)
        self.line_tables: dict[str, LineSpec] = {}

    def bind(self, *specs: MappingSpec) -> FnOToSalesDocumentSync:
        super().bind(*specs)
        spec = specs[0]
        if not spec.lines:
            raise ValueError(f"{self.flow}: a document mapping needs a 'lines:' section")
        self.line_tables = {line.source.table.lower(): line for line in spec.lines}
        return self

    # ------------------------------------------------------------------------------------------- routing

    def accepts(self, event: ChangeEvent) -> bool:
        if event.source == "fno_data_event" and event.entity.lower() in self.line_tables:
            return True
        return super().accepts(event)

    # A line's data event carries the header's key fields under the same names, so source_key reads the
    # document's key from it as from a header event.

    def event_filter_fields(self, event: ChangeEvent, spec: MappingSpec) -> tuple[str, dict[str, str]]:
        """A line event shows the header filter fields its entity repeats (lines.source.header_filter_fields)."""
        line = self.line_tables.get(event.entity.lower())
        if line is None:
            return super().event_filter_fields(event, spec)
        return str(line.source.entity_set or ""), dict(line.source.header_filter_fields)

    # ---------------------------------------------------------------------------------------------- sync

    def not_synced(self, event: ChangeEvent, described: str) -> Skipped | None:
        """A header's Delete is not synced (the Sales document stays); a line's Delete syncs the document."""
        is_header = event.entity.lower() == self.table or event.source == "fno_business_event"
        if is_header and event.source == "fno_data_event" and event.message_name == "Delete":
            return Skipped(reason=f"Delete of {described} is not synced by the {self.flow} flow (the Sales "
                                  "document stays)")
        return None

    async def write(self, spec: MappingSpec, key: Mapping[str, Any], header: Mapping[str, Any],
                    state: RecordState, ctx: FlowContext, described: str) -> Outcome:
        """Filter, read the lines, map, bind, diff with Sales and write (also the entry point of the catch-up)."""
        if reason := spec.filter_reason(header):
            return Skipped(reason=self.explain_filtered(f"filtered out: {reason}", header, described))
        source_lines = {line.name: await self.read_lines(line, key, ctx) for line in spec.lines}
        mapped = spec.apply(header, default_company=ctx.settings.fno_default_company)
        try:
            body = await self.bind_lookups(spec, mapped.payload, ctx)
            lines = {name: await self.map_lines(spec, spec.line(name), rows, mapped.company, ctx)
                     for name, rows in source_lines.items()}
        except MissingRow as missing:
            return Deferred(delay=LINE_WAIT_SECONDS,
                            reason=f"waiting for {missing.text} in Sales (the {described} points at it)")
        self.extra_lines(spec, header, lines)
        digest = payload_hash({"header": body, "lines": {n: {str(k): v for k, v in m.bodies.items()}
                                                         for n, m in lines.items()}})
        target = self.target_key(spec, mapped.key)
        if unchanged := self.unchanged(digest, target, state):
            return unchanged
        sales = await self.read_sales(spec, mapped.key, ctx)
        if refusal := self.refuse(spec, sales, described):
            return refusal.model_copy(update={"payload_hash": digest, "target_key": target}) \
                if isinstance(refusal, Skipped) else refusal
        related, note = await self.related_writes(spec, header, body, ctx)
        operations, summary = self.plan(spec, mapped.key, body, lines, sales)
        operations += related
        summary += f"; {note}" if note else ""
        if len(operations) > ctx.dataverse.batch_size:
            return Rejected(reason="DocumentTooLarge",
                            description=f"{described} needs {len(operations)} writes in Sales, more than one change "
                                        f"set takes ({ctx.dataverse.batch_size}); it is never written in parts")
        results = await ctx.dataverse.batch(operations, atomic=True)
        failed = next((r for r in results if r.failed_here), None) or next((r for r in results if not r.ok), None)
        if failed is not None and failed.error is not None:
            raise failed.error
        verb = "created" if sales.header is None else "updated"
        return Applied(detail=f"{verb} {spec.target.entity_set}{format_key(mapped.key)} from {described} "
                              f"({summary}) in one change set of {len(operations)} operations",
                       payload_hash=digest, target_key=target)

    # -------------------------------------------------------------------------------------------- F&O side

    async def read_lines(self, line: LineSpec, key: Mapping[str, Any], ctx: FlowContext) -> list[dict[str, Any]]:
        """The document's lines, by the header key fields the line entity carries."""
        condition = " and ".join(f"{name} eq {odata_literal(value)}" for name, value in key.items())
        entity_set = str(line.source.entity_set)
        select = list(dict.fromkeys([*line_columns(line), *key]))
        return [row async for row in ctx.fno.query(entity_set, filter=condition, select=select)]

    async def map_lines(self, spec: MappingSpec, line: LineSpec, rows: Sequence[Mapping[str, Any]], company: str,
                        ctx: FlowContext) -> MappedLines:
        mapped = MappedLines(line)
        sequence = line.target.key[-1]
        for row in rows:
            if spec.filter_reason(row, line=line.name) is not None:  # a line left out (on_filtered: skip_line)
                continue
            one = spec.apply_line(line.name, row, company=company)
            body = await self.bind_lookups(spec, one.payload, ctx)
            number = body.get(sequence)
            if is_empty(number):
                continue
            if int(number) in mapped.bodies:  # never collapse two lines into one
                raise MappedValueError(f"{self.flow}.{line.name}", sequence, line.source.sequence_column,
                                       f"two {line.source.entity_set} lines of the document have {number}")
            mapped.bodies[int(number)] = body
        return mapped

    def extra_lines(self, spec: MappingSpec, header: Mapping[str, Any], lines: dict[str, MappedLines]) -> None:
        """Hook: lines a flow adds that F&O has no line for (orders: the header tax write-in line)."""

    # ------------------------------------------------------------------------------------------ Sales side

    def header_id_column(self, spec: MappingSpec) -> str:
        return f"{spec.target.table}id"

    async def read_sales(self, spec: MappingSpec, key: Mapping[str, Any], ctx: FlowContext) -> SalesState:
        id_column = self.header_id_column(spec)
        header = await ctx.dataverse.get(spec.target.entity_set, dict(key),
                                         select=[id_column, "statecode", "statuscode"])
        state = SalesState(header=header)
        for line in spec.lines:
            state.lines[line.name] = {}
            if header is None:
                continue
            sequence = line.target.key[-1]
            line_id = f"{line.target.table}id"
            rows = ctx.dataverse.query(line.target.entity_set, select=[line_id, *line_target_columns(line)],
                                       filter=f"_{id_column}_value eq {header[id_column]}")
            async for row in rows:
                if not is_empty(row.get(sequence)):
                    state.lines[line.name][int(row[sequence])] = row
        return state

    async def related_writes(self, spec: MappingSpec, header: Mapping[str, Any], body: dict[str, Any],
                             ctx: FlowContext) -> tuple[list[Any], str | None]:
        """Hook: writes to other Sales rows that belong in the document's change set, after the document's own,
        and what they do (invoices: the order moves to Invoiced); it may add to the header body (the invoice's
        owner is the order's). Called once the document is known to differ from what was last written."""
        return [], None

    def refuse(self, spec: MappingSpec, sales: SalesState, described: str) -> Outcome | None:
        """Hook: a Sales document this flow must not write (orders: one closed in Sales)."""
        return None

    def plan(self, spec: MappingSpec, key: Mapping[str, Any], body: dict[str, Any],
             lines: Mapping[str, MappedLines], sales: SalesState) -> tuple[list[Any], str]:
        """The change set: the header, then per line set the changed, new and removed lines. A header or line
        Sales holds with the same values is not written."""
        operations: list[Any] = []
        header_set = spec.target.entity_set
        id_column = self.header_id_column(spec)
        notes: list[str] = []
        if sales.header is None:
            operations.append(Upsert(header_set, dict(key), body, create_only=True))
            parent = "$1"
            notes.append("header")
        else:
            parent = bind(header_set, str(sales.header[id_column]))
            operations.append(Upsert(header_set, str(sales.header[id_column]), self.header_update(body),
                                     update_only=True))
            notes.append("header")
        for name, mapped in lines.items():
            line = mapped.spec
            existing = sales.lines.get(name, {})
            line_id = f"{line.target.table}id"
            added = changed = removed = 0
            for number, line_body in sorted(mapped.bodies.items()):
                row = existing.get(number)
                if row is None:
                    operations.append(Create(line.target.entity_set, {**line_body, f"{id_column}@odata.bind": parent}))
                    added += 1
                elif _differs(line_body, row):
                    operations.append(Upsert(line.target.entity_set, str(row[line_id]), line_body, update_only=True))
                    changed += 1
            for number, row in sorted(existing.items()):
                if number not in mapped.bodies:
                    operations.append(Delete(line.target.entity_set, str(row[line_id])))
                    removed += 1
            notes.append(f"{name}: {added} added, {changed} changed, {removed} removed")
        return operations, "; ".join(notes)

    def header_update(self, body: dict[str, Any]) -> dict[str, Any]:
        """Hook: the header body for an update of a document Sales holds already."""
        return body



def line_columns(line: LineSpec) -> list[str]:
    columns = [p.text for f in line.fields for p in f.source]
    columns += [c for cond in line.filter for c in cond.columns()]
    return [c for c in dict.fromkeys([*columns, *line.source.columns]) if c]


def line_target_columns(line: LineSpec) -> list[str]:
    """The Sales columns the line mapping writes, lookups as their ``_<lookup>_value`` (to compare a line)."""
    return list(dict.fromkeys(f.target if "." not in f.target else f"_{parse_path(f.target).attribute}_value"
                              for f in line.fields))


def _differs(body: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """Whether a line body would change the Sales row: a bound lookup always counts as a change when the row does
    not show the same id (``_<lookup>_value``)."""
    for name, value in body.items():
        if name.endswith("@odata.bind"):
            navigation = name[: -len("@odata.bind")]  # the lookup, or <lookup>_<table> for a polymorphic one
            current = row.get(f"_{navigation}_value", row.get(f"_{navigation.rsplit('_', 1)[0]}_value"))
            wanted = None if value is None else str(value)[str(value).find("(") + 1:-1]
            if current is None or str(current).lower() != str(wanted).lower():
                return True
            continue
        if name not in row:
            return True
        if canonical_json({"v": value}) != canonical_json({"v": row[name]}):
            return True
    return False
