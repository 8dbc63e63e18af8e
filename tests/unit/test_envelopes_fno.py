"""Envelope parsing of F&O business events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from p2csync.envelopes import ChangeEvent, EnvelopeError, parse_change_event
from p2csync.envelopes.fno import BusinessEvent, parse_fno_date

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes" / "fno_business_event_sales_invoice_posted.json"


def load() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def invoice() -> ChangeEvent:
    return parse_change_event(FIXTURE.read_bytes())


def test_business_event_identity(invoice: ChangeEvent):
    assert invoice.source == "fno_business_event"
    assert invoice.entity == "SalesInvoicePostedBusinessEvent"
    assert invoice.message_name == "SalesInvoicePostedBusinessEvent"
    assert invoice.dedupe_key == "3C47A4CD-6EDC-4319-B893-3F862EED65FD"
    assert invoice.version == 5637611083
    assert invoice.company == "usmf"
    assert invoice.record_id == "CIV-000123"
    assert invoice.is_complete is False


def test_business_event_members(invoice: ChangeEvent):
    attrs = invoice.attributes
    assert attrs["InvoiceId"] == "CIV-000123"
    assert attrs["InvoiceAccount"] == "US-001"
    assert attrs["SalesOrderId"] == "SO-000456"
    assert attrs["LegalEntity"] == "USMF"
    assert attrs["InvoiceDate"] == datetime(2022, 12, 30, tzinfo=UTC)
    assert attrs["InvoiceDueDate"] == datetime(2023, 1, 29, tzinfo=UTC)
    assert attrs["InvoiceAmountInAccountingCurrency"] == Decimal("1250.00")
    assert str(attrs["InvoiceTaxAmount"]) == "100.00"
    # common members are not repeated among the event-specific ones
    assert "EventId" not in attrs and "ControlNumber" not in attrs and "BusinessEventId" not in attrs


def test_business_event_user_and_time(invoice: ChangeEvent):
    assert invoice.initiating_user_id == "410a2690-5ec2-42ee-9f2a-e75b4e324930"
    assert invoice.user_id is None
    assert invoice.event_time == datetime(2022, 12, 30, 13, 51, 15, tzinfo=UTC)


def test_business_event_model_common_contract():
    event = BusinessEvent.model_validate(load())
    assert event.business_event_legal_entity == "USMF"
    assert event.context_record_subject == ""
    assert event.major_version == 0 and event.minor_version == 0
    assert event.parent_context_record_subjects == []
    assert event.initiating_user_aad_object_id == "{410A2690-5EC2-42EE-9F2A-E75B4E324930}"
    assert event.event_time_iso8601 == "2022-12-30T13:51:15.2942742Z"
    assert set(event.members) == {"InvoiceAccount", "InvoiceAmountInAccountingCurrency", "InvoiceDate",
                                  "InvoiceDueDate", "InvoiceId", "InvoiceTaxAmount", "LegalEntity",
                                  "SalesOrderId"}


def test_empty_f_and_o_date_is_none():
    data = load()
    data["EventTime"] = "/Date(-2208988800000)/"
    data["InvoiceDueDate"] = "/Date(-2208988800000)/"
    event = parse_change_event(json.dumps(data))
    assert event.attributes["InvoiceDueDate"] is None
    # EventTime empty: the ISO member is used instead
    assert event.event_time == datetime(2022, 12, 30, 13, 51, 15, 294274, tzinfo=UTC)
    assert parse_fno_date("/Date(-2208988800000)/") is None
    assert parse_fno_date("/Date(0)/") == datetime(1970, 1, 1, tzinfo=UTC)


def test_event_id_is_upper_cased_and_company_falls_back():
    data = load()
    data["EventId"] = "3c47a4cd-6edc-4319-b893-3f862eed65fd"
    del data["BusinessEventLegalEntity"]
    event = parse_change_event(json.dumps(data))
    assert event.dedupe_key == "3C47A4CD-6EDC-4319-B893-3F862EED65FD"
    assert event.company == "usmf"  # from the LegalEntity member


def test_unknown_event_uses_context_record_subject_and_tolerates_extras():
    data = {"BusinessEventId": "CustFreeTextInvoicePostedBusinessEvent", "EventId": "AB-1",
            "ContextRecordSubject": "FTI-0001", "ControlNumber": 7, "Lines": [{"Posted": "/Date(0)/"}],
            "BusinessEventCategory": "AccountsReceivable", "Nested": {"When": "/Date(1000)/"}}
    event = parse_change_event(json.dumps(data))
    assert event.record_id == "FTI-0001"
    assert event.version == 7
    assert event.company is None and event.event_time is None and event.initiating_user_id is None
    assert event.attributes["Lines"] == [{"Posted": datetime(1970, 1, 1, tzinfo=UTC)}]
    assert event.attributes["Nested"]["When"] == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)


def test_minimal_event_has_no_version_and_no_record_id():
    event = parse_change_event(b'{"BusinessEventId": "TestEvent", "EventId": "E1"}')
    assert event.version is None and event.record_id is None and event.attributes == {}


@pytest.mark.parametrize(("mutate", "member"), [
    (lambda d: d.pop("EventId"), "EventId"),
    (lambda d: d.update(EventId=""), "EventId"),
    (lambda d: d.update(EventId=42), "EventId"),
    (lambda d: d.update(BusinessEventId=None), "BusinessEventId"),
    (lambda d: d.update(ControlNumber="5637611083"), "ControlNumber"),
    (lambda d: d.update(EventTime="/Date(yesterday)/"), "EventTime"),
    (lambda d: d.update(EventTime=12), "EventTime"),
    (lambda d: d.update(InvoiceDate="/Date(1672358400000"), "InvoiceDate"),
    (lambda d: d.update(Lines=[{"Date": "/Date(x)/"}]), "Lines[0].Date"),
    (lambda d: d.update(MajorVersion="0"), "MajorVersion"),
])
def test_malformed_business_events_name_the_member(mutate, member):
    data = load()
    mutate(data)
    with pytest.raises(EnvelopeError) as info:
        parse_change_event(json.dumps(data))
    assert info.value.member == member
    assert str(info.value).startswith(f"{member}: ")
