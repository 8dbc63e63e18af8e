"""`$expand` of single-valued navigation properties (lookups) on Dataverse Web API reads.

Follows "Join tables using OData" (learn.microsoft.com/power-apps/developer/data-platform/webapi/query/join-tables):
- a navigation property is expanded by name, options in parentheses separated by `;`;
- up to 15 `$expand` options in a query;
- `$filter`, `$orderby` and `$top` apply to collection-valued navigation properties only; `$select` and a nested
  `$expand` apply to single-valued ones; `$skip`, `$count`, `$search` and `$levels` are not supported.
The expanded property holds the related row as a read returns it (`@odata.etag`, the selected columns plus its
primary id; the legacy "Retrieve related entity records with a query" sample), or null when the lookup is empty
(OData JSON format for a single-valued navigation property with no related entity).

The sandbox models no collection-valued navigation properties, so any other name is an unknown property: 400
"Could not find a property named '<name>' on type 'Microsoft.Dynamics.CRM.<table>'.", the message OData gives
for an unknown property in `$select`. The messages of the refused options and of the limit are [Inferred]: no
capture of Dataverse's own wording was found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.dataverse_tables import LookupValue, Table
from sandbox.odata import parse_select, split_top_level

#: "You can include up to 15 $expand options in a query."
MAX_EXPANDS = 15
#: Options that only collection-valued navigation properties take.
COLLECTION_ONLY = frozenset({"$filter", "$orderby", "$top"})
#: Options the Dataverse Web API does not support inside $expand.
UNSUPPORTED = frozenset({"$skip", "$count", "$search", "$levels"})
BAD_REQUEST = "0x80060888"

Fail = Callable[[int, str, str], Exception]
RowOf = Callable[[LookupValue], Mapping[str, Any] | None]
WebRow = Callable[[Table, Mapping[str, Any], list[str] | None], dict[str, Any]]


@dataclass
class Expansion:
    """One expanded lookup: its navigation property, the lookup column and target table, and its options."""

    nav: str
    column: str
    target: Table
    select: list[str] | None = None
    nested: list[Expansion] = field(default_factory=list)

    def context(self) -> str:
        """This expansion in the `@odata.context` select list: `nav,nav(cols)` as the documented sample has it."""
        inner = [*(self.select or []), *(e.context() for e in self.nested)]
        return f"{self.nav},{self.nav}({','.join(inner)})" if inner else self.nav


class ExpandParser:
    """Parses a `$expand` value against the table definitions; `fail(status, code, message)` builds the error."""

    def __init__(self, tables: Mapping[str, Table], select_names: Callable[[Table], set[str]], fail: Fail) -> None:
        self.tables = tables
        self.select_names = select_names
        self.fail = fail
        self._count = 0

    def parse(self, table: Table, text: str | None) -> list[Expansion]:
        self._count = 0
        return self._items(table, text) if text and text.strip() else []

    def _items(self, table: Table, text: str) -> list[Expansion]:
        expansions = []
        for item in split_top_level(text):
            item = item.strip()
            if not item:
                raise self.fail(400, BAD_REQUEST, f"Syntax error in $expand '{text}'.")
            self._count += 1
            if self._count > MAX_EXPANDS:
                raise self.fail(400, BAD_REQUEST, f"The query has more than {MAX_EXPANDS} $expand options.")
            expansions.append(self._item(table, item))
        return expansions

    def _item(self, table: Table, item: str) -> Expansion:
        name, _, options = item.partition("(")
        name = name.strip()
        if options and not options.endswith(")"):
            raise self.fail(400, BAD_REQUEST, f"Syntax error in $expand item '{item}'.")
        found = table.navigation_properties().get(name)
        if found is None:
            raise self.unknown(table, name)
        column, target_name = found
        target = self.tables.get(target_name)
        if target is None:
            raise self.unknown(table, name)
        expansion = Expansion(nav=name, column=column.name, target=target)
        for option in split_top_level(options[:-1], ";") if options else []:
            self._option(expansion, option.strip())
        return expansion

    def _option(self, expansion: Expansion, option: str) -> None:
        key, eq, value = option.partition("=")
        key = key.strip().lower()
        if not eq:
            raise self.fail(400, BAD_REQUEST, f"Syntax error in $expand option '{option}'.")
        if key in COLLECTION_ONLY:
            raise self.fail(400, BAD_REQUEST, f"The query option '{key}' is not allowed in the $expand of the "
                                              f"single-valued navigation property '{expansion.nav}'.")
        if key in UNSUPPORTED:
            raise self.fail(400, BAD_REQUEST, f"The query option '{key}' is not supported in $expand.")
        if key == "$select":
            expansion.select = parse_select(value)
            known = self.select_names(expansion.target)
            for column in expansion.select or []:
                if column not in known:
                    raise self.unknown(expansion.target, column)
        elif key == "$expand":
            expansion.nested = self._items(expansion.target, value)
        else:
            raise self.fail(400, BAD_REQUEST, f"Unknown query option '{key}' in $expand.")

    def unknown(self, table: Table, name: str) -> Exception:
        return self.fail(400, BAD_REQUEST, f"Could not find a property named '{name}' on type "
                                           f"'Microsoft.Dynamics.CRM.{table.logical_name}'.")


def expand_into(body: dict[str, Any], row: Mapping[str, Any], expansions: list[Expansion], row_of: RowOf,
                web_row: WebRow) -> dict[str, Any]:
    """Add each expanded navigation property to a row's JSON `body`: the related row, or None."""
    for expansion in expansions:
        ref = row.get(expansion.column)
        related = row_of(ref) if isinstance(ref, LookupValue) and ref.table == expansion.target.logical_name \
            else None
        if related is None:
            body[expansion.nav] = None
            continue
        body[expansion.nav] = expand_into(web_row(expansion.target, related, expansion.select), related,
                                          expansion.nested, row_of, web_row)
    return body
