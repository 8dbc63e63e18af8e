"""The mapping format (pydantic models) and the pure functions that apply a mapping to one record.

The class docstrings and field descriptions below become the JSON Schema that editors show while a consultant
edits a mapping file, so they are written for that reader.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .catalog import field_problem
from .choices import ChoiceLabel, ChoiceOptions, ChoiceUse, column_key, resolve_uses
from .discounts import DiscountSplitError, split_line_discount
from .errors import MappedValueError, format_loc
from .fno_values import DoesNotFit, TooLong, fit, key_value
from .transforms import TransformError, TransformStep, parse_transforms, transform_json_schema
from .values import Unparsed, compare_key, is_empty, is_entity_ref, iso_datetime, payload_hash, unwritable_reason

# ----------------------------------------------------------------------------------------------------------------
# Small value types
# ----------------------------------------------------------------------------------------------------------------

Scalar = bool | int | float | str | None
"""A constant in a mapping file: text, number, true/false or null."""

MapKey = bool | int | str

#: The messages of F&O data events (as the envelope parser names them); any other trigger of an F&O source is a
#: business event id.
DATA_EVENT_MESSAGES = frozenset({"Create", "Update", "Delete"})


def _choice_or_scalar(raw: Any) -> Any:
    """A constant, or a Dataverse choice option named by its label ({label: Active})."""
    if isinstance(raw, ChoiceLabel) or raw is None or isinstance(raw, (bool, int, float, str)):
        return raw
    if isinstance(raw, Mapping):
        if set(raw) != {"label"} or not isinstance(raw["label"], str) or not raw["label"].strip():
            raise ValueError(f"a choice option named by its label is written {{label: Active}} (got {dict(raw)!r})")
        return ChoiceLabel(label=raw["label"])
    raise ValueError(f"expected text, a number, true/false, null or {{label: ...}}; got {raw!r}")


_LABEL_SCHEMA = {
    "type": "object",
    "description": " ".join((ChoiceLabel.__doc__ or "").split()),
    "properties": {"label": {"type": "string", "minLength": 1, "description": "The option's label as Sales shows it."}},
    "required": ["label"],
    "additionalProperties": False,
}

ChoiceValue = Annotated[
    Any,
    PlainValidator(_choice_or_scalar),
    WithJsonSchema({"anyOf": [{"type": ["string", "number", "boolean", "null"]}, _LABEL_SCHEMA]}),
]
"""A constant, or {label: ...}: a Dataverse choice option by its label, resolved to the environment's value."""

#: Resolves a choice label of a column (of the table the caller knows) to its value in this environment.
LabelResolver = Callable[[str, ChoiceLabel], int]

OnEmpty = Literal["omit", "null", "blank"]

_GUID_TEXT = re.compile(r"^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PLAIN = re.compile(rf"^{_NAME}$")
_DOTTED = re.compile(rf"^({_NAME})\.({_NAME})$")
_POLY = re.compile(rf"^({_NAME})((?:\.{_NAME}\({_NAME}\))+)$")
_POLY_PART = re.compile(rf"\.({_NAME})\(({_NAME})\)")


@dataclass(frozen=True)
class SourcePath:
    """A source reference: a column (``name``), a column of the row a lookup points to
    (``transactioncurrencyid.isocurrencycode``), or a polymorphic lookup naming the column per related table
    (``customerid.Account(accountnumber).Contact(msdynce_contactnumber)``)."""

    text: str
    attribute: str
    column: str | None = None
    by_table: tuple[tuple[str, str], ...] = ()

    @property
    def is_lookup(self) -> bool:
        return self.column is not None or bool(self.by_table)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.by_table)

    def column_for(self, logical_name: str) -> str | None:
        """The column to read on a related row of that table (None: the path does not cover that table)."""
        if self.column is not None:
            return self.column
        for table, column in self.by_table:
            if table.casefold() == logical_name.casefold():
                return column
        return None

    def __str__(self) -> str:
        return self.text


def parse_path(text: str) -> SourcePath:
    if not isinstance(text, str):
        raise ValueError(f"a column name is text, got {text!r}")
    text = text.strip()
    if _PLAIN.match(text):
        return SourcePath(text, text)
    if m := _DOTTED.match(text):
        return SourcePath(text, m.group(1), m.group(2))
    if m := _POLY.match(text):
        return SourcePath(text, m.group(1), None, tuple(_POLY_PART.findall(m.group(2))))
    raise ValueError(
        f"'{text}' is not a column name: write 'column', 'lookup.column' or "
        "'lookup.Table1(column1).Table2(column2)'"
    )


def _parse_sources(raw: Any) -> tuple[SourcePath, ...]:
    if raw is None:
        return ()
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise ValueError("give at least one source column")
        return tuple(p if isinstance(p, SourcePath) else parse_path(p) for p in raw)
    if isinstance(raw, SourcePath):
        return (raw,)
    return (parse_path(raw),)


_PATH_SCHEMA = {
    "type": "string",
    "pattern": rf"^{_NAME}(\.{_NAME}|(\.{_NAME}\({_NAME}\))+)?$",
}

Sources = Annotated[
    tuple[SourcePath, ...],
    PlainValidator(_parse_sources),
    WithJsonSchema(
        {
            "description": "Source column; 'lookup.column' reads a column of the related row (Data Integrator "
            "style, e.g. transactioncurrencyid.isocurrencycode); "
            "'lookup.Table1(col1).Table2(col2)' picks the column by the related row's table. A list means: "
            "the first of these that is not empty.",
            "anyOf": [_PATH_SCHEMA, {"type": "array", "items": _PATH_SCHEMA, "minItems": 1}],
        }
    ),
]

Transforms = Annotated[
    tuple[TransformStep, ...],
    PlainValidator(parse_transforms),
    WithJsonSchema(transform_json_schema()),
]


def _show(value: Any) -> str:
    if is_entity_ref(value):
        return f"{value.logical_name} {value.id}" + (f" ({value.name})" if getattr(value, "name", None) else "")
    if isinstance(value, str):
        return repr(value)
    return str(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ----------------------------------------------------------------------------------------------------------------
# Format
# ----------------------------------------------------------------------------------------------------------------


class Source(_Strict):
    """Where the records come from."""

    system: Literal["dataverse", "fno"] = Field(description="'dataverse' (Dynamics 365 Sales) or 'fno'.")
    table: str = Field(
        description="Dataverse table logical name (account), or the F&O entity / virtual table the events name."
    )
    entity_set: str | None = Field(
        None, description="Entity set used to fetch a full record: Dataverse Web API (accounts) or F&O OData."
    )
    id_column: str | None = Field(None, description="Primary id column of the source (accountid).")
    version_field: str | None = Field(
        None, description="Column that orders the states of one record (Dataverse: modifiedon)."
    )
    triggers: list[str] = Field(
        default_factory=lambda: ["Create", "Update"],
        description="Messages (Create, Update, ...) or F&O business event ids that start this flow.",
    )
    columns: list[str] = Field(
        default_factory=list,
        description="Extra columns to fetch. Those the fields, filter and company routing read are added "
        "automatically.",
    )
    lookup_entity_sets: dict[str, str] = Field(
        default_factory=dict,
        description="Web API entity set of a related table whose set name is not the usual plural of its "
        "logical name (table -> entity set). Lookup paths use it to fetch the related row.",
    )
    key: list[str] = Field(
        default_factory=list,
        description="F&O sources: the fields that identify a row of entity_set (dataAreaId first), e.g. "
        "[dataAreaId, ProductNumber]. Each event names them (a data event as mserp_<field, lower case>, a "
        "business event by the field's name); the row is then read from F&O by this key.",
    )
    event_keys: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="F&O sources: which member of a business event carries which key field, when the event's "
        "contract names it differently (business event id -> {key field: event member}), e.g. "
        "{SalesInvoicePostedBusinessEvent: {InvoiceNumber: InvoiceId}}. Key fields not listed are read from the "
        "member of the same name; dataAreaId from the event's legal entity (BusinessEventLegalEntity).",
    )


def default_entity_set(logical_name: str) -> str:
    """The Dataverse Web API entity set name that a table gets by default: the plural of its logical name
    (account -> accounts, transactioncurrency -> transactioncurrencies, customeraddress -> customeraddresses)."""
    name = logical_name.strip().lower()
    if name.endswith("y") and len(name) > 1 and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    if name.endswith(("s", "x", "z", "ch", "sh")):
        return name + "es"
    return name + "s"


class Target(_Strict):
    """Where the records go."""

    system: Literal["dataverse", "fno"] = Field(description="'fno' or 'dataverse'.")
    entity_set: str = Field(
        description="OData entity set written to (CustomersV3). Change it here for another F&O version."
    )
    table: str | None = Field(None, description="Dataverse table logical name, when the target is Dataverse.")
    key: list[str] = Field(
        min_length=1, description="Fields that identify the target record (F&O: dataAreaId first)."
    )


class ParentRouting(_Strict):
    """The record's company is its parent's: ``lookup`` names the column pointing to the parent row, ``flow`` the
    flow that syncs the parent table (its company block routes the parent row). When that flow is not loaded,
    this file's own company block routes the parent row."""

    lookup: str = Field(description="Lookup column pointing to the parent row (parentcustomerid).")
    flow: str = Field(description="Flow whose company routing the parent row follows (accounts).")
    flows: dict[str, str] = Field(
        default_factory=dict,
        description="For a lookup to several tables (customerid: account or contact): table -> flow whose routing "
        "a parent row of that table follows; tables not listed follow 'flow'.",
    )
    must_exist: bool = Field(
        True,
        description="true: the parent's counterpart (that flow's target, keyed by the parent's number) must "
        "exist in F&O before this record is written; until it does the message is deferred with a reason "
        "naming the parent, and dead-lettered after the deferral limit.",
    )


    def flow_for(self, table: str) -> str:
        return self.flows.get(table, self.flow)


class CompanyRouting(_Strict):
    """Which F&O company (dataAreaId) a record belongs to, like the organisation mapping of a Data Integrator
    connection set. Order: the business_units entry for the record's business unit, else the run-time setting
    FNO_DEFAULT_COMPANY, else 'default' below."""

    default: str | None = Field(
        None, description="Company used when nothing else routes the record; FNO_DEFAULT_COMPANY overrides it."
    )
    source_column: str | None = Field(
        None,
        description="Source column that decides the company. Default: owningbusinessunit for a Dataverse "
        "source, dataAreaId for an F&O source.",
    )
    business_units: dict[str, str] = Field(
        default_factory=dict,
        description="Business unit (GUID or name, case ignored) -> company (dataAreaId).",
    )
    unmapped: Literal["default", "error", "keep"] | None = Field(
        None,
        description="A business unit not listed: 'default' company (default for a Dataverse source), 'error' "
        "(dead-letter the record), 'keep' the source value as the company (default for an F&O source).",
    )
    target_field: str | None = Field(
        None, description="Target field that receives the company. Default: dataAreaId when the target is F&O."
    )
    parent: ParentRouting | None = Field(
        None,
        description="Route like a parent record instead: the record goes to the company that another flow's "
        "routing gives the row a lookup points to (a contact person belongs in its account's company).",
    )

    _index: dict[tuple[str, Any], str] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        index: dict[tuple[str, Any], str] = {}
        for unit, company in self.business_units.items():
            index[compare_key(unit)] = company
        self._index = index


class ValueMap(_Strict):
    """Translates source values to target values (countries, option sets, units). Text keys ignore case and
    surrounding spaces; numbers match whatever their type (3 == 3.0)."""

    description: str | None = Field(None, description="What the map is for.")
    map: dict[MapKey, ChoiceValue] = Field(
        description="source value -> target value; a target written to a Dataverse choice column can name the "
        "option by its label: {label: Confirmed}"
    )
    default: ChoiceValue = Field(
        None, description="Target value for source values not in the map (unmapped: default)."
    )
    unmapped: Literal["error", "default", "keep"] = Field(
        "error",
        description="A source value not in the map: 'error' (dead-letter the record with the value in the "
        "reason), 'default' (use 'default'), 'keep' (pass the value through unchanged).",
    )

    _index: dict[tuple[str, Any], Any] = PrivateAttr(default_factory=dict)

    @field_validator("map")
    @classmethod
    def _no_clashes(cls, value: dict[MapKey, Any]) -> dict[MapKey, Any]:
        seen: dict[tuple[str, Any], MapKey] = {}
        for key in value:
            norm = compare_key(key)
            if norm in seen:
                raise ValueError(f"keys {seen[norm]!r} and {key!r} are the same (case and spaces are ignored)")
            seen[norm] = key
        return value

    @model_validator(mode="after")
    def _default_given(self) -> ValueMap:
        if self.unmapped == "default" and "default" not in self.model_fields_set:
            raise ValueError("unmapped: default needs a 'default' value")
        return self

    def model_post_init(self, context: Any) -> None:
        self._index = {compare_key(k): v for k, v in self.map.items()}

    def labels(self) -> list[tuple[tuple[Any, ...], ChoiceLabel]]:
        """The choice labels among the targets, with their place under the map."""
        found = [(("map", str(k)), v) for k, v in self.map.items() if isinstance(v, ChoiceLabel)]
        if isinstance(self.default, ChoiceLabel):
            found.append((("default",), self.default))
        return found

    def translate(self, value: Any) -> Any:
        """The target value (a ChoiceLabel for the caller to resolve); raises LookupError when the value is not
        mapped and unmapped is 'error'."""
        norm = compare_key(value)
        if norm in self._index:
            return self._index[norm]
        if self.unmapped == "default":
            return self.default
        if self.unmapped == "keep":
            return value
        raise LookupError(value)


class Condition(_Strict):
    """One filter condition on a source column, e.g. {field: statecode, equals: 0}. Give the column and exactly
    one test; or 'any' with a list of conditions of which one must hold. A Dataverse choice column can be tested
    against an option's label: {field: msdynce_processingstatus, equals: {label: Active}}."""

    field: str | None = Field(
        None, description="Source column tested; 'lookup.column' tests a column of the related row (a line's "
        "productid.msdynce_ismaintainedexternally), which the handler reads before filtering.")
    equals: ChoiceValue = Field(
        None, description="The column must equal this value (text ignores case); {label: ...} for a choice option."
    )
    not_equals: ChoiceValue = Field(None, description="The column must not equal this value.")
    in_: list[ChoiceValue] | None = Field(None, alias="in", description="The column must be one of these values.")
    not_in: list[ChoiceValue] | None = Field(None, description="The column must be none of these values.")
    not_empty: bool | None = Field(
        None, description="true: the column must have a value; false: it must be empty."
    )
    points_to: list[str] | None = Field(
        None,
        description="The column is a lookup to a row of one of these tables (e.g. [account]: a contact's company "
        "is an account, not a contact). An empty lookup fails.",
    )
    any: list[Condition] | None = Field(None, description="At least one of these conditions must hold.")

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [n for n in ("equals", "not_equals", "in_", "not_in", "not_empty", "points_to")
                 if n in self.model_fields_set]
        shown = [("in" if n == "in_" else n) for n in tests]
        if self.any is not None:
            if self.field is not None or tests:
                raise ValueError("'any' stands alone: put the column tests inside it")
            if not self.any:
                raise ValueError("'any' needs at least one condition")
            return self
        if self.field is None:
            raise ValueError("a condition needs 'field' (or 'any')")
        if not (_PLAIN.match(self.field) or _DOTTED.match(self.field)):
            raise ValueError(f"filter column '{self.field}' must be a column name or 'lookup.column'")
        if len(tests) != 1:
            raise ValueError(
                "give exactly one of equals, not_equals, in, not_in, not_empty, points_to"
                + (f" (found {', '.join(shown)})" if shown else "")
            )
        return self

    def columns(self) -> list[str]:
        if self.any is not None:
            return [c for cond in self.any for c in cond.columns()]
        return [self.field] if self.field else []

    def labels(self, at: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str, ChoiceLabel]]:
        """(place in the file, column, label) of every choice label this condition compares with."""
        if self.any is not None:
            return [found for j, cond in enumerate(self.any) for found in cond.labels((*at, "any", j))]
        out: list[tuple[tuple[Any, ...], str, ChoiceLabel]] = []
        for name, shown in (("equals", "equals"), ("not_equals", "not_equals")):
            if isinstance(value := getattr(self, name), ChoiceLabel):
                out.append(((*at, shown), self.field or "", value))
        for name, shown in (("in_", "in"), ("not_in", "not_in")):
            for i, value in enumerate(getattr(self, name) or []):
                if isinstance(value, ChoiceLabel):
                    out.append(((*at, shown, i), self.field or "", value))
        return out

    def failure(self, record: Mapping[str, Any], resolve: LabelResolver | None = None) -> str | None:
        """None when the record passes, else why it does not. ``resolve`` gives the value of a choice label
        (MappingSpec.filter_reason passes the spec's resolved labels)."""
        if self.any is not None:
            reasons = [cond.failure(record, resolve) for cond in self.any]
            if any(r is None for r in reasons):
                return None
            return "none of: " + "; ".join(r for r in reasons if r)
        assert self.field is not None
        value = record.get(self.field)
        shown = "empty" if is_empty(value) else _show(value)
        if "points_to" in self.model_fields_set:
            tables = [t.strip().casefold() for t in self.points_to or []]
            if not is_entity_ref(value):
                return f"{self.field} is {shown}, expected a lookup to {' or '.join(self.points_to or [])}"
            if str(value.logical_name).casefold() not in tables:
                return f"{self.field} points to a {value.logical_name}, expected {' or '.join(self.points_to or [])}"
            return None
        if "not_empty" in self.model_fields_set:
            if bool(self.not_empty) != (not is_empty(value)):
                return f"{self.field} is {shown}, expected it {'not ' if self.not_empty else ''}to be empty"
            return None
        key = compare_key(value)
        field_name = self.field

        def expected(v: Any) -> Any:
            if not isinstance(v, ChoiceLabel):
                return v
            if resolve is None:
                raise MappedValueError("filter", field_name, None, f"choice label {v} was not resolved; the "
                                       "runtime reads the labels' values from Dataverse first")
            return resolve(field_name, v)

        def shown_expected(v: Any) -> str:
            return f"{v.label} ({expected(v)})" if isinstance(v, ChoiceLabel) else _show(v)

        if "equals" in self.model_fields_set:
            if key != compare_key(expected(self.equals)):
                return f"{self.field} is {shown}, expected {shown_expected(self.equals)}"
        elif "not_equals" in self.model_fields_set:
            if key == compare_key(expected(self.not_equals)):
                return f"{self.field} is {shown}, expected anything else"
        elif "in_" in self.model_fields_set:
            if key not in {compare_key(expected(v)) for v in self.in_ or []}:
                return f"{self.field} is {shown}, expected one of {', '.join(map(shown_expected, self.in_ or []))}"
        elif "not_in" in self.model_fields_set:
            if key in {compare_key(expected(v)) for v in self.not_in or []}:
                return (f"{self.field} is {shown}, expected none of "
                        f"{', '.join(map(shown_expected, self.not_in or []))}")
        return None


class FieldMap(_Strict):
    """One target field and where its value comes from: a source column ('source') or a constant ('value')."""

    target: str = Field(description="Target field (F&O: the OData field name, e.g. CustomerAccount).")
    source: Sources = Field((), description="Source column(s); see the type description.")
    value: ChoiceValue = Field(
        None, description="A constant written to every record (instead of 'source'); {label: ...} names an option "
        "of a Dataverse choice column."
    )
    default: ChoiceValue = Field(
        None, description="Written when the source is empty; used as is (not value-mapped or transformed)."
    )
    value_map: str | None = Field(None, description="Name of a map under value_maps applied to the source value.")
    transform: Transforms = Field(())
    required: bool = Field(
        False, description="true: an empty value (after default) rejects the record with a reason naming the field."
    )
    on_empty: OnEmpty | None = Field(
        None,
        description="Empty source and no default: 'omit' the field, send 'null', or send 'blank' (\"\"). "
        "Default: the file's on_empty.",
    )
    too_long: TooLong = Field(
        "reject",
        description="A text longer than the F&O field allows (its EDT length, see catalog/fno_limits.txt): "
        "'reject' the record with a reason naming the field, its limit and the value's length (default), or "
        "'truncate' it to the limit. Never 'truncate' on a key field.",
    )

    @model_validator(mode="after")
    def _one_origin(self) -> FieldMap:
        has_value = "value" in self.model_fields_set
        if has_value and self.source:
            raise ValueError("give either 'source' or 'value', not both")
        if not has_value and not self.source:
            raise ValueError("give 'source' (a column) or 'value' (a constant)")
        if has_value:
            extra = [
                n
                for n in ("default", "value_map", "transform", "required", "on_empty", "too_long")
                if n in self.model_fields_set
            ]
            if extra:
                raise ValueError(f"a constant 'value' takes no {', '.join(extra)}")
        if not parse_target_ok(self.target):
            raise ValueError(f"'{self.target}' is not a field name")
        return self

    @property
    def is_constant(self) -> bool:
        return not self.source

    @property
    def source_label(self) -> str | None:
        return " | ".join(p.text for p in self.source) if self.source else None


def parse_target_ok(text: str) -> bool:
    try:
        parse_path(text)
    except ValueError:
        return False
    return True


class LineSource(_Strict):
    """Where the lines come from, and how a line finds its document."""

    table: str = Field(description="Line table (quotedetail) or F&O line entity.")
    entity_set: str | None = Field(None, description="Entity set used to fetch lines (quotedetails).")
    id_column: str | None = Field(None, description="Primary id column of a line.")
    parent_column: str = Field(description="Column of the line pointing to its document (quoteid, SalesOrderNumber).")
    sequence_column: str = Field(
        description="Column holding the stable line number (Sales sequencenumber, F&O LineCreationSequenceNumber)."
    )
    version_field: str | None = Field(None, description="Column that orders the states of one line.")
    triggers: list[str] = Field(default_factory=lambda: ["Create", "Update"], description="Messages that start it.")
    columns: list[str] = Field(default_factory=list, description="Extra columns to fetch.")
    header_filter_fields: dict[str, str] = Field(
        default_factory=dict,
        description="F&O sources: header filter fields the line entity repeats, as {header field: line field} "
        "(CDSSalesOrderLines carries the order's processing status and customer flags). A line's data event whose "
        "own values show its document failing the header filter is skipped without reading F&O.",
    )


class LineTarget(_Strict):
    """Where the lines go. The key is the document number plus the line sequence number (plus dataAreaId)."""

    entity_set: str = Field(description="OData entity set of the lines (CDSSalesQuotationLines).")
    table: str | None = Field(None, description="Dataverse table logical name, when the target is Dataverse.")
    key: list[str] = Field(min_length=1, description="e.g. [dataAreaId, SalesQuotationNumber, LineCreationSequenceNumber]")


class Reference(_Strict):
    """A record in F&O that this one names and that must exist before it is written: the customer of a quote,
    the released product of a line. It is looked up in the document's company with the same read as the
    document (no extra call); while it is missing the message is deferred with a reason naming it, and after
    the deferral limit dead-lettered."""

    field: str = Field(description="Target field of this mapping holding the reference (RequestingCustomerAccountNumber).")
    entity_set: str = Field(description="F&O entity set where it must exist (CustomersV3).")
    key_field: str = Field(description="Field of that entity set holding the same value (CustomerAccount); its "
                           "other key field is dataAreaId = the document's company.")
    flow: str | None = Field(None, description="The flow that creates it, named in the reason (accounts).")
    pull: str | None = Field(
        None,
        description="Header lookup column whose row is the reference's source in Sales (customerid): while the "
        "reference is missing, that row is synced first through its own flow, in the same delivery (pull-through, "
        "handlers/pull.py). Header references only; leave it out to wait for the reference instead.",
    )


class DiscountSplit(_Strict):
    """Splits a line's full discount over its quantity (reference 6.6, mappings/discounts.py): the mapped field
    ``total`` is replaced by ``per_unit`` (total / quantity, rounded toward zero) and ``remainder`` (the rounding
    remainder, a charge: quantity x per_unit - remainder = total). Leave it out to send the total as it is."""

    total: str = Field(description="Mapped field holding the full line discount (TotalDiscountAmount); not sent.")
    quantity: str = Field(description="Mapped field holding the line quantity (OrderedSalesQuantity).")
    per_unit: str = Field(description="Target field for the discount per unit (LineDiscountAmount).")
    remainder: str = Field(description="Target field for the rounding remainder (FixedPriceCharges).")
    decimals: int = Field(2, ge=0, le=6, description="Decimals of the amounts (the currency's precision).")


class LineSpec(_Strict):
    """A child collection of the document (quote, order and invoice lines), mapped line by line. The lines go to
    the same company and system as their document."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Name of the line set (quote_lines).")
    description: str | None = None
    source: LineSource
    target: LineTarget
    filter: list[Condition] = Field(default_factory=list, description="Conditions every line must meet.")
    on_filtered: Literal["skip_line", "skip_document"] = Field(
        "skip_line",
        description="A line failing the filter: 'skip_line' leaves that line out; 'skip_document' skips the whole "
        "document with the reason (P2C quotes and orders: only documents whose products are all externally "
        "maintained are synced).",
    )
    fields: list[FieldMap] = Field(min_length=1)
    references: list[Reference] = Field(
        default_factory=list, description="F&O records the lines name that must exist first (released products)."
    )
    discount_split: DiscountSplit | None = Field(
        None, description="Split the full line discount into a per-unit discount and a charge (P2C orders, 6.6)."
    )


class MappingSpec(_Strict):
    """A p2c-sync mapping file: one flow, one direction, field by field (the successor of one Data Integrator
    task)."""

    flow: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Unique name of the flow (accounts).")
    description: str | None = Field(None, description="What the flow does, for people.")
    direction: Literal["sales_to_fno", "fno_to_sales"]
    source: Source
    target: Target
    company: CompanyRouting = Field(default_factory=CompanyRouting)
    filter: list[Condition] = Field(
        default_factory=list,
        description="Conditions every source record must meet (all of them); others are skipped with the reason.",
    )
    on_empty: OnEmpty = Field(
        "null", description="What an empty source does when a field says nothing: 'omit', 'null' or 'blank' (\"\")."
    )
    fields: list[FieldMap] = Field(min_length=1, description="Target field <- source, in the order sent.")
    value_maps: dict[str, ValueMap] = Field(default_factory=dict, description="Named value maps used by fields.")
    lines: list[LineSpec] = Field(default_factory=list, description="Child collections (document lines).")
    references: list[Reference] = Field(
        default_factory=list, description="F&O records the header names that must exist first (the customer)."
    )
    retire: dict[str, Scalar] = Field(
        default_factory=dict,
        description="What to write to a record this flow wrote earlier once the source record no longer maps to "
        "it (it now maps to another key, or to another flow of the same table, e.g. a contact that became a "
        "customer): target field -> value, e.g. {IsInactive: \"Yes\"}. Empty: the old record is left as it is.",
    )

    #: The file the spec was loaded from (set by the loader), named in errors found after loading.
    _file: str | None = PrivateAttr(None)
    #: (table, column, label key) -> value, once ``resolve_choices`` has read the environment's options.
    _choice_values: dict[tuple[str, str, str], int] | None = PrivateAttr(None)

    # -- cross-checks ------------------------------------------------------------------------------------------

    @model_validator(mode="after")
    def _cross_check(self) -> MappingSpec:
        problems = self._problems()
        if problems:
            summary = "; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems)
            raise PydanticCustomError("mapping_spec", "{summary}", {"summary": summary, "problems": problems})
        return self

    def _problems(self) -> list[tuple[tuple[Any, ...], str]]:
        problems: list[tuple[tuple[Any, ...], str]] = []
        expected = ("dataverse", "fno") if self.direction == "sales_to_fno" else ("fno", "dataverse")
        if self.source.system != expected[0]:
            problems.append((("source", "system"), f"must be '{expected[0]}' for direction {self.direction}"))
        if self.target.system != expected[1]:
            problems.append((("target", "system"), f"must be '{expected[1]}' for direction {self.direction}"))
        if self.source.system == "fno":
            if not self.source.key:
                problems.append((("source", "key"), "an F&O source needs its key fields, e.g. [dataAreaId, "
                                 "ProductNumber]: events name the row by them"))
            if not self.source.entity_set:
                problems.append((("source", "entity_set"), "an F&O source needs the entity set its rows are "
                                 "read from"))
            for j, name in enumerate(self.source.key):
                if msg := field_problem(self.source.entity_set or "", name):
                    problems.append((("source", "key", j), msg))
        elif self.source.key:
            problems.append((("source", "key"), "only F&O sources take a key (Dataverse rows are named by id)"))
        problems += self._event_key_problems()
        company_field = self.company_target_field
        problems += self._check_fields(
            (), self.fields, self.target.key, self.target.entity_set, self.source.entity_set, self.filter
        )
        names: set[str] = set()
        for n, line in enumerate(self.lines):
            if line.name in names:
                problems.append((("lines", n, "name"), f"line set '{line.name}' is defined twice"))
            names.add(line.name)
            problems += self._check_fields(
                ("lines", n), line.fields, line.target.key, line.target.entity_set, line.source.entity_set, line.filter
            )
        for n, cond in enumerate(self.filter):
            for column in cond.columns():
                if "." in column:  # only document lines have their related rows read before filtering
                    problems.append((("filter", n), f"filter column '{column}' must be a plain column name "
                                     "(lookup paths are read for line filters only)"))
        problems += self._reference_problems((), self.references, self.fields)
        for n, line in enumerate(self.lines):
            problems += self._reference_problems(("lines", n), line.references, line.fields)
            problems += self._split_problems(("lines", n, "discount_split"), line)
            problems += self._header_filter_problems(("lines", n, "source", "header_filter_fields"), line)
        if company_field and self.target.system == "dataverse":
            problems.append((("company", "target_field"), "a Dataverse target has no company field"))
        if company_field and self.target.system == "fno":
            problems += self._company_problems(company_field)
        for name, value in self.retire.items():
            if self.target.system == "fno" and (msg := field_problem(self.target.entity_set, name)):
                problems.append((("retire", name), msg))
            elif name in self.target.key or name == company_field:
                problems.append((("retire", name), f"'{name}' is a key field; a retired record keeps its key"))
            elif self.target.system == "fno":
                try:
                    fit(self.target.entity_set, name, _finish(value))
                except DoesNotFit as exc:
                    problems.append((("retire", name), f"{value!r} does not fit {name}: {exc}"))
        problems += [(loc, problem) for loc, _, _, _, problem in self._label_sites() if problem]
        parent = self.company.parent
        if parent is not None and not any(parent.lookup == p.attribute and p.is_lookup
                                          for f in self.fields for p in f.source):
            problems.append((("company", "parent", "lookup"), f"'{parent.lookup}' is not read by any field as a "
                             "lookup path (e.g. parentcustomerid.Account(accountnumber))"))
        return problems

    def _label_sites(
        self,
    ) -> list[tuple[tuple[Any, ...], str | None, str, ChoiceLabel, str | None]]:
        """Every choice label of the file: (place, Dataverse table, column, label, problem). A label names an
        option of a Dataverse choice column: one the filter tests (a column of the source table) or one a field
        writes (a column of the target table, through 'value', 'default' or its value map)."""
        sites: list[tuple[tuple[Any, ...], str | None, str, ChoiceLabel, str | None]] = []
        blocks = [((), self.source.table, self.target.table, self.filter, self.fields)]
        blocks += [(("lines", n), line.source.table, line.target.table, line.filter, line.fields)
                   for n, line in enumerate(self.lines)]
        for prefix, source_table, target_table, conditions, fields in blocks:
            for n, cond in enumerate(conditions):
                for loc, column, label in cond.labels((*prefix, "filter", n)):
                    problem = None
                    if self.source.system != "dataverse":
                        problem = f"{label} names a Dataverse choice option, but the source is F&O: compare an " \
                                  "F&O enum field with its value as text"
                    elif "." in column:
                        problem = f"{label}: a label names an option of a column of this table; '{column}' is a " \
                                  "column of a related row (write its value)"
                    sites.append((loc, source_table, column, label, problem))
            for i, f in enumerate(fields):
                at = (*prefix, "fields", i)
                found = [((*at, name), getattr(f, name)) for name in ("value", "default")
                         if isinstance(getattr(f, name), ChoiceLabel)]
                value_map = self.value_maps.get(f.value_map) if f.value_map else None
                if value_map is not None:
                    found += [(("value_maps", f.value_map, *loc), label) for loc, label in value_map.labels()]
                for loc, label in found:
                    problem = None
                    if self.target.system != "dataverse":
                        problem = f"{label} names a Dataverse choice option, but '{f.target}' is an F&O field: " \
                                  "write the enum value as text"
                        loc = (*at, "value_map") if loc[0] == "value_maps" else loc
                    elif not target_table:
                        problem = f"{label}: a choice label needs the target's Dataverse table (target.table) to " \
                                  "read the options of its column"
                    sites.append((loc, target_table, f.target, label, problem))
        return sites

    def choice_uses(self) -> list[ChoiceUse]:
        """The choice labels the file names, each with the Dataverse table and column whose options it names."""
        return [ChoiceUse(table, column, label, format_loc(loc))
                for loc, table, column, label, problem in self._label_sites() if table and not problem]

    @property
    def choices_resolved(self) -> bool:
        return self._choice_values is not None or not self.choice_uses()

    def resolve_choices(self, options: Mapping[tuple[str, str], ChoiceOptions]) -> None:
        """Take the environment's options of the choice columns this file names (keyed by ``column_key(table,
        column)``) and use their values from now on. ChoiceLabelError, naming the file, the place, the label and
        the labels that exist, when a label names no option (or several)."""
        self._choice_values = resolve_uses(self.choice_uses(), options, self._file or self.flow)

    def _label_value(self, table: str | None, column: str, label: ChoiceLabel) -> int:
        values = self._choice_values
        found = values.get((*column_key(table or "", column), label.key)) if values is not None else None
        if found is None:
            raise MappedValueError(self.flow, column, None, f"choice label {label} was not resolved; the runtime "
                                   "reads the labels' values from Dataverse metadata before syncing")
        return found

    def _event_key_problems(self) -> list[tuple[tuple[Any, ...], str]]:
        """source.event_keys names business events the flow triggers on, key fields of source.key and members."""
        problems: list[tuple[tuple[Any, ...], str]] = []
        if self.source.event_keys and self.source.system != "fno":
            return [(("source", "event_keys"), "only F&O sources take event_keys (business events are F&O's)")]
        for event, members in self.source.event_keys.items():
            at = ("source", "event_keys", event)
            if event not in self.source.triggers or event in DATA_EVENT_MESSAGES:
                problems.append((at, f"'{event}' is not a business event in source.triggers "
                                 f"({', '.join(self.source.triggers) or 'none'})"))
            for name, member in members.items():
                if name not in self.source.key:
                    problems.append(((*at, name), f"'{name}' is not a field of source.key "
                                     f"({', '.join(self.source.key) or 'none'})"))
                if not _PLAIN.match(member):
                    problems.append(((*at, name), f"event member '{member}' must be a member name, e.g. InvoiceId"))
        return problems

    def _reference_problems(
        self, prefix: tuple[Any, ...], references: list[Reference], fields: list[FieldMap]
    ) -> list[tuple[tuple[Any, ...], str]]:
        """A reference names a field this file writes, and an F&O entity set and field that exist."""
        problems: list[tuple[tuple[Any, ...], str]] = []
        produced = {f.target for f in fields}
        for n, ref in enumerate(references):
            at = (*prefix, "references", n)
            if ref.field not in produced:
                problems.append(((*at, "field"), f"'{ref.field}' is not set by any field"))
            if self.target.system != "fno":
                problems.append((at, "references apply to an F&O target"))
            elif msg := field_problem(ref.entity_set, ref.key_field):
                problems.append(((*at, "key_field"), msg))
        return problems

    def _company_problems(self, company_field: str) -> list[tuple[tuple[Any, ...], str]]:
        """Every company the routing can produce must fit the company field (dataAreaId: 4 characters)."""
        problems: list[tuple[tuple[Any, ...], str]] = []
        named = [(("company", "default"), self.company.default)]
        units = self.company.business_units.items()
        named += [(("company", "business_units", unit), company) for unit, company in units]
        for loc, company in named:
            if company is None:
                continue
            try:
                fit(self.target.entity_set, company_field, company.strip().lower())
            except DoesNotFit as exc:
                problems.append((loc, f"company {company!r} does not fit {company_field}: {exc}"))
        return problems

    def _header_filter_problems(self, at: tuple[Any, ...], line: LineSpec) -> list[tuple[tuple[Any, ...], str]]:
        """Each entry names a field of the header filter and a field of the line entity."""
        fields = line.source.header_filter_fields
        if not fields:
            return []
        if self.source.system != "fno":
            return [(at, "only F&O line entities repeat header fields (a Dataverse line event is read in full)")]
        problems: list[tuple[tuple[Any, ...], str]] = []
        filtered = {column for cond in self.filter for column in cond.columns()}
        for header_field, line_field in fields.items():
            if header_field not in filtered:
                problems.append(((*at, header_field), f"'{header_field}' is not a field of the header filter "
                                 f"(it tests: {', '.join(sorted(filtered)) or 'nothing'})"))
            elif msg := field_problem(line.source.entity_set or "", line_field):
                problems.append(((*at, header_field), msg))
        return problems

    def _split_problems(self, at: tuple[Any, ...], line: LineSpec) -> list[tuple[tuple[Any, ...], str]]:
        """The split reads two mapped fields and writes two fields the line entity has (not key fields)."""
        split = line.discount_split
        if split is None:
            return []
        problems: list[tuple[tuple[Any, ...], str]] = []
        mapped = {f.target for f in line.fields}
        for name in ("total", "quantity"):
            if getattr(split, name) not in mapped:
                problems.append(((*at, name), f"'{getattr(split, name)}' is not a target field of this line set"))
        for name in ("per_unit", "remainder"):
            target = getattr(split, name)
            if target in line.target.key or target in mapped:
                problems.append(((*at, name), f"'{target}' is a key field or already mapped; the split writes it"))
            elif self.target.system == "fno" and (msg := field_problem(line.target.entity_set, target)):
                problems.append(((*at, name), msg))
        return problems

    def _check_fields(
        self,
        prefix: tuple[Any, ...],
        fields: list[FieldMap],
        key: list[str],
        target_set: str,
        source_set: str | None,
        filters: list[Condition],
    ) -> list[tuple[tuple[Any, ...], str]]:
        problems: list[tuple[tuple[Any, ...], str]] = []
        company_field = self.company_target_field
        to_fno = self.target.system == "fno"
        from_fno = self.source.system == "fno"
        seen: dict[str, int] = {}
        for i, f in enumerate(fields):
            at = (*prefix, "fields", i)
            if f.target in seen:
                problems.append(((*at, "target"), f"'{f.target}' is already set by fields[{seen[f.target]}]"))
            seen.setdefault(f.target, i)
            if company_field and f.target == company_field:
                problems.append(((*at, "target"), f"'{f.target}' is set by company routing; remove this field"))
            if to_fno:
                if not _PLAIN.match(f.target):
                    problems.append(((*at, "target"), f"'{f.target}' is not an F&O field name"))
                elif msg := field_problem(target_set, f.target):
                    problems.append(((*at, "target"), msg))
                problems += _constant_problems(at, f, target_set)
                if f.too_long == "truncate" and f.target in key:
                    problems.append(((*at, "too_long"), f"'{f.target}' is a key field: a cut key could name "
                                     "another record; remove 'too_long: truncate'"))
            if f.value_map is not None and f.value_map not in self.value_maps:
                hint = difflib.get_close_matches(f.value_map, list(self.value_maps), n=1)
                known = f"; did you mean '{hint[0]}'?" if hint else ""
                problems.append(
                    ((*at, "value_map"), f"value map '{f.value_map}' is not defined under value_maps{known}")
                )
            for j, path in enumerate(f.source):
                where = (*at, "source") if len(f.source) == 1 else (*at, "source", j)
                if from_fno and path.is_lookup:
                    problems.append((where, f"'{path.text}': F&O records have no lookups; name a field"))
                elif from_fno and source_set and (msg := field_problem(source_set, path.text)):
                    problems.append((where, msg))
        produced = set(seen) | ({company_field} if company_field else set())
        for j, name in enumerate(key):
            if name not in produced:
                problems.append(
                    (
                        (*prefix, "target", "key", j),
                        f"key field '{name}' is not set by any field" + (" or company routing" if to_fno else ""),
                    )
                )
            elif to_fno and (msg := field_problem(target_set, name)):
                problems.append(((*prefix, "target", "key", j), msg))
        if from_fno and source_set:
            for n, cond in enumerate(filters):
                for column in cond.columns():
                    if msg := field_problem(source_set, column):
                        problems.append(((*prefix, "filter", n), msg))
        return problems

    # -- derived facts -----------------------------------------------------------------------------------------

    @property
    def company_target_field(self) -> str | None:
        if self.company.target_field is not None:
            return self.company.target_field
        return "dataAreaId" if self.target.system == "fno" else None

    @property
    def company_source_column(self) -> str:
        if self.company.source_column is not None:
            return self.company.source_column
        return "owningbusinessunit" if self.source.system == "dataverse" else "dataAreaId"

    def source_columns(self) -> list[str]:
        """The columns to fetch for a full source record: the version and id columns, the first hop of every
        field's source, the filter's columns, the company routing column (when it routes) and source.columns.
        Lookups are listed by their attribute name (the Dataverse Web API selects them as _name_value)."""
        cols: list[str] = []
        for name in (self.source.id_column, self.source.version_field):
            if name:
                cols.append(name)
        for f in self.fields:
            cols += [p.attribute for p in f.source]
        for cond in self.filter:
            cols += [c.split(".", 1)[0] for c in cond.columns()]
        if self.company.business_units or self.source.system == "fno":
            cols.append(self.company_source_column)
        cols += self.source.columns
        return list(dict.fromkeys(cols))

    def money_columns(self) -> list[str]:
        """Source columns read as decimals (their fields use the 'decimal' transform, e.g. creditlimit): a
        fetched row's JSON numbers in these columns must be decoded as Decimal, as events decode Money."""
        return list(
            dict.fromkeys(
                p.attribute
                for f in self.fields
                if any(step.name == "decimal" for step in f.transform)
                for p in f.source
                if not p.is_lookup
            )
        )

    def lookup_columns(self) -> list[str]:
        """Source columns that are lookups (read through a related row)."""
        return list(dict.fromkeys(p.attribute for f in self.fields for p in f.source if p.is_lookup))

    def line_source_columns(self, name: str) -> list[str]:
        """The columns to fetch for the lines of line set ``name``: id, parent, sequence and version columns, the
        first hop of every field's source and filter column, and source.columns (lookups by attribute name)."""
        line = self.line(name)
        cols = [c for c in (line.source.id_column, line.source.parent_column, line.source.sequence_column,
                            line.source.version_field) if c]
        for f in line.fields:
            cols += [p.attribute for p in f.source]
        for cond in line.filter:
            cols += [c.split(".", 1)[0] for c in cond.columns()]
        cols += line.source.columns
        return list(dict.fromkeys(cols))

    def line_lookup_columns(self, name: str) -> list[str]:
        """Line columns that are lookups (the parent column, and those read through a related row)."""
        line = self.line(name)
        paths = [p for f in line.fields for p in f.source if p.is_lookup]
        paths += [parse_path(c) for cond in line.filter for c in cond.columns() if "." in c]
        return list(dict.fromkeys([line.source.parent_column, *(p.attribute for p in paths)]))

    def line(self, name: str) -> LineSpec:
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(f"{self.flow}: no line set named '{name}'")

    # -- applying ----------------------------------------------------------------------------------------------

    def lookups(self, record: Mapping[str, Any], *, line: str | None = None) -> list[LookupRequest]:
        """What the caller must resolve before ``apply``: one request per lookup path whose first hop is an
        EntityRef in the record. Put each answer in ``resolved[request.path]``."""
        fields = self.line(line).fields if line else self.fields
        conditions = self.line(line).filter if line else self.filter
        paths = [p for f in fields for p in f.source]
        paths += [parse_path(c) for cond in conditions for c in cond.columns() if "." in c]
        out: dict[str, LookupRequest] = {}
        for path in paths:
            if not path.is_lookup or path.text in out:
                continue
            ref = record.get(path.attribute)
            if not is_entity_ref(ref):
                continue
            column = path.column_for(ref.logical_name)
            if column is None:
                continue
            entity_set = self.source.lookup_entity_sets.get(ref.logical_name) or default_entity_set(ref.logical_name)
            out[path.text] = LookupRequest(path.text, path.attribute, ref.logical_name, str(ref.id), column, entity_set)
        return list(out.values())

    def filter_reason(
        self, record: Mapping[str, Any], *, line: str | None = None, resolved: Mapping[str, Any] = MappingProxyType({})
    ) -> str | None:
        """None when the record passes the filter, else why not (e.g. "statecode is 1, expected 0"). ``resolved``
        answers the conditions on 'lookup.column' paths (as for ``apply``)."""
        conditions = self.line(line).filter if line else self.filter
        table = self.line(line).source.table if line else self.source.table
        if resolved:
            record = {**record, **resolved}
        for cond in conditions:
            for column in cond.columns():
                value = record.get(column)
                if isinstance(value, Unparsed) and not isinstance(value, (str, bytes, Mapping)):
                    # A value the parser kept raw compares equal to nothing: filtering on it would skip the
                    # record silently. Dead-letter it with the column named instead.
                    raise MappedValueError(self.flow, "filter", column, unwritable_reason(value) or "unreadable")
            if (why := cond.failure(record, lambda column, label: self._label_value(table, column, label))) is not None:
                return why
        return None

    @property
    def company_routes_by_name(self) -> bool:
        """Whether some business_units entry names a business unit (rather than giving its GUID): then the
        caller must know the record's business unit name, which webhook payloads leave out."""
        return any(not _GUID_TEXT.match(unit.strip()) for unit in self.company.business_units)

    def route_company(self, record: Mapping[str, Any], default_company: str | None = None) -> str:
        """The company (dataAreaId, lower case) the record belongs to."""
        column = self.company_source_column
        value = record.get(column)
        label = self.company_target_field or "company"
        if not is_empty(value):
            candidates = [value.id, value.name] if is_entity_ref(value) else [value]
            for candidate in candidates:
                if not is_empty(candidate) and (hit := self.company._index.get(compare_key(candidate))):
                    return hit.strip().lower()
            mode = self.company.unmapped or ("default" if self.source.system == "dataverse" else "keep")
            if mode == "error":
                raise MappedValueError(
                    self.flow, label, column, f"{_show(value)} is not listed under company.business_units"
                )
            if mode == "keep" and isinstance(value, str):
                return value.strip().lower()
        company = default_company or self.company.default
        if is_empty(company):
            raise MappedValueError(
                self.flow, label, column, "no company: set FNO_DEFAULT_COMPANY or company.default"
            )
        assert company is not None
        return company.strip().lower()

    def apply(
        self,
        record: Mapping[str, Any],
        *,
        resolved: Mapping[str, Any] = MappingProxyType({}),
        default_company: str | None = None,
        company: str | None = None,
    ) -> MappedRecord:
        """Map one source record. ``resolved`` holds the answers to ``lookups(record)`` by path;
        ``default_company`` is the FNO_DEFAULT_COMPANY setting; ``company``, when given, is the company already
        decided by the caller (company.parent routing). Raises MappedValueError naming the flow, the target
        field and the source column when the record cannot be mapped."""
        company = company.strip().lower() if company else self.route_company(record, default_company)
        return self._map(self.flow, self.fields, self.target.key, self.target.entity_set, record, resolved, company,
                         self.target.table)

    def field_value(self, target: str, record: Mapping[str, Any]) -> Any:
        """What the field writing ``target`` writes for ``record`` (value map applied, a choice label as the
        environment's value): for a flow that writes a column another flow's file maps (an invoice closes its
        order with the processing status orders_back maps F&O's "Invoiced" to). None when the field writes nothing."""
        f = next((f for f in self.fields if f.target == target), None)
        if f is None:
            raise KeyError(f"{self.flow}: no field writes '{target}'")
        value = self._field_value(self.flow, f, record, {})
        if isinstance(value, ChoiceLabel):
            value = self._label_value(self.target.table, f.target, value)
        return None if value is _OMIT else value

    def apply_line(
        self,
        line: str,
        record: Mapping[str, Any],
        *,
        company: str,
        resolved: Mapping[str, Any] = MappingProxyType({}),
    ) -> MappedRecord:
        """Map one line of the line set ``line``; ``company`` is the company of its document."""
        spec = self.line(line)
        mapped = self._map(
            f"{self.flow}.{line}", spec.fields, spec.target.key, spec.target.entity_set, record, resolved,
            company.lower(), spec.target.table,
        )
        if spec.discount_split is not None:
            self._split_discount(f"{self.flow}.{line}", spec.discount_split, mapped.payload)
        return mapped

    @staticmethod
    def _split_discount(flow: str, split: DiscountSplit, payload: dict[str, Any]) -> None:
        """Replace the full line discount by F&O's per-unit discount and remainder charge (reference 6.6)."""
        total = payload.pop(split.total, None)
        try:
            parts = split_line_discount(total, payload.get(split.quantity), decimals=split.decimals)
        except DiscountSplitError as error:
            raise MappedValueError(flow, split.per_unit, f"{split.total} / {split.quantity}", str(error)) from None
        payload[split.per_unit] = parts.per_unit
        payload[split.remainder] = parts.charge

    def _map(
        self,
        flow: str,
        fields: list[FieldMap],
        key_fields: list[str],
        target_set: str,
        record: Mapping[str, Any],
        resolved: Mapping[str, Any],
        company: str,
        table: str | None = None,
    ) -> MappedRecord:
        payload: dict[str, Any] = {}
        if (company_field := self.company_target_field) is not None:
            payload[company_field] = self._fit(flow, company_field, self.company_source_column, target_set, company)
        for f in fields:
            value = self._field_value(flow, f, record, resolved)
            if isinstance(value, ChoiceLabel):  # a choice option by label: the environment's value
                value = self._label_value(table, f.target, value)
            if value is not _OMIT:
                payload[f.target] = self._fit(flow, f.target, f.source_label, target_set, value, f.too_long)
        key: dict[str, Any] = {}
        for name in key_fields:
            value = payload.get(name)
            if is_empty(value):
                origin = next((f.source_label for f in fields if f.target == name), None)
                raise MappedValueError(flow, name, origin, "key field is empty")
            key[name] = key_value(target_set, name, value) if self.target.system == "fno" else value
        return MappedRecord(key=key, payload=payload, company=company)

    def _fit(
        self, flow: str, target: str, source: str | None, target_set: str, value: Any, too_long: TooLong = "reject"
    ) -> Any:
        """The value as the target accepts it; F&O values are checked against the field's type and limits
        before anything is written (MappedValueError naming the field, the limit and the value)."""
        if self.target.system != "fno":
            return _plain(value)
        try:
            return fit(target_set, target, value, too_long=too_long)
        except DoesNotFit as exc:
            raise MappedValueError(flow, target, source, str(exc)) from None

    def _field_value(self, flow: str, f: FieldMap, record: Mapping[str, Any], resolved: Mapping[str, Any]) -> Any:
        if f.is_constant:
            return _finish(f.value)
        label = f.source_label
        raw = None
        for path in f.source:
            raw = _read(flow, f, path, record, resolved)
            if not is_empty(raw):
                break
        if not is_empty(raw):
            if is_entity_ref(raw):
                raise MappedValueError(
                    flow, f.target, label, f"is a lookup ({_show(raw)}); map one of its columns, e.g. {label}.name"
                )
            if (unwritable := unwritable_reason(raw)) is not None:
                raise MappedValueError(flow, f.target, label, unwritable)
            value: Any = raw
            if f.value_map is not None:
                try:
                    value = self.value_maps[f.value_map].translate(value)
                except LookupError:
                    raise MappedValueError(
                        flow, f.target, label, f"{_show(raw)} is not in value map '{f.value_map}'"
                    ) from None
                if isinstance(value, ChoiceLabel):  # an option by label: its value is written, not transformed
                    return value
            try:
                for step in f.transform:
                    if is_empty(value):
                        break
                    value = step(value)
            except TransformError as exc:
                raise MappedValueError(flow, f.target, label, f"transform '{step}': {exc}") from None
            if not is_empty(value):
                return _finish(value)
        if "default" in f.model_fields_set:
            return _finish(f.default)
        if f.required:
            raise MappedValueError(flow, f.target, label, "required value is empty")
        mode = f.on_empty or self.on_empty
        return _OMIT if mode == "omit" else ("" if mode == "blank" else None)


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LookupRequest:
    """Resolve column ``column`` of the ``table`` row with id ``id`` (fetched from Web API entity set
    ``entity_set``); put the answer under ``resolved[path]`` (None when the related row has no value)."""

    path: str
    attribute: str
    table: str
    id: str
    column: str
    entity_set: str


@dataclass(frozen=True)
class MappedRecord:
    """The result of applying a mapping: the target key, the full payload (key fields included; JSON-ready except
    that numbers may be Decimal, see to_json_ready) and the company."""

    key: dict[str, Any]
    payload: dict[str, Any] = field(default_factory=dict)
    company: str = ""

    @property
    def payload_hash(self) -> str:
        return payload_hash(self.payload)


class _Omit:
    def __repr__(self) -> str:
        return "<omit>"


_OMIT = _Omit()


def _read(flow: str, f: FieldMap, path: SourcePath, record: Mapping[str, Any], resolved: Mapping[str, Any]) -> Any:
    if not path.is_lookup:
        return record.get(path.text)
    if path.text in resolved:
        return resolved[path.text]
    if path.text in record:
        return record[path.text]
    first = record.get(path.attribute)
    if is_empty(first):
        return None
    if not is_entity_ref(first):
        raise MappedValueError(flow, f.target, path.text, f"{path.attribute} is not a lookup (got {_show(first)})")
    if path.column_for(first.logical_name) is None:
        raise MappedValueError(
            flow,
            f.target,
            path.text,
            f"{path.attribute} points to a '{first.logical_name}' row; the path covers only "
            f"{', '.join(path.tables)}",
        )
    raise MappedValueError(flow, f.target, path.text, "lookup was not resolved (resolve spec.lookups(record) first)")


def _finish(value: Any) -> Any:
    """Make a mapped value JSON-ready (Decimal stays Decimal; dates stay dates until the target's type renders
    them, see MappingSpec._fit; a choice label stays a label until the spec resolves it)."""
    if isinstance(value, ChoiceLabel):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if value is None or isinstance(value, (str, bool, int, Decimal, date)):
        return value
    return str(value)


def _plain(value: Any) -> Any:
    """A Dataverse value: ISO date (Edm.Date) or UTC date-time."""
    if isinstance(value, datetime):
        return iso_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _constant_problems(at: tuple[Any, ...], f: FieldMap, target_set: str) -> list[tuple[tuple[Any, ...], str]]:
    """A constant 'value' or a 'default' that the F&O field cannot hold is an error in the file."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    for name in ("value", "default"):
        if name not in f.model_fields_set or isinstance(getattr(f, name), ChoiceLabel):
            continue  # a label on an F&O field is reported by _label_sites
        try:
            fit(target_set, f.target, _finish(getattr(f, name)), too_long=f.too_long)
        except DoesNotFit as exc:
            problems.append(((*at, name), f"{getattr(f, name)!r} does not fit {f.target}: {exc}"))
    return problems
