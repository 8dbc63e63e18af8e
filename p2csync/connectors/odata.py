"""OData v4 literal and key syntax, shared by both connectors (the one place that writes it).

```python
odata_literal("O'Neil")                    # "'O''Neil'"
odata_literal(ODataEnum("NoYes", "Yes"))   # "Microsoft.Dynamics.DataEntities.NoYes'Yes'"
key_predicate({"dataAreaId": "usmf", "CustomerAccount": "US-001"})
                                           # "(dataAreaId='usmf',CustomerAccount='US-001')"
```
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote
from uuid import UUID

__all__ = [
    "FNO_ENUM_NAMESPACE",
    "ODataEnum",
    "encode_path_segment",
    "is_guid",
    "key_predicate",
    "odata_literal",
    "validate_entity_set",
]

FNO_ENUM_NAMESPACE = "Microsoft.Dynamics.DataEntities"

_GUID = re.compile(r"^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Characters left as they are in a key predicate inside a URL path; everything else is percent-encoded.
_PATH_SAFE = "'(),=:@!$;-._~"


class ODataEnum(str):
    """An enum value: a plain string (``"Yes"``) in JSON, ``Namespace.Type'Member'`` in a filter or key.

    ``ODataEnum("NoYes", "Yes")`` is F&O's ``Microsoft.Dynamics.DataEntities.NoYes'Yes'``.
    """

    type_name: str
    namespace: str

    def __new__(cls, type_name: str, member: str, *, namespace: str = FNO_ENUM_NAMESPACE) -> ODataEnum:
        if not _IDENTIFIER.match(type_name) or not member:
            raise ValueError(f"invalid enum {type_name!r}/{member!r}")
        value = super().__new__(cls, member)
        value.type_name = type_name
        value.namespace = namespace
        return value

    @property
    def member(self) -> str:
        return str.__str__(self)

    @property
    def literal(self) -> str:
        return f"{self.namespace}.{self.type_name}'{self.member.replace(chr(39), chr(39) * 2)}'"

    def __repr__(self) -> str:
        return f"ODataEnum({self.type_name!r}, {self.member!r})"

    def __reduce__(self) -> Any:
        return (_make_enum, (self.type_name, self.member, self.namespace))


def _make_enum(type_name: str, member: str, namespace: str) -> ODataEnum:
    return ODataEnum(type_name, member, namespace=namespace)


def is_guid(value: Any) -> bool:
    return isinstance(value, UUID) or (isinstance(value, str) and bool(_GUID.match(value)))


def _number(value: int | float | Decimal) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} has no OData literal")
        return format(value, "f")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no OData literal")
        return repr(value)
    return str(value)


def _datetime(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)  # both services store UTC; a naive value is taken as UTC
    text = value.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def odata_literal(value: Any) -> str:
    """The OData v4 literal of a Python value, for ``$filter`` expressions and key predicates.

    ``str`` -> ``'text'`` (quotes doubled); ``bool`` -> ``true``/``false``; ``int``/``float``/``Decimal`` ->
    the number; ``None`` -> ``null``; ``UUID`` -> the bare GUID; ``datetime`` -> ``2024-05-31T10:00:00Z``
    (UTC; naive taken as UTC); ``date`` -> ``2024-05-31``; ``ODataEnum`` -> ``Ns.Type'Member'``; a Python
    ``Enum`` -> the literal of its value.
    """
    if value is None:
        return "null"
    if isinstance(value, ODataEnum):
        return value.literal
    if isinstance(value, enum.Enum):
        return odata_literal(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return _number(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return _datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no OData literal for {type(value).__name__}")


def key_predicate(key: Mapping[str, Any], literal: Callable[[str, Any], str] | None = None) -> str:
    """``(name=literal,...)`` in the mapping's order; a single value is still named (alternate-key form)."""
    if not key:
        raise ValueError("a key needs at least one field")
    render = literal or (lambda _name, value: odata_literal(value))
    parts = []
    for name, value in key.items():
        if not _IDENTIFIER.match(name):
            raise ValueError(f"invalid key field name {name!r}")
        parts.append(f"{name}={render(name, value)}")
    return "(" + ",".join(parts) + ")"


def encode_path_segment(text: str) -> str:
    """Percent-encode a key predicate for the URL path (``/``, ``?``, ``#``, ``%``, spaces, non-ASCII...)."""
    return quote(text, safe=_PATH_SAFE)


def validate_entity_set(name: str) -> str:
    """Entity-set names are identifiers; anything else would let a caller write an arbitrary path."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"invalid entity set name {name!r}")
    return name
