"""ChangeEvent and dedupe_message_id."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from p2csync.envelopes import ChangeEvent, dedupe_message_id, parse_change_event

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes"
ALL = sorted(FIXTURES.glob("*.json"))


def parse(name: str, **kwargs) -> ChangeEvent:
    return parse_change_event((FIXTURES / name).read_bytes(), **kwargs)


def test_every_fixture_parses():
    assert len(ALL) == 7
    sources = {parse(path.name).source for path in ALL}
    assert sources == {"dataverse", "fno_data_event", "fno_business_event"}


def test_change_event_fields_match_the_contract():
    required = {"source", "entity", "record_id", "message_name", "dedupe_key", "version", "attributes",
                "is_complete", "initiating_user_id", "user_id", "tag", "company", "correlation_id", "raw_size"}
    assert required <= set(ChangeEvent.model_fields)


def test_change_event_rejects_unknown_source_and_fields():
    with pytest.raises(ValidationError):
        ChangeEvent(source="sap", entity="x", record_id=None, message_name="Create", source_message_name="Create",
                    dedupe_key="k", version=None, attributes={}, is_complete=False, raw_size=0)
    with pytest.raises(ValidationError):
        ChangeEvent(source="dataverse", entity="x", record_id=None, message_name="Create",
                    source_message_name="Create", dedupe_key="k", version=None, attributes={},
                    is_complete=False, raw_size=0, colour="red")


def test_repr_is_short_and_has_no_attribute_values():
    event = parse("dataverse_create_account.json")
    assert "Contoso" not in repr(event) and "dedupe_key" in repr(event)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_dedupe_message_id_is_deterministic_and_short(path):
    first = parse_change_event(path.read_bytes())
    second = parse_change_event(path.read_bytes())
    message_id = dedupe_message_id(first)
    assert message_id == dedupe_message_id(second)
    assert len(message_id) <= 128
    assert message_id.startswith(f"{first.source}:")
    assert all(ch.isalnum() or ch in ":_-." for ch in message_id)


def test_dedupe_message_id_differs_per_occurrence_and_ignores_delivery_details():
    create = parse("dataverse_create_account.json")
    update = parse("dataverse_update_account.json")
    assert dedupe_message_id(create) != dedupe_message_id(update)
    # the same occurrence delivered by webhook (headers) or Service Bus (properties) gets the same id
    via_webhook = parse("dataverse_update_account.json", headers={"x-ms-correlation-request-id": "a"})
    via_queue = parse("dataverse_update_account.json", properties={"MessageMaxSizeExceeded": "false"})
    assert dedupe_message_id(via_webhook) == dedupe_message_id(via_queue) == dedupe_message_id(update)


def test_dedupe_message_id_with_a_very_long_entity_name():
    data = json.loads((FIXTURES / "fno_business_event_sales_invoice_posted.json").read_text())
    data["BusinessEventId"] = "X" * 300
    event = parse_change_event(json.dumps(data))
    assert len(dedupe_message_id(event)) <= 128


def test_parsing_is_fast():
    bodies = [path.read_bytes() for path in ALL]
    start = time.perf_counter()
    for _ in range(50):
        for body in bodies:
            parse_change_event(body)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{elapsed:.2f}s for {50 * len(bodies)} parses"
