"""Value limits of F&O fields (``fno_limits.txt`` beside this file): numeric ranges per OData type and string
lengths per EDT. The F&O sandbox reads the same file, so product and simulator refuse the same values."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

LIMITS_FILE = Path(__file__).with_name("fno_limits.txt")


@dataclass(frozen=True)
class Limits:
    ranges: dict[str, tuple[Decimal, Decimal]]  # OData type -> (minimum, maximum)
    edt_lengths: dict[str, int]  # EDT -> characters (UTF-16 code units)
    fields: dict[str, str]  # field, EntitySet.Field or *Suffix -> EDT


def parse_limits(text: str, source: str = "fno_limits.txt") -> Limits:
    """Parse the limits file; a malformed line raises ValueError naming the line."""
    sections: dict[str, dict[str, list[str]]] = {"types": {}, "edts": {}, "fields": {}}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("=="):
            name = line[2:].strip()
            if name not in sections:
                raise ValueError(f"{source}:{number}: unknown section '{name}' (types, edts, fields)")
            current = sections[name]
            continue
        parts = line.split()
        if current is None or len(parts) != (3 if current is sections["types"] else 2):
            raise ValueError(f"{source}:{number}: cannot read {raw.strip()!r}")
        current[parts[0]] = parts[1:]
    edts = {name: int(size) for name, (size,) in sections["edts"].items()}
    unknown = sorted({edt for (edt,) in sections["fields"].values()} - set(edts))
    if unknown:
        raise ValueError(f"{source}: fields name EDTs without a size: {', '.join(unknown)}")
    return Limits(
        ranges={name: (Decimal(low), Decimal(high)) for name, (low, high) in sections["types"].items()},
        edt_lengths=edts,
        fields={name: edt for name, (edt,) in sections["fields"].items()},
    )


@cache
def limits() -> Limits:
    return parse_limits(LIMITS_FILE.read_text(encoding="utf-8"), LIMITS_FILE.name)


@cache  # called for every text field of every mapped record and line: the rule scan runs once per field
def field_edt(entity_set: str, field: str) -> str | None:
    """The EDT whose length limits ``field`` of ``entity_set``: 'EntitySet.Field' first, then the plain name,
    then the longest matching '*Suffix'; None when the file does not know the field."""
    rules = limits().fields
    for name in (f"{entity_set}.{field}", field):
        for rule, edt in rules.items():
            if rule.casefold() == name.casefold():
                return edt
    suffixes = [(len(rule), edt) for rule, edt in rules.items() if rule.startswith("*") and field.endswith(rule[1:])]
    return max(suffixes)[1] if suffixes else None


def max_length(entity_set: str, field: str) -> tuple[int, str] | None:
    """(characters, EDT) for a string field with a known limit, else None."""
    edt = field_edt(entity_set, field)
    return None if edt is None else (limits().edt_lengths[edt], edt)


def number_range(edm_type: str) -> tuple[Decimal, Decimal] | None:
    """(minimum, maximum) of a numeric OData type, else None."""
    return limits().ranges.get(edm_type)


def utf16_length(text: str) -> int:
    """Length as F&O (nvarchar, .NET strings) counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def utf16_truncate(text: str, length: int) -> str:
    """The longest prefix of ``text`` of at most ``length`` UTF-16 code units (never half a surrogate pair)."""
    out, used = [], 0
    for char in text:
        size = 2 if ord(char) > 0xFFFF else 1
        if used + size > length:
            break
        out.append(char)
        used += size
    return "".join(out)
