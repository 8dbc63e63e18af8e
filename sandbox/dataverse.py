"""Dataverse simulator: an in-memory organisation with the Web API v9.2 rules our integration relies on
(alternate keys, upsert, conditional writes, etags, lookups) and webhooks raised on every write.

`Dataverse` is the store plus a Python API that acts like a user in the UI; `Dataverse.app` is the ASGI
app (see `sandbox/dataverse_api.py`) that `SandboxServer` serves on loopback.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from sandbox.dataverse_events import Change, ContextSerializer, SystemJob, WebhookDispatcher, WebhookStep
from sandbox.dataverse_events import WebhookEndpoint, WebhookRegistration
from sandbox.indexed_rows import IndexedRows
from sandbox.dataverse_registrations import (
    WEBHOOK_TABLES, Registrations, RuleViolation, registration_tables, seed_rows as registration_seed_rows,
)
from sandbox.dataverse_tables import (
    DEFAULT_STATUS_FOR_STATE, USD_CURRENCY_ID, ColumnType, Column, DataverseUser, LookupValue, Organization,
    Table, default_tables, default_users, processing_status, seed_rows,
)
from sandbox.faults import FaultInjector
from sandbox.limits import LimitRejection, ServiceProtection, ServiceProtectionLimits
from sandbox.odata import GUID_RE, GuidLiteral, format_datetime, parse_datetime
from sandbox.request_log import HISTORY_LIMIT, PAYLOAD_HISTORY_LIMIT, RequestLog

KeyValues = dict[str, Any]
RowRef = str | Mapping[str, Any]  # a GUID or {alternate key column: value}

UNSUPPORTED_KEY_CHARS = set("/<>*%&:\\?+")

#: Document lines: line table -> (parent lookup column, parent table, parent states in which lines can change).
#: A quote's products can be changed only while the quote is a Draft: once activated it is read-only ("Activating
#: the quote changes its status to Read-Only", Microsoft Q&A) and a line write fails with the platform's "The
#: detail cannot be updated because the parent is not editable." (a captured message; its code is [Inferred]).
#: Orders (Active = 0) and invoices (Active = 0) take line changes while active.
DOCUMENT_LINES: dict[str, tuple[str, str, frozenset[int]]] = {
    "quotedetail": ("quoteid", "quote", frozenset({0})),
    "salesorderdetail": ("salesorderid", "salesorder", frozenset({0})),
    "invoicedetail": ("invoiceid", "invoice", frozenset({0})),
}
#: P2C's processing status of an order (msdynce_processingstatus, reference 6.7: Draft, Active, ...). An order
#: still in Draft (or without a status) takes line changes; once activated "the Sales order is read-only" (P2C doc)
#: and its lines fail like an active quote's. [Inferred] the option values (PROCESSING_STATUS_OPTIONS).
PROCESSING_STATUS, DRAFT = "msdynce_processingstatus", processing_status("Draft")
PARENT_NOT_EDITABLE = ("0x80040203", "The detail cannot be updated because the parent is not editable.")
#: Dataverse's "invalid argument" code; [Inferred] for the catalogue rules (no capture of their codes found).
INVALID_ARGUMENT = "0x80040203"
#: Lines priced from their document's price list (the F&O -> Sales flows write these).
PRICED_LINES = frozenset({"salesorderdetail", "invoicedetail"})
#: Column types whose `$filter` equality compares as the key index does (text case-insensitively, numbers by value);
#: datetimes (parsed from text literals) and lookups (`_x_value`) are filtered by a scan.
INDEXED_FILTER_TYPES = frozenset({ColumnType.STRING, ColumnType.MEMO, ColumnType.INT, ColumnType.BIGINT,
                                  ColumnType.DECIMAL, ColumnType.MONEY, ColumnType.FLOAT, ColumnType.OPTIONSET})
#: product statecode/statuscode of a Draft product.
PRODUCT_DRAFT = (2, 0)


class DataverseError(Exception):
    """A Web API error: status plus the `{"error": {"code", "message"}}` body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        return JSONResponse({"error": {"code": self.code, "message": self.message}}, status_code=self.status,
                            headers={"OData-Version": "4.0", **self.headers})


def invalid_property(table: Table, name: str) -> DataverseError:
    return DataverseError(400, "0x80048d19",
                          f"Invalid property '{name}' was found in entity 'Microsoft.Dynamics.CRM.{table.logical_name}'.")


def does_not_exist(table: Table, ident: RowRef) -> DataverseError:
    if isinstance(ident, str):
        return DataverseError(404, "0x80040217", f"{table.logical_name} With Id = {ident} Does Not Exist")
    return DataverseError(404, "0x80040217",
                          f"A record with the specified key values does not exist in {table.logical_name} entity")


class ChangeSet:
    """The handle of an open `Dataverse.change_set()`."""

    def __init__(self) -> None:
        self.rolled_back = False

    def rollback(self) -> None:
        self.rolled_back = True


class WriteResult:
    def __init__(self, record_id: str, created: bool, row: dict[str, Any]) -> None:
        self.record_id = record_id
        self.created = created
        self.row = row


class Dataverse:
    """In-memory Dataverse organisation. Thread-safe; every write raises webhook events in commit order.

    Args:
        tables: table definitions (default: `default_tables()`).
        users: systemusers with their sandbox tokens (default: integration app user + a sales user).
        organization: org id/name/domain used in payloads and headers.
        limits: service protection limits (default: the documented 52 concurrent / 6000 per 5 min).
        clock: returns "now" (UTC); injectable for tests.
        timestamp_precision: Dataverse stores datetimes to the second; "millisecond" relaxes that.
        webhook_timeout / webhook_retry_delay: delivery timeout (60 s documented) and pause before the
            single retry of a 502/503/504.
        webhook_workers: webhook deliveries in flight at once (the asynchronous service runs async steps in
            parallel; 1, the default, delivers in commit order).
        default_page_size: page size without `Prefer: odata.maxpagesize`.
        batch_failed_changeset: how `$batch` answers a failed change set: "single" (the failing request's
            answer as one `application/http` part, as ASP.NET OData writes it) or "changeset" (that answer
            inside a change set response). [Inferred] both: no capture of Dataverse's own was found.
        history_limit / payload_history_limit: records kept of the request log, delivery attempts and finished
            system jobs / of delivered webhook contexts (`sandbox.request_log.HISTORY_LIMIT`,
            `PAYLOAD_HISTORY_LIMIT`; None keeps all).
        create_products_active: Organization.CreateProductsWithoutParentInActiveState. "By default, a product
            record is in the Draft state when you create it"; the column is 0 (false) "for a fresh
            installation" (Sales developer guide, product lifecycle), so the default here is Draft.
    """

    def __init__(self, *, tables: list[Table] | None = None, users: list[DataverseUser] | None = None,
                 organization: Organization | None = None, limits: ServiceProtectionLimits | None = None,
                 clock: Callable[[], datetime] | None = None,
                 timestamp_precision: Literal["second", "millisecond"] = "second",
                 webhook_timeout: float = 60.0, webhook_retry_delay: float = 0.2,
                 default_page_size: int = 5000, seed: int = 0,
                 batch_failed_changeset: Literal["single", "changeset"] = "single",
                 create_products_active: bool = False, webhook_workers: int = 1,
                 history_limit: int | None = HISTORY_LIMIT,
                 payload_history_limit: int | None = PAYLOAD_HISTORY_LIMIT) -> None:
        self.lock = threading.RLock()
        self.batch_failed_changeset = batch_failed_changeset
        self.create_products_active = create_products_active
        self._held: dict[int, list[Change]] = {}  # thread -> webhook events of its open change set
        self.tables: dict[str, Table] = {t.logical_name: t for t in (tables or default_tables())}
        for platform_table in registration_tables():  # webhooks are registered in these, always present
            self.tables.setdefault(platform_table.logical_name, platform_table)
        self._by_set: dict[str, Table] = {t.entity_set: t for t in self.tables.values()}
        self.users: list[DataverseUser] = list(users or default_users())
        self._by_token = {u.token: u for u in self.users}
        self._by_id = {u.id: u for u in self.users}
        self.organization = organization or Organization()
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.timestamp_precision = timestamp_precision
        self.default_page_size = default_page_size
        self.faults = FaultInjector(seed)
        self.request_log = RequestLog(history_limit)
        self.protection = ServiceProtection(limits)
        self._initial_limits = self.protection.limits.model_copy()
        self.webhooks = WebhookDispatcher(ContextSerializer(self.tables, self._currency_symbol),
                                          self.organization, timeout=webhook_timeout,
                                          retry_delay=webhook_retry_delay, on_job=self._record_job, seed=seed,
                                          workers=webhook_workers, history_limit=history_limit,
                                          payload_history_limit=payload_history_limit)
        self._rows: dict[str, IndexedRows] = {}
        self.registrations = Registrations(lambda: self._rows, self.tables)
        self._versions = itertools.count(1)
        self._line_numbers: dict[tuple[str, str], int] = {}  # (line table, document id) -> last sequencenumber
        self._seed()
        from sandbox.dataverse_api import build_app  # the HTTP layer depends on this module

        self.app = build_app(self)

    # =====================================================================================
    # Python API ("a user in the UI")

    @property
    def integration_user(self) -> DataverseUser:
        return self.users[0]

    @property
    def sales_user(self) -> DataverseUser:
        return self.users[1] if len(self.users) > 1 else self.users[0]

    def token_for(self, user_id: str) -> str:
        return self._by_id[user_id].token

    def create(self, table: str, attrs: Mapping[str, Any], *, user: str | None = None,
               tag: str | None = None) -> str:
        """Create a row as `user` (default: the sales user); returns its id. Raises DataverseError."""
        t = self.table(table)
        caller = self._user(user)
        with self.lock:
            values = {name: self.coerce(t, name, value) for name, value in attrs.items()}
            result = self.create_row(t, values, caller, tag=tag)
        return result.record_id

    def update(self, table: str, ident: RowRef, attrs: Mapping[str, Any], *, user: str | None = None,
               tag: str | None = None) -> bool:
        """Save a form: only columns whose value differs are sent, so the Update event's Target holds just
        those. Returns False (and raises no event) when nothing changed."""
        t = self.table(table)
        caller = self._user(user)
        with self.lock:
            record_id = self.require(t, ident)
            row = self._rows[t.logical_name][record_id]
            values = {name: self.coerce(t, name, value) for name, value in attrs.items()}
            changed = {name: value for name, value in values.items() if not _same(row.get(name), value)}
            if not changed:
                return False
            keys = dict(ident) if not isinstance(ident, str) else {}
            self.update_row(t, record_id, changed, caller, tag=tag, key_attributes=keys)
        return True

    def delete(self, table: str, ident: RowRef, *, user: str | None = None, tag: str | None = None) -> None:
        t = self.table(table)
        caller = self._user(user)
        with self.lock:
            record_id = self.require(t, ident)
            keys = dict(ident) if not isinstance(ident, str) else {}
            self.delete_row(t, record_id, caller, tag=tag, key_attributes=keys)

    def get(self, table: str, ident: RowRef) -> dict[str, Any] | None:
        """The row as the Web API returns it (lookups as `_x_value`), or None."""
        t = self.table(table)
        with self.lock:
            record_id = self.find(t, ident)
            if record_id is None:
                return None
            return self.web_row(t, self._rows[t.logical_name][record_id])

    def rows(self, table: str) -> list[dict[str, Any]]:
        t = self.table(table)
        with self.lock:
            return [self.web_row(t, row) for row in self._rows[t.logical_name].values()]

    def register_webhook(self, url: str, *, steps: list[WebhookStep], key: str | None = None,
                         name: str = "p2c-sync webhook") -> WebhookRegistration:
        """Register a webhook service endpoint (WebhookKey auth: `?code=<key>`) with its steps.

        A shortcut for tests: it writes the same serviceendpoint, sdkmessageprocessingstep and
        sdkmessageprocessingstepimage rows a client writes through the Web API (as the platform: no
        privilege check), and those rows are what delivers."""
        endpoint = WebhookEndpoint(name=name, url=url, auth_value=key)
        return self.add_webhook(WebhookRegistration(endpoint=endpoint, steps=steps))

    def add_webhook(self, registration: WebhookRegistration) -> WebhookRegistration:
        """Store a registration as rows (replacing an endpoint with the same id); returns it as delivered."""
        with self.lock:
            try:
                rows = self.registrations.rows_for(registration)
            except RuleViolation as exc:
                raise DataverseError(exc.status, exc.code, exc.message) from None
            self.unregister_webhook(registration.endpoint.id)
            now = self._now()
            try:
                for logical_name, values in rows:
                    table = self.tables[logical_name]
                    row = {name: self.coerce(table, name, value) for name, value in values.items()}
                    row.setdefault(table.primary_id, str(uuid.uuid4()))
                    self._check_registration(table, row)
                    self._insert_system_row(table, row, now)
            except DataverseError:
                self.unregister_webhook(registration.endpoint.id)
                raise
            self._sync_webhooks()
            return next(r for r in self.webhooks.registrations if r.endpoint.id == registration.endpoint.id)

    def unregister_webhook(self, endpoint_id: str) -> bool:
        """Delete a service endpoint with its steps and their images; False when there was none."""
        with self.lock:
            table = self.tables["serviceendpoint"]
            if endpoint_id not in self._rows[table.logical_name]:
                return False
            for logical_name, record_id in self.registrations.dependants(table, endpoint_id):
                self._rows[logical_name].pop(record_id, None)
            self._rows[table.logical_name].pop(endpoint_id)
            self._sync_webhooks()
            return True

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every raised event has been delivered or has failed."""
        return self.webhooks.wait_idle(timeout)

    async def wait_idle_async(self, timeout: float = 10.0) -> bool:
        import asyncio

        return await asyncio.to_thread(self.webhooks.wait_idle, timeout)

    def system_jobs(self, *, statuscode: int | None = None, step_id: str | None = None) -> list[SystemJob]:
        jobs = self.webhooks.jobs
        if statuscode is not None:
            jobs = [j for j in jobs if j.statuscode == statuscode]
        if step_id is not None:
            jobs = [j for j in jobs if j.step_id == step_id]
        return jobs

    def reset(self, *, webhooks: bool = False) -> None:
        """Back to the seeded state: rows, version counter, faults, limits, request log, queued events and
        system jobs. Webhook registrations (their rows) survive unless `webhooks=True`."""
        self.webhooks.clear()
        with self.lock:
            kept = {} if webhooks else {name: self._rows.get(name, {}) for name in WEBHOOK_TABLES}
            self._rows = {}
            self._versions = itertools.count(1)
            self._line_numbers = {}
            self._seed()
            for name, rows in kept.items():
                self._rows[name].update(rows)
            self._sync_webhooks()
        self.faults.clear()
        self.request_log.clear()
        self.protection.configure(self._initial_limits.model_copy())
        self.protection.reset()

    def close(self) -> None:
        self.webhooks.close()

    # =====================================================================================
    # Lookups used by the HTTP layer

    def table(self, name: str) -> Table:
        table = self.tables.get(name) or self._by_set.get(name)
        if table is None:
            raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{name}'.")
        return table

    def table_for_set(self, entity_set: str) -> Table | None:
        return self._by_set.get(entity_set)

    def user_for_token(self, token: str) -> DataverseUser | None:
        return self._by_token.get(token)

    def user_by_id(self, user_id: str) -> DataverseUser:
        return self._by_id[user_id]

    # FrontedSimulator protocol ------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        user = self._by_token.get(authorization[7:].strip())
        return user.id if user else None

    def unauthorized_response(self) -> Response:
        return JSONResponse(
            {"error": {"code": "0x80072560", "message": "The user is not authenticated: a valid bearer token "
                                                        "for this organization is required."}},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer authorization_uri=https://login.microsoftonline.com/"
                                         "common/oauth2/authorize"})

    def throttled_response(self, retry_after: int, rejection: LimitRejection | None) -> Response:
        if rejection is not None and rejection.kind == "concurrent":
            code, message = "0x80072326", f"Number of concurrent requests exceeded the limit of {rejection.limit}."
        else:
            limit = rejection.limit if rejection else self.protection.limits.max_requests or 6000
            window = int(rejection.window_seconds if rejection else self.protection.limits.window_seconds)
            code = "0x80072322"
            message = f"Number of requests exceeded the limit of {limit} over time window of {window} seconds."
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=429,
                            headers={"Retry-After": str(retry_after)})

    def server_error_response(self, status: int) -> Response:
        message = ("The service is temporarily unavailable. Try again later." if status in (502, 503, 504)
                   else "An unexpected error occurred.")
        return JSONResponse({"error": {"code": "0x80040216", "message": message}}, status_code=status)

    def admin_routes(self) -> list[BaseRoute]:
        from sandbox.dataverse_api import admin_routes

        return admin_routes(self)

    # =====================================================================================
    # Core operations (callers hold self.lock)

    def _user(self, user: str | None) -> DataverseUser:
        if user is None:
            return self.sales_user
        found = self._by_id.get(user) or self._by_token.get(user)
        if found is None:
            raise ValueError(f"unknown sandbox user {user!r}")
        return found

    def _now(self) -> datetime:
        now = self.clock().astimezone(timezone.utc)
        if self.timestamp_precision == "second":
            return now.replace(microsecond=0)
        return now.replace(microsecond=(now.microsecond // 1000) * 1000)

    def _seed(self) -> None:
        for table in self.tables.values():
            self._rows.setdefault(table.logical_name, IndexedRows(_indexes(table)))
        now = self._now()
        rows = seed_rows()
        rows.setdefault("systemuser", []).extend(u.systemuser_row() for u in self.users)
        rows.update(registration_seed_rows(self.tables.values()))
        for logical, items in rows.items():
            if logical not in self.tables:
                continue
            table = self.tables[logical]
            for item in items:
                values = {name: self.coerce(table, name, value) for name, value in item.items()}
                self._insert_system_row(table, values, now)

    def _insert_system_row(self, table: Table, values: dict[str, Any], now: datetime) -> dict[str, Any]:
        """A row written by the platform itself (seed data, system jobs): no events, no key checks."""
        row = dict(values)
        row.setdefault(table.primary_id, str(uuid.uuid4()))
        row.setdefault("createdon", now)
        row["modifiedon"] = now
        row["versionnumber"] = next(self._versions)
        row.setdefault("statecode", 0)
        row.setdefault("statuscode", 1)
        self._rows[table.logical_name][row[table.primary_id]] = row
        return row

    def _record_job(self, job: SystemJob) -> None:
        table = self.tables.get("asyncoperation")
        if table is None:
            return
        with self.lock:
            if job.auto_delete and job.statuscode == 30:  # asyncautodelete: succeeded jobs are not kept
                self._rows[table.logical_name].pop(job.id, None)
                return
            existing = self._rows[table.logical_name].get(job.id, {})
            values = {
                **existing,
                "asyncoperationid": job.id, "name": job.name, "operationtype": 1,
                "message": job.message, "friendlymessage": job.message, "messagename": job.message_name,
                "primaryentitytype": job.entity, "correlationid": job.correlation_id,
                "retrycount": max(0, job.attempts - 1), "depth": 1, "statecode": job.statecode,
                "statuscode": job.statuscode, "completedon": job.completed_on.replace(microsecond=0)
                if job.completed_on else None,
                "owningextensionid": LookupValue(table="sdkmessageprocessingstep", id=job.step_id),
                "regardingobjectid": LookupValue(table=job.entity, id=job.record_id),
            }
            self._insert_system_row(table, values, self._now())

    def find(self, table: Table, ident: RowRef) -> str | None:
        rows = self._rows[table.logical_name]
        if isinstance(ident, str):
            record_id = ident.lower()
            return record_id if record_id in rows else None
        return self._match_key(table, dict(ident))

    def require(self, table: Table, ident: RowRef) -> str:
        record_id = self.find(table, ident)
        if record_id is None:
            raise does_not_exist(table, ident)
        return record_id

    def key_columns(self, table: Table, names: list[str]) -> list[str]:
        """Map URL key names (`_x_value` for lookup keys) to columns; 400 unless they form a defined key."""
        columns = [name[1:-6] if name.startswith("_") and name.endswith("_value") else name for name in names]
        for key in table.alternate_keys:
            if sorted(key) == sorted(columns):
                return columns
        raise DataverseError(400, "0x80060888",
                             f"The key attribute(s) {', '.join(names)} do not match an alternate key defined "
                             f"on entity '{table.logical_name}'.")

    def _match_key(self, table: Table, keys: KeyValues) -> str | None:
        columns = self.key_columns(table, list(keys))
        wanted = {col: self.coerce(table, col, value) for col, value in zip(columns, keys.values())}
        key = next(tuple(k) for k in table.alternate_keys if sorted(k) == sorted(columns))
        found = self._rows[table.logical_name].ids_for(key, wanted)  # indexed: values compared as `_same` does
        return found[0] if found else None

    def _check_alternate_keys(self, table: Table, row: dict[str, Any], record_id: str) -> None:
        rows = self._rows[table.logical_name]
        for key in table.alternate_keys:
            values = [row.get(col) for col in key]
            if any(v is None for v in values):
                continue
            if any(other_id != record_id for other_id in rows.ids_for(tuple(key), row)):
                described = ", ".join(f"{c}:{_display(v)}" for c, v in zip(key, values))
                raise DataverseError(
                    412, "0x80060892",
                    f"Entity Key {table.logical_name}_{'_'.join(key)} violated. A record with the same "
                    f"value for {', '.join(key)} already exists. A duplicate record cannot be created. "
                    f"Duplicate key: {described}")

    def _computed(self, table: Table, row: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """Platform-computed columns a write adds to its Target: status for a new state, full name,
        exchange rate for a new currency."""
        extra: dict[str, Any] = {}
        if "statecode" in values and "statuscode" not in values and values["statecode"] is not None:
            status_column = table.column("statuscode")
            default = DEFAULT_STATUS_FOR_STATE.get(int(values["statecode"]))
            if status_column and default in status_column.options:
                extra["statuscode"] = default
        if table.name_from and any(col in values for col in table.name_from):
            merged = {**row, **values}
            parts = [str(merged[c]) for c in table.name_from if merged.get(c)]
            extra[table.primary_name] = " ".join(parts) or None
        currency = values.get("transactioncurrencyid")
        if isinstance(currency, LookupValue) and "exchangerate" in table.columns:
            currency_row = self._rows.get("transactioncurrency", {}).get(currency.id)
            if currency_row is not None:
                extra["exchangerate"] = currency_row.get("exchangerate")
        return extra

    def create_row(self, table: Table, values: dict[str, Any], user: DataverseUser, *, tag: str | None = None,
                key_attributes: KeyValues | None = None, bypass_async: bool = False) -> WriteResult:
        values = {k: v for k, v in values.items() if not self._is_system(table, k)}
        record_id = str(values.pop(table.primary_id, None) or uuid.uuid4()).lower()
        if record_id in self._rows[table.logical_name]:
            raise DataverseError(412, "0x80040237", "Cannot insert duplicate key.")
        now = self._now()
        me = LookupValue(table="systemuser", id=user.id)
        row: dict[str, Any] = {table.primary_id: record_id}
        row.update(values)
        self._check_parent_editable(table, row, user)
        self._number_line(table, row)
        if (table.money_columns and "transactioncurrencyid" in table.columns
                and row.get("transactioncurrencyid") is None):
            row["transactioncurrencyid"] = LookupValue(table="transactioncurrency", id=USD_CURRENCY_ID)
        if table.logical_name == "product" and row.get("statecode") is None and not self.create_products_active:
            row["statecode"], row["statuscode"] = PRODUCT_DRAFT  # "By default, a product record is in the Draft state"
        row.setdefault("statecode", 0)
        row.update(self._computed(table, {}, row))
        row.setdefault("statuscode", 1)
        if table.ownership == "user":
            owner = row.get("ownerid") or me
            row["ownerid"] = owner
            owner_user = self._by_id.get(owner.id)
            row["owningbusinessunit"] = LookupValue(
                table="businessunit", id=owner_user.business_unit_id if owner_user else user.business_unit_id)
        row.update({"createdon": now, "modifiedon": now, "createdby": me, "modifiedby": me,
                    "createdonbehalfby": None, "modifiedonbehalfby": None,
                    "versionnumber": next(self._versions)})
        self._check_catalogue(table, row)
        self._check_alternate_keys(table, row, record_id)
        self._check_registration(table, row)
        self._rows[table.logical_name][record_id] = row
        self._sync_webhooks(table)
        target = {name: value for name, value in row.items() if value is not None or name in values}
        target["createdonbehalfby"] = None
        target["modifiedonbehalfby"] = None
        target.pop("versionnumber", None)
        self._publish("Create", table, record_id, target, None, dict(row), key_attributes or {}, user, tag,
                      bypass_async, now)
        return WriteResult(record_id, True, dict(row))

    def update_row(self, table: Table, record_id: str, values: dict[str, Any], user: DataverseUser, *,
                tag: str | None = None, key_attributes: KeyValues | None = None,
                bypass_async: bool = False) -> WriteResult:
        values = {k: v for k, v in values.items() if not self._is_system(table, k) and k != table.primary_id}
        before = self._rows[table.logical_name][record_id]
        self._check_parent_editable(table, {**before, **values}, user)
        if table.logical_name in DOCUMENT_LINES and DOCUMENT_LINES[table.logical_name][0] in values:
            self._check_parent_editable(table, before, user)  # moving a line out of a read-only document
        now = self._now()
        me = LookupValue(table="systemuser", id=user.id)
        changes = dict(values)
        changes.update(self._computed(table, before, values))
        if "ownerid" in changes and table.ownership == "user" and isinstance(changes["ownerid"], LookupValue):
            owner_user = self._by_id.get(changes["ownerid"].id)
            if owner_user:
                changes["owningbusinessunit"] = LookupValue(table="businessunit", id=owner_user.business_unit_id)
        after = {**before, **changes, "modifiedon": now, "modifiedby": me, "versionnumber": next(self._versions)}
        self._check_catalogue(table, after)
        self._check_alternate_keys(table, after, record_id)
        self._check_registration(table, after)
        self._rows[table.logical_name][record_id] = after
        self._sync_webhooks(table)
        target = {table.primary_id: record_id, **changes, "modifiedon": now, "modifiedby": me}
        self._publish("Update", table, record_id, target, dict(before), dict(after), key_attributes or {}, user,
                      tag, bypass_async, now)
        return WriteResult(record_id, False, dict(after))

    def delete_row(self, table: Table, record_id: str, user: DataverseUser, *, tag: str | None = None,
                key_attributes: KeyValues | None = None, bypass_async: bool = False) -> None:
        self._check_parent_editable(table, self._rows[table.logical_name][record_id], user)
        for logical_name, dependant_id in self.registrations.dependants(table, record_id):
            self._rows[logical_name].pop(dependant_id, None)  # a step's images, an endpoint's steps
        before = self._rows[table.logical_name].pop(record_id)
        self._sync_webhooks(table)
        self._publish("Delete", table, record_id, {}, dict(before), None, key_attributes or {}, user, tag,
                      bypass_async, self._now())

    def _check_parent_editable(self, table: Table, row: Mapping[str, Any], user: DataverseUser | None = None) -> None:
        """A document line can be written only while its document takes changes (a quote: Draft)."""
        rule = DOCUMENT_LINES.get(table.logical_name)
        if rule is None:
            return
        column, parent_table, editable = rule
        parent = row.get(column)
        if not isinstance(parent, LookupValue):
            return
        parent_row = self._rows.get(parent_table, {}).get(parent.id)
        if (parent_row is not None and parent_row.get("msdynce_ismaintainedexternally") is True
                and parent_row.get("statecode") in editable and user is not None and user.application_id):
            return  # [Inferred] F&O is the master of an externally maintained order: the integration writes its lines
        if parent_row is not None and (parent_row.get("statecode") not in editable
                                       or parent_row.get(PROCESSING_STATUS, DRAFT) not in (None, DRAFT)):
            raise DataverseError(400, *PARENT_NOT_EDITABLE)

    def _check_catalogue(self, table: Table, row: Mapping[str, Any]) -> None:
        """The product catalogue rules the F&O -> Sales flows would trip on (messages [Inferred]; the rules are
        the documented ones: a product's default unit is one of its unit group's, a price list item prices a
        product in a unit of the product's group, a line's product must be priced in its document's price
        list unless the price is overridden (Sales' system pricing), a write-in line has a description and no
        product)."""
        name = table.logical_name
        if name == "product":
            unit, group = row.get("defaultuomid"), row.get("defaultuomscheduleid")
            if isinstance(unit, LookupValue) and isinstance(group, LookupValue) and not self._unit_in_group(unit, group):
                raise DataverseError(400, INVALID_ARGUMENT, "The default unit is not a member of the specified unit "
                                                            "group.")
        elif name == "productpricelevel":
            for column in ("pricelevelid", "productid", "uomid"):
                if not isinstance(row.get(column), LookupValue):
                    raise DataverseError(400, INVALID_ARGUMENT, f"Required field '{column}' is missing.")
            product = self._rows["product"].get(row["productid"].id, {})
            group = product.get("defaultuomscheduleid")
            if not isinstance(group, LookupValue) or not self._unit_in_group(row["uomid"], group):
                raise DataverseError(400, INVALID_ARGUMENT, "The unit does not exist in the unit group of the "
                                                            "product.")
        elif name in PRICED_LINES:
            self._check_priced_line(table, row)

    def _unit_in_group(self, unit: LookupValue, group: LookupValue) -> bool:
        unit_row = self._rows.get("uom", {}).get(unit.id)
        return unit_row is not None and unit_row.get("uomscheduleid") == group

    def _check_priced_line(self, table: Table, row: Mapping[str, Any]) -> None:
        product = row.get("productid")
        if row.get("isproductoverridden") is True:
            if isinstance(product, LookupValue) or not row.get("productdescription"):
                raise DataverseError(400, INVALID_ARGUMENT, "A write-in product line needs a productdescription and "
                                                            "no productid.")
            return
        if not isinstance(product, LookupValue) or row.get("ispriceoverridden") is True:
            return
        parent_column, parent_table, _ = DOCUMENT_LINES[table.logical_name]
        parent = row.get(parent_column)
        parent_row = self._rows[parent_table].get(parent.id, {}) if isinstance(parent, LookupValue) else {}
        price_list = parent_row.get("pricelevelid")
        if not isinstance(price_list, LookupValue):
            return
        unit = row.get("uomid")
        items, key = self._rows["productpricelevel"], ("pricelevelid", "productid", "uomid")
        if isinstance(unit, LookupValue) and items.has_key(key):  # indexed: one item per list, product, unit
            priced = bool(items.ids_for(key, {"pricelevelid": price_list, "productid": product, "uomid": unit}))
        else:
            priced = any(item.get("pricelevelid") == price_list and item.get("productid") == product
                         and (not isinstance(unit, LookupValue) or item.get("uomid") == unit)
                         for item in items.values())
        if not priced:
            raise DataverseError(400, INVALID_ARGUMENT, "The product is not in the price list of the "
                                                        f"{parent_table}; add it to the price list or override the "
                                                        "price (ispriceoverridden).")

    def _number_line(self, table: Table, row: dict[str, Any]) -> None:
        """A new line without a sequencenumber gets the next one of its document. [Inferred] the platform numbers
        lines in creation order (the P2C templates key lines on it, as F&O's LineCreationSequenceNumber)."""
        rule = DOCUMENT_LINES.get(table.logical_name)
        if rule is None or not isinstance(row.get(rule[0]), LookupValue):
            return
        mark = (table.logical_name, row[rule[0]].id)
        if row.get("sequencenumber") is None:  # never reused, even after a line is removed
            row["sequencenumber"] = self._line_numbers.get(mark, 0) + 1
        self._line_numbers[mark] = max(self._line_numbers.get(mark, 0), int(row["sequencenumber"]))

    def revise_quote(self, quote_id: str, *, user: str | None = None) -> str:
        """What Sales' Revise does (ReviseQuote): the active quote is closed as Revised (statecode 3, statuscode 7)
        and a new Draft quote with the same number, revision + 1 and copies of its lines (same sequence numbers)
        is created; returns the new quote's id. Only an active (or won/closed) quote can be revised."""
        quote_table, line_table = self.table("quote"), self.table("quotedetail")
        caller = self._user(user)
        with self.lock:
            record_id = self.require(quote_table, quote_id)
            old = self._rows["quote"][record_id]
            if old.get("statecode") == 0:
                raise DataverseError(400, "0x80040203", "A draft quote cannot be revised.")
            lines = [dict(row) for row in self._rows["quotedetail"].values()
                     if row.get("quoteid") == LookupValue(table="quote", id=record_id)]
            self.update_row(quote_table, record_id, {"statecode": 3, "statuscode": 7}, caller)
            skip = {"quoteid", "statecode", "statuscode", "ownerid", "owningbusinessunit"}
            copy = {k: v for k, v in old.items() if k not in skip and not self._is_system(quote_table, k)}
            copy["revisionnumber"] = int(old.get("revisionnumber") or 0) + 1
            new_id = self.create_row(quote_table, copy, caller).record_id
            for line in lines:
                values = {k: v for k, v in line.items()
                          if k != "quotedetailid" and not self._is_system(line_table, k)
                          and k not in ("ownerid", "owningbusinessunit", "statecode", "statuscode")}
                values["quoteid"] = LookupValue(table="quote", id=new_id)
                self.create_row(line_table, values, caller)
        return new_id

    def _check_registration(self, table: Table, row: dict[str, Any]) -> None:
        try:
            self.registrations.check(table, row)
        except RuleViolation as exc:
            raise DataverseError(exc.status, exc.code, exc.message) from None

    def _sync_webhooks(self, table: Table | None = None) -> None:
        """After a write to the registration tables: deliver what the rows now say."""
        if table is None or table.logical_name in WEBHOOK_TABLES:
            self.webhooks.set_registrations(self.registrations.webhook_registrations())

    @contextmanager
    def change_set(self) -> Iterator[ChangeSet]:
        """All-or-nothing writes, as a `$batch` change set (ExecuteTransaction): the store lock is held
        throughout, webhook events are held back, and `ChangeSet.rollback()` (or an exception) restores every
        row as it was and raises no event. On commit the held events are published in write order, after the
        lock is released ("after commit", as Dataverse runs async steps only for committed operations).

        The caller must not yield to the event loop inside (the lock is re-entrant on this thread)."""
        state = ChangeSet()
        thread = threading.get_ident()
        with self.lock:
            marks = {name: rows.begin() for name, rows in self._rows.items()}  # an undo journal per table
            saved_lines = dict(self._line_numbers)
            self._held[thread] = []
            try:
                yield state
            except BaseException:
                state.rolled_back = True
                raise
            finally:
                held = self._held.pop(thread)
                for name, mark in marks.items():
                    if state.rolled_back:
                        self._rows[name].rollback(mark)
                    else:
                        self._rows[name].end(mark)
                if state.rolled_back:
                    self._line_numbers = saved_lines
                    self._sync_webhooks()
        if not state.rolled_back:
            for change in held:
                self.webhooks.publish(change)

    def _publish(self, message: Literal["Create", "Update", "Delete"], table: Table, record_id: str,
                 target: dict[str, Any], pre: dict[str, Any] | None, post: dict[str, Any] | None,
                 keys: KeyValues, user: DataverseUser, tag: str | None, bypass_async: bool,
                 now: datetime) -> None:
        key_values = {}
        if keys:
            columns = self.key_columns(table, list(keys))
            key_values = {col: self.coerce(table, col, value) for col, value in zip(columns, keys.values())}
        change = Change(
            message=message, table=table, record_id=record_id, target=target, pre=pre, post=post,
            key_attributes=key_values, user=user, tag=tag, correlation_id=str(uuid.uuid4()),
            request_id=str(uuid.uuid4()), time=now, bypass_async=bypass_async)
        held = self._held.get(threading.get_ident())
        if held is not None:
            held.append(change)
            return
        self.webhooks.publish(change)

    # =====================================================================================
    # Values

    @staticmethod
    def _is_system(table: Table, name: str) -> bool:
        column = table.column(name)
        return bool(column and column.system)

    def coerce(self, table: Table, name: str, value: Any, *, strict: bool = False) -> Any:
        """A Python or JSON value -> the stored form for that column. `strict` follows Web API JSON typing."""
        column = table.column(name)
        if column is None:
            raise invalid_property(table, name)
        if value is None:
            return None
        kind = column.type

        def bad() -> DataverseError:
            return DataverseError(400, "0x80048d19",
                                  f"Error identified in Payload provided by the user for Entity :'{table.entity_set}'"
                                  f". Cannot convert the literal '{value}' to the expected type of property "
                                  f"'{name}' ({kind.value}).")

        if kind in (ColumnType.STRING, ColumnType.MEMO):
            if not isinstance(value, str):
                raise bad()
            return value
        if kind is ColumnType.UNIQUEIDENTIFIER:
            if isinstance(value, GuidLiteral):
                return value.value
            if not isinstance(value, str) or not GUID_RE.match(value):
                raise bad()
            return value.lower()
        if kind in (ColumnType.INT, ColumnType.BIGINT, ColumnType.OPTIONSET):
            if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or int(value) != value:
                raise bad()
            value = int(value)
            if kind is ColumnType.OPTIONSET and column.options and value not in column.options:
                raise DataverseError(400, "0x8004431a",
                                     f"A validation error occurred. The value {value} of '{name}' on record of "
                                     f"type '{table.logical_name}' is outside the valid range.")
            return value
        if kind in (ColumnType.DECIMAL, ColumnType.MONEY):
            if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
                if strict or not isinstance(value, str):
                    raise bad()
                try:
                    return Decimal(value)
                except InvalidOperation as exc:
                    raise bad() from exc
            return Decimal(str(value))
        if kind is ColumnType.FLOAT:
            if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
                raise bad()
            return float(value)
        if kind is ColumnType.BOOL:
            if not isinstance(value, bool):
                raise bad()
            return value
        if kind is ColumnType.DATETIME:
            if isinstance(value, datetime):
                return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
            if not isinstance(value, str):
                raise bad()
            try:
                return parse_datetime(value)
            except ValueError as exc:
                raise bad() from exc
        if kind is ColumnType.LOOKUP:
            return self._coerce_lookup(table, column, value, strict)
        raise bad()  # pragma: no cover

    def _coerce_lookup(self, table: Table, column: Column, value: Any, strict: bool) -> LookupValue:
        if isinstance(value, LookupValue):
            ref = value
        elif isinstance(value, tuple) and len(value) == 2:
            ref = LookupValue(table=value[0], id=str(value[1]).lower())
        elif isinstance(value, Mapping) and "table" in value and "id" in value:
            ref = LookupValue(table=value["table"], id=str(value["id"]).lower())
        elif isinstance(value, (str, GuidLiteral)) and len(column.targets) == 1 and not strict:
            ref = LookupValue(table=column.targets[0], id=str(getattr(value, "value", value)).lower())
        elif isinstance(value, GuidLiteral) and len(column.targets) == 1:
            ref = LookupValue(table=column.targets[0], id=value.value)
        else:
            raise DataverseError(400, "0x80048d19", f"Cannot set lookup '{column.name}' from {value!r}.")
        if ref.table not in column.targets:
            raise DataverseError(400, "0x80048d19",
                                 f"'{ref.table}' is not a valid target of lookup '{column.name}'.")
        return ref

    def resolve_reference(self, target: Table, ident: RowRef) -> LookupValue:
        """A bind target must exist (GUID or alternate key): a missing one is a bad request (400)."""
        record_id = self.find(target, ident)
        if record_id is None:
            missing = does_not_exist(target, ident)
            raise DataverseError(400, missing.code, missing.message)
        return LookupValue(table=target.logical_name, id=record_id)

    def _currency_symbol(self, row: Mapping[str, Any]) -> str:
        currency = row.get("transactioncurrencyid")
        if isinstance(currency, LookupValue):
            currency_row = self._rows.get("transactioncurrency", {}).get(currency.id)
            if currency_row and currency_row.get("currencysymbol"):
                return str(currency_row["currencysymbol"])
        return "$"

    def related_row(self, ref: LookupValue) -> dict[str, Any] | None:
        """A copy of the row a lookup points at, or None when there is none (an expanded lookup is null)."""
        with self.lock:
            row = self._rows.get(ref.table, {}).get(ref.id)
            return dict(row) if row is not None else None

    def primary_name_of(self, ref: LookupValue) -> str | None:
        table = self.tables.get(ref.table)
        if table is None:
            return None
        row = self._rows[table.logical_name].get(ref.id)
        return row.get(table.primary_name) if row else None

    # =====================================================================================
    # Read form

    @staticmethod
    def etag(row: Mapping[str, Any]) -> str:
        return f'W/"{row["versionnumber"]}"'

    def web_row(self, table: Table, row: Mapping[str, Any], select: list[str] | None = None, *,
                annotations: bool = False) -> dict[str, Any]:
        """The JSON object for one row: `@odata.etag`, columns, `_x_value` for lookups."""
        body: dict[str, Any] = {"@odata.etag": self.etag(row)}
        for name, column in table.columns.items():
            if not column.readable:
                continue
            prop = f"_{name}_value" if column.type is ColumnType.LOOKUP else name
            if select is not None and prop not in select and name != table.primary_id:
                continue
            value = row.get(name)
            body[prop] = web_value(value)
            if annotations and value is not None:
                formatted = self._formatted(table, column, value, row)
                if formatted is not None:
                    body[f"{prop}@OData.Community.Display.V1.FormattedValue"] = formatted
                if isinstance(value, LookupValue):
                    body[f"{prop}@Microsoft.Dynamics.CRM.lookuplogicalname"] = value.table
        return body

    def _formatted(self, table: Table, column: Column, value: Any, row: Mapping[str, Any]) -> str | None:
        if isinstance(value, LookupValue):
            return self.primary_name_of(value)
        if column.type is ColumnType.OPTIONSET:
            return column.options.get(value, str(value))
        if column.type is ColumnType.MONEY:
            return f"{self._currency_symbol(row)}{Decimal(str(value)):,.2f}"
        if column.type is ColumnType.BOOL:
            return "Yes" if value else "No"
        if column.type is ColumnType.DATETIME:
            return value.strftime("%m/%d/%Y %I:%M %p")
        return None

    def select_names(self, table: Table) -> set[str]:
        """Property names valid in `$select`, `$filter` and `$orderby`."""
        return {f"_{n}_value" if c.type is ColumnType.LOOKUP else n
                for n, c in table.columns.items() if c.readable}

    @staticmethod
    def filter_value(row: Mapping[str, Any], name: str) -> Any:
        if name.startswith("_") and name.endswith("_value"):
            value = row.get(name[1:-6])
            return value.id if isinstance(value, LookupValue) else value
        return row.get(name)

    def snapshot_row(self, table: Table, record_id: str) -> dict[str, Any]:
        with self.lock:
            return dict(self._rows[table.logical_name][record_id])

    def snapshot(self, table: Table) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(row) for row in self._rows[table.logical_name].values()]

    def query(self, table: Table, keep: Callable[[dict[str, Any]], bool],
              hint: tuple[str, Any] | None = None) -> list[dict[str, Any]]:
        """Copies of the rows `keep` accepts, in table order. `hint` (property, value): the filter is exactly
        `property eq value`; when the column is indexed alone (a single-column key, or a key's first column) only
        the rows its index holds under that value are tested (the index compares as `$filter` does:
        case-insensitive text, numbers by value, a single-target lookup by the id of its row)."""
        with self.lock:
            rows = self._rows[table.logical_name]
            candidates: Iterable[str] = rows
            indexed = self._indexed_value(table, hint) if hint is not None else None
            if indexed is not None and rows.has_key((indexed[0],)):
                candidates = rows.ids_for((indexed[0],), {indexed[0]: indexed[1]})
            return [dict(rows[record_id]) for record_id in candidates if keep(rows[record_id])]

    @staticmethod
    def _indexed_value(table: Table, hint: tuple[str, Any]) -> tuple[str, Any] | None:
        """(column, stored value) a `$filter` equality can be looked up under, or None when only a scan is exact."""
        name, value = hint
        if name.startswith("_") and name.endswith("_value"):
            column = table.column(name[1:-6])
            if column is None or column.type is not ColumnType.LOOKUP or len(column.targets) != 1 \
                    or not isinstance(value, GuidLiteral):
                return None  # a polymorphic lookup's filter matches the id in any target table
            return column.name, LookupValue(table=column.targets[0], id=value.value)
        column = table.column(name)
        if column is None or column.type not in INDEXED_FILTER_TYPES or isinstance(value, GuidLiteral):
            return None
        return name, value


def _indexes(table: Table) -> list[list[str]]:
    """The table's alternate keys, plus the first column of each composite key alone (a document's lines are
    read by `_salesorderid_value eq <id>`)."""
    indexes = [list(key) for key in table.alternate_keys]
    indexes += [[key[0]] for key in table.alternate_keys if len(key) > 1 and [key[0]] not in indexes]
    return indexes


def web_value(value: Any) -> Any:
    if isinstance(value, LookupValue):
        return value.id
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    if isinstance(a, (int, float, Decimal)) and isinstance(b, (int, float, Decimal)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return Decimal(str(a)) == Decimal(str(b))
    return bool(a == b)


def _display(value: Any) -> str:
    return value.id if isinstance(value, LookupValue) else str(value)
