"""A wrong mapping file fails at load time with a message naming the file, the path inside it and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mappings import MappingError, load_mapping, load_mappings, parse_mapping

BASE = """\
flow: demo
direction: sales_to_fno
source:
  system: dataverse
  table: account
target:
  system: fno
  entity_set: CustomersV3
  key: [dataAreaId, CustomerAccount]
fields:
  - target: CustomerAccount
    source: accountnumber
  - target: OrganizationName
    source: name
  - target: AddressCountryRegionISOCode
    source: address1_country
    value_map: countries
  - target: CustomerGroupId
    value: "10"
  - target: SalesMemo
    source: description
    transform: upper
value_maps:
  countries:
    map: {United States: US}
"""


def load_text(tmp_path: Path, text: str, name: str = "demo.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_mapping(path)


def error_of(tmp_path: Path, text: str) -> tuple[str, str]:
    path = tmp_path / "demo.yaml"
    with pytest.raises(MappingError) as info:
        load_text(tmp_path, text)
    return str(info.value), str(path)


def test_the_base_document_is_valid(tmp_path):
    spec = load_text(tmp_path, BASE)
    assert spec.flow == "demo" and len(spec.fields) == 5


def test_unknown_transform_names_file_path_line_and_known_names(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("transform: upper", "transform: uper"))
    assert message.startswith(f"{file}: fields[4].transform: unknown transform 'uper' (known: boolean, country, date, ")
    assert "did you mean 'upper'?" in message
    assert message.endswith("(line 22)")


def test_transform_in_a_list_names_the_position(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("transform: upper", "transform: [trim, {truncate: 0}]"))
    assert message == (
        f"{file}: fields[4].transform: transform 'truncate' needs a whole number >= 1, got 0 (line 22)"
    )
    message, _ = error_of(tmp_path, BASE.replace("transform: upper", "transform: truncate"))
    assert "transform 'truncate' needs a number, e.g. {truncate: 60}" in message
    message, _ = error_of(tmp_path, BASE.replace("transform: upper", "transform: {upper: 3}"))
    assert "transform 'upper' takes no argument" in message


def test_undefined_value_map(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("value_map: countries", "value_map: country"))
    assert message == (
        f"{file}: fields[2].value_map: value map 'country' is not defined under value_maps; "
        "did you mean 'countries'? (line 17)"
    )


def test_misspelt_fno_field_gets_a_suggestion(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("- target: OrganizationName", "- target: OrganisationName"))
    assert message == (
        f"{file}: fields[1].target: 'OrganisationName' is not a field of F&O entity set CustomersV3; "
        "did you mean 'OrganizationName'? (line 13)"
    )


def test_misspelt_key_field_is_reported_once_per_place(tmp_path):
    text = BASE.replace("key: [dataAreaId, CustomerAccount]", "key: [dataAreaId, CustomerAcount]").replace(
        "- target: CustomerAccount", "- target: CustomerAcount"
    )
    message, file = error_of(tmp_path, text)
    lines = message.splitlines()
    assert lines == [
        f"{file}: fields[0].target: 'CustomerAcount' is not a field of F&O entity set CustomersV3; "
        "did you mean 'CustomerAccount'? (line 11)",
        f"{file}: target.key[1]: 'CustomerAcount' is not a field of F&O entity set CustomersV3; "
        "did you mean 'CustomerAccount'? (line 9)",
    ]


def test_case_only_difference_is_caught(tmp_path):
    message, _ = error_of(tmp_path, BASE.replace("- target: SalesMemo", "- target: salesmemo"))
    assert "'salesmemo' is not a field of F&O entity set CustomersV3; did you mean 'SalesMemo'?" in message


def test_entity_set_outside_the_catalogue_is_not_field_checked(tmp_path):
    text = BASE.replace("entity_set: CustomersV3", "entity_set: CustomersV9").replace(
        "target: OrganizationName", "target: AnyFieldAtAll"
    )
    assert load_text(tmp_path, text).target.entity_set == "CustomersV9"


def test_unknown_key_gets_a_did_you_mean(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("    source: name\n", "    source: name\n    requird: true\n"))
    assert message == f"{file}: fields[1]: unknown key 'requird'; did you mean 'required'? (line 15)"


def test_missing_key(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("  table: account\n", ""))
    assert message == f"{file}: source: missing 'table' (line 4)"


def test_wrong_enum_value_lists_the_allowed_ones(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("direction: sales_to_fno", "direction: sales_to_fo"))
    assert message.startswith(f"{file}: direction: Input should be 'sales_to_fno' or 'fno_to_sales'")
    assert "(got 'sales_to_fo')" in message and message.endswith("(line 2)")


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("  - target: CustomerGroupId\n", "  - target: [CustomerGroupId\n"))
    assert message.startswith(f"{file}: line ")
    assert ", column " in message


def test_duplicate_yaml_key_is_an_error(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("    source: name\n", "    source: name\n    source: fullname\n"))
    assert message == f"{file}: line 15, column 5: duplicate key 'source' (first at line 14)"


def test_duplicate_value_map_keys_differing_in_case(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("map: {United States: US}", "map: {USA: US, usa: US}"))
    assert message == (
        f"{file}: value_maps.countries.map: keys 'USA' and 'usa' are the same (case and spaces are ignored) (line 25)"
    )


def test_source_and_value_together(tmp_path):
    message, file = error_of(tmp_path, BASE.replace('    value: "10"\n', '    value: "10"\n    source: x\n'))
    assert message == f"{file}: fields[3]: give either 'source' or 'value', not both (line 18)"


def test_constant_with_a_transform(tmp_path):
    message, _ = error_of(tmp_path, BASE.replace('    value: "10"\n', '    value: "10"\n    transform: upper\n'))
    assert "fields[3]: a constant 'value' takes no transform" in message


def test_field_without_origin(tmp_path):
    message, _ = error_of(tmp_path, BASE.replace('    value: "10"\n', "    required: true\n"))
    assert "fields[3]: give 'source' (a column) or 'value' (a constant)" in message


def test_bad_source_path(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("source: name", "source: parent..name"))
    assert message.startswith(f"{file}: fields[1].source: 'parent..name' is not a column name")


def test_same_target_twice(tmp_path):
    message, _ = error_of(tmp_path, BASE.replace("target: SalesMemo", "target: OrganizationName"))
    assert "fields[4].target: 'OrganizationName' is already set by fields[1]" in message


def test_company_field_cannot_be_mapped(tmp_path):
    message, _ = error_of(tmp_path, BASE.replace("target: SalesMemo", "target: dataAreaId"))
    assert "fields[4].target: 'dataAreaId' is set by company routing; remove this field" in message


def test_key_field_must_be_produced(tmp_path):
    message, _ = error_of(tmp_path, BASE.replace("key: [dataAreaId, CustomerAccount]", "key: [dataAreaId, PartyNumber]"))
    assert "target.key[1]: key field 'PartyNumber' is not set by any field or company routing" in message


def test_direction_must_match_the_systems(tmp_path):
    message, _ = error_of(tmp_path, BASE.replace("direction: sales_to_fno", "direction: fno_to_sales"))
    assert "source.system: must be 'fno' for direction fno_to_sales" in message
    assert "target.system: must be 'dataverse' for direction fno_to_sales" in message


def test_unmapped_default_needs_a_default(tmp_path):
    message, file = error_of(tmp_path, BASE.replace("    map: {United States: US}\n",
                                                    "    map: {United States: US}\n    unmapped: default\n"))
    assert message == f"{file}: value_maps.countries: unmapped: default needs a 'default' value (line 25)"


def test_filter_condition_needs_exactly_one_test(tmp_path):
    text = BASE + "filter:\n  - field: statecode\n    equals: 0\n    in: [0, 1]\n"
    message, file = error_of(tmp_path, text)
    assert message == (
        f"{file}: filter[0]: give exactly one of equals, not_equals, in, not_in, not_empty, points_to (found equals, in) (line 27)"
    )
    message, _ = error_of(tmp_path, BASE + "filter:\n  - field: parentaccountid.name\n    not_empty: true\n")
    assert "filter column 'parentaccountid.name' must be a plain column name" in message


def test_all_problems_are_listed(tmp_path):
    text = BASE.replace("value_map: countries", "value_map: nope").replace("target: SalesMemo", "target: SalesMeme")
    message, _ = error_of(tmp_path, text)
    assert len(message.splitlines()) == 2


def test_yaml_12_booleans_keep_norway_and_yes_as_text(tmp_path):
    text = BASE.replace("map: {United States: US}", "map: {Norway: NO, yes: on}").replace('value: "10"', "value: Yes")
    spec = load_text(tmp_path, text)
    assert spec.value_maps["countries"].map == {"Norway": "NO", "yes": "on"}
    assert spec.fields[3].value == "Yes"
    # `true` stays a boolean, which a text field of F&O cannot take: refused at load, naming field and type.
    with pytest.raises(MappingError, match=r"fields\[3\]\.value: True does not fit CustomerGroupId: True is a bool"):
        load_text(tmp_path, BASE.replace('value: "10"', "value: true"))


def test_dates_stay_text(tmp_path):
    spec = load_text(tmp_path, BASE.replace('value: "10"', "value: 2020-01-01"))
    assert spec.fields[3].value == "2020-01-01"


def test_not_a_mapping_document(tmp_path):
    message, file = error_of(tmp_path, "- just\n- a list\n")
    assert message == f"{file}: a mapping file is a YAML mapping (flow:, direction:, ...)"


def test_unreadable_file(tmp_path):
    with pytest.raises(MappingError, match="missing.yaml: cannot read"):
        load_mapping(tmp_path / "missing.yaml")


def test_load_mappings_rejects_duplicate_flow_names(tmp_path):
    (tmp_path / "a.yaml").write_text(BASE, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(BASE, encoding="utf-8")
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert str(info.value) == f"{tmp_path / 'b.yaml'}: flow: flow 'demo' is already defined in {tmp_path / 'a.yaml'}"


def test_load_mappings_reports_every_bad_file(tmp_path):
    (tmp_path / "a.yaml").write_text(BASE.replace("transform: upper", "transform: uper"), encoding="utf-8")
    (tmp_path / "b.yml").write_text(BASE.replace("flow: demo", "flow: other").replace("value_map: countries",
                                                                                        "value_map: x"), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a mapping", encoding="utf-8")
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{tmp_path / 'a.yaml'}: fields[4].transform: unknown transform 'uper'")
    assert lines[1].startswith(f"{tmp_path / 'b.yml'}: fields[2].value_map: value map 'x' is not defined")


def test_load_mappings_needs_a_directory(tmp_path):
    with pytest.raises(MappingError, match="not a directory"):
        load_mappings(tmp_path / "nope")


def test_parse_mapping_names_the_given_file():
    with pytest.raises(MappingError) as info:
        parse_mapping(BASE.replace("flow: demo", "flow: Demo Flow"), "mappings/demo.yaml")
    assert str(info.value).startswith("mappings/demo.yaml: flow: String should match pattern")
    assert info.value.file == "mappings/demo.yaml"
    assert info.value.problems[0].path == "flow"


def test_an_fno_source_names_its_key_fields_checked_against_the_catalogue() -> None:
    text = ("flow: products\ndirection: fno_to_sales\n"
            "source: {system: fno, table: mserp_ecoresreleaseddistinctproductcdsentity, "
            "entity_set: CDSReleasedDistinctProducts, key: [dataAreaId, ProductNumber]}\n"
            "target: {system: dataverse, entity_set: products, table: product, key: [productnumber]}\n"
            "fields:\n  - {target: productnumber, source: ProductNumber}\n")
    assert parse_mapping(text, "products.yaml").source.key == ["dataAreaId", "ProductNumber"]
    with pytest.raises(MappingError, match=r"source.key: an F&O source needs its key fields"):
        parse_mapping(text.replace(", key: [dataAreaId, ProductNumber]", ""), "products.yaml")
    with pytest.raises(MappingError, match=r"source.key\[1\]: .ProductNumbr. is not a field of F&O entity set CDSReleasedDistinctProducts; did you mean"):
        parse_mapping(text.replace("key: [dataAreaId, ProductNumber]", "key: [dataAreaId, ProductNumbr]"),
                      "products.yaml")
