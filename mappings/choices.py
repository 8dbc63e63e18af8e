"""Dataverse choice (option set) labels in mapping files, and their resolution to the environment's values.

A choice column stores a number (the option's value) and shows a label. The values of a solution's own choices
depend on the publisher that made them (a publisher's option value prefix, e.g. 192350000 + n), so a mapping names
an option by its label instead: ``{field: msdynce_processingstatus, equals: {label: Active}}``. The labels are
looked up once per process in the environment's metadata (``p2csync.choices``) and the spec then compares and
writes the values (``MappingSpec.resolve_choices``). Nothing here does I/O.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import MappingError


class ChoiceLabel(BaseModel):
    """A Dataverse choice option named by its label, e.g. {label: Active}. The app looks the label up in the
    environment's metadata at start-up and uses that option's value; a label the column does not have stops the
    sync with a message listing the labels it has. Case and surrounding spaces are ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1, description="The option's label as Sales shows it (Active, Confirmed, ...).")

    @field_validator("label")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a choice label is not blank")
        return value.strip()

    @property
    def key(self) -> str:
        return label_key(self.label)

    def __str__(self) -> str:
        return f"{{label: {self.label}}}"


def label_key(text: str) -> str:
    """Labels compare ignoring case and surrounding spaces (as text values do in filters and value maps)."""
    return text.strip().casefold()


@dataclass(frozen=True)
class ChoiceOption:
    """One option of a choice column: its value and its labels (the caller's language first, then every
    other language the metadata holds)."""

    value: int
    labels: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.labels[0] if self.labels else str(self.value)


@dataclass(frozen=True)
class ChoiceOptions:
    """The options of one choice column of one table, as the environment defines them (``found`` False: the
    environment has no choice column of that name)."""

    table: str
    column: str
    options: tuple[ChoiceOption, ...]
    found: bool = True

    def values_for(self, label: str) -> list[int]:
        """The values of the options one of whose labels (any language) is ``label``."""
        key = label_key(label)
        return [o.value for o in self.options if any(label_key(text) == key for text in o.labels)]

    def known(self) -> str:
        return ", ".join(f"{o.label} ({o.value})" for o in self.options) or "none"


@dataclass(frozen=True)
class ChoiceUse:
    """Where a mapping file names a choice label: the Dataverse table and column whose options it names, and
    the place in the file (``filter[1].equals``)."""

    table: str
    column: str
    label: ChoiceLabel
    where: str

    @property
    def column_key(self) -> tuple[str, str]:
        return column_key(self.table, self.column)


def column_key(table: str, column: str) -> tuple[str, str]:
    return (table.strip().lower(), column.strip().lower())


class ChoiceLabelError(MappingError):
    """A label a mapping file uses does not name exactly one option of its column in this environment (or the
    column is not a choice). The message names the file, the place in it, the column, the label and the labels
    the column has."""


def options_from_metadata(table: str, column: str, body: Mapping[str, Any]) -> ChoiceOptions:
    """Read the options out of an attribute definition expanded with ``OptionSet`` and ``GlobalOptionSet``
    (Web API, "Retrieve schema definitions by name": either property holds the options, global choice or not).
    Each option's labels: ``Label.UserLocalizedLabel`` (the caller's language) first, then ``LocalizedLabels``."""
    options: list[ChoiceOption] = []
    for set_name in ("OptionSet", "GlobalOptionSet"):
        option_set = body.get(set_name)
        if isinstance(option_set, Mapping) and isinstance(option_set.get("Options"), list):
            for raw in option_set["Options"]:
                if isinstance(raw, Mapping) and isinstance(raw.get("Value"), int):
                    options.append(ChoiceOption(int(raw["Value"]), _labels(raw.get("Label"))))
            break
    return ChoiceOptions(table, column, tuple(options))


def _labels(label: Any) -> tuple[str, ...]:
    if not isinstance(label, Mapping):
        return ()
    texts: list[str] = []
    user = label.get("UserLocalizedLabel")
    if isinstance(user, Mapping) and isinstance(user.get("Label"), str):
        texts.append(user["Label"])
    for localized in label.get("LocalizedLabels") or []:
        if isinstance(localized, Mapping) and isinstance(localized.get("Label"), str):
            texts.append(localized["Label"])
    return tuple(dict.fromkeys(texts))


def resolve_uses(
    uses: Iterable[ChoiceUse], options: Mapping[tuple[str, str], ChoiceOptions], file: str | None
) -> dict[tuple[str, str, str], int]:
    """(table, column, label key) -> value for every use; ChoiceLabelError listing every label that names no
    option, or more than one."""
    values: dict[tuple[str, str, str], int] = {}
    problems: list[str] = []
    for use in uses:
        column = options.get(use.column_key)
        if column is None:
            problems.append(f"{use.where}: {use.label} on {use.table}.{use.column}: its options were not read")
            continue
        if not column.found:
            problems.append(f"{use.where}: {use.label}: {use.table}.{use.column} is not a choice column in this "
                            "environment (no such table or column, or it is not a choice)")
            continue
        found = column.values_for(use.label.label)
        if len(found) == 1:
            values[(*use.column_key, use.label.key)] = found[0]
        elif not found:
            labels = [text for option in column.options for text in option.labels]
            hint = difflib.get_close_matches(use.label.label, labels, n=1, cutoff=0.6)
            problems.append(f"{use.where}: {use.table}.{use.column} has no option labelled '{use.label.label}'"
                            + (f" (did you mean '{hint[0]}'?)" if hint else "") + f"; its options: {column.known()}")
        else:
            problems.append(f"{use.where}: {use.table}.{use.column} has {len(found)} options labelled "
                            f"'{use.label.label}' ({', '.join(map(str, found))}); write the value instead")
    if problems:
        where = f"{file}: " if file else ""
        raise ChoiceLabelError("\n".join(where + p for p in problems), file=file)
    return values
