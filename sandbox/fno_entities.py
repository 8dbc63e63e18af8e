"""F&O data entity definitions (entity set, key, properties with EDM/enum types), loaded from the data
file `fno_fields.txt` beside this module, and the value rules that follow from the types.

Value limits (string lengths per EDT, numeric ranges) come from `mappings/catalog/fno_limits.txt`, the one file
of F&O limits that the mapping engine reads too (the sources of each figure are in its header). The sandbox
parses it itself: it is its own package and imports nothing of the product.
"""

from __future__ import annotations

import base64
import math
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from sandbox.odata import GUID_RE, format_datetime, parse_datetime

FIELDS_FILE = Path(__file__).with_name("fno_fields.txt")
LIMITS_FILE = Path(__file__).resolve().parents[1] / "mappings" / "catalog" / "fno_limits.txt"
# An Edm.DateTimeOffset literal: ODataLib refuses one without a zone ("2026-01-31", "2026-01-31T00:00:00").
DATETIME_OFFSET_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,7})?)?(Z|[+-]\d{2}:\d{2})$")
# What ODataLib can read into an Edm.Decimal (a .NET decimal); beyond it the literal cannot be converted.
DOTNET_DECIMAL_MAX = Decimal("79228162514264337593543950335")
EMPTY_DATE = "1900-01-01T00:00:00Z"  # F&O's "no date"
ZERO_GUID = "00000000-0000-0000-0000-000000000000"

# Symbol of value 0 for the enums whose symbols we know; other enums default to null. [Inferred]
ENUM_DEFAULTS = {"NoYes": "No", "CustVendorBlocked": "No", "Gender": "Unknown", "DirPersonMaritalStatus": "None",
                 "MonthsOfYear": "None"}
NOYES = ("No", "Yes")


class FnoEntity(BaseModel):
    entity_set: str
    key: list[str]
    type_name: str  # OData entity type, e.g. CustomerV3
    table_name: str  # AOT data entity named in infolog messages, e.g. CustCustomerV3Entity
    fields: dict[str, str]  # property -> Edm.* or enum name
    max_lengths: dict[str, int] = Field(default_factory=dict)  # Edm.String property -> UTF-16 code units

    @property
    def qualified_type(self) -> str:
        return f"Microsoft.Dynamics.DataEntities.{self.type_name}"


def load_entities(path: Path = FIELDS_FILE) -> list[FnoEntity]:
    entities: list[FnoEntity] = []
    header: dict[str, str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("== "):
            parts = [p.strip() for p in line[3:].split("|")]
            header = {"entity_set": parts[0], **dict(p.split("=", 1) for p in parts[1:])}
            continue
        if header is None:
            raise ValueError(f"{path}: properties before an entity header")
        fields = dict(item.strip().split(":", 1) for item in line.split(";") if item.strip())
        lengths = {name: size for name, edm in fields.items()
                   if edm == "Edm.String" and (size := string_limit(header["entity_set"], name)) is not None}
        entities.append(FnoEntity(entity_set=header["entity_set"], key=header["key"].split(","),
                                  type_name=header["type"], table_name=header["table"], fields=fields,
                                  max_lengths=lengths))
        header = None
    return entities


def _limits(path: Path = LIMITS_FILE) -> tuple[dict[str, tuple[Decimal, Decimal]], dict[str, int], dict[str, str]]:
    """(type -> (min, max), EDT -> length, field rule -> EDT) from the shared limits file."""
    sections: dict[str, dict[str, list[str]]] = {"types": {}, "edts": {}, "fields": {}}
    current: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("=="):
            current = sections[line[2:].strip()]
        elif line:
            name, *values = line.split()
            current[name] = values
    return ({name: (Decimal(low), Decimal(high)) for name, (low, high) in sections["types"].items()},
            {name: int(size) for name, (size,) in sections["edts"].items()},
            {name: edt for name, (edt,) in sections["fields"].items()})


RANGES, EDT_LENGTHS, FIELD_EDTS = _limits()


def string_limit(entity_set: str, field: str) -> int | None:
    """The length limit of a string field: 'EntitySet.Field', then 'Field', then the longest '*Suffix' rule."""
    for name in (f"{entity_set}.{field}".casefold(), field.casefold()):
        for rule, edt in FIELD_EDTS.items():
            if rule.casefold() == name:
                return EDT_LENGTHS[edt]
    suffixes = [(len(rule), edt) for rule, edt in FIELD_EDTS.items()
                if rule.startswith("*") and field.endswith(rule[1:])]
    return EDT_LENGTHS[max(suffixes)[1]] if suffixes else None


def utf16_length(text: str) -> int:
    """Length as F&O counts it (nvarchar): UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def utf16_truncate(text: str, length: int) -> str:
    """At most ``length`` UTF-16 code units (a surrogate pair cut in half is dropped)."""
    return text.encode("utf-16-le")[:2 * length].decode("utf-16-le", errors="ignore")


def default_value(edm_type: str) -> Any:
    if edm_type == "Edm.String":
        return ""
    if edm_type in ("Edm.Int32", "Edm.Int64", "Edm.Decimal", "Edm.Double"):
        return 0
    if edm_type == "Edm.DateTimeOffset":
        return EMPTY_DATE
    if edm_type == "Edm.Guid":
        return ZERO_GUID
    if edm_type == "Edm.Boolean":
        return False
    return ENUM_DEFAULTS.get(edm_type)


class BadValue(ValueError):
    def __init__(self, name: str, edm_type: str, value: Any) -> None:
        super().__init__(f"Cannot convert the literal '{value}' to the expected type '{edm_type}' "
                         f"of property '{name}'.")


def normalise(name: str, edm_type: str, value: Any) -> Any:
    """JSON value -> stored JSON value; raises BadValue when the type does not fit."""
    if value is None:
        if edm_type == "Edm.String":
            return ""
        if edm_type.startswith("Edm."):
            raise BadValue(name, edm_type, value)
        return None
    if edm_type == "Edm.String":
        if not isinstance(value, str):
            raise BadValue(name, edm_type, value)
        return value.lower() if name == "dataAreaId" else value
    if edm_type in ("Edm.Int32", "Edm.Int64"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(name, edm_type, value)
        low, high = RANGES[edm_type]
        if not low <= value <= high:
            raise BadValue(name, edm_type, value)
        return value
    if edm_type in ("Edm.Decimal", "Edm.Double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadValue(name, edm_type, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise BadValue(name, edm_type, value)
        if edm_type == "Edm.Decimal" and abs(_decimal(value)) > DOTNET_DECIMAL_MAX:
            raise BadValue(name, edm_type, value)
        return value
    if edm_type == "Edm.DateTimeOffset":
        if not isinstance(value, str) or not DATETIME_OFFSET_RE.match(value):
            raise BadValue(name, edm_type, value)
        try:
            return format_datetime(parse_datetime(value))
        except ValueError as exc:
            raise BadValue(name, edm_type, value) from exc
    if edm_type == "Edm.Guid":
        if not isinstance(value, str) or not GUID_RE.match(value):
            raise BadValue(name, edm_type, value)
        return value.lower()
    if edm_type == "Edm.Boolean":
        if not isinstance(value, bool):
            raise BadValue(name, edm_type, value)
        return value
    # An enum: JSON carries the symbol as a string.
    if not isinstance(value, str) or not re.match(r"^[A-Za-z_][\w]*$", value):
        raise BadValue(name, edm_type, value)
    if edm_type == "NoYes" and value not in NOYES:
        raise BadValue(name, edm_type, value)
    return value


def _decimal(value: int | float) -> Decimal:
    try:
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:  # pragma: no cover - finite ints and floats always convert
        return Decimal(0)


def overflows_real(edm_type: str, value: Any) -> bool:
    """An Edm.Decimal that ODataLib reads but F&O's real column (numeric(32,16)) cannot hold."""
    if edm_type != "Edm.Decimal" or isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    low, high = RANGES["Edm.Decimal"]
    return not low <= _decimal(value) <= high


def key_part(value: Any) -> Any:
    """Comparable form of one key value. F&O's keys are SQL Server nvarchar columns under a case-insensitive
    collation, and SQL Server pads the shorter string with spaces before comparing ("'abc' and 'abc ' are
    equivalent", T-SQL "= (String Comparison)", SQL-92 8.2), so neither case nor trailing spaces tell keys
    apart: ``HAND-001`` and ``hand-001 `` are one row. Leading spaces do."""
    if isinstance(value, str):
        try:
            return parse_datetime(value)
        except ValueError:
            return value.rstrip(" ").casefold()
    return value


def etag_for(rec_version: int) -> str:
    return 'W/"' + base64.b64encode(f"'0,{rec_version}'".encode()).decode() + '"'
