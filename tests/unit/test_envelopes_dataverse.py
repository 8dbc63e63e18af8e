"""Envelope parsing of Dataverse RemoteExecutionContext payloads (webhook / Service Bus JSON format) and of F&O
data events relayed through Dataverse."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from p2csync.envelopes import ChangeEvent, EntityRef, parse_change_event
from p2csync.envelopes.dataverse import Entity, EntityReference, RemoteExecutionContext, to_python

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes"
CLAIMS = "http://schemas.microsoft.com/xrm/2011/Claims/"
ACCOUNT_ID = "44bfc2a7-903e-eb11-a813-000d3ad9c2e1"
CONTACT_ID = "b76b3f4b-1be7-e611-8101-e0071b6af231"
USER_ID = "a0bde583-0537-eb11-bf68-0022489b563d"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def load(name: str) -> dict:
    return json.loads(raw(name))


# --- Create of account ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def created() -> ChangeEvent:
    return parse_change_event(raw("dataverse_create_account.json"))


def test_create_fixture_uses_escaped_slashes_like_the_serializer():
    assert b"http:\\/\\/schemas.microsoft.com" in raw("dataverse_create_account.json")
    assert b"\\/Date(1608007658000)\\/" in raw("dataverse_create_account.json")


def test_create_identity_and_dedupe_key(created: ChangeEvent):
    assert created.source == "dataverse"
    assert created.entity == "account"
    assert created.record_id == ACCOUNT_ID
    assert created.message_name == "Create"
    assert created.source_message_name == "Create"
    assert created.dedupe_key == f"account:{ACCOUNT_ID}:Create:45bfc2a7-903e-eb11-a813-000d3ad9c2e1"


def test_create_is_complete_with_version_from_modifiedon(created: ChangeEvent):
    assert created.is_complete is True
    assert created.trimmed is False
    assert created.version == 1608007658000


def test_create_typed_attribute_values(created: ChangeEvent):
    attrs = created.attributes
    assert attrs["name"] == "Contoso Ltd"
    assert attrs["revenue"] == Decimal("5000000.0") and isinstance(attrs["revenue"], Decimal)
    # money parsed from the JSON text, not through a binary float
    assert str(attrs["creditlimit"]) == "2154.32"
    assert attrs["industrycode"] == 7 and type(attrs["industrycode"]) is int
    assert attrs["statecode"] == 0 and attrs["statuscode"] == 1
    assert attrs["exchangerate"] == 1.0 and type(attrs["exchangerate"]) is float
    assert attrs["primarycontactid"] == EntityRef(id=CONTACT_ID, logical_name="contact", name=None)
    assert attrs["transactioncurrencyid"].name == "US Dollar"
    assert attrs["ownerid"].id == USER_ID  # upper case on the wire
    assert attrs["createdon"] == datetime(2020, 12, 15, 4, 47, 38, tzinfo=UTC)
    assert attrs["createdon"].tzinfo is not None
    assert "modifiedonbehalfby" in attrs and attrs["modifiedonbehalfby"] is None


def test_create_other_members(created: ChangeEvent):
    assert created.formatted["industrycode"] == "Consulting"
    assert created.post_images["AsynchronousStepPrimaryName"] == {"name": "Contoso Ltd", "accountid": ACCOUNT_ID}
    assert created.pre_images == {}
    assert created.initiating_user_id == USER_ID
    assert created.user_id == USER_ID
    assert created.correlation_id == "9d4c7524-a578-4783-b608-73f7b0b68fd2"
    assert created.depth == 1
    assert created.event_time == datetime(2020, 12, 15, 4, 47, 38, tzinfo=UTC)
    assert created.organization == "contoso"
    assert created.tag is None
    assert created.company is None
    assert created.raw_size == len(raw("dataverse_create_account.json"))


def test_change_event_is_frozen(created: ChangeEvent):
    with pytest.raises(Exception):
        created.entity = "contact"  # type: ignore[misc]
    with pytest.raises(Exception):
        created.attributes["primarycontactid"].id = "x"


def test_str_body_and_bytes_body_agree():
    body = raw("dataverse_create_account.json")
    assert parse_change_event(body.decode("utf-8")) == parse_change_event(body)
    assert parse_change_event(bytearray(body)).dedupe_key == parse_change_event(body).dedupe_key


def test_utf8_bom_is_accepted():
    event = parse_change_event(b"\xef\xbb\xbf" + raw("dataverse_create_account.json"))
    assert event.record_id == ACCOUNT_ID


# --- Update with changed columns and a post image ---------------------------------------------------

@pytest.fixture(scope="module")
def updated() -> ChangeEvent:
    return parse_change_event(raw("dataverse_update_account.json"))


def test_update_is_not_complete(updated: ChangeEvent):
    assert updated.message_name == "Update"
    assert updated.is_complete is False
    assert updated.dedupe_key.endswith(":Update:55bfc2a7-903e-eb11-a813-000d3ad9c2e1")


def test_update_target_wins_over_post_image(updated: ChangeEvent):
    attrs = updated.attributes
    assert attrs["telephone1"] == "+1 425 555 0199"
    assert attrs["accountnumber"] == "US-001"  # only in the post image
    assert attrs["name"] == "Contoso Ltd"
    assert attrs["revenue"] == Decimal("6250000.5")
    assert attrs["modifiedby"] == EntityRef(id=USER_ID, logical_name="systemuser", name="Integration User")
    # formatted values merge the same way: the Target's string beats the image's
    assert updated.formatted["revenue"] == "$6,250,000.50"
    assert updated.formatted["statecode"] == "Active"


def test_update_multiselect_and_float(updated: ChangeEvent):
    assert updated.attributes["p2c_regions"] == [100000000, 100000002]
    assert updated.attributes["p2c_score"] == 10.01 and type(updated.attributes["p2c_score"]) is float


def test_update_images_and_version_and_tag(updated: ChangeEvent):
    assert updated.pre_images["PreImage"]["telephone1"] == "+1 425 555 0100"
    assert updated.post_images["PostImage"]["telephone1"] == "+1 425 555 0199"
    assert updated.version == 1608094058000
    # the -0700 suffix is informational: the ms are UTC
    assert updated.event_time == datetime(2020, 12, 16, 4, 47, 38, tzinfo=UTC)
    assert updated.tag == "crm-ui"


def test_version_falls_back_to_post_image():
    data = load("dataverse_update_account.json")
    attrs = data["InputParameters"][0]["value"]["Attributes"]
    data["InputParameters"][0]["value"]["Attributes"] = [a for a in attrs if a["key"] != "modifiedon"]
    image = data["PostEntityImages"][0]["value"]["Attributes"]
    next(a for a in image if a["key"] == "modifiedon")["value"] = "/Date(1608094000000)/"
    assert parse_change_event(json.dumps(data)).version == 1608094000000


# --- Delete -----------------------------------------------------------------------------------------

def test_delete_with_entity_reference_target():
    event = parse_change_event(raw("dataverse_delete_account.json"))
    assert event.message_name == "Delete"
    assert event.record_id == ACCOUNT_ID
    assert event.is_complete is False
    assert event.version is None
    assert event.attributes == {}
    assert event.pre_images["PreImage"]["accountnumber"] == "US-001"


# --- contact Update with a ParentContext --------------------------------------------------------------

@pytest.fixture(scope="module")
def contact() -> ChangeEvent:
    return parse_change_event(raw("dataverse_update_contact_with_parent.json"))


def test_contact_ids_are_lower_cased(contact: ChangeEvent):
    assert contact.record_id == CONTACT_ID
    assert contact.dedupe_key == f"contact:{CONTACT_ID}:Update:75bfc2a7-903e-eb11-a813-000d3ad9c2e1"


def test_tag_is_found_in_parent_context(contact: ChangeEvent):
    assert contact.tag == "fo-sync"


def test_parent_context_is_modelled_recursively():
    ctx = RemoteExecutionContext.model_validate(load("dataverse_update_contact_with_parent.json"))
    parent = ctx.parent_context
    assert parent is not None and parent.stage == 30 and parent.mode == 0
    assert parent.input_parameter("SuppressDuplicateDetection") is False
    assert isinstance(parent.target, Entity)
    assert parent.parent_context is None
    assert [node.stage for node in ctx.lineage()] == [40, 30]
    # newer members are read, not just tolerated
    assert ctx.initiating_user_application_id == "11111111-2222-3333-4444-555555555555"
    assert ctx.is_portals_client_call is False


# --- trimmed payloads -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"headers": {"X-MS-Dynamics-Msg-Size-Exceeded": "true"}},
    {"properties": {"MessageMaxSizeExceeded": True}},
    {"properties": {"MessageMaxSizeExceeded": "True"}},
])
def test_trimmed_create_is_incomplete(kwargs):
    event = parse_change_event(raw("dataverse_create_account_trimmed.json"), **kwargs)
    assert event.trimmed is True
    assert event.is_complete is False
    assert event.attributes == {} and event.version is None
    assert event.dedupe_key == f"account:{ACCOUNT_ID}:Create:85bfc2a7-903e-eb11-a813-000d3ad9c2e1"


def test_trim_flag_on_full_create_makes_it_incomplete():
    event = parse_change_event(raw("dataverse_create_account.json"),
                               headers={"x-ms-dynamics-msg-size-exceeded": ""})
    assert event.trimmed is True and event.is_complete is False


def test_explicit_false_flag_is_not_trimming():
    event = parse_change_event(raw("dataverse_create_account.json"), {"MessageMaxSizeExceeded": "false"})
    assert event.trimmed is False and event.is_complete is True


# --- F&O data event -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_event() -> ChangeEvent:
    return parse_change_event(raw("fno_data_event_custcustomerv3_updated.json"))


def test_data_event_is_normalised(data_event: ChangeEvent):
    assert data_event.source == "fno_data_event"
    assert data_event.entity == "mserp_custcustomerv3entity"
    assert data_event.message_name == "Update"
    assert data_event.source_message_name == "OnExternalUpdated"
    assert data_event.dedupe_key == ("mserp_custcustomerv3entity:5e3f0a2b-7c1d-4e5f-9a8b-0c1d2e3f4a5b:"
                                     "OnExternalUpdated:95bfc2a7-903e-eb11-a813-000d3ad9c2e1")
    assert data_event.company == "usmf"
    assert data_event.is_complete is False
    assert data_event.attributes["mserp_creditlimit"] == Decimal("25000.0")
    assert data_event.pre_images["PreImage"]["mserp_organizationname"] == "Contoso"


def test_data_event_company_from_pre_image_on_delete():
    data = load("fno_data_event_custcustomerv3_updated.json")
    data["MessageName"] = "OnExternalDeleted"
    data["InputParameters"] = [{"key": "Target", "value": {
        "__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
        "Id": data["PrimaryEntityId"], "LogicalName": data["PrimaryEntityName"], "Name": None}}]
    event = parse_change_event(json.dumps(data))
    assert event.message_name == "Delete" and event.source_message_name == "OnExternalDeleted"
    assert event.company == "usmf"


def test_finops_user_agent_claim_marks_a_data_event():
    props = {CLAIMS + "InitiatingUserAgent": "Microsoft.Dynamics.FINOPS.DataEvents/1.0",
             CLAIMS + "EntityLogicalName": "account"}
    assert parse_change_event(raw("dataverse_update_account.json"), props).source == "fno_data_event"
    assert parse_change_event(raw("dataverse_update_account.json"),
                              {CLAIMS + "InitiatingUserAgent": "Mozilla/5.0"}).source == "dataverse"


def test_plain_dataverse_update_has_no_company(updated: ChangeEvent):
    assert updated.source == "dataverse" and updated.company is None


# --- property fallbacks, nil OperationId, tolerance ---------------------------------------------------

def test_user_ids_fall_back_to_claims():
    data = load("dataverse_update_account.json")
    del data["UserId"], data["InitiatingUserId"]
    props = {CLAIMS + "User": "{11111111-AAAA-3333-4444-555555555555}",
             CLAIMS + "InitiatingUser": b"22222222-BBBB-3333-4444-555555555555",
             CLAIMS + "Organization": "Contoso.crm.dynamics.com"}
    event = parse_change_event(json.dumps(data), props)
    assert event.user_id == "11111111-aaaa-3333-4444-555555555555"
    assert event.initiating_user_id == "22222222-bbbb-3333-4444-555555555555"
    assert event.organization == "contoso.crm.dynamics.com"


def test_webhook_headers_give_organization_and_correlation():
    data = load("dataverse_update_account.json")
    del data["CorrelationId"]
    event = parse_change_event(json.dumps(data), headers={
        "x-ms-dynamics-organization": "contoso.crm.dynamics.com", "x-ms-correlation-request-id": "ABC-1"})
    assert event.organization == "contoso.crm.dynamics.com"
    assert event.correlation_id == "abc-1"


def test_nil_operation_id_falls_back_to_request_id_then_body_hash():
    data = load("dataverse_update_account.json")
    data["OperationId"] = "00000000-0000-0000-0000-000000000000"
    assert parse_change_event(json.dumps(data)).dedupe_key.endswith(
        ":Update:3fab629b-b795-4834-a2ca-5a09b2cc6934")
    data["RequestId"] = None
    first = parse_change_event(json.dumps(data)).dedupe_key
    assert first == parse_change_event(json.dumps(data)).dedupe_key
    assert ":Update:sha256-" in first
    data["OperationCreatedOn"] = "/Date(1608094058001)/"
    assert parse_change_event(json.dumps(data)).dedupe_key != first


def test_unknown_members_are_tolerated_everywhere():
    data = load("dataverse_update_account.json")
    data["SomeFutureMember"] = {"nested": [1, 2, 3]}
    data["InputParameters"][0]["value"]["FutureEntityMember"] = "x"
    data["InputParameters"].append({"key": "ColumnSet", "value": {
        "__type": "ColumnSet:http://schemas.microsoft.com/xrm/2011/Contracts", "AllColumns": True}})
    data["PostEntityImages"][0]["value"]["Attributes"][0]["extra"] = 1
    data["OwningExtension"]["Future"] = True
    event = parse_change_event(json.dumps(data))
    assert event.attributes["telephone1"] == "+1 425 555 0199"
    ctx = RemoteExecutionContext.model_validate(data)
    assert ctx.input_parameter("ColumnSet")["AllColumns"] is True  # unknown parameter kept raw


def test_null_collections_are_empty():
    data = load("dataverse_delete_account.json")
    data["PreEntityImages"] = None
    data["SharedVariables"] = None
    data["OutputParameters"] = None
    event = parse_change_event(json.dumps(data))
    assert event.pre_images == {} and event.tag is None


def test_alternate_key_target():
    data = load("dataverse_update_account.json")
    data["InputParameters"][0]["value"]["KeyAttributes"] = [{"key": "accountnumber", "value": "US-001"}]
    assert parse_change_event(json.dumps(data)).key_attributes == {"accountnumber": "US-001"}


# --- typed values -----------------------------------------------------------------------------------

NS = "http://schemas.microsoft.com/xrm/2011/Contracts"


def _entity(attributes: list[dict]) -> Entity:
    return Entity.model_validate({"__type": f"Entity:{NS}", "LogicalName": "email", "Attributes": attributes})


def test_entity_collection_and_aliased_value_and_wrapped_multiselect():
    party = {"__type": f"Entity:{NS}", "LogicalName": "activityparty", "Attributes": [
        {"key": "partyid", "value": {"__type": f"EntityReference:{NS}", "Id": CONTACT_ID,
                                     "LogicalName": "contact", "Name": "Yvonne"}},
        {"key": "participationtypemask", "value": {"__type": f"OptionSetValue:{NS}", "Value": 2}}]}
    entity = _entity([
        {"key": "to", "value": {"__type": f"EntityCollection:{NS}", "Entities": [party],
                                "EntityName": "activityparty", "MoreRecords": False}},
        {"key": "a.name", "value": {"__type": f"AliasedValue:{NS}", "AttributeLogicalName": "name",
                                    "EntityLogicalName": "account",
                                    "Value": {"__type": f"Money:{NS}", "Value": 3}}},
        {"key": "cats", "value": {"__type": f"OptionSetValueCollection:{NS}",
                                  "Items": [{"__type": f"OptionSetValue:{NS}", "Value": 5}]}},
        {"key": "empty_multi", "value": []},
        {"key": "when", "value": "/Date(-62135596800000)/"},
    ])
    values = entity.values()
    assert values["to"] == [{"partyid": EntityRef(id=CONTACT_ID, logical_name="contact", name="Yvonne"),
                             "participationtypemask": 2}]
    assert values["a.name"] == Decimal(3)
    assert values["cats"] == [5]
    assert values["empty_multi"] == []
    assert values["when"] == datetime(1, 1, 1, tzinfo=UTC)


def test_entity_reference_model_and_to_python():
    ref = EntityReference.model_validate({"Id": "{B76B3F4B-1BE7-E611-8101-E0071B6AF231}", "LogicalName": "contact"})
    assert ref.id == CONTACT_ID
    assert to_python(ref) == EntityRef(id=CONTACT_ID, logical_name="contact")
    assert hash(to_python(ref)) == hash(EntityRef(id=CONTACT_ID, logical_name="contact"))


def test_target_value_beats_a_differing_post_image_value():
    data = load("dataverse_update_account.json")
    image = data["PostEntityImages"][0]["value"]["Attributes"]
    next(a for a in image if a["key"] == "telephone1")["value"] = "+1 000 000 0000"
    data["PostEntityImages"].append({"key": "Second", "value": {"LogicalName": "account", "Attributes": [
        {"key": "name", "value": "Later image"}]}})
    attrs = parse_change_event(json.dumps(data)).attributes
    assert attrs["telephone1"] == "+1 425 555 0199"
    assert attrs["name"] == "Later image"  # images merge in order, the later one on top


def test_money_keeps_every_digit_of_the_json_text():
    data = load("dataverse_update_account.json")
    revenue = next(a for a in data["InputParameters"][0]["value"]["Attributes"] if a["key"] == "revenue")
    revenue["value"]["Value"] = "__BIG__"
    body = json.dumps(data).replace('"__BIG__"', "922337203685477.5807")
    assert parse_change_event(body).attributes["revenue"] == Decimal("922337203685477.5807")
