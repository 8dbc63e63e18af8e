"""F&O data entity definitions (entity set, key, properties with EDM/enum types), loaded from the data
file `fno_fields.txt` beside this module, and the value rules that follow from the types.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sandbox.odata import GUID_RE, format_datetime, parse_datetime

FIELDS_FILE = Path(__file__).with_name("fno_fields.txt")
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
        entities.append(FnoEntity(entity_set=header["entity_set"], key=header["key"].split(","),
                                  type_name=header["type"], table_name=header["table"], fields=fields))
        header = None
    return entities


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
        return value
    if edm_type in ("Edm.Decimal", "Edm.Double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadValue(name, edm_type, value)
        return value
    if edm_type == "Edm.DateTimeOffset":
        if not isinstance(value, str):
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


def key_part(value: Any) -> Any:
    """Comparable form of one key value (F&O keys compare case-insensitively)."""
    if isinstance(value, str):
        try:
            return parse_datetime(value)
        except ValueError:
            return value.casefold()
    return value


def etag_for(rec_version: int) -> str:
    return 'W/"' + base64.b64encode(f"'0,{rec_version}'".encode()).decode() + '"'
