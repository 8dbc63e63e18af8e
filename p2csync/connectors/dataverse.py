"""Dataverse Web API connector (Dynamics 365 Sales).

Every request carries ``Accept: application/json`` and ``OData-MaxVersion``/``OData-Version: 4.0``; reads add
``If-None-Match: null``; bodies ``Content-Type: application/json``. Writes append ``?tag=<tag>`` so that our
own changes come back with ``SharedVariables["tag"]`` and the runtime can drop them as echoes.

```python
async with DataverseClient("https://contoso.crm.dynamics.com", tokens) as dv:
    result = await dv.upsert("accounts", {"accountnumber": "US-001"}, {"name": "Contoso"})
    result.created, result.record["accountid"]
```
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx

from p2csync.connectors.auth import TokenProvider
from p2csync.connectors.errors import InvalidKeyError, NotFoundError
from p2csync.connectors.http import ApiClient, HttpOptions, json_body
from p2csync.connectors.odata import encode_path_segment, is_guid, key_predicate, odata_literal, validate_entity_set
from p2csync.connectors.results import UpsertResult

__all__ = ["UNSUPPORTED_KEY_CHARACTERS", "DataverseClient", "format_key", "service_root"]

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


class DataverseClient(ApiClient):
    """Reads and writes Dataverse rows through the Web API, with the shared retry policy and limiter."""

    system = "dataverse"

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
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows of an entity set, following ``@odata.nextLink`` page by page (``Prefer: odata.maxpagesize``);
        ``annotations="*"`` as for ``get`` (one Prefer header carries both preferences)."""
        params: dict[str, str] = {}
        if filter:
            params["$filter"] = filter
        if (columns := _select(select)) is not None:
            params["$select"] = columns
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
