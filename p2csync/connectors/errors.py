"""The typed errors both connectors raise, and the one place that reads an error response.

Two questions matter to a caller, and the class answers both:

* *Will trying again later help?* ``TransientError`` (and ``ThrottledError``) -> defer the message;
  ``PermanentError`` and its subclasses -> dead-letter it with ``str(error)`` as the description.
* *What happened?* ``status``, ``code``, ``message`` and, for F&O, the ``infolog`` (the validation text a
  person needs to read). The server stack trace is never kept.

Nothing secret goes into an error: no headers are stored, URLs are redacted (``redact_url``) and bearer
tokens are scrubbed from every text field.

```python
try:
    await client.upsert("accounts", {"accountnumber": "US-001"}, body)
except TransientError as exc:  # ThrottledError included
    return Deferred(delay=exc.retry_after or 60, reason=str(exc))
except PermanentError as exc:
    return Rejected(reason=exc.code or "PermanentError", description=str(exc))
```
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "ConnectorError",
    "InvalidKeyError",
    "NotFoundError",
    "PermanentError",
    "PreconditionFailedError",
    "RouteNotFoundError",
    "ThrottledError",
    "TransientError",
    "error_from_response",
    "parse_error_body",
    "parse_retry_after",
    "redact_url",
    "scrub",
]

#: Query parameters whose values never leave this module (SAS signatures, codes, keys, tokens).
_SECRET_PARAMS = frozenset(
    {"sig", "signature", "code", "token", "access_token", "id_token", "client_secret", "secret", "password",
     "key", "apikey", "api-key", "api_key", "x-api-key", "subscription-key"}
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]{12,}=*")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_MAX_TEXT = 2000


def scrub(text: str | None, *, limit: int = _MAX_TEXT) -> str | None:
    """Remove anything that looks like a bearer token or a JWT, and cap the length."""
    if text is None:
        return None
    text = _BEARER.sub(r"\1 ***", text)
    text = _JWT.sub("***", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def redact_url(url: str | httpx.URL | None) -> str | None:
    """The URL without credentials: no userinfo, secret-looking query values replaced by ``***``."""
    if url is None:
        return None
    parts = urlsplit(str(url))
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="$,'()=*:/@"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class ConnectorError(Exception):
    """A call to Dataverse or F&O failed.

    ``system`` is ``"dataverse"`` or ``"fno"``; ``status`` the HTTP status (``None`` when no response came
    back); ``code`` the service's error code (may be empty: Dataverse codes are often unrelated to the
    status); ``message`` the service's message; ``infolog`` the F&O ``innererror.message``.
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        system: str,
        status: int | None,
        code: str | None,
        message: str,
        method: str | None = None,
        url: str | httpx.URL | None = None,
        *,
        infolog: str | None = None,
        error_type: str | None = None,
    ) -> None:
        self.system = system
        self.status = status
        self.code = code or None
        self.message = scrub(message) or ""
        self.method = method
        self.url = redact_url(url)
        self.infolog = scrub(infolog)
        self.error_type = error_type
        super().__init__(self.message)

    @property
    def detail(self) -> str:
        """The text a person should read: the F&O infolog when there is one, else the message."""
        return self.infolog or self.message

    def __str__(self) -> str:
        where = " ".join(part for part in (self.method, self.url) if part)
        code = f" [{self.code}]" if self.code else ""
        if self.status is not None:
            outcome = f"HTTP {self.status}{code}"
        else:
            outcome = f"no response{code}" if where else code.strip()
        head = " -> ".join(part for part in (where, outcome) if part)
        return f"{self.system}: {head}: {self.detail}" if head else f"{self.system}: {self.detail}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(system={self.system!r}, status={self.status!r}, code={self.code!r}, "
            f"message={self.detail!r})"
        )

    def __reduce__(self) -> Any:  # keep pickling (multiprocessing, test runners) working
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[ConnectorError], state: dict[str, Any]) -> ConnectorError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class TransientError(ConnectorError):
    """Worth trying again later: throttling, 5xx, timeouts, connection failures."""

    retryable = True


class ThrottledError(TransientError):
    """429 (or 503 with ``Retry-After``): service protection limits. ``retry_after`` is in seconds."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """Trying the same request again will fail the same way: validation, privileges, bad request."""


class AuthenticationError(PermanentError):
    """401 or no token could be obtained: a configuration problem (app user, role, scope, identity)."""


class NotFoundError(PermanentError):
    """The addressed record does not exist (404, or F&O "No resources were found when selecting for update")."""


class RouteNotFoundError(PermanentError):
    """404 "No HTTP resource was found that matches the request URI": the URL names no resource at all.

    Says nothing about whether a row exists: F&O answers it when its router split a key value (a ``/``,
    ``\\`` or ``+`` percent-encoded only once) or when the entity set does not exist. Never read it as "no row".
    """


class AlreadyExistsError(PermanentError):
    """A create hit an existing key (Dataverse 412 on ``If-None-Match: *`` / key violation, F&O POST 400/500)."""


class PreconditionFailedError(PermanentError):
    """412 that is not "already exists": an ``If-Match`` ETag that no longer matches."""


class InvalidKeyError(PermanentError, ValueError):
    """A key that cannot be sent: missing key fields or characters the service does not accept.

    Raised before any request is made (``status`` is ``None``).
    """

    def __init__(self, system: str, message: str) -> None:
        super().__init__(system, None, "InvalidKey", message)


# --------------------------------------------------------------------------------------------- parsing

_ALREADY_EXISTS = ("already exists", "already exist.")
_ALREADY_EXISTS_CODES = frozenset({"0x80060892", "0x80040237", "0x80040333"})
_NOT_FOUND_FOR_UPDATE = "no resources were found when selecting for update"
#: 404 bodies that mean "this URL names no resource type" (a bad request), not "no such row".
_BAD_ROUTE = ("resource not found for the segment", "no http resource was found", "0x80060888")
#: ASP.NET Web API's routing miss ({"Message": "No HTTP resource was found that matches the request URI '…'.
#: No route data was found for this request."}), published for F&O keys holding ``/``, ``\`` or ``+``.
_NO_ROUTE = ("no http resource was found", "no route data was found")
#: Dataverse 500s that carry an inner error: words that read as a transient state (unchanged behaviour).
_TRANSIENT_WORDS = ("deadlock", "update conflict", "another user", "timed out", "timeout", "try again",
                    "could not obtain a lock", "database is not available")
#: F&O infolog texts of a transient database state, matched as whole phrases (lower case): a validation
#: infolog may well say "try again" or "another user", and retrying it only burns the deferrals.
#: * X++ UpdateConflict: "An update conflict occurred due to another user process deleting the record or
#:   changing one or more fields in the record." (F&O captures; AX's own label spells "occured").
#: * X++ Deadlock: "Cannot ... Deadlock, where one or more users have simultaneously locked the whole table
#:   or part of it." [Inferred: the AX kernel label, no F&O capture found.]
#: * SQL Server errors 1205 ("... was deadlocked on lock resources with another process and has been chosen
#:   as the deadlock victim. Rerun the transaction.") and 1222 ("Lock request time out period exceeded.");
#:   [Inferred] that they reach the infolog word for word, inside X++'s "The database reported ...".
#: * "The record has been updated by another user" [Inferred: named in review, no public capture found].
_FNO_TRANSIENT_INFOLOG = (
    "an update conflict occurred due to another user process",
    "an update conflict occured due to another user process",
    "deadlock, where one or more users have simultaneously locked",
    "chosen as the deadlock victim",
    "lock request time out period exceeded",
    "the record has been updated by another user",
)
#: F&O's X++ duplicate-key infolog ("Cannot create a record in Customers (CustTable). … The record already
#: exists."). Narrower than ``_ALREADY_EXISTS`` so that an OData syntax complaint never reads as a duplicate.
_FNO_ALREADY_EXISTS = ("the record already exists", "record already exists")
#: Markers of an F&O write error (the X++ side failed, the request itself was well formed).
_FNO_WRITE_MARKERS = ("write failed", "infolog", "cannot create a record", "cannot edit a record",
                      "cannot delete a record", "validat")
_FNO_WRITE_TYPE = "axodatawriteexception"


def parse_error_body(content: bytes | str | None) -> tuple[str | None, str, str | None, str | None]:
    """``(code, message, infolog, innererror_type)`` from either error shape; tolerant of anything else.

    Dataverse: ``{"error": {"code", "message"}}``. F&O: the same plus
    ``"innererror": {"message", "type", "stacktrace"}``; the stack trace is dropped here.
    """
    if not content:
        return None, "", None, None
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        return None, text.strip()[:_MAX_TEXT], None, None
    error = data.get("error") if isinstance(data, Mapping) else None
    if not isinstance(error, Mapping):
        # OAuth-style bodies ({"error": "invalid_token", "error_description": ...}) and odd shapes.
        if isinstance(data, Mapping) and isinstance(data.get("error"), str):
            return data["error"], str(data.get("error_description") or data["error"]), None, None
        # ASP.NET Web API's HttpError ({"Message": ..., "MessageDetail": ...}): F&O's routing misses.
        if isinstance(data, Mapping) and isinstance(data.get("Message"), str):
            detail = data.get("MessageDetail")
            text = " ".join(part for part in (data["Message"], detail if isinstance(detail, str) else "") if part)
            return None, text[:_MAX_TEXT], None, None
        return None, "", None, None
    code = error.get("code")
    message = error.get("message")
    if isinstance(message, Mapping):  # OData v3 style {"lang": ..., "value": ...}
        message = message.get("value")
    inner = error.get("innererror") or error.get("internalexception")
    infolog = inner_type = None
    if isinstance(inner, Mapping):
        infolog = inner.get("message") or None
        inner_type = inner.get("type") or None
    return (str(code) if code not in (None, "") else None, str(message or ""),
            str(infolog) if infolog else None, str(inner_type) if inner_type else None)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date; ``None`` if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def _retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("Retry-After"))


def _fno_write_error(
    status: int, infolog: str | None, inner_type: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> ConnectorError | None:
    """Classify an F&O write error by its body; the status is 500 or 400 for the same X++ failure.

    Public captures show both codes for duplicate keys, update conflicts and validation infologs, so the
    infolog decides: "The record already exists" -> ``AlreadyExistsError`` (the create race), one of the
    known texts of a transient database state (``_FNO_TRANSIENT_INFOLOG``: update conflict, deadlock, lock
    timeout; never loose words such as "try again") -> ``TransientError``, any other infolog
    -> ``PermanentError``. Anything else (a 400 bad property name or literal, a 500 without a recognisable
    infolog) is left to the status rules: 400 permanent, 500 transient.
    """
    lowered = (infolog or "").lower()
    infolog_says_write = any(marker in lowered for marker in _FNO_WRITE_MARKERS)
    if status == 400 and not (infolog_says_write or _FNO_WRITE_TYPE in (inner_type or "").lower()):
        return None
    if any(marker in lowered for marker in _FNO_ALREADY_EXISTS):
        return AlreadyExistsError(*args, **kwargs)
    if any(marker in lowered for marker in _FNO_TRANSIENT_INFOLOG):
        return TransientError(*args, **kwargs)
    if infolog_says_write:
        return PermanentError(*args, **kwargs)
    return None  # unrecognised: the status decides (400 permanent, 500 transient)


def error_from_response(system: str, response: httpx.Response, *, method: str | None = None) -> ConnectorError:
    """Classify a non-2xx response into the hierarchy (without raising it)."""
    status = response.status_code
    code, message, infolog, inner_type = parse_error_body(response.content)
    if not message:
        message = response.reason_phrase or f"HTTP {status}"
    text = " ".join(filter(None, (message, infolog, code))).lower()
    args = (system, status, code, message, method or response.request.method, response.request.url)
    kwargs: dict[str, Any] = {"infolog": infolog, "error_type": inner_type}

    if status == 429:
        return ThrottledError(*args, retry_after=_retry_after(response), **kwargs)
    if status == 401:
        return AuthenticationError(*args, **kwargs)
    if _NOT_FOUND_FOR_UPDATE in text and status in (400, 404, 500):
        return NotFoundError(*args, **kwargs)
    if status == 404:
        if any(marker in text for marker in _NO_ROUTE):
            return RouteNotFoundError(*args, **kwargs)
        if any(marker in text for marker in _BAD_ROUTE):
            return PermanentError(*args, **kwargs)
        return NotFoundError(*args, **kwargs)
    if status == 412:
        if code in _ALREADY_EXISTS_CODES or any(marker in text for marker in _ALREADY_EXISTS):
            return AlreadyExistsError(*args, **kwargs)
        return PreconditionFailedError(*args, **kwargs)
    if system == "fno" and status in (400, 500) and (infolog or inner_type):
        write_error = _fno_write_error(status, infolog, inner_type, args, kwargs)
        if write_error is not None:
            return write_error
    elif status == 500 and (infolog or inner_type):
        # Dataverse (unchanged): a 500 that carries an inner error is read the way F&O's used to be.
        if any(marker in text for marker in _ALREADY_EXISTS):
            return AlreadyExistsError(*args, **kwargs)
        lowered = (infolog or "").lower()
        if any(marker in lowered for marker in _TRANSIENT_WORDS):
            return TransientError(*args, **kwargs)
        if "infolog" in lowered or "write failed" in lowered or "validat" in lowered:
            return PermanentError(*args, **kwargs)
        return TransientError(*args, **kwargs)
    if status == 503:
        retry_after = _retry_after(response)
        if retry_after is not None:
            return ThrottledError(*args, retry_after=retry_after, **kwargs)
        return TransientError(*args, **kwargs)
    if status in (408, 409, 425) or (status >= 500 and status not in (501, 505)):
        return TransientError(*args, **kwargs)
    return PermanentError(*args, **kwargs)
