"""Plain-value helpers shared by the engine: the EntityRef shape, emptiness, comparison keys, JSON readiness
and the payload hash used for echo suppression. No I/O."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EntityRef(Protocol):
    """What a Dataverse lookup value looks like once decoded (EntityReference): the related row's id, its
    table's logical name and, when the event carries it, its primary name. Any object with these attributes
    fits; the envelopes package defines the concrete class."""

    id: Any
    logical_name: str
    name: str | None


#: Values that are plainly neither a lookup nor a raw value: answered before the (slow) Protocol checks, which
#: ran on every mapped field of every record (issue 11 profile: about 2% of the host's CPU).
_PLAIN = (str, bytes, bytearray, int, float, Decimal, date, list, tuple, dict, type(None))


#: Classes whose instances passed the EntityRef check (the envelopes' model, whose fields every instance has):
#: the Protocol check walks the class's members each time (about 14 µs; an account event checks 18 lookups).
_REF_CLASSES: set[type] = set()


def is_entity_ref(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return False
    if type(value) in _REF_CLASSES:
        return True
    if isinstance(value, EntityRef) and not isinstance(value, Mapping):
        if {"id", "logical_name", "name"} <= set(getattr(type(value), "model_fields", ())):  # declared: every
            _REF_CLASSES.add(type(value))  # instance of the model has them
        return True
    return False


@runtime_checkable
class Unparsed(Protocol):
    """A source value the event parser kept raw because it does not know its kind (an unknown Dataverse
    `__type`, ...): the envelopes package defines the concrete class. A mapping cannot write it."""

    unparsed_kind: str


def unwritable_reason(value: Any) -> str | None:
    """Why a source value cannot be written to a target field as it is (None when it can): a value the
    parser kept raw, or a structured one (bytes of an image column, a multi-select list, an object)."""
    if not isinstance(value, _PLAIN) and isinstance(value, Unparsed) and not isinstance(value, Mapping):
        return f"holds a value the event parser does not know ({value.unparsed_kind}); map another column"
    if isinstance(value, (bytes, bytearray)):
        return f"holds binary data ({len(value)} bytes, e.g. an image column); no field takes it as is"
    if isinstance(value, (list, tuple, Mapping)):
        return f"holds a {'list' if not isinstance(value, Mapping) else 'structured value'}; no field takes it as is"
    return None


def is_empty(value: Any) -> bool:
    """None, an empty or whitespace-only string count as empty; 0 and False do not."""
    return value is None or (isinstance(value, str) and not value.strip())


def compare_key(value: Any) -> tuple[str, Any]:
    """A key under which equal-looking values compare equal: text ignores case and surrounding spaces, numbers
    ignore their Python type (1 == 1.0 == Decimal('1.00')), booleans stay apart from numbers, lookups compare by
    id."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float, Decimal)):
        return ("n", _normal_decimal(value))
    if is_entity_ref(value):
        return ("s", str(value.id).strip().casefold())
    if isinstance(value, str):
        return ("s", value.strip().casefold())
    if value is None:
        return ("z", None)
    return ("s", str(value).strip().casefold())


def _normal_decimal(value: int | float | Decimal) -> Decimal:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        value = Decimal(repr(value))
    elif isinstance(value, int):
        value = Decimal(value)
    if not value.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    if value == 0:
        return Decimal(0)
    return value.normalize()


def _plain_number(value: int | float | Decimal) -> str:
    """5000000, 5000000.0 and Decimal('5E+6') all give '5000000'."""
    return format(_normal_decimal(value), "f")


def iso_datetime(value: datetime) -> str:
    """ISO 8601 in UTC with a Z, to the second (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def to_json_ready(value: Any) -> Any:
    """Turn a payload (or any value of one) into what ``json.dumps`` accepts: Decimal -> int when integral,
    else float; datetime -> ISO UTC; date -> ISO date. Dicts and lists are converted recursively."""
    if isinstance(value, Mapping):
        return {str(k): to_json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_ready(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, Decimal):
        normal = _normal_decimal(value)
        return int(normal) if normal == normal.to_integral_value() else float(normal)
    if isinstance(value, float):
        return value
    if isinstance(value, datetime):
        return iso_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


#: What ``json.dumps`` escapes in a string, with ``ensure_ascii`` False / True (its own patterns): a string
#: without any is written as is.
_JSON_ESCAPED = re.compile(r'[\x00-\x1f\\"]')
_JSON_ESCAPED_ASCII = re.compile(r'[^ -~]|[\\"]')


def _json_string(text: str, *, ascii_only: bool = False) -> str:
    """``json.dumps(text, ensure_ascii=ascii_only)``; the common plain string without calling it (issue 11:
    json.dumps per value was half the cost of a payload's hash)."""
    if (_JSON_ESCAPED_ASCII if ascii_only else _JSON_ESCAPED).search(text) is None:
        return '"' + text + '"'
    return json.dumps(text, ensure_ascii=ascii_only)


def _canonical(value: Any) -> str:
    if type(value) is str:  # exactly: a str subclass (an Enum) is written as str() of it, below
        return _json_string(value)
    if isinstance(value, Mapping):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ",".join(_json_string(k, ascii_only=True) + ":" + _canonical(v) for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return _plain_number(value)
    if isinstance(value, datetime):
        return _json_string(iso_datetime(value), ascii_only=True)
    if isinstance(value, date):
        return _json_string(value.isoformat(), ascii_only=True)
    return _json_string(str(value))


def canonical_json(payload: Mapping[str, Any]) -> str:
    """Canonical JSON text of a payload: keys sorted, numbers in plain normalised decimal notation (so 5000000,
    5000000.0 and Decimal('5000000.00') are written alike), no spaces."""
    return _canonical(payload)


def payload_hash(payload: Mapping[str, Any]) -> str:
    """sha256 (hex) of :func:`canonical_json`: equal for payloads that mean the same, whatever the key order or
    number type. The runtime stores it in the ledger to recognise echoes and unchanged records."""
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()
