"""`POST /data/$batch` of the F&O simulator: OData 4.0 multipart/mixed batches with change sets.

What F&O documents, and what this follows:

* The OData service "supports batch requests" and points to the OData **4.0** batch spec (F&O "Open Data
  Protocol (OData)" doc); only `multipart/mixed` is taken (the JSON batch format is OData 4.01). A change set
  "should be treated as single atomic unit: either all the requests are run successfully or, if any request
  fails, none of the requests are run successfully" (same doc, "Run multiple requests in a single
  transaction"). GETs are allowed outside change sets only (OData 4.0 §11.7.2).
* "A batch can contain up to 5000 operations and will avoid the number of requests limit" (F&O "Service
  protection API limits"): the front counts a batch as one request, and the request log holds one entry.
* The whole batch is read before anything runs, so a malformed batch (or one over the quotas) is answered
  400 with nothing written. The wording of the header checks is ASP.NET Web API OData's
  (`DefaultODataBatchHandler.ValidateRequest`, a bare `{"Message": ...}`); the body errors are ODataLib's
  `ODataException` texts in F&O's error shape [Inferred: no F&O capture of a malformed batch found].
* Every request inside runs through the same handler as a single request (validation, key routing with
  the double decode, write-error status, `cross-company` read from each request's own query), so it is
  answered exactly as it would be outside a batch. `$<Content-ID>` at the start of a URL in a change set
  names the entity an earlier request of the set created (OData 4.0 §11.7.3.1).
* A failed change set rolls back every write of the set and raises no change event (`FnO.change_set`); how
  it is answered and whether later items still run are `FnoSettings.batch_failed_changeset` and
  `batch_after_error` (sources differ).
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from sandbox.fno import ODATA_EXCEPTION, FnoError, FnoSettings
from sandbox.odata_batch import (
    BatchSyntaxError, Item, Part, boundary_of, changeset_part, http_part, multipart_response, parse_batch,
)

if TYPE_CHECKING:
    from sandbox.fno_api import FnoApi

DATA_ROOT = "/data/"


def _http_error(message: str) -> Response:
    """ASP.NET Web API's HttpError, as `DefaultODataBatchHandler.ValidateRequest` answers."""
    return JSONResponse({"Message": message}, status_code=400)


# ---------------------------------------------------------------------------------------------- executing


class FnoBatch:
    """Reads, checks and runs one `$batch` against the API of single requests."""

    def __init__(self, api: FnoApi) -> None:
        self.api = api

    @property
    def settings(self) -> FnoSettings:
        """Read fresh on every batch: the settings can be changed between batches."""
        return self.api.fno.settings

    async def handle(self, request: Request) -> Response:
        content_type = request.headers.get("content-type")
        if not content_type:
            return _http_error('The batch request must have a "Content-Type" header.')
        if content_type.split(";")[0].strip().lower() != "multipart/mixed":
            return _http_error("The batch request must have 'multipart/mixed' as the media type.")
        if boundary_of(content_type) is None:
            return _http_error('The batch request must have a boundary specification in the "Content-Type" header.')
        body = await request.body()
        try:
            items = parse_batch(content_type, body)
            self.check_quotas(items)
        except BatchSyntaxError as exc:
            return FnoError(400, str(exc), inner_type=ODATA_EXCEPTION,
                            message="The batch request is not valid.").response()
        stop_on_error = (self.settings.batch_after_error == "stop"
                         and "odata.continue-on-error" not in request.headers.get("prefer", "").lower())
        answered: list[bytes] = []
        for item in items:
            part, ok = await (self.run_changeset(request, item) if item.changeset
                              else self.run_single(request, item.parts[0]))
            answered.append(part)
            if not ok and stop_on_error:
                break
        return multipart_response(answered)

    def check_quotas(self, items: list[Item]) -> None:
        operations = sum(len(item.parts) for item in items)
        if operations > self.settings.batch_max_operations:
            raise BatchSyntaxError("The current batch message contains too many parts. Only batch messages with a "
                                   f"maximum number of '{self.settings.batch_max_operations}' query operations and "
                                   "change sets are allowed.")
        for item in items:
            if item.changeset and len(item.parts) > self.settings.batch_max_changeset:
                raise BatchSyntaxError("The current change set contains too many operations. Only change sets with "
                                       f"a maximum number of '{self.settings.batch_max_changeset}' operations are "
                                       "allowed.")

    async def run_single(self, outer: Request, part: Part) -> tuple[bytes, bool]:
        response = await self.dispatch(outer, part, {})
        return http_part(response, part.content_id), response.status_code < 400

    async def run_changeset(self, outer: Request, item: Item) -> tuple[bytes, bool]:
        """All or nothing. Nothing in here may suspend (see `FnO.change_set`): the inner requests' bodies are
        already in memory, and the API's handlers only await them."""
        answers: list[tuple[Response, str | None]] = []
        locations: dict[str, str] = {}
        failed: tuple[Response, str | None] | None = None
        with self.api.fno.change_set() as changes:
            for part in item.parts:
                response = await self.dispatch(outer, part, locations)
                if response.status_code >= 400:
                    failed = (response, part.content_id)
                    changes.rollback()
                    break
                answers.append((response, part.content_id))
                location = response.headers.get("location")
                if part.content_id is not None and location:
                    locations[part.content_id] = location
        if failed is None:
            return changeset_part(answers), True
        if self.settings.batch_failed_changeset == "single":
            return http_part(*failed), False
        return changeset_part([failed]), False

    async def dispatch(self, outer: Request, part: Part, locations: dict[str, str]) -> Response:
        """Answer one inner request exactly as the same request outside a batch would be answered."""
        url = part.url
        if url.startswith("$") and locations:
            target, mark, query = url.partition("?")
            reference, _, rest = target[1:].partition("/")
            if reference in locations:
                url = locations[reference] + (f"/{rest}" if rest else "") + mark + query
        split = urlsplit(url)
        raw_path = split.path
        if not raw_path.startswith("/"):
            raw_path = DATA_ROOT + raw_path
        if not raw_path.startswith(DATA_ROOT):
            return FnoError(404, f"Resource not found for the segment '{raw_path}'.",
                            inner_type=ODATA_EXCEPTION).response()
        path = unquote(raw_path)  # the front's one decode (uvicorn's scope["path"])
        if any(unicodedata.category(char) == "Cc" for char in path):
            from sandbox.fno_api import INVALID_URL_HTML

            return Response(INVALID_URL_HTML, status_code=400, media_type="text/html")
        headers = {**{k.lower(): v for k, v in part.headers.items()}, "host": outer.headers.get("host", "")}
        scope = {
            "type": "http", "method": part.method, "http_version": "1.1", "scheme": outer.url.scheme,
            "server": outer.scope.get("server"), "client": outer.scope.get("client"), "root_path": "",
            "path": path, "raw_path": raw_path.encode("latin-1"), "query_string": split.query.encode("latin-1"),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            "path_params": {"path": path[len(DATA_ROOT):]}, "state": outer.scope.get("state", {}),
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": part.body, "more_body": False}

        return await self.api.handle(Request(scope, receive))

