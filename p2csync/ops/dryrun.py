"""Run a flow handler without writing: the comparison engine of ``reconcile`` and the catch-up.

Why run the handler rather than re-implement its mapping: the handler is the one place that knows how a
record maps (filters, lookups, company routing, lines, price lists, the header tax line...). Given connectors
that read for real but only *record* writes, and a ledger that reads for real but takes no lease and records
nothing, the handler computes exactly what it would write. Each intended write is compared with what the
target holds: a row that is missing, the fields that differ. Run with an empty ledger state, the handler never
stops at "unchanged", so the target is compared even when the ledger believes it is in step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from mappings import canonical_json
from p2csync.connectors import dataverse as dv
from p2csync.connectors import fno as fo
from p2csync.connectors.results import UpsertResult
from p2csync.ledger.base import RecordState

_NIL = "00000000-0000-0000-0000-000000000000"


@dataclass
class Change:
    """One write the handler would make: ``create`` (missing in the target), ``update`` (these fields differ),
    ``delete`` (a row the target has and should not, e.g. a removed line)."""

    system: str
    entity_set: str
    key: str
    action: str
    fields: list[str] = field(default_factory=list)

    def text(self) -> str:
        what = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{self.action} {self.entity_set}{self.key}{what}"


@dataclass
class Recorder:
    changes: list[Change] = field(default_factory=list)

    def add(self, system: str, entity_set: str, key: Any, action: str, fields: Sequence[str] = ()) -> None:
        text = fo.format_key(key) if isinstance(key, Mapping) else f"({key})"
        self.changes.append(Change(system, entity_set, text, action, list(fields)))


def same(current: Any, desired: Any) -> bool:
    """A Web API value equals the body's (numbers by value, everything else as canonical JSON), or F&O's rules."""
    if fo.same_value(current, desired):
        return True
    numbers = (int, float, Decimal)
    if isinstance(current, numbers) and isinstance(desired, numbers) and not isinstance(current, bool):
        return Decimal(str(current)) == Decimal(str(desired))
    return canonical_json({"v": current}) == canonical_json({"v": desired})


def dataverse_differences(row: Mapping[str, Any], body: Mapping[str, Any]) -> list[str]:
    """The body's columns the Dataverse row does not hold (a bound lookup: the row's ``_<lookup>_value``)."""
    differ = []
    for name, value in body.items():
        if name.endswith("@odata.bind"):
            navigation = name[: -len("@odata.bind")]
            current = row.get(f"_{navigation}_value", row.get(f"_{navigation.rsplit('_', 1)[0]}_value"))
            wanted = None if value is None else str(value)[str(value).find("(") + 1:-1]
            if (current or None) != wanted and str(current).lower() != str(wanted).lower():
                differ.append(navigation)
        elif not same(row.get(name), value):
            differ.append(name)
    return differ


def _bind_columns(body: Mapping[str, Any]) -> list[str]:
    columns = []
    for name in body:
        if name.endswith("@odata.bind"):
            navigation = name[: -len("@odata.bind")]
            columns.append(f"_{navigation}_value")
        else:
            columns.append(name)
    return columns


class _DryConnector:
    """A connector that passes only its reads to the real one. Every public member of the real connector is
    either named in ``READS`` or defined by the dry class (tests/unit/test_dryrun_guard.py checks it), so a write
    method added to a connector later cannot reach the service from a dry run through attribute lookup."""

    #: Members that only read, or describe the client without I/O, and may be used as they are. Not ``request``:
    #: the generic HTTP call can write, so a dry run reads only through the named methods.
    READS: frozenset[str] = frozenset({
        "get", "query", "paged_rows", "aclose",
        "base_url", "system", "batch_size", "concurrency", "pacer", "retry", "tokens",
        "match_changeset", "part_error", "batch_results", "service",
    })

    def __init__(self, real: Any, recorder: Recorder) -> None:
        self._real, self._recorder = real, recorder

    def __getattr__(self, name: str) -> Any:
        if name in self.READS:
            return getattr(self._real, name)
        raise AttributeError(f"{type(self).__name__} does not pass {name!r} to the real connector: a dry run only "
                             f"reads (declare it in READS if it only reads, or record it like the writes)")


class DryDataverse(_DryConnector):
    """The Dataverse connector, reading for real and recording writes (compared with the row they would hit)."""

    READS = _DryConnector.READS | {"choice_column", "api_version", "tag"}

    async def _current(self, entity_set: str, key: Any, body: Mapping[str, Any],
                       select: Sequence[str] | None) -> dict[str, Any] | None:
        columns = list(dict.fromkeys([*_bind_columns(body), *(select or [])]))
        try:
            return await self._real.get(entity_set, key, select=columns)
        except Exception:  # a column the Web API does not return by that name: read the whole row
            return await self._real.get(entity_set, key)

    async def upsert(self, entity_set: str, key: Any, body: Mapping[str, Any], *, update_only: bool = False,
                     create_only: bool = False, select: Sequence[str] | None = None, **_: Any) -> UpsertResult:
        row = await self._current(entity_set, key, body, select)
        if row is None:
            self._recorder.add("dataverse", entity_set, key, "create")
            return UpsertResult(created=True, record={**body, **_fake_ids(select)})
        differ = dataverse_differences(row, body)
        if differ:
            self._recorder.add("dataverse", entity_set, key, "update", differ)
        return UpsertResult(created=False, record={**row}, changed=bool(differ))

    async def create(self, entity_set: str, body: Mapping[str, Any], *, select: Sequence[str] | None = None,
                     **_: Any) -> UpsertResult:
        self._recorder.add("dataverse", entity_set, "new", "create")
        return UpsertResult(created=True, record={**body, **_fake_ids(select)})

    async def delete(self, entity_set: str, key: Any, **_: Any) -> bool:
        self._recorder.add("dataverse", entity_set, key, "delete")
        return True

    async def batch(self, operations: Sequence[Any], *, atomic: bool = True) -> list[dv.BatchResult]:
        results = []
        for op in operations:
            if isinstance(op, dv.Upsert):
                result = await self.upsert(op.entity_set, op.key, op.body)
                results.append(dv.BatchResult(operation=op, status=204, created=result.created, record=None))
            elif isinstance(op, dv.Create):
                self._recorder.add("dataverse", op.entity_set, "new", "create")
                results.append(dv.BatchResult(operation=op, status=204, created=True, entity_id=_NIL))
            else:
                self._recorder.add("dataverse", op.entity_set, op.key, "delete")
                results.append(dv.BatchResult(operation=op, status=204))
        return results


class DryFnO(_DryConnector):
    """The F&O connector, reading for real and recording writes (compared with the row they would hit)."""

    READS = _DryConnector.READS | {"check_key", "entity_keys"}

    async def upsert(self, entity_set: str, key: Mapping[str, Any], body: Mapping[str, Any], *,
                     exists: bool | None = None) -> UpsertResult:
        """What ``FnOClient.upsert`` would do; ``exists`` (the ledger's guess) does not matter to a dry run, which
        always compares with the row F&O holds."""
        row = await self._real.get(entity_set, key)
        if row is None:
            self._recorder.add("fno", entity_set, key, "create")
            return UpsertResult(created=True, record={**key, **body})
        differ = [name for name, value in body.items() if name not in key and not fo.same_value(row.get(name), value)]
        if differ:
            self._recorder.add("fno", entity_set, key, "update", differ)
        return UpsertResult(created=False, record={**row, **body}, changed=bool(differ))

    async def delete(self, entity_set: str, key: Mapping[str, Any]) -> bool:
        self._recorder.add("fno", entity_set, key, "delete")
        return True

    async def batch(self, operations: Sequence[Any], *, atomic: bool = True) -> list[fo.BatchResult]:
        if all(isinstance(op, fo.Read) for op in operations):
            return await self._real.batch(operations, atomic=atomic)
        results = []
        for op in operations:
            if isinstance(op, fo.Read):
                [read] = await self._real.batch([op], atomic=False)
                results.append(read)
                continue
            if isinstance(op, fo.Create):
                self._recorder.add("fno", op.entity_set, op.key, "create")
            elif isinstance(op, fo.Update):
                self._recorder.add("fno", op.entity_set, op.key, "update", list(op.changes))
            else:
                self._recorder.add("fno", op.entity_set, op.key, "delete")
            results.append(fo.BatchResult(operation=op, status=204))
        return results

    async def batch_chunks(self, operations: Sequence[Any], *, atomic: bool = True) -> list[fo.BatchResult]:
        return await self.batch(operations, atomic=atomic)


class ReadOnlyLedger:
    """The ledger as a dry run sees it: reads are real; leases, claims and outcomes are not taken or kept."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def acquire(self, record_key: str, owner: str, lease: Any) -> RecordState:
        return await self._real.record_state(record_key)

    async def renew(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def commit(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def release(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def journal(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def put_value(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def claim(self, target_key: str, record_key: str, *, previous: str | None = None) -> str:
        return await self._real.claim_owner(target_key) or record_key

    async def unclaim(self, target_key: str, record_key: str) -> bool:
        return False


def _fake_ids(select: Sequence[str] | None) -> dict[str, Any]:
    """What a created row would answer for the columns asked (an id no row has; statecode Active)."""
    return {name: (0 if name == "statecode" else _NIL) for name in select or []}
