"""Dataverse webhooks: registrations (service endpoint + steps, as derived from the registration rows by
`sandbox/dataverse_registrations.py`), the RemoteExecutionContext JSON a step produces, and the asynchronous
delivery that POSTs it with Dataverse's retry rules.

Delivery runs on `workers` background threads (one: commit order), each on its own keep-alive connection.
Knobs (`pause`/`resume(order=...)`, `duplicates`) let tests reproduce the reordering and redelivery the integration must tolerate.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

from pydantic import BaseModel, Field, model_validator

from sandbox.dataverse_tables import ColumnType, DataverseUser, LookupValue, Organization, Table
from sandbox.poster import PostError, Poster
from sandbox.request_log import HISTORY_LIMIT, PAYLOAD_HISTORY_LIMIT

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
ENTITY_TYPE = f"Entity:{CONTRACTS}"
REFERENCE_TYPE = f"EntityReference:{CONTRACTS}"
MONEY_TYPE = f"Money:{CONTRACTS}"
OPTIONSET_TYPE = f"OptionSetValue:{CONTRACTS}"

MAX_WEBHOOK_PAYLOAD = 256 * 1024
RETRIED_STATUSES = (502, 503, 504)
PRIMARY_NAME_IMAGE = "AsynchronousStepPrimaryName"


def new_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------------
# Registration data


class EntityImage(BaseModel):
    """A registered pre/post image; `columns=None` means all columns."""

    alias: str
    columns: list[str] | None = None


class WebhookStep(BaseModel):
    """An sdkmessageprocessingstep on a webhook endpoint (always PostOperation, asynchronous)."""

    id: str = Field(default_factory=new_id)
    name: str | None = None
    table: str
    message: Literal["Create", "Update", "Delete"]
    filtering_attributes: list[str] = Field(default_factory=list)
    asynchronous: bool = True
    post_image: EntityImage | None = None
    pre_image: EntityImage | None = None
    async_auto_delete: bool = False  # asyncautodelete: a succeeded system job is removed from asyncoperation

    @model_validator(mode="after")
    def _check(self) -> WebhookStep:
        if not self.asynchronous:
            raise ValueError("the sandbox runs webhook steps asynchronously only")
        if self.message == "Delete" and self.post_image is not None:
            raise ValueError("a Delete step cannot have a post image")
        if self.message == "Create" and self.pre_image is not None:
            raise ValueError("a Create step cannot have a pre image")
        if self.filtering_attributes and self.message != "Update":
            raise ValueError("filtering attributes apply to Update steps only")
        if self.name is None:
            self.name = f"p2c-sync: {self.message} of {self.table}"
        return self


class WebhookEndpoint(BaseModel):
    """A serviceendpoint with contract 8 (Webhook). WebhookKey auth sends `?code=<auth_value>`."""

    id: str = Field(default_factory=new_id)
    name: str = "p2c-sync webhook"
    url: str
    auth: Literal["WebhookKey", "HttpHeader", "HttpQueryString"] = "WebhookKey"
    auth_value: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)  # HttpHeader auth
    query: dict[str, str] = Field(default_factory=dict)  # HttpQueryString auth


class WebhookRegistration(BaseModel):
    endpoint: WebhookEndpoint
    steps: list[WebhookStep]


# ---------------------------------------------------------------------------------------------------
# What the store hands over on each committed write


@dataclass
class Change:
    message: Literal["Create", "Update", "Delete"]
    table: Table
    record_id: str
    target: dict[str, Any]  # Create/Update: the Target's attributes (internal values)
    pre: dict[str, Any] | None  # full row before (Update/Delete)
    post: dict[str, Any] | None  # full row after (Create/Update)
    key_attributes: dict[str, Any]
    user: DataverseUser
    tag: str | None
    correlation_id: str
    request_id: str
    time: datetime
    bypass_async: bool = False


# ---------------------------------------------------------------------------------------------------
# RemoteExecutionContext serialisation (DataContractJsonSerializer conventions)


def date_json(value: datetime, *, offset: bool = False) -> str:
    ms = int(value.astimezone(timezone.utc).timestamp() * 1000)
    return f"/Date({ms}+0000)/" if offset else f"/Date({ms})/"


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)
    return value


def entity_reference(ref: LookupValue, key_attributes: list[dict[str, Any]] | None = None,
                     *, typed: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"__type": REFERENCE_TYPE} if typed else {}
    body.update({"Id": ref.id, "KeyAttributes": key_attributes or [], "LogicalName": ref.table, "Name": None,
                 "RowVersion": None})
    return body


class ContextSerializer:
    """Turns internal row values into the typed JSON values of the RemoteExecutionContext."""

    def __init__(self, tables: dict[str, Table], currency_symbol: Callable[[dict[str, Any]], str]) -> None:
        self.tables = tables
        self.currency_symbol = currency_symbol

    def typed_value(self, table: Table, name: str, value: Any) -> Any:
        column = table.column(name)
        if value is None:
            return None
        if isinstance(value, LookupValue):
            return entity_reference(value)
        kind = column.type if column else None
        if kind is ColumnType.MONEY:
            return {"__type": MONEY_TYPE, "Value": float(value)}
        if kind is ColumnType.OPTIONSET:
            return {"__type": OPTIONSET_TYPE, "Value": int(value)}
        if isinstance(value, datetime):
            return date_json(value)
        return _number(value)

    def formatted_value(self, table: Table, name: str, value: Any, row: dict[str, Any]) -> str | None:
        column = table.column(name)
        if value is None or column is None:
            return None
        if column.type is ColumnType.OPTIONSET:
            return column.options.get(int(value), str(value))
        if column.type is ColumnType.MONEY:
            return f"{self.currency_symbol(row)}{Decimal(str(value)):,.2f}"
        if column.type is ColumnType.BOOL:
            return "Yes" if value else "No"
        if column.type is ColumnType.DATETIME and isinstance(value, datetime):
            return value.astimezone(timezone.utc).isoformat(timespec="seconds")
        return None

    def key_attributes(self, table: Table, keys: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"key": name, "value": self.typed_value(table, name, value)} for name, value in keys.items()]

    def entity(self, table: Table, record_id: str, attributes: dict[str, Any], row: dict[str, Any], *,
               keys: dict[str, Any] | None = None, typed: bool = True) -> dict[str, Any]:
        formatted = []
        for name, value in attributes.items():
            text = self.formatted_value(table, name, value, row)
            if text is not None:
                formatted.append({"key": name, "value": text})
        body: dict[str, Any] = {"__type": ENTITY_TYPE} if typed else {}
        body.update({
            "Attributes": [{"key": name, "value": self.typed_value(table, name, value)}
                           for name, value in attributes.items()],
            "EntityState": None,
            "FormattedValues": formatted,
            "Id": record_id,
            "KeyAttributes": self.key_attributes(table, keys or {}),
            "LogicalName": table.logical_name,
            "RelatedEntities": [],
            "RowVersion": None,
        })
        return body

    def image(self, table: Table, record_id: str, row: dict[str, Any], columns: list[str] | None) -> dict:
        names = columns if columns is not None else list(row)
        attributes = {name: row[name] for name in names if row.get(name) is not None}
        return self.entity(table, record_id, attributes, row, typed=False)

    def build(self, change: Change, step: WebhookStep, org: Organization, operation_id: str) -> dict[str, Any]:
        table, user = change.table, change.user
        if change.message == "Delete":
            target: dict[str, Any] = entity_reference(
                LookupValue(table=table.logical_name, id=change.record_id),
                self.key_attributes(table, change.key_attributes))
            input_parameters = [{"key": "Target", "value": target}]
        else:
            target = self.entity(table, change.record_id, change.target, change.post or {},
                                 keys=change.key_attributes)
            input_parameters = [{"key": "Target", "value": target},
                                {"key": "SuppressDuplicateDetection", "value": False}]
        post_images: list[dict[str, Any]] = []
        pre_images: list[dict[str, Any]] = []
        if change.post is not None:
            post_images.append({"key": PRIMARY_NAME_IMAGE, "value": self.image(
                table, change.record_id, change.post, [table.primary_name, table.primary_id])})
            if step.post_image is not None:
                post_images.append({"key": step.post_image.alias, "value": self.image(
                    table, change.record_id, change.post, step.post_image.columns)})
        if change.pre is not None and step.pre_image is not None:
            pre_images.append({"key": step.pre_image.alias, "value": self.image(
                table, change.record_id, change.pre, step.pre_image.columns)})
        shared = [{"key": "tag", "value": change.tag}] if change.tag is not None else []
        shared.append({"key": "IsAutoTransact", "value": True})
        if change.message == "Create":
            shared.append({"key": "DefaultsAddedFlag", "value": True})
        context: dict[str, Any] = {
            "BusinessUnitId": user.business_unit_id,
            "CorrelationId": change.correlation_id,
            "Depth": 1,
            "InitiatingUserAzureActiveDirectoryObjectId": user.aad_object_id,
            "InitiatingUserId": user.id,
            "InputParameters": input_parameters,
            "IsExecutingOffline": False,
            "IsInTransaction": False,
            "IsOfflinePlayback": False,
            "IsolationMode": 1,
            "MessageName": change.message,
            "Mode": 1,
            "OperationCreatedOn": date_json(change.time, offset=True),
            "OperationId": operation_id,
            "OrganizationId": org.id,
            "OrganizationName": org.name,
            "OutputParameters": ([{"key": "id", "value": change.record_id}] if change.message == "Create"
                                 else []),
            "OwningExtension": {"Id": step.id, "KeyAttributes": [], "LogicalName": "sdkmessageprocessingstep",
                                "Name": step.name, "RowVersion": None},
            "ParentContext": None,
            "PostEntityImages": post_images,
            "PreEntityImages": pre_images,
            "PrimaryEntityId": change.record_id,
            "PrimaryEntityName": table.logical_name,
            "RequestId": change.request_id,
            "SecondaryEntityName": "none",
            "SharedVariables": shared,
            "Stage": 40,
            "UserAzureActiveDirectoryObjectId": user.aad_object_id,
            "UserId": user.id,
        }
        if change.message == "Update":
            # The documented Update sample carries the MainOperation (stage 30) request as ParentContext.
            parent = dict(context)
            parent.update({
                "Mode": 0, "Stage": 30, "OperationId": "00000000-0000-0000-0000-000000000000",
                "OwningExtension": {"Id": "00000000-0000-0000-0000-000000000000", "KeyAttributes": [],
                                    "LogicalName": "sdkmessageprocessingstep", "Name": None, "RowVersion": None},
                "PostEntityImages": [], "PreEntityImages": [], "ParentContext": None,
            })
            context["ParentContext"] = parent
        return context


def serialise_context(context: dict[str, Any]) -> bytes:
    """JSON with DataContractJsonSerializer's escaped slashes (`http:\\/\\/...`, `\\/Date(...)\\/`)."""
    return json.dumps(context, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/").encode("utf-8")


#: Removed from a context whose payload is over 256 KB (Dataverse: "removes ParentContext,
#: InputParameters, PreEntityImages and PostEntityImages").
TRIMMED_MEMBERS = ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages")


def trim_context(context: dict[str, Any]) -> dict[str, Any]:
    """What Dataverse sends when the payload is over 256 KB: the four bulky members removed (not emptied)."""
    return {member: value for member, value in context.items() if member not in TRIMMED_MEMBERS}


# ---------------------------------------------------------------------------------------------------
# Delivery


class DeliveryAttempt(BaseModel):
    operation_id: str
    step_id: str
    url: str
    attempt: int
    status: int | None
    error: str | None
    time: datetime


class SystemJob(BaseModel):
    """The asyncoperation of one step execution; statuscode 30 Succeeded, 31 Failed."""

    id: str  # = OperationId
    name: str
    step_id: str
    endpoint_id: str
    entity: str
    record_id: str
    message_name: str
    correlation_id: str
    statecode: int = 0
    statuscode: int = 0
    message: str | None = None
    attempts: int = 0
    deliveries: int = 0
    created_on: datetime
    completed_on: datetime | None = None
    auto_delete: bool = False  # the step's asyncautodelete


@dataclass
class _Job:
    job: SystemJob
    url: str
    headers: dict[str, str]
    body: bytes
    context: dict[str, Any] = field(repr=False)


JobListener = Callable[[SystemJob], None]


class WebhookDispatcher:
    """Matches committed changes to steps, queues one job per step execution and delivers them."""

    def __init__(self, serializer: ContextSerializer, organization: Organization, *, timeout: float = 60.0,
                 retry_delay: float = 0.2, on_job: JobListener | None = None, seed: int = 0,
                 workers: int = 1, history_limit: int | None = HISTORY_LIMIT,
                 payload_history_limit: int | None = PAYLOAD_HISTORY_LIMIT) -> None:
        """``workers``: deliveries in flight at once. The asynchronous service runs async steps in parallel
        (no order between events is promised); 1 keeps commit order, which many tests rely on.
        ``history_limit``: finished system jobs and delivery attempts kept; ``payload_history_limit``: delivered
        contexts kept (the oldest go first; queued and running jobs are always kept)."""
        if workers < 1:
            raise ValueError("workers: at least 1 delivery thread is needed")
        self.workers = workers
        self.serializer = serializer
        self.organization = organization
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.on_job = on_job
        self.duplicates = 1
        self._random = random.Random(seed)
        self._registrations: dict[str, WebhookRegistration] = {}
        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[_Job] = deque()
        self._in_flight = 0
        self._paused = False
        self._stopped = False
        self._jobs: dict[str, SystemJob] = {}
        self.history_limit = history_limit
        self._attempts: deque[DeliveryAttempt] = deque(maxlen=history_limit)
        self._payloads: deque[dict[str, Any]] = deque(maxlen=payload_history_limit)
        self._threads: list[threading.Thread] = []

    # -- registrations (derived from the registration rows by the store) -------------------------
    def set_registrations(self, registrations: list[WebhookRegistration]) -> None:
        """What to deliver from now on; the store calls this after every write to the registration tables."""
        with self._cond:
            self._registrations = {r.endpoint.id: r for r in registrations}

    @property
    def registrations(self) -> list[WebhookRegistration]:
        with self._cond:
            return list(self._registrations.values())

    # -- matching (called by the store under its lock, in commit order) -------------------------
    def publish(self, change: Change) -> list[str]:
        """Queue a job for every matching step; returns the OperationIds."""
        if change.bypass_async:
            return []
        operation_ids: list[str] = []
        with self._cond:
            for registration in self._registrations.values():
                for step in registration.steps:
                    if step.table != change.table.logical_name or step.message != change.message:
                        continue
                    if step.filtering_attributes and not set(step.filtering_attributes) & set(change.target):
                        continue
                    operation_ids.append(self._enqueue(change, registration.endpoint, step))
            if operation_ids:
                self._ensure_worker()
                self._cond.notify_all()
        return operation_ids

    def _enqueue(self, change: Change, endpoint: WebhookEndpoint, step: WebhookStep) -> str:
        operation_id = new_id()
        context = self.serializer.build(change, step, self.organization, operation_id)
        body = serialise_context(context)
        headers = {
            "Content-Type": "application/json",
            "x-ms-dynamics-organization": self.organization.domain,
            "x-ms-dynamics-entity-name": change.table.logical_name,
            "x-ms-dynamics-request-name": change.message,
            "x-ms-correlation-request-id": change.correlation_id,
        }
        if len(body) > MAX_WEBHOOK_PAYLOAD:
            context = trim_context(context)
            body = serialise_context(context)
            headers["x-ms-dynamics-msg-size-exceeded"] = "true"
        if endpoint.auth == "HttpHeader":
            headers.update(endpoint.headers)
        job = SystemJob(id=operation_id, name=step.name or "", step_id=step.id, endpoint_id=endpoint.id,
                        entity=change.table.logical_name, record_id=change.record_id,
                        message_name=change.message, correlation_id=change.correlation_id,
                        created_on=datetime.now(timezone.utc), auto_delete=step.async_auto_delete)
        self._jobs[operation_id] = job
        self._forget_finished_jobs()
        self._queue.append(_Job(job=job, url=_endpoint_url(endpoint), headers=headers, body=body,
                                context=context))
        if self.on_job:
            self.on_job(job.model_copy())
        return operation_id

    def _forget_finished_jobs(self) -> None:
        """Beyond `history_limit`, drop the oldest jobs while they are finished (statecode 3, Completed)."""
        if self.history_limit is None:
            return
        while len(self._jobs) > self.history_limit:
            oldest = next(iter(self._jobs))
            if self._jobs[oldest].statecode != 3:
                return
            del self._jobs[oldest]

    # -- knobs ------------------------------------------------------------------------------------
    def pause(self) -> None:
        """Hold delivery; jobs queue up until `resume`."""
        with self._cond:
            self._paused = True

    def resume(self, order: Literal["commit", "reversed", "shuffled"] = "commit") -> None:
        """Release held jobs, optionally reordered (shuffled uses the dispatcher's seed)."""
        with self._cond:
            jobs = list(self._queue)
            if order == "reversed":
                jobs.reverse()
            elif order == "shuffled":
                self._random.shuffle(jobs)
            self._queue = deque(jobs)
            self._paused = False
            self._ensure_worker()
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._in_flight

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued job has been delivered (or failed); False on timeout or while paused
        with jobs held."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    # -- inspection -------------------------------------------------------------------------------
    @property
    def jobs(self) -> list[SystemJob]:
        with self._cond:
            return [job.model_copy() for job in self._jobs.values()]

    def failed_jobs(self) -> list[SystemJob]:
        return [job for job in self.jobs if job.statuscode == 31]

    @property
    def attempts(self) -> list[DeliveryAttempt]:
        with self._cond:
            return list(self._attempts)

    @property
    def delivered_payloads(self) -> list[dict[str, Any]]:
        """The contexts of successful deliveries, in delivery order (for assertions)."""
        with self._cond:
            return list(self._payloads)

    def clear(self) -> None:
        """Forget queued jobs, system jobs, attempts and payloads (registrations are the store's rows)."""
        with self._cond:
            self._queue.clear()
            self._jobs.clear()
            self._attempts.clear()
            self._payloads.clear()
            self._paused = False
            self.duplicates = 1
            self._cond.notify_all()

    # -- worker -------------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        if not self._threads:
            self._stopped = False
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._run, name="sandbox-webhook-delivery", daemon=True)
            self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        self._threads = []

    def _run(self) -> None:
        client = Poster(self.timeout)
        try:
            while True:
                with self._cond:
                    while not self._stopped and (self._paused or not self._queue):
                        self._cond.wait(0.5)
                    if self._stopped:
                        return
                    item = self._queue.popleft()
                    self._in_flight += 1
                    copies = max(1, self.duplicates)
                try:
                    for _ in range(copies):
                        self._deliver(client, item)
                finally:
                    with self._cond:
                        self._in_flight -= 1
                        self._cond.notify_all()
        finally:
            client.close()

    def _deliver(self, client: Poster, item: _Job) -> None:
        job = item.job
        ok, message = False, None
        for attempt in (1, 2):
            status: int | None = None
            error: str | None = None
            try:
                status = client.post(item.url, item.body, item.headers)
            except PostError as exc:
                error = str(exc)
            with self._cond:
                self._attempts.append(DeliveryAttempt(operation_id=job.id, step_id=job.step_id, url=item.url,
                                                      attempt=attempt, status=status, error=error,
                                                      time=datetime.now(timezone.utc)))
                job.attempts += 1
            if status is not None and 200 <= status < 300:
                ok = True
                break
            message = error or f"The remote endpoint returned HTTP {status}."
            if status in RETRIED_STATUSES and attempt == 1:
                time.sleep(self.retry_delay)
                continue
            break
        with self._cond:
            job.deliveries += 1
            job.statecode = 3
            job.statuscode = 30 if ok else 31
            job.message = None if ok else message
            job.completed_on = datetime.now(timezone.utc)
            if ok:
                self._payloads.append(item.context)
            self._forget_finished_jobs()
        if self.on_job:
            self.on_job(job.model_copy())


def _endpoint_url(endpoint: WebhookEndpoint) -> str:
    parts = urlsplit(endpoint.url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if endpoint.auth == "WebhookKey" and endpoint.auth_value:
        query.append(("code", endpoint.auth_value))
    elif endpoint.auth == "HttpQueryString":
        query.extend(endpoint.query.items())
    return urlunsplit(parts._replace(query=urlencode(query)))
