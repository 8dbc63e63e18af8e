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
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from sandbox.fno import ODATA_EXCEPTION, FnoError, FnoSettings

if TYPE_CHECKING:
    from sandbox.fno_api import FnoApi

DATA_ROOT = "/data/"
_CHANGE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_CRLF = b"\r\n"


class BatchSyntaxError(Exception):
    """The batch body is not a well-formed OData 4.0 multipart batch (ODataLib would throw)."""


@dataclass
class Part:
    """One request of the batch, as written in its `application/http` part."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None


@dataclass
class Item:
    """A request outside any change set, or a change set (`parts` with `changeset=True`)."""

    parts: list[Part] = field(default_factory=list)
    changeset: bool = False


# ------------------------------------------------------------------------------------------------ parsing


def boundary_of(content_type: str) -> str | None:
    _, _, params = content_type.partition(";")
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip():
            return value.strip().strip('"')
    return None


def _split_head(block: bytes) -> tuple[dict[str, str], bytes]:
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, body = block.partition(separator)
        if found:
            break
    else:
        head, body = block, b""
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines():
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise BatchSyntaxError(f"The message header '{line}' is invalid. The header value must be of the "
                                   "format '<header name>: <header value>'.")
        headers[name.strip().lower()] = value.strip()
    return headers, body


def _multipart(body: bytes, boundary: str) -> list[bytes]:
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 2:
        raise BatchSyntaxError(f"The batch payload has no part delimited by the boundary '{boundary}'.")
    parts: list[bytes] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return parts
        if chunk.startswith(_CRLF):
            chunk = chunk[2:]
        elif chunk.startswith(b"\n"):
            chunk = chunk[1:]
        else:
            raise BatchSyntaxError(f"The boundary delimiter '--{boundary}' is not followed by a line break.")
        if chunk.endswith(_CRLF):
            chunk = chunk[:-2]
        elif chunk.endswith(b"\n"):
            chunk = chunk[:-1]
        parts.append(chunk)
    raise BatchSyntaxError("Encountered an unexpected end of input while reading the batch payload "
                           f"(no closing delimiter '--{boundary}--').")


def _request(mime: dict[str, str], payload: bytes) -> Part:
    kind = mime.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/http":
        raise BatchSyntaxError(f"The content type '{mime.get('content-type', '')}' specified in the batch part is "
                               "not supported; a batch operation must have the content type 'application/http'.")
    line, _, rest = payload.lstrip(b"\r\n").partition(b"\n")
    words = line.decode("latin-1").strip().split(" ")
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise BatchSyntaxError(f"The HTTP request line '{line.decode('latin-1').strip()}' of a batch operation is "
                               "invalid; expected '<method> <URL> HTTP/1.1'.")
    headers, body = _split_head(rest) if rest.strip() else ({}, b"")
    return Part(method=words[0].upper(), url=words[1], headers=headers, body=body,
                content_id=mime.get("content-id") or headers.get("content-id"))


def parse_batch(content_type: str, body: bytes) -> list[Item]:
    """The items of a batch request body; raises `BatchSyntaxError` with ODataLib's complaint."""
    boundary = boundary_of(content_type)
    assert boundary is not None  # checked by the caller (Web API's header validation)
    items: list[Item] = []
    for raw in _multipart(body, boundary):
        mime, payload = _split_head(raw)
        inner = boundary_of(mime.get("content-type", "")) if mime.get(
            "content-type", "").lower().startswith("multipart/mixed") else None
        if inner is None:
            part = _request(mime, payload)
            items.append(Item([part]))
            continue
        item = Item(changeset=True)
        for sub in _multipart(payload, inner):
            sub_mime, sub_payload = _split_head(sub)
            if sub_mime.get("content-type", "").lower().startswith("multipart/mixed"):
                raise BatchSyntaxError("Nested change sets in a batch payload are not supported.")
            part = _request(sub_mime, sub_payload)
            if part.method not in _CHANGE_METHODS:
                raise BatchSyntaxError(
                    f"An invalid HTTP method '{part.method}' was detected for a request in a change set. Requests "
                    "in change sets only support the HTTP methods 'POST', 'PUT', 'DELETE', and 'PATCH'.")
            item.parts.append(part)
        ids = [part.content_id for part in item.parts if part.content_id is not None]
        duplicate = next((cid for cid in ids if ids.count(cid) > 1), None)
        if duplicate is not None:
            raise BatchSyntaxError(f"The content ID '{duplicate}' was found more than once in the same change set "
                                   "or same batch request. Content IDs have to be unique across all operations of a "
                                   "change set for OData V4.0.")
        items.append(item)
    return items


# ---------------------------------------------------------------------------------------------- answering


def _http_part(response: Response, content_id: str | None) -> bytes:
    status = response.status_code
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    lines = [b"Content-Type: application/http", b"Content-Transfer-Encoding: binary"]
    if content_id is not None:
        lines.append(f"Content-ID: {content_id}".encode("latin-1"))
    lines += [b"", f"HTTP/1.1 {status} {phrase}".encode("latin-1")]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in response.headers.items()
              if name.lower() != "content-length"]
    return _CRLF.join(lines) + _CRLF + _CRLF + bytes(response.body or b"")


def _changeset_part(answers: list[tuple[Response, str | None]]) -> bytes:
    boundary = f"changesetresponse_{uuid.uuid4()}"
    out = [f"Content-Type: multipart/mixed; boundary={boundary}".encode("latin-1") + _CRLF + _CRLF]
    for response, content_id in answers:
        out.append(f"--{boundary}".encode("latin-1") + _CRLF + _http_part(response, content_id) + _CRLF)
    out.append(f"--{boundary}--".encode("latin-1"))
    return b"".join(out)


def _multipart_response(parts: list[bytes]) -> Response:
    boundary = f"batchresponse_{uuid.uuid4()}"
    body = b"".join(f"--{boundary}".encode("latin-1") + _CRLF + part + _CRLF for part in parts)
    body += f"--{boundary}--".encode("latin-1") + _CRLF
    return Response(body, status_code=200, headers={"OData-Version": "4.0"},
                    media_type=f"multipart/mixed; boundary={boundary}")


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
        return _multipart_response(answered)

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
        return _http_part(response, part.content_id), response.status_code < 400

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
            return _changeset_part(answers), True
        if self.settings.batch_failed_changeset == "single":
            return _http_part(*failed), False
        return _changeset_part([failed]), False

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

