"""Web API rows in the same shape as decoded event attributes.

A handler works from an event's image or from a fetched row; both must look alike to the mapping engine:
lookups as ``EntityRef``, money as ``Decimal``, dates as aware ``datetime``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from p2csync.envelopes import EntityRef

_LOOKUP = re.compile(r"^_(?P<name>.+)_value$")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
LOOKUP_TABLE = "@Microsoft.Dynamics.CRM.lookuplogicalname"
FORMATTED = "@OData.Community.Display.V1.FormattedValue"


def record_from_webapi(row: dict[str, Any], *, money_columns: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Convert one Web API row (requested with ``Prefer: odata.include-annotations="*"``) to plain values."""
    record: dict[str, Any] = {}
    for key, value in row.items():
        if "@" in key:
            continue
        if match := _LOOKUP.match(key):
            name = match.group("name")
            if value is None:
                record[name] = None
            else:
                table = row.get(f"{key}{LOOKUP_TABLE}") or ""
                record[name] = EntityRef(id=str(value).lower(), logical_name=table, name=row.get(f"{key}{FORMATTED}"))
            continue
        if isinstance(value, str) and _ISO_DATETIME.match(value):
            record[key] = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        elif key in money_columns and isinstance(value, int | float):
            record[key] = Decimal(str(value))
        else:
            record[key] = value
    return record


def webapi_select(columns: list[str], lookups: set[str]) -> list[str]:
    """``$select`` names: the Web API selects a lookup column as ``_<name>_value``."""
    return [f"_{c}_value" if c in lookups else c for c in columns]


def epoch_ms(value: Any) -> int | None:
    """The ordering version of a record: its modifiedon in epoch milliseconds."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, str) and _ISO_DATETIME.match(value):
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    return None


#: Alias of our post images: ``p2c-`` and a fingerprint of the columns registered in the image.
IMAGE_ALIAS = "p2c"


def image_alias(columns: Iterable[str]) -> str:
    """The alias of a post image holding exactly ``columns``: ``p2c-<8 hex>``.

    Dataverse leaves a null column out of an image, so an absent column means null only when the image was
    registered with it. The alias names the registered set: a handler that finds the alias of the columns it
    reads can trust the image (absent = null) and skip the read; after a mapping change, until ``register`` runs
    again, the alias differs and the record is fetched instead."""
    fingerprint = hashlib.sha256(",".join(sorted(set(columns))).encode()).hexdigest()[:8]
    return f"{IMAGE_ALIAS}-{fingerprint}"
