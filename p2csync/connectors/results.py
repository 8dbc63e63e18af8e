"""Result types shared by the connectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["UpsertResult"]


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """What an upsert did.

    ``created``: a new row was made. ``changed``: the row was written at all (``False`` only when F&O already
    held every value, so no request was sent). ``record``: the row as the service returned it (Dataverse with
    ``Prefer: return=representation``; F&O: the created row, or the read row with the patched fields merged
    in). ``etag``: the row's ETag when the service returned one.
    """

    created: bool
    record: dict[str, Any] = field(default_factory=dict)
    etag: str | None = None
    changed: bool = True
