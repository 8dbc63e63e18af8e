"""What F&O accepts in an OData JSON body, field by field, checked before anything is written.

* Edm.DateTimeOffset needs a time zone: ODataLib refuses ``"2026-01-31"`` and ``"2026-01-31T00:00:00"``
  ("Cannot convert the literal ... to the expected type 'Edm.DateTimeOffset'"). F&O's OData has no Edm.Date,
  so a date becomes midnight UTC (``2026-01-31T00:00:00Z``); a date-time without a zone is taken as UTC, as
  the OData literal code does. Every value is sent in one form, ``2026-01-31T08:00:00Z`` (UTC, ``T``, ``Z``):
  ``2026-01-31 10:00:00+02:00`` or ``...+0200`` parse in Python but not in ODataLib.
* A key field of type Edm.DateTimeOffset is handed to the connector as an aware UTC ``datetime``
  (:func:`key_value`), so that it is written unquoted in the URL (``InvoiceDate=2026-01-31T00:00:00Z``).
* Strings fit the length of their EDT and numbers the range of their type (``catalog/fno_limits.txt``). A value
  that does not fit raises :class:`DoesNotFit` naming the limit; a too-long text is cut only when the field
  says ``too_long: truncate``.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Literal

from p2csync.connectors.odata import ODataEnum

from .catalog import fno_fields
from .catalog.limits import max_length, number_range, utf16_length, utf16_truncate
from .values import iso_datetime

TooLong = Literal["reject", "truncate"]

EMPTY_DATE = "1900-01-01T00:00:00Z"
"""F&O's "no date" (wire-formats 4.1, observed); what an empty (blank) value of a date field becomes.
[Inferred] that F&O wants it rather than "" (which ODataLib cannot read as Edm.DateTimeOffset)."""

_NUMBERS = ("Edm.Int32", "Edm.Int64", "Edm.Decimal", "Edm.Double")


class DoesNotFit(ValueError):
    """A value F&O would refuse (or store differently) for its field; the message is the reason."""


def field_type(entity_set: str, field: str) -> str | None:
    """The OData type of a field per the catalogue, None when the catalogue does not know it."""
    return (fno_fields(entity_set) or {}).get(field)


def fit(entity_set: str, field: str, value: Any, *, too_long: TooLong = "reject") -> Any:
    """``value`` as it goes into ``field`` of ``entity_set`` in a JSON body; raises DoesNotFit when F&O would
    refuse it. Fields the catalogue does not know are only made JSON-ready (dates as midnight UTC)."""
    edm_type = field_type(entity_set, field)
    if value is None:
        return None
    if edm_type == "Edm.DateTimeOffset" or (edm_type is None and isinstance(value, date)):
        return date_time_offset(value)
    if edm_type == "Edm.String":
        return _string(entity_set, field, value, too_long)
    if edm_type in _NUMBERS and isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return _number(edm_type, value)
    return value


def date_time_offset(value: Any) -> str:
    """An Edm.DateTimeOffset JSON value: always with a zone (Z for a date or a value without one)."""
    if isinstance(value, datetime):
        return iso_datetime(value)
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00Z"
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return EMPTY_DATE
        try:
            if len(text) == 10:
                return date_time_offset(date.fromisoformat(text))
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise DoesNotFit(f"{value!r} is not an ISO 8601 date or date-time") from None
        return iso_datetime(parsed)  # re-rendered: ODataLib reads only the canonical form
    raise DoesNotFit(f"{value!r} is not a date")


def key_value(entity_set: str, field: str, value: Any) -> Any:
    """A fitted key value as the connector addresses the row: an Edm.DateTimeOffset field as an aware UTC
    ``datetime`` (F&O reads a quoted key value as a string and refuses it for a date-time key), an enum field
    (CDSContactPersonsV2.AssociatedContactType) as an ``ODataEnum``, so the key names it the way OData spells an
    enum (``Microsoft.Dynamics.DataEntities.SmmContactPersonCdsAssociatedContactType'Customer'``) while the
    JSON body still carries the plain symbol; any other field unchanged."""
    edm_type = field_type(entity_set, field)
    if value is None:
        return value
    if edm_type and not edm_type.startswith("Edm.") and isinstance(value, str):
        return ODataEnum(edm_type, value)
    if edm_type != "Edm.DateTimeOffset":
        return value
    return datetime.fromisoformat(date_time_offset(value).replace("Z", "+00:00")).astimezone(timezone.utc)


def _string(entity_set: str, field: str, value: Any, too_long: TooLong) -> str:
    """A text for an Edm.String field; anything else is refused: ODataLib does not read a JSON number or
    boolean as Edm.String (nor does the sandbox), and its length could not be checked against the EDT."""
    if isinstance(value, datetime):
        value = iso_datetime(value)
    elif isinstance(value, date):
        value = value.isoformat()
    if not isinstance(value, str):
        raise DoesNotFit(f"{_show(value)} is a {type(value).__name__}, not text: the field is Edm.String "
                         "(add 'transform: string' to send it as text)")
    limit = max_length(entity_set, field)
    if limit is None:
        return value
    size, edt = limit
    length = utf16_length(value)
    if length <= size:
        return value
    if too_long == "truncate":
        return utf16_truncate(value, size)
    raise DoesNotFit(f"{length} characters, the limit is {size} (EDT {edt}); add 'too_long: truncate' to the "
                     "field to cut it instead")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _number(edm_type: str, value: int | float | Decimal) -> int | float | Decimal:
    if isinstance(value, float) and not math.isfinite(value) or isinstance(value, Decimal) and not value.is_finite():
        raise DoesNotFit(f"{value} is not a finite number")
    if edm_type in ("Edm.Int32", "Edm.Int64") and Decimal(value) != Decimal(value).to_integral_value():
        raise DoesNotFit(f"{value} is not a whole number ({edm_type})")
    bounds = number_range(edm_type)
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if bounds is not None and not bounds[0] <= number <= bounds[1]:
        low, high = bounds
        raise DoesNotFit(f"{value} is out of range for {edm_type}: {low} to {high}")
    return value
