"""mappings/quotes.yaml (P2C reference 5.1 / 5.2) and the document core's routing, without I/O: the header and line
mapping, the line filter on a related row, references, the registration of the line table (a Delete step with a
pre image of the parent lookup) and how each event finds its document's ledger record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from handlers import build_registry
from handlers.documents import DocumentSync, MappedDocument
from mappings import MappedRecord, MappingError, load_mappings, parse_mapping
from p2csync.envelopes import ChangeEvent
from p2csync.registration import IMAGETYPE_PRE, steps_for

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
QUOTE_ID = "9a0b0c0d-0000-4000-8000-00000000a001"


@dataclass(frozen=True)
class Ref:
    id: str
    logical_name: str
    name: str | None = None


@pytest.fixture(scope="module")
def spec():
    return load_mappings(MAPPINGS)["quotes"]


def header(**changes: Any) -> dict[str, Any]:
    return {"quoteid": QUOTE_ID, "modifiedon": datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
            "createdon": datetime(2026, 3, 2, 8, 0, tzinfo=UTC), "quotenumber": "QUO-01001",
            "name": "Bikes", "customerid": Ref("acc-1", "account"), "transactioncurrencyid": Ref("usd", "transactioncurrency"),
            "totalamount": Decimal("250.0000"), "shipto_line1": "1 Main St", "shipto_line2": "Suite 5",
            "shipto_postalcode": "98052", "shipto_city": "Redmond", "shipto_stateorprovince": "WA",
            "shipto_country": "U.S.A.", "shipto_name": None, "requestdeliveryby": None, "statecode": 1,
            "billto_line2": "Bill street", "billto_postalcode": "10001", **changes}


def line(**changes: Any) -> dict[str, Any]:
    return {"quotedetailid": "l1", "quoteid": Ref(QUOTE_ID, "quote"), "sequencenumber": 3,
            "productid": Ref("p1", "product"), "uomid": Ref("u1", "uom"), "quantity": Decimal("2.0000"),
            "priceperunit": Decimal("12.5000"), "manualdiscountamount": None, **changes}


RESOLVED = {"customerid.Account(accountnumber).Contact(msdynce_contactnumber)": "ACC-01000",
            "transactioncurrencyid.isocurrencycode": "USD"}
LINE_RESOLVED = {"quoteid.quotenumber": "QUO-01001", "productid.productnumber": "D0001", "uomid.name": "Primary Unit",
                 "productid.msdynce_ismaintainedexternally": True}


def test_the_header_follows_reference_5_1_with_the_decisions_written_in_the_file(spec) -> None:
    assert spec.filter_reason(header()) is None
    assert spec.filter_reason(header(statecode=0)) == "statecode is 0, expected 1"  # drafts are not synced
    mapped = spec.apply(header(), resolved=RESOLVED)
    assert mapped.key == {"dataAreaId": "usmf", "SalesQuotationNumber": "QUO-01001"}
    payload = mapped.payload
    assert payload["RequestingCustomerAccountNumber"] == "ACC-01000"
    assert payload["CurrencyCode"] == "USD"
    assert "QuotationTotalAmount" not in payload  # F&O calculates its totals (decision in quotes.yaml, row 10)
    assert payload["DeliveryAddressCountryRegionISOCode"] == "US"  # value map, then the ISO transform
    # rows 6 and 7: the ship-to street 2 and postal code, not the template's bill-to ones
    assert (payload["DeliveryAddressStreetNumber"], payload["DeliveryAddressZipCode"]) == ("Suite 5", "98052")
    assert payload["IsDeliveryAddressOrderSpecific"] == "Yes"
    assert payload["DeliveryAddressName"] == "Bikes"  # no ship-to name: the quote's name
    assert payload["RequestedShippingDate"] == "2026-03-02T00:00:00Z"  # no Due By: the day the quote was created
    undated = spec.apply(header(createdon=None), resolved=RESOLVED)
    assert undated.payload["RequestedShippingDate"] == "2020-01-01T00:00:00Z"  # documented default, with a zone
    due = spec.apply(header(requestdeliveryby=datetime(2026, 4, 1, 15, 30, tzinfo=UTC)), resolved=RESOLVED)
    assert due.payload["RequestedShippingDate"] == "2026-04-01T00:00:00Z"  # a date: F&O plans by day
    assert spec.apply(header(shipto_country=None), resolved=RESOLVED).payload[
        "DeliveryAddressCountryRegionISOCode"] == "US"  # blank -> US (documented)


def test_a_line_follows_reference_5_2_and_its_product_must_be_externally_maintained(spec) -> None:
    assert [r.path for r in spec.lookups(line(), line="quote_lines")] == [
        "quoteid.quotenumber", "productid.productnumber", "uomid.name", "productid.msdynce_ismaintainedexternally"]
    assert spec.filter_reason(line(), line="quote_lines", resolved=LINE_RESOLVED) is None
    sales_made = {**LINE_RESOLVED, "productid.msdynce_ismaintainedexternally": False}
    assert spec.filter_reason(line(), line="quote_lines", resolved=sales_made) == (
        "productid.msdynce_ismaintainedexternally is False, expected True")
    assert spec.line("quote_lines").on_filtered == "skip_document"
    mapped = spec.apply_line("quote_lines", line(), company="usmf", resolved=LINE_RESOLVED)
    assert mapped.key == {"dataAreaId": "usmf", "SalesQuotationNumber": "QUO-01001", "LineCreationSequenceNumber": 3}
    assert mapped.payload["ProductNumber"] == "D0001" and mapped.payload["SalesUnitSymbol"] == "ea"
    assert mapped.payload["RequestedSalesQuantity"] == Decimal("2.0000")
    assert mapped.payload["TotalDiscountAmount"] == 0  # no manual discount: none in F&O either
    assert [(r.field, r.entity_set, r.key_field) for r in spec.references] == [
        ("RequestingCustomerAccountNumber", "CustomersV3", "CustomerAccount")]
    assert [(r.field, r.entity_set) for r in spec.line("quote_lines").references] == [
        ("ProductNumber", "CDSReleasedDistinctProducts")]


def test_references_and_lookup_filters_are_checked_when_the_file_loads() -> None:
    text = (MAPPINGS / "quotes.yaml").read_text(encoding="utf-8")
    with pytest.raises(MappingError) as info:
        parse_mapping(text.replace("key_field: CustomerAccount", "key_field: CustomerAcount"), "quotes.yaml")
    assert "references[0].key_field: 'CustomerAcount' is not a field of F&O entity set CustomersV3; did you mean " \
           "'CustomerAccount'?" in str(info.value)
    with pytest.raises(MappingError, match=r"references\[0\]\.field: 'ProductNumbr' is not set by any field"):
        parse_mapping(text.replace("- field: ProductNumber", "- field: ProductNumbr"), "quotes.yaml")
    with pytest.raises(MappingError, match="lookup paths are read for line filters only"):
        parse_mapping(text.replace("{field: statecode, equals: 1}", "{field: customerid.statecode, equals: 0}"),
                      "quotes.yaml")


def test_the_line_table_is_registered_with_a_pre_image_on_delete(spec) -> None:
    steps = {(s.table, s.message): s for s in steps_for(spec)}
    assert set(steps) == {("quote", "Create"), ("quote", "Update"), ("quote", "Delete"),
                          ("quotedetail", "Create"), ("quotedetail", "Update"), ("quotedetail", "Delete")}
    create = steps[("quotedetail", "Create")].image
    assert create is not None and "quoteid" in create.attributes and "modifiedon" in create.attributes
    delete = steps[("quotedetail", "Delete")].image
    assert delete is not None
    assert (delete.imagetype, delete.messagepropertyname, delete.attributes) == (IMAGETYPE_PRE, "Target",
                                                                                 ["quoteid", "modifiedon"])
    assert steps[("quote", "Delete")].image is None  # a header Delete frees the number; it reads nothing


def _event(entity: str, record_id: str, message: str, *, attributes: dict[str, Any] | None = None,
           pre: dict[str, Any] | None = None) -> ChangeEvent:
    return ChangeEvent(source="dataverse", entity=entity, record_id=record_id, message_name=message,
                       source_message_name=message, dedupe_key=f"{entity}:{record_id}:{message}:op", version=None,
                       attributes=attributes or {}, pre_images={"p2c": pre} if pre else {}, is_complete=False,
                       raw_size=10)


def test_every_event_of_a_quote_names_the_quote_s_ledger_record() -> None:
    registry = build_registry(load_mappings(MAPPINGS))
    quote = _event("quote", QUOTE_ID, "Update")
    created = _event("quotedetail", "l1", "Create", attributes={"quoteid": Ref(QUOTE_ID.upper(), "quote")})
    deleted = _event("quotedetail", "l2", "Delete", pre={"quoteid": Ref(QUOTE_ID, "quote")})
    trimmed = _event("quotedetail", "l3", "Update")  # a payload without its images: the line's own record
    handler = registry.route(quote)
    assert isinstance(handler, DocumentSync)
    assert {registry.route(e) for e in (created, deleted, trimmed)} == {handler}
    assert [handler.record_key(e) for e in (quote, created, deleted)] == [f"quotes:quote:{QUOTE_ID}"] * 3
    assert handler.record_key(trimmed) == "quotes:quotedetail:l3"


def test_the_document_digest_ignores_line_order_but_not_line_content() -> None:
    head = MappedRecord(key={"SalesQuotationNumber": "Q"}, payload={"SalesQuotationNumber": "Q"})
    one = MappedRecord(key={"LineCreationSequenceNumber": 1}, payload={"LineCreationSequenceNumber": 1, "Qty": 1})
    two = MappedRecord(key={"LineCreationSequenceNumber": 2}, payload={"LineCreationSequenceNumber": 2, "Qty": 1})
    changed = MappedRecord(key=two.key, payload={**two.payload, "Qty": 2})
    digest = MappedDocument(head, {"quote_lines": [one, two]}).digest()
    assert digest == MappedDocument(head, {"quote_lines": [two, one]}).digest()
    assert digest != MappedDocument(head, {"quote_lines": [one, changed]}).digest()
    assert digest != MappedDocument(head, {"quote_lines": [one]}).digest()
