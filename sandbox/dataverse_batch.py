"""`POST /api/data/v9.2/$batch` of the Dataverse simulator: OData 4.0 multipart/mixed batches with change sets.

What Dataverse documents (Web API, "Execute batch operations using the Web API"), and what this follows:

* "Batch requests can contain up to 1000 individual requests and can't contain other batch requests." Over
  it the batch is refused whole with 400 and nothing runs, in Dataverse's error shape, with ODataLib's
  quota texts ("The current change set contains too many operations. A maximum number of '1000' operations
  are allowed in a change set." was captured from Dataverse at 1001; the batch-level text is ODataLib's
  MaxBatchSizeExceeded). The `code` of these refusals is [Inferred] ("0x0": none was captured).
* Change sets are atomic: "if any one of the operations fails, any completed operations will be rolled
  back". `GET` requests are not allowed within change sets; nested change sets are not supported (ODataLib's
  texts, 400, nothing runs).
* "When an error occurs for a request within a batch, the error for that request will be returned for the
  batch request and more requests won't be processed": the batch is answered with the failing request's
  status and a body holding that answer only (the documented example: `HTTP/1.1 400 BadRequest`).
  [Inferred] the same for a failed change set, whose answer shape is `Dataverse.batch_failed_changeset`.
* `Prefer: odata.continue-on-error`: 200 OK and every item answered, failures included.
* `Content-ID: n` names the URI of the entity the n-th request created; `$n` may start a later URL or be the
  value of an `@odata.bind` in the same change set. An undeclared one: "HTTP 400 Bad Request, Content-ID
  Reference: '$1' does not exist in the batch context."
* Every request inside runs through the same handler as a single request (keys, upserts by alternate key,
  binds, rules, `?tag=`, `If-Match`), so it is answered exactly as it would be outside a batch. Webhooks of a
  change set's writes fire after it commits, none when it is rolled back; a batch is one request to the
  service protection limits.

The multipart reader and writer are shared with the F&O simulator (`sandbox/odata_batch.py`): both services
read batches with ODataLib.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from sandbox.dataverse import DataverseError
from sandbox.odata_batch import (
    BatchSyntaxError, Item, Part, boundary_of, changeset_part, http_part, multipart_response, parse_batch,
)

if TYPE_CHECKING:
    from sandbox.dataverse_api import DataverseApi

API_ROOT = "/api/data/v9.2/"
#: Requests per batch (Dataverse docs) and per change set (the captured refusal at 1001).
MAX_BATCH_REQUESTS = 1000
_REFERENCE = re.compile(r"^\$([A-Za-z0-9_.-]+)(.*)$")


def _refused(message: str) -> Response:
    return DataverseError(400, "0x0", message).response()


class DataverseBatch:
    """Reads, checks and runs one `$batch` against the API of single requests."""

    def __init__(self, api: DataverseApi) -> None:
        self.api = api

    async def handle(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "multipart/mixed" or boundary_of(content_type) is None:
            return _refused("The batch request must have 'multipart/mixed' as the media type and a boundary in "
                            "its 'Content-Type' header.")
        body = await request.body()
        try:
            items = parse_batch(content_type, body)
            self.check_quotas(items)
        except BatchSyntaxError as exc:
            return _refused(str(exc))
        continue_on_error = "odata.continue-on-error" in request.headers.get("prefer", "").lower()
        answered: list[bytes] = []
        for item in items:
            part, failed = await (self.run_changeset(request, item) if item.changeset
                                  else self.run_single(request, item.parts[0]))
            if failed is not None and not continue_on_error:
                response = multipart_response([part])
                response.status_code = failed  # the batch answers with the failing request's status
                return response
            answered.append(part)
        response = multipart_response(answered)
        if continue_on_error:
            response.headers["Preference-Applied"] = "odata.continue-on-error"
        return response

    @staticmethod
    def check_quotas(items: list[Item]) -> None:
        """The change set quota first (as ODataLib reads a change set), then the batch's: up to 1000 requests
        in all, whether in change sets or not (the documented limit)."""
        for item in items:
            if item.changeset and len(item.parts) > MAX_BATCH_REQUESTS:
                raise BatchSyntaxError("The current change set contains too many operations. A maximum number of "
                                       f"'{MAX_BATCH_REQUESTS}' operations are allowed in a change set.")
        if sum(len(item.parts) for item in items) > MAX_BATCH_REQUESTS:
            raise BatchSyntaxError("The current batch message contains too many parts. A maximum number of "
                                   f"'{MAX_BATCH_REQUESTS}' query operations and change sets are allowed in a "
                                   "batch message.")

    async def run_single(self, outer: Request, part: Part) -> tuple[bytes, int | None]:
        response = await self.dispatch(outer, part, {})
        failed = response.status_code if response.status_code >= 400 else None
        return http_part(response, part.content_id), failed

    async def run_changeset(self, outer: Request, item: Item) -> tuple[bytes, int | None]:
        """All or nothing. Nothing in here may suspend (see `Dataverse.change_set`): the inner requests' bodies
        are already in memory, and the API's handlers only await them."""
        answers: list[tuple[Response, str | None]] = []
        locations: dict[str, str] = {}
        failed: tuple[Response, str | None] | None = None
        with self.api.dv.change_set() as changes:
            for part in item.parts:
                response = await self.dispatch(outer, part, locations)
                if response.status_code >= 400:
                    failed = (response, part.content_id)
                    changes.rollback()
                    break
                answers.append((response, part.content_id))
                location = response.headers.get("location") or response.headers.get("odata-entityid")
                if part.content_id is not None and location:
                    locations[part.content_id] = location
        if failed is None:
            return changeset_part(answers), None
        if self.api.dv.batch_failed_changeset == "single":
            return http_part(*failed), failed[0].status_code
        return changeset_part([failed]), failed[0].status_code

    async def dispatch(self, outer: Request, part: Part, locations: dict[str, str]) -> Response:
        """Answer one inner request exactly as the same request outside a batch would be answered."""
        try:
            url = self._resolve(part.url, locations)
            body = self._resolve_binds(part.body, locations)
        except DataverseError as exc:
            return exc.response()
        split = urlsplit(url)
        raw_path = split.path
        if API_ROOT in raw_path:
            raw_path = raw_path[raw_path.index(API_ROOT):]
        else:
            raw_path = API_ROOT + raw_path.lstrip("/")
        path = unquote(raw_path)  # the front's one decode (uvicorn's scope["path"])
        headers = {**{k.lower(): v for k, v in part.headers.items()}, "host": outer.headers.get("host", "")}
        headers["content-length"] = str(len(body))
        scope = {
            "type": "http", "method": part.method, "http_version": "1.1", "scheme": outer.url.scheme,
            "server": outer.scope.get("server"), "client": outer.scope.get("client"), "root_path": "",
            "path": path, "raw_path": raw_path.encode("latin-1"), "query_string": split.query.encode("latin-1"),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            "path_params": {"path": path[len(API_ROOT):]}, "state": outer.scope.get("state", {}),
            "p2c_batch_part": True,
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.api.handle(Request(scope, receive))

    @staticmethod
    def _reference(text: str, locations: dict[str, str]) -> str | None:
        """`$1/rest` -> the entity URI the request with Content-ID 1 created, plus `rest`; None when `text`
        is no reference. An undeclared reference is the documented 400."""
        match = _REFERENCE.match(text)
        if match is None or match.group(1) in ("batch", "metadata"):
            return None
        name, rest = match.groups()
        if name not in locations:
            raise DataverseError(400, "0x0", f"Content-ID Reference: '${name}' does not exist in the batch context.")
        return locations[name] + rest

    def _resolve(self, url: str, locations: dict[str, str]) -> str:
        """`$1` (or `/api/data/v9.2/$1`) at the start of a URL names the row request 1 created."""
        tail = url.split(API_ROOT, 1)[1] if API_ROOT in url else url
        resolved = self._reference(tail, locations) if tail.startswith("$") else None
        return resolved if resolved is not None else url

    def _resolve_binds(self, body: bytes, locations: dict[str, str]) -> bytes:
        """`"nav@odata.bind": "$1"` -> the URI of the entity request 1 created."""
        if b'"$' not in body:
            return body
        try:
            payload: Any = json.loads(body)
        except ValueError:
            return body  # the handler answers the malformed JSON
        if not isinstance(payload, dict):
            return body
        for name, value in payload.items():
            if name.endswith("@odata.bind") and isinstance(value, str) and value.startswith("$"):
                resolved = self._reference(value, locations)
                if resolved is not None:
                    payload[name] = resolved
        return json.dumps(payload).encode("utf-8")
