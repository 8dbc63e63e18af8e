"""``python -m mappings schema`` prints the JSON Schema of mapping files; ``python -m mappings check [dir]``
loads and validates every mapping file of a directory (default: this package's directory)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import MappingError, load_mappings, mapping_json_schema_text


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "schema":
        sys.stdout.write(mapping_json_schema_text())
        return 0
    if command == "check":
        directory = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent
        try:
            specs = load_mappings(directory)
        except MappingError as exc:
            print(exc, file=sys.stderr)
            return 1
        for name, spec in sorted(specs.items()):
            print(f"{name}: {spec.direction}, {spec.source.table} -> {spec.target.entity_set}, {len(spec.fields)} fields")
        return 0
    print("usage: python -m mappings [schema | check [directory]]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
