"""Loading and validating mapping files, and the JSON Schema for editors.

``load_mapping(path)`` reads one YAML file into a :class:`MappingSpec`; ``load_mappings(directory)`` reads every
``*.yaml`` of a directory. Anything wrong raises :class:`MappingError` whose message names the file, the path
inside it (``fields[4].transform``) and the line, so a bad file stops the app at start-up with a message a
consultant can act on.

YAML is read with YAML 1.2 rules for plain words: only true/false are booleans (so ``NO`` stays Norway and
``Yes`` stays the F&O enum value "Yes") and dates stay text. Duplicate keys are errors.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .choices import ChoiceLabel
from .errors import MappingError, Problem, format_loc
from .model import (
    CompanyRouting,
    Condition,
    FieldMap,
    LineSource,
    LineSpec,
    LineTarget,
    MappingSpec,
    ParentRouting,
    Reference,
    Source,
    Target,
    ValueMap,
)

SCHEMA_FILE = Path(__file__).with_name("mapping.schema.json")
SCHEMA_COMMENT = "# yaml-language-server: $schema=./mapping.schema.json"


# ----------------------------------------------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------------------------------------------


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader with YAML 1.2 booleans, no implicit timestamps and duplicate keys rejected. On libyaml's parser
    where PyYAML has it (its wheels do): the pure-Python one took half a second of a cold start to read the
    mapping files, before the first message could be handled."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _DuplicateKey(None, None, "a key must be a single value", key_node.start_mark) from None
        if key in seen:
            raise _DuplicateKey(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise MappingError(f"{file}: {where}{what}", file=file, problems=(Problem("", f"{where}{what}"),)) from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{file}: not valid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    return data, node


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line (1-based) of the YAML node at ``loc``, or of its deepest existing parent."""
    if node is None:
        return None
    current = node
    for part in loc:
        nxt = None
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    nxt = value_node
                    break
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(current.value):
            nxt = current.value[part]
        if nxt is None:
            break
        current = nxt
    return current.start_mark.line + 1


# ----------------------------------------------------------------------------------------------------------------
# Validation errors -> problems
# ----------------------------------------------------------------------------------------------------------------


def _all_keys() -> set[str]:
    keys: set[str] = set()
    for model in (MappingSpec, Source, Target, CompanyRouting, ParentRouting, FieldMap, ValueMap, Condition, LineSpec,
                  LineSource, LineTarget, Reference, ChoiceLabel):
        for name, info in model.model_fields.items():
            keys.add(info.alias or name)
    return keys


def _clean(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _problems(exc: ValidationError, node: yaml.Node | None) -> list[Problem]:
    problems: list[Problem] = []
    known = _all_keys()
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "mapping_spec":
            for sub_loc, msg in err["ctx"]["problems"]:
                problems.append(Problem(format_loc(tuple(sub_loc)), msg, _line_of(node, tuple(sub_loc))))
            continue
        if err["type"] == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            hint = difflib.get_close_matches(key, known, n=1)
            msg = f"unknown key '{key}'" + (f"; did you mean '{hint[0]}'?" if hint else "")
            problems.append(Problem(format_loc(loc[:-1]), msg, _line_of(node, loc)))
            continue
        if err["type"] == "missing":
            problems.append(Problem(format_loc(loc[:-1]), f"missing '{loc[-1]}'", _line_of(node, loc[:-1])))
            continue
        msg = _clean(err["msg"])
        if err["type"] not in ("value_error", "assertion_error") and "input" in err:
            shown = repr(err["input"])
            msg = f"{msg} (got {shown if len(shown) < 60 else shown[:57] + '...'})"
        problems.append(Problem(format_loc(loc), msg, _line_of(node, loc)))
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def parse_mapping(text: str, file: str = "<mapping>") -> MappingSpec:
    """Parse and validate mapping YAML text; errors name ``file``."""
    data, node = _parse_yaml(text, file)
    if not isinstance(data, dict):
        raise MappingError(f"{file}: a mapping file is a YAML mapping (flow:, direction:, ...)", file=file)
    try:
        spec = MappingSpec.model_validate(data)
    except ValidationError as exc:
        raise MappingError.from_problems(file, _problems(exc, node)) from None
    spec._file = file  # named by errors found later (a choice label the environment does not have)
    return spec


def load_mapping(path: str | Path) -> MappingSpec:
    """Load and validate one mapping file. Raises MappingError naming the file, the field path and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{path}: cannot read: {exc.strerror or exc}", file=str(path)) from None
    return parse_mapping(text, str(path))


def load_mappings(directory: str | Path) -> dict[str, MappingSpec]:
    """Load every ``*.yaml`` / ``*.yml`` file of ``directory`` (not recursive), keyed by flow name. All files are
    checked; the MappingError lists the problems of every bad file. Two files with the same flow name are an
    error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MappingError(f"{directory}: not a directory of mapping files", file=str(directory))
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    specs: dict[str, MappingSpec] = {}
    origin: dict[str, Path] = {}
    errors: list[str] = []
    problems: list[Problem] = []
    for file in files:
        try:
            spec = load_mapping(file)
        except MappingError as exc:
            errors.append(str(exc))
            problems += exc.problems
            continue
        if spec.flow in specs:
            errors.append(f"{file}: flow: flow '{spec.flow}' is already defined in {origin[spec.flow]}")
            continue
        specs[spec.flow] = spec
        origin[spec.flow] = file
    if errors:
        raise MappingError("\n".join(errors), file=str(directory), problems=tuple(problems))
    return specs


def mapping_json_schema() -> dict[str, Any]:
    """JSON Schema of a mapping file, for editors (committed as mappings/mapping.schema.json)."""
    schema = MappingSpec.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "p2c-sync mapping file",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def mapping_json_schema_text() -> str:
    """The schema as written to mapping.schema.json (2-space indent, trailing newline)."""
    return json.dumps(mapping_json_schema(), indent=2, ensure_ascii=False) + "\n"
