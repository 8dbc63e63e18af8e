"""Flow 1: Sales accounts become F&O customers (P2C template "Accounts (Sales to Fin and Ops) - Direct").

Everything flow-specific is in mappings/accounts.yaml. Deletes are not synced: the P2C template never
deleted customers, and an F&O customer with transactions cannot be deleted anyway.
"""

from __future__ import annotations

from handlers.base import SalesToFnORecordSync

FLOW = "accounts"


def create_handler() -> SalesToFnORecordSync:
    return SalesToFnORecordSync(FLOW)
