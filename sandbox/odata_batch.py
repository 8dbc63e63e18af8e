"""The OData 4.0 `multipart/mixed` batch format both simulators read and answer: the parts of a batch and of its
change sets, and the multipart answer. Dataverse and F&O both follow the OData 4.0 batch spec for this format
(OData 4.0 §11.7; Dataverse "Execute batch operations using the Web API", F&O "Open Data Protocol (OData)"); what
each service does with the requests, and its quotas and refusals, stay in `sandbox/dataverse_batch.py` and
`sandbox/fno_batch.py`. The refusals here are ODataLib's `ODataException` texts.

Kept apart from the connector's reader of batch answers (`p2csync/connectors/odata.py`) on purpose: a simulator
that shared the parser of the code under test would hide that parser's bugs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from http import HTTPStatus

from starlette.responses import Response

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


def http_part(response: Response, content_id: str | None) -> bytes:
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


def changeset_part(answers: list[tuple[Response, str | None]]) -> bytes:
    boundary = f"changesetresponse_{uuid.uuid4()}"
    out = [f"Content-Type: multipart/mixed; boundary={boundary}".encode("latin-1") + _CRLF + _CRLF]
    for response, content_id in answers:
        out.append(f"--{boundary}".encode("latin-1") + _CRLF + http_part(response, content_id) + _CRLF)
    out.append(f"--{boundary}--".encode("latin-1"))
    return b"".join(out)


def multipart_response(parts: list[bytes]) -> Response:
    boundary = f"batchresponse_{uuid.uuid4()}"
    body = b"".join(f"--{boundary}".encode("latin-1") + _CRLF + part + _CRLF for part in parts)
    body += f"--{boundary}--".encode("latin-1") + _CRLF
    return Response(body, status_code=200, headers={"OData-Version": "4.0"},
                    media_type=f"multipart/mixed; boundary={boundary}")
