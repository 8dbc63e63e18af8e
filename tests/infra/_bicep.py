"""Helpers for the infra tests: parse the Bicep templates with pycep and resolve simple references.

pycep returns a dict per file (parameters, variables, resources, modules, outputs). A bare identifier in an
expression comes back as a plain string (``"lockDuration"``), a literal too (``"PT2M"``); ``resolve`` maps
an identifier to its parameter default or variable value so tests can check effective defaults.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Built-in role definitions the templates may grant (id -> name). Anything else is a test failure.
ALLOWED_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": "Azure Service Bus Data Receiver",
    "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Azure Service Bus Data Sender",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
}


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@lru_cache(maxsize=None)
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(text=path.read_text(encoding="utf-8"))


def module(name: str) -> dict[str, Any]:
    """Parsed infra/modules/<name>.bicep."""
    return parse(INFRA / "modules" / f"{name}.bicep")


def main() -> dict[str, Any]:
    return parse(INFRA / "main.bicep")


def dumps(node: Any) -> str:
    return json.dumps(node, default=str, sort_keys=True)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource body, looking through a loop or condition wrapper."""
    config = resource["config"]
    if "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return config


def resources(template: dict[str, Any], type_: str | None = None, *, existing: bool = False):
    """(symbol, resource) pairs, optionally of one type; `existing` references are left out by default."""
    for symbol, res in template.get("resources", {}).items():
        if type_ is not None and res["type"].lower() != type_.lower():
            continue
        if res.get("existing") and not existing:
            continue
        yield symbol, res


def all_resources(type_: str | None = None):
    """(file, symbol, resource) over every template."""
    for path in bicep_files():
        for symbol, res in resources(parse(path), type_):
            yield path, symbol, res


def resolve(template: dict[str, Any], value: Any) -> Any:
    """Identifier -> parameter default / variable value; property access on an object variable; else value."""
    if isinstance(value, str):
        params = template.get("parameters", {})
        variables = template.get("variables", {})
        if value in params:
            return params[value].get("default")
        if value in variables:
            return variables[value]["value"]
        return value
    if isinstance(value, dict) and "operator" in value and value["operator"]["type"] == "property_accessor":
        operands = value["operator"]["operands"]
        base = resolve(template, operands["operand_1"])
        if isinstance(base, dict) and isinstance(operands["operand_2"], str):
            return resolve(template, base.get(operands["operand_2"]))
    return value


def role_definition_ids(template: dict[str, Any], resource: dict[str, Any]) -> list[str]:
    """The role definition GUIDs a roleAssignments resource (possibly a loop) grants."""
    roles = body(resource)["properties"]["roleDefinitionId"]
    assert roles["function"]["type"] == "subscription_resource_id", dumps(roles)
    params = roles["function"]["parameters"]
    assert params["resource_type"] == "Microsoft.Authorization/roleDefinitions"
    ref = params["resource_name_1"]
    loop = resource["config"].get("loop_type")
    if loop and isinstance(ref, str) and ref == loop["detail"]["item_name"]:
        items = resolve(template, loop["detail"]["array_name"])
        return [resolve(template, item) for item in items]
    return [resolve(template, ref)]


def app_settings() -> dict[str, Any]:
    """name -> value of the function app's siteConfig.appSettings (values as parsed)."""
    fa = module("functionapp")
    site = dict(resources(fa, "Microsoft.Web/sites"))["site"]
    settings = body(site)["properties"]["siteConfig"]["appSettings"]
    assert isinstance(settings, list), "appSettings must be a literal list so it can be checked"
    names = [s["name"] for s in settings]
    assert len(names) == len(set(names)), f"duplicate app settings: {names}"
    return {s["name"]: s["value"] for s in settings}
