"""Rules at the edges that need no sandbox: F&O's endpoint test message, event times from the future on
F&O business events (the Dataverse side is tested against the sandbox in
tests/integration/test_runtime_edges.py), and what a restarted local host says it is waiting for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2csync.envelopes import EndpointTestMessage, parse_change_event
from p2csync.envelopes.fno import is_endpoint_test_message
from p2csync.outcomes import Skipped
from p2csync.runtime import InboundMessage, SyncRuntime
from p2csync.settings import Settings

INVOICE = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes" / "fno_business_event_sales_invoice_posted.json"

#: What activating SalesInvoicePostedBusinessEvent on an endpoint sends: the contract, blank.
BLANK_CONTRACT: dict[str, Any] = {
    "BusinessEventId": "SalesInvoicePostedBusinessEvent",
    "BusinessEventLegalEntity": "",
    "ContextRecordSubject": "",
    "ControlNumber": 0,
    "EventId": "",
    "EventTime": "/Date(-2208988800000)/",
    "EventTimeIso8601": "1900-01-01T00:00:00Z",
    "InitiatingUserAADObjectId": "{00000000-0000-0000-0000-000000000000}",
    "InvoiceAccount": "",
    "InvoiceAmountInAccountingCurrency": 0,
    "InvoiceDate": "/Date(-2208988800000)/",
    "InvoiceDueDate": "/Date(-2208988800000)/",
    "InvoiceId": "",
    "InvoiceTaxAmount": 0,
    "LegalEntity": "",
    "MajorVersion": 0,
    "MinorVersion": 0,
    "ParentContextRecordSubjects": [],
    "SalesOrderId": "",
}


def _invoice(**changes: Any) -> dict[str, Any]:
    data = json.loads(INVOICE.read_text(encoding="utf-8"))
    data.update(changes)
    return data


@pytest.mark.parametrize("variant", [
    {},
    {"EventId": "00000000-0000-0000-0000-000000000000"},
    {"EventTimeIso8601": None},
    {"EventTime": ""},
])
def test_the_blank_contract_is_recognised_as_the_endpoint_test(variant: dict[str, Any]) -> None:
    body = json.dumps({**BLANK_CONTRACT, **variant}).encode()
    assert is_endpoint_test_message({**BLANK_CONTRACT, **variant})
    with pytest.raises(EndpointTestMessage) as test:
        parse_change_event(body, {})
    assert "SalesInvoicePostedBusinessEvent" in str(test.value) and "test message" in str(test.value)


@pytest.mark.parametrize("real", [
    _invoice(),
    _invoice(ControlNumber=0),  # a real event always has an EventId: not a test, whatever else is blank
    {**BLANK_CONTRACT, "EventId": "3C47A4CD-6EDC-4319-B893-3F862EED65FD"},
    {**BLANK_CONTRACT, "ControlNumber": 5637611083},
])
def test_a_real_event_is_never_taken_for_the_test(real: dict[str, Any]) -> None:
    assert not is_endpoint_test_message(real)


async def test_the_runtime_skips_the_endpoint_test_with_a_reason_instead_of_dead_lettering(
    runtime_env: dict[str, str]
) -> None:
    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        message = InboundMessage(queue="fno-events", body=json.dumps(BLANK_CONTRACT).encode(), message_id="m-test")
        outcome, event, record_key = await runtime.process(message)
    finally:
        await runtime.aclose()
    assert isinstance(outcome, Skipped), outcome
    assert "endpoint test message" in outcome.reason and "activated" in outcome.reason
    assert event is None and record_key is None


async def test_a_business_event_from_the_future_loses_its_control_number(runtime_env: dict[str, str]) -> None:
    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        normal = parse_change_event(json.dumps(_invoice()).encode(), {})
        assert runtime._distrust_future(normal) is normal  # 2022: trusted as it is
        forged = parse_change_event(json.dumps(_invoice(EventTime="/Date(253402300799000)/",
                                                        EventTimeIso8601=None)).encode(), {})
        assert forged.version == normal.version is not None
        distrusted = runtime._distrust_future(forged)
    finally:
        await runtime.aclose()
    # Its ControlNumber neither skips later events as stale nor is recorded; the handler re-reads F&O.
    assert distrusted.version is None and distrusted.is_complete is False
    assert distrusted.dedupe_key == forged.dedupe_key


def test_a_restarted_host_says_which_messages_an_earlier_run_left_locked(tmp_path: Path) -> None:
    from datetime import timedelta

    from p2csync.cli import held_by_earlier_run
    from p2csync.queue.base import OutboundMessage
    from p2csync.queue.embedded import EmbeddedQueue

    queue = EmbeddedQueue(tmp_path / "queue.sqlite", lock_duration=timedelta(seconds=60))
    try:
        assert held_by_earlier_run(queue, "sales-events") is None
        for n in range(3):
            queue.send("sales-events", OutboundMessage(body=b"{}", message_id=f"m{n}"))
        queue.receive("sales-events", max_messages=2)  # the earlier run took two, then died
        said = held_by_earlier_run(queue, "sales-events")
    finally:
        queue.close()
    assert said is not None and said.startswith("2 message(s) on sales-events are locked by an earlier run")
    assert "within 60 s" in said or "within 59 s" in said


# ------------------------------------------------------------------ waits, control numbers, oversize retries

CREATE = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes" / "dataverse_create_account.json"
CREATE_KEY = "accounts:account:44bfc2a7-903e-eb11-a813-000d3ad9c2e1"


class _Actions:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def complete(self, message: Any) -> None:
        self.calls.append(("complete", None))

    def abandon(self, message: Any) -> None:
        self.calls.append(("abandon", None))

    def deadletter(self, message: Any, deadletter_reason: str | None = None,
                   deadletter_error_description: str | None = None) -> None:
        self.calls.append(("deadletter", deadletter_reason))


def _held_by_another_worker(runtime: SyncRuntime) -> Any:
    from datetime import timedelta

    return runtime.ledger.acquire(CREATE_KEY, "another-worker", timedelta(seconds=30))


async def test_waiting_for_a_record_another_worker_holds_does_not_use_up_deferrals(
    runtime_env: dict[str, str]
) -> None:
    from p2csync.queue.embedded import EmbeddedTransport
    from p2csync.runtime import DEFERRALS, LEASE_WAITS

    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        await _held_by_another_worker(runtime)
        message = InboundMessage(queue="sales-events", body=CREATE.read_bytes(), message_id="m-1",
                                 application_properties={DEFERRALS: 20})  # no deferrals left
        actions = _Actions()
        outcome = await runtime.handle(message, message, actions)
        assert outcome.kind == "deferred" and actions.calls == [("complete", None)]
        assert isinstance(runtime.transport, EmbeddedTransport)
        [copy] = runtime.transport.queue.peek("sales-events")
        assert copy.application_properties[LEASE_WAITS] == 1
        assert copy.application_properties[DEFERRALS] == 20  # unchanged: waiting is not failing

        exhausted = InboundMessage(queue="sales-events", body=CREATE.read_bytes(), message_id="m-2",
                                   application_properties={LEASE_WAITS: runtime.settings.max_lease_waits})
        actions = _Actions()
        final = await runtime.handle(exhausted, exhausted, actions)
        assert final.kind == "rejected" and actions.calls == [("deadletter", "MaxDeferralsExceeded")]
        assert "another worker kept syncing" in final.description  # type: ignore[union-attr]
    finally:
        await runtime.aclose()


async def test_a_retry_copy_that_cannot_fit_the_queue_is_dead_lettered_with_that_reason(
    runtime_env: dict[str, str]
) -> None:
    from p2csync.queue.base import OutboundMessage
    from p2csync.queue.sizing import serialized_size

    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        await _held_by_another_worker(runtime)
        body = json.loads(CREATE.read_text(encoding="utf-8"))
        target = next(p["value"] for p in body["InputParameters"] if p["key"] == "Target")
        target["Attributes"].append({"key": "description", "value": ""})
        base = len(json.dumps(body).encode())
        as_queued = OutboundMessage(body=b"", message_id="m-big", content_type="application/json")
        # The largest body the queue takes as it is: it arrived (a Dataverse Service Bus endpoint sent it).
        target["Attributes"][-1]["value"] = "x" * (262_144 - serialized_size(as_queued) - base)
        raw = json.dumps(body).encode()
        assert serialized_size(OutboundMessage(body=raw, message_id="m-big", content_type="application/json")) \
            == 262_144
        message = InboundMessage(queue="sales-events", body=raw, message_id="m-big", content_type="application/json")
        actions = _Actions()
        outcome = await runtime.handle(message, message, actions)
    finally:
        await runtime.aclose()
    assert outcome.kind == "rejected" and actions.calls == [("deadletter", "RetryCopyTooLarge")]
    assert "being synced by another worker" in outcome.description  # type: ignore[union-attr]
    assert "maximum message size" in outcome.description  # type: ignore[union-attr]


class _RecordingHandler:
    """A flow for the invoice business event that records what the runtime hands it."""

    flow = "invoices"

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def accepts(self, event: Any) -> bool:
        return event.source == "fno_business_event"

    def record_key(self, event: Any) -> str:
        return f"invoices:{event.record_id}"

    async def sync(self, event: Any, state: Any, ctx: Any) -> Any:
        from p2csync.outcomes import Applied

        self.seen.append(event)
        return Applied(detail="re-read and written", version=event.version)


async def test_a_control_number_below_the_applied_one_is_re_read_not_skipped_forever(
    runtime_env: dict[str, str]
) -> None:
    from datetime import timedelta

    from handlers import FlowRegistry

    handler = _RecordingHandler()
    base = SyncRuntime.from_settings(Settings.from_env())
    # No mapping files: this runtime has no Dataverse to read the mappings' choice labels from (none are needed).
    runtime = SyncRuntime(base.settings, ledger=base.ledger, transport=base.transport, dataverse=base.dataverse,
                          fno=base.fno, mappings={}, registry=FlowRegistry([handler]))
    try:
        event = parse_change_event(json.dumps(_invoice()).encode(), {})
        key = handler.record_key(event)
        # A forged or corrupt event once recorded an absurd control number.
        await runtime.ledger.acquire(key, "old", timedelta(seconds=5))
        await runtime.ledger.commit(key, "old", message_key="forged", outcome="applied", reason=None,
                                    version=9_000_000_000_000_000_000, payload_hash=None)
        message = InboundMessage(queue="fno-events", body=json.dumps(_invoice()).encode(), message_id="m-real")
        outcome, _, _ = await runtime.process(message)
    finally:
        await runtime.aclose()
    assert outcome.kind == "applied", outcome  # not "stale"
    [seen] = handler.seen
    assert seen.version is None and seen.is_complete is False  # a notification: the handler re-reads F&O


async def test_both_queue_transports_take_the_configured_message_size(
    runtime_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2csync.queue.embedded import EmbeddedTransport
    from p2csync.queue.servicebus import ServiceBusTransport

    monkeypatch.setenv("P2C_SERVICEBUS_MAX_MESSAGE_BYTES", "1048576")  # a Premium namespace
    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        assert isinstance(runtime.transport, EmbeddedTransport)
        assert runtime.transport.queue.max_message_bytes == 1048576
    finally:
        await runtime.aclose()
    monkeypatch.delenv("P2C_LOCAL_QUEUE_PATH")
    monkeypatch.setenv("ServiceBusConnection__fullyQualifiedNamespace", "example.servicebus.windows.net")
    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        assert isinstance(runtime.transport, ServiceBusTransport)
        assert runtime.transport.max_message_bytes == 1048576
    finally:
        await runtime.aclose()
# --- review of point 11: the date through parse_fno_date; blank members must be present ------------------


@pytest.mark.parametrize("variant", [
    {"EventTime": "/Date(-2208988800000+0000)/"},
    {"EventTime": "/Date(-2208988800000-0800)/"},
    {"EventId": "{00000000-0000-0000-0000-000000000000}"},
])
def test_spellings_of_the_blank_members_are_recognised_as_the_test(variant: dict[str, Any]) -> None:
    body = json.dumps({**BLANK_CONTRACT, **variant}).encode()
    assert is_endpoint_test_message({**BLANK_CONTRACT, **variant})
    with pytest.raises(EndpointTestMessage):
        parse_change_event(body, {})


def _without(*members: str) -> dict[str, Any]:
    return {key: value for key, value in BLANK_CONTRACT.items() if key not in members}


@pytest.mark.parametrize("broken", [
    _without("EventId", "ControlNumber", "EventTime"),
    _without("EventId"),
    _without("ControlNumber"),
    _without("EventTime"),
    {**BLANK_CONTRACT, "EventId": None},
    {**BLANK_CONTRACT, "ControlNumber": None},
    {**BLANK_CONTRACT, "ControlNumber": False},
    {**BLANK_CONTRACT, "EventTime": None},
    {**BLANK_CONTRACT, "EventTime": "/Date(0)/"},
    {**BLANK_CONTRACT, "EventTime": "/Date(-2208988800001)/"},
    {**BLANK_CONTRACT, "BusinessEventId": ""},
    {**BLANK_CONTRACT, "BusinessEventId": None},
])
def test_a_contract_lacking_or_filling_a_blank_member_is_not_the_test(broken: dict[str, Any]) -> None:
    assert not is_endpoint_test_message(broken)


def test_a_broken_real_contract_lacking_the_members_is_malformed_not_skipped_as_a_test() -> None:
    from p2csync.envelopes import EnvelopeError

    broken = {key: value for key, value in _invoice().items()
              if key not in ("EventId", "ControlNumber", "EventTime", "EventTimeIso8601")}
    with pytest.raises(EnvelopeError) as info:
        parse_change_event(json.dumps(broken).encode(), {})
    assert not isinstance(info.value, EndpointTestMessage)
