"""The rows of one table, by primary id, with an index per alternate key and an undo journal (both simulators).

Why: a key lookup (`accounts(accountnumber='A1')`, an upsert, the duplicate-key check of every create) used to
scan the table, so the sandbox slowed down as tables grew and capped the benchmarks' end-to-end rate. The
index is kept by the mapping itself (every `rows[id] = row`, `pop`, `del`), so no write path can forget it,
and a `$batch` change set undoes its writes from the journal instead of copying every table (F&O keeps its rows
under their normalised entity key already, so it uses only the journal).

Key values compare as the store compares them (`dataverse._same`): strings case-insensitively (casefold),
numbers by value (1 == 1.0 == Decimal("1")), anything else by equality.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

Row = dict[str, Any]
KeyColumns = tuple[str, ...]
_MISSING: Any = object()


def key_part(value: Any) -> Any:
    """The hashable form under which a key value is indexed: equal exactly when `_same` says so."""
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return Decimal(str(value))
    return value


class IndexedRows(dict[Any, Any]):
    """`{primary id: row}` (any hashable id) that indexes each row under every alternate key of its table.

    Rows are replaced, never edited in place, once stored (the store builds a new dict per write); an index
    entry is the id set of the rows holding one key value, in insertion order."""

    def __init__(self, alternate_keys: Iterable[Iterable[str]] = (), rows: Mapping[str, Row] | None = None) -> None:
        super().__init__()
        self._indexes: dict[KeyColumns, dict[tuple[Any, ...], dict[str, None]]] = {
            tuple(key): {} for key in alternate_keys}
        self._journal: list[tuple[str, Any]] | None = None
        self._order: list[str] | None = None  # the ids' order before a change set's first delete
        self._positions = itertools.count()
        self._position: dict[Any, int] = {}  # id -> rank in table order (ties in an index bucket sort by it)
        for record_id, row in (rows or {}).items():
            self[record_id] = row

    # -- mapping writes keep the indexes (and the journal) -----------------------------------------
    def __setitem__(self, record_id: str, row: Row) -> None:
        self._log(record_id, dict.get(self, record_id, _MISSING))
        self._put(record_id, row)

    def __delitem__(self, record_id: str) -> None:
        old = dict.__getitem__(self, record_id)
        if self._journal is not None and self._order is None:
            self._order = list(self)  # a rollback puts a deleted row back where it was
        self._log(record_id, old)
        self._drop(record_id)

    def pop(self, record_id: str, *default: Any) -> Any:  # type: ignore[override]
        if record_id not in self:
            if default:
                return default[0]
            raise KeyError(record_id)
        row = dict.__getitem__(self, record_id)
        del self[record_id]
        return row

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for record_id, row in dict(*args, **kwargs).items():
            self[record_id] = row

    def setdefault(self, record_id: str, row: Row) -> Row:  # type: ignore[override]
        if record_id not in self:
            self[record_id] = row
        return dict.__getitem__(self, record_id)

    def clear(self) -> None:
        for record_id in list(self):
            del self[record_id]

    def popitem(self) -> tuple[str, Row]:
        record_id = next(reversed(self))
        return record_id, self.pop(record_id)

    # -- lookups ------------------------------------------------------------------------------------
    def ids_for(self, key: KeyColumns, values: Mapping[str, Any]) -> list[str]:
        """Ids of the rows whose `key` columns equal `values` (as `_same` compares), in table order. A key not
        indexed yet (an alternate key added to the table definition later) is indexed now."""
        if key not in self._indexes:
            self._indexes[key] = {}
            for record_id, row in dict.items(self):
                self._indexes[key].setdefault(tuple(key_part(row.get(col)) for col in key), {})[record_id] = None
        bucket = self._indexes[key].get(tuple(key_part(values.get(col)) for col in key))
        if not bucket:
            return []
        if len(bucket) == 1:
            return list(bucket)
        return sorted(bucket, key=self._position.__getitem__)  # a document's lines, null key parts

    def has_key(self, key: Iterable[str]) -> bool:
        return tuple(key) in self._indexes

    # -- change sets --------------------------------------------------------------------------------
    def begin(self) -> int:
        """Start (or nest into) journaling; returns the mark to roll back or end at."""
        if self._journal is None:
            self._journal = []
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        """Undo every write since `mark` (newest first) and end that journal level."""
        journal = self._journal or []
        entries, self._journal = journal[mark:], None
        for record_id, old in reversed(entries):
            if old is not _MISSING:
                self._put(record_id, old)
            elif dict.get(self, record_id, _MISSING) is not _MISSING:
                self._drop(record_id)
        if mark:
            self._journal = journal[:mark]
        else:
            self._restore_order()

    def end(self, mark: int) -> None:
        """Keep the writes since `mark`."""
        if mark == 0:
            self._journal, self._order = None, None

    # -- internals ----------------------------------------------------------------------------------
    def _log(self, record_id: str, old: Any) -> None:
        if self._journal is not None:
            self._journal.append((record_id, old))

    def _restore_order(self) -> None:
        order, self._order = self._order, None
        if order is None:
            return
        rows = {record_id: dict.__getitem__(self, record_id) for record_id in order if record_id in self}
        rows.update((record_id, row) for record_id, row in dict.items(self) if record_id not in rows)
        dict.clear(self)
        dict.update(self, rows)
        self._position = {record_id: next(self._positions) for record_id in rows}

    def _drop(self, record_id: str) -> None:
        self._unindex(record_id, dict.__getitem__(self, record_id))
        dict.__delitem__(self, record_id)
        del self._position[record_id]

    def _put(self, record_id: str, row: Row) -> None:
        old = dict.get(self, record_id, _MISSING)
        if old is _MISSING:
            self._position[record_id] = next(self._positions)  # a new id goes to the end, as in a dict
        else:
            self._unindex(record_id, old)
        dict.__setitem__(self, record_id, row)
        self._index(record_id, row)

    def _index(self, record_id: str, row: Row) -> None:
        for key, index in self._indexes.items():
            index.setdefault(tuple(key_part(row.get(col)) for col in key), {})[record_id] = None

    def _unindex(self, record_id: str, row: Row) -> None:
        for key, index in self._indexes.items():
            values = tuple(key_part(row.get(col)) for col in key)
            bucket = index.get(values)
            if bucket is not None:
                bucket.pop(record_id, None)
                if not bucket:
                    del index[values]
