"""`ChangeEvent`, the normalised form of any inbound message, and `parse_change_event`, the one place that
reads raw payloads (docs/architecture.md, "Change event")."""

from __future__ import annotations

from collections import OrderedDict

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ._common import (
    EnvelopeError,
    datetime_to_epoch_ms,
    envelope_error_from_validation,
    excerpt,
    json_type_name,
    normalise_guid,
)
from .dataverse import Entity, EntityReference, RemoteExecutionContext, UnparsedValue, to_python
from .fno import BusinessEvent, EndpointTestMessage, is_endpoint_test_message
from .resync import RESYNC, RESYNC_MESSAGE, ResyncRequest, is_resync

__all__ = [
    "ChangeEvent",
    "CLAIM_ENTITY_LOGICAL_NAME",
    "CLAIM_INITIATING_USER",
    "CLAIM_INITIATING_USER_AGENT",
    "CLAIM_ORGANIZATION",
    "CLAIM_REQUEST_NAME",
    "CLAIM_USER",
    "DATA_EVENT_MESSAGES",
    "HEADER_MSG_SIZE_EXCEEDED",
    "PROPERTY_MESSAGE_MAX_SIZE_EXCEEDED",
    "Source",
    "dedupe_message_id",
    "parse_change_event",
    "TRIMMED_MEMBERS",
    "trim_context_body",
]

Source = Literal["dataverse", "fno_data_event", "fno_business_event", "resync"]

# Service Bus application properties set by Dataverse (wire-formats 1.3).
_CLAIMS = "http://schemas.microsoft.com/xrm/2011/Claims/"
CLAIM_ORGANIZATION = _CLAIMS + "Organization"
CLAIM_USER = _CLAIMS + "User"
CLAIM_INITIATING_USER = _CLAIMS + "InitiatingUser"
CLAIM_ENTITY_LOGICAL_NAME = _CLAIMS + "EntityLogicalName"
CLAIM_REQUEST_NAME = _CLAIMS + "RequestName"
CLAIM_INITIATING_USER_AGENT = _CLAIMS + "InitiatingUserAgent"
PROPERTY_MESSAGE_MAX_SIZE_EXCEEDED = "MessageMaxSizeExceeded"
# Webhook headers (wire-formats 1.2).
HEADER_MSG_SIZE_EXCEEDED = "x-ms-dynamics-msg-size-exceeded"
HEADER_ORGANIZATION = "x-ms-dynamics-organization"
HEADER_CORRELATION = "x-ms-correlation-request-id"

#: F&O data-event messages on `mserp_` virtual tables, and the message each one stands for.
DATA_EVENT_MESSAGES = {
    "OnExternalCreated": "Create",
    "OnExternalUpdated": "Update",
    "OnExternalDeleted": "Delete",
}
#: Event-specific member holding the natural key of the record a business event is about.
BUSINESS_EVENT_NATURAL_KEYS = {
    "SalesInvoicePostedBusinessEvent": "InvoiceId",
}
_UNSUPPORTED_CONTENT_TYPES = {
    "application/msbin1": "Binary XML (messageformat 1)",
    "application/xml": "Text XML (messageformat 3)",
    "text/xml": "Text XML (messageformat 3)",
}
_NIL_GUID = "00000000-0000-0000-0000-000000000000"
#: What Dataverse removes from a RemoteExecutionContext that does not fit (wire-formats 1.1) [DOC].
TRIMMED_MEMBERS = ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages")
_FALSE_FLAGS = {"false", "0", "no"}


class ChangeEvent(BaseModel):
    """The normalised form of any inbound message (immutable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Source
    #: Dataverse logical name (`account`), `mserp_` table name, or the `BusinessEventId`.
    entity: str
    #: Primary id (lower-case GUID); for business events the natural key when known (e.g. InvoiceId).
    record_id: str | None
    #: `Create`/`Update`/`Delete`/... (data events normalised); business events: the `BusinessEventId`.
    message_name: str
    #: The message name as sent (`OnExternalUpdated` for a data event; else equal to `message_name`).
    source_message_name: str
    #: One occurrence of the change: `entity:record_id:MessageName:OperationId`, or the `EventId`.
    dedupe_key: str
    #: Orders states of one record: `modifiedon` in epoch ms, `ControlNumber`; None when unknown.
    version: int | None
    #: Plain-Python values: post images merged, Target on top (business events: the event's members).
    attributes: dict[str, Any]
    #: FormattedValues merged the same way (a label that is not text is an `UnparsedValue`).
    formatted: dict[str, str | UnparsedValue] = {}
    #: Image alias -> plain-Python attributes.
    pre_images: dict[str, dict[str, Any]] = {}
    post_images: dict[str, dict[str, Any]] = {}
    #: The Target's KeyAttributes (set when the caller addressed the row by alternate key).
    key_attributes: dict[str, Any] = {}
    #: False when the handler must fetch the record (Update, Delete, trimmed payload, business events).
    is_complete: bool
    #: The payload was trimmed by Dataverse (size limit): no InputParameters / images.
    trimmed: bool = False
    #: Dataverse: InitiatingUserId; business events: the AAD object id (no braces). Lower case.
    initiating_user_id: str | None = None
    user_id: str | None = None
    #: SharedVariables `tag` (Web API `?tag=`), from the context or one of its parents.
    tag: str | None = None
    #: dataAreaId, lower case, when known.
    company: str | None = None
    correlation_id: str | None = None
    #: Pipeline depth (Dataverse), for loop guards.
    depth: int | None = None
    #: When the operation/event happened (OperationCreatedOn / EventTime), aware UTC.
    event_time: datetime | None = None
    #: Dataverse organisation (host or name) when known.
    organization: str | None = None
    #: Size of the raw body in bytes.
    raw_size: int

    def __repr__(self) -> str:  # attributes can be large and personal; keep logs short
        return (f"ChangeEvent(source={self.source!r}, entity={self.entity!r}, record_id={self.record_id!r}, "
                f"message_name={self.message_name!r}, dedupe_key={self.dedupe_key!r}, "
                f"version={self.version!r}, is_complete={self.is_complete!r})")

    __str__ = __repr__


def dedupe_message_id(event: ChangeEvent) -> str:
    """A deterministic Service Bus `MessageId` (<= 128 chars) for the event: a readable prefix
    (`<source>:<entity>:`) and the sha256 hex of the source and dedupe key."""
    digest = hashlib.sha256(f"{event.source}\n{event.dedupe_key}".encode()).hexdigest()
    entity = "".join(ch for ch in event.entity if ch.isalnum() or ch in "_-.")[:40]
    return f"{event.source}:{entity}:{digest}"


# --- parsing ----------------------------------------------------------------------------------------

def parse_change_event(
    body: bytes | str,
    properties: Mapping[str, Any] | None = None,
    *,
    content_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ChangeEvent:
    """Parse a webhook body or Service Bus message body into a `ChangeEvent`.

    `properties` are the Service Bus application properties, `headers` the webhook HTTP headers,
    `content_type` the Service Bus ContentType. Raises `EnvelopeError` for anything malformed."""
    props = dict(properties or {})
    lower_headers = {str(k).lower(): v for k, v in (headers or {}).items()}
    _check_content_type(content_type)
    raw = _as_bytes(body)
    data = _load_json(raw)
    if "BusinessEventId" in data:
        if is_endpoint_test_message(data):
            raise EndpointTestMessage(str(data.get("BusinessEventId") or ""),
                                      _lower(data.get("BusinessEventLegalEntity")))
        return _from_business_event(data, props, raw_size=len(raw))
    if "MessageName" in data or "PrimaryEntityName" in data:
        return _from_context(data, props, lower_headers, raw=raw)
    if is_resync(data):
        return _from_resync(data, raw_size=len(raw))
    members = ", ".join(list(data)[:5])
    raise EnvelopeError(
        "body",
        "neither a RemoteExecutionContext (MessageName, PrimaryEntityName), a business event "
        f"(BusinessEventId, EventId) nor a resync (p2c: resync); members: {excerpt(members, 60) if members else 'none'}",
    )


class RecentParses:
    """Events the webhook ingress of this process parsed, by their exact body, for the queue trigger that gets
    the same message back (the webhook and the queue function share a process, locally and on one instance in
    Azure): a webhook is parsed once, not twice (issue 11: the second parse was a tenth of the host's CPU).

    Only for messages the ingress enqueued itself (``p2c-ingress: webhook``), whose properties carry what its
    headers said (the size-exceeded flag, the organization), so the parse would come out the same. Bounded: the
    oldest are dropped, and a miss just parses. Keyed by the body's BLAKE2b digest, not the body: an entry costs
    the event (about 7 KB for an account), so the bound covers a burst of webhooks that runs ahead of the queue
    trigger (with 256, two queue messages in three missed in a burst of 1,000 webhooks)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._events: OrderedDict[bytes, ChangeEvent] = OrderedDict()

    @staticmethod
    def _key(body: bytes) -> bytes:
        return hashlib.blake2b(body, digest_size=32).digest()

    def remember(self, body: bytes, event: ChangeEvent) -> None:
        self._events[self._key(body)] = event
        while len(self._events) > self.size:
            self._events.popitem(last=False)

    def take(self, body: bytes) -> ChangeEvent | None:
        """The event parsed from exactly this body, once (a redelivery parses again)."""
        return self._events.pop(self._key(body), None) if self._events else None

    def __len__(self) -> int:
        return len(self._events)


#: The process's one cache of webhook parses (p2csync.ingress fills it, p2csync.runtime takes from it).
recent_parses = RecentParses()
#: The application property the webhook ingress stamps on what it enqueues, and its value.
INGRESS_PROPERTY, WEBHOOK_INGRESS = "p2c-ingress", "webhook"


def trim_context_body(body: bytes | str) -> bytes:
    """The body Dataverse sends when a context is too large: the same JSON without the members in
    `TRIMMED_MEMBERS` (removed, not emptied). The other members keep their values, so the event keeps its
    dedupe key and the handler fetches the record (`is_complete` False). Raises `EnvelopeError`."""
    data = _load_json(_as_bytes(body))
    for member in TRIMMED_MEMBERS:
        data.pop(member, None)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_json_number).encode("utf-8")


def _json_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _check_content_type(content_type: str | None) -> None:
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _UNSUPPORTED_CONTENT_TYPES:
        raise EnvelopeError(
            "ContentType",
            f"{media} is {_UNSUPPORTED_CONTENT_TYPES[media]}; only the JSON message format "
            "(serviceendpoint messageformat 2, application/json) is supported",
        )


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise EnvelopeError("body", f"expected bytes or str, got {type(body).__name__}")


def _load_json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise EnvelopeError("body", "empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EnvelopeError(
            "body",
            f"not UTF-8 ({exc.reason} at byte {exc.start}); only the JSON message format "
            "(messageformat 2) is supported",
        ) from None
    if text.lstrip().startswith("<"):
        raise EnvelopeError(
            "body", "looks like XML; only the JSON message format (messageformat 2) is supported"
        )
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise EnvelopeError("body", f"not JSON ({exc.msg}: line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise EnvelopeError("body", "not JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise EnvelopeError("body", f"expected a JSON object, got {json_type_name(data)}")
    return data


def _lower(value: Any) -> str | None:
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = text.strip()
    return text.lower() or None


def _guid_or_none(value: Any) -> str | None:
    text = _lower(value)
    if text is None:
        return None
    try:
        return normalise_guid(text)
    except ValueError:
        return None


def _flag(mapping: Mapping[str, Any], name: str) -> bool:
    """A presence flag (header or property), case-insensitive name; explicit false values don't count."""
    for key, value in mapping.items():
        if str(key).lower() == name.lower():
            if isinstance(value, bool):
                return value
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            return str(value).strip().lower() not in _FALSE_FLAGS
    return False


def _prop(props: Mapping[str, Any], key: str) -> Any:
    value = props.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


# --- Dataverse / data events ------------------------------------------------------------------------

def _from_context(data: dict[str, Any], props: dict[str, Any], headers: dict[str, Any], *,
                  raw: bytes) -> ChangeEvent:
    try:
        ctx = RemoteExecutionContext.model_validate(data)
    except ValidationError as exc:
        raise envelope_error_from_validation(exc) from None

    original = ctx.message_name
    message = DATA_EVENT_MESSAGES.get(original, original)
    agent = str(_prop(props, CLAIM_INITIATING_USER_AGENT) or "")
    data_event = (
        ctx.primary_entity_name.startswith("mserp_")
        or "FINOPS" in agent.upper()
        or original in DATA_EVENT_MESSAGES
    )
    # Trimmed: header (webhook) or property (Service Bus). A body whose InputParameters member is gone
    # altogether (Dataverse removes it when trimming) is treated the same way: the handler must fetch.
    trimmed = (
        _flag(headers, HEADER_MSG_SIZE_EXCEEDED)
        or _flag(props, PROPERTY_MESSAGE_MAX_SIZE_EXCEEDED)
        or _flag(props, HEADER_MSG_SIZE_EXCEEDED)
        or data.get("InputParameters") is None
    )

    target = ctx.target
    if message in ("Create", "Update") and not trimmed:
        index = ctx.target_index()
        if index is None:
            raise EnvelopeError("InputParameters", f"no Target (required for {original})")
        if not isinstance(target, Entity):
            kind = type(target).__name__ if isinstance(target, EntityReference) else json_type_name(target)
            raise EnvelopeError(f"InputParameters[{index}].value",
                                f"Target must be an Entity for {original}, got {kind}")

    post_images = {alias: image.values() for alias, image in ctx.post_images().items()}
    pre_images = {alias: image.values() for alias, image in ctx.pre_images().items()}
    attributes: dict[str, Any] = {}
    formatted: dict[str, str | UnparsedValue] = {}
    for alias, image in ctx.post_images().items():
        attributes.update(post_images[alias])
        formatted.update(image.formatted())
    key_attributes: dict[str, Any] = {}
    if isinstance(target, Entity):
        attributes.update(target.values())
        formatted.update(target.formatted())
        key_attributes = target.keys()
    elif isinstance(target, EntityReference):
        key_attributes = {pair.key: to_python(pair.value) for pair in target.key_attributes}

    version = _modifiedon_ms(target, ctx.post_images().values())

    company = None
    if data_event:
        company = _lower(attributes.get("mserp_dataareaid"))
        for image in pre_images.values():
            company = company or _lower(image.get("mserp_dataareaid"))

    tag = None
    for node in ctx.lineage():
        value = node.shared_variable("tag")
        if value is not None and value != "":
            tag = str(value)
            break

    operation = ctx.operation_id
    if operation == _NIL_GUID:
        # [GAP] A nil OperationId cannot tell two operations on one record apart: fall back to the
        # RequestId, then to a hash of the body (an identical redelivery keeps the same key).
        if ctx.request_id and ctx.request_id != _NIL_GUID:
            operation = ctx.request_id
        else:
            operation = "sha256-" + hashlib.sha256(raw).hexdigest()[:32]
    record_id = ctx.primary_entity_id
    dedupe_key = f"{ctx.primary_entity_name}:{record_id}:{original}:{operation}"

    organization = (
        _lower(headers.get(HEADER_ORGANIZATION))
        or _lower(_prop(props, CLAIM_ORGANIZATION))
        or (ctx.organization_name or None)
    )
    return ChangeEvent(
        source="fno_data_event" if data_event else "dataverse",
        entity=ctx.primary_entity_name,
        record_id=record_id,
        message_name=message,
        source_message_name=original,
        dedupe_key=dedupe_key,
        version=version,
        attributes=attributes,
        formatted=formatted,
        pre_images=pre_images,
        post_images=post_images,
        key_attributes=key_attributes,
        is_complete=message == "Create" and isinstance(target, Entity) and not trimmed,
        trimmed=trimmed,
        initiating_user_id=ctx.initiating_user_id or _guid_or_none(_prop(props, CLAIM_INITIATING_USER)),
        user_id=ctx.user_id or _guid_or_none(_prop(props, CLAIM_USER)),
        tag=tag,
        company=company,
        correlation_id=ctx.correlation_id or _lower(headers.get(HEADER_CORRELATION)),
        depth=ctx.depth,
        event_time=ctx.operation_created_on,
        organization=organization,
        raw_size=len(raw),
    )


def _modifiedon_ms(target: Any, post_images: Any) -> int | None:
    candidates = []
    if isinstance(target, Entity):
        candidates.append(target)
    candidates.extend(post_images)
    for entity in candidates:
        value = entity.value("modifiedon")
        if isinstance(value, datetime):
            return datetime_to_epoch_ms(value)
    return None


# --- business events --------------------------------------------------------------------------------

def _from_business_event(data: dict[str, Any], props: dict[str, Any], *, raw_size: int) -> ChangeEvent:
    try:
        event = BusinessEvent.model_validate(data)
    except ValidationError as exc:
        raise envelope_error_from_validation(exc, drop=("members",)) from None

    natural_key_member = BUSINESS_EVENT_NATURAL_KEYS.get(event.business_event_id)
    record_id = None
    if natural_key_member is not None:
        value = event.members.get(natural_key_member)
        record_id = str(value) if value not in (None, "") else None
    if record_id is None and event.context_record_subject:
        record_id = event.context_record_subject

    company = _lower(event.business_event_legal_entity) or _lower(event.members.get("LegalEntity"))
    return ChangeEvent(
        source="fno_business_event",
        entity=event.business_event_id,
        record_id=record_id,
        message_name=event.business_event_id,
        source_message_name=event.business_event_id,
        dedupe_key=event.event_id.strip().upper(),
        version=event.control_number,
        attributes=dict(event.members),
        is_complete=False,  # business events are signals; re-read the record through OData
        initiating_user_id=event.initiating_user_object_id,
        company=company,
        event_time=event.occurred_at,
        organization=_lower(_prop(props, CLAIM_ORGANIZATION)),
        raw_size=raw_size,
    )


# --- resync (our own: backfill, reconcile --fix, catch-up) ------------------------------------------------

def _from_resync(data: dict[str, Any], *, raw_size: int) -> ChangeEvent:
    """A notification to re-read one source record (p2csync/envelopes/resync.py): no version, never complete.
    An F&O record's key fields are its attributes, under their OData names, as a business event carries them."""
    try:
        request = ResyncRequest.model_validate(data)
    except ValidationError as exc:
        raise envelope_error_from_validation(exc) from None
    key = dict(request.key or {})
    company = _lower(key.get("dataAreaId"))
    if company is not None:
        key["dataAreaId"] = company
    return ChangeEvent(
        source=RESYNC,
        entity=request.table,
        record_id=request.id if request.system == "dataverse" else request.record_text,
        message_name=RESYNC_MESSAGE,
        source_message_name=RESYNC_MESSAGE,
        dedupe_key=request.dedupe_key,
        version=None,
        attributes=key,
        is_complete=False,
        company=company,
        raw_size=raw_size,
    )
