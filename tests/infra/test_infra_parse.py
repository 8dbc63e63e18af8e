"""(a) Every Bicep file parses with pycep (the parser checkov uses), in the dialect it accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.infra._bicep import INFRA, bicep_files, main, parse

# Constructs pycep 0.5 rejects (docs: /work/shared/reference/bicep-offline-checks.md). pycep fails on them
# anyway; these patterns only make the failure message name the construct.
UNSUPPORTED = {
    "typed variable": re.compile(r"^\s*var\s+\w+\s+\w+(\[\])?\s*=", re.M),
    "import": re.compile(r"^\s*import\s", re.M),
    "user-defined function": re.compile(r"^\s*func\s", re.M),
    "spread operator": re.compile(r"\.\.\.\w"),
    "nullable type": re.compile(r"^\s*param\s+\w+\s+\w+\?", re.M),
    "@sealed()": re.compile(r"@sealed\s*\("),
    "extension": re.compile(r"^\s*extension\s", re.M),
    "items()": re.compile(r"\bitems\s*\("),
}


def _strip_comments(text: str) -> str:
    """Drop // comments (not inside a string on that line) and /* */ blocks."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        code = line.split("//", 1)[0]
        lines.append(line if "'" in code else code)
    return "\n".join(lines)


def test_the_expected_templates_exist() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in bicep_files()}
    assert "main.bicep" in names
    assert {
        "modules/identity.bicep",
        "modules/storage.bicep",
        "modules/servicebus.bicep",
        "modules/keyvault.bicep",
        "modules/monitoring.bicep",
        "modules/functionapp.bicep",
    } <= names


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_parses_with_pycep(path: Path) -> None:
    text = _strip_comments(path.read_text(encoding="utf-8"))
    found = [name for name, pattern in UNSUPPORTED.items() if pattern.search(text)]
    assert not found, f"{path.name} uses constructs pycep cannot parse: {found}"
    template = parse(path)  # raises on any parse error
    assert template.get("resources") or template.get("modules"), f"{path.name}: nothing parsed"


def test_every_module_is_local_and_used() -> None:
    """main.bicep deploys only local modules (no registry modules: every resource is scanned here)."""
    used = set()
    for symbol, mod in main()["modules"].items():
        assert mod["type"] == "local", f"module {symbol} is not a local file"
        target = (INFRA / mod["detail"]["path"]).resolve()
        assert target.is_file(), f"module {symbol}: {target} missing"
        assert mod["config"]["scope"] == "rg", f"module {symbol} must deploy into the resource group"
        used.add(target)
    modules = {p.resolve() for p in (INFRA / "modules").glob("*.bicep")}
    assert modules == used, f"modules not deployed by main.bicep: {sorted(map(str, modules - used))}"


def test_main_parameters_json_matches_main_bicep() -> None:
    document = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    given = document["parameters"]
    declared = main()["parameters"]
    assert set(given) <= set(declared), f"unknown parameters: {set(given) - set(declared)}"
    required = {name for name, p in declared.items() if p.get("default") is None}
    assert required <= set(given), f"required parameters without a value: {required - set(given)}"
    assert given["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert given["location"]["value"] == "${AZURE_LOCATION}"
    for name, entry in given.items():
        value = entry["value"]
        assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(=[^}]*)?\}", value), f"{name}: not an azd variable"
