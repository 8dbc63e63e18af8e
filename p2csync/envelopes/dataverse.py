"""Pydantic models of the Dataverse `RemoteExecutionContext` as `DataContractJsonSerializer` writes it
(webhook body, Service Bus message body in the JSON message format).

Shape facts (docs/wire-formats, section 1.4):
* members are PascalCase (the Python attributes are snake_case, the aliases PascalCase);
* collections (`InputParameters`, `OutputParameters`, `SharedVariables`, `PreEntityImages`,
  `PostEntityImages`, `Attributes`, `FormattedValues`, `KeyAttributes`) are lists of `{"key", "value"}`;
* polymorphic values carry `"__type": "<Type>:http://schemas.microsoft.com/xrm/2011/Contracts"`;
  image entities and `OwningExtension` come without `__type`;
* dates are `/Date(ms)/` or `/Date(ms+hhmm)/` (ms since the epoch in UTC; the offset is informational).

Unknown members are ignored everywhere (newer platform versions add members). Attribute values of the
documented types are modelled (byte[] columns such as `entityimage` arrive as a JSON array of numbers, the
serializer's form of a byte array; `BooleanManagedProperty`, `EntityReferenceCollection`, multi-select
`OptionSetValueCollection`, ...). A value of a kind the parser does not know (a `__type` never seen, an
object without `__type`, an array of something else), and a value of a known kind that does not validate
(a Money whose Value is null or "12.5", an EntityReference without Id, a bad `/Date()/`...), is kept as an
`UnparsedValue` (the second with the validation message): it must not turn the whole event into a 400,
because Dataverse does not retry a 400 and the change would be lost; a mapping that reads such a column
fails with a reason naming it (mappings.values.unwritable_reason). This holds for every attribute value
(Target, images, KeyAttributes, FormattedValues); the envelope's own members (MessageName,
PrimaryEntityId, the shape of InputParameters, an image, a pair) stay strict. Parameter values (`InputParameters`, `OutputParameters`, `SharedVariables`)
other than known types are kept as the raw JSON (messages such as Associate or Retrieve carry
`Relationship`, `ColumnSet`, ... which no handler reads).

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
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic.alias_generators import to_pascal
from pydantic_core import PydanticCustomError

from ._common import Guid, WcfDate, envelope_error_from_validation, excerpt, got, json_type_name

__all__ = [
    "AliasedValue",
    "BooleanManagedProperty",
    "Entity",
    "EntityCollection",
    "EntityRef",
    "EntityReference",
    "ExecutionContext",
    "Money",
    "OptionSetValue",
    "RemoteExecutionContext",
    "UnparsedValue",
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
        raise PydanticCustomError("money_value", "expected a number, got {value}", {"value": got(value)})
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
        # Both fields were validated by this model (Guid, str): constructed, not validated again (issue 11: an
        # account's event carries a dozen lookups, each converted several times).
        return EntityRef.model_construct(id=self.id, logical_name=self.logical_name, name=self.name)


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

    def value(self, name: str) -> Any:
        """One attribute as a plain Python value (the last pair of that name, as in `values`); None if absent."""
        found = None
        for pair in self.attributes:
            if pair.key == name:
                found = pair
        return None if found is None else to_python(found.value)

    def formatted(self) -> dict[str, str | UnparsedValue]:
        return {pair.key: pair.value for pair in self.formatted_values if pair.value is not None}

    def keys(self) -> dict[str, Any]:
        return {pair.key: to_python(pair.value) for pair in self.key_attributes}


class EntityCollection(_Contract):
    entities: Annotated[list[Entity], BeforeValidator(_null_as_empty_list)] = []
    entity_name: str | None = None
    more_records: StrictBool | None = None


class BooleanManagedProperty(_Contract):
    """A managed property (`iscustomizable`, ...): the value and whether it can be changed."""

    value: StrictBool
    can_be_changed: StrictBool | None = None
    managed_property_logical_name: str | None = None


class EntityReferenceList(_Contract):
    """`EntityReferenceCollection` written as an object with a `__type`. [GAP] No capture shows the
    member that holds the items: they are taken from its first array member, whatever its name (the bare
    array form is handled as `~EntityReferenceArray`)."""

    items: list[EntityReference] = []


class UnparsedValue(_Contract):
    """An attribute value the parser could not read, kept as the raw JSON.

    `kind` names it (`__type` name, "object without __type", "array of string", "malformed Money", ...);
    `reason` is the validation message when a value of a known kind did not validate. A mapping that reads
    the column fails with both; nothing else looks at it."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=None)

    kind: str
    raw: Any = None
    reason: str | None = None

    @property
    def unparsed_kind(self) -> str:
        return f"{self.kind}, {self.reason}" if self.reason else self.kind

    def __str__(self) -> str:
        return f"<unparsed {self.kind}>"


def _unparsed_before(data: Any) -> Any:
    if isinstance(data, UnparsedValue):
        return data
    return {"kind": _unparsed_kind(data), "raw": data}


def _unparsed_kind(value: Any) -> str:
    if isinstance(value, dict):
        marker = value.get("__type")
        return f"__type {excerpt(marker)}" if marker is not None else "object without __type"
    if isinstance(value, list):
        kinds = sorted({json_type_name(item) for item in value})
        return f"array of {'/'.join(kinds)}"
    return json_type_name(value)


def _first_array_before(data: Any) -> Any:
    if isinstance(data, dict):
        for key, member in data.items():
            if key != "__type" and isinstance(member, list):
                return {"Items": member}
        return {"Items": []}
    return data


def _bytes_before(data: Any) -> Any:
    return bytes(data) if isinstance(data, list) else data


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


_option_set_list_before = _first_array_before


_TYPE_TAGS = {
    "Entity": "~Entity",
    "EntityReference": "~EntityReference",
    "Money": "~Money",
    "OptionSetValue": "~OptionSetValue",
    "OptionSetValueCollection": "~OptionSetValueList",
    "EntityCollection": "~EntityCollection",
    "AliasedValue": "~AliasedValue",
    "BooleanManagedProperty": "~BooleanManagedProperty",
    "EntityReferenceCollection": "~EntityReferenceList",
}
_MODEL_TAGS = {
    Entity: "~Entity",
    EntityReference: "~EntityReference",
    Money: "~Money",
    OptionSetValue: "~OptionSetValue",
    OptionSetValueList: "~OptionSetValueList",
    EntityCollection: "~EntityCollection",
    AliasedValue: "~AliasedValue",
    BooleanManagedProperty: "~BooleanManagedProperty",
    EntityReferenceList: "~EntityReferenceList",
    UnparsedValue: "~unparsed",
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


def _list_tag(value: list[Any]) -> str:
    """Arrays in an attribute: multi-select (OptionSetValue objects; an empty array is an empty selection),
    a byte[] column (numbers 0-255, e.g. `entityimage`), EntityReferences, else unparsed."""
    if not value or all(isinstance(item, dict) and _type_name(item) == "OptionSetValue" for item in value):
        return "~OptionSetValueArray"
    if all(isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 255 for item in value):
        return "~bytes"
    if all(isinstance(item, dict) and _type_name(item) == "EntityReference" for item in value):
        return "~EntityReferenceArray"
    return "~unparsed"


def _attribute_tag(value: Any) -> str:
    """Discriminator of an attribute value. Kinds the parser does not model are `~unparsed` (kept raw)."""
    tag = _scalar_tag(value)
    if tag is not None:
        return tag
    if isinstance(value, list):
        return _list_tag(value)
    if isinstance(value, dict):
        name = _type_name(value)
        return _TYPE_TAGS.get(name, "~unparsed") if name else "~unparsed"
    if isinstance(value, bytes):
        return "~bytes"
    if isinstance(value, BaseModel):
        return _MODEL_TAGS.get(type(value), "~unparsed")
    return "~unparsed"


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
        tag = _MODEL_TAGS.get(type(value), "~raw")
        return "~raw" if tag == "~unparsed" else tag
    return "~raw"


_Float = Annotated[float, BeforeValidator(float)]


def _unparsed_on_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate an attribute value; one that does not validate becomes an `UnparsedValue` carrying the
    validation message (member inside the value and reason), so only a mapping that reads it fails."""
    try:
        return handler(value)
    except ValidationError as exc:
        error = envelope_error_from_validation(exc)
        reason = error.reason if error.member == "body" else f"{error.member}: {error.reason}"
        return UnparsedValue(kind=f"malformed {_attribute_tag(value).lstrip('~')}", raw=value, reason=reason)


#: Attribute values fall back to `UnparsedValue` (see the module docstring).
_Lenient = WrapValidator(_unparsed_on_error)

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
        Annotated[BooleanManagedProperty, Tag("~BooleanManagedProperty")],
        Annotated[EntityReferenceList, BeforeValidator(_first_array_before), Tag("~EntityReferenceList")],
        Annotated[list[EntityReference], Tag("~EntityReferenceArray")],
        Annotated[bytes, BeforeValidator(_bytes_before), Tag("~bytes")],
        Annotated[UnparsedValue, BeforeValidator(_unparsed_before), Tag("~unparsed")],
    ],
    Discriminator(_attribute_tag),
    _Lenient,
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
        Annotated[BooleanManagedProperty, Tag("~BooleanManagedProperty")],
        Annotated[EntityReferenceList, BeforeValidator(_first_array_before), Tag("~EntityReferenceList")],
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
    value: Annotated[str | None, _Lenient] = None  # a label that is not text: kept as an UnparsedValue


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


#: Decoded values that are already plain: most attribute values, so they skip the chain of model checks.
_PLAIN_TYPES = frozenset({str, int, float, bool, Decimal, datetime, type(None)})


def to_python(value: Any) -> Any:
    """A decoded wire value as a plain Python value: Money -> Decimal, OptionSetValue -> int,
    multi-select -> list[int], EntityReference -> EntityRef, EntityReferenceCollection -> list[EntityRef],
    Entity -> dict of its attributes, EntityCollection -> list of such dicts, AliasedValue and
    BooleanManagedProperty -> their value; byte[] -> bytes; scalars, datetimes and `UnparsedValue`
    unchanged."""
    if type(value) in _PLAIN_TYPES:
        return value
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
    if isinstance(value, BooleanManagedProperty):
        return value.value
    if isinstance(value, EntityReferenceList):
        return [item.to_ref() for item in value.items]
    if isinstance(value, list):
        return [to_python(item) for item in value]
    return value


for _model in (EntityReference, EntityReferenceList, Entity, AliasedValue, EntityCollection, ExecutionContext,
               RemoteExecutionContext):
    _model.model_rebuild()
