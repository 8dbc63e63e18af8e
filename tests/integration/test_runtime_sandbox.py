"""SyncRuntime against the sandbox over real loopback HTTP: outcome, settlement and what F&O saw.

The inbound messages are real: a Sales user changes an account in the Dataverse sandbox, the sandbox POSTs
the webhook (RemoteExecutionContext) to a capture endpoint on loopback, and the captured body and headers
go through the real ingress (`accept_dataverse_webhook`) to become the queue message the runtime handles.
The runtime is built from settings (`Settings.from_env`) with a temp SQLite ledger and embedded queue;
settlement goes to a recording `MessageActions`, deferrals to the embedded queue.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from datetime import UTC, datetime, timedelta

import pytest

from p2csync.outcomes import Applied, Deferred, Outcome, Rejected, Skipped
from p2csync.settings import ROOT
from p2csync.runtime import DEFERRALS, ORIGINAL_MESSAGE_ID, InboundMessage, SyncRuntime
from sandbox import INTEGRATION_USER_ID, SandboxServer, WebhookStep
from tests.integration.runtime_world import (
    CUSTOMERS,
    FAST_RETRIES,
    Capture,
    RecordingActions,
    Runtimes,
    account,
    as_inbound,
    created_account,
    customer,
    fno_writes,
    journal,
    sales_change,
    scheduled,
)




# ------------------------------------------------------------------------------------------------- tests


async def test_a_sales_account_create_is_applied_and_completed(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    message = await created_account(sandbox, capture, "RT-001")
    actions = RecordingActions()
    outcome = await runtime.handle(message, message, actions)
    assert isinstance(outcome, Applied), outcome
    assert outcome.detail == "created CustomersV3(dataAreaId=usmf,CustomerAccount=RT-001)"
    assert actions.actions == ["complete"] and actions.calls[0].message is message
    row = customer(sandbox, "RT-001")
    assert row is not None
    assert (row["OrganizationName"], row["SalesCurrencyCode"]) == ("Account RT-001", "USD")
    assert fno_writes(sandbox) == [("POST", 201)]
    assert [o for o, _ in await journal(runtime)] == ["applied"]

    again = RecordingActions()  # the same message redelivered: a recorded duplicate, nothing written
    duplicate = await runtime.handle(message, message, again)
    assert isinstance(duplicate, Skipped)
    assert duplicate.reason.startswith("duplicate: this change was already applied")
    assert again.actions == ["complete"] and fno_writes(sandbox) == [("POST", 201)]


def fno_calls(sandbox: SandboxServer) -> list[tuple[str, int | None]]:
    return [(r.method, r.status) for r in sandbox.fno.request_log.entries()]


async def test_an_account_costs_one_fno_call_to_create_and_one_to_update(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger knows whether this account wrote its customer: a new one is POSTed, a known one PATCHed, with no
    read first (issue 11: one F&O call per record when the guess holds)."""
    sandbox.fno.request_log.clear()
    assert isinstance(await runtime.handle(m := await created_account(sandbox, capture, "RT-C01"), m,
                                           RecordingActions()), Applied)
    assert fno_calls(sandbox) == [("POST", 201)]
    account_id = json.loads(m.body)["PrimaryEntityId"]
    sandbox.fno.request_log.clear()
    later = datetime.now(UTC) + timedelta(seconds=2)  # a later second than the create (modifiedon ties re-read)
    monkeypatch.setattr(sandbox.dataverse, "clock", lambda: later)
    [update] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", account_id, {"name": "Renamed RT-C01"}))
    sandbox.dataverse.request_log.clear()
    outcome = await runtime.handle(update, update, RecordingActions())
    assert isinstance(outcome, Applied) and outcome.detail.startswith("updated CustomersV3("), outcome
    assert fno_calls(sandbox) == [("PATCH", 204)]
    # the registered post image holds every column the mapping reads (its alias says so): no Dataverse read
    assert [r.path for r in sandbox.dataverse.request_log.entries() if "/accounts(" in r.path] == []


async def test_a_mapping_changed_since_register_reads_the_record_instead_of_trusting_the_image(
    sandbox: SandboxServer, capture: Capture, runtimes: Runtimes, tmp_path: Path
) -> None:
    """The image was registered for the shipped mapping; a mapping that reads one more column must not take the
    image's silence about that column for a null."""
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    text = (mappings / "accounts.yaml").read_text(encoding="utf-8")
    (mappings / "accounts.yaml").write_text(text.replace(
        "fields:\n", "fields:\n  - {target: PrimaryContactPhoneExtension, source: telephone2}\n", 1), encoding="utf-8")
    runtime = runtimes.build(P2C_MAPPINGS_DIR=str(mappings))
    message = await created_account(sandbox, capture, "RT-C03")
    assert isinstance(await runtime.handle(message, message, RecordingActions()), Applied)
    account_id = json.loads(message.body)["PrimaryEntityId"]
    sandbox.dataverse.update("account", account_id, {"telephone2": "42"})  # not in the registered filter: no event
    [update] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", account_id, {"name": "Renamed RT-C03"}))
    sandbox.dataverse.request_log.clear()
    assert isinstance(await runtime.handle(update, update, RecordingActions()), Applied)
    assert [r.method for r in sandbox.dataverse.request_log.entries() if "/accounts(" in r.path] == ["GET"]
    assert customer(sandbox, "RT-C03")["PrimaryContactPhoneExtension"] == "42"  # type: ignore[index]


async def test_a_wrong_guess_costs_one_more_call_never_a_failure(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    """A customer created in F&O beforehand (POST "already exists" -> PATCH), and a customer deleted in F&O after
    it was synced (PATCH "not found" -> POST): each converges in two calls."""
    sandbox.fno.create(CUSTOMERS, {"dataAreaId": "usmf", "CustomerAccount": "RT-C02", "CustomerGroupId": "10",
                                   "OrganizationName": "Made in F&O"})
    sandbox.fno.request_log.clear()
    message = await created_account(sandbox, capture, "RT-C02")
    outcome = await runtime.handle(message, message, RecordingActions())
    assert isinstance(outcome, Applied) and outcome.detail.startswith("updated CustomersV3("), outcome
    assert [m for m, _ in fno_calls(sandbox)] == ["POST", "PATCH"]
    assert customer(sandbox, "RT-C02")["OrganizationName"] == "Account RT-C02"  # type: ignore[index]

    sandbox.fno.delete(CUSTOMERS, {"dataAreaId": "usmf", "CustomerAccount": "RT-C02"})
    sandbox.fno.request_log.clear()
    account_id = json.loads(message.body)["PrimaryEntityId"]
    [update] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.update(
        "account", account_id, {"name": "Renamed RT-C02"}))
    outcome = await runtime.handle(update, update, RecordingActions())
    assert isinstance(outcome, Applied) and outcome.detail.startswith("created CustomersV3("), outcome
    assert [m for m, _ in fno_calls(sandbox)] == ["PATCH", "POST"]
    assert customer(sandbox, "RT-C02") is not None


async def test_fno_throttling_beyond_the_clients_patience_defers_with_the_retry_after(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    message = await created_account(sandbox, capture, "RT-429")
    sandbox.fno.faults.throttle(count=1, retry_after=600)  # > RetryPolicy.max_retry_after (300 s)
    actions = RecordingActions()
    before = datetime.now(UTC)
    outcome = await runtime.handle(message, message, actions)

    assert isinstance(outcome, Deferred), outcome
    assert outcome.delay == 600 and "throttled by fno" in outcome.reason
    # Not waited for in-process: one throttled write (a customer this account never wrote is POSTed at once).
    assert [(r.method, r.status) for r in sandbox.fno.request_log.entries()] == [("POST", 429)]
    assert actions.actions == ["complete"]  # the original is completed once its copy is scheduled
    [copy] = scheduled(runtime)
    assert copy.state == "scheduled"
    assert copy.application_properties[DEFERRALS] == 1
    assert copy.application_properties[ORIGINAL_MESSAGE_ID] == message.message_id
    assert copy.message_id != message.message_id and copy.body == message.body
    assert copy.scheduled_enqueue_time_utc is not None
    due = copy.scheduled_enqueue_time_utc - before
    assert timedelta(seconds=599) <= due <= timedelta(seconds=610)
    assert customer(sandbox, "RT-429") is None
    assert [o for o, _ in await journal(runtime)] == ["deferred"]


async def test_persistent_503_defers_and_the_rescheduled_copy_applies_once_it_clears(
    sandbox: SandboxServer, capture: Capture, runtimes: Runtimes
) -> None:
    runtime = runtimes.build(http=FAST_RETRIES)
    message = await created_account(sandbox, capture, "RT-503")
    rule = sandbox.fno.faults.error(503, count=None)
    actions = RecordingActions()
    outcome = await runtime.handle(message, message, actions)
    assert isinstance(outcome, Deferred), outcome
    assert "fno unavailable" in outcome.reason and outcome.delay >= 1.0
    assert [(r.method, r.status) for r in sandbox.fno.request_log.entries()] == [("POST", 503)] * 3
    assert actions.actions == ["complete"]
    [copy] = scheduled(runtime)
    assert copy.application_properties[DEFERRALS] == 1
    assert rule.kind == "error" and customer(sandbox, "RT-503") is None

    sandbox.fno.faults.clear()  # the outage ends; the copy comes due
    redelivered = as_inbound(copy)
    assert redelivered.deferrals == 1
    later = RecordingActions()
    applied = await runtime.handle(redelivered, redelivered, later)
    assert isinstance(applied, Applied), applied
    assert later.actions == ["complete"]
    assert customer(sandbox, "RT-503") is not None and len(sandbox.fno.rows(CUSTOMERS)) == 1
    assert [o for o, _ in await journal(runtime)] == ["deferred", "applied"]


async def test_an_fno_validation_infolog_dead_letters_with_the_infolog_and_writes_nothing(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    # This F&O has no customer group '10', the group the accounts mapping writes.
    sandbox.fno.customer_groups.discard("10")
    message = await created_account(sandbox, capture, "RT-BAD")
    actions = RecordingActions()
    outcome = await runtime.handle(message, message, actions)

    assert isinstance(outcome, Rejected), outcome
    [settlement] = actions.calls
    assert settlement.action == "deadletter" and settlement.message is message
    assert settlement.reason == "fnoRejected"
    assert settlement.description is not None
    assert "The value '10' in field 'Customer group' is not found in the related table 'Customer groups'" \
        in settlement.description
    assert sandbox.fno.rows(CUSTOMERS) == []
    assert fno_writes(sandbox) == [("POST", 500)]
    assert scheduled(runtime) == []
    assert [o for o, _ in await journal(runtime)] == ["rejected"]


@pytest.mark.parametrize("how", ["integration user", "write tag"])
async def test_an_echo_is_skipped_and_writes_nothing(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime, how: str
) -> None:
    record_id = sandbox.dataverse.create("account", account("RT-ECHO"), user=INTEGRATION_USER_ID)
    assert await sandbox.dataverse.wait_idle_async(10)
    capture.take()  # the Create made by the integration user; the Update below is what is tested
    sandbox.dataverse.request_log.clear()
    if how == "integration user":
        def act() -> None:
            sandbox.dataverse.update("account", record_id, {"telephone1": "+1 555"}, user=INTEGRATION_USER_ID)
    else:
        def act() -> None:
            sandbox.dataverse.update("account", record_id, {"telephone1": "+1 555"}, tag="p2c-sync")
    [message] = await sales_change(sandbox, capture, act)
    actions = RecordingActions()
    outcome = await runtime.handle(message, message, actions)

    assert isinstance(outcome, Skipped), outcome
    assert outcome.reason.startswith("echo:")
    assert ("own user" in outcome.reason) if how == "integration user" else ("'p2c-sync'" in outcome.reason)
    assert actions.actions == ["complete"]
    assert sandbox.fno.request_log.entries() == [] and sandbox.dataverse.request_log.entries() == []
    assert sandbox.fno.rows(CUSTOMERS) == []


async def test_a_change_that_leaves_the_mapped_payload_unchanged_is_skipped_without_an_fno_write(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    # An Update step without filtering attributes: fires for columns the mapping does not read too.
    sandbox.dataverse.register_webhook(capture.url, steps=[WebhookStep(table="account", message="Update")])
    created = await created_account(sandbox, capture, "RT-SAME", creditlimit=1234.56, numberofemployees=12,
                                    emailaddress1="ap@example.com", description="Key account",
                                    address2_city="Toronto", address2_country="Canada", fax="")
    assert isinstance(await runtime.handle(created, created, RecordingActions()), Applied)
    record_id = json.loads(created.body.replace(b"\\/", b"/"))["PrimaryEntityId"]
    sandbox.fno.request_log.clear()
    sandbox.dataverse.request_log.clear()

    [update] = await sales_change(sandbox, capture,
                                  lambda: sandbox.dataverse.update("account", record_id, {"revenue": 123456}))
    actions = RecordingActions()
    outcome = await runtime.handle(update, update, actions)

    assert isinstance(outcome, Skipped), outcome
    assert outcome.reason.startswith("unchanged")
    assert actions.actions == ["complete"]
    assert sandbox.fno.request_log.entries() == []  # not even the read: the ledger's hash decided
    fetched = sandbox.dataverse.request_log.entries(method="GET")
    assert any(record_id in r.path for r in fetched)  # an Update is partial: the account was fetched


async def test_max_deferrals_exceeded_dead_letters(
    sandbox: SandboxServer, capture: Capture, runtimes: Runtimes
) -> None:
    runtime = runtimes.build(P2C_MAX_DEFERRALS="2")
    fresh = await created_account(sandbox, capture, "RT-MAX")
    message = InboundMessage(queue=fresh.queue, body=fresh.body, message_id=f"{fresh.message_id}~2",
                             delivery_count=1, content_type=fresh.content_type,
                             application_properties={**fresh.application_properties, DEFERRALS: 2,
                                                     ORIGINAL_MESSAGE_ID: fresh.message_id})
    sandbox.fno.faults.throttle(count=None, retry_after=600)
    actions = RecordingActions()
    outcome = await runtime.handle(message, message, actions)

    assert isinstance(outcome, Rejected) and outcome.reason == "MaxDeferralsExceeded"
    [settlement] = actions.calls
    assert (settlement.action, settlement.reason) == ("deadletter", "MaxDeferralsExceeded")
    description = settlement.description or ""
    assert "deferred 2 times" in description and "throttled by fno" in description
    assert scheduled(runtime) == []
    assert sandbox.fno.rows(CUSTOMERS) == []


async def test_an_event_for_a_table_no_flow_handles_is_skipped_and_completed(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    # Price lists are written by the products flow (F&O -> Sales); no flow reads them from Sales.
    sandbox.dataverse.register_webhook(capture.url, steps=[WebhookStep(table="pricelevel", message="Create")])
    [message] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.create(
        "pricelevel", {"name": "Retail"}))
    actions = RecordingActions()
    outcome = await runtime.handle(message, message, actions)

    assert isinstance(outcome, Skipped), outcome
    assert outcome.reason == "no flow syncs dataverse 'pricelevel' Create"
    assert actions.actions == ["complete"]
    assert sandbox.fno.request_log.entries() == []
    assert await journal(runtime) == [("skipped", "skipped: no flow syncs dataverse 'pricelevel' Create")]


async def test_an_account_delete_is_skipped_with_a_reason_and_the_customer_stays(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    created = await created_account(sandbox, capture, "RT-DEL")  # the accounts mapping registers Delete too
    assert isinstance(await runtime.handle(created, created, RecordingActions()), Applied)
    record_id = json.loads(created.body.replace(b"\\/", b"/"))["PrimaryEntityId"]
    sandbox.fno.request_log.clear()

    [deleted] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.delete("account", record_id))
    actions = RecordingActions()
    outcome = await runtime.handle(deleted, deleted, actions)

    assert isinstance(outcome, Skipped), outcome
    assert outcome.reason == ("account deletes are not synced by the accounts flow; "
                              "CustomersV3(dataAreaId='usmf',CustomerAccount='rt-del') is no longer claimed by "
                              "this account")
    assert actions.actions == ["complete"]
    assert sandbox.fno.request_log.entries() == []
    assert customer(sandbox, "RT-DEL") is not None


async def test_a_trimmed_payload_is_completed_by_fetching_the_record(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    # A Create whose context is over 256 KB: the sandbox removes the bulky members and flags the header.
    message = await created_account(sandbox, capture, "RT-BIG", address1_line3="x" * (300 * 1024))
    assert message.application_properties.get("MessageMaxSizeExceeded") is True
    context = json.loads(message.body)
    assert "InputParameters" not in context and "PostEntityImages" not in context  # removed, not emptied
    record_id = context["PrimaryEntityId"]

    actions = RecordingActions()
    outcome = await runtime.handle(message, message, actions)
    assert isinstance(outcome, Applied), outcome
    assert actions.actions == ["complete"]
    assert any(record_id in r.path for r in sandbox.dataverse.request_log.entries(method="GET"))
    row = customer(sandbox, "RT-BIG")
    assert row is not None
    assert (row["OrganizationName"], row["AddressCity"], row["SalesCurrencyCode"]) == (
        "Account RT-BIG", "Redmond", "USD")


async def test_two_instances_on_one_ledger_handle_the_same_message_once(
    sandbox: SandboxServer, capture: Capture, runtimes: Runtimes
) -> None:
    first, second = runtimes.build(), runtimes.build()
    assert first.instance_id != second.instance_id
    message = await created_account(sandbox, capture, "RT-TWO")
    sandbox.fno.faults.latency(0.3, count=1, method="GET")  # whoever gets the lease holds it a while
    actions = [RecordingActions(), RecordingActions()]
    started = time.monotonic()
    outcomes: list[Outcome] = list(await asyncio.gather(first.handle(message, message, actions[0]),
                                                        second.handle(message, message, actions[1])))
    assert time.monotonic() - started < 5

    kinds = sorted(o.kind for o in outcomes)
    assert kinds in (["applied", "deferred"], ["applied", "skipped"]), outcomes
    other = next(o for o in outcomes if o.kind != "applied")
    if isinstance(other, Deferred):
        assert "being synced by another worker" in other.reason
        [copy] = scheduled(first)  # both instances share the queue file: one copy rescheduled
        later = RecordingActions()
        redelivered = await second.handle(as_inbound(copy), copy, later)  # when it comes due
        assert isinstance(redelivered, Skipped) and redelivered.reason.startswith("duplicate"), redelivered
        assert later.actions == ["complete"]
    else:
        assert isinstance(other, Skipped) and other.reason.startswith("duplicate")
    assert [a.actions for a in actions] == [["complete"], ["complete"]]
    assert fno_writes(sandbox) == [("POST", 201)]
    assert len(sandbox.fno.rows(CUSTOMERS)) == 1


async def test_concurrent_records_naming_one_currency_share_one_read(
    sandbox: SandboxServer, capture: Capture, runtime: SyncRuntime
) -> None:
    """A cold process handling 8 accounts at once reads their currency (transactioncurrencyid.isocurrencycode)
    once: identical lookups are single-flight, then cached."""
    messages = [await created_account(sandbox, capture, f"RT-SF{n}") for n in range(8)]
    sandbox.dataverse.request_log.clear()
    outcomes = await asyncio.gather(*(runtime.handle(m, m, RecordingActions()) for m in messages))
    assert all(isinstance(o, Applied) for o in outcomes), outcomes
    reads = [r.path for r in sandbox.dataverse.request_log.entries() if "transactioncurrencies(" in r.path]
    assert len(reads) == 1, reads
