"""Paused flows: shared state in the ledger, read by every runtime through a short cache.

Why the ledger: it is the one store every instance (Azure workers, the local host, the CLI) already shares,
so `python -m p2csync pause accounts` on a laptop pauses the flow in Azure too. Why a cache: the check runs
before every handler, and one ledger read per message would double the ledger traffic; a pause or resume
takes effect within the cache's lifetime (P2C_PAUSE_CACHE_SECONDS).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

log = logging.getLogger("p2csync.pauses")

#: Ledger key prefix of a paused flow: ``pause:<flow>`` holds a PauseRecord as JSON.
PAUSE_PREFIX = "pause:"
#: Message property counting how often a message waited for its paused flow (no limit applies to it).
PAUSE_WAITS = "p2c-pause-waits"


class SharedValues(Protocol):
    async def list_values(self, prefix: str = "") -> dict[str, str]: ...


class PauseRecord(BaseModel):
    """Who paused a flow, when and why (shown by ``status``)."""

    model_config = ConfigDict(frozen=True)

    flow: str
    paused_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    by: str | None = None
    note: str | None = None


def pause_key(flow: str) -> str:
    return PAUSE_PREFIX + flow


async def paused_flows(ledger: SharedValues) -> dict[str, PauseRecord]:
    """Every paused flow with its record (a value that is not a PauseRecord still pauses its flow)."""
    found: dict[str, PauseRecord] = {}
    for key, value in (await ledger.list_values(PAUSE_PREFIX)).items():
        flow = key[len(PAUSE_PREFIX):]
        try:
            found[flow] = PauseRecord.model_validate_json(value)
        except ValueError:
            found[flow] = PauseRecord(flow=flow, note=value)
    return found


class PauseCache:
    """Answers "is this flow paused?" from one ledger read per ``ttl`` seconds for all flows. When the read
    fails, the last answer stands (logged): a ledger outage then shows up in the lease, not here."""

    def __init__(self, ledger: SharedValues, ttl: float = 5.0) -> None:
        self.ledger, self.ttl = ledger, ttl
        self._flows: frozenset[str] = frozenset()
        self._read_at: float | None = None

    async def is_paused(self, flow: str) -> bool:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self.ttl:
            try:
                values = await self.ledger.list_values(PAUSE_PREFIX)
                self._flows = frozenset(key[len(PAUSE_PREFIX):] for key in values)
            except Exception as exc:  # keep the last answer; retried on the next message
                log.warning("could not read the paused flows (%s: %s); using the last known", type(exc).__name__,
                            exc)
            self._read_at = now
        return flow in self._flows
