"""Errors of the mapping engine.

* :class:`MappingError`: a mapping file is wrong (raised at start-up by the loader). Its message names the file,
  the path inside the file (``fields[4].transform``) and, when known, the line.
* :class:`MappedValueError`: one record cannot be mapped (raised by ``MappingSpec.apply``): a required value is
  empty, a value is not in a value map, a transform cannot convert a value. It names the flow, the target field
  and the source column; the runtime dead-letters the message with ``str(error)`` as the reason.

``MappedValueError`` is a ``MappingError``, so one ``except MappingError`` covers both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def format_loc(loc: tuple[Any, ...]) -> str:
    """('fields', 4, 'transform') -> 'fields[4].transform'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a mapping file: where (``fields[4].transform``), what, and the line when known."""

    path: str
    message: str
    line: int | None = None

    def render(self, file: str | None) -> str:
        where = f"{file}: " if file else ""
        at = f"{self.path}: " if self.path else ""
        line = f" (line {self.line})" if self.line else ""
        return f"{where}{at}{self.message}{line}"


class MappingError(ValueError):
    """A mapping file (or a mapping set) is invalid. ``problems`` lists every finding, file-relative."""

    def __init__(self, message: str, *, file: str | None = None, problems: tuple[Problem, ...] = ()):
        super().__init__(message)
        self.file = file
        self.problems = problems

    @classmethod
    def from_problems(cls, file: str | None, problems: list[Problem]) -> MappingError:
        return cls("\n".join(p.render(file) for p in problems), file=file, problems=tuple(problems))


class MappedValueError(MappingError):
    """A record cannot be mapped. ``str(error)`` is a complete dead-letter reason, e.g.
    ``accounts: CustomerAccount <- accountnumber: required value is empty``."""

    def __init__(self, flow: str, target: str, source: str | None, reason: str):
        where = f"{target} <- {source}" if source else target
        super().__init__(f"{flow}: {where}: {reason}")
        self.flow = flow
        self.target = target
        self.source = source
        self.reason = reason
