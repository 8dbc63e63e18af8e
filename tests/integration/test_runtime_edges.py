"""The runtime at the edges (issue "Faithful at the edges"), against the sandbox over real loopback HTTP:
one target record per source record, company routing by business-unit name, versions from the future,
and short leases renewed while a sync runs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from p2csync.outcomes import Applied, Deferred, Rejected, Skipped
from p2csync.runtime import InboundMessage, SyncRuntime
from p2csync.settings import ROOT
from sandbox import INTEGRATION_USER_ID, SandboxServer
from tests.integration.runtime_world import (
    CUSTOMERS,
    Capture,
    RecordingActions,
    Runtimes,
    created_account,
    customer,
    fno_writes,
    sales_change,
)

YEAR_9999_MS = 253402300799000


def _record_id(message: InboundMessage) -> str:
    return str(json.loads(message.body)["PrimaryEntityId"])


# ----------------------------------------------------------------------------- one target, one source record


@pytest.fixture
def without_account_number_key(sandbox: SandboxServer) -> Any:
    """A Sales org that skipped the P2C alternate key on accountnumber: duplicates are possible there."""
    table = sandbox.dataverse.tables["account"]
    keys = list(table.alternate_keys)
    table.alternate_keys.clear()
    yield
    table.alternate_keys.extend(keys)


async def test_a_second_account_with_the_same_number_is_dead_lettered_naming_both_and_writes_nothing(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime, without_account_number_key: Any
) -> None:
    first = await created_account(sandbox, capture, "DUP-001")
    assert isinstance(await runtime.handle(first, first, RecordingActions()), Applied)
    sandbox.fno.request_log.clear()

    # Same number, another account; F&O compares keys without case, so "dup-001" is the same customer.
    second = await created_account(sandbox, capture, "dup-001", name="Another company")
    actions = RecordingActions()
    outcome = await runtime.handle(second, second, actions)

    assert isinstance(outcome, Rejected), outcome
    [settlement] = actions.calls
    assert (settlement.action, settlement.reason) == ("deadletter", "TargetConflict")
    assert settlement.description is not None
    assert _record_id(first) in settlement.description and _record_id(second) in settlement.description
    assert fno_writes(sandbox) == []  # nothing written for the second account
    row = customer(sandbox, "DUP-001")
    assert row is not None and row["OrganizationName"] == "Account DUP-001"  # the first is intact

    # The first account keeps syncing normally.
    [update] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", _record_id(first), {"telephone1": "+1 555 0199"}))
    assert isinstance(await runtime.handle(update, update, RecordingActions()), Applied)
    assert customer(sandbox, "DUP-001")["PrimaryContactPhone"] == "+1 555 0199"  # type: ignore[index]


async def test_renumbering_an_account_frees_its_old_number_for_another_account(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime, without_account_number_key: Any
) -> None:
    first = await created_account(sandbox, capture, "MOVE-1")
    assert isinstance(await runtime.handle(first, first, RecordingActions()), Applied)
    second = await created_account(sandbox, capture, "MOVE-1", name="Second")
    assert isinstance(await runtime.handle(second, second, RecordingActions()), Rejected)

    [renumbered] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", _record_id(first), {"accountnumber": "MOVE-2"}))
    assert isinstance(await runtime.handle(renumbered, renumbered, RecordingActions()), Applied)

    # The dead-lettered message replayed: MOVE-1 now belongs to the second account.
    replayed = await runtime.handle(second, second, RecordingActions())
    assert isinstance(replayed, Applied), replayed
    assert customer(sandbox, "MOVE-1")["OrganizationName"] == "Second"  # type: ignore[index]
    assert customer(sandbox, "MOVE-2")["OrganizationName"] == "Account MOVE-1"  # type: ignore[index]


# ------------------------------------------------------------------------- company routing by business unit name


@pytest.fixture
def routing_by_name(tmp_path: Path) -> Path:
    """The accounts mapping with the sandbox's root business unit routed by its name to usrt."""
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings, ignore=shutil.ignore_patterns("*.py", "__pycache__", "catalog"))
    text = (mappings / "accounts.yaml").read_text(encoding="utf-8")
    assert "  business_units: {}\n" in text
    text = text.replace("  business_units: {}\n", '  business_units:\n    "P2CSyncSandbox": usrt\n')
    (mappings / "accounts.yaml").write_text(text, encoding="utf-8")
    return mappings


async def test_create_and_update_route_to_the_company_named_by_the_business_unit(
    sandbox: SandboxServer, capture: Capture, runtimes: Runtimes, routing_by_name: Path
) -> None:
    runtime = runtimes.build(P2C_MAPPINGS_DIR=str(routing_by_name))
    created = await created_account(sandbox, capture, "BU-001")
    body = json.loads(created.body)
    target = next(p["value"] for p in body["InputParameters"] if p["key"] == "Target")
    unit = next(a["value"] for a in target["Attributes"] if a["key"] == "owningbusinessunit")
    assert unit["Name"] is None  # as in the documented webhook sample: the name is not in the payload

    outcome = await runtime.handle(created, created, RecordingActions())
    assert isinstance(outcome, Applied), outcome
    assert "dataAreaId=usrt" in outcome.detail
    [update] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", _record_id(created), {"telephone1": "+1 555 0142"}))
    assert isinstance(await runtime.handle(update, update, RecordingActions()), Applied)

    rows = sandbox.fno.rows(CUSTOMERS)
    assert [(r["dataAreaId"], r["CustomerAccount"]) for r in rows] == [("usrt", "BU-001")]  # one, in usrt
    assert rows[0]["PrimaryContactPhone"] == "+1 555 0142"
    unit_reads = [r for r in sandbox.dataverse.request_log.entries() if "businessunits(" in r.path]
    assert len(unit_reads) == 1  # looked up once, then cached


# ------------------------------------------------------------------------------------------ versions from the future


def _forge_modifiedon(message: InboundMessage, epoch_ms: int) -> InboundMessage:
    """The same webhook with `modifiedon` (Target and images) set to `epoch_ms`: a forged or corrupt event."""
    body = json.loads(message.body)

    def forge(entity: dict[str, Any]) -> None:
        for pair in entity.get("Attributes", []):
            if pair["key"] == "modifiedon":
                pair["value"] = f"/Date({epoch_ms})/"

    for pair in body["InputParameters"]:
        if pair["key"] == "Target":
            forge(pair["value"])
    for image in body.get("PostEntityImages", []):
        forge(image["value"])
    forged = json.dumps(body).encode()
    return InboundMessage(queue=message.queue, body=forged, message_id=message.message_id + "-forged",
                          application_properties=message.application_properties,
                          content_type=message.content_type)


async def test_a_version_from_the_future_is_not_trusted_and_never_blocks_later_changes(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    created = await created_account(sandbox, capture, "FUT-001")
    forged = _forge_modifiedon(created, YEAR_9999_MS)
    sandbox.dataverse.request_log.clear()
    outcome = await runtime.handle(forged, forged, RecordingActions())

    assert isinstance(outcome, Applied), outcome
    # Not trusted: the handler read the record instead of using the event's image, and recorded its version.
    assert any("accounts(" in r.path and r.method == "GET" for r in sandbox.dataverse.request_log.entries())
    state = await runtime.ledger.record_state(f"accounts:account:{_record_id(created)}")  # type: ignore[attr-defined]
    assert state.version is not None and state.version < YEAR_9999_MS
    assert state.version <= int(datetime.now(UTC).timestamp() * 1000) + 1000

    [update] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", _record_id(created), {"telephone1": "+1 555 0177"}))
    later = await runtime.handle(update, update, RecordingActions())
    assert isinstance(later, Applied), later  # a real edit after the forged event is not "stale"
    assert customer(sandbox, "FUT-001")["PrimaryContactPhone"] == "+1 555 0177"  # type: ignore[index]


async def test_a_future_version_already_in_the_ledger_is_replaced_by_the_next_real_change(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    created = await created_account(sandbox, capture, "FUT-002")
    assert isinstance(await runtime.handle(created, created, RecordingActions()), Applied)
    record_key = f"accounts:account:{_record_id(created)}"
    # A ledger written before this rule existed: the forged version was recorded.
    await runtime.ledger.acquire(record_key, "old-release", timedelta(seconds=5))
    await runtime.ledger.commit(record_key, "old-release", message_key="forged", outcome="applied", reason=None,
                                version=YEAR_9999_MS, payload_hash="forged")

    [update] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", _record_id(created), {"telephone1": "+1 555 0178"}))
    outcome = await runtime.handle(update, update, RecordingActions())
    assert isinstance(outcome, Applied), outcome
    state = await runtime.ledger.record_state(record_key)  # type: ignore[attr-defined]
    assert state.version is not None and state.version < YEAR_9999_MS  # repaired, not kept forever
    assert customer(sandbox, "FUT-002")["PrimaryContactPhone"] == "+1 555 0178"  # type: ignore[index]


# ---------------------------------------------------------------------------------------- short, renewed leases


async def test_a_sync_slower_than_the_lease_keeps_its_record_by_renewing(
    sandbox: SandboxServer, capture: Capture, runtimes: Runtimes
) -> None:
    first = runtimes.build(P2C_LEASE_SECONDS="0.6")
    second = runtimes.build(P2C_LEASE_SECONDS="0.6")
    message = await created_account(sandbox, capture, "SLOW-1")
    sandbox.fno.faults.latency(2.0, method="POST")  # the create takes over three leases

    working = asyncio.create_task(first.handle(message, message, RecordingActions()))
    await asyncio.sleep(1.2)  # twice the lease: without renewal it would have expired
    redelivery = InboundMessage(queue=message.queue, body=message.body, message_id=message.message_id,
                                delivery_count=2, application_properties=message.application_properties,
                                content_type=message.content_type)
    busy = await second.handle(redelivery, redelivery, RecordingActions())
    assert isinstance(busy, Deferred), busy
    assert "being synced by another worker" in busy.reason
    assert busy.delay <= 0.6 + 0.5  # never later than the holder's lease could end
    assert isinstance(await working, Applied)
    assert fno_writes(sandbox) == [("POST", 201)]


async def test_the_record_of_a_crashed_worker_is_free_within_one_lease(
    sandbox: SandboxServer, capture: Capture, runtimes: Runtimes
) -> None:
    runtime = runtimes.build(P2C_LEASE_SECONDS="1")
    message = await created_account(sandbox, capture, "CRASH-1")
    record_key = f"accounts:account:{_record_id(message)}"
    # A worker took the record and died: no renewal, no release.
    await runtime.ledger.acquire(record_key, "dead-worker", timedelta(seconds=1))

    started = asyncio.get_running_loop().time()
    outcome = await runtime.handle(message, message, RecordingActions())
    waits = 0
    while isinstance(outcome, Deferred) and waits < 20:
        assert "lease ends in" in outcome.reason
        assert outcome.delay <= 1.0 + 0.5  # never later than the dead worker's lease runs out
        waits += 1
        await asyncio.sleep(outcome.delay)
        outcome = await runtime.handle(message, message, RecordingActions())
    assert isinstance(outcome, Applied), outcome
    assert waits >= 1
    assert asyncio.get_running_loop().time() - started < 1.0 + 3.0  # about one lease (a wide margin: shared CPUs)
    assert customer(sandbox, "CRASH-1") is not None


async def test_a_sync_that_loses_its_lease_stops_instead_of_writing_after_the_new_holder(
    sandbox: SandboxServer, capture: Capture, runtimes: Runtimes
) -> None:
    runtime = runtimes.build(P2C_LEASE_SECONDS="0.6")
    message = await created_account(sandbox, capture, "LOST-1")
    record_key = f"accounts:account:{_record_id(message)}"
    owner = f"{runtime.instance_id}:{message.message_id}:{message.delivery_count}"
    sandbox.fno.faults.latency(5.0, method="POST")  # the write is slow: the lease is stolen meanwhile

    loop = asyncio.get_running_loop()
    started = loop.time()
    working = asyncio.create_task(runtime.handle(message, message, RecordingActions()))
    await asyncio.sleep(0.3)
    # Another worker takes the record over (as after an outage of the ledger that let the lease run out).
    await runtime.ledger.release(record_key, owner)
    await runtime.ledger.acquire(record_key, "new-holder", timedelta(seconds=30))
    outcome = await working

    assert isinstance(outcome, Deferred), outcome
    assert "expired while syncing" in outcome.reason
    assert loop.time() - started < 4.0  # stopped at the next renewal, not after the 5 s write
    state = await runtime.ledger.record_state(record_key)  # type: ignore[attr-defined]
    assert state.version is None  # nothing was recorded for the stopped sync


async def test_with_an_untrusted_applied_version_an_old_complete_image_is_not_written(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    created = await created_account(sandbox, capture, "FUT-003")
    assert isinstance(await runtime.handle(created, created, RecordingActions()), Applied)
    record_key = f"accounts:account:{_record_id(created)}"
    await runtime.ledger.acquire(record_key, "old-release", timedelta(seconds=5))
    await runtime.ledger.commit(record_key, "old-release", message_key="forged", outcome="applied", reason=None,
                                version=YEAR_9999_MS, payload_hash="forged")
    await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", _record_id(created), {"telephone1": "+1 555 0179"}))  # its event is still on its way

    # A late redelivery of the Create (another operation id, so no duplicate): a complete but old image.
    body = json.loads(created.body)
    body["OperationId"] = "0f0f0f0f-0000-4000-8000-000000000003"
    late = InboundMessage(queue=created.queue, body=json.dumps(body).encode(), message_id="late-create",
                          application_properties=created.application_properties,
                          content_type=created.content_type)
    outcome = await runtime.handle(late, late, RecordingActions())
    assert isinstance(outcome, Applied), outcome
    # Nothing to compare its version with, so the record was read: F&O has today's phone, not the Create's.
    assert customer(sandbox, "FUT-003")["PrimaryContactPhone"] == "+1 555 0179"  # type: ignore[index]


async def test_deleting_the_owner_in_sales_frees_its_number_for_another_account(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime, without_account_number_key: Any
) -> None:
    first = await created_account(sandbox, capture, "FREE-1")
    assert isinstance(await runtime.handle(first, first, RecordingActions()), Applied)
    second = await created_account(sandbox, capture, "FREE-1", name="Successor")
    assert isinstance(await runtime.handle(second, second, RecordingActions()), Rejected)

    [deleted] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.delete("account", _record_id(first)))
    outcome = await runtime.handle(deleted, deleted, RecordingActions())
    assert isinstance(outcome, Skipped) and "no longer claimed" in outcome.reason
    assert customer(sandbox, "FREE-1") is not None  # deletes are not synced: the customer stays

    replayed = await runtime.handle(second, second, RecordingActions())  # the dead letter, replayed
    assert isinstance(replayed, Applied), replayed
    assert customer(sandbox, "FREE-1")["OrganizationName"] == "Successor"  # type: ignore[index]


async def test_routing_by_name_without_a_readable_name_is_refused_not_sent_to_the_default_company(
    sandbox: SandboxServer, capture: Capture, runtimes: Runtimes, routing_by_name: Path
) -> None:
    from sandbox.dataverse_tables import ROOT_BUSINESS_UNIT_ID

    runtime = runtimes.build(P2C_MAPPINGS_DIR=str(routing_by_name))
    created = await created_account(sandbox, capture, "BU-NONAME")
    sandbox.dataverse.update("businessunit", ROOT_BUSINESS_UNIT_ID, {"name": None}, user=INTEGRATION_USER_ID)
    actions = RecordingActions()
    outcome = await runtime.handle(created, created, actions)

    assert isinstance(outcome, Rejected), outcome
    assert actions.calls[0].reason == "MappingFailed"
    assert ROOT_BUSINESS_UNIT_ID in outcome.description and "routes by name" in outcome.description
    assert sandbox.fno.rows(CUSTOMERS) == []  # not written to the default company
