"""Reusable contract tests for any `Ledger` implementation.

Use it by subclassing `LedgerContract` in a test module and overriding the `ledger_factory` fixture: a
callable taking the test's clock and returning a *new client on the same store* each time it is called
(so races between instances are races on shared state). The SQLite ledger runs it in
test_sqlite_ledger.py; the Table Storage ledger can run the same class against Azurite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pytest

from p2csync.ledger.base import (
    JournalEntry,
    LeaseBusy,
    LeaseLost,
    Ledger,
    LedgerQueries,
    MessageEntry,
    RecordState,
)

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
RK = "accounts:account:6f1c2a8e-0d4b-4c7e-9a51-2f3e4d5c6b7a"


class FakeClock:
    """A settable clock shared by every client of one test: lease expiry without sleeping."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class LedgerUnderTest(Ledger, LedgerQueries, Protocol):
    """What the contract needs: the ledger plus its read helpers."""


LedgerFactory = Callable[[FakeClock], LedgerUnderTest]


async def commit(
    ledger: Ledger,
    owner: str,
    message_key: str = "msg-1",
    *,
    record_key: str = RK,
    outcome: str = "applied",
    reason: str | None = None,
    version: int | None = None,
    payload_hash: str | None = None,
    target_key: str | None = None,
    replace_version: bool = False,
) -> None:
    await ledger.commit(
        record_key,
        owner,
        message_key=message_key,
        outcome=outcome,
        reason=reason,
        version=version,
        payload_hash=payload_hash,
        target_key=target_key,
        replace_version=replace_version,
    )


class LedgerContract:
    """The semantics every ledger must have (docs/architecture.md, "Ledger")."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def ledger_factory(self) -> LedgerFactory:
        raise NotImplementedError("override the ledger_factory fixture")

    @pytest.fixture
    def ledger(self, ledger_factory: LedgerFactory, clock: FakeClock) -> LedgerUnderTest:
        return ledger_factory(clock)

    # -- protocol -----------------------------------------------------------------------------------
    def test_implements_the_protocols(self, ledger: LedgerUnderTest) -> None:
        assert isinstance(ledger, Ledger) and isinstance(ledger, LedgerQueries)

    # -- acquire ------------------------------------------------------------------------------------
    async def test_acquire_new_record_returns_empty_state(self, ledger: LedgerUnderTest) -> None:
        assert await ledger.acquire(RK, "w1", LEASE) == RecordState(
            version=None, payload_hash=None, updated_at=None
        )
        assert await ledger.record_state(RK) == RecordState()

    async def test_live_lease_of_another_owner_is_busy(
        self, ledger: LedgerUnderTest, clock: FakeClock
    ) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        clock.advance(seconds=10)
        with pytest.raises(LeaseBusy) as busy:
            await ledger.acquire(RK, "w2", LEASE)
        assert (busy.value.record_key, busy.value.holder, busy.value.until) == (RK, "w1", START + LEASE)
        await ledger.acquire("accounts:account:other", "w2", LEASE)  # leases are per record

    async def test_same_owner_reacquires_and_extends(self, ledger: LedgerUnderTest, clock: FakeClock) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        clock.advance(seconds=20)
        await ledger.acquire(RK, "w1", LEASE)
        clock.advance(seconds=20)  # 40 s after the first acquire, 20 s after the second
        with pytest.raises(LeaseBusy) as busy:
            await ledger.acquire(RK, "w2", LEASE)
        assert busy.value.until == START + timedelta(seconds=50)

    async def test_expired_lease_can_be_taken_over(self, ledger: LedgerUnderTest, clock: FakeClock) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        clock.advance(seconds=30)
        await ledger.acquire(RK, "w2", LEASE)
        with pytest.raises(LeaseBusy) as busy:
            await ledger.acquire(RK, "w1", LEASE)
        assert busy.value.holder == "w2"

    async def test_acquire_returns_the_committed_state(
        self, ledger: LedgerUnderTest, clock: FakeClock
    ) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        await commit(ledger, "w1", version=1700000000000, payload_hash="sha256:aa")
        state = await ledger.acquire(RK, "w2", LEASE)
        assert (state.version, state.payload_hash, state.updated_at) == (1700000000000, "sha256:aa", START)

    # -- commit -------------------------------------------------------------------------------------
    async def test_commit_records_outcome_state_and_releases(
        self, ledger: LedgerUnderTest, clock: FakeClock
    ) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        clock.advance(seconds=1)
        await commit(
            ledger, "w1", "msg-1", outcome="applied", reason="created in F&O", version=5, payload_hash="h5"
        )
        assert await ledger.message_outcome(RK, "msg-1") == MessageEntry(
            message_key="msg-1", outcome="applied", reason="created in F&O", recorded_at=clock.now
        )
        assert await ledger.record_state(RK) == RecordState(
            version=5, payload_hash="h5", updated_at=clock.now
        )
        await ledger.acquire(RK, "w2", LEASE)  # released: no LeaseBusy
        with pytest.raises(LeaseLost):
            await commit(ledger, "w1", "msg-2")  # and w1 no longer holds it

    async def test_commit_without_lease_writes_nothing(self, ledger: LedgerUnderTest) -> None:
        with pytest.raises(LeaseLost) as lost:
            await commit(ledger, "w1", version=3, payload_hash="h")
        assert (lost.value.record_key, lost.value.owner) == (RK, "w1")
        assert await ledger.message_outcome(RK, "msg-1") is None
        assert await ledger.record_state(RK) == RecordState()

    async def test_commit_by_non_holder_leaves_holder_and_state_alone(self, ledger: LedgerUnderTest) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        with pytest.raises(LeaseLost):
            await commit(ledger, "intruder", version=9, payload_hash="x")
        assert await ledger.message_outcome(RK, "msg-1") is None
        assert await ledger.record_state(RK) == RecordState()
        with pytest.raises(LeaseBusy):
            await ledger.acquire(RK, "w2", LEASE)  # w1 still holds it
        await commit(ledger, "w1", version=1, payload_hash="h1")
        assert (await ledger.record_state(RK)).version == 1

    async def test_lease_taken_over_after_expiry_makes_old_owner_lose(
        self, ledger: LedgerUnderTest, clock: FakeClock
    ) -> None:
        await ledger.acquire(RK, "slow", LEASE)
        clock.advance(seconds=31)
        await ledger.acquire(RK, "fast", LEASE)
        await commit(ledger, "fast", "msg-1", version=2, payload_hash="fast")
        with pytest.raises(LeaseLost):
            await commit(ledger, "slow", "msg-1", outcome="skipped", version=3, payload_hash="slow")
        assert (await ledger.message_outcome(RK, "msg-1")).outcome == "applied"  # type: ignore[union-attr]
        assert (await ledger.record_state(RK)).payload_hash == "fast"

    async def test_expired_lease_nobody_took_still_commits(
        self, ledger: LedgerUnderTest, clock: FakeClock
    ) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        clock.advance(minutes=5)
        await commit(ledger, "w1", version=1, payload_hash="h")
        assert (await ledger.record_state(RK)).version == 1

    async def test_versions_only_move_forward(self, ledger: LedgerUnderTest, clock: FakeClock) -> None:
        async def apply(owner: str, version: int | None, payload_hash: str | None) -> RecordState:
            await ledger.acquire(RK, owner, LEASE)
            clock.advance(seconds=1)
            await commit(ledger, owner, f"msg-{owner}", version=version, payload_hash=payload_hash)
            return await ledger.record_state(RK)

        assert (await apply("a", 5, "h5")).version == 5
        stale = await apply("b", 3, "h3")  # older state arrives late: ignored
        assert (stale.version, stale.payload_hash, stale.updated_at) == (
            5,
            "h5",
            START + timedelta(seconds=1),
        )
        assert (await ledger.message_outcome(RK, "msg-b")) is not None  # the outcome is still recorded
        same = await apply("c", 5, "h5b")  # same version: latest payload hash wins
        assert (same.version, same.payload_hash) == (5, "h5b")
        newer = await apply("d", 7, "h7")
        assert (newer.version, newer.payload_hash, newer.updated_at) == (7, "h7", clock.now)

    async def test_replace_version_lowers_an_untrusted_version(
        self, ledger: LedgerUnderTest, clock: FakeClock
    ) -> None:
        await ledger.acquire(RK, "a", LEASE)
        await commit(ledger, "a", "m1", version=253402300799000, payload_hash="forged")  # year 9999
        await ledger.acquire(RK, "b", LEASE)
        await commit(ledger, "b", "m2", version=1700000000000, payload_hash="real")
        assert (await ledger.record_state(RK)).version == 253402300799000  # forward only...
        await ledger.acquire(RK, "c", LEASE)
        await commit(ledger, "c", "m3", version=1700000000000, payload_hash="real", replace_version=True)
        state = await ledger.record_state(RK)
        assert (state.version, state.payload_hash) == (1700000000000, "real")  # ...unless told it is untrusted

    # -- renew --------------------------------------------------------------------------------------
    async def test_renew_extends_the_holders_lease(self, ledger: LedgerUnderTest, clock: FakeClock) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        clock.advance(seconds=25)
        await ledger.renew(RK, "w1", LEASE)
        clock.advance(seconds=25)  # 50 s after the acquire: alive only thanks to the renewal
        with pytest.raises(LeaseBusy) as busy:
            await ledger.acquire(RK, "w2", LEASE)
        assert busy.value.until == START + timedelta(seconds=55)

    async def test_renew_never_retakes_a_lease(self, ledger: LedgerUnderTest, clock: FakeClock) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        await commit(ledger, "w1")
        with pytest.raises(LeaseLost):  # committed: a late renewal must not lock the record again
            await ledger.renew(RK, "w1", LEASE)
        await ledger.acquire(RK, "w2", LEASE)
        with pytest.raises(LeaseLost):  # taken by another owner
            await ledger.renew(RK, "w1", LEASE)
        await ledger.release(RK, "w2")
        with pytest.raises(LeaseLost):  # released
            await ledger.renew(RK, "w2", LEASE)
        with pytest.raises(LeaseLost):  # never held
            await ledger.renew("accounts:account:unknown", "w1", LEASE)

    async def test_renew_of_an_expired_lease_nobody_took_keeps_it(
        self, ledger: LedgerUnderTest, clock: FakeClock
    ) -> None:
        await ledger.acquire(RK, "w1", LEASE)
        clock.advance(minutes=2)
        await ledger.renew(RK, "w1", LEASE)
        with pytest.raises(LeaseBusy):
            await ledger.acquire(RK, "w2", LEASE)

    # -- claims -------------------------------------------------------------------------------------
    async def test_first_record_claims_a_target_and_a_second_conflicts(self, ledger: LedgerUnderTest) -> None:
        target = "fno:CustomersV3:usmf|us-001"
        other = "accounts:account:0b0b0b0b-0000-0000-0000-000000000002"
        assert await ledger.claim_owner(target) is None
        assert await ledger.claim(target, RK) == RK
        assert await ledger.claim(target, RK) == RK  # idempotent for its owner
        assert await ledger.claim(target, other) == RK  # the conflict names the owner
        assert await ledger.claim_owner(target) == RK

    async def test_a_record_that_moves_to_another_target_releases_the_old_one(
        self, ledger: LedgerUnderTest
    ) -> None:
        old, new = "fno:CustomersV3:usmf|us-001", "fno:CustomersV3:usmf|us-002"
        other = "accounts:account:0b0b0b0b-0000-0000-0000-000000000002"
        assert await ledger.claim(old, RK) == RK
        assert await ledger.claim(new, RK, previous=old) == RK
        assert await ledger.claim_owner(old) is None
        assert await ledger.claim(old, other) == other  # the freed number can be used by another record
        assert await ledger.claim(new, RK, previous=old) == RK  # never releases a claim it does not own
        assert await ledger.claim_owner(old) == other

    async def test_a_conflicting_claim_keeps_the_previous_one(self, ledger: LedgerUnderTest) -> None:
        mine, theirs = "fno:CustomersV3:usmf|us-001", "fno:CustomersV3:usmf|us-002"
        other = "accounts:account:0b0b0b0b-0000-0000-0000-000000000002"
        await ledger.claim(theirs, other)
        await ledger.claim(mine, RK)
        assert await ledger.claim(theirs, RK, previous=mine) == other
        assert await ledger.claim_owner(mine) == RK

    async def test_unclaim_releases_only_the_owners_claim(self, ledger: LedgerUnderTest) -> None:
        target = "fno:CustomersV3:usmf|us-001"
        other = "accounts:account:0b0b0b0b-0000-0000-0000-000000000002"
        await ledger.claim(target, RK)
        assert await ledger.unclaim(target, other) is False  # not its claim: nothing changes
        assert await ledger.claim_owner(target) == RK
        assert await ledger.unclaim(target, RK) is True
        assert await ledger.claim_owner(target) is None
        assert await ledger.unclaim(target, RK) is False
        assert await ledger.claim(target, other) == other  # the number is free for another record

    async def test_commit_records_the_claimed_target(self, ledger: LedgerUnderTest, clock: FakeClock) -> None:
        await ledger.acquire(RK, "a", LEASE)
        await commit(ledger, "a", "m1", version=4, payload_hash="h4", target_key="fno:t1")
        state = await ledger.acquire(RK, "b", LEASE)
        assert state.target_key == "fno:t1"
        await commit(ledger, "b", "m2", outcome="skipped", reason="echo")  # no target given: kept
        assert (await ledger.record_state(RK)).target_key == "fno:t1"

    async def test_concurrent_claims_have_one_winner(self, ledger_factory: LedgerFactory, clock: FakeClock) -> None:
        clients = [ledger_factory(clock) for _ in range(4)]
        target = "fno:CustomersV3:usmf|race"
        records = [f"accounts:account:{i}" for i in range(4)]
        owners = await asyncio.gather(*(c.claim(target, r) for c, r in zip(clients, records, strict=True)))
        assert len(set(owners)) == 1 and owners[0] in records

    async def test_commit_without_state_leaves_state(self, ledger: LedgerUnderTest, clock: FakeClock) -> None:
        await ledger.acquire(RK, "a", LEASE)
        await commit(ledger, "a", "m1", version=4, payload_hash="h4")
        clock.advance(seconds=5)
        await ledger.acquire(RK, "b", LEASE)
        await commit(ledger, "b", "m2", outcome="skipped", reason="echo")
        assert await ledger.record_state(RK) == RecordState(version=4, payload_hash="h4", updated_at=START)

    async def test_hash_without_version_keeps_version(
        self, ledger: LedgerUnderTest, clock: FakeClock
    ) -> None:
        await ledger.acquire(RK, "a", LEASE)
        await commit(ledger, "a", "m1", version=4, payload_hash="h4")
        clock.advance(seconds=5)
        await ledger.acquire(RK, "b", LEASE)
        await commit(ledger, "b", "m2", payload_hash="h-unversioned")
        assert await ledger.record_state(RK) == RecordState(
            version=4, payload_hash="h-unversioned", updated_at=clock.now
        )

    async def test_recommitting_a_message_replaces_its_outcome(
        self, ledger: LedgerUnderTest, clock: FakeClock
    ) -> None:
        await ledger.acquire(RK, "a", LEASE)
        await commit(ledger, "a", "m1", outcome="rejected", reason="validation")
        clock.advance(seconds=1)
        await ledger.acquire(RK, "b", LEASE)
        await commit(ledger, "b", "m1", outcome="applied", reason=None)
        assert await ledger.message_outcome(RK, "m1") == MessageEntry(
            message_key="m1", outcome="applied", reason=None, recorded_at=clock.now
        )

    # -- message outcome, release -------------------------------------------------------------------
    async def test_message_outcome_is_scoped_to_the_record(self, ledger: LedgerUnderTest) -> None:
        await ledger.acquire(RK, "a", LEASE)
        await commit(ledger, "a", "shared-key")
        assert await ledger.message_outcome(RK, "shared-key") is not None
        assert await ledger.message_outcome("accounts:account:other", "shared-key") is None
        assert await ledger.message_outcome(RK, "unknown") is None

    async def test_release_frees_the_lease_and_records_nothing(self, ledger: LedgerUnderTest) -> None:
        await ledger.acquire(RK, "a", LEASE)
        await ledger.release(RK, "a")
        await ledger.acquire(RK, "b", LEASE)
        assert await ledger.message_outcome(RK, "msg-1") is None
        assert await ledger.record_state(RK) == RecordState()
        with pytest.raises(LeaseLost):
            await commit(ledger, "a")

    async def test_release_by_non_holder_is_a_no_op(self, ledger: LedgerUnderTest) -> None:
        await ledger.release(RK, "nobody")  # unknown record: fine
        await ledger.acquire(RK, "a", LEASE)
        await ledger.release(RK, "b")
        with pytest.raises(LeaseBusy):
            await ledger.acquire(RK, "b", LEASE)
        await commit(ledger, "a")

    async def test_lease_must_be_positive(self, ledger: LedgerUnderTest) -> None:
        with pytest.raises(ValueError):
            await ledger.acquire(RK, "a", timedelta(0))

    # -- journal ------------------------------------------------------------------------------------
    async def test_journal_is_append_only_and_filterable(self, ledger: LedgerUnderTest) -> None:
        def entry(i: int, message_key: str, outcome: str, record_key: str | None = RK) -> JournalEntry:
            return JournalEntry(
                message_key=message_key,
                record_key=record_key,
                queue="sales-events",
                message_id=f"id-{i}",
                delivery_count=i,
                outcome=outcome,
                reason=f"r{i}",
                detail=None if i % 2 else f"d{i}",
                at=START + timedelta(seconds=i),
            )

        entries = [
            entry(1, "k1", "deferred"),
            entry(2, "k1", "applied"),
            entry(3, "k2", "skipped"),
            entry(4, "k3", "rejected", record_key=None),
            entry(5, "k1", "skipped"),
        ]
        for e in entries:
            await ledger.journal(e)
        await ledger.journal(entries[0])  # the same entry twice is two deliveries' worth of history
        assert await ledger.journal_entries() == [*entries, entries[0]]
        assert await ledger.journal_entries(message_key="k1") == [
            entries[0],
            entries[1],
            entries[4],
            entries[0],
        ]
        assert await ledger.journal_entries(outcome="skipped") == [entries[2], entries[4]]
        assert await ledger.journal_entries(message_key="k1", outcome="skipped") == [entries[4]]
        assert await ledger.journal_entries(record_key=RK, limit=2) == [entries[4], entries[0]]  # newest two
        assert await ledger.journal_entries(message_key="nope") == []

    async def test_journal_keeps_correlation_version_and_target_and_filters_by_message_id_and_time(
        self, ledger: LedgerUnderTest
    ) -> None:
        first = JournalEntry(message_key="k1", record_key=RK, queue="sales-events", message_id="mid-1",
                             delivery_count=1, outcome="deferred", reason="deferred 2.0s: throttled by fno: 429",
                             at=START - timedelta(days=1, hours=1), correlation_id="c0ffee00-0000-0000-0000-000000000001")
        second = JournalEntry(message_key="k1", record_key=RK, queue="sales-events", message_id="mid-1~1",
                              delivery_count=1, outcome="applied", reason="applied: created CustomersV3(usmf|A-1)",
                              at=START, correlation_id="c0ffee00-0000-0000-0000-000000000001",
                              version=1740830400000, target_key="fno:CustomersV3:usmf|A-1")
        for entry in (first, second):
            await ledger.journal(entry)
        assert await ledger.journal_entries(record_key=RK) == [first, second]
        assert await ledger.journal_entries(message_id="mid-1~1") == [second]
        assert await ledger.journal_entries(since=START - timedelta(minutes=1)) == [second]
        assert await ledger.journal_entries(since=START - timedelta(days=2)) == [first, second]
        assert await ledger.journal_entries(message_id="mid-1", since=START - timedelta(hours=1)) == []

    async def test_shared_values_are_set_listed_and_deleted(self, ledger_factory: LedgerFactory,
                                                           clock: FakeClock) -> None:
        one, two = ledger_factory(clock), ledger_factory(clock)
        assert await one.get_value("pause:accounts") is None
        await one.put_value("pause:accounts", '{"by": "ops"}')
        await one.put_value("pause:quotes", "x")
        await one.put_value("other/key#1", "y")  # awkward characters are fine
        assert await two.get_value("pause:accounts") == '{"by": "ops"}'  # shared by every instance
        await two.put_value("pause:quotes", "z")  # overwrite
        assert await one.list_values("pause:") == {"pause:accounts": '{"by": "ops"}', "pause:quotes": "z"}
        assert (await one.list_values())["other/key#1"] == "y"
        await one.put_value("pause:accounts", None)
        await one.put_value("pause:never-set", None)  # deleting what is not there is a no-op
        assert await two.get_value("pause:accounts") is None
        assert await two.list_values("pause:") == {"pause:quotes": "z"}

    async def test_state_is_shared_between_clients(
        self, ledger_factory: LedgerFactory, clock: FakeClock
    ) -> None:
        one, two = ledger_factory(clock), ledger_factory(clock)
        await one.acquire(RK, "a", LEASE)
        with pytest.raises(LeaseBusy):
            await two.acquire(RK, "b", LEASE)
        await commit(one, "a", version=1, payload_hash="h")
        assert (await two.record_state(RK)).version == 1
        assert (await two.message_outcome(RK, "msg-1")) is not None

    # -- races --------------------------------------------------------------------------------------
    async def test_concurrent_acquire_has_one_winner(
        self, ledger_factory: LedgerFactory, clock: FakeClock
    ) -> None:
        clients = [ledger_factory(clock) for _ in range(8)]
        results = await asyncio.gather(
            *(c.acquire(RK, f"w{i}", LEASE) for i, c in enumerate(clients)), return_exceptions=True
        )
        winners = [f"w{i}" for i, r in enumerate(results) if isinstance(r, RecordState)]
        busy = [r for r in results if isinstance(r, LeaseBusy)]
        assert len(winners) == 1 and len(busy) == 7, results
        assert {b.holder for b in busy} == set(winners)

    async def test_racing_workers_apply_a_message_exactly_once(
        self, ledger_factory: LedgerFactory, clock: FakeClock
    ) -> None:
        """Each worker runs the runtime's protocol: acquire, check the message, apply, commit."""
        inside: list[str] = []
        overlap: list[list[str]] = []

        async def worker(ledger: LedgerUnderTest, name: str) -> str:
            for _ in range(2000):
                try:
                    state = await ledger.acquire(RK, name, LEASE)
                except LeaseBusy:
                    await asyncio.sleep(0.001)
                    continue
                if await ledger.message_outcome(RK, "msg-race") is not None:
                    await ledger.release(RK, name)
                    return "skipped"
                inside.append(name)
                if len(inside) > 1:
                    overlap.append(list(inside))
                await asyncio.sleep(0.005)  # "writing to the counterpart system"
                inside.remove(name)
                await commit(ledger, name, "msg-race", version=(state.version or 0) + 1, payload_hash=name)
                return "applied"
            raise AssertionError(f"{name} never got the lease")

        clients = [ledger_factory(clock) for _ in range(6)]
        results = await asyncio.gather(*(worker(c, f"w{i}") for i, c in enumerate(clients)))
        assert sorted(results) == ["applied"] + ["skipped"] * 5
        assert overlap == []
        winner = f"w{results.index('applied')}"
        state = await clients[0].record_state(RK)
        assert (state.version, state.payload_hash) == (1, winner)
        entry = await clients[0].message_outcome(RK, "msg-race")
        assert entry is not None and entry.outcome == "applied"


__all__ = [
    "FakeClock",
    "LedgerContract",
    "LedgerFactory",
    "LedgerUnderTest",
    "START",
    "LEASE",
    "RK",
    "commit",
]
