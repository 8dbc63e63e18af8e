"""Applying mappings: value maps, transforms, empties, filters, lookups, company routing, lines, hashing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from mappings import MappedValueError, canonical_json, parse_mapping, payload_hash, to_json_ready
from mappings.model import default_entity_set


@dataclass(frozen=True)
class Ref:
    id: str
    logical_name: str
    name: str | None = None


HEADER = """\
flow: demo
direction: sales_to_fno
source: {system: dataverse, table: quote, entity_set: quotes}
target: {system: fno, entity_set: SomeEntity, key: [dataAreaId, Number]}
company: {default: USMF}
"""


def spec_with(fields: str, extra: str = ""):
    return parse_mapping(HEADER + "fields:\n  - {target: Number, source: number}\n" + fields + extra, "demo.yaml")


def one(spec, record, **kw):
    record = {"number": "Q-1", **record}
    return spec.apply(record, **kw).payload


# ---------------------------------------------------------------------------------------------------------------
# value maps
# ---------------------------------------------------------------------------------------------------------------

MAPS = """\
value_maps:
  strict: {map: {Active: A, 0: zero, true: yes-bool}, unmapped: error}
  fallback: {map: {Active: A}, unmapped: default, default: OTHER}
  passthrough: {map: {Active: A}, unmapped: keep}
  to_null: {map: {Gone: null}, unmapped: keep}
"""


@pytest.mark.parametrize(
    ("map_name", "value", "expected"),
    [
        ("strict", "Active", "A"),
        ("strict", "  active ", "A"),
        ("strict", 0, "zero"),
        ("strict", Decimal("0.00"), "zero"),
        ("strict", True, "yes-bool"),
        ("fallback", "Draft", "OTHER"),
        ("fallback", "ACTIVE", "A"),
        ("passthrough", "Draft", "Draft"),
        ("passthrough", 7, 7),
    ],
)
def test_value_map_modes(map_name, value, expected):
    spec = spec_with(f"  - {{target: Status, source: status, value_map: {map_name}}}\n", MAPS)
    assert one(spec, {"status": value})["Status"] == expected


def test_unmapped_error_names_flow_field_source_and_value():
    spec = spec_with("  - {target: Status, source: status, value_map: strict}\n", MAPS)
    with pytest.raises(MappedValueError) as info:
        one(spec, {"status": "Draft"})
    assert str(info.value) == "demo: Status <- status: 'Draft' is not in value map 'strict'"
    # False is not 0: booleans and numbers do not mix
    with pytest.raises(MappedValueError):
        one(spec, {"status": False})


def test_a_map_value_of_null_counts_as_empty():
    spec = spec_with("  - {target: Status, source: status, value_map: to_null, default: fallback}\n", MAPS)
    assert one(spec, {"status": "Gone"})["Status"] == "fallback"


# ---------------------------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transform", "value", "expected"),
    [
        ("upper", "usd", "USD"),
        ("lower", "EN-US", "en-us"),
        ("trim", "  x  ", "x"),
        ("{truncate: 3}", "abcdef", "abc"),
        ("[trim, upper, {truncate: 2}]", "  abc ", "AB"),
        ("string", Decimal("100.50"), "100.50"),
        ("string", 42, "42"),
        ("string", True, "true"),
        ("decimal", "12.30", Decimal("12.30")),
        ("decimal", 5, Decimal(5)),
        ("decimal", 0.1, Decimal("0.1")),
        ("integer", Decimal("250"), 250),
        ("integer", "17", 17),
        ("boolean", "Yes", True),
        ("boolean", 0, False),
        ("invert", False, True),
        ("[invert, noyes]", True, "No"),
        ("noyes", True, "Yes"),
        ("noyes", "false", "No"),
        # An F&O target: F&O has only Edm.DateTimeOffset, so a date is written as midnight UTC.
        ("date", datetime(2024, 5, 31, 23, 30, tzinfo=timezone(timedelta(hours=-2))), "2024-06-01T00:00:00Z"),
        ("date", date(2024, 5, 31), "2024-05-31T00:00:00Z"),
        ("date", "2024-05-31T10:00:00Z", "2024-05-31T00:00:00Z"),
        ("datetime", datetime(2024, 5, 31, 12, 0, 5, 999, tzinfo=timezone(timedelta(hours=2))), "2024-05-31T10:00:05Z"),
        ("datetime", datetime(2024, 5, 31, 10, 0), "2024-05-31T10:00:00Z"),
        ("datetime", date(2024, 5, 31), "2024-05-31T00:00:00Z"),
        ("datetime", "2024-05-31T10:00:00+01:00", "2024-05-31T09:00:00Z"),
    ],
)
def test_transforms(transform, value, expected):
    spec = spec_with(f"  - target: Out\n    source: value\n    transform: {transform}\n")
    result = one(spec, {"value": value})["Out"]
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("transform", "value", "reason"),
    [
        ("decimal", "12,5", "transform 'decimal': '12,5' is not a number"),
        ("decimal", True, "transform 'decimal': True is not a number"),
        ("integer", Decimal("2.5"), "transform 'integer': Decimal('2.5') is not a whole number"),
        ("noyes", "maybe", "transform 'noyes': 'maybe' is not a yes/no value"),
        ("date", "31/05/2024", "transform 'date': '31/05/2024' is not an ISO date or date-time"),
    ],
)
def test_transform_failures_name_the_field(transform, value, reason):
    spec = spec_with(f"  - {{target: Out, source: value, transform: {transform}}}\n")
    with pytest.raises(MappedValueError) as info:
        one(spec, {"value": value})
    assert str(info.value) == f"demo: Out <- value: {reason}"
    assert (info.value.target, info.value.source) == ("Out", "value")


def test_value_map_runs_before_the_transform():
    spec = spec_with("  - {target: Out, source: value, value_map: passthrough, transform: upper}\n", MAPS)
    assert one(spec, {"value": "active"})["Out"] == "A"
    assert one(spec, {"value": "draft"})["Out"] == "DRAFT"


# ---------------------------------------------------------------------------------------------------------------
# empty values, defaults, constants, first non-empty
# ---------------------------------------------------------------------------------------------------------------


def test_on_empty_modes_and_file_default():
    fields = (
        "  - {target: Omitted, source: a, on_empty: omit}\n"
        "  - {target: Nulled, source: a, on_empty: 'null'}\n"
        "  - {target: Blank, source: a, on_empty: blank}\n"
        "  - {target: FileDefault, source: a}\n"
        "  - {target: Defaulted, source: a, default: 0}\n"
        "  - {target: Zero, source: z}\n"
        "  - {target: TrimmedAway, source: s, transform: trim}\n"
    )
    payload = one(spec_with(fields), {"a": None, "z": 0, "s": "   "})
    assert payload == {"dataAreaId": "usmf", "Number": "Q-1", "Nulled": None, "Blank": "", "FileDefault": None,
                       "Defaulted": 0, "Zero": 0, "TrimmedAway": None}
    payload = one(spec_with(fields, "on_empty: omit\n"), {"a": ""})
    assert "FileDefault" not in payload and payload["Nulled"] is None


def test_default_is_written_as_is():
    spec = spec_with("  - {target: Out, source: a, value_map: strict, transform: lower, default: KEEP}\n", MAPS)
    assert one(spec, {})["Out"] == "KEEP"


def test_constants_keep_their_type():
    fields = (
        "  - {target: Text, value: 'Yes'}\n  - {target: Flag, value: true}\n  - {target: Count, value: 3}\n"
        "  - {target: Rate, value: 0.25}\n  - {target: Nothing, value: null}\n"
    )
    payload = one(spec_with(fields), {})
    assert payload["Text"] == "Yes" and payload["Flag"] is True and payload["Count"] == 3
    assert payload["Rate"] == Decimal("0.25") and payload["Nothing"] is None


def test_first_non_empty_source():
    spec = spec_with("  - {target: Name, source: [address1_name, name, fullname], required: true}\n")
    assert one(spec, {"address1_name": " ", "name": "Contoso", "fullname": "x"})["Name"] == "Contoso"
    with pytest.raises(MappedValueError) as info:
        one(spec, {})
    assert str(info.value) == "demo: Name <- address1_name | name | fullname: required value is empty"


def test_empty_key_field_is_an_error_even_when_not_required():
    spec = spec_with("")
    with pytest.raises(MappedValueError, match=r"^demo: Number <- number: key field is empty$"):
        spec.apply({"number": ""})


def test_datetime_and_odd_values_come_out_json_ready():
    spec = spec_with("  - {target: When, source: when}\n  - {target: Id, source: id}\n")
    import uuid

    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    payload = one(spec, {"when": datetime(2024, 5, 31, 10, 0, tzinfo=UTC), "id": ident})
    assert payload["When"] == "2024-05-31T10:00:00Z" and payload["Id"] == str(ident)
    json.dumps(to_json_ready(payload))


def test_a_lookup_mapped_without_a_column_is_an_error():
    spec = spec_with("  - {target: Currency, source: transactioncurrencyid}\n")
    with pytest.raises(MappedValueError, match=r"Currency <- transactioncurrencyid: is a lookup .*transactioncurrencyid.name"):
        one(spec, {"transactioncurrencyid": Ref("c1", "transactioncurrency")})


# ---------------------------------------------------------------------------------------------------------------
# lookups
# ---------------------------------------------------------------------------------------------------------------

CUSTOMER = "customerid.Account(accountnumber).Contact(msdynce_contactnumber)"


def test_polymorphic_lookup_picks_the_column_by_table():
    spec = spec_with(
        f"  - {{target: Customer, source: '{CUSTOMER}', required: true}}\n"
        "  - {target: Currency, source: transactioncurrencyid.isocurrencycode}\n"
        "  - {target: Also, source: transactioncurrencyid.isocurrencycode, transform: lower}\n"
    )
    account = {"customerid": Ref("a1", "account"), "transactioncurrencyid": Ref("c1", "transactioncurrency")}
    requests = spec.lookups(account)
    assert [(r.path, r.table, r.id, r.column, r.entity_set) for r in requests] == [
        (CUSTOMER, "account", "a1", "accountnumber", "accounts"),
        ("transactioncurrencyid.isocurrencycode", "transactioncurrency", "c1", "isocurrencycode", "transactioncurrencies"),
    ]
    contact = {"customerid": Ref("k1", "contact")}
    assert [(r.column, r.entity_set) for r in spec.lookups(contact)] == [("msdynce_contactnumber", "contacts")]
    payload = one(spec, account, resolved={CUSTOMER: "ACC-1", "transactioncurrencyid.isocurrencycode": "EUR"})
    assert (payload["Customer"], payload["Currency"], payload["Also"]) == ("ACC-1", "EUR", "eur")


def test_lookup_to_an_uncovered_table_is_an_error():
    spec = spec_with(f"  - {{target: Customer, source: '{CUSTOMER}'}}\n")
    lead = {"customerid": Ref("l1", "lead")}
    assert spec.lookups(lead) == []
    with pytest.raises(MappedValueError) as info:
        one(spec, lead)
    assert str(info.value) == (
        f"demo: Customer <- {CUSTOMER}: customerid points to a 'lead' row; the path covers only Account, Contact"
    )


def test_lookup_values_may_come_from_the_record_or_be_empty():
    spec = spec_with("  - {target: Currency, source: transactioncurrencyid.isocurrencycode, on_empty: omit}\n")
    assert "Currency" not in one(spec, {"transactioncurrencyid": None})
    assert one(spec, {"transactioncurrencyid.isocurrencycode": "GBP"})["Currency"] == "GBP"
    ref = {"transactioncurrencyid": Ref("c1", "transactioncurrency")}
    assert "Currency" not in one(spec, ref, resolved={"transactioncurrencyid.isocurrencycode": None})
    with pytest.raises(MappedValueError, match="transactioncurrencyid is not a lookup"):
        one(spec, {"transactioncurrencyid": "c1"})


def test_lookup_entity_set_overrides():
    text = HEADER.replace("entity_set: quotes}", "entity_set: quotes, lookup_entity_sets: {uom: unitsofmeasure}}")
    spec = parse_mapping(text + "fields:\n  - {target: Number, source: number}\n  - {target: U, source: uomid.name}\n",
                         "d.yaml")
    assert spec.lookups({"uomid": Ref("u1", "uom")})[0].entity_set == "unitsofmeasure"


@pytest.mark.parametrize(
    ("table", "entity_set"),
    [("account", "accounts"), ("transactioncurrency", "transactioncurrencies"), ("customeraddress",
     "customeraddresses"), ("salesorder", "salesorders"), ("msdyn_workorder", "msdyn_workorders"), ("day", "days")],
)
def test_default_entity_set(table, entity_set):
    assert default_entity_set(table) == entity_set


# ---------------------------------------------------------------------------------------------------------------
# filters
# ---------------------------------------------------------------------------------------------------------------

FILTER = """\
filter:
  - {field: statecode, equals: 0}
  - {field: ordernumber, not_empty: true}
  - {field: statuscode, not_in: [4, 5]}
  - {field: customertypecode, in: [1, 3]}
  - {field: hasexternalonly, not_equals: false}
  - any:
      - {field: msdynce_ismaintainedexternally, equals: "Yes"}
      - {field: origin, equals: sales}
"""

PASSING = {"statecode": 0, "ordernumber": "O-1", "statuscode": 1, "customertypecode": 3, "hasexternalonly": True,
           "msdynce_ismaintainedexternally": "yes", "origin": "other"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"statecode": 1}, "statecode is 1, expected 0"),
        ({"statecode": None}, "statecode is empty, expected 0"),
        ({"statecode": Decimal("0.0")}, None),
        ({"ordernumber": " "}, "ordernumber is empty, expected it not to be empty"),
        ({"statuscode": 4}, "statuscode is 4, expected none of 4, 5"),
        ({"customertypecode": 2}, "customertypecode is 2, expected one of 1, 3"),
        ({"hasexternalonly": False}, "hasexternalonly is False, expected anything else"),
        ({"msdynce_ismaintainedexternally": "No", "origin": "SALES"}, None),
        ({"msdynce_ismaintainedexternally": "No"},
         "none of: msdynce_ismaintainedexternally is 'No', expected 'Yes'; origin is 'other', expected 'sales'"),
    ],
)
def test_filter_reasons(change, reason):
    spec = spec_with("", FILTER)
    assert spec.filter_reason({**PASSING, **change}) == reason


def test_filter_columns_are_fetched():
    spec = spec_with("", FILTER)
    assert {"statecode", "statuscode", "origin", "msdynce_ismaintainedexternally"} <= set(spec.source_columns())


def test_not_empty_false_means_must_be_empty():
    spec = spec_with("", "filter:\n  - {field: parentid, not_empty: false}\n")
    assert spec.filter_reason({"parentid": None}) is None
    assert spec.filter_reason({"parentid": Ref("p1", "account")}) == (
        "parentid is account p1, expected it to be empty"
    )


# ---------------------------------------------------------------------------------------------------------------
# company routing
# ---------------------------------------------------------------------------------------------------------------


def test_company_comes_from_the_default_company_parameter_before_the_file():
    spec = spec_with("")
    assert spec.apply({"number": "Q-1"}, default_company="DEMF").company == "demf"
    assert spec.apply({"number": "Q-1"}).company == "usmf"
    bare = parse_mapping(HEADER.replace("company: {default: USMF}\n", "")
                         + "fields:\n  - {target: Number, source: number}\n", "d.yaml")
    with pytest.raises(MappedValueError, match="no company: set FNO_DEFAULT_COMPANY or company.default"):
        bare.apply({"number": "Q-1"})


FNO_TO_SALES = """\
flow: orders_back
direction: fno_to_sales
source: {system: fno, table: SalesOrderHeaderCDSEntity, entity_set: CdsSalesOrderHeaders, key: [dataAreaId, SalesOrderNumber]}
target: {system: dataverse, entity_set: salesorders, table: salesorder, key: [ordernumber]}
filter:
  - {field: OrderingCustomerIsExternallyMaintained, equals: "Yes"}
fields:
  - {target: ordernumber, source: SalesOrderNumber, required: true}
  - {target: "customerid.Account(accountnumber).Contact(msdynce_contactnumber)", source: OrderingCustomerAccountNumber}
  - {target: msdynce_ismaintainedexternally, value: true}
  - {target: statecode, value: 0}
"""


def test_fno_to_sales_keeps_the_source_company_and_has_no_company_field():
    spec = parse_mapping(FNO_TO_SALES, "orders_back.yaml")
    mapped = spec.apply({"dataAreaId": "USMF", "SalesOrderNumber": "SO-1", "OrderingCustomerAccountNumber": "ACC-1"})
    assert mapped.company == "usmf"
    assert mapped.key == {"ordernumber": "SO-1"}
    assert mapped.payload == {
        "ordernumber": "SO-1",
        "customerid.Account(accountnumber).Contact(msdynce_contactnumber)": "ACC-1",
        "msdynce_ismaintainedexternally": True,
        "statecode": 0,
    }
    assert "dataAreaId" in spec.source_columns()
    assert spec.filter_reason({"OrderingCustomerIsExternallyMaintained": "No"}) == (
        "OrderingCustomerIsExternallyMaintained is 'No', expected 'Yes'"
    )


def test_fno_source_fields_are_checked_against_the_catalogue():
    from mappings import MappingError

    with pytest.raises(MappingError) as info:
        parse_mapping(FNO_TO_SALES.replace("source: SalesOrderNumber", "source: SalesOrderNumbr"), "o.yaml")
    assert "fields[0].source: 'SalesOrderNumbr' is not a field of F&O entity set CdsSalesOrderHeaders; " \
           "did you mean 'SalesOrderNumber'?" in str(info.value)
    with pytest.raises(MappingError, match="F&O records have no lookups"):
        parse_mapping(FNO_TO_SALES.replace("source: SalesOrderNumber", "source: Customer.name"), "o.yaml")


# ---------------------------------------------------------------------------------------------------------------
# lines
# ---------------------------------------------------------------------------------------------------------------

LINES = """\
flow: quotes
direction: sales_to_fno
source: {system: dataverse, table: quote, entity_set: quotes}
target: {system: fno, entity_set: CdsSalesQuotationHeaders, key: [dataAreaId, SalesQuotationNumber]}
fields:
  - {target: SalesQuotationNumber, source: quotenumber, required: true}
lines:
  - name: quote_lines
    source:
      table: quotedetail
      entity_set: quotedetails
      parent_column: quoteid
      sequence_column: sequencenumber
    target:
      entity_set: CdsSalesQuotationLines
      key: [dataAreaId, SalesQuotationNumber, LineCreationSequenceNumber]
    filter:
      - {field: producttypecode, not_equals: 5}
    fields:
      - {target: SalesQuotationNumber, source: quoteid.quotenumber, required: true}
      - {target: LineCreationSequenceNumber, source: sequencenumber, transform: integer, required: true}
      - {target: ProductNumber, source: productid.productnumber}
      - {target: RequestedSalesQuantity, source: quantity, transform: decimal}
"""


def test_lines_are_mapped_with_the_document_company():
    spec = parse_mapping(LINES, "quotes.yaml")
    line = {"quoteid": Ref("q1", "quote"), "productid": Ref("p1", "product"), "sequencenumber": 2,
            "quantity": Decimal("3.0000"), "producttypecode": 1}
    assert spec.filter_reason(line, line="quote_lines") is None
    assert spec.filter_reason({**line, "producttypecode": 5}, line="quote_lines") == (
        "producttypecode is 5, expected anything else"
    )
    assert [r.path for r in spec.lookups(line, line="quote_lines")] == ["quoteid.quotenumber", "productid.productnumber"]
    mapped = spec.apply_line("quote_lines", line, company="USMF",
                             resolved={"quoteid.quotenumber": "QUO-1", "productid.productnumber": "D0001"})
    assert mapped.key == {"dataAreaId": "usmf", "SalesQuotationNumber": "QUO-1", "LineCreationSequenceNumber": 2}
    assert mapped.payload["RequestedSalesQuantity"] == Decimal("3.0000")
    with pytest.raises(MappedValueError, match=r"^quotes.quote_lines: LineCreationSequenceNumber <- sequencenumber: "):
        spec.apply_line("quote_lines", {**line, "sequencenumber": None}, company="usmf",
                        resolved={"quoteid.quotenumber": "QUO-1", "productid.productnumber": "D0001"})
    with pytest.raises(KeyError):
        spec.line("nope")


def test_line_fields_are_checked_too():
    from mappings import MappingError

    with pytest.raises(MappingError) as info:
        parse_mapping(LINES.replace("target: ProductNumber", "target: ProductNumbr"), "quotes.yaml")
    assert "lines[0].fields[2].target: 'ProductNumbr' is not a field of F&O entity set CdsSalesQuotationLines; " \
           "did you mean 'ProductNumber'?" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# hashing and JSON
# ---------------------------------------------------------------------------------------------------------------


def test_payload_hash_is_stable_across_number_types_and_key_order():
    a = {"CreditLimit": Decimal("5000000.00"), "Name": "Contoso", "Count": 3, "Nested": {"b": 1, "a": [1.5, None]}}
    b = {"Nested": {"a": [Decimal("1.50"), None], "b": Decimal(1)}, "Count": 3.0, "Name": "Contoso",
         "CreditLimit": 5000000}
    assert payload_hash(a) == payload_hash(b)
    assert payload_hash({"x": 5000000}) == payload_hash({"x": 5000000.0}) == payload_hash({"x": Decimal("5E+6")})
    assert payload_hash({"x": Decimal("0.00")}) == payload_hash({"x": 0}) == payload_hash({"x": Decimal("-0")})
    assert len(payload_hash(a)) == 64


@pytest.mark.parametrize(
    ("left", "right"),
    [({"x": 1}, {"x": True}), ({"x": "1"}, {"x": 1}), ({"x": None}, {"x": ""}), ({"x": 1}, {"x": 1.01}),
     ({"x": 1}, {"x": 1, "y": None}), ({"a": "b"}, {"A": "b"})],
)
def test_payload_hash_tells_different_payloads_apart(left, right):
    assert payload_hash(left) != payload_hash(right)


def test_canonical_json_is_plain_and_sorted():
    text = canonical_json({"b": Decimal("1.10"), "a": "é", "c": datetime(2024, 1, 1, tzinfo=UTC), "d": [True]})
    assert text == '{"a":"é","b":1.1,"c":"2024-01-01T00:00:00Z","d":[true]}'
    assert json.loads(text)["b"] == 1.1


def test_canonical_strings_are_written_as_json_dumps_writes_them():
    """Hashes stored in ledgers must not change: strings (values unescaped beyond JSON's needs, keys ASCII-only)
    come out exactly as ``json.dumps`` wrote them before the fast path."""
    import random

    rng = random.Random(11)
    alphabet = [chr(i) for i in range(0x80)] + ["é", "\u2028", "\u0085", "\ufeff", "😀", "\ud800"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        assert canonical_json({text: text}) == "{" + json.dumps(text) + ":" + json.dumps(text, ensure_ascii=False) + "}"


def test_a_str_enum_is_hashed_by_its_str_as_before():
    import enum

    class Kind(str, enum.Enum):
        A = "a"

    assert canonical_json({"v": Kind.A}) == '{"v":' + json.dumps(str(Kind.A)) + "}"


def test_to_json_ready():
    ready = to_json_ready({"m": Decimal("5000000.0000"), "p": Decimal("12.50"), "d": date(2024, 5, 31),
                           "t": datetime(2024, 5, 31, 10, 0, tzinfo=UTC), "l": (Decimal("1"),), "s": "x"})
    assert ready == {"m": 5000000, "p": 12.5, "d": "2024-05-31", "t": "2024-05-31T10:00:00Z", "l": [1], "s": "x"}
    assert type(ready["m"]) is int
    json.dumps(ready)


def test_lookup_values_are_recognised_by_shape():
    from types import SimpleNamespace

    from mappings.values import _REF_CLASSES, is_entity_ref
    from p2csync.envelopes.dataverse import EntityRef

    ref = EntityRef(id="00000000-0000-0000-0000-000000000001", logical_name="account")
    assert is_entity_ref(ref) and type(ref) in _REF_CLASSES and is_entity_ref(ref)  # then from the class cache
    assert is_entity_ref(SimpleNamespace(id=1, logical_name="contact", name=None))
    assert not is_entity_ref(SimpleNamespace(id=1, name=None))  # no logical_name
    assert not is_entity_ref({"id": 1, "logical_name": "account", "name": None})
    assert not is_entity_ref("account") and not is_entity_ref(None)
