"""Resolving the choice labels of the mapping files against a Dataverse environment's metadata.

A mapping names a Dataverse choice option by its label (``{label: Active}``, mappings/choices.py); its value is
the environment's own (a publisher's option value prefix, e.g. 192350000 + n). Before the first sync the runtime
reads, once per choice column the loaded mappings name, that column's definition from the Web API and gives every
spec the values (``SyncRuntime.start``). ``python -m p2csync validate --online`` runs the same check without
starting anything.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from mappings import MappingSpec
from mappings.choices import ChoiceLabelError, ChoiceOptions, options_from_metadata
from p2csync.connectors.dataverse import DataverseClient

log = logging.getLogger("p2csync.choices")

#: (Web API service root, table, column) -> options: one metadata read per column for the process. Only options
#: that were found are kept (a column added later is read again by the next check).
_OPTIONS: dict[tuple[str, str, str], ChoiceOptions] = {}


def forget_choice_options() -> None:
    """Forget what was read (tests; an environment whose options changed needs a restart otherwise)."""
    _OPTIONS.clear()


async def read_choice_options(dataverse: DataverseClient, columns: set[tuple[str, str]]
                              ) -> dict[tuple[str, str], ChoiceOptions]:
    """The options of each (table, column), from the process cache or one Web API read each. Connector errors
    propagate (the caller decides whether to wait and retry)."""
    found: dict[tuple[str, str], ChoiceOptions] = {}
    root = str(dataverse.base_url)
    for table, column in sorted(columns):
        cached = _OPTIONS.get((root, table, column))
        if cached is None:
            body = await dataverse.choice_column(table, column)
            if body is None:
                found[(table, column)] = ChoiceOptions(table, column, (), found=False)
                continue
            cached = _OPTIONS[(root, table, column)] = options_from_metadata(table, column, body)
            log.info("choice %s.%s: %s", table, column, cached.known())
        found[(table, column)] = cached
    return found


async def resolve_choice_labels(dataverse: DataverseClient, specs: Mapping[str, MappingSpec]) -> int:
    """Give every spec the values of the choice labels it names; returns how many labels were resolved.
    ChoiceLabelError naming, for every file at fault, the place, the column, the label and the labels that
    exist."""
    uses = {name: spec.choice_uses() for name, spec in specs.items()}
    columns = {use.column_key for found in uses.values() for use in found}
    options = await read_choice_options(dataverse, columns) if columns else {}
    errors: list[str] = []
    for name, spec in specs.items():
        try:
            spec.resolve_choices(options)
        except ChoiceLabelError as exc:
            errors.append(str(exc))
    if errors:
        # Read these columns again at the next check: an option may be added (or relabelled) in the environment
        # meanwhile, and the fix should not need a restart.
        root = str(dataverse.base_url)
        for table, column in columns:
            _OPTIONS.pop((root, table, column), None)
        raise ChoiceLabelError("\n".join(errors))
    return sum(len(found) for found in uses.values())


async def validate_online(specs: Mapping[str, MappingSpec], settings_file: Path | None = None) -> int:
    """``validate --online``: check the labels against the environment named by DATAVERSE_URL and the auth
    settings (the environment, else ``settings_file``); prints the result, returns the exit code."""
    import sys

    from p2csync.connectors import ConnectorError
    from p2csync.settings import DataverseAccess, load_local_settings

    if settings_file is not None and settings_file.exists():
        load_local_settings(settings_file)
    access = DataverseAccess.from_env()
    tokens, credential = access.token_provider()
    try:
        async with DataverseClient(access.dataverse_url, tokens, tag=None) as dataverse:
            count = await resolve_choice_labels(dataverse, specs)
    except ChoiceLabelError as exc:
        print(f"invalid mapping: {exc}", file=sys.stderr)
        return 1
    except ConnectorError as exc:
        print(f"error: cannot read the choice columns from Dataverse: {exc}", file=sys.stderr)
        return 1
    finally:
        if credential is not None:
            await credential.close()
    print(f"choice labels: {count} checked against {access.dataverse_url}")
    return 0
