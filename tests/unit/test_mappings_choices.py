"""Choice labels in mapping files ({label: Active}), without I/O: the syntax in filters, value maps and constants,
the load-time checks (naming file and field), the options read from a Web API attribute definition, and the
resolution that names the file, the place, the label and the labels that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from mappings import MappedValueError, MappingError, load_mappings, parse_mapping
from mappings.choices import (
    ChoiceLabel, ChoiceLabelError, ChoiceOption, ChoiceOptions, column_key, options_from_metadata,
)

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
DRAFT, ACTIVE, CONFIRMED, CANCELLED = 192350000, 192350001, 192350002, 192350011
PROCESSING = ChoiceOptions("salesorder", "msdynce_processingstatus", (
    ChoiceOption(DRAFT, ("Draft", "Entwurf")), ChoiceOption(ACTIVE, ("Active", "Aktiv")),
    ChoiceOption(CONFIRMED, ("Confirmed",)), ChoiceOption(CANCELLED, ("Cancelled",))))
STATE = ChoiceOptions("salesorder", "statecode", (ChoiceOption(0, ("Active",)), ChoiceOption(1, ("Submitted",))))
OPTIONS = {column_key("salesorder", "msdynce_processingstatus"): PROCESSING, column_key("salesorder", "statecode"): STATE}

SALES_TO_FNO = """\
flow: orders_out
direction: sales_to_fno
source: {system: dataverse, table: salesorder, entity_set: salesorders, id_column: salesorderid}
target: {system: fno, entity_set: CDSSalesOrderHeaders, key: [dataAreaId, SalesOrderNumber]}
company: {default: usmf}
filter:
  - {field: statecode, equals: {label: active}}
  - {field: msdynce_processingstatus, in: [{label: Active}, {label: Confirmed}, 5]}
  - any:
      - {field: msdynce_processingstatus, not_equals: {label: Cancelled}}
fields:
  - {target: SalesOrderNumber, source: ordernumber, required: true}
"""

FNO_TO_SALES = """\
flow: orders_back
direction: fno_to_sales
source: {system: fno, table: SalesOrderHeaderCDSEntity, entity_set: CDSSalesOrderHeaders, key: [dataAreaId, SalesOrderNumber]}
target: {system: dataverse, entity_set: salesorders, table: salesorder, key: [ordernumber]}
fields:
  - {target: ordernumber, source: SalesOrderNumber, required: true}
  - {target: msdynce_processingstatus, source: SalesOrderProcessingStatus, value_map: processing}
  - {target: statecode, value: {label: Active}}
value_maps:
  processing:
    unmapped: default
    default: {label: Draft}
    map:
      Confirmed: {label: Confirmed}
      Invoiced: 192350004
"""


def test_labels_in_a_filter_are_listed_with_their_column_and_place() -> None:
    spec = parse_mapping(SALES_TO_FNO, "orders_out.yaml")
    uses = [(u.table, u.column, u.label.label, u.where) for u in spec.choice_uses()]
    assert uses == [("salesorder", "statecode", "active", "filter[0].equals"),
                    ("salesorder", "msdynce_processingstatus", "Active", "filter[1].in[0]"),
                    ("salesorder", "msdynce_processingstatus", "Confirmed", "filter[1].in[1]"),
                    ("salesorder", "msdynce_processingstatus", "Cancelled", "filter[2].any[0].not_equals")]


def test_a_resolved_filter_compares_the_environment_s_values() -> None:
    spec = parse_mapping(SALES_TO_FNO, "orders_out.yaml")
    assert not spec.choices_resolved
    with pytest.raises(MappedValueError, match=r"choice label \{label: active\} was not resolved"):
        spec.filter_reason({"statecode": 0, "msdynce_processingstatus": ACTIVE})
    spec.resolve_choices(OPTIONS)
    assert spec.choices_resolved
    assert spec.filter_reason({"statecode": 0, "msdynce_processingstatus": ACTIVE}) is None
    assert spec.filter_reason({"statecode": 0, "msdynce_processingstatus": 5}) is None  # a plain number still works
    assert spec.filter_reason({"statecode": 0, "msdynce_processingstatus": DRAFT}) == (
        f"msdynce_processingstatus is {DRAFT}, expected one of Active ({ACTIVE}), Confirmed ({CONFIRMED}), 5")
    assert spec.filter_reason({"statecode": 1, "msdynce_processingstatus": ACTIVE}) == (
        "statecode is 1, expected active (0)")
    assert spec.filter_reason({"statecode": 0, "msdynce_processingstatus": 1}) is not None  # an invented number


def test_a_label_in_another_language_names_the_same_option() -> None:
    spec = parse_mapping(SALES_TO_FNO.replace("{label: Active}, ", "{label: Aktiv}, "), "orders_out.yaml")
    spec.resolve_choices(OPTIONS)
    assert spec.filter_reason({"statecode": 0, "msdynce_processingstatus": ACTIVE}) is None


def test_an_unknown_label_names_file_place_column_label_and_the_labels_that_exist() -> None:
    spec = parse_mapping(SALES_TO_FNO.replace("{label: Confirmed}", "{label: Confirmd}"), "mappings/orders_out.yaml")
    with pytest.raises(ChoiceLabelError) as info:
        spec.resolve_choices(OPTIONS)
    assert str(info.value) == (
        "mappings/orders_out.yaml: filter[1].in[1]: salesorder.msdynce_processingstatus has no option labelled "
        "'Confirmd' (did you mean 'Confirmed'?); its options: Draft (192350000), Active (192350001), "
        "Confirmed (192350002), Cancelled (192350011)")
    assert isinstance(info.value, MappingError) and not spec.choices_resolved


def test_a_label_two_options_share_and_a_column_that_is_no_choice_are_refused() -> None:
    twice = ChoiceOptions("salesorder", "statecode", (ChoiceOption(0, ("Active",)), ChoiceOption(7, ("active",))))
    spec = parse_mapping(SALES_TO_FNO, "o.yaml")
    with pytest.raises(ChoiceLabelError, match=r"o.yaml: filter\[0\].equals: salesorder.statecode has 2 options "
                                               r"labelled 'active' \(0, 7\); write the value instead"):
        spec.resolve_choices({**OPTIONS, column_key("salesorder", "statecode"): twice})
    missing = ChoiceOptions("salesorder", "statecode", (), found=False)
    with pytest.raises(ChoiceLabelError, match="salesorder.statecode is not a choice column in this environment"):
        spec.resolve_choices({**OPTIONS, column_key("salesorder", "statecode"): missing})


def test_labels_written_to_a_dataverse_choice_column_become_values() -> None:
    spec = parse_mapping(FNO_TO_SALES, "orders_back.yaml")
    assert sorted((u.column, u.label.label, u.where) for u in spec.choice_uses()) == [
        ("msdynce_processingstatus", "Confirmed", "value_maps.processing.map.Confirmed"),
        ("msdynce_processingstatus", "Draft", "value_maps.processing.default"),
        ("statecode", "Active", "fields[2].value")]
    spec.resolve_choices(OPTIONS)
    row = {"dataAreaId": "usmf", "SalesOrderNumber": "SO-1"}
    assert spec.apply({**row, "SalesOrderProcessingStatus": "Confirmed"}).payload == {
        "ordernumber": "SO-1", "msdynce_processingstatus": CONFIRMED, "statecode": 0}
    assert spec.apply({**row, "SalesOrderProcessingStatus": "Invoiced"}).payload["msdynce_processingstatus"] \
        == 192350004  # a plain number in a value map
    assert spec.apply({**row, "SalesOrderProcessingStatus": "Picked"}).payload["msdynce_processingstatus"] == DRAFT


def test_an_unresolved_label_is_never_written_as_text() -> None:
    spec = parse_mapping(FNO_TO_SALES, "orders_back.yaml")
    with pytest.raises(MappedValueError, match=r"orders_back: msdynce_processingstatus: choice label "
                                               r"\{label: Confirmed\} was not resolved"):
        spec.apply({"dataAreaId": "usmf", "SalesOrderNumber": "SO-1", "SalesOrderProcessingStatus": "Confirmed"})


@pytest.mark.parametrize(("written", "reason"), [
    ("{lable: Active}", "a choice option named by its label is written {label: Active} (got {'lable': 'Active'})"),
    ("{label: ''}", "a choice option named by its label is written {label: Active} (got {'label': ''})"),
    ("{label: 3}", "a choice option named by its label is written {label: Active} (got {'label': 3})"),
    ("{label: Active, value: 2}", "a choice option named by its label is written {label: Active}"),
])
def test_a_misspelt_label_is_refused_at_load_naming_file_and_field(written: str, reason: str) -> None:
    text = SALES_TO_FNO.replace("equals: {label: active}", f"equals: {written}")
    with pytest.raises(MappingError) as info:
        parse_mapping(text, "mappings/orders_out.yaml")
    assert str(info.value).startswith(f"mappings/orders_out.yaml: filter[0].equals: {reason}")
    assert str(info.value).endswith("(line 7)")


def test_labels_where_no_dataverse_choice_is_compared_or_written_are_refused_at_load() -> None:
    with pytest.raises(MappingError) as info:  # F&O -> Sales: the filter tests an F&O field
        parse_mapping(FNO_TO_SALES + "filter:\n  - {field: SalesOrderProcessingStatus, equals: {label: Active}}\n",
                      "back.yaml")
    assert "back.yaml: filter[0].equals: {label: Active} names a Dataverse choice option, but the source is F&O" \
        in str(info.value)
    with pytest.raises(MappingError) as info:  # a related row's column
        parse_mapping(SALES_TO_FNO.replace("field: statecode,", "field: customerid.statecode,"), "out.yaml")
    assert "'customerid.statecode' is a column of a related row" in str(info.value)
    with pytest.raises(MappingError) as info:  # written to an F&O field
        parse_mapping(SALES_TO_FNO + "  - {target: CustomersOrderReference, value: {label: Active}}\n", "out.yaml")
    assert "out.yaml: fields[1].value: {label: Active} names a Dataverse choice option, but " \
           "'CustomersOrderReference' is an F&O field" in str(info.value)
    no_table = FNO_TO_SALES.replace(", table: salesorder, key", ", key")
    with pytest.raises(MappingError, match=r"back.yaml: value_maps.processing.map.Confirmed: \{label: Confirmed\}: "
                                           r"a choice label needs the target's Dataverse table \(target.table\)"):
        parse_mapping(no_table.replace("  - {target: statecode, value: {label: Active}}\n", ""), "back.yaml")


def test_the_orders_mapping_names_the_activated_status_by_its_label() -> None:
    spec = load_mappings(MAPPINGS)["orders"]
    [use] = spec.choice_uses()
    assert (use.table, use.column, use.label, use.where) == (
        "salesorder", "msdynce_processingstatus", ChoiceLabel(label="Active"), "filter[1].equals")


def test_options_are_read_from_a_web_api_attribute_definition() -> None:
    """The shape of "Retrieve schema definitions by name" (Web API): a global choice has its options under
    GlobalOptionSet (OptionSet may be null); each label: UserLocalizedLabel first, then LocalizedLabels."""
    def option(value: int, *labels: tuple[str, int]) -> dict[str, object]:
        localized = [{"Label": text, "LanguageCode": code} for text, code in labels]
        return {"Value": value, "Label": {"LocalizedLabels": localized, "UserLocalizedLabel": localized[0]}}

    body = {"LogicalName": "msdynce_processingstatus", "OptionSet": None,
            "GlobalOptionSet": {"Options": [option(DRAFT, ("Draft", 1033), ("Entwurf", 1031)),
                                            option(ACTIVE, ("Active", 1033))]}}
    options = options_from_metadata("salesorder", "msdynce_processingstatus", body)
    assert options.options == (ChoiceOption(DRAFT, ("Draft", "Entwurf")), ChoiceOption(ACTIVE, ("Active",)))
    assert options.values_for(" entwurf ") == [DRAFT] and options.values_for("Confirmed") == []
    local = options_from_metadata("salesorder", "statecode", {"OptionSet": {"Options": [option(0, ("Active", 1033))]},
                                                              "GlobalOptionSet": None})
    assert local.options == (ChoiceOption(0, ("Active",)),)
    unlabelled = options_from_metadata("t", "c", {"OptionSet": {"Options": [{"Value": 3, "Label": {
        "LocalizedLabels": [], "UserLocalizedLabel": None}}]}})
    assert unlabelled.options == (ChoiceOption(3, ()),) and unlabelled.known() == "3 (3)"
