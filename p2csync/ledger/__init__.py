"""The ledger: idempotency record shared by all instances (`base` contract, `sqlite` local implementation)."""

from p2csync.ledger.base import (
    JournalEntry,
    LeaseBusy,
    LeaseLost,
    Ledger,
    LedgerError,
    LedgerQueries,
    MessageEntry,
    RecordState,
)

__all__ = [
    "JournalEntry",
    "LeaseBusy",
    "LeaseLost",
    "Ledger",
    "LedgerError",
    "LedgerQueries",
    "MessageEntry",
    "RecordState",
]
