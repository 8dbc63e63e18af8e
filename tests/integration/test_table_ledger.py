"""TableLedger against Azurite (the Azure Storage emulator, from npm: package.json at the repo root).

The module starts Azurite's table service once on a free loopback port, runs the shared ledger contract
(tests/unit/ledger_contract.py) with every test on a fresh table, then what only the Table Storage ledger must
show: safe partition keys for awkward record keys, the commit transaction's atomicity on an ETag conflict, and
independent instances (separate clients, threads, event loops) racing on one record.

`make test` installs Azurite (`npm ci`); without it these tests fail (they do not skip).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

import p2csync
from p2csync.ledger.base import JournalEntry, LeaseBusy, LeaseLost, RecordState
from p2csync.ledger.table import (
    MAX_ENCODED,
    STATE_ROW,
    TableLedger,
    decode_key,
    encode_key,
    journal_keys,
    message_row,
    record_partition,
)

pytest.register_assert_rewrite("tests.unit.ledger_contract")  # before the import, so its asserts explain
from tests.unit.ledger_contract import (
    LEASE,
    RK,
    START,
    FakeClock,
    LedgerContract,
    LedgerFactory,
    commit,
)

REPO = Path(p2csync.__file__).resolve().parent.parent
AZURITE_TABLE = REPO / "node_modules" / ".bin" / "azurite-table"

# Azurite's well-known development account, published in the Azurite and Azure Storage emulator docs
# (https://learn.microsoft.com/azure/storage/common/storage-use-azurite#http-connection-strings). Public, not a
# secret, and only ever used here against the local emulator.
DEV_ACCOUNT = "devstoreaccount1"
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

AWKWARD_KEYS = [
    "accounts/account/6f1c2a8e",
    "back\\slash",
    "hash#tag",
    "what?query=1",
    "ünïcødé:客户:🚀",
    "tab\tnew\nline\x00nul\x7fdel\x85",
    'quote\'s "double" & percent %2F',
    "tilde~2F",  # must not collide with "tilde/" (encoded "tilde~2F")
    "tilde/",
    " leading and trailing ",
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's table service for this module; yields its connection string. Stopped afterwards."""
    if not AZURITE_TABLE.exists():
        pytest.fail(
            f"Azurite is not installed ({AZURITE_TABLE} is missing): run `make test` (it runs `npm ci`) "
            "or `npm ci` at the repo root",
            pytrace=False,
        )
    if shutil.which("node") is None:
        pytest.fail("Azurite needs Node.js (`node` is not on PATH)", pytrace=False)
    workspace = tmp_path_factory.mktemp("azurite")
    port = _free_port()
    log_path = workspace / "azurite.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(AZURITE_TABLE),
                "--tableHost", "127.0.0.1",
                "--tablePort", str(port),
                "--location", str(workspace),
                "--disableTelemetry",
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
            ],
            cwd=workspace,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _answers(port):
            if proc.poll() is not None:
                pytest.fail(
                    f"Azurite exited with {proc.returncode} before listening:\n{log_path.read_text()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(f"Azurite did not listen on port {port} within 30 s:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};"
            f"TableEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _table_name() -> str:
    return f"ledger{uuid.uuid4().hex[:20]}"


@pytest.fixture
async def table_factory(azurite: str) -> AsyncIterator[Any]:
    """New TableLedger clients (each its own TableClient and HTTP session) on one fresh table per test."""
    name = _table_name()
    opened: list[TableLedger] = []

    def factory(clock: FakeClock | None = None) -> TableLedger:
        ledger = TableLedger.from_connection_string(azurite, name, clock=clock)
        opened.append(ledger)
        return ledger

    yield factory
    for ledger in opened:
        await ledger.close()


@pytest.fixture
async def raw_table(azurite: str, table_factory: Any) -> AsyncIterator[TableClient]:
    """A plain TableClient on the same table as `table_factory`, to look at the stored entities."""
    name = table_factory().table_name
    async with TableClient.from_connection_string(azurite, table_name=name) as client:
        yield client


class TestTableLedgerContract(LedgerContract):
    @pytest.fixture
    def ledger_factory(self, table_factory: Any) -> LedgerFactory:
        return table_factory  # type: ignore[no-any-return]


# -- keys -------------------------------------------------------------------------------------------------
def test_key_encoding_is_safe_readable_and_reversible() -> None:
    forbidden = set("/\\#?") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}
    for key in [*AWKWARD_KEYS, RK, "", "~", "~~"]:
        encoded = encode_key(key)
        assert not set(encoded) & forbidden, encoded
        assert encoded.isascii() and decode_key(encoded) == key
    assert encode_key(RK) == RK  # typical keys stay readable in Storage Explorer
    assert encode_key("a/b") == "a~2Fb" and encode_key("a~2Fb") == "a~7E2Fb"
    assert len({encode_key(k) for k in AWKWARD_KEYS}) == len(AWKWARD_KEYS)
    long_key = "x/" * 500
    hashed = encode_key(long_key)
    assert hashed.startswith("~~") and len(hashed) == 66 and hashed != encode_key(long_key + "y")
    assert len(encode_key("y" * MAX_ENCODED)) == MAX_ENCODED
    with pytest.raises(ValueError):
        decode_key(hashed)
    with pytest.raises(ValueError):
        decode_key("a/b")
    assert record_partition("a/b") == "rec|a~2Fb" and message_row("m#1") == "msg|m~231"


def test_journal_keys_sort_newest_first() -> None:
    day = 86_400_000_000
    t = 1_740_830_400_000_000  # 2025-03-01T12:00Z
    keys = [journal_keys(micros, "u") for micros in (t, t + 1, t + day, t + 40 * day)]
    assert keys[0][0] == "jnl|79749698"  # 99999999 - 20250301
    assert sorted(keys) == list(reversed(keys))


async def test_awkward_record_and_message_keys(table_factory: Any, raw_table: TableClient) -> None:
    clock = FakeClock()
    ledger = table_factory(clock)
    for i, key in enumerate(AWKWARD_KEYS):
        await ledger.acquire(key, "w", LEASE)
        await commit(ledger, "w", f"msg/{key}", record_key=key, version=i + 1, payload_hash=key)
    for i, key in enumerate(AWKWARD_KEYS):
        state = await ledger.record_state(key)
        assert (state.version, state.payload_hash) == (i + 1, key)
        entry = await ledger.message_outcome(key, f"msg/{key}")
        assert entry is not None and entry.message_key == f"msg/{key}"
        assert await ledger.message_outcome(key, f"msg/{AWKWARD_KEYS[i - 1]}") is None
    stored = [e async for e in raw_table.list_entities()]
    states = {e["record_key"]: e for e in stored if e["RowKey"] == STATE_ROW}
    assert set(states) == set(AWKWARD_KEYS)
    for key, entity in states.items():
        assert entity["PartitionKey"] == record_partition(key)
    assert len(stored) == 2 * len(AWKWARD_KEYS)
    long_key = "accounts:account:" + "x" * 1000  # beyond the Table key size: hashed, still works
    await ledger.acquire(long_key, "w", LEASE)
    await commit(ledger, "w", "y" * 1000, record_key=long_key, version=1, payload_hash="h")
    assert (await ledger.record_state(long_key)).version == 1
    assert await ledger.message_outcome(long_key, "y" * 1000) is not None


# -- the commit transaction -------------------------------------------------------------------------------
async def test_etag_conflict_in_commit_writes_neither_row(
    table_factory: Any, raw_table: TableClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is taken over between commit's read and its transaction: the transaction (message row +
    state row, conditional on the state ETag) fails as a whole and the old owner gets LeaseLost."""
    clock = FakeClock()
    slow, fast = table_factory(clock), table_factory(clock)
    await slow.acquire(RK, "slow", LEASE)
    real_submit = slow._table.submit_transaction
    calls: list[int] = []

    async def steal_then_submit(operations: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # after slow read the state row, before its transaction
            clock.advance(seconds=31)
            await fast.acquire(RK, "fast", LEASE)
        return await real_submit(operations, **kwargs)

    monkeypatch.setattr(slow._table, "submit_transaction", steal_then_submit)
    with pytest.raises(LeaseLost):
        await commit(slow, "slow", "msg-1", version=9, payload_hash="slow")
    assert calls == [1]  # one transaction tried; after re-reading, slow saw it had lost
    assert await slow.message_outcome(RK, "msg-1") is None
    assert await slow.record_state(RK) == RecordState()
    with pytest.raises(LeaseBusy) as busy:
        await slow.acquire(RK, "third", LEASE)
    assert busy.value.holder == "fast"
    assert [e["RowKey"] async for e in raw_table.list_entities()] == [STATE_ROW]


async def test_stale_etag_transaction_is_all_or_nothing(table_factory: Any, raw_table: TableClient) -> None:
    """The same at the SDK level: a transaction whose conditional state update fails writes no row."""
    ledger = table_factory(FakeClock())
    await ledger.acquire(RK, "a", LEASE)
    pk = record_partition(RK)
    before = await raw_table.get_entity(pk, STATE_ROW)
    await ledger.acquire(RK, "a", LEASE)  # an extension changes the ETag
    with pytest.raises(TableTransactionError) as failed:
        await raw_table.submit_transaction(
            [
                ("upsert", {"PartitionKey": pk, "RowKey": message_row("m"), "outcome": "applied"}),
                (
                    "update",
                    {"PartitionKey": pk, "RowKey": STATE_ROW, "version": 1},
                    {
                        "mode": UpdateMode.REPLACE,
                        "etag": before.metadata["etag"],
                        "match_condition": MatchConditions.IfNotModified,
                    },
                ),
            ]
        )
    assert failed.value.status_code == 412
    assert await ledger.message_outcome(RK, "m") is None
    after = await raw_table.get_entity(pk, STATE_ROW)
    assert after["owner"] == "a" and "version" not in after


async def test_commit_survives_the_owners_own_extension(
    table_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ETag change by the same owner (it extended its lease) is not a lost lease: commit re-reads and
    commits on the new ETag."""
    clock = FakeClock()
    ledger, other = table_factory(clock), table_factory(clock)
    await ledger.acquire(RK, "a", LEASE)
    real_submit = ledger._table.submit_transaction
    calls: list[int] = []

    async def extend_then_submit(operations: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            await other.acquire(RK, "a", LEASE)
        return await real_submit(operations, **kwargs)

    monkeypatch.setattr(ledger._table, "submit_transaction", extend_then_submit)
    await commit(ledger, "a", "m", version=3, payload_hash="h3")
    assert len(calls) == 2
    assert (await ledger.record_state(RK)).version == 3
    await other.acquire(RK, "b", LEASE)  # released by the commit


# -- independent instances racing -------------------------------------------------------------------------
async def test_racing_takeover_of_an_existing_row_has_one_winner(table_factory: Any) -> None:
    """The contract's acquire race starts from no row (insert decides); here the state row exists, free
    (released/committed) or with an expired lease, so only the ETag-conditional replace can pick one winner."""
    clock = FakeClock()
    setup = table_factory(clock)
    clients = [table_factory(clock) for _ in range(8)]
    for round_ in range(6):
        record_key = f"{RK}:{round_}"
        await setup.acquire(record_key, "setup", LEASE)
        if round_ % 2:
            clock.advance(seconds=31)  # expired, not released
        else:
            await commit(setup, "setup", record_key=record_key, version=1, payload_hash="h")
        results = await asyncio.gather(
            *(c.acquire(record_key, f"w{i}", LEASE) for i, c in enumerate(clients)), return_exceptions=True
        )
        winners = [f"w{i}" for i, r in enumerate(results) if isinstance(r, RecordState)]
        assert len(winners) == 1, results
        losers = [r for r in results if not isinstance(r, RecordState)]
        assert all(isinstance(r, LeaseBusy) and r.holder == winners[0] for r in losers), results


async def test_stale_owner_and_new_owner_commit_at_once(table_factory: Any) -> None:
    """Separate clients: an expired holder and the instance that took over commit concurrently; exactly one
    (the current holder) succeeds, every time."""
    clock = FakeClock()
    for round_ in range(10):
        record_key = f"{RK}:{round_}"
        old, new = table_factory(clock), table_factory(clock)
        await old.acquire(record_key, "old", LEASE)
        clock.advance(seconds=31)
        await new.acquire(record_key, "new", LEASE)
        results = await asyncio.gather(
            commit(old, "old", "m", record_key=record_key, version=2, payload_hash="old"),
            commit(new, "new", "m", record_key=record_key, version=1, payload_hash="new"),
            return_exceptions=True,
        )
        assert isinstance(results[0], LeaseLost) and results[1] is None, results
        state = await old.record_state(record_key)
        assert (state.version, state.payload_hash) == (1, "new")


def test_two_instances_in_threads_with_own_loops_apply_once(azurite: str) -> None:
    """Two TableLedger instances, each with its own client, thread and event loop, run the runtime's
    protocol on one record: exactly one applies and commits; the other sees the outcome and skips."""
    name = _table_name()
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}
    applied: list[str] = []
    commits: list[str] = []

    async def worker(worker_name: str) -> str:
        async with TableLedger.from_connection_string(azurite, name) as ledger:
            await ledger.record_state("warm-up")  # creates the table, opens the connection
            barrier.wait()
            for _ in range(5000):
                try:
                    await ledger.acquire(RK, worker_name, timedelta(seconds=10))
                except LeaseBusy:
                    await asyncio.sleep(0.001)
                    continue
                if await ledger.message_outcome(RK, "m") is not None:
                    await ledger.release(RK, worker_name)
                    return "skipped"
                applied.append(worker_name)
                await asyncio.sleep(0.02)
                await commit(ledger, worker_name, "m", version=1, payload_hash=worker_name)
                commits.append(worker_name)
                return "applied"
            raise AssertionError(f"{worker_name} never got the lease")

    def run(worker_name: str) -> None:
        results[worker_name] = asyncio.run(worker(worker_name))

    threads = [threading.Thread(target=run, args=(n,)) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results.values()) == ["applied", "skipped"], results
    assert applied == commits and len(commits) == 1

    async def check() -> None:
        async with TableLedger.from_connection_string(azurite, name) as ledger:
            assert (await ledger.record_state(RK)).payload_hash == commits[0]

    asyncio.run(check())


# -- journal across days, construction ---------------------------------------------------------------------
async def test_journal_spans_days_newest_first(table_factory: Any) -> None:
    clock = FakeClock()
    ledger = table_factory(clock)
    entries = []
    for i in range(6):
        entry = JournalEntry(
            message_key=f"k{i}", record_key=RK, queue="q", message_id=f"id{i}", delivery_count=1,
            outcome="applied", at=clock.now,
        )  # fmt: skip
        await ledger.journal(entry)
        entries.append(entry)
        clock.advance(hours=13)  # crosses midnight every other entry
    assert await ledger.journal_entries() == entries
    assert await ledger.journal_entries(limit=2) == entries[-2:]
    assert await ledger.journal_entries(message_key="k0") == entries[:1]
    assert START.day != clock.now.day


async def test_from_endpoint_uses_the_token_credential() -> None:
    class Credential:
        async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise AssertionError("no request is made by construction")

        async def close(self) -> None: ...

    ledger = TableLedger.from_endpoint("https://acct.table.core.windows.net/", "ledger", Credential())  # type: ignore[arg-type]
    try:
        assert ledger.table_name == "ledger"
        assert ledger._table.url.startswith("https://acct.table.core.windows.net")
        assert ledger._table.credential is not None and not hasattr(ledger._table.credential, "account_key")
    finally:
        await ledger.close()
