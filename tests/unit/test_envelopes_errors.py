"""Malformed payloads: every EnvelopeError names the member at fault and echoes at most a short excerpt."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from p2csync.envelopes import EnvelopeError, parse_change_event
from p2csync.envelopes.dataverse import UnparsedValue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes"
CREATE = json.loads((FIXTURES / "dataverse_create_account.json").read_text())
NS = "http://schemas.microsoft.com/xrm/2011/Contracts"


def attr_index(name: str) -> int:
    attrs = CREATE["InputParameters"][0]["value"]["Attributes"]
    return next(i for i, pair in enumerate(attrs) if pair["key"] == name)


def error_for(mutate) -> EnvelopeError:
    data = copy.deepcopy(CREATE)
    mutate(data)
    with pytest.raises(EnvelopeError) as info:
        parse_change_event(json.dumps(data))
    return info.value


def target_attrs(data: dict) -> list:
    return data["InputParameters"][0]["value"]["Attributes"]


def test_envelope_error_is_a_value_error_with_member_and_reason():
    err = EnvelopeError("PrimaryEntityId", "missing")
    assert isinstance(err, ValueError)
    assert (err.member, err.reason, str(err)) == ("PrimaryEntityId", "missing", "PrimaryEntityId: missing")


@pytest.mark.parametrize(("body", "reason_start"), [
    (b"", "empty"),
    (b"   ", "empty"),
    (b"not json", "not JSON (Expecting value: line 1 column 1)"),
    (b'{"MessageName": "Create",', "not JSON ("),
    (b"[1, 2]", "expected a JSON object, got array"),
    (b'"Create"', "expected a JSON object, got string"),
    (b"null", "expected a JSON object, got null"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"<Envelope/>", "looks like XML"),
    (b'{"hello": "world"}', "neither a RemoteExecutionContext"),
])
def test_body_errors(body, reason_start):
    with pytest.raises(EnvelopeError) as info:
        parse_change_event(body)
    assert info.value.member == "body"
    assert info.value.reason.startswith(reason_start)


def test_body_of_wrong_python_type():
    with pytest.raises(EnvelopeError) as info:
        parse_change_event(12)  # type: ignore[arg-type]
    assert info.value.member == "body"


@pytest.mark.parametrize("content_type", ["application/msbin1", "application/xml; charset=utf-8", "Text/XML"])
def test_xml_message_formats_are_refused(content_type):
    with pytest.raises(EnvelopeError) as info:
        parse_change_event(json.dumps(CREATE), content_type=content_type)
    assert info.value.member == "ContentType"
    assert "messageformat 2" in info.value.reason


def test_json_content_type_is_accepted():
    assert parse_change_event(json.dumps(CREATE), content_type="application/json; charset=utf-8").record_id


@pytest.mark.parametrize(("mutate", "member", "reason"), [
    (lambda d: d.pop("PrimaryEntityId"), "PrimaryEntityId", "missing"),
    (lambda d: d.update(PrimaryEntityId="not-a-guid"), "PrimaryEntityId", "not a GUID"),
    (lambda d: d.pop("OperationId"), "OperationId", "missing"),
    (lambda d: d.update(MessageName=""), "MessageName", "empty"),
    (lambda d: d.pop("PrimaryEntityName"), "PrimaryEntityName", "missing"),
    (lambda d: d.update(Depth="one"), "Depth", "expected an integer"),
    (lambda d: d.update(Depth="1"), "Depth", "expected an integer"),
    (lambda d: d.update(Depth=1.5), "Depth", "expected an integer"),
    (lambda d: d.update(Stage=True), "Stage", "expected an integer"),
    (lambda d: d.update(IsInTransaction="no"), "IsInTransaction", "expected a boolean"),
    (lambda d: d.update(OperationCreatedOn="2020-12-15"), "OperationCreatedOn", "bad /Date()/ string"),
    (lambda d: d.update(InputParameters={"Target": {}}), "InputParameters", "expected an array"),
    (lambda d: d["InputParameters"].__setitem__(0, "Target"), "InputParameters[0]", "expected an object"),
    (lambda d: d["InputParameters"].pop(0), "InputParameters", "no Target"),
    (lambda d: d["InputParameters"][0].update(value={"__type": f"EntityReference:{NS}", "LogicalName": "account",
                                                     "Id": "44bfc2a7-903e-eb11-a813-000d3ad9c2e1"}),
     "InputParameters[0].value", "Target must be an Entity"),
    (lambda d: d["InputParameters"][0].update(value="x"), "InputParameters[0].value", "Target must be an Entity"),
    (lambda d: target_attrs(d)[attr_index("ownerid")].pop("value"),
     f"InputParameters[0].value.Attributes[{attr_index('ownerid')}].value", "missing"),
    (lambda d: target_attrs(d)[0].pop("key"), "InputParameters[0].value.Attributes[0].key", "missing"),
    (lambda d: d.update(OwningExtension={"LogicalName": "sdkmessageprocessingstep"}), "OwningExtension.Id", "missing"),
    (lambda d: d.update(ParentContext={"Depth": "deep"}), "ParentContext.Depth", "expected an integer"),
])
def test_malformed_context_names_the_member(mutate, member, reason):
    err = error_for(mutate)
    assert err.member == member
    assert reason in err.reason
    assert str(err).startswith(f"{member}: ")


@pytest.mark.parametrize(("mutate", "column", "reason"), [
    (lambda d: target_attrs(d)[attr_index("modifiedon")].update(value="/Date(16080xyz)/"),
     "modifiedon", "malformed date, bad /Date()/ string"),
    (lambda d: target_attrs(d)[attr_index("revenue")]["value"].update(Value="lots"),
     "revenue", "malformed Money, Value: expected a number, got string 'lots'"),
    (lambda d: target_attrs(d)[attr_index("industrycode")]["value"].update(Value=7.5),
     "industrycode", "malformed OptionSetValue, Value: expected an integer"),
    (lambda d: target_attrs(d)[attr_index("ownerid")]["value"].pop("LogicalName"),
     "ownerid", "malformed EntityReference, LogicalName: missing"),
    (lambda d: target_attrs(d).__setitem__(2, {"key": "x", "value": {"__type": f"BooleanManagedProperty:{NS}",
                                                                     "Value": "yes"}}),
     "x", "malformed BooleanManagedProperty, Value: expected a boolean"),
])
def test_a_malformed_attribute_value_is_kept_unparsed_with_the_reason(mutate, column, reason):
    """Issue 7 point 5: a value of a known type that does not validate is no 400 (Dataverse does not retry
    it); it is kept as an UnparsedValue so that only a mapping reading the column fails."""
    data = copy.deepcopy(CREATE)
    mutate(data)
    value = parse_change_event(json.dumps(data)).attributes[column]
    assert isinstance(value, UnparsedValue)
    assert value.unparsed_kind.startswith(reason)


def test_error_message_only_echoes_a_short_excerpt():
    secret = "S" * 5000
    err = error_for(lambda d: d.update(PrimaryEntityId="/Date(" + secret))
    assert len(str(err)) < 200
    err = error_for(lambda d: d.update(Depth=secret))
    assert len(str(err)) < 200
    with pytest.raises(EnvelopeError) as info:
        parse_change_event(b'{"password": "hunter2-' + b"x" * 5000 + b'"}')
    assert "hunter2" not in str(info.value)


def test_trimmed_create_without_target_is_not_an_error():
    data = copy.deepcopy(CREATE)
    data["InputParameters"] = []
    with pytest.raises(EnvelopeError):
        parse_change_event(json.dumps(data))
    event = parse_change_event(json.dumps(data), {"MessageMaxSizeExceeded": "true"})
    assert event.trimmed and not event.is_complete
