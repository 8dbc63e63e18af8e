"""The resync message: our own notification "re-read this source record and sync it", sent by ``backfill``,
``reconcile --fix`` and the scheduled catch-up (p2csync/ops). It takes the same path as an event (queue ->
runtime -> flow handler), so it is deduplicated, leased, checked and journalled like one.

Body (JSON): ``{"p2c": "resync", "flow": "accounts", "system": "dataverse", "table": "account", "id": "<guid>",
"run": "<run id>"}``, or for an F&O source ``"system": "fno", "table": "<mserp_ virtual table>", "key":
{"dataAreaId": "usmf", "ProductNumber": "D0001"}``. [Inferred] Not a Microsoft format: the ``p2c`` member marks it.
``table`` is the table the flow's real events name (the Dataverse logical name; for F&O the virtual table of the
data events), so the registry routes a resync to the handler that takes that table, and the handler names the
same ledger record as for a real event. Its dedupe key is (run, flow, record): a resumed or repeated run is
a duplicate, a new run (a new catch-up, a new backfill) syncs again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["RESYNC", "RESYNC_MESSAGE", "ResyncRequest", "is_resync", "resync_body", "resync_message_id"]

#: ``ChangeEvent.source`` and the marker of the body.
RESYNC = "resync"
#: ``ChangeEvent.message_name`` of a resync.
RESYNC_MESSAGE = "Resync"


class ResyncRequest(BaseModel):
    """One record to re-read from its source and sync through its flow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p2c: Literal["resync"] = RESYNC
    flow: str = Field(min_length=1, max_length=100)
    system: Literal["dataverse", "fno"]
    table: str = Field(min_length=1, max_length=200)
    #: Dataverse: the row's primary id (GUID).
    id: str | None = Field(default=None, max_length=100)
    #: F&O: the row's key fields (the mapping's ``source.key``), by their OData names.
    key: dict[str, str | int] | None = None
    #: The run (a backfill, a reconcile, a catch-up) this request belongs to.
    run: str = Field(min_length=1, max_length=100)

    @field_validator("id")
    @classmethod
    def _lower_id(cls, value: str | None) -> str | None:
        return value.strip().strip("{}").lower() if value else value

    @model_validator(mode="after")
    def _names_its_record(self) -> ResyncRequest:
        if self.system == "dataverse" and not self.id:
            raise ValueError("a Dataverse resync needs 'id'")
        if self.system == "fno" and not self.key:
            raise ValueError("an F&O resync needs 'key'")
        return self

    @property
    def record_text(self) -> str:
        """The record as one text: the GUID, or the key as canonical JSON (sorted members)."""
        if self.system == "dataverse":
            return str(self.id)
        return json.dumps(self.key, sort_keys=True, separators=(",", ":"), default=str)

    @property
    def dedupe_key(self) -> str:
        return f"{RESYNC}:{self.run}:{self.flow}:{self.record_text}"


def is_resync(data: Mapping[str, Any]) -> bool:
    return data.get("p2c") == RESYNC


def resync_body(request: ResyncRequest) -> bytes:
    return request.model_dump_json(exclude_none=True).encode("utf-8")


def resync_message_id(request: ResyncRequest) -> str:
    """Deterministic (<= 128 chars): the same request sent twice (a resumed run re-sending its last page) is one
    message to Service Bus duplicate detection, and one outcome to the ledger."""
    digest = hashlib.sha256(request.dedupe_key.encode("utf-8")).hexdigest()
    return f"{RESYNC}:{request.flow[:40]}:{digest}"
