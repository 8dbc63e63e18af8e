"""The F&O OData surface of the simulator (`/data/...`): translation between HTTP and `FnO`.

How a key in the URL path reaches the row, as F&O's IIS/ASP.NET/OData stack does it:

1. The front decodes the path once (uvicorn does it for us: `scope["path"]`). A decoded control character
   (U+0000-U+001F, U+007F-U+009F) is refused with http.sys's 400 "Bad Request - Invalid URL"
   (`AllowRestrictedChars` is 0 by default, KB 820129).
2. ASP.NET routes the decoded path: a `/` or `\\` inside the key segment makes it another path, so the
   request answers 404 `{"Message": "No HTTP resource was found that matches the request URI '…'. No route
   data was found for this request."}` (published captures for `ProductsV2(ProductNumber='105E11%2F74N')`).
   The same captures report `+` failing; `FnoSettings.plus_in_key` chooses how.
3. OData decodes the key segment a second time, so a double-encoded `%252F` names the key `/`.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any
from urllib.parse import quote, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.front import SandboxFront, request_user
from sandbox.fno import ODATA_EXCEPTION, FnO, FnoError
from sandbox.fno_entities import DATETIME_OFFSET_RE, FnoEntity
from sandbox.odata import (
    EnumLiteral, FilterRow, GuidLiteral, ODataSyntaxError, UnknownProperty, compile_filter, parse_key,
    parse_orderby, parse_resource_path, parse_select, sort_rows, split_top_level,
)

DATA_ROOT = "/data/"
ODATA_HEADERS = {"OData-Version": "4.0"}
JSON_TYPE = "application/json; odata.metadata=minimal"
#: http.sys's own answer to a URL it refuses (the request never reaches F&O); [Inferred] page text as commonly
#: seen from IIS, the sources only document the refusal (KB 820129).
INVALID_URL_HTML = ('<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
                    "<HTML><HEAD><TITLE>Bad Request</TITLE>\r\n"
                    '<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
                    "<BODY><h2>Bad Request - Invalid URL</h2>\r\n<hr><p>HTTP Error 400. The request URL is invalid."
                    "</p>\r\n</BODY></HTML>\r\n")
#: Characters left as they are when the sandbox writes a key into a URL (the Location header).
_LOCATION_SAFE = "'(),=:@!$;-._~"


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


def _has_control_character(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


def _no_route(request: Request) -> Response:
    """ASP.NET Web API's routing miss: not an OData error body, a bare `{"Message": ...}`."""
    decoded = unquote(str(request.url))
    return JSONResponse({"Message": f"No HTTP resource was found that matches the request URI '{decoded}'. "
                                    "No route data was found for this request."}, status_code=404)


class FnoApi:
    def __init__(self, fno: FnO) -> None:
        self.fno = fno

    def routed_key(self, segment: str) -> str | None:
        """The key text after routing and OData's second decode, or None when no route matches (step 2)."""
        if "/" in segment or "\\" in segment:
            return None
        if "+" in segment:
            if self.fno.settings.plus_in_key == "route":
                return None
            segment = segment.replace("+", " ")  # [Inferred] form-decoding, the other reading of the reports
        return unquote(segment)

    def key(self, entity: FnoEntity, segment: str) -> dict[str, Any]:
        named = [part.partition("=") for part in split_top_level(segment.strip())]
        if all(eq for _, eq, _ in named):
            self.check_key_types(entity, {name.strip(): raw.strip() for name, _, raw in named})
        elif len(entity.key) == 1:
            self.check_key_types(entity, {entity.key[0]: segment.strip()})
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

    @staticmethod
    def check_key_types(entity: FnoEntity, literals: dict[str, str]) -> None:
        """An Edm.DateTimeOffset key takes only an unquoted zoned literal (``2026-01-31T00:00:00Z``): a quoted
        ``'2026-01-31T00:00:00Z'`` is an Edm.String and a bare ``2026-01-31`` an Edm.Date, neither of which
        ODataLib converts to the key's type. Its key resolver (ODataUriResolver.TryResolveKeys) then fails
        the whole key with BadRequest_KeyMismatch, the wording Microsoft documents for Dataverse's ODataLib
        (F&O's own capture of this case was not found: [Inferred] that F&O answers it the same way)."""
        for name, literal in literals.items():
            if entity.fields.get(name) == "Edm.DateTimeOffset" and not DATETIME_OFFSET_RE.match(literal):
                raise FnoError(400, f"The key in the request URI is not valid for resource "
                                    f"'{entity.qualified_type}'. Ensure that the names and number of key "
                                    "properties match the declared or alternate key properties for the "
                                    f"resource '{entity.qualified_type}'.", inner_type=ODATA_EXCEPTION)

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
            routed = self.routed_key(resource.key) if resource.key is not None else None
            if resource.key is not None and routed is None:
                return _no_route(request)
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
            key = self.fno.key_tuple(entity, self.key(entity, str(routed)))
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
        known = entity.fields.__contains__

        def value_of(item: tuple[dict, str], name: str) -> Any:
            return item[0].get(name)

        if params.get("$filter"):
            predicate = compile_filter(params["$filter"], known)
            rows = self.fno.snapshot(entity, companies,
                                     lambda row: predicate(FilterRow((row, ""), value_of, wildcards=True)))
        else:
            rows = self.fno.snapshot(entity, companies)
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
        # [Inferred] percent-encoded once: a header cannot carry control characters, and F&O's own
        # Location is a URL. (A key with `/` in it is then not addressable through it, as in F&O.)
        location = f"{_root(request)}{entity.entity_set}({quote(key, safe=_LOCATION_SAFE)})"
        payload = {"@odata.context": self.context(request, entity, None, single=True), **self.shape(row, etag, None)}
        return _json(payload, 201, {"ETag": etag, "Location": location})


class RestrictedCharacters:
    """Step 1: http.sys refuses a URL whose decoded path holds a control character, before any routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _has_control_character(scope.get("path", "")):
            await HTMLResponse(INVALID_URL_HTML, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(fno: FnO) -> SandboxFront:
    from sandbox.fno_batch import FnoBatch

    api = FnoApi(fno)
    routes = [Route("/data/$batch", FnoBatch(api).handle, methods=["POST"]),
              Route("/data/{path:path}", api.handle, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
              Route("/data", api.handle, methods=["GET"])]
    return SandboxFront(fno, RestrictedCharacters(Starlette(routes=routes)))
