"""The committed JSON Schema (for editors) must match the models."""

from __future__ import annotations

import json
from pathlib import Path

from mappings import mapping_json_schema, mapping_json_schema_text

SCHEMA = Path(__file__).resolve().parents[2] / "mappings" / "mapping.schema.json"


def test_committed_schema_is_up_to_date():
    committed = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert committed == mapping_json_schema(), (
        "mappings/mapping.schema.json is out of date: run `make schema` "
        "(python -m p2csync schema > mappings/mapping.schema.json; or python -m mappings schema)"
    )


def test_schema_text_round_trips():
    assert json.loads(mapping_json_schema_text()) == mapping_json_schema()
    assert mapping_json_schema_text().endswith("}\n")


def test_schema_describes_the_format_for_editors():
    schema = mapping_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False
    assert {"flow", "direction", "source", "target", "fields"} <= set(schema["required"])
    field = schema["$defs"]["FieldMap"]
    assert field["additionalProperties"] is False
    transform = json.dumps(field["properties"]["transform"])
    for name in ("upper", "noyes", "datetime", "truncate"):
        assert name in transform
    assert schema["$defs"]["ValueMap"]["properties"]["unmapped"]["enum"] == ["error", "default", "keep"]
    assert "in" in schema["$defs"]["Condition"]["properties"]
