"""Attribute values beyond the basic types (issue 7, point 5): image columns (byte[] as a JSON array of
numbers), BooleanManagedProperty, EntityReferenceCollection, multi-select, and kinds never seen. None of
them may turn an event into an error (the webhook would answer 400, which Dataverse does not retry); a value
the parser does not know is kept raw, and only a mapping that reads that column fails, naming it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mappings import MappedValueError, load_mappings
from p2csync.envelopes import EntityRef, parse_change_event
from p2csync.envelopes.dataverse import UnparsedValue
from p2csync.ingress import accept_dataverse_webhook
from p2csync.queue.base import OutboundMessage
from p2csync.settings import ROOT

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes"
CREATE = json.loads((FIXTURES / "dataverse_create_account.json").read_text())
NS = "http://schemas.microsoft.com/xrm/2011/Contracts"
CONTACT_ID = "b76b3f4b-1be7-e611-8101-e0071b6af231"
IMAGE = [137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 255]  # PNG signature and a few bytes

EXTRA_ATTRIBUTES = [
    {"key": "entityimage", "value": IMAGE},
    {"key": "entityimage_timestamp", "value": 638400000000000000},
    {"key": "entityimageid", "value": "5f0c3a1e-4d2b-4c6a-9e8f-1a2b3c4d5e6f"},  # a Guid column: a plain string
    {"key": "iscustomizable", "value": {"__type": f"BooleanManagedProperty:{NS}", "CanBeChanged": True,
                                        "ManagedPropertyLogicalName": "iscustomizableanddeletable",
                                        "Value": True}},
    {"key": "p2c_interests", "value": [{"__type": f"OptionSetValue:{NS}", "Value": 1},
                                       {"__type": f"OptionSetValue:{NS}", "Value": 3}]},
    {"key": "p2c_partners", "value": [{"__type": f"EntityReference:{NS}", "Id": CONTACT_ID, "KeyAttributes": [],
                                       "LogicalName": "contact", "Name": None, "RowVersion": None}]},
    {"key": "p2c_partners_wrapped", "value": {"__type": f"EntityReferenceCollection:{NS}", "Items": [
        {"__type": f"EntityReference:{NS}", "Id": CONTACT_ID, "LogicalName": "contact"}]}},
    {"key": "p2c_future", "value": {"__type": f"FutureThing:{NS}", "Whatever": [1, 2, 3]}},
    {"key": "p2c_untyped", "value": {"Value": 1}},
    {"key": "p2c_words", "value": ["a", "b"]},
]


def body_with(extra: list[dict], *, into_image: bool = False) -> bytes:
    data = copy.deepcopy(CREATE)
    target = data["InputParameters"][0]["value"]["Attributes"]
    target.extend(copy.deepcopy(extra))
    if into_image:
        data["PostEntityImages"][0]["value"]["Attributes"].extend(copy.deepcopy(extra))
    return json.dumps(data).encode()


def test_every_kind_parses_into_a_complete_event():
    event = parse_change_event(body_with(EXTRA_ATTRIBUTES, into_image=True))
    values = event.attributes
    assert event.is_complete
    assert values["entityimage"] == bytes(IMAGE)
    assert values["entityimageid"] == "5f0c3a1e-4d2b-4c6a-9e8f-1a2b3c4d5e6f"
    assert values["iscustomizable"] is True
    assert values["p2c_interests"] == [1, 3]
    [partner] = values["p2c_partners"]
    assert isinstance(partner, EntityRef) and (partner.id, partner.logical_name) == (CONTACT_ID, "contact")
    assert [ref.id for ref in values["p2c_partners_wrapped"]] == [CONTACT_ID]
    assert values["accountnumber"] == "US-001"  # the known columns are untouched


@pytest.mark.parametrize(("column", "kind"), [
    ("p2c_future", "__type 'FutureThing:"),
    ("p2c_untyped", "object without __type"),
    ("p2c_words", "array of string"),
])
def test_unknown_kinds_are_kept_raw_with_a_name(column, kind):
    value = parse_change_event(body_with(EXTRA_ATTRIBUTES)).attributes[column]
    assert isinstance(value, UnparsedValue)
    assert value.unparsed_kind.startswith(kind)
    assert value.raw == next(pair["value"] for pair in EXTRA_ATTRIBUTES if pair["key"] == column)


def test_an_unknown_kind_in_a_pre_image_or_parent_context_is_no_error_either():
    data = copy.deepcopy(CREATE)
    data["ParentContext"] = {"InputParameters": [{"key": "Target", "value": {
        "__type": f"Entity:{NS}", "Attributes": [{"key": "a", "value": {"__type": f"Nope:{NS}"}}]}}]}
    data["PreEntityImages"] = [{"key": "pre", "value": {"Attributes": [{"key": "x", "value": {"Value": 1}}]}}]
    event = parse_change_event(json.dumps(data))
    assert isinstance(event.pre_images["pre"]["x"], UnparsedValue)


async def test_the_webhook_accepts_them_with_202():
    sent: list[OutboundMessage] = []

    class Transport:
        async def send(self, queue: str, message: OutboundMessage) -> None:
            sent.append(message)

        async def schedule(self, queue, message, at):  # pragma: no cover - never called
            raise AssertionError

    result = await accept_dataverse_webhook(body_with(EXTRA_ATTRIBUTES), {}, Transport(), "sales-events")
    assert result.status == 202, result.body
    assert len(sent) == 1


SPEC = load_mappings(ROOT / "mappings")["accounts"]


@pytest.mark.parametrize(("column", "reason"), [
    ("p2c_future", "does not know (__type 'FutureThing:"),
    ("entityimage", "binary data (13 bytes"),
    ("p2c_interests", "holds a list"),
])
def test_a_mapping_that_reads_such_a_column_fails_naming_it(column, reason):
    record = dict(parse_change_event(body_with(EXTRA_ATTRIBUTES)).attributes)
    record["name"] = record[column]  # OrganizationName <- name now holds that value
    with pytest.raises(MappedValueError) as info:
        SPEC.apply(record, default_company="usmf")
    assert info.value.source == "name" and info.value.target == "OrganizationName"
    assert reason in str(info.value)
    assert len(str(info.value)) < 200


def test_a_mapping_that_does_not_read_them_maps_as_before():
    record = parse_change_event(body_with(EXTRA_ATTRIBUTES)).attributes
    plain = parse_change_event(json.dumps(CREATE)).attributes
    resolved = {request.path: "USD" for request in SPEC.lookups(plain)}
    mapped = SPEC.apply(record, resolved=resolved, default_company="usmf")
    assert mapped.payload == SPEC.apply(plain, resolved=resolved, default_company="usmf").payload
    assert "<unparsed" not in json.dumps(mapped.payload, default=str)


def test_a_filter_on_such_a_column_dead_letters_naming_it_instead_of_skipping_silently():
    from mappings import parse_mapping

    text = (ROOT / "mappings" / "accounts.yaml").read_text(encoding="utf-8")
    text = text.replace("on_empty: blank\n", "on_empty: blank\nfilter:\n  - field: p2c_future\n    equals: 1\n", 1)
    spec = parse_mapping(text, "accounts.yaml")
    record = dict(parse_change_event(body_with(EXTRA_ATTRIBUTES)).attributes)
    with pytest.raises(MappedValueError) as info:
        spec.filter_reason(record)
    assert info.value.target == "filter" and info.value.source == "p2c_future"
    assert "does not know" in str(info.value)
    assert spec.filter_reason({**record, "p2c_future": 1}) is None  # a known value filters as before


# --- a malformed value of a KNOWN type (review of point 5) -------------------------------------------

MALFORMED = [
    {"key": "p2c_money_null", "value": {"__type": f"Money:{NS}", "Value": None}},
    {"key": "p2c_money_text", "value": {"__type": f"Money:{NS}", "Value": "12.5"}},
    {"key": "p2c_option_null", "value": {"__type": f"OptionSetValue:{NS}", "Value": None}},
    {"key": "p2c_ref_no_id", "value": {"__type": f"EntityReference:{NS}", "LogicalName": "contact", "Name": None}},
    {"key": "p2c_managed_null", "value": {"__type": f"BooleanManagedProperty:{NS}", "CanBeChanged": True,
                                          "Value": None}},
    {"key": "p2c_choices_bad", "value": [{"__type": f"OptionSetValue:{NS}", "Value": "1"}]},
    {"key": "p2c_when", "value": "/Date(yesterday)/"},
]
MALFORMED_REASONS = {
    "p2c_money_null": "malformed Money, Value: expected a number, got null",
    "p2c_money_text": "malformed Money, Value: expected a number, got string '12.5'",
    "p2c_option_null": "malformed OptionSetValue, Value: expected an integer, got null",
    "p2c_ref_no_id": "malformed EntityReference, Id: missing",
    "p2c_managed_null": "malformed BooleanManagedProperty, Value: expected a boolean, got null",
    "p2c_choices_bad": "malformed OptionSetValueArray, [0].Value: expected an integer, got string '1'",
    "p2c_when": "malformed date, bad /Date()/ string",
}


def malformed_body() -> bytes:
    """The create fixture with the malformed values in the Target, the post image, the Target's
    KeyAttributes, and a FormattedValues label that is not text."""
    data = copy.deepcopy(CREATE)
    target = data["InputParameters"][0]["value"]
    target["Attributes"].extend(copy.deepcopy(MALFORMED))
    target["KeyAttributes"] = [{"key": "p2c_key_money", "value": {"__type": f"Money:{NS}", "Value": None}}]
    target["FormattedValues"].append({"key": "p2c_money_null", "value": {"Value": 1}})
    data["PostEntityImages"][0]["value"]["Attributes"].extend(copy.deepcopy(MALFORMED))
    data["PreEntityImages"] = [{"key": "pre", "value": {"Attributes": copy.deepcopy(MALFORMED)}}]
    return json.dumps(data).encode()


def test_malformed_known_types_parse_into_unparsed_values_with_the_validation_message():
    event = parse_change_event(malformed_body())
    assert event.is_complete and event.attributes["accountnumber"] == "US-001"
    for source in (event.attributes, event.post_images[next(iter(event.post_images))], event.pre_images["pre"]):
        for column, reason in MALFORMED_REASONS.items():
            value = source[column]
            assert isinstance(value, UnparsedValue), column
            assert value.unparsed_kind.startswith(reason), (column, value.unparsed_kind)
    assert isinstance(event.key_attributes["p2c_key_money"], UnparsedValue)
    assert event.formatted["p2c_money_null"].unparsed_kind.startswith("malformed")
    assert event.formatted["industrycode"] == "Consulting"  # the other labels are untouched


def test_a_malformed_modifiedon_leaves_the_version_unknown_so_the_handler_fetches():
    data = copy.deepcopy(CREATE)
    for entity in (data["InputParameters"][0]["value"], data["PostEntityImages"][0]["value"]):
        for pair in entity["Attributes"]:
            if pair["key"] == "modifiedon":
                pair["value"] = "/Date(soon)/"
    event = parse_change_event(json.dumps(data))
    assert isinstance(event.attributes["modifiedon"], UnparsedValue)
    assert event.version is None


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    async def send(self, queue: str, message: OutboundMessage) -> None:
        self.sent.append(message)

    async def schedule(self, queue, message, at):  # pragma: no cover - never called
        raise AssertionError


async def test_the_webhook_accepts_malformed_known_types_with_202():
    transport = _Recorder()
    result = await accept_dataverse_webhook(malformed_body(), {}, transport, "sales-events")
    assert result.status == 202, result.body
    assert len(transport.sent) == 1


@pytest.mark.parametrize(("mutate", "member"), [
    (lambda d: d.update(MessageName=None), "MessageName"),
    (lambda d: d.update(PrimaryEntityId="nope"), "PrimaryEntityId"),
    (lambda d: d.update(InputParameters={"Target": {}}), "InputParameters"),
    (lambda d: d["InputParameters"][0]["value"].update(Attributes={"name": "x"}), "InputParameters[0].value.Attributes"),
    (lambda d: d["InputParameters"][0]["value"].update(Id="nope"), "InputParameters[0].value.Id"),
    (lambda d: d["PostEntityImages"][0].update(value="x"), "PostEntityImages[0].value"),
])
async def test_the_envelope_members_stay_strict_400_naming_the_member(mutate, member):
    data = json.loads(malformed_body())
    mutate(data)
    transport = _Recorder()
    result = await accept_dataverse_webhook(json.dumps(data).encode(), {}, transport, "sales-events")
    assert result.status == 400
    assert result.body["error"]["member"] == member
    assert transport.sent == []


@pytest.mark.parametrize("column", ["p2c_money_text", "p2c_ref_no_id"])
def test_a_mapping_that_reads_a_malformed_column_fails_naming_it_and_the_reason(column):
    record = dict(parse_change_event(malformed_body()).attributes)
    record["name"] = record[column]
    with pytest.raises(MappedValueError) as info:
        SPEC.apply(record, default_company="usmf")
    assert info.value.source == "name" and info.value.target == "OrganizationName"
    assert MALFORMED_REASONS[column] in str(info.value)


def test_a_mapping_that_does_not_read_malformed_columns_maps_as_before():
    record = parse_change_event(malformed_body()).attributes
    plain = parse_change_event(json.dumps(CREATE)).attributes
    resolved = {request.path: "USD" for request in SPEC.lookups(plain)}
    assert (SPEC.apply(record, resolved=resolved, default_company="usmf").payload
            == SPEC.apply(plain, resolved=resolved, default_company="usmf").payload)
