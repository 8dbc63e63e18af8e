"""Dataverse Web API connector (Dynamics 365 Sales).

Every request carries ``Accept: application/json`` and ``OData-MaxVersion``/``OData-Version: 4.0``; reads add
``If-None-Match: null``; bodies ``Content-Type: application/json``. Writes append ``?tag=<tag>`` so that our
own changes come back with ``SharedVariables["tag"]`` and the runtime can drop them as echoes.

```python
async with DataverseClient("https://contoso.crm.dynamics.com", tokens) as dv:
    result = await dv.upsert("accounts", {"accountnumber": "US-001"}, {"name": "Contoso"})
    result.created, result.record["accountid"]
```

``batch`` sends many writes in one ``$batch`` request, by default as one change set: Dataverse applies all of
them or none (a document's header and its lines), see ``DataverseClient.batch``.

```python
order = {"ordernumber": "SO-1"}
results = await dv.batch([
    Upsert("salesorders", order, {"name": "SO-1", "pricelevelid@odata.bind": bind("pricelevels", price_list_id)}),
    Upsert("salesorderdetails", {"_salesorderid_value": ..., "sequencenumber": 1}, {...}),
])
```
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import httpx

from p2csync.connectors.auth import TokenProvider
from p2csync.connectors.errors import ConnectorError, InvalidKeyError, NotFoundError
from p2csync.connectors.http import ApiClient, HttpOptions, dumps_json, json_body
from p2csync.connectors.odata import (
    BatchRequestPart,
    BatchResponsePart,
    encode_batch,
    encode_path_segment,
    is_guid,
    key_predicate,
    odata_literal,
    validate_entity_set,
)
from p2csync.connectors.results import UpsertResult

__all__ = ["MAX_BATCH_REQUESTS", "UNSUPPORTED_KEY_CHARACTERS", "BatchResult", "Create", "DataverseClient",
           "DataverseOperation", "Delete", "Upsert", "bind", "format_key", "service_root"]

#: "Batch requests can contain up to 1000 individual requests and can't contain other batch requests"
#: (Dataverse Web API, Execute batch operations). Captured over it: "The current change set contains too many
#: operations. A maximum number of '1000' operations are allowed in a change set."
MAX_BATCH_REQUESTS = 1000

#: Characters Dataverse does not support in alternate-key values.
UNSUPPORTED_KEY_CHARACTERS = frozenset("/<>*%&:\\?+")

_BASE_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
_READ_HEADERS = {"If-None-Match": "null"}

Key = str | UUID | Mapping[str, Any]


def _key_value(column: str, value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidKeyError("dataverse", f"key column {column!r} has no value")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):
        # Lookup columns in a key (_parentaccountid_value) take a bare GUID; other strings are quoted.
        if column.startswith("_") and column.endswith("_value") and is_guid(value):
            return value.strip("{}")
        bad = sorted(set(value) & UNSUPPORTED_KEY_CHARACTERS)
        if bad:
            raise InvalidKeyError(
                "dataverse",
                f"alternate-key value {value!r} of column {column!r} contains {' '.join(bad)}; Dataverse does "
                f"not support / < > * % & : \\ ? + in alternate-key values",
            )
        return odata_literal(value)
    if isinstance(value, (bool, int, Decimal, float, datetime, date)):
        return odata_literal(value)
    raise InvalidKeyError("dataverse", f"key column {column!r}: unsupported value type {type(value).__name__}")


def format_key(key: Key) -> str:
    """The key predicate of a row.

    * a GUID (``str`` or ``UUID``): the primary key, ``(00000000-0000-0000-0000-000000000001)``;
    * a mapping: an alternate key, ``{"accountnumber": "US-001"}`` -> ``(accountnumber='US-001')``, several
      columns in order, ``(firstname='Joe',emailaddress1='a@b.com')``. Strings are quoted with ``'``
      doubled; ints, decimals and ``UUID`` values are bare, as is a GUID string in a lookup column
      (``_primarycontactid_value``). Values containing ``/ < > * % & : \\ ? +`` raise ``InvalidKeyError``.
    """
    if isinstance(key, UUID):
        return f"({key})"
    if isinstance(key, str):
        if not is_guid(key):
            raise InvalidKeyError(
                "dataverse", f"{key!r} is not a GUID; pass an alternate key as a mapping, e.g. {{'accountnumber': ...}}"
            )
        return f"({key.strip('{}')})"
    if not isinstance(key, Mapping) or not key:
        raise InvalidKeyError("dataverse", "a key is a GUID or a non-empty mapping of key columns")
    try:
        return key_predicate(key, _key_value)
    except ValueError as exc:
        if isinstance(exc, InvalidKeyError):
            raise
        raise InvalidKeyError("dataverse", str(exc)) from exc


def service_root(base_url: str, api_version: str = "v9.2") -> str:
    """``https://org.crm.dynamics.com`` -> ``https://org.crm.dynamics.com/api/data/v9.2/`` (kept if given)."""
    url = httpx.URL(base_url)
    path = url.path.rstrip("/")
    if "/api/data" not in path:
        path = f"{path}/api/data/{api_version}"
    return str(url.copy_with(path=path + "/", query=None, fragment=None))


def _select(select: Sequence[str] | str | None) -> str | None:
    if select is None:
        return None
    return select if isinstance(select, str) else ",".join(select)


def bind(entity_set: str, key: Key) -> str:
    """The value of a ``<navigation property>@odata.bind``: ``/accounts(<guid>)`` or, by alternate key,
    ``/accounts(accountnumber='US-001')`` (same key rules and encoding as a request URL)."""
    validate_entity_set(entity_set)
    return "/" + entity_set + encode_path_segment(format_key(key))


# ------------------------------------------------------------------------------------------------ $batch


@dataclass(frozen=True)
class Upsert:
    """PATCH the row at ``key`` (GUID or alternate key): created or updated, as ``DataverseClient.upsert``.

    ``create_only`` sends ``If-None-Match: *``, ``update_only`` ``If-Match: *``, ``if_match`` an ETag.
    """

    entity_set: str
    key: Key
    body: Mapping[str, Any]
    create_only: bool = False
    update_only: bool = False
    if_match: str | None = None


@dataclass(frozen=True)
class Create:
    """POST a new row (a key violation fails it, and with it its change set)."""

    entity_set: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Delete:
    """DELETE the row at ``key`` (a missing row fails it: 404)."""

    entity_set: str
    key: Key
    if_match: str | None = None


DataverseOperation = Upsert | Create | Delete


@dataclass(frozen=True)
class BatchResult:
    """What became of one operation of a ``$batch``.

    ``error`` is ``None`` when it was applied; ``created`` then tells a created row (201) from an updated one
    (200; ``None`` for a delete), and ``record`` is the row as Dataverse returned it. In a failed change set
    every operation carries the error that failed the set (nothing of it was applied); ``failed_here``
    marks the rejected one, whose ``status`` is its own (``None`` for the others, which have no answer).
    """

    operation: DataverseOperation
    status: int | None
    created: bool | None = None
    record: dict[str, Any] | None = None
    etag: str | None = None
    entity_id: str | None = None
    error: ConnectorError | None = None
    failed_here: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


_BATCH_METHODS: dict[type, str] = {Upsert: "PATCH", Create: "POST", Delete: "DELETE"}


def _is_multipart(response: httpx.Response) -> bool:
    return response.headers.get("Content-Type", "").lower().startswith("multipart/mixed")


class DataverseClient(ApiClient):
    """Reads and writes Dataverse rows through the Web API, with the shared retry policy and limiter."""

    system = "dataverse"
    service = "Dataverse"

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        *,
        api_version: str = "v9.2",
        tag: str | None = "p2c-sync",
        http: HttpOptions | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(service_root(base_url, api_version), tokens, headers={**_BASE_HEADERS, **(headers or {})},
                         http=http)
        self.api_version = api_version
        self.tag = tag
        #: Headers that change how Dataverse runs a write (``MSCRM.*``, ``CallerObjectId``) go on every request
        #: inside a batch too. [Inferred] that the outer request's are not applied to the inner ones.
        self._per_request_headers = {name: value for name, value in (headers or {}).items()
                                     if name.lower().startswith("mscrm.") or name.lower() == "callerobjectid"}
        self.batch_size = MAX_BATCH_REQUESTS

    # ------------------------------------------------------------------------------------------- helpers

    @staticmethod
    def _path(entity_set: str, key: Key | None = None) -> str:
        validate_entity_set(entity_set)
        if key is None:
            return entity_set
        return entity_set + encode_path_segment(format_key(key))

    def _write_params(self, select: Sequence[str] | str | None = None) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.tag:
            params["tag"] = self.tag
        if (columns := _select(select)) is not None:
            params["$select"] = columns
        return params

    # --------------------------------------------------------------------------------------------- reads

    async def get(
        self,
        entity_set: str,
        key: Key,
        select: Sequence[str] | str | None = None,
        *,
        annotations: str | None = None,
    ) -> dict[str, Any] | None:
        """One row by primary or alternate key, or ``None`` when it does not exist.

        ``annotations="*"`` asks for formatted values and lookup annotations
        (``Prefer: odata.include-annotations``). An unknown entity set is not "no row": it raises.
        """
        params = {"$select": columns} if (columns := _select(select)) is not None else None
        headers = dict(_READ_HEADERS)
        if annotations:
            headers["Prefer"] = f'odata.include-annotations="{annotations}"'
        try:
            response = await self.request("GET", self._path(entity_set, key), headers=headers, params=params)
        except NotFoundError:
            return None
        return json_body(response)

    async def query(
        self,
        entity_set: str,
        filter: str | None = None,
        select: Sequence[str] | str | None = None,
        top: int | None = None,
        page_size: int | None = None,
        *,
        orderby: str | None = None,
        annotations: str | None = None,
        expand: Mapping[str, Sequence[str]] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows of an entity set, following ``@odata.nextLink`` page by page (``Prefer: odata.maxpagesize``);
        ``annotations="*"`` as for ``get`` (one Prefer header carries both preferences). ``expand``: single-valued
        navigation property -> columns of the related row, returned inside each row ("Join tables using OData")."""
        params: dict[str, str] = {}
        if filter:
            params["$filter"] = filter
        if (columns := _select(select)) is not None:
            params["$select"] = columns
        if expand:
            params["$expand"] = ",".join(f"{nav}($select={','.join(cols)})" for nav, cols in expand.items())
        if top is not None:
            params["$top"] = str(top)
        if orderby:
            params["$orderby"] = orderby
        headers = dict(_READ_HEADERS)
        prefer = [f'odata.include-annotations="{annotations}"'] if annotations else []
        if page_size:
            prefer.append(f"odata.maxpagesize={page_size}")
        if prefer:
            headers["Prefer"] = ",".join(prefer)
        async for row in self.paged_rows(self._path(entity_set), headers=headers, params=params or None, top=top):
            yield row

    async def choice_column(self, table: str, column: str) -> dict[str, Any] | None:
        """The definition of choice column ``column`` of table ``table`` with its options expanded, as the Web API
        returns it (``OptionSet.Options[].Value`` / ``.Label.UserLocalizedLabel.Label`` / ``.LocalizedLabels``),
        or ``None`` when the table, the column or a choice column of that name does not exist (404).

        One GET of the table definitions ("Retrieve schema definitions by name"): the attribute cast to its type,
        ``$expand=OptionSet($select=Options),GlobalOptionSet($select=Options)`` (a global choice's options are
        in either). ``statecode`` is a StateAttributeMetadata and ``statuscode`` a StatusAttributeMetadata, the
        state and status columns every table with a state has; any other name is cast to
        PicklistAttributeMetadata."""
        for name in (table, column):
            validate_entity_set(name)  # logical names are identifiers: nothing else reaches the path
        kind = {"statecode": "StateAttributeMetadata", "statuscode": "StatusAttributeMetadata"}.get(
            column.lower(), "PicklistAttributeMetadata")
        path = (f"EntityDefinitions(LogicalName='{table}')/Attributes(LogicalName='{column}')/"
                f"Microsoft.Dynamics.CRM.{kind}")
        params = {"$select": "LogicalName", "$expand": "OptionSet($select=Options),GlobalOptionSet($select=Options)"}
        try:
            response = await self.request("GET", path, headers=_READ_HEADERS, params=params)
        except NotFoundError:
            return None
        return json_body(response)

    # -------------------------------------------------------------------------------------------- writes

    async def upsert(
        self,
        entity_set: str,
        key: Key,
        body: Mapping[str, Any],
        *,
        create_only: bool = False,
        update_only: bool = False,
        if_match: str | None = None,
        select: Sequence[str] | str | None = None,
    ) -> UpsertResult:
        """PATCH on the key: creates the row (201) or updates it (200), telling which.

        The key columns are removed from the body (Dataverse copies them from the URL). ``create_only``
        sends ``If-None-Match: *`` (an existing row -> ``AlreadyExistsError``); ``update_only`` sends
        ``If-Match: *`` (a missing row -> ``NotFoundError``); ``if_match`` an ETag for optimistic
        concurrency (a changed row -> ``PreconditionFailedError``).
        """
        if create_only and (update_only or if_match):
            raise ValueError("create_only cannot be combined with update_only or if_match")
        key_columns = set(key) if isinstance(key, Mapping) else set()
        payload = {name: value for name, value in body.items() if name not in key_columns}
        headers = {"Prefer": "return=representation"}
        if create_only:
            headers["If-None-Match"] = "*"
        elif if_match:
            headers["If-Match"] = if_match
        elif update_only:
            headers["If-Match"] = "*"
        response = await self.request(
            "PATCH", self._path(entity_set, key), json=payload, headers=headers,
            params=self._write_params(select),
            # A create-only PATCH repeated after an ambiguous failure would report our own row as a duplicate.
            idempotent=not create_only,
        )
        record = json_body(response)
        etag = response.headers.get("ETag") or record.get("@odata.etag")
        if response.status_code == 201:
            created = True
        elif response.status_code == 200:
            created = False
        else:  # 204: the service ignored Prefer; only a conditional request tells what happened
            created = create_only
        return UpsertResult(created=created, record=record, etag=etag, changed=True)

    async def create(
        self, entity_set: str, body: Mapping[str, Any], *, select: Sequence[str] | str | None = None
    ) -> UpsertResult:
        """POST a new row (not repeated on ambiguous failures). A key violation raises ``AlreadyExistsError``."""
        response = await self.request(
            "POST", self._path(entity_set), json=dict(body), headers={"Prefer": "return=representation"},
            params=self._write_params(select), idempotent=False,
        )
        record = json_body(response)
        if not record and (entity_id := response.headers.get("OData-EntityId")):
            record = {"@odata.id": entity_id}
        return UpsertResult(created=True, record=record,
                            etag=response.headers.get("ETag") or record.get("@odata.etag"))

    async def delete(self, entity_set: str, key: Key, *, if_match: str | None = None) -> bool:
        """Delete a row; ``False`` when it was already gone."""
        headers = {"If-Match": if_match} if if_match else None
        try:
            await self.request("DELETE", self._path(entity_set, key), headers=headers, params=self._write_params())
        except NotFoundError:
            return False
        return True

    # -------------------------------------------------------------------------------------------- $batch

    async def batch(self, operations: Sequence[DataverseOperation], *, atomic: bool = True) -> list[BatchResult]:
        """Send ``operations`` in one ``$batch`` request; one ``BatchResult`` per operation, in order.

        ``atomic=True`` (the default) sends them as one change set (Dataverse: ExecuteTransaction): all are
        applied, in the order given, or none; a later operation may bind to a row an earlier one wrote (by
        alternate key, or ``$<n>`` for the n-th operation's new row: each carries ``Content-ID: n``).
        ``atomic=False`` sends each on its own with ``Prefer: odata.continue-on-error``, so one failure does
        not stop the others. Each request carries ``?tag=`` (echo detection) and ``Prefer:
        return=representation`` (created or updated), as the single requests do.

        At most ``MAX_BATCH_REQUESTS`` (1000) operations: more raise ``ValueError`` before anything is sent.
        A document is never split (a half-written one is worse than a rejected one); the caller checks
        ``batch_size`` and rejects the document instead.

        Retries: the batch is one request to the one retry policy (429, 502/503/504, a connection lost before
        the answer). [Inferred] That is safe: a failed or unanswered change set was rolled back, and a resent
        one that did run before carries the same keyed upserts; only ``Create`` operations would be written
        twice, so a batch holding one is not resent after an ambiguous failure. Errors of the operations
        themselves are per operation (``BatchResult.error``), classified as the single requests' are.
        """
        ops = list(operations)
        if not ops:
            return []
        if len(ops) > self.batch_size:
            raise ValueError(f"{len(ops)} operations exceed Dataverse's limit of {self.batch_size} requests per "
                             "$batch; nothing was sent")
        parts = [self._batch_part(op, str(index)) for index, op in enumerate(ops, 1)]
        content_type, body = encode_batch([parts] if atomic else parts)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if not atomic:
            headers["Prefer"] = "odata.continue-on-error"
        response = await self.request(
            "POST", "$batch", content=body, headers=headers, readable=_is_multipart,
            idempotent=not any(isinstance(op, Create) for op in ops),
        )
        return self.batch_results(ops, parts, response, atomic=atomic, applied=self._applied, result=BatchResult)

    def _batch_part(self, op: DataverseOperation, content_id: str) -> BatchRequestPart:
        """The inner request of one operation: the same URL, headers and body as the single request."""
        headers: dict[str, str] = {**self._per_request_headers, "Accept": "application/json"}
        body: bytes | None = None
        query = f"?{urlencode(self._write_params())}" if self.tag else ""
        if isinstance(op, Upsert):
            if op.create_only and (op.update_only or op.if_match):
                raise ValueError("create_only cannot be combined with update_only or if_match")
            key_columns = set(op.key) if isinstance(op.key, Mapping) else set()
            payload = {name: value for name, value in op.body.items() if name not in key_columns}
            body = dumps_json(payload)
            headers["Prefer"] = "return=representation"
            if op.create_only:
                headers["If-None-Match"] = "*"
            elif op.if_match or op.update_only:
                headers["If-Match"] = op.if_match or "*"
            url = self._path(op.entity_set, op.key)
        elif isinstance(op, Create):
            body = dumps_json(dict(op.body))
            headers["Prefer"] = "return=representation"
            url = self._path(op.entity_set)
        else:
            if op.if_match:
                headers["If-Match"] = op.if_match
            url = self._path(op.entity_set, op.key)
        if body is not None:
            headers["Content-Type"] = "application/json"
        return BatchRequestPart(_BATCH_METHODS[type(op)], url + query, body, headers, content_id)

    @staticmethod
    def _applied(op: DataverseOperation, part: BatchResponsePart) -> BatchResult:
        record: dict[str, Any] | None = None
        if part.body.strip():
            try:
                loaded = jsonlib.loads(part.body)
            except ValueError:
                loaded = None
            record = loaded if isinstance(loaded, dict) else None
        if isinstance(op, Delete):
            created = None
        elif isinstance(op, Create):
            created = True
        else:  # 201 created, 200 updated; a 204 (Prefer ignored) tells only through a condition
            created = part.status == 201 or (part.status == 204 and op.create_only)
        etag = part.headers.get("etag") or (record or {}).get("@odata.etag")
        return BatchResult(op, part.status, created, record, etag, part.headers.get("odata-entityid"))
