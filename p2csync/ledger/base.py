"""The ledger contract: idempotency and ordering state shared by every function instance.

Why one `record_key` holds everything: a single conditional write (one SQLite transaction, one Table Storage
partition) then covers the lease, the record's last applied version and the message marker together, so a
message is applied at most once and an older state never overwrites a newer one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "Clock",
    "RecordState",
    "MessageEntry",
    "JournalEntry",
    "Ledger",
    "LedgerQueries",
    "LedgerError",
    "LeaseBusy",
    "LeaseLost",
]

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


class RecordState(BaseModel):
    """What the ledger knows about a source record; all None for a record never committed."""

    model_config = ConfigDict(frozen=True)

    version: int | None = None
    payload_hash: str | None = None
    updated_at: AwareDatetime | None = None
    #: The counterpart record this source record owns (see ``Ledger.claim``), as last committed.
    target_key: str | None = None


class MessageEntry(BaseModel):
    """The final outcome recorded for one message (change occurrence) on one record."""

    model_config = ConfigDict(frozen=True)

    message_key: str
    outcome: str
    reason: str | None = None
    recorded_at: AwareDatetime


class JournalEntry(BaseModel):
    """One delivery's outcome in the append-only audit trail."""

    model_config = ConfigDict(frozen=True)

    message_key: str
    record_key: str | None = None
    queue: str
    message_id: str
    delivery_count: int = Field(ge=0)
    outcome: str
    reason: str | None = None
    detail: str | None = None
    at: AwareDatetime = Field(default_factory=_now)
    #: The source system's id of the change: Dataverse CorrelationId (F&O events: the EventId is the
    #: message_key). None on entries written before the field existed.
    correlation_id: str | None = None
    #: The source version an applied or skipped outcome recorded (modifiedon in epoch ms, ControlNumber).
    version: int | None = None
    #: The counterpart record written (e.g. ``fno:CustomersV3:usmf|US-001``), when the outcome names one.
    target_key: str | None = None


class LedgerError(Exception):
    """Base of the ledger errors."""


class LeaseBusy(LedgerError):
    """Another owner holds a live lease on the record; try again after `until`."""

    def __init__(self, record_key: str, holder: str, until: datetime) -> None:
        super().__init__(f"{record_key} is leased by {holder} until {until.isoformat()}")
        self.record_key, self.holder, self.until = record_key, holder, until


class LeaseLost(LedgerError):
    """`owner` no longer holds the record's lease (it expired and was taken, or was released)."""

    def __init__(self, record_key: str, owner: str) -> None:
        super().__init__(f"{owner} no longer holds the lease on {record_key}")
        self.record_key, self.owner = record_key, owner


@runtime_checkable
class Ledger(Protocol):
    """The contract of docs/architecture.md (SQLite locally, Table Storage in Azure)."""

    async def acquire(self, record_key: str, owner: str, lease: timedelta) -> RecordState:
        """Take the record's lease (raises LeaseBusy while another owner holds a live lease)."""
        ...

    async def message_outcome(self, record_key: str, message_key: str) -> MessageEntry | None:
        """The recorded final outcome of that message for that record, if any."""
        ...

    async def commit(
        self,
        record_key: str,
        owner: str,
        *,
        message_key: str,
        outcome: str,
        reason: str | None,
        version: int | None,
        payload_hash: str | None,
        target_key: str | None = None,
        replace_version: bool = False,
    ) -> None:
        """Record the message outcome and, when version/payload_hash are given, the new record state;
        release the lease. Raises LeaseLost if `owner` no longer holds the lease.

        Versions only move forward, unless `replace_version`: then `version` replaces the stored one even
        if it is smaller (the caller judged the stored version untrustworthy, e.g. a time in the future).
        `target_key`, when given, is recorded as the record's claimed counterpart."""
        ...

    async def renew(self, record_key: str, owner: str, lease: timedelta) -> None:
        """Extend `owner`'s lease to now + `lease` while work is in progress. Raises LeaseLost if `owner`
        no longer holds it (another owner took it, or it was committed or released): never re-takes it."""
        ...

    async def claim(self, target_key: str, record_key: str, *, previous: str | None = None) -> str:
        """Make `record_key` the owner of the counterpart `target_key` unless another source record owns it.

        Returns the owner after the call: `record_key` when granted (newly, or it already owned it), else
        the other record's key (a conflict: two source records would write one target). When granted and
        `previous` (the target this record owned before) differs, `previous` is released if this record
        owns it, so a record whose key changed does not keep its old counterpart locked."""
        ...

    async def unclaim(self, target_key: str, record_key: str) -> bool:
        """Release `record_key`'s claim on `target_key` (its source record was deleted); False when it did not
        own it (nothing changes then)."""
        ...

    async def release(self, record_key: str, owner: str) -> None:
        """Give the lease back without recording anything (a failed attempt)."""
        ...

    async def journal(self, entry: JournalEntry) -> None:
        """Append one delivery's outcome (audit trail: every message ends applied, skipped, deferred or
        rejected, with a reason)."""
        ...

    async def get_value(self, key: str) -> str | None:
        """A small shared setting (e.g. ``pause:<flow>``), or None when unset. Shared by every instance."""
        ...

    async def put_value(self, key: str, value: str | None) -> None:
        """Set a shared setting; None deletes it (a no-op when unset)."""
        ...

    async def list_values(self, prefix: str = "") -> dict[str, str]:
        """Every shared setting whose key starts with ``prefix``."""
        ...


@runtime_checkable
class LedgerQueries(Protocol):
    """Read-only helpers for tools and tests (no lease needed)."""

    async def record_state(self, record_key: str) -> RecordState:
        """The record's current state (empty for an unknown record)."""
        ...

    async def claim_owner(self, target_key: str) -> str | None:
        """The source record that owns `target_key`, if any."""
        ...

    async def journal_entries(
        self,
        message_key: str | None = None,
        outcome: str | None = None,
        *,
        record_key: str | None = None,
        message_id: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[JournalEntry]:
        """The newest ``limit`` journal entries matching every given filter (``since``: written at or after
        it), returned oldest first."""
        ...
