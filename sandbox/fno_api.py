"""The F&O OData surface of the simulator (`/data/...`): translation between HTTP and `FnO`."""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sandbox.front import SandboxFront, request_user
from sandbox.fno import ODATA_EXCEPTION, FnO, FnoError
from sandbox.fno_entities import FnoEntity
from sandbox.odata import (
    EnumLiteral, FilterRow, GuidLiteral, ODataSyntaxError, UnknownProperty, compile_filter, parse_key,
    parse_orderby, parse_resource_path, parse_select, sort_rows,
)

DATA_ROOT = "/data/"
ODATA_HEADERS = {"OData-Version": "4.0"}
JSON_TYPE = "application/json; odata.metadata=minimal"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type=JSON_TYPE,
                    headers={**ODATA_HEADERS, **(headers or {})})


def _root(request: Request) -> str:
    return str(request.base_url).rstrip("/") + DATA_ROOT


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() == "true"


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise FnoError(400, f"Invalid value '{raw}' for {name}.", inner_type=ODATA_EXCEPTION) from exc
    if value < 0:
        raise FnoError(400, f"Invalid value '{raw}' for {name}.", inner_type=ODATA_EXCEPTION)
    return value


class FnoApi:
    def __init__(self, fno: FnO) -> None:
        self.fno = fno

    def key(self, entity: FnoEntity, segment: str) -> dict[str, Any]:
        parsed = parse_key(segment)
        if not isinstance(parsed, dict):
            if len(entity.key) != 1:
                raise FnoError(400, "The number of keys specified in the URI does not match number of key "
                                    f"properties for the resource '{entity.qualified_type}'.",
                               inner_type=ODATA_EXCEPTION)
            parsed = {entity.key[0]: parsed}
        result: dict[str, Any] = {}
        for name, value in parsed.items():
            if isinstance(value, GuidLiteral):
                value = value.value
            elif isinstance(value, EnumLiteral):
                value = value.symbol
            result[name] = value
        return result

    def select(self, entity: FnoEntity, request: Request) -> list[str] | None:
        select = parse_select(request.query_params.get("$select"))
        for name in select or []:
            if name not in entity.fields:
                raise UnknownProperty(name)
        return select

    @staticmethod
    def shape(row: dict[str, Any], etag: str, select: list[str] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"@odata.etag": etag}
        body.update({k: v for k, v in row.items() if select is None or k in select})
        return body

    def context(self, request: Request, entity: FnoEntity, select: list[str] | None, single: bool) -> str:
        selected = f"({','.join(select)})" if select else ""
        return f"{_root(request)}$metadata#{entity.entity_set}{selected}{'/$entity' if single else ''}"

    async def handle(self, request: Request) -> Response:
        entity: FnoEntity | None = None
        try:
            path = request.path_params.get("path", "")
            if path in ("", "/"):
                return _json({"@odata.context": f"{_root(request)}$metadata",
                              "value": [{"name": n, "kind": "EntitySet", "url": n} for n in self.fno.entities]})
            resource = parse_resource_path(path)
            entity = self.fno.entity(resource.entity_set)
            user = self.fno.user(request_user(request))
            cross = _flag(request, "cross-company")
            companies = self.fno.visible_companies(user, cross)
            method = request.method
            if resource.key is None:
                if resource.rest == "$count" and method == "GET":
                    return PlainTextResponse(str(len(self.query(request, entity, companies))))
                if resource.rest:
                    raise FnoError(404, f"Resource not found for the segment '{resource.rest}'.",
                                   inner_type=ODATA_EXCEPTION)
                if method == "GET":
                    return self.get_collection(request, entity, companies)
                if method == "POST":
                    return await self.post(request, entity, user)
                raise FnoError(405, f"The requested resource does not support {method}.", inner_type=ODATA_EXCEPTION)
            if resource.rest:
                raise FnoError(404, f"Resource not found for the segment '{resource.rest}'.",
                               inner_type=ODATA_EXCEPTION)
            key = self.fno.key_tuple(entity, self.key(entity, resource.key))
            if method == "GET":
                return self.get_one(request, entity, key, companies)
            if method in ("PATCH", "PUT"):
                body = await self._body(request)
                if_match = request.headers.get("if-match")
                row, change = self.fno.update_row(entity, key, body, user, companies=companies, if_match=if_match)
                self.fno.notify(change)
                with self.fno.lock:
                    etag = self.fno.etag(entity, row)
                return Response(status_code=204, headers={**ODATA_HEADERS, "ETag": etag})
            if method == "DELETE":
                change = self.fno.delete_row(entity, key, user, companies=companies,
                                             if_match=request.headers.get("if-match"))
                self.fno.notify(change)
                return Response(status_code=204, headers=ODATA_HEADERS)
            raise FnoError(405, f"The requested resource does not support {method}.", inner_type=ODATA_EXCEPTION)
        except FnoError as exc:
            return exc.response()
        except UnknownProperty as exc:
            type_name = entity.qualified_type if entity else "entity"
            return FnoError(400, f"Could not find a property named '{exc.name}' on type '{type_name}'.",
                            inner_type=ODATA_EXCEPTION).response()
        except ODataSyntaxError as exc:
            return FnoError(400, str(exc), inner_type=ODATA_EXCEPTION).response()

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise FnoError(400, f"The request body is not valid JSON: {exc}", inner_type=ODATA_EXCEPTION) from exc
        if not isinstance(body, dict):
            raise FnoError(400, "The request body must be a JSON object.", inner_type=ODATA_EXCEPTION)
        return body

    def query(self, request: Request, entity: FnoEntity, companies: list[str]) -> list[tuple[dict, str]]:
        params = request.query_params
        rows = self.fno.snapshot(entity, companies)
        known = entity.fields.__contains__

        def value_of(item: tuple[dict, str], name: str) -> Any:
            return item[0].get(name)

        if params.get("$filter"):
            predicate = compile_filter(params["$filter"], known)
            rows = [item for item in rows if predicate(FilterRow(item, value_of, wildcards=True))]
        if params.get("$orderby"):
            rows = sort_rows(rows, parse_orderby(params["$orderby"], known), value_of)
        skip = _int_param(request, "$skip") or 0
        top = _int_param(request, "$top")
        rows = rows[skip:]
        if top is not None:
            rows = rows[:top]
        return rows

    def get_collection(self, request: Request, entity: FnoEntity, companies: list[str]) -> Response:
        select = self.select(entity, request)
        rows = self.query(request, entity, companies)
        offset = 0
        token = request.query_params.get("$skiptoken")
        if token:
            try:
                offset = int(token)
            except ValueError as exc:
                raise FnoError(400, "Invalid $skiptoken.", inner_type=ODATA_EXCEPTION) from exc
        page = rows[offset: offset + self.fno.page_size]
        body: dict[str, Any] = {"@odata.context": self.context(request, entity, select, single=False)}
        if _flag(request, "$count"):
            body["@odata.count"] = len(rows)
        body["value"] = [self.shape(row, etag, select) for row, etag in page]
        if offset + self.fno.page_size < len(rows):
            body["@odata.nextLink"] = str(request.url.include_query_params(
                **{"$skiptoken": str(offset + self.fno.page_size)}))
        return _json(body)

    def get_one(self, request: Request, entity: FnoEntity, key: tuple, companies: list[str]) -> Response:
        select = self.select(entity, request)
        with self.fno.lock:
            row = self.fno.find(entity, key, companies)
            if row is None:
                raise FnoError(404, f"No resources were found for the key in '{entity.entity_set}'.",
                               inner_type=ODATA_EXCEPTION,
                               message=f"Resource not found for the segment '{entity.entity_set}'.")
            row = dict(row)
            etag = self.fno.etag(entity, row)
        body = {"@odata.context": self.context(request, entity, select, single=True),
                **self.shape(row, etag, select)}
        return _json(body, headers={"ETag": etag})

    async def post(self, request: Request, entity: FnoEntity, user: Any) -> Response:
        body = await self._body(request)
        row, change = self.fno.create_row(entity, body, user)
        self.fno.notify(change)
        with self.fno.lock:
            etag = self.fno.etag(entity, row)
        key = ",".join(f"{k}='{str(row[k]).replace(chr(39), chr(39) * 2)}'"
                       if isinstance(row[k], str) else f"{k}={row[k]}" for k in entity.key)
        location = f"{_root(request)}{entity.entity_set}({key})"
        payload = {"@odata.context": self.context(request, entity, None, single=True), **self.shape(row, etag, None)}
        return _json(payload, 201, {"ETag": etag, "Location": location})


def build_app(fno: FnO) -> SandboxFront:
    api = FnoApi(fno)
    routes = [Route("/data/{path:path}", api.handle, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
              Route("/data", api.handle, methods=["GET"])]
    return SandboxFront(fno, Starlette(routes=routes))
