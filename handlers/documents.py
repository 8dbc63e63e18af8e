"""The document core: a Sales document (a header and its lines: quote + quotedetail, order + orderdetail) synced
to F&O as ONE unit.

Why one unit: F&O must never hold half a document, and a quote saved with 20 lines raises 21 webhooks that
must not become 21 syncs. So:

* One ledger record per document, ``<flow>:<header table>:<header id>``. A line event is routed to its
  document's record key by its parent lookup (post image for Create/Update, the pre image registered on the
  line's Delete step). All events of a document are serialised under that record's lease.
* A sync reads the whole document (header GET + one ``$filter`` on the lines) and records its version, the
  largest ``modifiedon`` of header and lines. The runtime skips an event older than the recorded version
  (stale: no calls); one of the same second re-reads, finds the mapped document unchanged (ledger hash) and
  writes nothing (no F&O call). A fetched document is the current one: it is never skipped as "stale" (a
  removed line can lower its largest ``modifiedon``).
* Rows of one document carry the times of different transactions. ``modifiedon`` is stamped when a write
  starts, not when it commits, so a line stamped before a row the read saw may commit just after the read. Its
  event must not look stale: a document read less than P2C_DOCUMENT_SETTLE_SECONDS (5 s) after its newest
  change records the read time minus that window as its version, so such a line's event re-reads the document
  (Dataverse reads only; F&O is written only when the mapped document changed).
* F&O is read in two calls (a non-atomic ``$batch`` of reads: the header and every reference the document
  names, e.g. the customer and the released products; one ``$filter`` query for the lines) and written in
  one atomic change set, header first, then removed, changed and added lines. Nothing is written when nothing
  differs. A document costs at most 3 F&O calls; none when the ledger shows it unchanged.
* Never half-written: a change set is all-or-nothing; a host that dies between the reads and the write wrote
  nothing, and the next delivery diffs against what F&O holds and converges.
* References (``references:`` in the mapping): a missing one whose source is in Sales (``pull:``, the customer)
  is synced first through its own flow, under its own ledger record (handlers/pull.py; one more F&O read of the
  references follows). A missing one that cannot be pulled defers the message naming it (and why it was not
  pulled); after the deferral limit it is dead-lettered naming the reference that never appeared.

Everything flow-specific (tables, fields, filters, keys, references) is in the mapping file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from handlers.base import FlowContext, SalesToFnORecordSync, describe_target, target_key
from mappings import MappedRecord, MappingSpec, payload_hash
from mappings.model import LineSpec, Reference, default_entity_set, parse_path
from mappings.values import is_empty, is_entity_ref
from p2csync.connectors.errors import ConnectorError
from p2csync.connectors.fno import (
    BatchOperation,
    BatchResult,
    Create,
    Delete,
    Read,
    Update,
    chunk_operations,
    equals_filter,
    same_value,
)
from p2csync.envelopes import RESYNC, ChangeEvent
from p2csync.ledger.base import RecordState
from p2csync.outcomes import Applied, Deferred, Outcome, Rejected, Skipped
from p2csync.records import LOOKUP_TABLE, epoch_ms, record_from_webapi, webapi_select

log = logging.getLogger("p2csync.handlers.documents")

#: [Inferred] How long a document waits for a missing reference (its customer, a released product) before it
#: looks again: P2C_MAX_DEFERRALS (20) such waits is about 10 minutes, then the message is dead-lettered.
REFERENCE_WAIT_SECONDS = 30.0
#: GUIDs per ``$filter`` of related rows (products, units): short enough for any URL limit.
IDS_PER_QUERY = 50
#: The Sales states a closed-as-revised quote has (statecode Closed, statuscode Revised): its number lives on in
#: the new revision, which takes over its F&O counterpart.
REVISED = (3, 7)


@dataclass
class SalesDocument:
    """A document as read from Dataverse: the header, its lines per line set (with the values of the related
    rows each line reads), and its version."""

    header: dict[str, Any]
    lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    resolved: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    version: int | None = None


@dataclass
class MappedDocument:
    header: MappedRecord
    lines: dict[str, list[MappedRecord]]

    def digest(self) -> str:
        """One hash of header and lines (lines in key order), for the ledger's "unchanged" check."""
        return payload_hash({
            "header": self.header.payload,
            "lines": {name: sorted((line.payload for line in lines), key=lambda p: repr(sorted(p.items())))
                      for name, lines in self.lines.items()},
        })


class DocumentSync(SalesToFnORecordSync):
    """Sync one Sales document (header + lines) to F&O through one mapping file with a ``lines:`` section."""

    #: Write the document once, then leave it to F&O (orders after activation): an F&O header that exists
    #: already means "owned by F&O", whatever the ledger says (it survives a lost or rebuilt ledger).
    create_only: bool = False

    def __init__(self, flow: str) -> None:
        super().__init__(flow)
        self.line_sets: dict[str, str] = {}  # line table -> line set name
        #: (line entity set, lookup) pairs Dataverse refused to $expand: read by table from then on.
        self._not_expandable: set[tuple[str, str]] = set()

    def bind(self, *specs: MappingSpec) -> DocumentSync:
        spec = specs[0]
        if not spec.lines:
            raise ValueError(f"{self.flow}: a document mapping needs a 'lines:' section")
        self.table = spec.source.table
        self.line_sets = {line.source.table: line.name for line in spec.lines}
        self._parents = {line.source.table: line.source.parent_column for line in spec.lines}
        return self

    def accepts(self, event: ChangeEvent) -> bool:
        return event.source in ("dataverse", RESYNC) and (event.entity == self.table
                                                           or event.entity in self.line_sets)

    def record_key(self, event: ChangeEvent) -> str:
        """The document's key for the header and every line event that names its document."""
        document = self.document_id(event)
        if document is None:
            return f"{self.flow}:{event.entity}:{event.record_id}"
        return self.document_key(document)

    def document_key(self, document_id: str) -> str:
        return f"{self.flow}:{self.table}:{document_id}"

    def document_id(self, event: ChangeEvent) -> str | None:
        """The header id of the event's document: the record itself, or a line's parent lookup (its post image,
        or the pre image of a Delete). None when the payload does not say (trimmed by the size limit)."""
        if event.entity == self.table:
            return event.record_id
        column = self._parents[event.entity]
        for values in (event.attributes, *event.pre_images.values(), *event.post_images.values()):
            ref = values.get(column)
            if is_entity_ref(ref):
                return str(ref.id).lower()
        return None

    # ----------------------------------------------------------------------------------------------- sync

    async def sync(self, event: ChangeEvent, state: RecordState, ctx: FlowContext) -> Outcome:
        spec = ctx.mapping(self.flow)
        if event.entity == self.table and event.message_name == "Delete":
            return await super().sync(event, state, ctx)  # not synced; frees the claim (base behaviour)
        document_id = self.document_id(event) or await self._parent_of_line(event, spec, ctx)
        if document_id is None:
            return Skipped(reason=f"{event.entity} {event.record_id} no longer exists in Dataverse and the event "
                                  f"does not name its {self.table}")
        record_key = self.document_key(document_id)
        owned = record_key == self.record_key(event)  # False only for a trimmed line event (its own record)

        document = await self.read_document(spec, document_id, ctx)
        if document is None:
            return Skipped(reason=f"{self.table} {document_id} no longer exists in Dataverse")
        version = document.version
        if reason := spec.filter_reason(document.header):
            return Skipped(reason=f"filtered out: {reason}", version=version)
        kept = self._filter_lines(spec, document)
        if isinstance(kept, Skipped):
            return kept.model_copy(update={"version": version})

        mapped = await self._map(spec, document, kept, ctx)
        if isinstance(mapped, Deferred):  # the customer is not readable in Dataverse (company.parent routing)
            return mapped
        target = target_key("fno", spec.target.entity_set, mapped.header.key)
        if conflict := await self._claim_document(event, state, target, record_key, spec, ctx):
            return conflict
        digest = mapped.digest()
        if digest == state.payload_hash and target == state.target_key:
            return Skipped(reason="unchanged: the mapped document equals the last one written", version=version,
                           payload_hash=digest, target_key=target)

        outcome = await self._write(spec, mapped, version, digest, target, ctx, document.header, event)
        if not owned:  # a line's own record: the document's state and claim stay with the document's record
            outcome = outcome.model_copy(update={"payload_hash": None, "target_key": None})
        return outcome

    # ------------------------------------------------------------------------------------------- Dataverse

    async def read_document(self, spec: MappingSpec, document_id: str, ctx: FlowContext) -> SalesDocument | None:
        """The header and all its lines as they are now, with the related rows the lines read (products, units).
        Two reads for the document, one per related table."""
        read_at = int(time.time() * 1000)
        lookups = set(spec.lookup_columns())
        if spec.company_source_column:
            lookups.add(spec.company_source_column)
        columns = spec.source_columns()
        for line in spec.lines:  # columns of the header that line paths read through the parent lookup
            columns += [p.column_for(self.table) or "" for f in line.fields for p in f.source
                        if p.attribute == line.source.parent_column and p.is_lookup]
        select = webapi_select([c for c in dict.fromkeys(columns) if c], lookups)
        row = await ctx.dataverse.get(spec.source.entity_set, document_id, select=select, annotations="*")
        if row is None:
            return None
        header = record_from_webapi(row, money_columns=frozenset(spec.money_columns()))
        versions = [epoch_ms(header.get(spec.source.version_field))]
        document = SalesDocument(header=header)
        for line in spec.lines:
            rows, related = await self._read_lines(spec, line, document_id, ctx)
            versions += [epoch_ms(r.get(line.source.version_field)) for r in rows]
            rows.sort(key=lambda r: (r.get(line.source.sequence_column) is None, r.get(line.source.sequence_column) or 0))
            document.lines[line.name] = rows
            document.resolved[line.name] = await self._resolve_line_lookups(spec, line, header, rows, ctx, related)
        known = [v for v in versions if v is not None]
        settled = read_at - int(ctx.settings.document_settle_seconds * 1000)
        document.version = min(max(known), settled) if known else None
        return document

    async def _read_lines(self, spec: MappingSpec, line: LineSpec, document_id: str, ctx: FlowContext
                          ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
        """The lines, and the related rows their lookup paths read ((table, id) -> row), fetched in the same
        query with ``$expand`` (issue 11: an order costs 3 Dataverse reads, not one more per related table). A
        lookup Dataverse cannot expand by its column name (a custom lookup's navigation property is its schema
        name) is answered by _resolve_line_lookups' per-table queries instead, and not expanded again."""
        lookups = set(spec.line_lookup_columns(line.name))
        select = webapi_select(spec.line_source_columns(line.name), lookups)
        entity_set = line.source.entity_set or default_entity_set(line.source.table)
        money = frozenset(p.attribute for f in line.fields if any(s.name == "decimal" for s in f.transform)
                          for p in f.source if not p.is_lookup)
        expand: dict[str, list[str]] = {}
        paths = [p for f in line.fields for p in f.source]
        paths += [parse_path(c) for cond in line.filter for c in cond.columns() if "." in c]  # filtered through them
        for path in paths:
            if path.column is not None and path.attribute != line.source.parent_column \
                    and (entity_set, path.attribute) not in self._not_expandable:
                columns = expand.setdefault(path.attribute, [])
                if path.column not in columns:
                    columns.append(path.column)
        condition = f"_{line.source.parent_column}_value eq {document_id}"
        try:
            raw = [row async for row in ctx.dataverse.query(entity_set, filter=condition, select=select,
                                                            annotations="*", expand=expand or None)]
        except ConnectorError as exc:
            if not expand or exc.status != 400:
                raise
            log.warning("%s: Dataverse refused to $expand %s (%s); reading those rows by table instead",
                        entity_set, ", ".join(expand), exc)
            self._not_expandable.update((entity_set, nav) for nav in expand)
            return await self._read_lines(spec, line, document_id, ctx)
        related: dict[tuple[str, str], dict[str, Any]] = {}
        for row in raw:
            for nav in expand:
                found = row.pop(nav, None)
                table = row.get(f"_{nav}_value{LOOKUP_TABLE}")
                if isinstance(found, dict) and table and row.get(f"_{nav}_value"):
                    related[(str(table), str(row[f"_{nav}_value"]).lower())] = found
        return [record_from_webapi(row, money_columns=money) for row in raw], related

    async def _resolve_line_lookups(self, spec: MappingSpec, line: LineSpec, header: Mapping[str, Any],
                                    rows: Sequence[dict[str, Any]], ctx: FlowContext,
                                    expanded: Mapping[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
        """For each line, the answers to its lookup paths: the parent's columns from the header just read, the
        related rows the lines' query expanded, the others read fresh, one query per related table."""
        requests = [spec.lookups(row, line=line.name) for row in rows]
        wanted: dict[tuple[str, str], set[str]] = {}  # (table, entity set) -> columns
        ids: dict[tuple[str, str], set[str]] = {}
        related: dict[tuple[str, str], dict[str, Any]] = dict(expanded)  # (table, id) -> row
        for per_line in requests:
            for request in per_line:
                if request.attribute == line.source.parent_column:
                    continue
                if request.column in related.get((request.table, request.id.lower()), {}):
                    continue
                group = (request.table, request.entity_set)
                wanted.setdefault(group, set()).add(request.column)
                ids.setdefault(group, set()).add(request.id.lower())
        for (table, entity_set), columns in wanted.items():
            primary = f"{table}id"  # [Inferred] the primary id column of the related tables (product, uom)
            id_list = sorted(ids[(table, entity_set)])
            for start in range(0, len(id_list), IDS_PER_QUERY):
                chunk = id_list[start:start + IDS_PER_QUERY]
                condition = " or ".join(f"{primary} eq {one}" for one in chunk)
                async for row in ctx.dataverse.query(entity_set, filter=condition,
                                                     select=[primary, *sorted(columns)]):
                    related.setdefault((table, str(row.get(primary, "")).lower()), {}).update(row)
        answers: list[dict[str, Any]] = []
        for per_line in requests:
            resolved: dict[str, Any] = {}
            for request in per_line:
                if request.attribute == line.source.parent_column:
                    resolved[request.path] = header.get(request.column)
                else:
                    row = related.get((request.table, request.id.lower()))
                    resolved[request.path] = None if row is None else row.get(request.column)
            answers.append(resolved)
        return answers

    async def _parent_of_line(self, event: ChangeEvent, spec: MappingSpec, ctx: FlowContext) -> str | None:
        """A line event whose payload does not name its document (trimmed): read the line's parent lookup."""
        if event.entity not in self.line_sets or event.record_id is None or event.message_name == "Delete":
            return None
        line = spec.line(self.line_sets[event.entity])
        entity_set = line.source.entity_set or default_entity_set(line.source.table)
        row = await ctx.dataverse.get(entity_set, event.record_id, select=[f"_{line.source.parent_column}_value"])
        parent = None if row is None else row.get(f"_{line.source.parent_column}_value")
        return str(parent).lower() if parent else None

    # ------------------------------------------------------------------------------------------- mapping

    def _filter_lines(self, spec: MappingSpec, document: SalesDocument) -> dict[str, list[int]] | Skipped:
        """The lines each line set keeps (indexes), or a Skipped naming the first line that rules the whole
        document out (``on_filtered: skip_document``)."""
        kept: dict[str, list[int]] = {}
        for line in spec.lines:
            keep: list[int] = []
            for index, (row, resolved) in enumerate(zip(document.lines[line.name], document.resolved[line.name],
                                                        strict=True)):
                why = spec.filter_reason(row, line=line.name, resolved=resolved)
                if why is None:
                    keep.append(index)
                elif line.on_filtered == "skip_document":
                    number = row.get(line.source.sequence_column)
                    tested = {c.split(".", 1)[0] for cond in line.filter for c in cond.columns() if "." in c}
                    named = ", ".join(str(v) for path, v in resolved.items() if path.split(".", 1)[0] in tested
                                      and isinstance(v, str) and v)
                    return Skipped(reason=f"filtered out: {line.source.table} {number}"
                                          f"{f' ({named})' if named else ''}: {why}; the whole {self.table} is "
                                          "not synced")
            kept[line.name] = keep
        return kept

    async def _map(self, spec: MappingSpec, document: SalesDocument, kept: dict[str, list[int]],
                   ctx: FlowContext) -> MappedDocument | Deferred:
        """The mapped document. With ``company.parent`` (a document lands in its customer's company) the company
        is the one the customer's own flow routes the customer to: the account's, or the contact's."""
        mapped = await self._map_record(spec, document.header, ctx)
        if isinstance(mapped, Deferred):
            return mapped
        lines = {line.name: [spec.apply_line(line.name, document.lines[line.name][i], company=mapped.company,
                                             resolved=document.resolved[line.name][i])
                             for i in kept[line.name]]
                 for line in spec.lines}
        return MappedDocument(header=mapped, lines=lines)

    # ---------------------------------------------------------------------------------------------- claims

    async def _claim_document(self, event: ChangeEvent, state: RecordState, target: str, record_key: str,
                              spec: MappingSpec, ctx: FlowContext) -> Outcome | None:
        """Own the header's counterpart, as accounts do. A quote revised in Sales keeps its number under a new
        id: the new revision takes the counterpart over from the revision it replaced (closed as Revised, or
        deleted), never from a live document."""
        if target == state.target_key:
            return None
        owner = await ctx.ledger.claim(target, record_key, previous=state.target_key)
        if owner == record_key:
            return None
        owner_id = owner.rsplit(":", 1)[-1]
        row = await ctx.dataverse.get(spec.source.entity_set, owner_id, select=["statecode", "statuscode"])
        if row is None or (row.get("statecode"), row.get("statuscode")) == REVISED:
            await ctx.ledger.unclaim(target, owner)
            owner = await ctx.ledger.claim(target, record_key, previous=state.target_key)
            if owner == record_key:
                return None
        return Rejected(
            reason="TargetConflict",
            description=(f"{self.table} {record_key.rsplit(':', 1)[-1]} and {self.table} {owner_id} both map to "
                         f"{describe_target(target)}; it is already synced from {owner_id}, so nothing was written. "
                         f"Two live {self.table} records must not share one number (a revision replaces the "
                         "revision it closes): renumber one, then replay this message."),
        )

    # ------------------------------------------------------------------------------------------------ F&O

    async def _write(self, spec: MappingSpec, mapped: MappedDocument, version: int | None, digest: str,
                     target: str, ctx: FlowContext, header: Mapping[str, Any], event: ChangeEvent) -> Outcome:
        header_set = spec.target.entity_set
        current_header, missing = await self._read_target(spec, mapped, ctx)
        if any(ref.pull for ref, _ in missing):
            current_header, missing = await self._pull_references(spec, mapped, ctx, header, event, missing)
        if missing:
            return Deferred(delay=REFERENCE_WAIT_SECONDS,
                            reason=f"waiting for {'; '.join(text for _, text in missing)} (a {self.table} is "
                                   "written only when everything it names exists in F&O)")
        if self.create_only and current_header is not None:
            return Skipped(reason=f"owned by F&O: {header_set}({_key_text(mapped.header.key)}) exists already; "
                                  f"after it is written F&O is the master of the {self.table}, so Sales changes "
                                  "are not synced", version=version, payload_hash=digest, target_key=target)
        ops: list[BatchOperation] = []
        header_fields: list[str] = []
        if current_header is None:
            ops.append(Create(header_set, mapped.header.key, _body(mapped.header)))
        else:
            changes = _changes(mapped.header, current_header)
            header_fields = sorted(changes)
            if changes:
                ops.append(Update(header_set, mapped.header.key, changes))
        counts = {"added": 0, "changed": 0, "removed": 0}
        for line in spec.lines:
            current = {} if current_header is None else await self._current_lines(spec, line, mapped.header, ctx)
            wanted: dict[Any, MappedRecord] = {}
            for m in mapped.lines[line.name]:
                number = _line_id(line, m.key, spec.target.key)
                if number in wanted:  # two Sales lines, one F&O line: one of them would be lost silently
                    shown = "/".join(str(part) for part in number) if isinstance(number, tuple) else number
                    return Rejected(reason="DuplicateLineNumber", description=(
                        f"two {line.source.table} rows of this {self.table} have line number {shown}; F&O keys "
                        f"lines by it ({', '.join(line.target.key)}), so one would overwrite the other. Give "
                        "them distinct sequence numbers in Sales, then replay this message."))
                wanted[number] = m
            for number, row in current.items():
                if number not in wanted:
                    key = {name: row[name] for name in line.target.key}
                    ops.append(Delete(line.target.entity_set, key))
                    counts["removed"] += 1
            for number, m in wanted.items():
                if number not in current:
                    ops.append(Create(line.target.entity_set, m.key, _body(m)))
                    counts["added"] += 1
                elif changes := _changes(m, current[number]):
                    ops.append(Update(line.target.entity_set, m.key, changes))
                    counts["changed"] += 1
        key_text = _key_text(mapped.header.key)
        if not ops:
            return Skipped(reason=f"unchanged: F&O already holds {header_set}({key_text}) as Sales has it",
                           version=version, payload_hash=digest, target_key=target)
        limit = ctx.fno.batch_size  # one change set: a document is never split (it could be left half-written)
        if len(ops) > limit:
            return Rejected(reason="DocumentTooLarge", description=(
                f"{header_set}({key_text}) needs {len(ops)} operations; one change set (all-or-nothing) takes at "
                f"most {limit} here, and splitting it could leave the {self.table} half-written "
                "in F&O. Split the document in Sales."))
        results = await ctx.fno.batch(ops, atomic=True)
        _raise_failure(results)
        lines_text = ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "lines unchanged"
        if current_header is None:
            verb = f"created {header_set}({key_text}) with {counts['added']} lines"
        else:
            fields = f"header: {', '.join(header_fields)}" if header_fields else "header unchanged"
            verb = f"updated {header_set}({key_text}) ({fields}; lines: {lines_text})"
        return Applied(detail=f"{verb} in one change set of {len(ops)} operations", version=version,
                       payload_hash=digest, target_key=target)

    async def _pull_references(self, spec: MappingSpec, mapped: MappedDocument, ctx: FlowContext,
                               header: Mapping[str, Any], event: ChangeEvent, missing: list[tuple[Reference, str]]
                               ) -> tuple[dict[str, Any] | None, list[tuple[Reference, str]]]:
        """Sync the Sales rows behind missing ``pull:`` references through their own flows, then read F&O's
        side again. A row that could not be pulled stays missing, its reason saying why."""
        from handlers.pull import pull_parent  # pull imports handlers.base, as this module does

        failed: dict[str, str] = {}
        pulled = False
        for column in dict.fromkeys(ref.pull for ref, _ in missing if ref.pull):
            row = header.get(column)
            if not is_entity_ref(row):
                failed[column] = f"{column} names no row"
            elif (why := await pull_parent(ctx, row.logical_name, str(row.id), event)) is None:
                pulled = True
            else:
                failed[column] = f"{row.logical_name} {row.id}: {why}"
        current_header: dict[str, Any] | None = None
        if pulled:
            current_header, missing = await self._read_target(spec, mapped, ctx)
        return current_header, [(ref, text + (f" and could not be pulled through ({failed[ref.pull]})"
                                              if ref.pull in failed else "")) for ref, text in missing]

    async def _read_target(self, spec: MappingSpec, mapped: MappedDocument,
                           ctx: FlowContext) -> tuple[dict[str, Any] | None, list[tuple[Reference, str]]]:
        """F&O's header and whether every reference exists, in one non-atomic ``$batch`` of reads."""
        company = mapped.header.company
        company_field = spec.company_target_field or "dataAreaId"
        checks: dict[tuple[str, str, str], Reference] = {}
        for ref in spec.references:
            if not is_empty(value := mapped.header.payload.get(ref.field)):
                checks.setdefault((ref.entity_set, ref.key_field, str(value)), ref)
        for line in spec.lines:
            for ref in line.references:
                for m in mapped.lines[line.name]:
                    if not is_empty(value := m.payload.get(ref.field)):
                        checks.setdefault((ref.entity_set, ref.key_field, str(value)), ref)
        reads: list[BatchOperation] = [Read(spec.target.entity_set, mapped.header.key)]
        reads += [Read(entity_set, {company_field: company, key_field: value}, select=[key_field])
                  for entity_set, key_field, value in checks]
        results: list[BatchResult] = []
        for chunk in chunk_operations(reads, ctx.fno.batch_size):  # reads may be split: nothing to keep atomic
            results += await ctx.fno.batch(chunk, atomic=False)
        _raise_failure(results)
        missing = []
        for (entity_set, key_field, value), result in zip(checks, results[1:], strict=True):
            if result.record is None:
                ref = checks[(entity_set, key_field, value)]
                made_by = f" (the {ref.flow} flow creates it)" if ref.flow else ""
                missing.append((ref, f"{entity_set}({company_field}={company},{key_field}={value}) does not "
                                     f"exist in F&O yet{made_by}"))
        return results[0].record, missing

    @staticmethod
    async def _current_lines(spec: MappingSpec, line: LineSpec, header: MappedRecord,
                             ctx: FlowContext) -> dict[Any, dict[str, Any]]:
        """F&O's lines of the document, by line number: one ``$filter`` on the header's key."""
        shared = {name: header.key[name] for name in line.target.key if name in header.key}
        found: dict[Any, dict[str, Any]] = {}
        async for row in ctx.fno.query(line.target.entity_set, equals_filter(shared)):
            found[_line_id(line, row, list(header.key))] = row
        return found


def _line_id(line: LineSpec, values: Mapping[str, Any], header_key: Sequence[str]) -> tuple[Any, ...]:
    """A line's own part of its key (LineCreationSequenceNumber): the key fields its header's key does not have,
    the same for a mapped line and F&O's row."""
    return tuple(values.get(name) for name in line.target.key if name not in header_key)


def _body(mapped: MappedRecord) -> dict[str, Any]:
    return {name: value for name, value in mapped.payload.items() if name not in mapped.key}


def _changes(mapped: MappedRecord, current: Mapping[str, Any]) -> dict[str, Any]:
    """The mapped fields F&O does not hold yet (key fields never change)."""
    return {name: value for name, value in mapped.payload.items()
            if name not in mapped.key and (name not in current or not same_value(current[name], value))}


def _raise_failure(results: Sequence[BatchResult]) -> None:
    """A failed operation raises its classified error (the runtime defers a transient one, dead-letters a
    permanent one); in a failed change set nothing was applied."""
    failed = next((r for r in results if r.failed_here), None) or next((r for r in results if not r.ok), None)
    if failed is not None and failed.error is not None:
        error: ConnectorError = failed.error
        op = failed.operation
        log.info("document write failed at %s %s: %s", type(op).__name__, op.entity_set, error)
        raise error


def _key_text(key: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in key.items())
