"""The Azure Table Storage ledger: the `Ledger` that function instances share in Azure.

Layout (one table, e.g. `ledger`):

| PartitionKey | RowKey | Holds |
|---|---|---|
| `rec|<encoded record_key>` | `state` | lease (`owner`, `lease_until`) and record state (`version`, `payload_hash`, `updated_at`) |
| `rec|<encoded record_key>` | `msg|<encoded message_key>` | the final outcome of one message (`outcome`, `reason`, `recorded_at`) |
| `tgt|<encoded target_key>` | `owner` | which source record owns that counterpart record (`record_key`, `target_key`, `claimed_at`) |
| `jnl|<99999999 - YYYYMMDD>` | `<inverted µs timestamp>-<uuid>` | one journal entry (audit trail) |
| `kv|<encoded key>` | `value` | one shared setting (`key`, `value`, `updated_at`), e.g. a paused flow |

Why this shape: everything about one record lives in one partition, so the message row and the state row can
move together in one entity-group transaction. Every write of a state row is conditional on the ETag that was
read (or is an insert that fails if the row exists), so of two instances racing for a lease exactly one write
succeeds; `commit` writes the message row and the state row in one transaction that carries the state row's
ETag, so the outcome is recorded only by the lease holder and only together with its state. Journal partitions
and row keys are inverted (day, then microsecond timestamp), so a plain scan returns the newest entries first.

Key encoding (`encode_key`): Table keys may not contain `/`, `\\`, `#`, `?` or control characters and are at most
1 KiB. ASCII letters, digits and `-_.:` are kept; every other character (including `~` itself) becomes `~XX` per
UTF-8 byte (upper-case hex), so typical keys (`accounts:account:<guid>`) stay readable and the encoding is
injective. An encoded key longer than 400 characters is replaced by `~~` + SHA-256 of the key (`~~` never occurs
in an escaped key); the original keys are stored as properties (`record_key`, `message_key`) anyway.

Authentication: `from_endpoint` with an azure-identity async credential (managed identity; shared-key access is
off in our storage account). `from_connection_string` is for Azurite in tests only.
"""

from __future__ import annotations

import asyncio
import hashlib
import string
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import EdmType, EntityProperty, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from p2csync.ledger.base import (
    Clock,
    JournalEntry,
    LeaseBusy,
    LedgerError,
    LeaseLost,
    MessageEntry,
    RecordState,
)

__all__ = ["TableLedger", "decode_key", "encode_key", "claim_partition", "journal_keys", "message_row",
           "record_partition"]

STATE_ROW = "state"
RECORD_PREFIX = "rec|"
MESSAGE_PREFIX = "msg|"
JOURNAL_PREFIX = "jnl|"
CLAIM_PREFIX = "tgt|"
CLAIM_ROW = "owner"
VALUE_PREFIX = "kv|"
VALUE_ROW = "value"
VALUE_END = "kv}"
# The first string after every "jnl|..." key: journal partitions are the range [jnl|, jnl}).
JOURNAL_END = "jnl}"
MAX_ENCODED = 400
HASHED_PREFIX = "~~"
# How often one call re-reads after losing an ETag race before giving up (each loss means progress elsewhere).
MAX_ATTEMPTS = 8

_SAFE = frozenset(string.ascii_letters + string.digits + "-_.:")
_HEX = frozenset("0123456789ABCDEF")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MICROS = 10**19 - 1  # inverted timestamps are 19 digits wide


def encode_key(text: str) -> str:
    """A Table-key-safe, injective encoding of `text` (see the module docstring)."""
    out: list[str] = []
    for ch in text:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"~{b:02X}" for b in ch.encode("utf-8"))
    encoded = "".join(out)
    if len(encoded) > MAX_ENCODED:
        return HASHED_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return encoded


def decode_key(encoded: str) -> str:
    """The inverse of `encode_key` (ValueError for a hashed or malformed key)."""
    if encoded.startswith(HASHED_PREFIX):
        raise ValueError("a hashed key cannot be decoded; read the record_key/message_key property")
    raw = bytearray()
    i = 0
    while i < len(encoded):
        ch = encoded[i]
        if ch == "~":
            pair = encoded[i + 1 : i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise ValueError(f"malformed escape at {i} in {encoded!r}")
            raw.append(int(pair, 16))
            i += 3
        elif ch in _SAFE:
            raw.extend(ch.encode("ascii"))
            i += 1
        else:
            raise ValueError(f"unexpected character {ch!r} in {encoded!r}")
    return raw.decode("utf-8")


def record_partition(record_key: str) -> str:
    """The PartitionKey that holds everything about `record_key`."""
    return RECORD_PREFIX + encode_key(record_key)


def claim_partition(target_key: str) -> str:
    """The PartitionKey of the claim on a counterpart record."""
    return CLAIM_PREFIX + encode_key(target_key)


def message_row(message_key: str) -> str:
    """The RowKey of a message outcome within its record's partition."""
    return MESSAGE_PREFIX + encode_key(message_key)


def journal_keys(written_at_micros: int, unique: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a journal entry written at that time: newest day and newest entry sort first."""
    day = int((_EPOCH + timedelta(microseconds=written_at_micros)).strftime("%Y%m%d"))
    return f"{JOURNAL_PREFIX}{99999999 - day:08d}", f"{_MAX_MICROS - written_at_micros:019d}-{unique}"


def _system_clock() -> datetime:
    return datetime.now(UTC)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _plain(value: Any) -> datetime | None:
    """A plain aware datetime from what the SDK returns (TablesEntityDatetime, UTC)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    plain: datetime = _EPOCH + (value - _EPOCH)
    return plain


def _int(value: Any) -> int | None:
    if isinstance(value, EntityProperty):
        value = value.value
    return None if value is None else int(value)


def _int64(value: int | None) -> EntityProperty | None:
    return None if value is None else EntityProperty(value, EdmType.INT64)


def _state(entity: Mapping[str, Any] | None) -> RecordState:
    if entity is None:
        return RecordState()
    return RecordState(
        version=_int(entity.get("version")),
        payload_hash=entity.get("payload_hash"),
        updated_at=_plain(entity.get("updated_at")),
        target_key=entity.get("target_key"),
    )


def _etag(entity: Any) -> str:
    return str(entity.metadata["etag"])


class TableLedger:
    """`Ledger` (and `LedgerQueries`) on one Azure Table; safe to share between any number of instances."""

    def __init__(self, client: TableClient, *, clock: Clock | None = None) -> None:
        self._table = client
        self._clock = clock or _system_clock
        self._table_ready = False
        self._ready_lock = asyncio.Lock()
        self._last_journal_micros = 0

    @classmethod
    def from_endpoint(
        cls,
        endpoint: str,
        table_name: str,
        credential: AsyncTokenCredential,
        *,
        clock: Clock | None = None,
        **client_kwargs: Any,
    ) -> TableLedger:
        """Azure: `endpoint` like `https://<account>.table.core.windows.net/`, an azure-identity async
        credential (managed identity). The caller owns (and closes) the credential."""
        client = TableClient(endpoint=endpoint, table_name=table_name, credential=credential, **client_kwargs)
        return cls(client, clock=clock)

    @classmethod
    def from_connection_string(
        cls, conn_str: str, table_name: str, *, clock: Clock | None = None, **client_kwargs: Any
    ) -> TableLedger:
        """Azurite (the storage emulator) only; Azure itself is reached with `from_endpoint`."""
        client = TableClient.from_connection_string(conn_str, table_name=table_name, **client_kwargs)
        return cls(client, clock=clock)

    @property
    def table_name(self) -> str:
        return str(self._table.table_name)

    async def close(self) -> None:
        await self._table.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing -----------------------------------------------------------------------------------
    async def _ready(self) -> None:
        """Create the table at first use (a no-op when infra already did)."""
        if self._table_ready:
            return
        async with self._ready_lock:
            if not self._table_ready:
                try:
                    await self._table.create_table()
                except ResourceExistsError:
                    pass
                self._table_ready = True

    async def _get(self, partition_key: str, row_key: str) -> Any | None:
        try:
            return await self._table.get_entity(partition_key, row_key)
        except ResourceNotFoundError:
            return None

    async def _replace_if_unchanged(self, entity: dict[str, Any], etag: str) -> None:
        await self._table.update_entity(
            entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
        )

    @staticmethod
    def _state_entity(
        partition_key: str,
        record_key: str,
        state: RecordState,
        owner: str | None,
        lease_until: datetime | None,
    ) -> dict[str, Any]:
        # None values are not sent, so a REPLACE drops them: no owner means no lease.
        return {
            "PartitionKey": partition_key,
            "RowKey": STATE_ROW,
            "record_key": record_key,
            "owner": owner,
            "lease_until": lease_until,
            "version": _int64(state.version),
            "payload_hash": state.payload_hash,
            "updated_at": state.updated_at,
            "target_key": state.target_key,
        }

    # -- Ledger -------------------------------------------------------------------------------------
    async def acquire(self, record_key: str, owner: str, lease: timedelta) -> RecordState:
        """Take (or, for the same owner, extend) the lease; LeaseBusy while another owner's lease is live.

        The first writer inserts the state row (insert fails if it exists); later writers replace it on the
        ETag they read, so two racing instances never both get it: the loser re-reads and sees the winner."""
        if lease <= timedelta(0):
            raise ValueError("lease must be positive")
        if not owner:
            raise ValueError("owner must not be empty")
        await self._ready()
        pk = record_partition(record_key)
        holder, until = "(contended)", self._clock()
        for _ in range(MAX_ATTEMPTS):
            now = self._clock()
            entity = await self._get(pk, STATE_ROW)
            if entity is None:
                try:
                    await self._table.create_entity(
                        self._state_entity(pk, record_key, RecordState(), owner, now + lease)
                    )
                except ResourceExistsError:
                    continue  # another instance created it first: re-read
                return RecordState()
            holder, until = entity.get("owner") or "", _plain(entity.get("lease_until")) or now
            if holder and holder != owner and until > now:
                raise LeaseBusy(record_key, holder, until)
            state = _state(entity)
            try:
                await self._replace_if_unchanged(
                    self._state_entity(pk, record_key, state, owner, now + lease), _etag(entity)
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                continue  # someone wrote the row since we read it: re-read
            return state
        raise LeaseBusy(record_key, holder or "(contended)", until)

    async def message_outcome(self, record_key: str, message_key: str) -> MessageEntry | None:
        await self._ready()
        entity = await self._get(record_partition(record_key), message_row(message_key))
        if entity is None:
            return None
        recorded_at = _plain(entity.get("recorded_at"))
        assert recorded_at is not None
        return MessageEntry(
            message_key=message_key,
            outcome=entity["outcome"],
            reason=entity.get("reason"),
            recorded_at=recorded_at,
        )

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
        """Record the outcome (replacing an earlier one for the same message), move the record state
        forward and release the lease, in one entity-group transaction conditional on the state row's ETag.

        Raises LeaseLost (having written nothing) when `owner` does not hold the lease. When the ETag changed
        between read and write, the row is read again: a new owner means LeaseLost; the same owner (it
        extended its own lease meanwhile) commits on the new ETag. An expired lease nobody took still belongs
        to its owner, as in the SQLite ledger."""
        await self._ready()
        pk = record_partition(record_key)
        for _ in range(MAX_ATTEMPTS):
            now = self._clock()
            entity = await self._get(pk, STATE_ROW)
            if entity is None or entity.get("owner") != owner:
                raise LeaseLost(record_key, owner)
            stored = _state(entity)
            if version is not None and (stored.version is None or version >= stored.version or replace_version):
                new = RecordState(version=version, payload_hash=payload_hash, updated_at=now)
            elif version is None and payload_hash is not None:
                new = RecordState(version=stored.version, payload_hash=payload_hash, updated_at=now)
            else:  # nothing new, or an older version: the newer stored state stays
                new = stored
            new = new.model_copy(update={"target_key": target_key or stored.target_key})
            message = {
                "PartitionKey": pk,
                "RowKey": message_row(message_key),
                "record_key": record_key,
                "message_key": message_key,
                "outcome": outcome,
                "reason": reason,
                "recorded_at": now,
            }
            operations: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
                ("upsert", message, {"mode": UpdateMode.REPLACE}),
                (
                    "update",
                    self._state_entity(pk, record_key, new, None, None),
                    {
                        "mode": UpdateMode.REPLACE,
                        "etag": _etag(entity),
                        "match_condition": MatchConditions.IfNotModified,
                    },
                ),
            ]
            try:
                await self._table.submit_transaction(operations)
            except (TableTransactionError, ResourceModifiedError, ResourceNotFoundError) as error:
                if _is_conflict(error):
                    continue  # the state row changed: nothing was written; re-read
                raise
            return
        raise LeaseLost(record_key, owner)

    async def renew(self, record_key: str, owner: str, lease: timedelta) -> None:
        """Extend the lease while `owner` still holds it (an expired lease nobody took counts); LeaseLost
        otherwise. Conditional on the ETag read, so it never re-takes a lease committed or taken meanwhile."""
        if lease <= timedelta(0):
            raise ValueError("lease must be positive")
        await self._ready()
        pk = record_partition(record_key)
        for _ in range(MAX_ATTEMPTS):
            entity = await self._get(pk, STATE_ROW)
            if entity is None or entity.get("owner") != owner:
                raise LeaseLost(record_key, owner)
            try:
                await self._replace_if_unchanged(
                    self._state_entity(pk, record_key, _state(entity), owner, self._clock() + lease),
                    _etag(entity),
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
            return
        raise LeaseLost(record_key, owner)

    async def claim(self, target_key: str, record_key: str, *, previous: str | None = None) -> str:
        """See `Ledger.claim`. The claim row is inserted (an insert fails if the row exists), so of two
        records racing for one target exactly one gets it; the previous claim is deleted on its ETag."""
        await self._ready()
        pk = claim_partition(target_key)
        for _ in range(MAX_ATTEMPTS):
            entity = await self._get(pk, CLAIM_ROW)
            if entity is not None:
                if entity.get("record_key") != record_key:
                    return str(entity.get("record_key"))
                break
            try:
                await self._table.create_entity({
                    "PartitionKey": pk, "RowKey": CLAIM_ROW, "record_key": record_key,
                    "target_key": target_key, "claimed_at": self._clock(),
                })
            except ResourceExistsError:
                continue  # another record claimed it first: re-read
            break
        else:
            raise LedgerError(f"the claim on {target_key} kept changing while being read; try again")
        if previous is not None and previous != target_key:
            await self.unclaim(previous, record_key)
        return record_key

    async def unclaim(self, target_key: str, record_key: str) -> bool:
        """Delete the claim row on its ETag, only while `record_key` owns it."""
        await self._ready()
        old = await self._get(claim_partition(target_key), CLAIM_ROW)
        if old is None or old.get("record_key") != record_key:
            return False
        try:
            await self._table.delete_entity(
                claim_partition(target_key), CLAIM_ROW, etag=_etag(old), match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False  # changed or gone meanwhile: no longer ours to release
        return True

    async def release(self, record_key: str, owner: str) -> None:
        """Drop the lease if `owner` holds it; a no-op otherwise (it may have been taken over already)."""
        await self._ready()
        pk = record_partition(record_key)
        for _ in range(MAX_ATTEMPTS):
            entity = await self._get(pk, STATE_ROW)
            if entity is None or entity.get("owner") != owner:
                return
            try:
                await self._replace_if_unchanged(
                    self._state_entity(pk, record_key, _state(entity), None, None), _etag(entity)
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
            return

    async def journal(self, entry: JournalEntry) -> None:
        """Insert one entry; its keys come from this ledger's clock, made strictly increasing per instance
        so that entries written by one instance keep their order even within one microsecond."""
        await self._ready()
        written = max(_micros(self._clock()), self._last_journal_micros + 1)
        self._last_journal_micros = written
        partition_key, row_key = journal_keys(written, uuid.uuid4().hex)
        await self._table.create_entity(
            {
                "PartitionKey": partition_key,
                "RowKey": row_key,
                "message_key": entry.message_key,
                "record_key": entry.record_key,
                "queue": entry.queue,
                "message_id": entry.message_id,
                "delivery_count": _int64(entry.delivery_count),
                "outcome": entry.outcome,
                "reason": entry.reason,
                "detail": entry.detail,
                "at": entry.at,
                "correlation_id": entry.correlation_id,
                "version": _int64(entry.version),
                "target_key": entry.target_key,
            }
        )

    async def get_value(self, key: str) -> str | None:
        await self._ready()
        entity = await self._get(VALUE_PREFIX + encode_key(key), VALUE_ROW)
        return None if entity is None else str(entity.get("value"))

    async def put_value(self, key: str, value: str | None) -> None:
        """Upsert (last writer wins: an operator's pause or resume is not a race to arbitrate), or delete."""
        await self._ready()
        pk = VALUE_PREFIX + encode_key(key)
        if value is None:
            try:
                await self._table.delete_entity(pk, VALUE_ROW)
            except ResourceNotFoundError:
                pass
            return
        await self._table.upsert_entity(
            {"PartitionKey": pk, "RowKey": VALUE_ROW, "key": key, "value": value, "updated_at": self._clock()},
            mode=UpdateMode.REPLACE,
        )

    async def list_values(self, prefix: str = "") -> dict[str, str]:
        await self._ready()
        found: dict[str, str] = {}
        pages = self._table.query_entities("PartitionKey ge @start and PartitionKey lt @end",
                                           parameters={"start": VALUE_PREFIX, "end": VALUE_END})
        async for entity in pages:
            key = str(entity.get("key"))
            if key.startswith(prefix):
                found[key] = str(entity.get("value"))
        return dict(sorted(found.items()))

    # -- LedgerQueries ------------------------------------------------------------------------------
    async def record_state(self, record_key: str) -> RecordState:
        await self._ready()
        return _state(await self._get(record_partition(record_key), STATE_ROW))

    async def claim_owner(self, target_key: str) -> str | None:
        await self._ready()
        entity = await self._get(claim_partition(target_key), CLAIM_ROW)
        return None if entity is None else str(entity.get("record_key"))

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
        """The newest `limit` entries matching every given filter, returned oldest first. ``since`` also
        bounds the partitions read (one per day, newest first)."""
        await self._ready()
        if limit <= 0:
            return []
        clauses = ["PartitionKey ge @journal_start", "PartitionKey lt @journal_end"]
        parameters: dict[str, Any] = {"journal_start": JOURNAL_PREFIX, "journal_end": JOURNAL_END}
        for name, value in (("message_key", message_key), ("outcome", outcome), ("record_key", record_key),
                            ("message_id", message_id)):
            if value is not None:
                clauses.append(f"{name} eq @{name}")
                parameters[name] = value
        if since is not None:
            last_partition, _ = journal_keys(_micros(since.astimezone(UTC)), "")
            clauses += ["PartitionKey le @since_partition", "at ge @since"]
            parameters.update(since_partition=last_partition, since=since.astimezone(UTC))
        newest_first: list[JournalEntry] = []
        pages = self._table.query_entities(
            " and ".join(clauses), parameters=parameters, results_per_page=min(limit, 1000)
        )
        async for entity in pages:
            at = _plain(entity.get("at"))
            assert at is not None
            newest_first.append(
                JournalEntry(
                    message_key=entity["message_key"],
                    record_key=entity.get("record_key"),
                    queue=entity["queue"],
                    message_id=entity["message_id"],
                    delivery_count=_int(entity.get("delivery_count")) or 0,
                    outcome=entity["outcome"],
                    reason=entity.get("reason"),
                    detail=entity.get("detail"),
                    at=at,
                    correlation_id=entity.get("correlation_id"),
                    version=_int(entity.get("version")),
                    target_key=entity.get("target_key"),
                )
            )
            if len(newest_first) >= limit:
                break
        newest_first.reverse()
        return newest_first


def _is_conflict(error: HttpResponseError) -> bool:
    """An ETag mismatch (412) or a vanished row (404) inside or outside a transaction."""
    code = str(getattr(error, "error_code", "") or "")
    return (
        error.status_code in (404, 412)
        or isinstance(error, (ResourceModifiedError, ResourceNotFoundError))
        or code in ("UpdateConditionNotSatisfied", "ConditionNotMet", "ResourceNotFound")
    )
