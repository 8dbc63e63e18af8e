"""Declarative mappings: the YAML mapping files of the flows and the engine that loads, validates and applies
them. Public API:

* ``load_mapping(path) -> MappingSpec``, ``load_mappings(directory) -> dict[str, MappingSpec]``
* ``MappingSpec.lookups(record)``, ``.filter_reason(record)``, ``.apply(record, *, resolved, default_company)``
* ``payload_hash(payload)``, ``to_json_ready(value)``, ``mapping_json_schema()``
* ``MappingError`` (bad file), ``MappedValueError`` (a record that cannot be mapped)
"""

from .engine import load_mapping, load_mappings, mapping_json_schema, mapping_json_schema_text, parse_mapping
from .errors import MappedValueError, MappingError, Problem
from .model import (
    CompanyRouting,
    Condition,
    FieldMap,
    LineSpec,
    LookupRequest,
    MappedRecord,
    MappingSpec,
    Reference,
    Source,
    Target,
    ValueMap,
)
from .transforms import TRANSFORMS
from .values import EntityRef, canonical_json, payload_hash, to_json_ready

__all__ = [
    "TRANSFORMS",
    "CompanyRouting",
    "Condition",
    "EntityRef",
    "FieldMap",
    "LineSpec",
    "LookupRequest",
    "MappedRecord",
    "MappedValueError",
    "MappingError",
    "MappingSpec",
    "Problem",
    "Reference",
    "Source",
    "Target",
    "ValueMap",
    "canonical_json",
    "load_mapping",
    "load_mappings",
    "mapping_json_schema",
    "mapping_json_schema_text",
    "parse_mapping",
    "payload_hash",
    "to_json_ready",
]
