"""Table definitions (metadata) of the simulator's choice columns, as the Dataverse Web API serves them.

``GET EntityDefinitions(LogicalName='salesorder')/Attributes(LogicalName='msdynce_processingstatus')/
Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet($select=Options),
GlobalOptionSet($select=Options)`` answers the column's options with their labels (Web API, "Retrieve schema
definitions by name"; the response shape follows that article's example). ``statecode`` is a
``StateAttributeMetadata`` and ``statuscode`` a ``StatusAttributeMetadata`` (both EnumAttributeMetadata, which
defines OptionSet and GlobalOptionSet: "Query table definitions using the Web API"); every other choice is a
``PicklistAttributeMetadata``. The options come from the sandbox's table definitions (``choice({...})``,
``_state``/``_status``). Authentication, faults and limits are the front's, as for every other route.

The tables themselves ("Query table definitions using the Web API"): ``EntityDefinitions?$select=...&$filter=...``
and ``EntityDefinitions(LogicalName='account')?$select=...`` answer the properties the sandbox models
(``TABLE_PROPERTIES``); ``MetadataId`` is always returned, every match comes in the first response (no paging), and
``$filter`` takes any of those properties. ``EntityDefinitions(LogicalName='account')/Attributes/
Microsoft.Dynamics.CRM.PicklistAttributeMetadata`` answers every column of that type, as one query (the cast is
required to reach ``OptionSet``; a cast to ``EnumAttributeMetadata``, the type that defines it, is not allowed).
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
from sandbox.odata import (
    EnumLiteral, FilterRow, ODataSyntaxError, UnknownProperty, compile_filter, parse_select,
)

METADATA_PATH = "/api/data/v9.2/EntityDefinitions{rest:path}"
LANGUAGE = 1033  # the sandbox's one language (English)
CAST_PREFIX = "Microsoft.Dynamics.CRM."

_PATH = re.compile(
    r"^\(LogicalName='(?P<table>[^']*)'\)/Attributes\(LogicalName='(?P<attribute>[^']*)'\)"
    r"(?:/(?P<cast>[A-Za-z0-9_.]+))?$"
)
_TABLE_PATH = re.compile(r"^\(LogicalName='(?P<table>[^']*)'\)$")
_ATTRIBUTES_PATH = re.compile(r"^\(LogicalName='(?P<table>[^']*)'\)/Attributes(?:/(?P<cast>[A-Za-z0-9_.]+))?$")
#: The enumeration properties among them: (enum type, members).
_ENUMS = {"OwnershipType": ("Microsoft.Dynamics.CRM.OwnershipTypes", frozenset(
    {"None", "UserOwned", "TeamOwned", "BusinessOwned", "OrganizationOwned", "BusinessParented"}))}
#: ODataLib's names of the comparison operators, for its "incompatible types" message.
_OPERATOR_KINDS = {"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual",
                   "lt": "LessThan", "le": "LessThanOrEqual"}
#: The attribute metadata types of choice columns (``attribute_type``); the only casts the sandbox serves.
_CHOICE_TYPES = ("PicklistAttributeMetadata", "StateAttributeMetadata", "StatusAttributeMetadata")
#: The EntityMetadata properties the sandbox models; $select and $filter may name these (and MetadataId).
TABLE_PROPERTIES = ("LogicalName", "EntitySetName", "PrimaryIdAttribute", "PrimaryNameAttribute", "OwnershipType")
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


def _table_or_404(dv: Dataverse, name: str) -> Table:
    table = dv.tables.get(name)
    if table is None:
        # The platform's message for a table it does not know (captured from the Organization service, e.g. in
        # MscrmTools/MscrmTools.PortalCodeEditor#15); [Inferred] that the Web API reports it the same way.
        raise _not_found(f"The entity with a name = '{name}' with namemapping = 'Logical' was not found "
                         "in the MetadataCache.")
    return table


def _check_options(request: Request, allowed: set[str]) -> None:
    for name in request.query_params:
        if name.startswith("$") and name not in allowed:
            # [Inferred] wording and status: the article lists $select, $filter and $expand for definitions
            # and says there is no paging; the sandbox refuses what it does not model instead of ignoring it.
            raise DataverseError(400, "0x80060888", f"The query parameter {name} is not supported on "
                                 "EntityDefinitions by the sandbox.")


def _table_row(table: Table) -> dict[str, Any]:
    return {
        "MetadataId": _stable_id(table.logical_name),
        "LogicalName": table.logical_name,
        "EntitySetName": table.entity_set,
        "PrimaryIdAttribute": table.primary_id,
        "PrimaryNameAttribute": table.primary_name,
        # An OwnershipTypes member; a $filter names it Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'.
        "OwnershipType": "UserOwned" if table.ownership == "user" else "OrganizationOwned",
    }


def _check_select(select: list[str] | None) -> None:
    """Before any row is read: a bad $select is refused whether or not anything matches."""
    for name in select or ():
        if name not in TABLE_PROPERTIES and name != "MetadataId":
            raise DataverseError(400, "0x80060888", f"Could not find a property named '{name}' on type "
                                 f"'{CAST_PREFIX}EntityMetadata' (the sandbox models {', '.join(TABLE_PROPERTIES)}).")


def _selected(row: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    out = {name: row[name] for name in (TABLE_PROPERTIES if select is None else select)}
    out["MetadataId"] = row["MetadataId"]  # "The MetadataId property value is always returned."
    return out


def table_definitions(dv: Dataverse, request: Request, rest: str) -> Response:
    """``EntityDefinitions`` (a filtered collection, no paging) or ``EntityDefinitions(LogicalName='x')``."""
    _check_options(request, {"$select", "$filter"})
    select = parse_select(request.query_params.get("$select"))
    _check_select(select)
    context = f"{_root(request)}$metadata#EntityDefinitions" + (f"({','.join(select)})" if select else "")
    if rest:
        match = _TABLE_PATH.match(rest)
        assert match is not None
        if "$filter" in request.query_params:
            # OData: $filter applies to collections; [Inferred] Dataverse's wording.
            raise DataverseError(400, "0x80060888", "$filter applies to a collection, not to one definition.")
        body = _selected(_table_row(_table_or_404(dv, match["table"])), select)
        return _json({"@odata.context": context + "/$entity", **body})
    rows = [_table_row(table) for table in dv.tables.values()]
    text = request.query_params.get("$filter")
    if text:
        known = {*TABLE_PROPERTIES, "MetadataId"}
        try:
            predicate = compile_filter(text, known.__contains__, _check_operands)
        except UnknownProperty as exc:
            raise DataverseError(400, "0x80060888", f"Could not find a property named '{exc.name}' on type "
                                 f"'{CAST_PREFIX}EntityMetadata'.") from None
        except ODataSyntaxError as exc:
            raise DataverseError(400, "0x80060888", str(exc)) from None
        # [Inferred] strings compare as in the sandbox's row filters (case-insensitively).
        rows = [row for row in rows if predicate(FilterRow(row, dict.get))]
    return _json({"@odata.context": context, "value": [_selected(row, select) for row in rows]})


def _check_operands(prop: str, operator: str, literal: Any) -> None:
    """"you must include the namespace of the enumeration before the string value" (the article): an enum property
    compared with anything but a member of its own enumeration, or a string property with an enum member, is
    refused. [Inferred] wording: ODataLib's messages for operands of incompatible types and unknown members."""
    enum = literal if isinstance(literal, EnumLiteral) else None
    if prop in _ENUMS:
        type_name, members = _ENUMS[prop]
        if enum is not None and enum.type_name == type_name:
            if enum.symbol not in members:
                raise DataverseError(400, "0x80060888",
                                     f"The string '{enum.symbol}' is not a valid enumeration type constant.")
            return
        found = enum.type_name if enum else "Edm.String" if isinstance(literal, str) else "Edm.Int32"
        raise _incompatible(type_name, found, operator)
    if enum is not None:
        raise _incompatible("Edm.String", enum.type_name, operator)


def _incompatible(left: str, right: str, operator: str) -> DataverseError:
    return DataverseError(400, "0x80060888", "A binary operator with incompatible types was detected. Found "
                          f"operand types '{left}' and '{right}' for operator kind '{_OPERATOR_KINDS[operator]}'.")


def _choices_only() -> DataverseError:
    return DataverseError(400, "0x80060888", "The sandbox serves choice column definitions only, cast to their "
                          f"type ({CAST_PREFIX}{', '.join(_CHOICE_TYPES)}).")


def attribute_definitions(dv: Dataverse, request: Request, rest: str) -> Response:
    """Every attribute of one type, cast: ``EntityDefinitions(LogicalName='x')/Attributes/<cast>``."""
    _check_options(request, {"$select", "$expand"})
    match = _ATTRIBUTES_PATH.match(rest)
    assert match is not None
    table = _table_or_404(dv, match["table"])
    cast = match["cast"]
    if cast == f"{CAST_PREFIX}EnumAttributeMetadata":
        # "you cannot cast the attributes to this type" (the article); [Inferred] status and wording.
        raise DataverseError(400, "0x80060888", f"The type '{cast}' cannot be used to cast Attributes: query each "
                             "derived type (PicklistAttributeMetadata, StateAttributeMetadata, ...) separately.")
    kind = cast.removeprefix(CAST_PREFIX) if cast and cast.startswith(CAST_PREFIX) else None
    if kind not in _CHOICE_TYPES:
        raise _choices_only()
    select = parse_select(request.query_params.get("$select"))
    if select is not None and set(select) - {"LogicalName", "MetadataId"}:
        raise DataverseError(400, "0x80060888", "The sandbox's attribute definitions carry LogicalName only "
                             "(and MetadataId).")
    expand = _expansions(request, kind)
    columns = [c for c in table.columns.values()
               if c.type is ColumnType.OPTIONSET and c.readable and attribute_type(c) == kind]
    value = [_attribute_body(table, column, expand) for column in columns]
    return _json({"@odata.context": f"{_root(request)}$metadata#EntityDefinitions('{table.logical_name}')/"
                                    f"Attributes/{cast}", "value": value})


def definitions(dv: Dataverse, request: Request, rest: str) -> Response:
    """``EntityDefinitions{rest}``: tables, a table's attributes of one type, or one attribute."""
    if not rest or _TABLE_PATH.match(rest):
        return table_definitions(dv, request, rest)
    if _ATTRIBUTES_PATH.match(rest):
        return attribute_definitions(dv, request, rest)
    return attribute_definition(dv, request, rest)


def attribute_definition(dv: Dataverse, request: Request, rest: str) -> Response:
    """One attribute's definition with its option sets expanded; 404 for an unknown table or attribute, or for a
    cast to a type the attribute does not have."""
    _check_options(request, {"$select", "$expand"})
    match = _PATH.match(rest)
    if match is None:
        raise DataverseError(404, "0x80060888", f"Resource not found for the segment 'EntityDefinitions{rest}'.")
    table = _table_or_404(dv, match["table"])
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
        raise _choices_only()
    return _definition(request, table, column, kind)


def _expansions(request: Request, kind: str) -> dict[str, str | None]:
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
    return expand


def _attribute_body(table: Table, column: Column, expand: dict[str, str | None]) -> dict[str, Any]:
    body: dict[str, Any] = {"MetadataId": _stable_id(table.logical_name, column.name), "LogicalName": column.name}
    for name, select in expand.items():
        # A local choice's options are in both properties ("You can get the option definition from either
        # property regardless of whether the attribute is configured to use global option sets").
        body[name] = _option_set(table, column, select)
    return body


def _definition(request: Request, table: Table, column: Column, kind: str) -> Response:
    body = {"@odata.context": f"{_root(request)}$metadata#EntityDefinitions('{table.logical_name}')/Attributes/"
                              f"{CAST_PREFIX}{kind}/$entity",
            **_attribute_body(table, column, _expansions(request, kind))}
    return _json(body)


def metadata_routes(dv: Dataverse) -> list[BaseRoute]:
    """The EntityDefinitions route; registered before the generic Web API route, which would take the path
    as an entity set."""

    async def entity_definitions(request: Request) -> Response:
        if request.method != "GET":
            return DataverseError(405, "0x80060888", f"The requested resource does not support "
                                  f"{request.method}.").response()
        try:
            return definitions(dv, request, request.path_params["rest"])
        except DataverseError as exc:
            return exc.response()

    return [Route(METADATA_PATH, entity_definitions, methods=["GET", "POST", "PATCH", "PUT", "DELETE"])]
