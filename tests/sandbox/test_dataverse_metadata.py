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
