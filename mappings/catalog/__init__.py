"""The catalogue of F&O entity fields (``fno_fields.txt`` beside this file).

Used at start-up to catch misspelt F&O field names in mapping files (``CustomerAcount``) with a did-you-mean
suggestion. Entity sets that are not in the catalogue are accepted without a field check.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

CATALOG_FILE = Path(__file__).with_name("fno_fields.txt")


@cache
def _catalog() -> dict[str, tuple[str, dict[str, str]]]:
    """casefolded entity set -> (entity set as written, {field: type})."""
    entities: dict[str, tuple[str, dict[str, str]]] = {}
    current: dict[str, str] | None = None
    for raw in CATALOG_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("=="):
            name = line[2:].strip()
            current = {}
            entities[name.casefold()] = (name, current)
            continue
        if current is None:
            raise ValueError(f"{CATALOG_FILE}: field line before the first '== EntitySet' header: {line!r}")
        field, _, type_ = line.partition(":")
        current[field.strip()] = type_.strip()
    return entities


def entity_sets() -> list[str]:
    return sorted(name for name, _ in _catalog().values())


def fno_fields(entity_set: str) -> dict[str, str] | None:
    """The fields (name -> OData type) of an F&O entity set, or None when the catalogue does not know it.
    Entity set names are matched ignoring case (the metadata spells ``CDSSalesOrderLines`` and
    ``CdsSalesOrderLines`` both ways)."""
    found = _catalog().get(entity_set.strip().casefold())
    return None if found is None else found[1]


def field_problem(entity_set: str, field: str) -> str | None:
    """None when ``field`` is a field of ``entity_set`` (or the entity set is unknown), else a message with a
    did-you-mean suggestion."""
    fields = fno_fields(entity_set)
    if fields is None or field in fields:
        return None
    by_case = {name.casefold(): name for name in fields}
    hint = by_case.get(field.casefold())
    if hint is None:
        close = difflib.get_close_matches(field, list(fields), n=1, cutoff=0.75)
        hint = close[0] if close else None
    suggestion = f"; did you mean '{hint}'?" if hint else ""
    return f"'{field}' is not a field of F&O entity set {entity_set}{suggestion}"
