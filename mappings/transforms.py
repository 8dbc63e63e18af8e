"""The closed set of named transforms a mapping file may use.

A field's ``transform`` is one name (``upper``), one name with an argument (``{truncate: 60}``) or a list of
those applied in order (``[trim, {truncate: 60}]``). Adding a transform means adding it to ``TRANSFORMS`` below
(and regenerating the JSON Schema); mapping files cannot run code.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import pycountry

from .values import is_entity_ref, iso_datetime


class TransformError(ValueError):
    """A value cannot be transformed; the engine wraps it into a MappedValueError naming field and source."""


@dataclass(frozen=True)
class TransformStep:
    name: str
    arg: int | None = None

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}: {self.arg}"

    def __call__(self, value: Any) -> Any:
        func = TRANSFORMS[self.name].func
        return func(value, self.arg) if self.arg is not None else func(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return iso_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if is_entity_ref(value):
        raise TransformError("a lookup cannot be turned into text; map one of its columns (lookup.column)")
    return str(value)


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise TransformError(f"{value!r} is not a number")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise TransformError(f"{value!r} is not a number") from None
        if not result.is_finite():
            raise TransformError(f"{value!r} is not a finite number")
        return result
    raise TransformError(f"{value!r} is not a number")


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _decimal(value)
    if number != number.to_integral_value():
        raise TransformError(f"{value!r} is not a whole number")
    return int(number)


_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n"}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, Decimal)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().casefold()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise TransformError(f"{value!r} is not a yes/no value")


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise TransformError(f"{value!r} is not an ISO date or date-time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise TransformError(f"{value!r} is not a date")


def _date(value: Any) -> date:
    """The calendar date (of a date-time: its UTC date). The target decides how it is written: Dataverse
    Edm.Date as 2024-05-31, F&O (which has only Edm.DateTimeOffset) as midnight UTC, 2024-05-31T00:00:00Z."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    return _as_datetime(value).astimezone(UTC).date()


def _truncate(value: Any, length: int) -> str:
    return _text(value)[:length]


def _country(value: Any) -> str:
    """The ISO 3166-1 alpha-2 code of a country written as its name, official name, common name, alpha-2,
    alpha-3 or numeric code ("Germany", "Federal Republic of Germany", "DEU", "276" -> "DE"), case ignored.

    Backed by pycountry (the ISO 3166 data of Debian's iso-codes), so the mapping files list only the local
    spellings ISO does not know ("England", "Holland"): a field's value map runs first (with `unmapped: keep`)
    and turns those into a name or code this transform understands."""
    if not isinstance(value, str):
        raise TransformError(f"{value!r} is not a country name or code")
    text = value.strip()
    try:
        return str(pycountry.countries.lookup(text).alpha_2)
    except LookupError:
        raise TransformError(
            f"{value!r} is neither an ISO 3166 country name nor a code; add the spelling to the field's value map"
        ) from None


@dataclass(frozen=True)
class TransformInfo:
    func: Callable[..., Any]
    description: str
    takes_int: bool = False


TRANSFORMS: dict[str, TransformInfo] = {
    "trim": TransformInfo(lambda v: _text(v).strip(), "remove leading and trailing spaces"),
    "upper": TransformInfo(lambda v: _text(v).upper(), "UPPER CASE"),
    "lower": TransformInfo(lambda v: _text(v).lower(), "lower case"),
    "truncate": TransformInfo(_truncate, "cut text to at most N characters: {truncate: N}", takes_int=True),
    "string": TransformInfo(_text, "text (numbers as plain decimals, dates as ISO 8601)"),
    "decimal": TransformInfo(_decimal, "a decimal number (money, quantities)"),
    "integer": TransformInfo(_integer, "a whole number (fails on 2.5)"),
    "boolean": TransformInfo(_boolean, "true/false from true/false, Yes/No, 1/0"),
    "invert": TransformInfo(lambda v: not _boolean(v), "the opposite yes/no value (true <-> false)"),
    "noyes": TransformInfo(lambda v: "Yes" if _boolean(v) else "No", 'F&O NoYes enum: "Yes" or "No"'),
    "date": TransformInfo(
        _date,
        "a date (date-times are taken in UTC); written as 2024-05-31 to Dataverse and as midnight UTC, "
        "2024-05-31T00:00:00Z, to F&O date fields (Edm.DateTimeOffset needs a time zone)",
    ),
    "datetime": TransformInfo(lambda v: iso_datetime(_as_datetime(v)), "ISO date-time in UTC: 2024-05-31T10:00:00Z"),
    "country": TransformInfo(
        _country,
        "ISO 3166 two-letter code from a country name, official or common name, or two/three-letter or numeric "
        "code (Germany, DEU, 276 -> DE; case ignored); spellings ISO does not know go in a value map first",
    ),
}

KNOWN = ", ".join(sorted(TRANSFORMS))


def _unknown(name: str) -> str:
    hint = difflib.get_close_matches(name, TRANSFORMS, n=1)
    suffix = f"; did you mean '{hint[0]}'?" if hint else ""
    return f"unknown transform '{name}' (known: {KNOWN}){suffix}"


def parse_step(raw: Any) -> TransformStep:
    if isinstance(raw, str):
        name = raw.strip()
        if name not in TRANSFORMS:
            raise ValueError(_unknown(name))
        if TRANSFORMS[name].takes_int:
            raise ValueError(f"transform '{name}' needs a number, e.g. {{{name}: 60}}")
        return TransformStep(name)
    if isinstance(raw, dict) and len(raw) == 1:
        ((name, arg),) = raw.items()
        name = str(name).strip()
        if name not in TRANSFORMS:
            raise ValueError(_unknown(name))
        if not TRANSFORMS[name].takes_int:
            raise ValueError(f"transform '{name}' takes no argument; write just '{name}'")
        if isinstance(arg, bool) or not isinstance(arg, int) or arg < 1:
            raise ValueError(f"transform '{name}' needs a whole number >= 1, got {arg!r}")
        return TransformStep(name, arg)
    raise ValueError(f"a transform is a name like 'upper' or a one-key mapping like {{truncate: 60}}, got {raw!r}")


def parse_transforms(raw: Any) -> tuple[TransformStep, ...]:
    """Parse the ``transform`` of a field: None, one step, or a list of steps."""
    if raw is None:
        return ()
    if isinstance(raw, (tuple, list)):
        return tuple(s if isinstance(s, TransformStep) else parse_step(s) for s in raw)
    if isinstance(raw, TransformStep):
        return (raw,)
    return (parse_step(raw),)


def transform_json_schema() -> dict[str, Any]:
    plain = sorted(n for n, t in TRANSFORMS.items() if not t.takes_int)
    with_arg = sorted(n for n, t in TRANSFORMS.items() if t.takes_int)
    step = {
        "anyOf": [
            {"type": "string", "enum": plain},
            *(
                {
                    "type": "object",
                    "properties": {n: {"type": "integer", "minimum": 1}},
                    "required": [n],
                    "additionalProperties": False,
                }
                for n in with_arg
            ),
        ]
    }
    doc = "; ".join(f"{n}: {TRANSFORMS[n].description}" for n in sorted(TRANSFORMS))
    return {
        "description": f"Transform(s) applied after the value map, in order. {doc}.",
        "anyOf": [step, {"type": "array", "items": step, "minItems": 1}],
    }
