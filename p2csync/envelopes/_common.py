"""Helpers shared by the Dataverse and F&O envelope models: the error type, `/Date()/` decoding, GUIDs,
and the translation of pydantic validation errors into `EnvelopeError` with a JSON-path-like location."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ValidationError
from pydantic_core import PydanticCustomError

__all__ = [
    "EnvelopeError",
    "EPOCH",
    "FNO_EMPTY_DATE_MS",
    "Guid",
    "WcfDate",
    "datetime_to_epoch_ms",
    "excerpt",
    "got",
    "json_type_name",
    "normalise_guid",
    "parse_wcf_date",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: F&O writes "no date" as 1900-01-01T00:00:00Z.
FNO_EMPTY_DATE_MS = -2208988800000

_EXCERPT_LIMIT = 40
# DataContractJsonSerializer: "/Date(<ms since epoch, UTC>[+-hhmm])/". The offset is informational only.
_WCF_DATE = re.compile(r"^/Date\((-?\d{1,16})([+-]\d{4})?\)/$")
_GUID = re.compile(r"^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$")


class EnvelopeError(ValueError):
    """A payload that cannot be turned into a `ChangeEvent`.

    `member` is a JSON-path-like location (`InputParameters[0].value.Attributes[2].value`, `body`, ...),
    `reason` a short explanation that never carries more than a short excerpt of the payload."""

    def __init__(self, member: str, reason: str) -> None:
        self.member = member
        self.reason = reason
        super().__init__(f"{member}: {reason}")

    def __reduce__(self):  # keep it picklable (multiprocessing, logging handlers)
        return (type(self), (self.member, self.reason))


def excerpt(value: Any, limit: int = _EXCERPT_LIMIT) -> str:
    """A short repr of a payload value, for error messages."""
    if isinstance(value, Decimal):
        text = str(value)
    elif isinstance(value, dict):
        text = "{" + ", ".join(repr(k) for k in list(value)[:4]) + (", ...}" if len(value) > 4 else "}")
    elif isinstance(value, list):
        text = f"[... {len(value)} items]"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def parse_wcf_date(text: str) -> datetime:
    """`/Date(ms)/` or `/Date(ms+hhmm)/` -> aware UTC datetime. Raises ValueError."""
    match = _WCF_DATE.match(text)
    if match is None:
        raise ValueError(f"bad /Date()/ string {excerpt(text)}")
    try:
        return EPOCH + timedelta(milliseconds=int(match.group(1)))
    except OverflowError:
        raise ValueError(f"/Date()/ out of range {excerpt(text)}") from None


def datetime_to_epoch_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // timedelta(milliseconds=1)


def normalise_guid(text: str) -> str:
    """Lower-case GUID without braces. Raises ValueError."""
    match = _GUID.match(text)
    if match is None:
        raise ValueError(f"not a GUID {excerpt(text)}")
    return match.group(1).lower()


def _validate_wcf_date(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("wcf_date", "expected a /Date()/ string, got {kind}",
                                  {"kind": json_type_name(value)})
    try:
        return parse_wcf_date(value)
    except ValueError as exc:
        raise PydanticCustomError("wcf_date", str(exc)) from None


def _validate_guid(value: str) -> str:
    try:
        return normalise_guid(value)
    except ValueError as exc:
        raise PydanticCustomError("guid", str(exc)) from None


#: A `/Date()/` member, decoded to an aware UTC datetime.
WcfDate = Annotated[datetime, BeforeValidator(_validate_wcf_date)]
#: A GUID string member, normalised to lower case without braces.
Guid = Annotated[str, AfterValidator(_validate_guid)]


# --- pydantic errors -> EnvelopeError ------------------------------------------------------------------

#: Loc entries that are union tags (see dataverse.py), not payload members.
TAG_PREFIX = "~"


def format_location(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(TAG_PREFIX):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def got(value: Any) -> str:
    """`null`, or the JSON type of a value and a short excerpt of it (`string '12.5'`), for error reasons."""
    return "null" if value is None else f"{json_type_name(value)} {excerpt(value)}"


def _reason(err: dict[str, Any]) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        return "missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        if isinstance(value, dict):
            marker = value.get("__type")
            if marker is None:
                return "object without __type"
            return f"unknown __type {excerpt(marker)}"
        return f"unexpected {got(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected an object, got {json_type_name(value)}"
    if kind == "list_type":
        return f"expected an array, got {json_type_name(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected a boolean, got {got(value)}"
    if kind == "string_type":
        return f"expected a string, got {got(value)}"
    if kind in ("string_too_short", "too_short") and value == "":
        return "empty"
    if kind in ("decimal_type", "decimal_parsing", "float_type", "float_parsing"):
        return f"expected a number, got {got(value)}"
    # Custom errors (PydanticCustomError) and value errors already carry short, excerpt-only messages.
    msg = str(err.get("msg", kind))
    return msg.removeprefix("Value error, ")


def envelope_error_from_validation(exc: ValidationError, *, prefix: str = "",
                                   drop: tuple[str, ...] = ()) -> EnvelopeError:
    """The first error of a pydantic ValidationError as an EnvelopeError (further errors are counted)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [part for part in first["loc"] if part not in drop]
    member = format_location(loc, prefix)
    subpath = (first.get("ctx") or {}).get("subpath")
    if subpath:
        member += subpath
    reason = _reason(first)
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return EnvelopeError(member, reason)
