"""The Dataverse sandbox serves its choice columns' definitions (table metadata) over loopback HTTP, shaped as in
the Web API article "Retrieve schema definitions by name", behind the same bearer-token check as every route."""

from __future__ import annotations

import httpx
import pytest

from sandbox import SandboxServer
from sandbox.dataverse_tables import PROCESSING_STATUS_OPTIONS, processing_status
from tests.sandbox.conftest import client

EXPAND = {"$select": "LogicalName", "$expand": "OptionSet($select=Options),GlobalOptionSet($select=Options)"}


def definition(table: str, column: str, kind: str = "PicklistAttributeMetadata") -> str:
    return f"EntityDefinitions(LogicalName='{table}')/Attributes(LogicalName='{column}')/Microsoft.Dynamics.CRM.{kind}"


def options(body: dict, name: str = "OptionSet") -> dict[int, str]:
    return {o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"] for o in body[name]["Options"]}


def test_a_choice_column_s_options_with_publisher_prefixed_values(dv: httpx.Client) -> None:
    response = dv.get(definition("salesorder", "msdynce_processingstatus"), params=EXPAND)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["LogicalName"] == "msdynce_processingstatus" and body["MetadataId"]
    assert body["@odata.context"].endswith(
        "$metadata#EntityDefinitions('salesorder')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata/$entity")
    assert options(body) == options(body, "GlobalOptionSet") == PROCESSING_STATUS_OPTIONS
    assert processing_status("Draft") == 192350000 and processing_status("Active") == 192350001
    first = body["OptionSet"]["Options"][0]
    assert first["Label"]["LocalizedLabels"] == [first["Label"]["UserLocalizedLabel"]]
    assert first["Label"]["LocalizedLabels"][0]["LanguageCode"] == 1033
    assert set(body["OptionSet"]) == {"MetadataId", "Options"}  # $select=Options


@pytest.mark.parametrize(("column", "kind", "expected"), [
    ("statecode", "StateAttributeMetadata", {0: "Active", 1: "Submitted", 2: "Canceled", 3: "Fulfilled",
                                             4: "Invoiced"}),
    ("statuscode", "StatusAttributeMetadata", {1: "New", 2: "Pending", 3: "In Progress", 4: "No Money",
                                               100001: "Complete", 100002: "Partial", 100003: "Invoiced"}),
])
def test_state_and_status_columns_have_their_own_metadata_types(dv: httpx.Client, column: str, kind: str,
                                                                expected: dict[int, str]) -> None:
    response = dv.get(definition("salesorder", column, kind), params={"$expand": "OptionSet"})
    assert response.status_code == 200, response.text
    assert options(response.json()) == expected
    assert response.json()["OptionSet"]["OptionSetType"] == kind.removesuffix("AttributeMetadata")
    wrong = dv.get(definition("salesorder", column), params=EXPAND)  # cast to a type it does not have
    assert wrong.status_code == 404 and set(wrong.json()["error"]) == {"code", "message"}


def test_without_a_bearer_token_it_is_401(sandbox: SandboxServer) -> None:
    with client(sandbox.dataverse_api_url, token=None) as anonymous:
        response = anonymous.get(definition("salesorder", "msdynce_processingstatus"), params=EXPAND)
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"code", "message"}


def test_an_unknown_table_or_column_is_404_with_dataverse_s_error_shape(dv: httpx.Client) -> None:
    table = dv.get(definition("salesordr", "msdynce_processingstatus"), params=EXPAND)
    assert table.status_code == 404
    assert table.json() == {"error": {"code": "0x80041102", "message": "The entity with a name = 'salesordr' with "
                                      "namemapping = 'Logical' was not found in the MetadataCache."}}
    column = dv.get(definition("salesorder", "msdynce_processingstatu"), params=EXPAND)
    assert column.status_code == 404 and "msdynce_processingstatu" in column.json()["error"]["message"]
    text = dv.get(definition("salesorder", "ordernumber"), params=EXPAND)  # a text column cast to a choice
    assert text.status_code == 404


def test_a_bad_expand_is_400_and_writes_are_405(dv: httpx.Client) -> None:
    bad = dv.get(definition("salesorder", "msdynce_processingstatus"), params={"$expand": "Options"})
    assert bad.status_code == 400 and "Options" in bad.json()["error"]["message"]
    assert dv.delete(definition("salesorder", "msdynce_processingstatus")).status_code == 405


# ---------------------------------------------------------------------------------- table definitions, collections


def test_table_definitions_by_filter_answer_the_selected_properties_and_the_metadata_id(dv: httpx.Client) -> None:
    """What a client resolving a table's entity set sends (powerplatform-dataverse-client does exactly this)."""
    response = dv.get("EntityDefinitions", params={"$select": "LogicalName,EntitySetName,PrimaryIdAttribute",
                                                   "$filter": "LogicalName eq 'account'"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"].endswith("$metadata#EntityDefinitions(LogicalName,EntitySetName,PrimaryIdAttribute)")
    [account] = body["value"]
    assert account.pop("MetadataId")  # "always returned"
    assert account == {"LogicalName": "account", "EntitySetName": "accounts", "PrimaryIdAttribute": "accountid"}
    every = dv.get("EntityDefinitions", params={"$select": "LogicalName"}).json()["value"]
    assert len(every) > 10  # no paging: every table in the first response

    owned = dv.get("EntityDefinitions", params={
        "$select": "LogicalName", "$filter": "OwnershipType eq Microsoft.Dynamics.CRM.OwnershipTypes'OrganizationOwned'"})
    names = {row["LogicalName"] for row in owned.json()["value"]}
    assert {"transactioncurrency", "systemuser"} <= names and "account" not in names

    one = dv.get("EntityDefinitions(LogicalName='salesorder')", params={"$select": "EntitySetName"})
    assert one.status_code == 200 and one.json()["EntitySetName"] == "salesorders" and one.json()["MetadataId"]
    assert one.json()["MetadataId"] == dv.get("EntityDefinitions", params={
        "$filter": "LogicalName eq 'salesorder'"}).json()["value"][0]["MetadataId"]  # stable across queries


@pytest.mark.parametrize(("params", "status", "text"), [
    ({"$select": "DisplayName"}, 400, "Could not find a property named 'DisplayName'"),
    # refused before any row is read: also when nothing matches
    ({"$select": "DisplayName", "$filter": "LogicalName eq 'nosuch'"}, 400, "Could not find a property named"),
    ({"$filter": "Colour eq 'red'"}, 400, "Could not find a property named 'Colour'"),
    ({"$top": "1"}, 400, "$top"),
    ({"$orderby": "LogicalName"}, 400, "$orderby"),
    # "you must include the namespace of the enumeration before the string value"
    ({"$filter": "OwnershipType eq 'UserOwned'"}, 400, "incompatible types"),
    ({"$filter": "OwnershipType ne Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist'"}, 400, "'NotEqual'"),
    ({"$filter": "OwnershipType eq Microsoft.Dynamics.CRM.OwnershipTypes'Shared'"}, 400,
     "'Shared' is not a valid enumeration type constant"),
    ({"$filter": "LogicalName eq Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'"}, 400, "incompatible types"),
])
def test_what_the_sandbox_does_not_model_is_refused_not_ignored(dv: httpx.Client, params: dict[str, str],
                                                                status: int, text: str) -> None:
    response = dv.get("EntityDefinitions", params=params)
    assert response.status_code == status and text in response.json()["error"]["message"]


def test_every_choice_column_of_a_table_in_one_query_cast_to_its_type(dv: httpx.Client) -> None:
    path = "EntityDefinitions(LogicalName='salesorder')/Attributes/Microsoft.Dynamics.CRM.{}"
    picklists = dv.get(path.format("PicklistAttributeMetadata"), params=EXPAND)
    assert picklists.status_code == 200, picklists.text
    by_name = {a["LogicalName"]: a for a in picklists.json()["value"]}
    assert "msdynce_processingstatus" in by_name and "statecode" not in by_name and "statuscode" not in by_name
    assert options(by_name["msdynce_processingstatus"]) == PROCESSING_STATUS_OPTIONS
    single = dv.get(definition("salesorder", "msdynce_processingstatus"), params=EXPAND).json()
    assert by_name["msdynce_processingstatus"]["MetadataId"] == single["MetadataId"]
    [state] = dv.get(path.format("StateAttributeMetadata"), params={"$expand": "OptionSet"}).json()["value"]
    assert state["LogicalName"] == "statecode"

    # "you cannot cast the attributes to this type" (EnumAttributeMetadata defines OptionSet); unknown table: 404
    enum = dv.get(path.format("EnumAttributeMetadata"), params=EXPAND)
    assert enum.status_code == 400 and "cannot be used to cast Attributes" in enum.json()["error"]["message"]
    assert dv.get(path.format("PicklistAttributeMetadata"), params={"$top": "1"}).status_code == 400
    one = dv.get(definition("salesorder", "statecode", "StateAttributeMetadata"), params={"$top": "1"})
    assert one.status_code == 400 and "$top" in one.json()["error"]["message"]  # one attribute: the same rule
    assert dv.get("EntityDefinitions(LogicalName='salesordr')/Attributes/"
                  "Microsoft.Dynamics.CRM.PicklistAttributeMetadata").status_code == 404
