"""source.event_keys (and MappingSpec.field_value, which the invoice flow uses): which business event member carries which key field (an invoice is InvoiceId in
SalesInvoicePostedBusinessEvent, InvoiceNumber in its entity). Checked when a file loads; used to name the row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from handlers.invoices import create_handler
from mappings import MappedValueError, load_mappings
from mappings.choices import ChoiceOption, ChoiceOptions, column_key
from mappings.model import MappingSpec
from p2csync.envelopes.event import parse_change_event

ROOT = Path(__file__).resolve().parents[2]
EVENT = "SalesInvoicePostedBusinessEvent"


def invoices_raw() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "mappings" / "invoices.yaml").read_text())


def spec_with_source(**source: Any) -> MappingSpec:
    raw = invoices_raw()
    raw["source"].update(source)
    return MappingSpec.model_validate(raw)


def business_event(**members: Any) -> bytes:
    return json.dumps({"BusinessEventId": EVENT, "BusinessEventLegalEntity": "USMF", "ContextRecordSubject": "",
                       "ControlNumber": 5637611083, "EventId": "3C47A4CD-6EDC-4319-B893-3F862EED65FD",
                       "EventTime": "/Date(1672408275000)/", "MajorVersion": 0, "MinorVersion": 0,
                       "ParentContextRecordSubjects": [], **members}).encode()


def test_the_invoice_file_names_the_invoice_by_the_event_member_invoice_id() -> None:
    spec = load_mappings(ROOT / "mappings")["invoices"]
    assert spec.source.event_keys == {EVENT: {"InvoiceNumber": "InvoiceId"}}


def test_the_key_comes_from_the_named_member_and_the_company_from_the_legal_entity() -> None:
    handler = create_handler().bind(load_mappings(ROOT / "mappings")["invoices"])
    event = parse_change_event(business_event(InvoiceId="CIV-000123", LegalEntity="USMF", SalesOrderId="SO-1"))
    assert handler.accepts(event)
    assert handler.source_key(event) == {"dataAreaId": "usmf", "InvoiceNumber": "CIV-000123"}
    assert handler.record_key(event) == \
        "invoices:SalesInvoiceHeadersV2:(dataAreaId='usmf',InvoiceNumber='civ-000123')"


def test_an_event_without_the_member_is_rejected_naming_the_member() -> None:
    handler = create_handler().bind(load_mappings(ROOT / "mappings")["invoices"])
    event = parse_change_event(business_event(InvoiceNumber="CIV-1"))  # the entity's name, not the contract's
    assert handler.source_key(event) is None
    rejected = handler.without_key(event)
    assert rejected.reason == "EventWithoutKey" and "it lacks dataAreaId, InvoiceId" in rejected.description


def test_without_event_keys_the_member_of_the_field_name_is_read() -> None:
    handler = create_handler().bind(spec_with_source(event_keys={}))
    event = parse_change_event(business_event(InvoiceNumber="CIV-7"))
    assert handler.source_key(event) == {"dataAreaId": "usmf", "InvoiceNumber": "CIV-7"}


@pytest.mark.parametrize(("event_keys", "problem"), [
    ({"CustFreeTextInvoicePostedBusinessEvent": {"InvoiceNumber": "InvoiceId"}},
     "source.event_keys.CustFreeTextInvoicePostedBusinessEvent: 'CustFreeTextInvoicePostedBusinessEvent' is not a "
     "business event in source.triggers"),
    ({"Create": {"InvoiceNumber": "InvoiceId"}}, "'Create' is not a business event in source.triggers"),
    ({EVENT: {"InvoiceId": "InvoiceId"}},
     f"source.event_keys.{EVENT}.InvoiceId: 'InvoiceId' is not a field of source.key (dataAreaId, InvoiceNumber)"),
    ({EVENT: {"InvoiceNumber": "Invoice Id"}}, "event member 'Invoice Id' must be a member name"),
])
def test_event_keys_are_checked_when_the_file_loads(event_keys: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as error:
        spec_with_source(event_keys=event_keys)
    assert problem in str(error.value)


def test_event_keys_belong_to_f_and_o_sources() -> None:
    raw = yaml.safe_load((ROOT / "mappings" / "accounts.yaml").read_text())
    raw["source"]["event_keys"] = {EVENT: {"accountnumber": "InvoiceAccount"}}
    with pytest.raises(ValidationError) as error:
        MappingSpec.model_validate(raw)
    assert "only F&O sources take event_keys" in str(error.value)


def test_field_value_gives_what_another_file_writes_with_its_labels_resolved() -> None:
    """The invoice flow closes an order with the processing status orders_back.yaml maps F&O's Invoiced to."""
    back = load_mappings(ROOT / "mappings")["orders_back"]
    labels = ("Active", "Confirmed", "Picked", "Partially Shipped", "Shipped", "Invoiced", "Partially Invoiced",
              "Cancelled")
    options = ChoiceOptions("salesorder", "msdynce_processingstatus",
                            tuple(ChoiceOption(192350000 + n, (label,)) for n, label in enumerate(labels)))
    with pytest.raises(MappedValueError, match="was not resolved"):
        back.field_value("msdynce_processingstatus", {"SalesOrderProcessingStatus": "Invoiced"})
    back.resolve_choices({column_key("salesorder", "msdynce_processingstatus"): options})
    assert back.field_value("msdynce_processingstatus", {"SalesOrderProcessingStatus": "Invoiced"}) == 192350005
    assert back.field_value("msdynce_ismaintainedexternally", {}) is True
    with pytest.raises(KeyError, match="no field writes 'statecode'"):
        back.field_value("statecode", {})
