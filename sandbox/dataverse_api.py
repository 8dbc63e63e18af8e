"""The Dataverse Web API v9.2 surface of the simulator (`/api/data/v9.2/...`) and its admin endpoints.

Only translation lives here: URL/headers/JSON in, calls on `Dataverse` out, Web API status codes and
bodies back. The rules themselves (keys, defaults, events) are in `sandbox/dataverse.py`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.dataverse import Dataverse, DataverseError, RowRef, does_not_exist, invalid_property
from sandbox.dataverse_expand import ExpandParser, Expansion, expand_into
from sandbox.dataverse_events import WebhookEndpoint, WebhookRegistration, WebhookStep
from sandbox.dataverse_registrations import READ_ONLY_TABLES, required_privilege
from sandbox.dataverse_tables import ColumnType, Table
from sandbox.front import SandboxFront, request_user
from sandbox.odata import (
    FilterRow, GuidLiteral, ODataSyntaxError, UnknownProperty, compile_filter, equality_hint, parse_key,
    parse_orderby, parse_resource_path, parse_select, sort_rows,
)

#: The largest page the Web API returns (and the largest odata.maxpagesize it honours).
MAX_PAGE_SIZE = 5000


API_ROOT = "/api/data/v9.2/"
ODATA_HEADERS = {"OData-Version": "4.0"}
JSON_TYPE = "application/json; odata.metadata=minimal"


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=ODATA_HEADERS)


def _prefer(request: Request) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for item in header.split(","):
            name, _, value = item.strip().partition("=")
            if name:
                prefs[name.strip().lower()] = value.strip().strip('"')
    return prefs


def _root(request: Request) -> str:
    return str(request.base_url).rstrip("/") + API_ROOT


def _wants_annotations(prefs: dict[str, str]) -> bool:
    value = prefs.get("odata.include-annotations")
    return value is not None and (value == "*" or "FormattedValue" in value or "lookuplogicalname" in value)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type=JSON_TYPE,
                    headers={**ODATA_HEADERS, **(headers or {})})


class DataverseApi:
    """Request handlers bound to one simulator."""

    def __init__(self, dv: Dataverse) -> None:
        from sandbox.dataverse_batch import DataverseBatch

        self.dv = dv
        self.batch = DataverseBatch(self)

    # -- helpers -----------------------------------------------------------------------------------
    def ident(self, table: Table, segment: str) -> RowRef:
        parsed = parse_key(segment)
        if isinstance(parsed, GuidLiteral):
            return parsed.value
        if not isinstance(parsed, dict):
            raise DataverseError(400, "0x80060888", f"Invalid key segment '({segment})' for {table.entity_set}.")
        for value in parsed.values():
            if isinstance(value, str) and set(value) & set("/<>*%&:\\?+"):
                raise DataverseError(400, "0x80060888",
                                     "Alternate key values containing any of / < > * % & : \\ ? + are not "
                                     "supported.")
        self.dv.key_columns(table, list(parsed))
        return parsed

    def body_values(self, table: Table, body: Any) -> dict[str, Any]:
        """Web API JSON -> stored values; binds are resolved to existing rows."""
        if not isinstance(body, dict):
            raise DataverseError(400, "0x80048d19", "The request body must be a JSON object.")
        navs = table.navigation_properties()
        values: dict[str, Any] = {}
        for key, value in body.items():
            if key.startswith("@"):
                continue
            if "@" in key:
                prop, _, annotation = key.partition("@")
                if annotation != "odata.bind":
                    continue
                if prop not in navs:
                    raise DataverseError(
                        400, "0x80048d19",
                        f"An undeclared property '{prop}' which only has property annotations in the payload "
                        "but no property value was found in the payload. In OData, only declared navigation "
                        "properties and declared named streams can be represented as properties without values.")
                column, target = navs[prop]
                values[column.name] = None if value is None else self.bind(table, prop, target, value)
                continue
            if key in navs:
                if value is not None:
                    raise DataverseError(400, "0x80048d19",
                                         f"Deep insert through '{key}' is not supported by the sandbox.")
                values[navs[key][0].name] = None
                continue
            column = table.column(key)
            if column is None or column.type is ColumnType.LOOKUP:
                raise invalid_property(table, key)
            values[key] = self.dv.coerce(table, key, value, strict=True)
        return values

    def bind(self, table: Table, nav: str, target: str, value: Any) -> Any:
        if not isinstance(value, str):
            raise DataverseError(400, "0x80048d19", f"The value of '{nav}@odata.bind' must be a URL string.")
        path = value.split(API_ROOT, 1)[1] if API_ROOT in value else value.lstrip("/")
        try:
            resource = parse_resource_path(path)
        except ODataSyntaxError as exc:
            raise DataverseError(400, "0x80048d19", f"Invalid bind reference '{value}'.") from exc
        target_table = self.dv.table_for_set(resource.entity_set)
        if target_table is None or resource.key is None or resource.rest:
            raise DataverseError(400, "0x80048d19", f"Invalid bind reference '{value}' for '{nav}'.")
        if target_table.logical_name != target:
            raise DataverseError(400, "0x80048d19",
                                 f"'{target_table.logical_name}' is not a valid target for navigation property "
                                 f"'{nav}' of '{table.logical_name}'.")
        return self.dv.resolve_reference(target_table, self.ident(target_table, resource.key))

    def validated_select(self, table: Table, request: Request) -> list[str] | None:
        select = parse_select(request.query_params.get("$select"))
        if select:
            known = self.dv.select_names(table)
            for name in select:
                if name not in known:
                    raise UnknownProperty(name)
        return select

    def expansions(self, table: Table, request: Request) -> list[Expansion]:
        """The request's `$expand` (single-valued navigation properties), validated (sandbox/dataverse_expand.py)."""
        parser = ExpandParser(self.dv.tables, self.dv.select_names, DataverseError)
        return parser.parse(table, request.query_params.get("$expand"))

    def with_expansions(self, table: Table, row: dict[str, Any], select: list[str] | None,
                        expansions: list[Expansion], annotations: bool) -> dict[str, Any]:
        """A row's JSON with its expanded lookups."""
        def web_row(target: Table, related: Any, columns: list[str] | None) -> dict[str, Any]:
            return self.dv.web_row(target, related, columns, annotations=annotations)

        return expand_into(web_row(table, row, select), row, expansions, self.dv.related_row, web_row)

    def bypass_async(self, request: Request) -> bool:
        header = request.headers.get("MSCRM.BypassBusinessLogicExecution", "")
        if "customasync" not in header.lower().replace(" ", ""):
            return False
        user = self.dv.user_by_id(request_user(request))
        if not user.can_bypass_business_logic:
            raise DataverseError(403, "0x80040220",
                                 f"Principal user (Id={user.id}, type=8) is missing prvBypassCustomBusinessLogic "
                                 "privilege.")
        return True

    def check_access(self, request: Request, table: Table) -> None:
        """Registration tables need the System Customizer privileges; messages and filters are read-only."""
        method = request.method
        if table.logical_name in READ_ONLY_TABLES and method != "GET":
            raise DataverseError(405, "0x80060888", f"The requested resource does not support {method}.")
        privilege = required_privilege(table.logical_name, method)
        user = self.dv.user_by_id(request_user(request))
        if privilege and not user.can_register_steps:
            raise DataverseError(403, "0x80040220",
                                 f"Principal user (Id={user.id}, type=8) is missing {privilege} privilege for "
                                 f"entity '{table.logical_name}'.")

    def representation(self, request: Request, table: Table, row: dict[str, Any], status: int) -> Response:
        prefs = _prefer(request)
        select = self.validated_select(table, request)
        body = {"@odata.context": self.context_url(request, table, select, entity=True),
                **self.dv.web_row(table, row, select, annotations=_wants_annotations(prefs))}
        return _json(body, status, {"ETag": self.dv.etag(row), "Preference-Applied": "return=representation"})

    def context_url(self, request: Request, table: Table, select: list[str] | None, *, entity: bool,
                    expansions: list[Expansion] | None = None) -> str:
        columns = [*(select or []), *(e.context() for e in expansions or [])]
        selected = f"({','.join(columns)})" if columns else ""
        return f"{_root(request)}$metadata#{table.entity_set}{selected}{'/$entity' if entity else ''}"

    # -- dispatcher ----------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path = request.path_params.get("path", "")
        table: Table | None = None
        if path == "$batch":
            if request.method != "POST":
                return _error(405, "0x80060888", f"The requested resource does not support {request.method}.")
            if request.scope.get("p2c_batch_part"):
                return _error(400, "0x0", "Batch requests can't contain other batch requests.")
            return await self.batch.handle(request)
        try:
            if path.rstrip("()") == "WhoAmI" and request.method == "GET":
                user = self.dv.user_by_id(request_user(request))
                return _json({"@odata.context": f"{_root(request)}$metadata#Microsoft.Dynamics.CRM."
                                                f"WhoAmIResponse", "BusinessUnitId": user.business_unit_id,
                              "UserId": user.id, "OrganizationId": self.dv.organization.id})
            if path in ("", "/"):
                return _json({"@odata.context": f"{_root(request)}$metadata",
                              "value": [{"name": t.entity_set, "kind": "EntitySet", "url": t.entity_set}
                                        for t in self.dv.tables.values()]})
            resource = parse_resource_path(path)
            table = self.dv.table(resource.entity_set)
            if resource.rest:
                raise DataverseError(404, "0x80060888", f"Resource not found for the segment '{resource.rest}'.")
            self.check_access(request, table)
            method = request.method
            if resource.key is None:
                if method == "GET":
                    return self.get_collection(request, table)
                if method == "POST":
                    return await self.post(request, table)
                raise DataverseError(405, "0x80060888", f"The requested resource does not support {method}.")
            ident = self.ident(table, resource.key)
            if method == "GET":
                return self.get_one(request, table, ident)
            if method == "PATCH":
                return await self.patch(request, table, ident, resource.key)
            if method == "DELETE":
                return self.delete(request, table, ident)
            raise DataverseError(405, "0x80060888", f"The requested resource does not support {method}.")
        except DataverseError as exc:
            return exc.response()
        except UnknownProperty as exc:
            entity = table.logical_name if table else "entity"
            return _error(400, "0x80060888",
                          f"Could not find a property named '{exc.name}' on type 'Microsoft.Dynamics.CRM.{entity}'.")
        except ODataSyntaxError as exc:
            return _error(400, "0x80060888", str(exc))

    # -- reads --------------------------------------------------------------------------------------
    def get_collection(self, request: Request, table: Table) -> Response:
        params = request.query_params
        prefs = _prefer(request)
        select = self.validated_select(table, request)
        expansions = self.expansions(table, request)
        known = self.dv.select_names(table)
        if params.get("$filter"):
            predicate = compile_filter(params["$filter"], known.__contains__)
            rows = self.dv.query(table, lambda row: predicate(FilterRow(row, self.dv.filter_value)),
                                 equality_hint(params["$filter"]))
        else:
            rows = self.dv.snapshot(table)
        if params.get("$orderby"):
            rows = sort_rows(rows, parse_orderby(params["$orderby"], known.__contains__), self.dv.filter_value)
        if params.get("$top"):
            try:
                rows = rows[: int(params["$top"])]
            except ValueError as exc:
                raise DataverseError(400, "0x80060888", f"Invalid $top '{params['$top']}'.") from exc
        total = len(rows)
        page_size = self.dv.default_page_size
        headers: dict[str, str] = {}
        if "odata.maxpagesize" in prefs:
            try:
                requested = max(1, int(prefs["odata.maxpagesize"]))
            except ValueError:
                requested = None
            # "Max page size requests larger than 5,000 are ignored" (Web API, Page results): the default
            # page size applies and no preference is reported as applied.
            if requested is not None and requested <= MAX_PAGE_SIZE:
                page_size = requested
                headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
        offset = 0
        if params.get("$skiptoken"):
            try:
                offset = int(json.loads(base64.urlsafe_b64decode(params["$skiptoken"].encode()))["offset"])
            except (ValueError, KeyError, TypeError) as exc:
                raise DataverseError(400, "0x80060888", "Invalid $skiptoken.") from exc
        page = rows[offset: offset + page_size]
        annotations = _wants_annotations(prefs)
        body: dict[str, Any] = {"@odata.context": self.context_url(request, table, select, entity=False,
                                                                   expansions=expansions)}
        if params.get("$count", "").lower() == "true":
            body["@odata.count"] = min(total, MAX_PAGE_SIZE)
        body["value"] = [self.with_expansions(table, row, select, expansions, annotations) for row in page]
        if offset + page_size < total:
            token = base64.urlsafe_b64encode(json.dumps({"offset": offset + page_size}).encode()).decode()
            body["@odata.nextLink"] = str(request.url.include_query_params(**{"$skiptoken": token}))
        return _json(body, headers=headers)

    def get_one(self, request: Request, table: Table, ident: RowRef) -> Response:
        select = self.validated_select(table, request)
        expansions = self.expansions(table, request)
        with self.dv.lock:
            record_id = self.dv.find(table, ident)
            if record_id is None:
                raise does_not_exist(table, ident)
            row = dict(self.dv.snapshot_row(table, record_id))
        etag = self.dv.etag(row)
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag, **ODATA_HEADERS})
        body = {"@odata.context": self.context_url(request, table, select, entity=True, expansions=expansions),
                **self.with_expansions(table, row, select, expansions, _wants_annotations(_prefer(request)))}
        return _json(body, headers={"ETag": etag})

    # -- writes -------------------------------------------------------------------------------------
    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DataverseError(400, "0x80048d19", f"The request body is not valid JSON: {exc}") from exc

    async def post(self, request: Request, table: Table) -> Response:
        body = await self._body(request)
        user = self.dv.user_by_id(request_user(request))
        bypass = self.bypass_async(request)
        tag = request.query_params.get("tag")
        with self.dv.lock:
            values = self.body_values(table, body)
            result = self.dv.create_row(table, values, user, tag=tag, bypass_async=bypass)
        entity_id = f"{_root(request)}{table.entity_set}({result.record_id})"
        if _prefer(request).get("return") == "representation":
            response = self.representation(request, table, result.row, 201)
            response.headers["OData-EntityId"] = entity_id
            response.headers["Location"] = entity_id
            return response
        return Response(status_code=204, headers={**ODATA_HEADERS, "OData-EntityId": entity_id})

    async def patch(self, request: Request, table: Table, ident: RowRef, segment: str) -> Response:
        body = await self._body(request)
        user = self.dv.user_by_id(request_user(request))
        bypass = self.bypass_async(request)
        tag = request.query_params.get("tag")
        if_match = request.headers.get("if-match")
        if_none_match = request.headers.get("if-none-match")
        keys = dict(ident) if not isinstance(ident, str) else {}
        with self.dv.lock:
            values = self.body_values(table, body)
            record_id = self.dv.find(table, ident)
            if if_match is not None:
                if record_id is None:
                    raise does_not_exist(table, ident)
                if if_match.strip() != "*" and if_match.strip() != self.dv.etag(self.dv.snapshot_row(table, record_id)):
                    raise DataverseError(412, "0x80060882", "The version of the existing record doesn't match "
                                                            "the RowVersion property provided.")
            if if_none_match is not None and if_none_match.strip() == "*" and record_id is not None:
                raise DataverseError(412, "0x80040237", "A record with matching key values already exists.")
            if record_id is not None:
                # Key columns in the URL win: the body cannot move the row to another key.
                for column in self.dv.key_columns(table, list(keys)) if keys else []:
                    values.pop(column, None)
                if isinstance(ident, str):
                    values.pop(table.primary_id, None)
                result = self.dv.update_row(table, record_id, values, user, tag=tag, key_attributes=keys,
                                            bypass_async=bypass)
            else:
                if isinstance(ident, str):
                    values[table.primary_id] = ident
                else:
                    columns = self.dv.key_columns(table, list(keys))
                    for column, value in zip(columns, keys.values()):
                        values[column] = self.dv.coerce(table, column, value)
                result = self.dv.create_row(table, values, user, tag=tag, key_attributes=keys,
                                            bypass_async=bypass)
        entity_id = f"{_root(request)}{table.entity_set}({segment})"
        if _prefer(request).get("return") == "representation":
            response = self.representation(request, table, result.row, 201 if result.created else 200)
            response.headers["OData-EntityId"] = entity_id
            return response
        return Response(status_code=204, headers={**ODATA_HEADERS, "OData-EntityId": entity_id})

    def delete(self, request: Request, table: Table, ident: RowRef) -> Response:
        user = self.dv.user_by_id(request_user(request))
        bypass = self.bypass_async(request)
        keys = dict(ident) if not isinstance(ident, str) else {}
        if_match = request.headers.get("if-match")
        with self.dv.lock:
            record_id = self.dv.find(table, ident)
            if record_id is None:
                raise does_not_exist(table, ident)
            if if_match and if_match.strip() not in ("*", self.dv.etag(self.dv.snapshot_row(table, record_id))):
                raise DataverseError(412, "0x80060882", "The version of the existing record doesn't match the "
                                                        "RowVersion property provided.")
            self.dv.delete_row(table, record_id, user, tag=request.query_params.get("tag"), key_attributes=keys,
                               bypass_async=bypass)
        return Response(status_code=204, headers=ODATA_HEADERS)


def build_app(dv: Dataverse) -> SandboxFront:
    from sandbox.dataverse_metadata import metadata_routes

    api = DataverseApi(dv)
    routes = [*metadata_routes(dv),
              Route("/api/data/v9.2/{path:path}", api.handle, methods=["GET", "POST", "PATCH", "DELETE", "PUT"]),
              Route("/api/data/v9.2", api.handle, methods=["GET"])]
    return SandboxFront(dv, Starlette(routes=routes))


def admin_routes(dv: Dataverse) -> list[BaseRoute]:
    """Dataverse-only admin endpoints: webhooks (a shortcut to the registration rows), delivery knobs,
    system jobs."""

    async def webhooks(request: Request) -> Response:
        if request.method == "POST":
            try:
                payload = await request.json()
                if "endpoint" in payload:
                    registration = WebhookRegistration.model_validate(payload)
                else:
                    registration = WebhookRegistration(
                        endpoint=WebhookEndpoint(url=payload["url"], auth_value=payload.get("key"),
                                                 name=payload.get("name", "p2c-sync webhook")),
                        steps=[WebhookStep.model_validate(s) for s in payload.get("steps", [])])
            except (ValidationError, ValueError, KeyError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            try:
                registration = dv.add_webhook(registration)
            except DataverseError as exc:
                return exc.response()
            return JSONResponse(registration.model_dump(), status_code=201)
        return JSONResponse([r.model_dump() for r in dv.webhooks.registrations])

    async def webhook(request: Request) -> Response:
        found = dv.unregister_webhook(request.path_params["endpoint_id"])
        return Response(status_code=204 if found else 404)

    async def systemjobs(request: Request) -> Response:
        status = request.query_params.get("statuscode")
        jobs = dv.system_jobs(statuscode=int(status) if status else None,
                              step_id=request.query_params.get("step_id"))
        return JSONResponse([json.loads(job.model_dump_json()) for job in jobs])

    async def delivery(request: Request) -> Response:
        if request.method == "POST":
            payload = await request.json()
            if "duplicates" in payload:
                dv.webhooks.duplicates = max(1, int(payload["duplicates"]))
            action = payload.get("action")
            if action == "pause":
                dv.webhooks.pause()
            elif action == "resume":
                dv.webhooks.resume(order=payload.get("order", "commit"))
        return JSONResponse({"pending": dv.webhooks.pending, "duplicates": dv.webhooks.duplicates})

    async def idle(request: Request) -> Response:
        import asyncio

        timeout = float(request.query_params.get("timeout", "10"))
        return JSONResponse({"idle": await asyncio.to_thread(dv.webhooks.wait_idle, timeout)})

    return [
        Route("/_sandbox/webhooks", webhooks, methods=["GET", "POST"]),
        Route("/_sandbox/webhooks/{endpoint_id}", webhook, methods=["DELETE"]),
        Route("/_sandbox/systemjobs", systemjobs, methods=["GET"]),
        Route("/_sandbox/delivery", delivery, methods=["GET", "POST"]),
        Route("/_sandbox/delivery/idle", idle, methods=["GET"]),
    ]
