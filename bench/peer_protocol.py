"""What both sides of figure 6 (peers) share: the job, the records, the timed loop and the one-line result.

Each client runs in its own process (ours with the project's Python, a peer with the throwaway peer venv's),
the sandbox in the benchmark's: neither client shares a GIL with the simulator. This module is imported by
both, so it uses the standard library only (the peer venv has none of the project's packages).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

RESULT_PREFIX = "PEER-RESULT "
WARMUP = "W"  # key infix of the untimed warm-up records (connections opened, per-client caches filled)


@dataclass(frozen=True)
class Job:
    """One side's run: N upserts of new rows at a fixed concurrency against one sandbox system."""

    system: str  # "dataverse" (accounts by alternate key accountnumber) or "fno" (CustomersV3)
    url: str  # the system's root URL (Dataverse org URL, F&O environment URL)
    token: str  # the sandbox's bearer token for the integration user
    records: int
    concurrency: int
    prefix: str  # key prefix, unique per run so every write creates a new row
    warmup: int = 4
    currency_id: str = ""  # Dataverse: the USD transactioncurrency row the accounts bind to
    company: str = "usmf"  # F&O: the legal entity

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Outcome:
    """What one side reports: how many writes succeeded in how many seconds, and the first failure if any."""

    client: str  # name and version of the client measured
    records: int
    errors: int
    seconds: float
    cpu_seconds: float = 0.0  # the client process's CPU during the timed writes
    first_error: str | None = None

    @property
    def rate(self) -> float:
        """Successful upserts per second."""
        return (self.records - self.errors) / self.seconds if self.seconds > 0 else 0.0


def account(job: Job, number: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(alternate key, columns) of one Dataverse account: the shape bench/world.py syncs, currency bound."""
    return {"accountnumber": number}, {
        "name": f"Peer {number}", "telephone1": "+1 425 555 0100", "address1_city": "Redmond",
        "address1_country": "United States", "creditlimit": 25000,
        "transactioncurrencyid@odata.bind": f"/transactioncurrencies({job.currency_id})"}


def customer(job: Job, number: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(key, fields) of one F&O CustomersV3 row: the fields our account mapping writes."""
    return {"dataAreaId": job.company, "CustomerAccount": number}, {
        "OrganizationName": f"Peer {number}", "CustomerGroupId": "10", "SalesCurrencyCode": "USD",
        "CreditLimit": 25000, "PrimaryContactPhone": "+1 425 555 0100"}


Write = Callable[[dict[str, Any], dict[str, Any]], Awaitable[Any]]


def record(job: Job, number: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return account(job, number) if job.system == "dataverse" else customer(job, number)


async def _all(job: Job, write: Write, numbers: list[str]) -> tuple[int, str | None]:
    gate = asyncio.Semaphore(job.concurrency)
    errors: list[str] = []

    async def one(number: str) -> None:
        async with gate:
            try:
                await write(*record(job, number))
            except Exception as exc:  # a failed write is counted, not fatal: the figure says how many
                errors.append(f"{number}: {type(exc).__name__}: {str(exc)[:300]}")

    await asyncio.gather(*(one(n) for n in numbers))
    return len(errors), (errors[0] if errors else None)


async def drive(job: Job, client: str, write: Write) -> Outcome:
    """Warm up (untimed), then time N writes of new rows with at most ``job.concurrency`` in flight."""
    await _all(job, write, [f"{job.prefix}{WARMUP}{i:03d}" for i in range(job.warmup)])
    started, cpu = time.perf_counter(), time.process_time()
    errors, first = await _all(job, write, [f"{job.prefix}{i:05d}" for i in range(job.records)])
    return Outcome(client=client, records=job.records, errors=errors, seconds=time.perf_counter() - started,
                   cpu_seconds=time.process_time() - cpu, first_error=first)


def read_job() -> Job:
    return Job.from_json(sys.stdin.read())


def emit(outcome: Outcome) -> None:
    print(RESULT_PREFIX + json.dumps(asdict(outcome)), flush=True)


def parse_outcome(stdout: str) -> Outcome:
    """The last result line a side printed; ``ValueError`` naming what is wrong when there is none."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise ValueError(f"no {RESULT_PREFIX.strip()} line in the output: {stdout[-500:]!r}")
    try:
        data = json.loads(lines[-1][len(RESULT_PREFIX):])
        outcome = Outcome(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"malformed {RESULT_PREFIX.strip()} line ({exc}): {lines[-1][:300]!r}") from exc
    if outcome.seconds <= 0 or outcome.records <= 0 or not 0 <= outcome.errors <= outcome.records:
        raise ValueError(f"impossible result: {outcome}")
    return outcome
