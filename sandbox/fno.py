"""F&O OData simulator: data entities keyed by (dataAreaId, ...), per-user default company and
`cross-company`, no upsert (POST on an existing key fails, PATCH on a missing key fails), infolog-style
validation errors, and a change hook from which later flows can raise data/business events.

Behaviours the public sources disagree on are settings (`FnoSettings`, also `POST /_sandbox/settings`):
the status of X++ write errors (500 or 400) and what a once-encoded `+` in a key does (see `sandbox/fno_api.py`).

`FnO` is the store plus a Python API; `FnO.app` is the ASGI app (see `sandbox/fno_api.py`).
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.indexed_rows import IndexedRows
from sandbox.faults import FaultInjector
from sandbox.front import ADMIN_PREFIX
from sandbox.fno_entities import (
    BadValue,
    FnoEntity,
    default_value,
    etag_for,
    key_part,
    load_entities,
    normalise,
    overflows_real,
    utf16_length,
    utf16_truncate,
)
from sandbox.limits import LimitRejection, ServiceProtection, ServiceProtectionLimits
from sandbox.request_log import HISTORY_LIMIT, PAYLOAD_HISTORY_LIMIT, RequestLog

WRITE_EXCEPTION = "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"
ODATA_EXCEPTION = "Microsoft.OData.ODataException"
THROTTLED_MESSAGE = ("This request could not be processed at this time due to system experiencing high resource "
                     "utilization.")
UPDATE_CONFLICT = ("An update conflict occurred due to another user process deleting the record or changing one or "
                   "more fields in the record.")
DEFAULT_COMPANIES = ("usmf", "usrt", "demf")
DEFAULT_CUSTOMER_GROUPS = ("10", "20", "30", "80", "90")

Row = dict[str, Any]
#: What F&O fills in on a new row beyond type defaults: a new sales order is an open order (SalesStatus
#: Backorder) with processing status Active and no totals calculated yet (sales-status-map.md: Active =
#: Open order / document status None).
CREATE_DEFAULTS: dict[str, Row] = {
    "CDSSalesOrderHeaders": {"SalesOrderStatus": "Backorder", "SalesOrderProcessingStatus": "Active",
                             "AreTotalsUpdated": "No"},
    "CDSSalesOrderLines": {"SalesOrderLineStatus": "Backorder", "SalesOrderProcessingStatus": "Active",
                           "AreTotalsCalculated": "No", "AreSalesOrderTotalsUpdated": "No"},
}
#: The accounting currency of each demo legal entity (Contoso demo data: USMF and USRT in USD, DEMF in EUR).
ACCOUNTING_CURRENCIES = {"usmf": "USD", "usrt": "USD", "demf": "EUR"}
def _customers_flags(row: Row, fno: FnO) -> Row:
    """An order's OrderingCustomerIsExternallyMaintained / InvoiceCustomerIsExternallyMaintained: the flags of its
    customers (the invoice account defaults to the ordering one), as the CDS order entity exposes them (p2c-mappings
    1.1: "Orders expose OrderingCustomerIsExternallyMaintained and InvoiceCustomerIsExternallyMaintained")."""
    def flag(account: Any) -> str:
        if not account:
            return "No"
        found = fno.get("CustomersV3", {"dataAreaId": row["dataAreaId"], "CustomerAccount": account})
        return "Yes" if found is not None and found.get("IsExternallyMaintained") == "Yes" else "No"
    ordering = row.get("OrderingCustomerAccountNumber")
    invoice = row.get("InvoiceCustomerAccountNumber") or ordering
    return {"InvoiceCustomerAccountNumber": invoice, "OrderingCustomerIsExternallyMaintained": flag(ordering),
            "InvoiceCustomerIsExternallyMaintained": flag(invoice)}


def _order_fields_of_line(row: Row, fno: FnO) -> Row:
    """What a CDS order line repeats of its order: the processing status, the totals flag and the customer flags
    (p2c-mappings 6: "The line entity has AreTotalsCalculated, AreSalesOrderTotalsUpdated, the same
    IsExternallyMaintained flags, and SalesOrderProcessingStatus"). [Inferred] they are the header's values (the
    entity joins the order), so the sandbox copies them on every line write and the actions write the header
    first; a line of an order that does not exist (yet) keeps what it has."""
    header = fno.get("CDSSalesOrderHeaders",
                     {"dataAreaId": row["dataAreaId"], "SalesOrderNumber": row["SalesOrderNumber"]})
    if header is None:
        return {}
    return {"SalesOrderProcessingStatus": header.get("SalesOrderProcessingStatus"),
            "AreSalesOrderTotalsUpdated": header.get("AreTotalsUpdated"),
            "OrderingCustomerIsExternallyMaintained": header.get("OrderingCustomerIsExternallyMaintained"),
            "InvoiceCustomerIsExternallyMaintained": header.get("InvoiceCustomerIsExternallyMaintained")}


#: Fields F&O computes on every write, whatever the client sends: a released product's CurrencyCode is the
#: accounting currency of its legal entity (p2c-mappings 4.1 row 1); an order header's customer flags, and what
#: its lines repeat of it.
COMPUTED: dict[str, Callable[[Row, FnO], Row]] = {
    "CDSReleasedDistinctProducts": lambda row, fno: {
        "CurrencyCode": ACCOUNTING_CURRENCIES.get(row["dataAreaId"], "USD")},
    "CDSSalesOrderHeaders": _customers_flags,
    "CDSSalesOrderLines": _order_fields_of_line,
}
KeyTuple = tuple[Any, ...]
StringOverflow = Literal["error", "truncate"]


class FnoError(Exception):
    """An OData error: `{"error": {"code": "", "message", "innererror": {...}}}`."""

    def __init__(self, status: int, inner_message: str, *, inner_type: str = WRITE_EXCEPTION,
                 message: str = "An error has occurred.") -> None:
        super().__init__(f"{status}: {inner_message}")
        self.status = status
        self.message = message
        self.inner_message = inner_message
        self.inner_type = inner_type

    def body(self) -> dict[str, Any]:
        return {"error": {"code": "", "message": self.message, "innererror": {
            "message": self.inner_message, "type": self.inner_type, "stacktrace": ""}}}

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status, headers={"OData-Version": "4.0"})


class FnoSettings(BaseModel):
    """Where public F&O captures disagree, the sandbox can behave either way (tests run under both).

    * `write_error_status`: X++ write failures (duplicate key, validation infolog, update conflict) come back
      as `500` in most captures and as `400` in others, with the same AxODataWriteException body.
    * `plus_in_key`: a `+` that reaches OData's key parser (sent percent-encoded once) is reported to fail
      like `/` and `\\` ("route": 404 No HTTP resource was found, the published symptom); [Inferred]
      "space": it is form-decoded to a space, so the key names another (missing) row.
    * `update_conflicts`: the next N updates fail with X++'s update-conflict infolog (a transient state).
    * `string_overflow`: what a text longer than its field's EDT does. Sources disagree: X++ truncates on
      assignment to a sized string (AX7 "String truncation" blog), while a value that reaches SQL unchanged
      fails ("String or binary data would be truncated"). 'error' (default, the stricter) answers with an
      infolog write error [Inferred wording]; 'truncate' stores the first characters.
    * `batch_failed_changeset`: how `$batch` answers a change set that failed. OData 4.0 §11.7.4: one
      `application/http` part for the whole set ("single"); ASP.NET Web API OData, which F&O's OData is built
      on, answers a `multipart/mixed` change set response holding only the failing request's answer
      ("changeset", the default [Inferred] for F&O: no capture found).
    * `batch_after_error`: whether `$batch` goes on with the next item after a failed one. [Inferred]
      "continue" (default): every item is answered; "stop": processing ends at the first failure unless the
      request says `Prefer: odata.continue-on-error` (the OData 4.01 default; ASP.NET Web API OData >= 5.7).
    * `quotation_numbers`: the sales quotation number sequence. P2C requires it to allow manual numbers (quote
      numbers come from Sales); "automatic" plays an environment where that prerequisite is missing: a create
      that gives a number fails with an infolog [Inferred wording].
    * `order_numbers`: the same for the sales order number sequence (P2C: order numbers come from Sales).
    * `sales_tax_percent`: [Inferred] the sandbox has no tax engine; "Calculate sales totals" and invoice
      posting charge this rate on every line amount (0 by default).
    * `batch_max_operations` / `batch_max_changeset`: F&O documents "a batch can contain up to 5000
      operations" (service protection API limits); ODataLib's own default quotas are 100 parts per batch and
      1000 operations per change set. Defaults follow the F&O doc; tests lower them to ODataLib's.
    """

    write_error_status: Literal[400, 500] = 500
    plus_in_key: Literal["route", "space"] = "route"
    update_conflicts: int = Field(default=0, ge=0)
    string_overflow: Literal["error", "truncate"] = "error"
    batch_failed_changeset: Literal["changeset", "single"] = "changeset"
    batch_after_error: Literal["continue", "stop"] = "continue"
    batch_max_operations: int = Field(default=5000, ge=1)
    batch_max_changeset: int = Field(default=5000, ge=1)
    quotation_numbers: Literal["manual", "automatic"] = "manual"
    order_numbers: Literal["manual", "automatic"] = "manual"
    sales_tax_percent: float = Field(default=0.0, ge=0, le=100)


class FnoUser(BaseModel):
    user_id: str
    token: str
    default_company: str = "usmf"
    companies: list[str] | None = None  # None = every configured company
    #: The user's Microsoft Entra object id (business events carry it as InitiatingUserAADObjectId).
    aad_object_id: str = ""

    @model_validator(mode="after")
    def _default_object_id(self) -> FnoUser:
        if not self.aad_object_id:  # [Inferred] a stable id per sandbox user
            self.aad_object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fno-user-aad:{self.user_id}"))
        return self


class FnoChange(BaseModel):
    """What the change hook receives after a committed write."""

    model_config = ConfigDict(frozen=True)

    entity_set: str
    operation: Literal["Create", "Update", "Delete"]
    row: Row  # the row after the write (before it, for Delete)
    changed: list[str]  # properties in the request (Create: all set properties)
    before: Row | None = None  # Update: the row before the write
    user: str
    company: str
    time: datetime


ChangeSink = Callable[[FnoChange], None]
Validator = Callable[[FnoEntity, Row, str, "FnO"], list[str]]


def customer_group_validator(entity: FnoEntity, row: Row, operation: str, fno: FnO) -> list[str]:
    """CustomersV3: the customer group must exist (the realistic permanent error)."""
    group = row.get("CustomerGroupId", "")
    if not group:
        return ["Field 'Customer group' must be filled in."]
    if group not in fno.customer_groups:
        return [f"The value '{group}' in field 'Customer group' is not found in the related table "
                "'Customer groups'.",
                f"validateField failed on field '{entity.table_name}.CustomerGroupId'."]
    return []


def _related_missing(fno: FnO, entity_set: str, key: dict[str, Any]) -> bool:
    entity = fno.entities.get(entity_set)
    if entity is None:
        return False
    return fno._rows[entity_set].get(fno.key_tuple(entity, key)) is None


def _related_problems(fno: FnO, entity: FnoEntity, row: Row, field: str, related_set: str, related_field: str,
                      label: str, table_label: str) -> list[str]:
    """X++ validateField on a foreign key: the value must exist in the related table, in the row's company (the
    related-table wording of customer_group_validator)."""
    value = row.get(field) or ""
    if value and _related_missing(fno, related_set, {"dataAreaId": row["dataAreaId"], related_field: value}):
        return [f"The value '{value}' in field '{label}' is not found in the related table '{table_label}'.",
                f"validateField failed on field '{entity.table_name}.{field}'."]
    return []


def document_header_validator(noun: str, number_field: str, customer_field: str,
                              numbers: Callable[[FnO], str]) -> Validator:
    """CDSSalesQuotationHeaders / CDSSalesOrderHeaders: the customer must exist in the document's company; a
    number given on create needs a number sequence that allows manual numbers (P2C prerequisite: document
    numbers come from Sales). [Inferred wording] of the number-sequence refusal."""

    def validate(entity: FnoEntity, row: Row, operation: str, fno: FnO) -> list[str]:
        problems: list[str] = []
        if operation == "Create" and numbers(fno) == "automatic":
            problems.append(f"Number sequence for {noun}s in company {row['dataAreaId']} does not allow manual "
                            f"numbers; '{row.get(number_field)}' cannot be used.")
        return problems + _related_problems(fno, entity, row, customer_field, "CustomersV3", "CustomerAccount",
                                            "Customer account", "Customers")

    return validate


def document_line_validator(noun: str, header_set: str, number_field: str) -> Validator:
    """CDSSalesQuotationLines / CDSSalesOrderLines: a line belongs to an existing document and names a product
    released in its company. [Inferred wording] of the missing-document message."""

    def validate(entity: FnoEntity, row: Row, operation: str, fno: FnO) -> list[str]:
        if operation == "Delete":
            return []
        number = row.get(number_field) or ""
        problems: list[str] = []
        if _related_missing(fno, header_set, {"dataAreaId": row["dataAreaId"], number_field: number}):
            problems.append(f"{noun.capitalize()} '{number}' does not exist in company {row['dataAreaId']}.")
        return problems + _related_problems(fno, entity, row, "ProductNumber", "CDSReleasedDistinctProducts",
                                            "ProductNumber", "Product number", "Released products")

    return validate


quotation_header_validator = document_header_validator(
    "sales quotation", "SalesQuotationNumber", "RequestingCustomerAccountNumber",
    lambda fno: fno.settings.quotation_numbers)
quotation_line_validator = document_line_validator("sales quotation", "CDSSalesQuotationHeaders",
                                                   "SalesQuotationNumber")
order_header_validator = document_header_validator(
    "sales order", "SalesOrderNumber", "OrderingCustomerAccountNumber", lambda fno: fno.settings.order_numbers)
order_line_validator = document_line_validator("sales order", "CDSSalesOrderHeaders", "SalesOrderNumber")


def default_users() -> list[FnoUser]:
    return [FnoUser(user_id="p2csync-integration", token="sandbox-integration-user", default_company="usmf"),
            FnoUser(user_id="sam.seller", token="sandbox-sales-user", default_company="usmf")]


class FnO:
    """In-memory F&O environment. Thread-safe.

    Args:
        entities: entity definitions (default: those in `fno_fields.txt`).
        companies: legal entities (dataAreaId values) that exist.
        users: token -> user with a default company.
        customer_groups: valid CustomerGroupId values (checked by the CustomersV3 validator).
        page_size: server-driven page size (F&O pages at 10,000).
        limits: service protection limits (user-based limits are optional in F&O; off by default).
        write_error_status, plus_in_key, string_overflow: see `FnoSettings`.
        history_limit / payload_history_limit: records kept of the request log and event errors / of
            delivered event messages (`sandbox.request_log.HISTORY_LIMIT`, `PAYLOAD_HISTORY_LIMIT`).
    """

    def __init__(self, *, entities: list[FnoEntity] | None = None, companies: Sequence[str] = DEFAULT_COMPANIES,
                 users: list[FnoUser] | None = None, customer_groups: Iterable[str] = DEFAULT_CUSTOMER_GROUPS,
                 page_size: int = 10000, limits: ServiceProtectionLimits | None = None,
                 clock: Callable[[], datetime] | None = None, seed: int = 0,
                 write_error_status: Literal[400, 500] = 500,
                 plus_in_key: Literal["route", "space"] = "route",
                 string_overflow: StringOverflow = "error", history_limit: int | None = HISTORY_LIMIT,
                 payload_history_limit: int | None = PAYLOAD_HISTORY_LIMIT) -> None:
        self.lock = threading.RLock()
        self.settings = FnoSettings(write_error_status=write_error_status, plus_in_key=plus_in_key,
                                    string_overflow=string_overflow)
        self._initial_settings = self.settings.model_copy()
        self.entities: dict[str, FnoEntity] = {e.entity_set: e for e in (entities or load_entities())}
        self.companies = [c.lower() for c in companies]
        self.users = list(users or default_users())
        self._by_token = {u.token: u for u in self.users}
        self._by_id = {u.user_id: u for u in self.users}
        self.customer_groups = set(customer_groups)
        self.page_size = page_size
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.faults = FaultInjector(seed)
        self.request_log = RequestLog(history_limit)
        self.protection = ServiceProtection(limits or ServiceProtectionLimits(max_concurrent=None,
                                                                              max_requests=None))
        self._initial_limits = self.protection.limits.model_copy()
        self.validators: dict[str, list[Validator]] = {
            "CustomersV3": [customer_group_validator],
            "CDSSalesQuotationHeaders": [quotation_header_validator],
            "CDSSalesQuotationLines": [quotation_line_validator],
            "CDSSalesOrderHeaders": [order_header_validator],
            "CDSSalesOrderLines": [order_line_validator],
        }
        self._sinks: list[ChangeSink] = []
        self._rows: dict[str, IndexedRows] = {name: IndexedRows() for name in self.entities}  # KeyTuple -> Row
        self._versions: dict[str, IndexedRows] = {name: IndexedRows() for name in self.entities}  # KeyTuple -> int
        self._rec_versions = itertools.count(22565421176)
        self._held: dict[int, list[FnoChange]] = {}  # thread id -> changes of an open change set
        self._sequences: dict[tuple[str, str], int] = {}
        from sandbox.fno_events import FnoEvents

        self.events = FnoEvents(self, seed=seed, history_limit=history_limit,
                                payload_history_limit=payload_history_limit)
        self.on_change(self.events.on_change)
        from sandbox.fno_api import build_app

        self.app = build_app(self)

    # =====================================================================================
    # Python API

    def on_change(self, sink: ChangeSink) -> ChangeSink:
        """Call `sink(FnoChange)` after every committed write (HTTP or Python). Keep it quick: it runs on
        the writer's thread (the server loop for HTTP writes)."""
        self._sinks.append(sink)
        return sink

    def add_validator(self, entity_set: str, validator: Validator) -> None:
        self.validators.setdefault(entity_set, []).append(validator)

    def create(self, entity_set: str, values: Mapping[str, Any], *, user: str | None = None) -> Row:
        """Create as a user in the client (dataAreaId defaults to the user's company); returns the row."""
        caller = self._user(user)
        row, change = self.create_row(self.entity(entity_set), dict(values), caller)
        self.notify(change)
        return row

    def update(self, entity_set: str, key: Mapping[str, Any], values: Mapping[str, Any], *,
               user: str | None = None) -> Row:
        caller = self._user(user)
        entity = self.entity(entity_set)
        row, change = self.update_row(entity, self.key_tuple(entity, dict(key)), dict(values), caller,
                                      companies=self.companies)
        self.notify(change)
        return row

    def delete(self, entity_set: str, key: Mapping[str, Any], *, user: str | None = None) -> None:
        caller = self._user(user)
        entity = self.entity(entity_set)
        change = self.delete_row(entity, self.key_tuple(entity, dict(key)), caller, companies=self.companies)
        self.notify(change)

    def get(self, entity_set: str, key: Mapping[str, Any]) -> Row | None:
        entity = self.entity(entity_set)
        with self.lock:
            row = self._rows[entity_set].get(self.key_tuple(entity, dict(key)))
            return dict(row) if row is not None else None

    def rows(self, entity_set: str, company: str | None = None) -> list[Row]:
        self.entity(entity_set)
        with self.lock:
            rows = [dict(r) for r in self._rows[entity_set].values()]
        if company:
            rows = [r for r in rows if r.get("dataAreaId") == company.lower()]
        return rows

    def reset(self) -> None:
        """Empty every entity set; clear faults, limits, settings and the request log (sinks and validators
        stay)."""
        with self.lock:
            self._rows = {name: IndexedRows() for name in self.entities}
            self._versions = {name: IndexedRows() for name in self.entities}
        self.faults.clear()
        self.request_log.clear()
        self.protection.configure(self._initial_limits.model_copy())
        self.protection.reset()
        self.settings = self._initial_settings.model_copy()
        with self.lock:
            self._sequences.clear()
        self.events.clear()

    def next_number(self, sequence: str, company: str, prefix: str) -> str:
        """The next number of a number sequence per company (e.g. `CIV-000001`), as F&O's number sequences
        hand out; [Inferred] formats."""
        with self.lock:
            key = (sequence, company.lower())
            self._sequences[key] = self._sequences.get(key, 0) + 1
            return f"{prefix}{self._sequences[key]:06d}"

    # =====================================================================================
    # FrontedSimulator protocol

    def authenticate(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        user = self._by_token.get(authorization[7:].strip())
        return user.user_id if user else None

    def unauthorized_response(self) -> Response:
        return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer realm=""'})

    def throttled_response(self, retry_after: int, rejection: LimitRejection | None) -> Response:
        return JSONResponse({"error": {"code": "", "message": THROTTLED_MESSAGE}}, status_code=429,
                            headers={"Retry-After": str(retry_after)})

    def server_error_response(self, status: int) -> Response:
        return JSONResponse({"error": {"code": "", "message": "An error has occurred."}}, status_code=status)

    def admin_routes(self) -> list[BaseRoute]:
        async def settings(request: Request) -> Response:
            """GET the settings; POST a partial `FnoSettings` to change them (until the next reset)."""
            if request.method == "POST":
                try:
                    self.configure(**(await request.json()))
                except (ValidationError, ValueError, TypeError) as exc:
                    return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(self.settings.model_dump())

        from sandbox.fno_actions import action_routes

        return [Route(f"{ADMIN_PREFIX}/settings", settings, methods=["GET", "POST"]), *action_routes(self)]

    @property
    def string_overflow(self) -> StringOverflow:
        return self.settings.string_overflow

    @string_overflow.setter
    def string_overflow(self, value: StringOverflow) -> None:
        self.configure(string_overflow=value)

    def configure(self, **changes: Any) -> FnoSettings:
        """Change some settings (validated); returns the new ones."""
        with self.lock:
            self.settings = FnoSettings.model_validate({**self.settings.model_dump(), **changes})
            return self.settings

    def write_failed(self, entity: FnoEntity, infolog: str) -> FnoError:
        """An X++ write failure (AxODataWriteException) with the configured status (500, or 400)."""
        return FnoError(self.settings.write_error_status,
                        f"Write failed for table row of type '{entity.table_name}'. Infolog: {infolog}")

    # =====================================================================================
    # Core (shared by HTTP and Python)

    def entity(self, entity_set: str) -> FnoEntity:
        entity = self.entities.get(entity_set)
        if entity is None:
            raise FnoError(404, f"Resource not found for the segment '{entity_set}'.", inner_type=ODATA_EXCEPTION,
                           message=f"No HTTP resource was found that matches the request URI '{entity_set}'.")
        return entity

    def user(self, user_id: str) -> FnoUser:
        return self._by_id[user_id]

    def _user(self, user: str | None) -> FnoUser:
        if user is None:
            return self.users[-1]
        found = self._by_id.get(user) or self._by_token.get(user)
        if found is None:
            raise ValueError(f"unknown sandbox user {user!r}")
        return found

    def visible_companies(self, user: FnoUser, cross_company: bool) -> list[str]:
        if cross_company:
            return list(user.companies or self.companies)
        return [user.default_company.lower()]

    def key_tuple(self, entity: FnoEntity, key: Mapping[str, Any]) -> KeyTuple:
        missing = [k for k in entity.key if k not in key]
        extra = [k for k in key if k not in entity.key]
        if missing or extra:
            raise FnoError(400, "The number of keys specified in the URI does not match number of key properties "
                                f"for the resource '{entity.qualified_type}'.", inner_type=ODATA_EXCEPTION)
        return tuple(key_part(key[k]) for k in entity.key)

    def _row_key(self, entity: FnoEntity, row: Row) -> KeyTuple:
        return tuple(key_part(row.get(k)) for k in entity.key)

    def find(self, entity: FnoEntity, key: KeyTuple, companies: Sequence[str]) -> Row | None:
        row = self._rows[entity.entity_set].get(key)
        if row is None or row.get("dataAreaId") not in companies:
            return None
        return row

    def etag(self, entity: FnoEntity, row: Row) -> str:
        return etag_for(self._versions[entity.entity_set][self._row_key(entity, row)])

    def _values(self, entity: FnoEntity, body: Mapping[str, Any]) -> Row:
        values: Row = {}
        for name, value in body.items():
            if name.startswith("@"):
                continue
            if "@" in name:
                continue  # instance annotations (e.g. @odata.etag) carry no data
            edm_type = entity.fields.get(name)
            if edm_type is None:
                raise FnoError(400, f"The property '{name}' does not exist on type '{entity.qualified_type}'. "
                                    "Make sure to only use property names that are defined by the type.",
                               inner_type=ODATA_EXCEPTION,
                               message=f"The property '{name}' does not exist on type '{entity.qualified_type}'.")
            try:
                values[name] = normalise(name, edm_type, value)
            except BadValue as exc:
                raise FnoError(400, str(exc), inner_type=ODATA_EXCEPTION) from exc
        return self._fit_storage(entity, values)

    def _fit_storage(self, entity: FnoEntity, values: Row) -> Row:
        """What the table columns cannot hold: a text longer than its EDT (an error or cut, per
        `string_overflow`) and a decimal beyond F&O's real (numeric(32,16)), which ODataLib reads but SQL cannot
        store. The infolog wording of both is [Inferred]."""
        errors: list[str] = []
        for name, value in values.items():
            if name == "dataAreaId":
                continue  # answered by the company check ("does not exist"), as F&O resolves the company first
            limit = entity.max_lengths.get(name)
            if isinstance(value, str) and limit is not None and utf16_length(value) > limit:
                if self.settings.string_overflow == "truncate":
                    values[name] = utf16_truncate(value, limit)
                else:
                    errors.append(f"String or binary data would be truncated in field '{entity.table_name}.{name}' "
                                  f"({utf16_length(value)} characters, the field holds {limit}).")
            elif overflows_real(entity.fields[name], value):
                errors.append(f"Arithmetic overflow converting {value} for field '{entity.table_name}.{name}'.")
        if errors:
            infolog = "; ".join(f"Error: {e}" for e in errors)
            raise self.write_failed(entity, infolog)
        return values

    def _validate(self, entity: FnoEntity, row: Row, operation: str) -> None:
        warnings: list[str] = []
        for validator in self.validators.get(entity.entity_set, []):
            warnings.extend(validator(entity, row, operation, self))
        if warnings:
            raise self.write_failed(entity, "; ".join(f"Warning: {w}" for w in warnings))

    def create_row(self, entity: FnoEntity, body: Mapping[str, Any], user: FnoUser) -> tuple[Row, FnoChange]:
        values = self._values(entity, body)
        company = values.get("dataAreaId") or user.default_company.lower()
        values["dataAreaId"] = company
        if company not in (user.companies or self.companies):
            raise FnoError(400, f"Company '{company}' does not exist or the user has no access to it.")
        for name in entity.key:
            if values.get(name) in (None, "") and entity.fields[name] == "Edm.String":
                raise self.write_failed(entity, f"Error: Field '{name}' must be filled in.")
        row = {name: default_value(edm_type) for name, edm_type in entity.fields.items()}
        row.update(CREATE_DEFAULTS.get(entity.entity_set, {}))
        row.update(values)
        if computed := COMPUTED.get(entity.entity_set):
            row.update(computed(row, self))
        key = self._row_key(entity, row)
        with self.lock:
            if key in self._rows[entity.entity_set]:
                described = ", ".join(str(row[k]) for k in entity.key if k != "dataAreaId")
                raise self.write_failed(entity, f"Error: Cannot create a record in {entity.table_name} "
                                                f"({described}, {company}). The record already exists.")
            self._validate(entity, row, "Create")
            self._rows[entity.entity_set][key] = row
            self._versions[entity.entity_set][key] = next(self._rec_versions)
            change = FnoChange(entity_set=entity.entity_set, operation="Create", row=dict(row),
                               changed=sorted(values), user=user.user_id, company=company, time=self.clock())
            return dict(row), change

    def update_row(self, entity: FnoEntity, key: KeyTuple, body: Mapping[str, Any], user: FnoUser, *,
                   companies: Sequence[str], if_match: str | None = None) -> tuple[Row, FnoChange]:
        values = self._values(entity, body)
        with self.lock:
            current = self.find(entity, key, companies)
            if current is None:
                raise FnoError(400, "No resources were found when selecting for update.")
            if if_match not in (None, "*") and if_match != self.etag(entity, current):
                raise FnoError(412, "The record has been changed by another user since it was read (the ETag in "
                                    "If-Match does not match).", message="Precondition failed.")
            for name in entity.key:
                if name in values and key_part(values[name]) != key_part(current[name]):
                    raise FnoError(400, f"Key property '{name}' cannot be changed.")
            row = {**current, **values}
            if computed := COMPUTED.get(entity.entity_set):
                row.update(computed(row, self))
            if self.settings.update_conflicts:
                self.settings.update_conflicts -= 1
                raise self.write_failed(entity, f"Error: Cannot edit a record in {entity.table_name}. "
                                                f"{UPDATE_CONFLICT}")
            self._validate(entity, row, "Update")
            self._rows[entity.entity_set][key] = row
            self._versions[entity.entity_set][key] = next(self._rec_versions)
            change = FnoChange(entity_set=entity.entity_set, operation="Update", row=dict(row),
                               changed=sorted(values), user=user.user_id, company=row["dataAreaId"],
                               time=self.clock(), before=dict(current))
            return dict(row), change

    def delete_row(self, entity: FnoEntity, key: KeyTuple, user: FnoUser, *, companies: Sequence[str],
                   if_match: str | None = None) -> FnoChange:
        with self.lock:
            current = self.find(entity, key, companies)
            if current is None:
                raise FnoError(404, "No resources were found when selecting for delete.")
            if if_match not in (None, "*") and if_match != self.etag(entity, current):
                raise FnoError(412, "The record has been changed by another user since it was read.",
                               message="Precondition failed.")
            del self._rows[entity.entity_set][key]
            del self._versions[entity.entity_set][key]
            return FnoChange(entity_set=entity.entity_set, operation="Delete", row=dict(current), changed=[],
                             user=user.user_id, company=current["dataAreaId"], time=self.clock())

    def snapshot(self, entity: FnoEntity, companies: Sequence[str],
                 keep: Callable[[Row], bool] | None = None) -> list[tuple[Row, str]]:
        """Copies of the rows of `companies` (that `keep` accepts) with their etags; only kept rows are copied."""
        with self.lock:
            return [(dict(row), self.etag(entity, row)) for row in self._rows[entity.entity_set].values()
                    if row.get("dataAreaId") in companies and (keep is None or keep(row))]

    def notify(self, change: FnoChange) -> None:
        """Hand a committed change to every sink (held back until its change set commits)."""
        held = self._held.get(threading.get_ident())
        if held is not None:
            held.append(change)
            return
        for sink in list(self._sinks):
            sink(change)

    @contextmanager
    def change_set(self) -> Iterator[ChangeSet]:
        """All-or-nothing writes, as an OData change set: the store lock is held throughout, change events
        are held back, and `ChangeSet.rollback()` (or an exception) restores every row and version as they
        were, raising no event. On commit the held events go to the sinks, after the lock is released.

        The caller must not yield to the event loop inside (the lock is re-entrant on this thread, so another
        request's coroutine would write through it)."""
        state = ChangeSet()
        thread = threading.get_ident()
        with self.lock:
            stores = [*self._rows.values(), *self._versions.values()]
            marks = [store.begin() for store in stores]  # undo journals, not copies of every entity set
            self._held[thread] = []
            try:
                yield state
            except BaseException:
                state.rolled_back = True
                raise
            finally:
                held = self._held.pop(thread)
                for store, mark in zip(stores, marks):
                    if state.rolled_back:
                        store.rollback(mark)
                    else:
                        store.end(mark)
        if not state.rolled_back:
            for change in held:
                self.notify(change)


class ChangeSet:
    """The handle of an open `FnO.change_set()`."""

    def __init__(self) -> None:
        self.rolled_back = False

    def rollback(self) -> None:
        self.rolled_back = True

