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
