"""F&O OData connector (data entities under ``/data/``).

Every request carries ``cross-company=true``: without it OData only sees the caller's default company, and
reads or updates of rows in other companies fail with "not found".

F&O has no upsert, so ``upsert`` reads the row by its full key and then

* creates it with POST (key fields, including ``dataAreaId``, in the body), or
* PATCHes only the fields whose values differ, or sends nothing at all when none do (``changed=False``).

Both races are handled: a POST answered "already exists" (someone created the row since the read) re-reads
and PATCHes; a PATCH answered "No resources were found when selecting for update" (the row went away)
POSTs. F&O answers those write errors with 500 or 400; ``error_from_response`` reads the infolog, not the
status. A caller that knows whether the row is there (the handlers ask the ledger: did this record write it?)
passes ``exists=`` and saves the read: one call when it is right, the same fallbacks when it is not.

Key values travel in the URL path, which F&O decodes twice: IIS/ASP.NET decode it once to route the request
(a ``/``, ``\\`` or ``+`` that was percent-encoded once is then a path separator or a plus, and F&O answers
404 "No HTTP resource was found"), then OData decodes the key segment again. So every character of a string
key value outside ``A-Z a-z 0-9 - . _ ~`` is percent-encoded twice (``US/001`` -> ``US%252F001``), the
published workaround, applied to every such character so that no value depends on which characters the
routing layer happens to tolerate. Plain keys (``US-001``) are sent as they are, and every read and write
stays one request. Values with control characters are refused before any request (``InvalidKeyError``).

``batch`` sends many writes in one ``$batch`` request, by default as one all-or-nothing change set (a
document's header and its lines: never half-written); see ``FnOClient.batch``. A document's lines are read
with one ``$filter`` query (``equals_filter``), which also finds the lines F&O has and the source no longer has.

```python
async with FnOClient("https://contoso.operations.dynamics.com", tokens) as fno:
    key = {"dataAreaId": "usmf", "CustomerAccount": "US-001"}
    result = await fno.upsert("CustomersV3", key, {"OrganizationName": "Contoso", "CustomerGroupId": "10"})
```
"""

from __future__ import annotations

import enum
import json as jsonlib
import logging
import re
import unicodedata
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx

from p2csync.connectors.auth import TokenProvider
from p2csync.connectors.errors import (
    AlreadyExistsError,
    ConnectorError,
    InvalidKeyError,
    NotFoundError,
    PermanentError,
    RouteNotFoundError,
    TransientError,
)
from p2csync.connectors.http import ApiClient, HttpOptions, dumps_json, json_body
from p2csync.connectors.odata import (
    BatchRequestPart,
    BatchResponsePart,
    ODataEnum,
    encode_batch,
    encode_path_segment,
    key_predicate,
    odata_literal,
    validate_entity_set,
)
from p2csync.connectors.results import UpsertResult

__all__ = ["DEFAULT_BATCH_SIZE", "ENTITY_KEYS", "BatchOperation", "BatchResult", "Create", "Delete", "FnOClient",
           "ODataEnum", "Read", "Update", "chunk_operations", "equals_filter", "fno_literal", "format_key",
           "key_path", "same_value", "service_root"]

log = logging.getLogger("p2csync.connectors.fno")

#: OData keys of the entities the flows use (wire-formats §4.3). Other entity sets are accepted with any
#: non-empty key; pass ``entity_keys=`` to the client to add or override.
ENTITY_KEYS: dict[str, tuple[str, ...]] = {
    "CustomersV3": ("dataAreaId", "CustomerAccount"),
    "ContactPersons": ("dataAreaId", "ContactPersonId"),
    "CDSContactPersonsV2": ("dataAreaId", "ContactPersonPartyNumber", "AssociatedContactType",
                            "AssociatedContactNumber"),
    "CDSCustomerContactPersons": ("dataAreaId", "ContactPersonPartyNumber", "CustomerAccountNumber"),
    "ReleasedProductsV2": ("dataAreaId", "ItemNumber"),
    "ReleasedDistinctProductsV2": ("dataAreaId", "ItemNumber"),
    "CDSReleasedDistinctProducts": ("dataAreaId", "ProductNumber"),
    "SalesQuotationHeadersV2": ("dataAreaId", "SalesQuotationNumber"),
    "SalesQuotationLines": ("dataAreaId", "InventoryLotId"),
    "CDSSalesQuotationHeaders": ("dataAreaId", "SalesQuotationNumber"),
    "CDSSalesQuotationLines": ("dataAreaId", "LineCreationSequenceNumber", "SalesQuotationNumber"),
    "SalesOrderHeadersV2": ("dataAreaId", "SalesOrderNumber"),
    "SalesOrderHeadersV3": ("dataAreaId", "SalesOrderNumber"),
    "SalesOrderHeadersV4": ("dataAreaId", "SalesOrderNumber"),
    "SalesOrderLines": ("dataAreaId", "InventoryLotId"),
    "SalesOrderLinesV3": ("dataAreaId", "InventoryLotId"),
    "CDSSalesOrderHeaders": ("dataAreaId", "SalesOrderNumber"),
    "CDSSalesOrderHeadersV2": ("dataAreaId", "SalesOrderNumber"),
    "CDSSalesOrderLines": ("dataAreaId", "SalesOrderNumber", "LineCreationSequenceNumber"),
    "CDSSalesOrderLinesV2": ("dataAreaId", "SalesOrderNumber", "LineCreationSequenceNumber"),
    "SalesInvoiceHeaders": ("dataAreaId", "InvoiceNumber", "InvoiceDate"),
    "SalesInvoiceHeadersV2": ("dataAreaId", "InvoiceNumber", "InvoiceDate", "LedgerVoucher"),
    "SalesInvoiceLines": ("dataAreaId", "InvoiceNumber", "LineCreationSequenceNumber", "InvoiceDate"),
    "SalesInvoiceLinesV2": ("dataAreaId", "InvoiceNumber", "LineCreationSequenceNumber", "InvoiceDate",
                            "LedgerVoucher"),
}

#: Operations per ``$batch`` request. F&O documents "a batch can contain up to 5000 operations" (service
#: protection API limits); ODataLib's default quota is 1000 operations per change set. [Inferred] 1000 stays
#: within both until a real environment shows which applies.
DEFAULT_BATCH_SIZE = 1000

_BASE_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
_CROSS_COMPANY = {"cross-company": "true"}
#: F&O's "no date": DateTimeOffset fields that were never set read back as 1900-01-01.
_EMPTY_DATES = (date(1900, 1, 1),)
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _control_character(text: str) -> tuple[int, str] | None:
    """The first control character (C0, DEL or C1: Unicode category Cc) in ``text`` and its position."""
    for position, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            return position, char
    return None


def fno_literal(value: Any) -> str:
    """An F&O OData literal for a key predicate or ``$filter``: as ``odata_literal``, except that a ``date`` is
    midnight UTC ``2026-01-31T00:00:00Z`` (unquoted). F&O's OData has only Edm.DateTimeOffset; a bare
    ``2026-01-31`` is an Edm.Date literal, which its date fields do not take."""
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(), tzinfo=timezone.utc)
    return odata_literal(value)


def format_key(key: Mapping[str, Any]) -> str:
    """``(dataAreaId='usmf',CustomerAccount='US-001')`` with every value an F&O literal (not URL-encoded).

    Raises ``InvalidKeyError`` naming the field for a missing value or a control character: F&O's web
    server (http.sys, ``AllowRestrictedChars`` off by default) refuses a URL that decodes to U+0000-U+001F
    or U+007F-U+009F, so such a row, once created (the key travels in the POST body), could never be read,
    updated or deleted by key again.
    """
    if not isinstance(key, Mapping) or not key:
        raise InvalidKeyError("fno", "an F&O key is a non-empty mapping of all the entity's key fields")
    for name, value in key.items():
        if value is None or (isinstance(value, str) and not value):
            raise InvalidKeyError("fno", f"key field {name!r} has no value")
        found = _control_character(value) if isinstance(value, str) else None
        if found is not None:
            position, char = found
            raise InvalidKeyError(
                "fno", f"key field {name!r} contains the control character U+{ord(char):04X} at position "
                f"{position}: F&O's web server refuses control characters in URLs, so a row with this key could "
                "not be read, updated or deleted again; nothing is written"
            )
    try:
        return key_predicate(key, lambda _name, value: fno_literal(value))
    except (TypeError, ValueError) as exc:
        raise InvalidKeyError("fno", str(exc)) from exc


#: Inside a quoted key value, only the doubled quote stays as it is; everything else but the unreserved
#: characters (always safe for ``quote``) is percent-encoded, then the ``%`` of each escape encoded again.
_KEY_VALUE_SAFE = "'"


def _path_literal(name: str, value: Any) -> str:
    """One key value as it goes into the URL path: string contents double-encoded, other literals once."""
    if isinstance(value, str) and not isinstance(value, ODataEnum):
        once = quote(value.replace("'", "''"), safe=_KEY_VALUE_SAFE)
        return "'" + once.replace("%", "%25") + "'"
    return encode_path_segment(fno_literal(value))


def key_path(key: Mapping[str, Any]) -> str:
    """The key segment for the URL path: ``(dataAreaId='usmf',CustomerAccount='US%252F001')``.

    Double encoding is F&O's published workaround for ``/``, ``\\`` and ``+`` (a single ``%2F`` is decoded
    before routing and the request answers 404 "No HTTP resource was found"). [Inferred] It is applied to
    every encoded character of a string value, because OData decodes the segment a second time anyway: a
    ``%`` sent once-encoded would be decoded twice (``50%2541`` -> ``50A``), and the routing layer then only
    ever sees unreserved characters and ``%XX``. Values without such characters are unchanged.
    """
    format_key(key)  # refuses what has no literal or cannot be addressed
    try:
        return key_predicate(key, _path_literal)
    except (TypeError, ValueError) as exc:
        raise InvalidKeyError("fno", str(exc)) from exc


def equals_filter(fields: Mapping[str, Any]) -> str:
    """``dataAreaId eq 'usmf' and SalesOrderNumber eq 'SO-1'``: the ``$filter`` of the rows whose fields equal
    the given values (a document's lines: one query instead of one read per line)."""
    if not fields:
        raise ValueError("equals_filter needs at least one field")
    parts = []
    for name, value in fields.items():
        validate_entity_set(name)  # a property name is an identifier too
        parts.append(f"{name} eq {fno_literal(value)}")
    return " and ".join(parts)


def service_root(base_url: str) -> str:
    """``https://env.operations.dynamics.com`` -> ``https://env.operations.dynamics.com/data/``."""
    url = httpx.URL(base_url)
    path = url.path.rstrip("/")
    if not path.endswith("/data"):
        path = f"{path}/data"
    return str(url.copy_with(path=path + "/", query=None, fragment=None))


# ------------------------------------------------------------------------------------- value comparison


def _normalise(value: Any) -> Any:
    """A comparable form: numbers as Decimal, enums as member names, dates as UTC datetimes, empty as None."""
    if isinstance(value, ODataEnum):
        return value.member or None
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float, Decimal)):
        try:
            return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        except InvalidOperation:
            return value
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        moment = moment.astimezone(timezone.utc)
        return None if moment.date() in _EMPTY_DATES and moment.timetz() == time(tzinfo=timezone.utc) else moment
    if isinstance(value, date):
        return None if value in _EMPTY_DATES else datetime.combine(value, time(), tzinfo=timezone.utc)
    if isinstance(value, str):
        if value == "":
            return None
        if _ISO_DATE.match(value):
            try:
                return _normalise(date.fromisoformat(value))
            except ValueError:
                return value
        if _ISO_DATETIME.match(value):
            try:
                return _normalise(datetime.fromisoformat(value.replace("Z", "+00:00")))
            except ValueError:
                return value
        return value
    return value


def same_value(current: Any, desired: Any) -> bool:
    """Whether F&O's ``current`` value already equals the ``desired`` one (so no PATCH is needed).

    ``5000000.0`` equals ``Decimal("5000000")``; ``"Yes"`` equals ``ODataEnum("NoYes", "Yes")`` and ``True``
    (NoYes fields); ``""``, ``None`` and F&O's empty date 1900-01-01 are all "empty"; ISO date strings equal
    the same instant as a ``datetime``.
    """
    a, b = _normalise(current), _normalise(desired)
    if isinstance(a, bool) != isinstance(b, bool):
        flag, other = (a, b) if isinstance(a, bool) else (b, a)
        return isinstance(other, str) and other == ("Yes" if flag else "No")
    return a == b


# ------------------------------------------------------------------------------------------------ $batch


@dataclass(frozen=True)
class Create:
    """POST a new row; ``key`` (all key fields) goes into the body with ``body``."""

    entity_set: str
    key: Mapping[str, Any]
    body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    """PATCH the given fields of the row at ``key`` (key fields in ``changes`` must equal the key)."""

    entity_set: str
    key: Mapping[str, Any]
    changes: Mapping[str, Any]
    if_match: str | None = None


@dataclass(frozen=True)
class Delete:
    """DELETE the row at ``key``."""

    entity_set: str
    key: Mapping[str, Any]
    if_match: str | None = None


@dataclass(frozen=True)
class Read:
    """GET the row at ``key`` (only in a non-atomic batch: OData allows no GET inside a change set)."""

    entity_set: str
    key: Mapping[str, Any]
    select: Sequence[str] | None = None


BatchOperation = Create | Update | Delete | Read


@dataclass(frozen=True)
class BatchResult:
    """What became of one operation of a batch.

    ``error`` is ``None`` when it was applied (or read; ``record`` is ``None`` for a read that found no row).
    In a failed change set every operation carries the error that failed the set (nothing of it was
    applied) and ``failed_here`` marks the operation F&O rejected; ``status`` is then the rejected one's
    status, and ``None`` for the others, which have no answer of their own.
    """

    operation: BatchOperation
    status: int | None
    record: dict[str, Any] | None = None
    etag: str | None = None
    error: ConnectorError | None = None
    failed_here: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def chunk_operations(operations: Sequence[BatchOperation], size: int = DEFAULT_BATCH_SIZE) -> list[list[BatchOperation]]:
    """``operations`` in order, in runs of at most ``size`` (one ``$batch`` request each)."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    items = list(operations)
    return [items[start:start + size] for start in range(0, len(items), size)]


_METHODS: dict[type, str] = {Create: "POST", Update: "PATCH", Delete: "DELETE", Read: "GET"}


# ------------------------------------------------------------------------------------------------ client


class FnOClient(ApiClient):
    """Reads and writes F&O data entities with the shared retry policy and limiter (cross-company)."""

    system = "fno"
    service = "F&O"

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        *,
        http: HttpOptions | None = None,
        headers: Mapping[str, str] | None = None,
        entity_keys: Mapping[str, Sequence[str]] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        super().__init__(service_root(base_url), tokens, headers={**_BASE_HEADERS, **(headers or {})}, http=http)
        self.entity_keys: dict[str, tuple[str, ...]] = {
            **ENTITY_KEYS, **{name: tuple(fields) for name, fields in (entity_keys or {}).items()}
        }
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size

    # ------------------------------------------------------------------------------------------- helpers

    def check_key(self, entity_set: str, key: Mapping[str, Any]) -> None:
        """Raise ``InvalidKeyError`` unless ``key`` names exactly the entity's key fields, all with values."""
        validate_entity_set(entity_set)
        format_key(key)  # non-empty, no empty values
        expected = self.entity_keys.get(entity_set)
        if expected is not None and set(key) != set(expected):
            missing = [name for name in expected if name not in key]
            extra = [name for name in key if name not in expected]
            problems = []
            if missing:
                problems.append(f"missing {', '.join(missing)}")
            if extra:
                problems.append(f"not key fields: {', '.join(extra)}")
            raise InvalidKeyError(
                "fno", f"{entity_set} is addressed by all of ({', '.join(expected)}); {'; '.join(problems)}"
            )

    def _path(self, entity_set: str, key: Mapping[str, Any] | None = None) -> str:
        validate_entity_set(entity_set)
        if key is None:
            return entity_set
        self.check_key(entity_set, key)
        return entity_set + key_path(key)

    @staticmethod
    def _params(**options: str | None) -> dict[str, str]:
        params = dict(_CROSS_COMPANY)
        params.update({name: value for name, value in options.items() if value is not None})
        return params

    # --------------------------------------------------------------------------------------------- reads

    async def get(
        self, entity_set: str, key: Mapping[str, Any], select: Sequence[str] | str | None = None
    ) -> dict[str, Any] | None:
        """One row by its full key (all key fields required), or ``None`` when there is none."""
        path = self._path(entity_set, key)
        columns = select if isinstance(select, str) or select is None else ",".join(select)
        try:
            response = await self.request("GET", path, params=self._params(**{"$select": columns}))
        except NotFoundError:
            return None
        except RouteNotFoundError:
            raise  # the URL reached no resource at all: reading it as "no row" would POST a duplicate
        except PermanentError as exc:
            if exc.status == 404:  # F&O words a missing row in more than one way; all are "no row" here
                return None
            raise
        return json_body(response)

    async def query(
        self,
        entity_set: str,
        filter: str | None = None,
        select: Sequence[str] | str | None = None,
        top: int | None = None,
        *,
        orderby: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows of an entity set across companies, following ``@odata.nextLink``.

        Build ``filter`` with ``fno_literal``: ``f"dataAreaId eq {fno_literal('usmf')}"`` (a ``date`` then
        becomes midnight UTC, the only date literal F&O's Edm.DateTimeOffset fields take).
        """
        columns = select if isinstance(select, str) or select is None else ",".join(select)
        params: dict[str, str] | None = self._params(
            **{"$filter": filter or None, "$select": columns, "$top": None if top is None else str(top),
               "$orderby": orderby}
        )
        headers = {"Prefer": f"odata.maxpagesize={page_size}"} if page_size else None
        async for row in self.paged_rows(self._path(entity_set), headers=headers, params=params, top=top,
                                         next_url=_keep_cross_company):
            yield row

    # -------------------------------------------------------------------------------------------- writes

    async def upsert(self, entity_set: str, key: Mapping[str, Any], body: Mapping[str, Any], *,
                     exists: bool | None = None) -> UpsertResult:
        """Create or update the row at ``key`` so that it holds ``body``; see the module docstring.

        ``exists`` is what the caller knows, and saves the read: ``True`` (it wrote this row before) PATCHes the
        whole body at once, and POSTs if F&O answers "not found" (the row was deleted); ``False`` (it never
        wrote it) POSTs at once, and PATCHes the whole body if F&O answers "already exists". Either way one call
        when the guess is right, two when it is not. ``None`` reads first and PATCHes only what differs."""
        self.check_key(entity_set, key)
        for name, value in body.items():
            if name in key and not same_value(key[name], value):
                raise InvalidKeyError("fno", f"body field {name!r} = {value!r} contradicts the key ({key[name]!r})")
        if exists is False:
            try:
                return await self._create(entity_set, key, body)
            except AlreadyExistsError:
                log.info("%s%s: exists already, updating instead", entity_set, format_key(key))
                return await self._update(entity_set, key, body, {}, allow_create=False)
        if exists is True:
            return await self._update(entity_set, key, body, {}, allow_create=True)

        current = await self.get(entity_set, key)
        if current is None:
            try:
                return await self._create(entity_set, key, body)
            except AlreadyExistsError:
                # Created by someone else since our read: read it again and update it.
                log.info("%s%s: created concurrently, updating instead", entity_set, format_key(key))
                current = await self.get(entity_set, key)
                if current is None:
                    raise
            return await self._update(entity_set, key, body, current, allow_create=False)
        return await self._update(entity_set, key, body, current, allow_create=True)

    async def _create(self, entity_set: str, key: Mapping[str, Any], body: Mapping[str, Any]) -> UpsertResult:
        payload = {**dict(body), **dict(key)}
        # Safe to repeat after an ambiguous failure: a duplicate comes back as "already exists", handled above.
        response = await self.request(
            "POST", self._path(entity_set), json=payload, params=self._params(), idempotent=True
        )
        record = json_body(response) or payload
        return UpsertResult(
            created=True, record=record, etag=response.headers.get("ETag") or record.get("@odata.etag")
        )

    async def _update(
        self,
        entity_set: str,
        key: Mapping[str, Any],
        body: Mapping[str, Any],
        current: dict[str, Any],
        *,
        allow_create: bool,
    ) -> UpsertResult:
        changes = {
            name: value for name, value in body.items()
            if name not in key and (name not in current or not same_value(current[name], value))
        }
        if not changes:
            return UpsertResult(created=False, record=current, etag=current.get("@odata.etag"), changed=False)
        try:
            response = await self.request(
                "PATCH", self._path(entity_set, key), json=changes, params=self._params()
            )
        except NotFoundError as exc:
            if not allow_create:
                raise TransientError(
                    "fno", exc.status, exc.code, "row appeared and disappeared again while being written "
                    f"(concurrent writers); try again later. Last answer: {exc.detail}", exc.method, exc.url,
                ) from exc
            # Deleted since our read: create it.
            log.info("%s%s: deleted concurrently, creating instead", entity_set, format_key(key))
            try:
                return await self._create(entity_set, key, body)
            except AlreadyExistsError as again:
                raise TransientError(
                    "fno", again.status, again.code, "row disappeared and reappeared while being written "
                    f"(concurrent writers); try again later. Last answer: {again.detail}", again.method, again.url,
                ) from again
        record = {**current, **changes}
        etag = response.headers.get("ETag")
        if etag:
            record["@odata.etag"] = etag
        else:
            record.pop("@odata.etag", None)  # the read's ETag is stale now
        return UpsertResult(created=False, record=record, etag=etag, changed=True)

    async def delete(self, entity_set: str, key: Mapping[str, Any]) -> bool:
        """Delete a row by its full key; ``False`` when it was already gone."""
        try:
            await self.request("DELETE", self._path(entity_set, key), params=self._params())
        except NotFoundError:
            return False
        return True

    # -------------------------------------------------------------------------------------------- $batch

    async def batch(self, operations: Sequence[BatchOperation], *, atomic: bool = True) -> list[BatchResult]:
        """Send ``operations`` in one ``$batch`` request; one ``BatchResult`` per operation, in order.

        ``atomic=True`` (the default) sends them as one change set: F&O applies all of them or none, in the
        order given (so a header goes before its lines). ``atomic=False`` sends each on its own outside any
        change set (each applied or not by itself; reads allowed). Each request carries ``cross-company=true``
        in its own URL, as a single request would. At most ``batch_size`` operations (``chunk_operations``).

        Retries: the whole batch is one request to the retry policy, and it is sent again after a 429, a
        502/503/504 or a connection lost before the answer. That is safe [Inferred from the documented
        all-or-nothing change set]: every operation names its row by its full natural key (a create carries
        it in the body), so a batch that did run before the connection dropped cannot write twice; the
        resent one at worst fails as a whole ("already exists" / "not found"), leaving F&O as the first one
        left it, and the caller re-reads and converges. Errors inside the batch answer (write errors, 400/500)
        are per operation (``BatchResult.error``, classified as single requests are) and never retried here.
        """
        ops = list(operations)
        if not ops:
            return []
        if len(ops) > self.batch_size:
            raise ValueError(f"{len(ops)} operations exceed the batch size of {self.batch_size}; "
                             "split them with chunk_operations (a change set per chunk is atomic on its own)")
        if atomic and any(isinstance(op, Read) for op in ops):
            raise ValueError("a read cannot be inside a change set (OData 4.0 §11.7.2); use atomic=False")
        parts = [self._batch_part(op, str(index)) for index, op in enumerate(ops, 1)]
        content_type, body = encode_batch([parts] if atomic else parts)
        headers = {"Content-Type": content_type, "Accept": "multipart/mixed"}
        if not atomic:
            headers["Prefer"] = "odata.continue-on-error"
        response = await self.request("POST", "$batch", content=body, headers=headers, idempotent=True)
        return self.batch_results(ops, parts, response, atomic=atomic, applied=self._applied, result=BatchResult,
                                  absent=self._absent)

    async def batch_chunks(self, operations: Sequence[BatchOperation], *, atomic: bool = True) -> list[BatchResult]:
        """``batch`` over ``chunk_operations(operations, batch_size)``, one request per chunk, in order;
        after a chunk with a failure the later chunks are not sent (their results say so). Only each chunk
        is all-or-nothing: a caller that needs the whole to be must keep within ``batch_size``."""
        results: list[BatchResult] = []
        chunks = chunk_operations(operations, self.batch_size)
        for number, chunk in enumerate(chunks):
            done = await self.batch(chunk, atomic=atomic)
            results.extend(done)
            if not all(result.ok for result in done):
                skipped = TransientError("fno", None, "NotSent", "not sent: an earlier chunk of the batch failed")
                for later in chunks[number + 1:]:
                    results.extend(BatchResult(op, None, error=skipped) for op in later)
                break
        return results

    def _batch_part(self, op: BatchOperation, content_id: str) -> BatchRequestPart:
        """The inner request of one operation (same URL, key encoding and body as the single request)."""
        self.check_key(op.entity_set, op.key)
        params = "?cross-company=true"
        headers: dict[str, str] = {}
        body: bytes | None = None
        if isinstance(op, Create):
            self._check_body(op.key, op.body)
            url = self._path(op.entity_set) + params
            body = dumps_json({**dict(op.body), **dict(op.key)}, dates_as_datetimes=True)
        elif isinstance(op, Update):
            self._check_body(op.key, op.changes)
            url = self._path(op.entity_set, op.key) + params
            body = dumps_json({k: v for k, v in op.changes.items() if k not in op.key}, dates_as_datetimes=True)
        else:
            url = self._path(op.entity_set, op.key) + params
            if isinstance(op, Read) and op.select:
                url += "&$select=" + ",".join(op.select)
        if isinstance(op, (Update, Delete)) and op.if_match:
            headers["If-Match"] = op.if_match
        if body is not None:
            headers["Content-Type"] = "application/json"
        headers["Accept"] = "application/json"
        return BatchRequestPart(_METHODS[type(op)], url, body, headers, content_id)

    @staticmethod
    def _check_body(key: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        for name, value in body.items():
            if name in key and not same_value(key[name], value):
                raise InvalidKeyError("fno", f"body field {name!r} = {value!r} contradicts the key ({key[name]!r})")

    @staticmethod
    def _applied(op: BatchOperation, part: BatchResponsePart) -> BatchResult:
        record: dict[str, Any] | None = None
        if part.body.strip():
            try:
                loaded = jsonlib.loads(part.body)
            except ValueError:
                loaded = None
            record = loaded if isinstance(loaded, dict) else None
        etag = part.headers.get("etag") or (record or {}).get("@odata.etag")
        return BatchResult(op, part.status, record, etag)

    @staticmethod
    def _absent(op: BatchOperation, answer: BatchResponsePart, error: ConnectorError) -> BatchResult | None:
        if isinstance(op, Read) and answer.status == 404 and not isinstance(error, RouteNotFoundError):
            return BatchResult(op, answer.status)  # no such row, read as ``get`` reads it
        return None


def _keep_cross_company(link: str) -> httpx.URL:
    """A nextLink must still see every company, whether or not F&O kept the flag in it."""
    url = httpx.URL(link)
    return url if "cross-company" in url.params else url.copy_merge_params(_CROSS_COMPANY)
