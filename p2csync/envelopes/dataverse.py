"""Pydantic models of the Dataverse `RemoteExecutionContext` as `DataContractJsonSerializer` writes it
(webhook body, Service Bus message body in the JSON message format).

Shape facts (docs/wire-formats, section 1.4):
* members are PascalCase (the Python attributes are snake_case, the aliases PascalCase);
* collections (`InputParameters`, `OutputParameters`, `SharedVariables`, `PreEntityImages`,
  `PostEntityImages`, `Attributes`, `FormattedValues`, `KeyAttributes`) are lists of `{"key", "value"}`;
* polymorphic values carry `"__type": "<Type>:http://schemas.microsoft.com/xrm/2011/Contracts"`;
  image entities and `OwningExtension` come without `__type`;
* dates are `/Date(ms)/` or `/Date(ms+hhmm)/` (ms since the epoch in UTC; the offset is informational).

Unknown members are ignored everywhere (newer platform versions add members). Attribute values are strict:
an unknown `__type` inside an entity's `Attributes`/`KeyAttributes` is an error, because a handler would
otherwise silently lose a column. Parameter values (`InputParameters`, `OutputParameters`,
`SharedVariables`) other than known types are kept as the raw JSON (messages such as Associate or Retrieve
carry `Relationship`, `ColumnSet`, ... which no handler reads).

Numbers: a JSON number without a fraction is an `int`. Money values become `Decimal` (parsed from the JSON
text when the caller used `json.loads(..., parse_float=Decimal)`, as `parse_change_event` does, so no binary
rounding ever touches an amount). Other fractional numbers (Dataverse float and decimal columns, the
exchange rate) are kept as `float`: Dataverse decimal columns carry at most 10 decimals, float columns are
doubles, and handlers map them onto F&O reals through the mapping engine, which owns rounding.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    StrictBool,
    StrictInt,
    Tag,
    field_validator,
)
from pydantic.alias_generators import to_pascal
from pydantic_core import PydanticCustomError

from ._common import Guid, WcfDate, excerpt, json_type_name

__all__ = [
    "AliasedValue",
    "Entity",
    "EntityCollection",
    "EntityRef",
    "EntityReference",
    "ExecutionContext",
    "Money",
    "OptionSetValue",
    "RemoteExecutionContext",
    "to_python",
]

CONTRACTS_NAMESPACE = "http://schemas.microsoft.com/xrm/2011/Contracts"


class EntityRef(BaseModel):
    """Plain-Python form of a lookup / owner / customer value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    logical_name: str
    name: str | None = None


class _Contract(BaseModel):
    """Base of the wire models: PascalCase aliases, unknown members ignored, immutable."""

    model_config = ConfigDict(alias_generator=to_pascal, extra="ignore", frozen=True)


def _null_as_empty_list(value: Any) -> Any:
    return [] if value is None else value


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise PydanticCustomError("money_value", "expected a number, got {kind} {value}",
                                  {"kind": json_type_name(value), "value": excerpt(value)})
    if isinstance(value, float):
        return Decimal(repr(value))  # shortest round-trip text, not the binary expansion
    return Decimal(value)


# --- typed values -----------------------------------------------------------------------------------

class Money(_Contract):
    value: Annotated[Decimal, BeforeValidator(_to_decimal)]


class OptionSetValue(_Contract):
    value: StrictInt


class EntityReference(_Contract):
    id: Guid
    logical_name: str
    name: str | None = None
    key_attributes: Annotated[list[AttributePair], BeforeValidator(_null_as_empty_list)] = []
    row_version: str | None = None

    def to_ref(self) -> EntityRef:
        return EntityRef(id=self.id, logical_name=self.logical_name, name=self.name)


class Entity(_Contract):
    logical_name: str | None = None
    id: Guid | None = None
    attributes: Annotated[list[AttributePair], BeforeValidator(_null_as_empty_list)] = []
    formatted_values: Annotated[list[FormattedPair], BeforeValidator(_null_as_empty_list)] = []
    key_attributes: Annotated[list[AttributePair], BeforeValidator(_null_as_empty_list)] = []
    entity_state: StrictInt | None = None
    row_version: str | None = None

    def values(self) -> dict[str, Any]:
        """The attributes as plain Python values (see `to_python`)."""
        return {pair.key: to_python(pair.value) for pair in self.attributes}

    def formatted(self) -> dict[str, str]:
        return {pair.key: pair.value for pair in self.formatted_values if pair.value is not None}

    def keys(self) -> dict[str, Any]:
        return {pair.key: to_python(pair.value) for pair in self.key_attributes}


class EntityCollection(_Contract):
    entities: Annotated[list[Entity], BeforeValidator(_null_as_empty_list)] = []
    entity_name: str | None = None
    more_records: StrictBool | None = None


class AliasedValue(_Contract):
    attribute_logical_name: str | None = None
    entity_logical_name: str | None = None
    value: AttributeValue


class OptionSetValueList(_Contract):
    """`OptionSetValueCollection` written as an object. DataContractJsonSerializer writes the collection as
    a bare JSON array (the documented multi-select shape, handled separately); this form is accepted in case
    a serializer wraps it. [GAP] No capture shows the wrapped form: the items are taken from its first array
    member, whatever its name."""

    items: list[OptionSetValue] = []


def _option_set_list_before(data: Any) -> Any:
    if isinstance(data, dict):
        for key, member in data.items():
            if key != "__type" and isinstance(member, list):
                return {"Items": member}
        return {"Items": []}
    return data


_TYPE_TAGS = {
    "Entity": "~Entity",
    "EntityReference": "~EntityReference",
    "Money": "~Money",
    "OptionSetValue": "~OptionSetValue",
    "OptionSetValueCollection": "~OptionSetValueList",
    "EntityCollection": "~EntityCollection",
    "AliasedValue": "~AliasedValue",
}
_MODEL_TAGS = {
    Entity: "~Entity",
    EntityReference: "~EntityReference",
    Money: "~Money",
    OptionSetValue: "~OptionSetValue",
    OptionSetValueList: "~OptionSetValueList",
    EntityCollection: "~EntityCollection",
    AliasedValue: "~AliasedValue",
}


def _scalar_tag(value: Any) -> str | None:
    if value is None:
        return "~null"
    if isinstance(value, bool):
        return "~bool"
    if isinstance(value, int):
        return "~int"
    if isinstance(value, (float, Decimal)):
        return "~float"
    if isinstance(value, datetime):
        return "~date"
    if isinstance(value, str):
        return "~date" if value.startswith("/Date(") else "~str"
    return None


def _type_name(value: dict[str, Any]) -> str | None:
    marker = value.get("__type")
    if isinstance(marker, str):
        return marker.split(":", 1)[0]
    return None


def _attribute_tag(value: Any) -> str:
    """Discriminator of an attribute value. Unknown kinds return a tag that matches no choice, which
    pydantic reports as `union_tag_invalid` (-> "unknown __type ..." / "object without __type")."""
    tag = _scalar_tag(value)
    if tag is not None:
        return tag
    if isinstance(value, list):
        return "~OptionSetValueArray"
    if isinstance(value, dict):
        name = _type_name(value)
        return _TYPE_TAGS.get(name, "~unknown") if name else "~untyped"
    if isinstance(value, BaseModel):
        return _MODEL_TAGS.get(type(value), "~unknown")
    return "~unknown"


def _parameter_tag(value: Any) -> str:
    """Discriminator of a parameter value: like attributes, but tolerant (unknown kinds stay raw)."""
    tag = _scalar_tag(value)
    if tag is not None:
        return tag
    if isinstance(value, list):
        return "~list"
    if isinstance(value, dict):
        name = _type_name(value)
        if name is not None:
            return _TYPE_TAGS.get(name, "~raw")
        if "Attributes" in value:
            return "~Entity"
        if "LogicalName" in value and "Id" in value:
            return "~EntityReference"
        return "~raw"
    if isinstance(value, BaseModel):
        return _MODEL_TAGS.get(type(value), "~raw")
    return "~raw"


_Float = Annotated[float, BeforeValidator(float)]

AttributeValue = Annotated[
    Union[
        Annotated[None, Tag("~null")],
        Annotated[bool, Tag("~bool")],
        Annotated[int, Tag("~int")],
        Annotated[_Float, Tag("~float")],
        Annotated[WcfDate, Tag("~date")],
        Annotated[str, Tag("~str")],
        Annotated[Money, Tag("~Money")],
        Annotated[OptionSetValue, Tag("~OptionSetValue")],
        Annotated[list[OptionSetValue], Tag("~OptionSetValueArray")],
        Annotated[
            OptionSetValueList, BeforeValidator(_option_set_list_before), Tag("~OptionSetValueList")
        ],
        Annotated[EntityReference, Tag("~EntityReference")],
        Annotated[Entity, Tag("~Entity")],
        Annotated[EntityCollection, Tag("~EntityCollection")],
        Annotated[AliasedValue, Tag("~AliasedValue")],
    ],
    Discriminator(_attribute_tag),
]

ParameterValue = Annotated[
    Union[
        Annotated[None, Tag("~null")],
        Annotated[bool, Tag("~bool")],
        Annotated[int, Tag("~int")],
        Annotated[_Float, Tag("~float")],
        Annotated[WcfDate, Tag("~date")],
        Annotated[str, Tag("~str")],
        Annotated[Money, Tag("~Money")],
        Annotated[OptionSetValue, Tag("~OptionSetValue")],
        Annotated[
            OptionSetValueList, BeforeValidator(_option_set_list_before), Tag("~OptionSetValueList")
        ],
        Annotated[EntityReference, Tag("~EntityReference")],
        Annotated[Entity, Tag("~Entity")],
        Annotated[EntityCollection, Tag("~EntityCollection")],
        Annotated[AliasedValue, Tag("~AliasedValue")],
        Annotated[list[Any], Tag("~list")],  # kept raw: no handler reads list parameters
        Annotated[Any, Tag("~raw")],
    ],
    Discriminator(_parameter_tag),
]


class _Pair(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    key: str


class AttributePair(_Pair):
    value: AttributeValue  # required: a missing value must not read as "cleared"


class FormattedPair(_Pair):
    value: str | None = None


class ParameterPair(_Pair):
    value: ParameterValue


class ImagePair(_Pair):
    value: Entity


ParameterPairs = Annotated[list[ParameterPair], BeforeValidator(_null_as_empty_list)]
ImagePairs = Annotated[list[ImagePair], BeforeValidator(_null_as_empty_list)]


# --- the context ------------------------------------------------------------------------------------

class ExecutionContext(_Contract):
    """A `RemoteExecutionContext` with every member optional: the shape of `ParentContext`."""

    business_unit_id: Guid | None = None
    correlation_id: Guid | None = None
    depth: StrictInt | None = None
    initiating_user_id: Guid | None = None
    initiating_user_azure_active_directory_object_id: Guid | None = None
    user_azure_active_directory_object_id: Guid | None = None
    initiating_user_application_id: Guid | None = None
    authenticated_user_id: Guid | None = None
    is_portals_client_call: StrictBool | None = None
    portals_contact_id: Guid | None = None
    input_parameters: ParameterPairs = []
    is_executing_offline: StrictBool | None = None
    is_in_transaction: StrictBool | None = None
    is_offline_playback: StrictBool | None = None
    isolation_mode: StrictInt | None = None
    message_name: str | None = None
    mode: StrictInt | None = None
    operation_created_on: WcfDate | None = None
    operation_id: Guid | None = None
    organization_id: Guid | None = None
    organization_name: str | None = None
    output_parameters: ParameterPairs = []
    owning_extension: EntityReference | None = None
    parent_context: ExecutionContext | None = None
    post_entity_images: ImagePairs = []
    pre_entity_images: ImagePairs = []
    primary_entity_id: Guid | None = None
    primary_entity_name: str | None = None
    request_id: Guid | None = None
    secondary_entity_name: str | None = None
    shared_variables: ParameterPairs = []
    stage: StrictInt | None = None
    user_id: Guid | None = None

    # -- accessors --
    def input_parameter(self, key: str, default: Any = None) -> Any:
        """The (typed model) value of an input parameter; the last one wins on duplicate keys."""
        return _lookup(self.input_parameters, key, default)

    def output_parameter(self, key: str, default: Any = None) -> Any:
        return _lookup(self.output_parameters, key, default)

    def shared_variable(self, key: str, default: Any = None) -> Any:
        return _lookup(self.shared_variables, key, default)

    def target_index(self) -> int | None:
        """Position of `Target` in InputParameters (for error locations)."""
        found = None
        for index, pair in enumerate(self.input_parameters):
            if pair.key == "Target":
                found = index
        return found

    @property
    def target(self) -> Entity | EntityReference | Any | None:
        return self.input_parameter("Target")

    def pre_images(self) -> dict[str, Entity]:
        return {pair.key: pair.value for pair in self.pre_entity_images}

    def post_images(self) -> dict[str, Entity]:
        return {pair.key: pair.value for pair in self.post_entity_images}

    def lineage(self) -> list[ExecutionContext]:
        """This context, then its parents (innermost first)."""
        chain: list[ExecutionContext] = []
        node: ExecutionContext | None = self
        while node is not None and len(chain) < 64:
            chain.append(node)
            node = node.parent_context
        return chain


def _non_empty(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("empty", "empty")
    return value


class RemoteExecutionContext(ExecutionContext):
    """The top-level context: strict about the members a handler needs."""

    message_name: str
    primary_entity_name: str
    primary_entity_id: Guid
    operation_id: Guid

    @field_validator("message_name", "primary_entity_name")
    @classmethod
    def _required_text(cls, value: str) -> str:
        return _non_empty(value)


def _lookup(pairs: list[Any], key: str, default: Any) -> Any:
    found = default
    for pair in pairs:
        if pair.key == key:
            found = pair.value
    return found


def to_python(value: Any) -> Any:
    """A decoded wire value as a plain Python value: Money -> Decimal, OptionSetValue -> int,
    multi-select -> list[int], EntityReference -> EntityRef, Entity -> dict of its attributes,
    EntityCollection -> list of such dicts, AliasedValue -> its value; scalars and datetimes unchanged."""
    if isinstance(value, Money):
        return value.value
    if isinstance(value, OptionSetValue):
        return value.value
    if isinstance(value, OptionSetValueList):
        return [item.value for item in value.items]
    if isinstance(value, EntityReference):
        return value.to_ref()
    if isinstance(value, Entity):
        return value.values()
    if isinstance(value, EntityCollection):
        return [entity.values() for entity in value.entities]
    if isinstance(value, AliasedValue):
        return to_python(value.value)
    if isinstance(value, list):
        return [to_python(item) for item in value]
    return value


for _model in (EntityReference, Entity, AliasedValue, EntityCollection, ExecutionContext,
               RemoteExecutionContext):
    _model.model_rebuild()
