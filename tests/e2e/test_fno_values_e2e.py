"""End to end through the local host: a Sales account whose values do not fit the F&O customer (a 5,000-character
account number, a credit limit of 1e308) is dead-lettered with the field, the limit and the value's size, and no
request reaches F&O, whichever way the F&O sandbox treats an over-long text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2csync.devstack import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["error", "truncate"])
async def stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[LocalStack]:
    async with LocalStack(tmp_path / "stack") as local:
        local.sandbox.fno.string_overflow = request.param
        yield local


async def test_values_over_fno_limits_are_dead_lettered_before_any_fno_request(stack: LocalStack) -> None:
    def create() -> None:
        stack.sandbox.dataverse.create("account", {"name": "Long", "accountnumber": "A" * 5000})
        stack.sandbox.dataverse.create("account", {"name": "Rich", "accountnumber": "RICH-1", "creditlimit": 1e308})

    await asyncio.to_thread(create)
    assert await stack.wait_settled(20)

    dead = stack.queue.peek_dead_letters("sales-events")
    assert sorted(m.dead_letter_reason or "" for m in dead) == ["MappingFailed", "MappingFailed"]
    reasons = sorted(m.dead_letter_error_description or "" for m in dead)
    assert reasons[0].startswith("accounts: CreditLimit <- creditlimit: 1E+308 is out of range for Edm.Decimal")
    assert reasons[1].startswith("accounts: CustomerAccount <- accountnumber: 5000 characters, the limit is 20")
    assert stack.sandbox.fno.request_log.entries() == []
    assert stack.sandbox.fno.rows("CustomersV3") == []
