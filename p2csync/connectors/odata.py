"""OData v4 literal and key syntax, shared by both connectors (the one place that writes it).

```python
odata_literal("O'Neil")                    # "'O''Neil'"
odata_literal(ODataEnum("NoYes", "Yes"))   # "Microsoft.Dynamics.DataEntities.NoYes'Yes'"
key_predicate({"dataAreaId": "usmf", "CustomerAccount": "US-001"})
                                           # "(dataAreaId='usmf',CustomerAccount='US-001')"
```
"""

from __future__ import annotations

import enum
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote
from uuid import UUID

__all__ = [
    "FNO_ENUM_NAMESPACE",
    "BatchFormatError",
    "BatchRequestPart",
    "BatchResponsePart",
    "decode_batch_response",
    "encode_batch",
    "ODataEnum",
    "encode_path_segment",
    "is_guid",
    "key_predicate",
    "odata_literal",
    "validate_entity_set",
]

FNO_ENUM_NAMESPACE = "Microsoft.Dynamics.DataEntities"

_GUID = re.compile(r"^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Characters left as they are in a key predicate inside a URL path; everything else is percent-encoded.
_PATH_SAFE = "'(),=:@!$;-._~"


class ODataEnum(str):
    """An enum value: a plain string (``"Yes"``) in JSON, ``Namespace.Type'Member'`` in a filter or key.

    ``ODataEnum("NoYes", "Yes")`` is F&O's ``Microsoft.Dynamics.DataEntities.NoYes'Yes'``.
    """

    type_name: str
    namespace: str

    def __new__(cls, type_name: str, member: str, *, namespace: str = FNO_ENUM_NAMESPACE) -> ODataEnum:
        if not _IDENTIFIER.match(type_name) or not member:
            raise ValueError(f"invalid enum {type_name!r}/{member!r}")
        value = super().__new__(cls, member)
        value.type_name = type_name
        value.namespace = namespace
        return value

    @property
    def member(self) -> str:
        return str.__str__(self)

    @property
    def literal(self) -> str:
        return f"{self.namespace}.{self.type_name}'{self.member.replace(chr(39), chr(39) * 2)}'"

    def __repr__(self) -> str:
        return f"ODataEnum({self.type_name!r}, {self.member!r})"

    def __reduce__(self) -> Any:
        return (_make_enum, (self.type_name, self.member, self.namespace))


def _make_enum(type_name: str, member: str, namespace: str) -> ODataEnum:
    return ODataEnum(type_name, member, namespace=namespace)


def is_guid(value: Any) -> bool:
    return isinstance(value, UUID) or (isinstance(value, str) and bool(_GUID.match(value)))


def _number(value: int | float | Decimal) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} has no OData literal")
        return format(value, "f")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no OData literal")
        return repr(value)
    return str(value)


def _datetime(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)  # both services store UTC; a naive value is taken as UTC
    text = value.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def odata_literal(value: Any) -> str:
    """The OData v4 literal of a Python value, for ``$filter`` expressions and key predicates.

    ``str`` -> ``'text'`` (quotes doubled); ``bool`` -> ``true``/``false``; ``int``/``float``/``Decimal`` ->
    the number; ``None`` -> ``null``; ``UUID`` -> the bare GUID; ``datetime`` -> ``2024-05-31T10:00:00Z``
    (UTC; naive taken as UTC); ``date`` -> ``2024-05-31``; ``ODataEnum`` -> ``Ns.Type'Member'``; a Python
    ``Enum`` -> the literal of its value.
    """
    if value is None:
        return "null"
    if isinstance(value, ODataEnum):
        return value.literal
    if isinstance(value, enum.Enum):
        return odata_literal(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return _number(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return _datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no OData literal for {type(value).__name__}")


def key_predicate(key: Mapping[str, Any], literal: Callable[[str, Any], str] | None = None) -> str:
    """``(name=literal,...)`` in the mapping's order; a single value is still named (alternate-key form)."""
    if not key:
        raise ValueError("a key needs at least one field")
    render = literal or (lambda _name, value: odata_literal(value))
    parts = []
    for name, value in key.items():
        if not _IDENTIFIER.match(name):
            raise ValueError(f"invalid key field name {name!r}")
        parts.append(f"{name}={render(name, value)}")
    return "(" + ",".join(parts) + ")"


def encode_path_segment(text: str) -> str:
    """Percent-encode a key predicate for the URL path (``/``, ``?``, ``#``, ``%``, spaces, non-ASCII...)."""
    return quote(text, safe=_PATH_SAFE)


def validate_entity_set(name: str) -> str:
    """Entity-set names are identifiers; anything else would let a caller write an arbitrary path."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"invalid entity set name {name!r}")
    return name



# ------------------------------------------------------------------------------------------------- $batch
#
# OData 4.0 multipart/mixed batches (OData 4.0 Part 1 §11.7): the only batch format F&O's /data/$batch takes
# (its docs point to the 4.0 batch spec; the JSON batch format is OData 4.01). A batch is a list of items;
# an item is one request (outside any change set) or a change set (a list of requests, all-or-nothing).

_CRLF = b"\r\n"


class BatchFormatError(ValueError):
    """A batch response that cannot be read as OData multipart/mixed (names what is wrong)."""


@dataclass(frozen=True)
class BatchRequestPart:
    """One request inside a batch: ``url`` is relative to the service root and carries its own query."""

    method: str
    url: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_id: str | None = None


@dataclass(frozen=True)
class BatchResponsePart:
    """One answer inside a batch response; ``content_id`` echoes the request's Content-ID when present."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    content_id: str | None = None


def _request_bytes(part: BatchRequestPart) -> bytes:
    lines = [b"Content-Type: application/http", b"Content-Transfer-Encoding: binary"]
    if part.content_id is not None:
        lines.append(f"Content-ID: {part.content_id}".encode("ascii"))
    lines.append(b"")
    lines.append(f"{part.method.upper()} {part.url} HTTP/1.1".encode("ascii"))
    headers = dict(part.headers)
    if part.body is not None:
        headers.setdefault("Content-Type", "application/json")
    lines.extend(f"{name}: {value}".encode("latin-1") for name, value in headers.items())
    lines.append(b"")
    return _CRLF.join(lines) + _CRLF + (part.body or b"")


def encode_batch(
    items: Sequence[BatchRequestPart | Sequence[BatchRequestPart]], *, boundary: str | None = None
) -> tuple[str, bytes]:
    """``(content_type, body)`` of a batch request; a nested sequence is one change set.

    Boundaries are ``batch_<uuid>`` / ``changeset_<uuid>``; lines end in CRLF (RFC 2046, which ODataLib's
    reader requires for the delimiters). A URL containing a space or line break would end the request line,
    so it is refused here rather than sent half-parsed.
    """
    batch = boundary or f"batch_{uuid.uuid4()}"
    out: list[bytes] = []
    for item in items:
        out.append(f"--{batch}".encode("ascii") + _CRLF)
        if isinstance(item, BatchRequestPart):
            _check_url(item.url)
            out.append(_request_bytes(item) + _CRLF)
            continue
        if not item:
            raise ValueError("a change set needs at least one request")
        changeset = f"changeset_{uuid.uuid4()}"
        out.append(f"Content-Type: multipart/mixed; boundary={changeset}".encode("ascii") + _CRLF + _CRLF)
        for part in item:
            _check_url(part.url)
            if part.method.upper() == "GET":
                raise ValueError("a GET cannot be inside a change set (OData 4.0 §11.7.2)")
            out.append(f"--{changeset}".encode("ascii") + _CRLF + _request_bytes(part) + _CRLF)
        out.append(f"--{changeset}--".encode("ascii") + _CRLF)
    out.append(f"--{batch}--".encode("ascii") + _CRLF)
    return f"multipart/mixed; boundary={batch}", b"".join(out)


def _check_url(url: str) -> None:
    if any(char in url for char in (" ", "\r", "\n", "\t")):
        raise ValueError(f"batch request URL {url!r} contains whitespace; encode it first")


def _boundary(content_type: str) -> str | None:
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "multipart/mixed":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip():
            return value.strip().strip('"')
    return None


def _split_head(block: bytes) -> tuple[dict[str, str], bytes]:
    """Headers (lower-cased names) and body of a MIME part or an HTTP message; CRLF or bare LF."""
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
            raise BatchFormatError(f"batch part header line {line!r} is not 'Name: value'")
        headers[name.strip().lower()] = value.strip()
    return headers, body


def _multipart(body: bytes, boundary: str) -> list[bytes]:
    """The parts between ``--boundary`` delimiters (RFC 2046), without the CRLF that precedes a delimiter."""
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 2:
        raise BatchFormatError(f"no part delimited by boundary {boundary!r}")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return parts
        chunk = chunk[2:] if chunk.startswith(_CRLF) else chunk[1:] if chunk.startswith(b"\n") else chunk
        if chunk.endswith(_CRLF):
            chunk = chunk[:-2]
        elif chunk.endswith(b"\n"):
            chunk = chunk[:-1]
        parts.append(chunk)
    raise BatchFormatError(f"multipart body has no closing delimiter --{boundary}--")


def _http_response(mime_headers: Mapping[str, str], payload: bytes) -> BatchResponsePart:
    status_line, _, rest = payload.lstrip(b"\r\n").partition(b"\n")
    words = status_line.decode("latin-1").strip().split(" ", 2)
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise BatchFormatError(f"batch part does not start with an HTTP status line: {status_line[:80]!r}")
    headers, body = _split_head(rest) if rest.strip() else ({}, b"")
    return BatchResponsePart(status=int(words[1]), headers=headers, body=body,
                             content_id=mime_headers.get("content-id") or headers.get("content-id"))


def decode_batch_response(content_type: str, body: bytes) -> list[list[BatchResponsePart]]:
    """One entry per answered batch item: ``[part]`` for a request (or a change set answered by a single
    ``application/http`` error, OData 4.0 §11.7.4), the parts of a ``multipart/mixed`` change set response
    otherwise (ASP.NET Web API OData answers a failed change set with one such part: the failing request's).
    """
    boundary = _boundary(content_type)
    if boundary is None:
        raise BatchFormatError(f"batch response Content-Type {content_type!r} is not multipart/mixed with a boundary")
    items: list[list[BatchResponsePart]] = []
    for raw in _multipart(body, boundary):
        headers, payload = _split_head(raw)
        inner = _boundary(headers.get("content-type", ""))
        if inner is not None:
            answers = []
            for sub in _multipart(payload, inner):
                sub_headers, sub_payload = _split_head(sub)
                answers.append(_http_response(sub_headers, sub_payload))
            items.append(answers)
        else:
            items.append([_http_response(headers, payload)])
    return items
