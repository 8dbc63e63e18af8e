"""Table definitions (metadata) of the simulator's choice columns, as the Dataverse Web API serves them.

``GET EntityDefinitions(LogicalName='salesorder')/Attributes(LogicalName='msdynce_processingstatus')/
Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet($select=Options),
GlobalOptionSet($select=Options)`` answers the column's options with their labels (Web API, "Retrieve schema
definitions by name"; the response shape follows that article's example). ``statecode`` is a
``StateAttributeMetadata`` and ``statuscode`` a ``StatusAttributeMetadata`` (both EnumAttributeMetadata, which
defines OptionSet and GlobalOptionSet: "Query table definitions using the Web API"); every other choice is a
``PicklistAttributeMetadata``. The options come from the sandbox's table definitions (``choice({...})``,
``_state``/``_status``). Authentication, faults and limits are the front's, as for every other route.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.dataverse import Dataverse, DataverseError
from sandbox.dataverse_api import _json, _root
from sandbox.dataverse_tables import Column, ColumnType, Table

METADATA_PATH = "/api/data/v9.2/EntityDefinitions{rest:path}"
LANGUAGE = 1033  # the sandbox's one language (English)
CAST_PREFIX = "Microsoft.Dynamics.CRM."

_PATH = re.compile(
    r"^\(LogicalName='(?P<table>[^']*)'\)/Attributes\(LogicalName='(?P<attribute>[^']*)'\)"
    r"(?:/(?P<cast>[A-Za-z0-9_.]+))?$"
)
_EXPAND_ITEM = re.compile(r"^(?P<name>OptionSet|GlobalOptionSet)(?:\(\$select=(?P<select>[A-Za-z,]+)\))?$")


def attribute_type(column: Column) -> str:
    """The metadata type of a choice column: state and status columns have their own types."""
    if column.name == "statecode":
        return "StateAttributeMetadata"
    if column.name == "statuscode":
        return "StatusAttributeMetadata"
    return "PicklistAttributeMetadata"


def _stable_id(*parts: str) -> str:
    """A MetadataId that stays the same across restarts (real ids are GUIDs fixed at customisation time)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "p2csync-sandbox-metadata:" + "/".join(parts)))


def _label(text: str, *parts: str) -> dict[str, Any]:
    localized = {"Label": text, "LanguageCode": LANGUAGE, "IsManaged": True,
                 "MetadataId": _stable_id(*parts, "label"), "HasChanged": None}
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": dict(localized)}


def _option_set(table: Table, column: Column, select: str | None) -> dict[str, Any]:
    options = [{"Value": value, "Color": None, "IsManaged": True, "ExternalValue": None, "ParentValues": [],
                "Tag": None, "IsHidden": False, "MetadataId": None, "HasChanged": None,
                "Label": _label(text, table.logical_name, column.name, str(value)),
                "Description": {"LocalizedLabels": [], "UserLocalizedLabel": None}}
               for value, text in column.options.items()]
    body: dict[str, Any] = {"MetadataId": _stable_id(table.logical_name, column.name, "optionset"), "Options": options}
    if select is None:
        body.update({"Name": f"{table.logical_name}_{column.name}", "IsGlobal": False,
                     "OptionSetType": attribute_type(column).removesuffix("AttributeMetadata")})
    return body


def _not_found(message: str) -> DataverseError:
    return DataverseError(404, "0x80041102", message)


def attribute_definition(dv: Dataverse, request: Request, rest: str) -> Response:
    """One attribute's definition with its option sets expanded; 404 for an unknown table or attribute, or for a
    cast to a type the attribute does not have."""
    match = _PATH.match(rest)
    if match is None:
        raise DataverseError(404, "0x80060888", f"Resource not found for the segment 'EntityDefinitions{rest}'.")
    table = dv.tables.get(match["table"])
    if table is None:
        # The platform's message for a table it does not know (captured from the Organization service, e.g. in
        # MscrmTools/MscrmTools.PortalCodeEditor#15); [Inferred] that the Web API reports it the same way.
        raise _not_found(f"The entity with a name = '{match['table']}' with namemapping = 'Logical' was not found "
                         "in the MetadataCache.")
    column = table.column(match["attribute"])
    if column is None or not column.readable:
        # [Inferred] message: no capture of the Web API's answer for an unknown attribute was found.
        raise _not_found(f"Could not find attribute '{match['attribute']}' for entity '{table.logical_name}'.")
    kind = attribute_type(column) if column.type is ColumnType.OPTIONSET else None
    cast = match["cast"]
    if cast is not None and cast != f"{CAST_PREFIX}{kind}":
        # OData: a type-cast segment selects the entity only when it is of that type. [Inferred] Dataverse
        # answers 404 (no capture found); the product never relies on it (it casts by the column's kind).
        raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{cast}'.")
    if kind is None or cast is None:
        raise DataverseError(400, "0x80060888", "The sandbox serves choice column definitions only, cast to "
                             "their type (Microsoft.Dynamics.CRM.PicklistAttributeMetadata, "
                             "StateAttributeMetadata or StatusAttributeMetadata).")
    return _definition(request, table, column, kind)


def _definition(request: Request, table: Table, column: Column, kind: str) -> Response:
    expand: dict[str, str | None] = {}
    for item in filter(None, (request.query_params.get("$expand") or "").split(",")):
        parsed = _EXPAND_ITEM.match(item.strip())
        if parsed is None:
            raise DataverseError(400, "0x80060888", f"Could not find a property named '{item.strip()}' on type "
                                 f"'{CAST_PREFIX}{kind}'.")
        select = parsed["select"]
        if select is not None and set(select.split(",")) - {"Options", "Name", "IsGlobal", "MetadataId"}:
            raise DataverseError(400, "0x80060888", f"Invalid $select in $expand '{item.strip()}'.")
        expand[parsed["name"]] = select
    body: dict[str, Any] = {
        "@odata.context": f"{_root(request)}$metadata#EntityDefinitions('{table.logical_name}')/Attributes/"
                          f"{CAST_PREFIX}{kind}/$entity",
        "MetadataId": _stable_id(table.logical_name, column.name),
        "LogicalName": column.name,
    }
    for name, select in expand.items():
        # A local choice's options are in both properties ("You can get the option definition from either
        # property regardless of whether the attribute is configured to use global option sets").
        body[name] = _option_set(table, column, select)
    return _json(body)


def metadata_routes(dv: Dataverse) -> list[BaseRoute]:
    """The EntityDefinitions route; registered before the generic Web API route, which would take the path
    as an entity set."""

    async def entity_definitions(request: Request) -> Response:
        if request.method != "GET":
            return DataverseError(405, "0x80060888", f"The requested resource does not support "
                                  f"{request.method}.").response()
        try:
            return attribute_definition(dv, request, request.path_params["rest"])
        except DataverseError as exc:
            return exc.response()

    return [Route(METADATA_PATH, entity_definitions, methods=["GET", "POST", "PATCH", "PUT", "DELETE"])]
