"""The slice of OData URL syntax both simulators understand: resource paths with key segments,
`$filter` expressions, `$orderby` and `$select` lists.

Kept apart from the simulators because Dataverse and F&O share the grammar but not the semantics: each
simulator supplies the function that reads a property from a row, and decides which names exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?[mMdDfFlL]?$")


class ODataSyntaxError(ValueError):
    """A URL or query option the simulators cannot parse; answered with 400."""


class UnknownProperty(ValueError):
    """A query option names a property the entity does not have; answered with 400."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class GuidLiteral:
    """An unquoted GUID literal (Dataverse writes GUIDs bare in keys and filters)."""

    value: str


@dataclass(frozen=True)
class EnumLiteral:
    """`Namespace.Type'Symbol'`: F&O's enum literal syntax in filters."""

    type_name: str
    symbol: str


# ---------------------------------------------------------------------------------------------------
# Literals


def parse_datetime(text: str) -> datetime:
    """ISO-8601 (with Z or offset, or a bare date) -> aware UTC datetime."""
    if _DATE_RE.match(text):
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    if not _DATETIME_RE.match(text):
        raise ValueError(f"not a datetime: {text!r}")
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.astimezone(timezone.utc)


def format_datetime(value: datetime) -> str:
    """UTC, second precision unless the value carries microseconds, always with a trailing Z."""
    value = value.astimezone(timezone.utc)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0") + "Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_literal(text: str) -> Any:
    """One unquoted-or-quoted literal as it appears in a key segment."""
    text = text.strip()
    if len(text) >= 2 and text[0] == "'" and text[-1] == "'":
        return text[1:-1].replace("''", "'")
    enum = re.match(r"^([A-Za-z_][\w.]*)'(.*)'$", text, re.S)
    if enum:
        return EnumLiteral(enum.group(1), enum.group(2).replace("''", "'"))
    lowered = text.lower()
    if lowered == "null":
        return None
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if GUID_RE.match(text):
        return GuidLiteral(text.lower())
    if _DATETIME_RE.match(text) or _DATE_RE.match(text):
        return parse_datetime(text)
    if _NUMBER_RE.match(text):
        body = text.rstrip("mMdDfFlL")
        if re.match(r"^-?\d+$", body):
            return int(body)
        try:
            return Decimal(body)
        except InvalidOperation as exc:  # pragma: no cover - regex guards this
            raise ODataSyntaxError(f"bad number {text!r}") from exc
    raise ODataSyntaxError(f"Unrecognized literal: {text}")


# ---------------------------------------------------------------------------------------------------
# Resource paths and key segments


@dataclass(frozen=True)
class ResourcePath:
    """`Set`, `Set(key)` or `Set(key)/rest`; `key` is the raw text between the parentheses."""

    entity_set: str
    key: str | None
    rest: str | None


def parse_resource_path(path: str) -> ResourcePath:
    path = path.strip("/")
    match = re.match(r"^([A-Za-z_][\w]*)", path)
    if not match:
        raise ODataSyntaxError(f"Bad resource path: {path!r}")
    name = match.group(1)
    pos = match.end()
    key: str | None = None
    if pos < len(path) and path[pos] == "(":
        depth, i, in_quote = 0, pos, False
        while i < len(path):
            ch = path[i]
            if in_quote:
                if ch == "'":
                    if i + 1 < len(path) and path[i + 1] == "'":
                        i += 1
                    else:
                        in_quote = False
            elif ch == "'":
                in_quote = True
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        if depth != 0:
            raise ODataSyntaxError(f"Unbalanced key segment in {path!r}")
        key = path[pos + 1 : i]
        pos = i + 1
    rest = path[pos:]
    if rest and not rest.startswith("/"):
        raise ODataSyntaxError(f"Bad resource path: {path!r}")
    return ResourcePath(name, key, rest.lstrip("/") or None)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside quotes and parentheses."""
    parts: list[str] = []
    depth, in_quote, start, i = 0, False, 0, 0
    while i < len(text):
        ch = text[i]
        if in_quote:
            if ch == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    i += 1
                else:
                    in_quote = False
        elif ch == "'":
            in_quote = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_key(segment: str) -> dict[str, Any] | Any:
    """`a='x',b=1` -> {"a": "x", "b": 1}; a lone value (a GUID, or a single-key value) is returned as is."""
    segment = segment.strip()
    if not segment:
        raise ODataSyntaxError("Empty key segment")
    parts = split_top_level(segment)
    if len(parts) == 1 and not re.match(r"^\s*[A-Za-z_][\w]*\s*=", parts[0]):
        return parse_literal(parts[0])
    values: dict[str, Any] = {}
    for part in parts:
        name, eq, raw = part.partition("=")
        if not eq or not name.strip():
            raise ODataSyntaxError(f"Bad key segment: ({segment})")
        values[name.strip()] = parse_literal(raw)
    return values


# ---------------------------------------------------------------------------------------------------
# $filter

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<enum>[A-Za-z_][\w.]*'(?:[^']|'')*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDfFlL]?(?![\w]))
  | (?P<ident>[A-Za-z_@][\w./@]*)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
    """,
    re.X,
)

_COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
_FUNCTIONS = {"contains", "startswith", "endswith"}

Row = Any
ValueOf = Callable[[Row, str], Any]
Predicate = Callable[[Row], bool]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match:
            raise ODataSyntaxError(f"Syntax error at position {pos} in '{text}'.")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


@dataclass(frozen=True)
class _Prop:
    name: str


@dataclass(frozen=True)
class _Lit:
    value: Any


#: A simulator's check of one ``property op literal`` comparison as written (the literal parsed, an enum's type
#: kept), raising the simulator's own error; the comparison itself reads enums by their member.
OperandCheck = Callable[[str, str, Any], None]


class _FilterParser:
    def __init__(self, text: str, known: Callable[[str], bool], check: OperandCheck | None = None) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.known = known
        self.check = check
        self.text = text

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ODataSyntaxError(f"Unexpected end of $filter '{self.text}'.")
        self.pos += 1
        return token

    def expect(self, kind: str) -> None:
        token = self.take()
        if token[0] != kind:
            raise ODataSyntaxError(f"Expected {kind} but found '{token[1]}' in $filter '{self.text}'.")

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token[0] == "ident" and token[1].lower() == word:
            self.pos += 1
            return True
        return False

    def parse(self) -> Predicate:
        predicate = self.parse_or()
        if self.peek() is not None:
            raise ODataSyntaxError(f"Unexpected '{self.peek()[1]}' in $filter '{self.text}'.")  # type: ignore[index]
        return predicate

    def parse_or(self) -> Predicate:
        left = self.parse_and()
        while self.keyword("or"):
            right = self.parse_and()
            left = (lambda a, b: lambda row: a(row) or b(row))(left, right)
        return left

    def parse_and(self) -> Predicate:
        left = self.parse_not()
        while self.keyword("and"):
            right = self.parse_not()
            left = (lambda a, b: lambda row: a(row) and b(row))(left, right)
        return left

    def parse_not(self) -> Predicate:
        if self.keyword("not"):
            inner = self.parse_not()
            return lambda row: not inner(row)
        return self.parse_primary()

    def parse_primary(self) -> Predicate:
        token = self.peek()
        if token and token[0] == "lparen":
            self.take()
            inner = self.parse_or()
            self.expect("rparen")
            return inner
        if token and token[0] == "ident" and token[1].lower() in _FUNCTIONS:
            return self.parse_function()
        left = self.parse_operand()
        op_token = self.take()
        op = op_token[1].lower()
        if op_token[0] != "ident" or op not in _COMPARISONS:
            raise ODataSyntaxError(f"Unsupported operator '{op_token[1]}' in $filter '{self.text}'.")
        right = self.parse_operand()
        if self.check is not None:
            if isinstance(left, _Prop) and isinstance(right, _Lit):
                self.check(left.name, op, right.value)
            elif isinstance(left, _Lit) and isinstance(right, _Prop):
                self.check(right.name, op, left.value)
        return _comparison(op, left, right)

    def parse_function(self) -> Predicate:
        name = self.take()[1].lower()
        self.expect("lparen")
        subject = self.parse_operand()
        self.expect("comma")
        needle = self.parse_operand()
        self.expect("rparen")
        return _function(name, subject, needle)

    def parse_operand(self) -> _Prop | _Lit:
        kind, text = self.take()
        if kind == "ident":
            lowered = text.lower()
            if lowered in ("true", "false"):
                return _Lit(lowered == "true")
            if lowered == "null":
                return _Lit(None)
            if not self.known(text):
                raise UnknownProperty(text)
            return _Prop(text)
        if kind in ("string", "enum", "datetime", "guid", "number"):
            return _Lit(parse_literal(text))
        raise ODataSyntaxError(f"Unexpected '{text}' in $filter '{self.text}'.")


def _resolve(operand: _Prop | _Lit, row: Row, value_of: ValueOf) -> Any:
    if isinstance(operand, _Prop):
        return value_of(row, operand.name)
    value = operand.value
    if isinstance(value, GuidLiteral):
        return value.value
    if isinstance(value, EnumLiteral):
        return value.symbol
    return value


def _normalise_pair(a: Any, b: Any) -> tuple[Any, Any]:
    """Bring two values into a comparable form (case-insensitive strings like SQL collation)."""
    if isinstance(a, datetime) and isinstance(b, str):
        b = parse_datetime(b)
    elif isinstance(b, datetime) and isinstance(a, str):
        a = parse_datetime(a)
    if isinstance(a, bool) or isinstance(b, bool):
        return a, b
    if isinstance(a, (int, float, Decimal)) and isinstance(b, (int, float, Decimal)):
        return Decimal(str(a)), Decimal(str(b))
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold(), b.casefold()
    return a, b


def _wildcard_match(value: str, pattern: str) -> bool:
    regex = "^" + ".*".join(re.escape(part) for part in pattern.casefold().split("*")) + "$"
    return re.match(regex, value.casefold(), re.S) is not None


def _comparison(op: str, left: _Prop | _Lit, right: _Prop | _Lit) -> Predicate:
    def predicate(row: Row) -> bool:
        value_of = _current_value_of(row)
        a = _resolve(left, row, value_of)
        b = _resolve(right, row, value_of)
        if op in ("eq", "ne") and isinstance(b, str) and "*" in b and _wildcards_enabled(row):
            matched = isinstance(a, str) and _wildcard_match(a, b)
            return matched if op == "eq" else not matched
        if a is None or b is None:
            if op == "eq":
                return a is None and b is None
            if op == "ne":
                return not (a is None and b is None)
            return False
        a, b = _normalise_pair(a, b)
        try:
            if op == "eq":
                return bool(a == b)
            if op == "ne":
                return bool(a != b)
            if op == "gt":
                return bool(a > b)
            if op == "ge":
                return bool(a >= b)
            if op == "lt":
                return bool(a < b)
            return bool(a <= b)
        except TypeError:
            return False

    return predicate


def _function(name: str, subject: _Prop | _Lit, needle: _Prop | _Lit) -> Predicate:
    def predicate(row: Row) -> bool:
        value_of = _current_value_of(row)
        a = _resolve(subject, row, value_of)
        b = _resolve(needle, row, value_of)
        if not isinstance(a, str) or not isinstance(b, str):
            return False
        a, b = a.casefold(), b.casefold()
        if name == "contains":
            return b in a
        if name == "startswith":
            return a.startswith(b)
        return a.endswith(b)

    return predicate


@dataclass(frozen=True)
class FilterRow:
    """A row plus the simulator's way of reading it, so a compiled filter stays simulator-neutral."""

    data: Any
    value_of: ValueOf
    wildcards: bool = False


def _current_value_of(row: Row) -> ValueOf:
    return lambda r, name: row.value_of(row.data, name)


def _wildcards_enabled(row: Row) -> bool:
    return bool(row.wildcards)


_EQUALITY_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s+eq\s+('(?:[^']|'')*'|-?\d+(?:\.\d+)?|"
                          r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\s*$")


def equality_hint(text: str) -> tuple[str, str | int | Decimal | GuidLiteral] | None:
    """`(property, literal)` when the whole `$filter` is `property eq 'text'`, `property eq number` or `property eq
    <guid>`: a store can then narrow the rows it tests to those an index holds under that value (and still apply
    the filter)."""
    match = _EQUALITY_RE.match(text)
    if match is None:
        return None
    value = parse_literal(match.group(2))
    return (match.group(1), value) if isinstance(value, (str, int, Decimal, GuidLiteral)) else None


def compile_filter(text: str, known: Callable[[str], bool],
                   check: OperandCheck | None = None) -> Callable[[FilterRow], bool]:
    """Compile `$filter` once; the predicate takes a FilterRow. Raises ODataSyntaxError/UnknownProperty, or what
    ``check`` raises for a comparison it refuses."""
    return _FilterParser(text, known, check).parse()


def parse_orderby(text: str, known: Callable[[str], bool]) -> list[tuple[str, bool]]:
    """`name asc, createdon desc` -> [("name", False), ("createdon", True)] (True = descending)."""
    order: list[tuple[str, bool]] = []
    for part in split_top_level(text):
        words = part.split()
        if not words or len(words) > 2:
            raise ODataSyntaxError(f"Bad $orderby: '{text}'")
        if not known(words[0]):
            raise UnknownProperty(words[0])
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise ODataSyntaxError(f"Bad $orderby direction: '{words[1]}'")
        order.append((words[0], direction == "desc"))
    return order


def sort_rows(rows: list[Any], order: Iterable[tuple[str, bool]], value_of: ValueOf) -> list[Any]:
    """Stable multi-key sort; nulls sort first ascending (as SQL Server does)."""
    result = list(rows)
    for name, descending in reversed(list(order)):

        def key(row: Any, name: str = name) -> tuple[int, Any]:
            value = value_of(row, name)
            if value is None:
                return (0, "")
            if isinstance(value, str):
                return (1, value.casefold())
            if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
                return (1, Decimal(str(value)))
            return (1, value)

        result.sort(key=key, reverse=descending)
    return result


def parse_select(text: str | None) -> list[str] | None:
    if text is None or not text.strip():
        return None
    return [part.strip() for part in text.split(",") if part.strip()]
