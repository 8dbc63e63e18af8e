"""What became of one message. The runtime turns each outcome into a settlement (see docs/architecture.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Outcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    @property
    def is_final(self) -> bool:
        """A final outcome is recorded against the message key, so redeliveries are skipped as duplicates."""
        return self.kind in ("applied", "skipped")  # type: ignore[attr-defined]


class Applied(_Outcome):
    """The counterpart record was written (created or updated)."""

    kind: Literal["applied"] = "applied"
    detail: str
    version: int | None = None
    payload_hash: str | None = None
    #: The counterpart record written (``Ledger.claim``), recorded with the state.
    target_key: str | None = None


class Skipped(_Outcome):
    """Nothing to write, for a recorded reason (duplicate, stale, echo, unchanged, filtered, no flow)."""

    kind: Literal["skipped"] = "skipped"
    reason: str
    version: int | None = None
    payload_hash: str | None = None
    target_key: str | None = None


class Deferred(_Outcome):
    """Try again later (record busy, parent missing, throttled, transient error)."""

    kind: Literal["deferred"] = "deferred"
    delay: float = Field(ge=0)
    reason: str
    #: Waiting for a record another worker holds (counted apart from deferrals: see the runtime).
    lease_wait: bool = False
    #: Waiting because the flow is paused (``python -m p2csync pause``): no limit applies.
    paused: bool = False


class Rejected(_Outcome):
    """The message cannot be processed as it is; it goes to the dead-letter queue with this reason."""

    kind: Literal["rejected"] = "rejected"
    reason: str
    description: str


Outcome = Applied | Skipped | Deferred | Rejected


def describe(outcome: Outcome) -> str:
    """One human line for logs and tables."""
    match outcome:
        case Applied(detail=detail):
            return f"applied: {detail}"
        case Skipped(reason=reason):
            return f"skipped: {reason}"
        case Deferred(delay=delay, reason=reason):
            return f"deferred {delay:.1f}s: {reason}"
        case Rejected(reason=reason, description=description):
            return f"rejected ({reason}): {description}"
    raise TypeError(outcome)
