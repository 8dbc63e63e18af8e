"""Pydantic model of an F&O business event (a `BusinessEventsContract` serialised flat: the common members
plus the event-specific ones alongside; docs/wire-formats, section 3.1).

Decoding of event-specific members (`BusinessEvent.members`):
* `/Date(ms)/` strings -> aware UTC datetimes; the F&O "empty date" (1900-01-01, `/Date(-2208988800000)/`)
  -> None;
* fractional JSON numbers -> `Decimal` when the body was parsed with `parse_float=Decimal` (as
  `parse_change_event` does): X++ `real` is a .NET decimal and these members are amounts, so they are
  kept exact; integers stay `int`;
* enums arrive as symbol strings and are kept as strings; nested arrays/objects are decoded recursively.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ._common import FNO_EMPTY_DATE_MS, EPOCH, excerpt, json_type_name, parse_wcf_date

__all__ = ["BusinessEvent", "EndpointTestMessage", "decode_fno_value", "is_endpoint_test_message", "parse_fno_date"]

_EMPTY_DATE = EPOCH + timedelta(milliseconds=FNO_EMPTY_DATE_MS)


def parse_fno_date(text: str) -> datetime | None:
    """`/Date(ms)/` -> aware UTC datetime, with the F&O empty date (1900-01-01) -> None. Raises ValueError."""
    value = parse_wcf_date(text)
    return None if value == _EMPTY_DATE else value


class EndpointTestMessage(Exception):
    """The body is F&O's endpoint test message, not an event: there is nothing to sync."""

    def __init__(self, business_event_id: str, legal_entity: str | None) -> None:
        self.business_event_id = business_event_id or "(none)"
        self.legal_entity = legal_entity or None
        super().__init__(
            f"F&O endpoint test message for business event {self.business_event_id}: F&O sends one when the event "
            "is activated on an endpoint (Business events > Business event catalog > Activate), to check the "
            "endpoint. It carries no record; nothing to sync"
        )


_NIL_GUID = "00000000-0000-0000-0000-000000000000"


def is_endpoint_test_message(data: dict[str, Any]) -> bool:
    """Whether a business-event body is the blank contract F&O sends when an event is activated on an
    endpoint (wire-formats 3.3: "Activating an event on a Service Bus endpoint sends a test message").

    [Inferred from observed test messages] It is the event's contract with nothing filled in: a non-empty
    BusinessEventId, and present but blank EventId (empty or the nil GUID), ControlNumber (0) and EventTime
    (the F&O empty date, 1900-01-01, in any `/Date()/` spelling, or empty). Each member must be present: a
    broken real contract that lacks them is malformed, not a test. A real event always has an EventId and a
    positive ControlNumber, so requiring all of them never mistakes one for a test."""
    business_event_id = data.get("BusinessEventId")
    if not isinstance(business_event_id, str) or not business_event_id.strip():
        return False
    if not all(member in data for member in ("EventId", "ControlNumber", "EventTime")):
        return False
    iso_time = data.get("EventTimeIso8601")
    return (
        _is_blank_event_id(data["EventId"])
        and _is_zero(data["ControlNumber"])
        and _is_empty_date(data["EventTime"])
        and (iso_time in (None, "") or str(iso_time).startswith(("1900-01-01", "0001-01-01")))
    )


def _is_blank_event_id(value: Any) -> bool:
    return isinstance(value, str) and value.strip().strip("{}").lower() in ("", _NIL_GUID)


def _is_zero(value: Any) -> bool:
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool) and value == 0


def _is_empty_date(value: Any) -> bool:
    """The F&O empty date, compared through `parse_fno_date` so `/Date(-2208988800000+0000)/` counts too."""
    if value == "":
        return True
    if not isinstance(value, str):
        return False
    try:
        return parse_fno_date(value) is None
    except ValueError:
        return False


def decode_fno_value(value: Any, path: str = "") -> Any:
    """Recursively decode a business-event member value. Raises PydanticCustomError with the sub-path."""
    if isinstance(value, str):
        if value.startswith("/Date("):
            try:
                return parse_fno_date(value)
            except ValueError as exc:
                raise PydanticCustomError("fno_date", str(exc), {"subpath": path}) from None
        return value
    if isinstance(value, list):
        return [decode_fno_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: decode_fno_value(item, f"{path}.{key}") for key, item in value.items()}
    return value


def _decode_member(value: Any) -> Any:
    return decode_fno_value(value)


def _event_time(value: Any) -> Any:
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("fno_date", "expected a /Date()/ string, got {kind}",
                                  {"kind": json_type_name(value)})
    try:
        return parse_fno_date(value)
    except ValueError as exc:
        raise PydanticCustomError("fno_date", str(exc)) from None


class BusinessEvent(BaseModel):
    """The common business-event contract plus `members` (the event-specific members, decoded)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    business_event_id: str = Field(alias="BusinessEventId")
    business_event_legal_entity: str | None = Field(None, alias="BusinessEventLegalEntity")
    context_record_subject: str | None = Field(None, alias="ContextRecordSubject")
    control_number: StrictInt | None = Field(None, alias="ControlNumber")
    event_id: str = Field(alias="EventId")
    event_time: datetime | None = Field(None, alias="EventTime")
    event_time_iso8601: str | None = Field(None, alias="EventTimeIso8601")
    initiating_user_aad_object_id: str | None = Field(None, alias="InitiatingUserAADObjectId")
    major_version: StrictInt | None = Field(None, alias="MajorVersion")
    minor_version: StrictInt | None = Field(None, alias="MinorVersion")
    parent_context_record_subjects: list[Any] | None = Field(None, alias="ParentContextRecordSubjects")
    members: dict[str, Annotated[Any, AfterValidator(_decode_member)]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _split_members(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        common = {key: data[key] for key in _COMMON_ALIASES if key in data}
        common["members"] = {key: value for key, value in data.items() if key not in _COMMON_ALIASES}
        return common

    @field_validator("event_time", mode="before")
    @classmethod
    def _decode_event_time(cls, value: Any) -> Any:
        return _event_time(value)

    @field_validator("business_event_id", "event_id")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("empty", "empty")
        return value

    @property
    def initiating_user_object_id(self) -> str | None:
        """`InitiatingUserAADObjectId` without braces, lower case (None when absent or empty)."""
        raw = (self.initiating_user_aad_object_id or "").strip().strip("{}").strip().lower()
        return raw or None

    @property
    def occurred_at(self) -> datetime | None:
        """`EventTime`, else `EventTimeIso8601` (None when neither is usable)."""
        if self.event_time is not None:
            return self.event_time
        if self.event_time_iso8601:
            try:
                return datetime.fromisoformat(self.event_time_iso8601)
            except ValueError:
                return None
        return None

    def __repr__(self) -> str:  # members can be large; keep logs short
        return (f"BusinessEvent({self.business_event_id!r}, event_id={self.event_id!r}, "
                f"control_number={self.control_number!r}, members={excerpt(self.members)})")


_COMMON_ALIASES = frozenset(
    field.alias for name, field in BusinessEvent.model_fields.items() if name != "members" and field.alias
)
