"""``pause <flow>`` / ``resume <flow>``: the pause state lives in the ledger, where every runtime reads it
(p2csync.pauses); a paused flow's messages wait on the queue, nothing is lost."""

from __future__ import annotations

from pydantic import BaseModel

from p2csync.pauses import PauseRecord, pause_key


class PauseError(ValueError):
    """The flow named is not one the mappings run."""


class ResumeResult(BaseModel):
    flow: str
    was_paused: bool


def _check(flow: str, known: list[str]) -> None:
    if known and flow not in known:
        raise PauseError(f"flow {flow!r}: not a flow of the mappings (known: {', '.join(known)})")


async def pause(ledger: object, flow: str, known: list[str], *, by: str | None = None,
                note: str | None = None) -> PauseRecord:
    """Pause ``flow`` (pausing a paused flow keeps its first record: when it was paused matters)."""
    _check(flow, known)
    current = await ledger.get_value(pause_key(flow))  # type: ignore[attr-defined]
    if current is not None:
        try:
            return PauseRecord.model_validate_json(current)
        except ValueError:
            pass
    record = PauseRecord(flow=flow, by=by, note=note)
    await ledger.put_value(pause_key(flow), record.model_dump_json())  # type: ignore[attr-defined]
    return record


async def resume(ledger: object, flow: str, known: list[str]) -> ResumeResult:
    """Resume ``flow``; its waiting messages are processed when they next come back (within
    P2C_PAUSE_RECHECK_SECONDS plus P2C_PAUSE_CACHE_SECONDS)."""
    was = await ledger.get_value(pause_key(flow)) is not None  # type: ignore[attr-defined]
    if not was:  # a paused flow whose mapping was removed since can still be resumed
        _check(flow, known)
    await ledger.put_value(pause_key(flow), None)  # type: ignore[attr-defined]
    return ResumeResult(flow=flow, was_paused=was)
