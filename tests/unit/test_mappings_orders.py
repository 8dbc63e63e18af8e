"""mappings/orders.yaml (P2C reference 6.1 / 6.2) and the discount split of reference 6.6, without I/O: the header
and line mapping, the activation filter, the worked example (qty 3, $10.00 -> 3.33 and -0.01) with its edge cases,
the split's checks at load, the line table's registration and the routing of every event to its order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from handlers import build_registry
from handlers.orders import OrderSync
from mappings import MappedValueError, MappingError, load_mappings, parse_mapping
from mappings.choices import ChoiceOption, ChoiceOptions, column_key
from mappings.discounts import DiscountSplitError, LineDiscount, split_line_discount
from p2csync.envelopes import ChangeEvent
from p2csync.registration import IMAGETYPE_PRE, steps_for

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
ORDER_ID = "9a0b0c0d-0000-4000-8000-00000000b001"
#: An environment's processing status options: publisher-prefixed values, as a customer's P2C solution has them.
DRAFT, ACTIVE = 192350000, 192350001
PROCESSING = ChoiceOptions("salesorder", "msdynce_processingstatus",
                           (ChoiceOption(DRAFT, ("Draft",)), ChoiceOption(ACTIVE, ("Active",))))


@dataclass(frozen=True)
class Ref:
    id: str
    logical_name: str
    name: str | None = None


@pytest.fixture(scope="module")
def spec():
    spec = load_mappings(MAPPINGS)["orders"]
    spec.resolve_choices({column_key("salesorder", "msdynce_processingstatus"): PROCESSING})
    return spec


def header(**changes: Any) -> dict[str, Any]:
    return {"salesorderid": ORDER_ID, "modifiedon": datetime(2026, 3, 2, 10, 0, tzinfo=UTC), "ordernumber": "ORD-0101",
            "name": "Bikes for spring", "customerid": Ref("acc-1", "account"),
            "transactioncurrencyid": Ref("usd", "transactioncurrency"), "totalamount": Decimal("250.0000"),
            "shipto_line1": "1 Main St", "shipto_line2": "Suite 5", "shipto_postalcode": "98052",
            "shipto_city": "Redmond", "shipto_stateorprovince": "WA", "shipto_country": "U.S.A.", "shipto_name": None,
            "statecode": 0, "msdynce_processingstatus": ACTIVE, **changes}


def line(**changes: Any) -> dict[str, Any]:
    return {"salesorderdetailid": "l1", "salesorderid": Ref(ORDER_ID, "salesorder"), "sequencenumber": 3,
            "productid": Ref("p1", "product"), "uomid": Ref("u1", "uom"), "quantity": Decimal("3.0000"),
            "priceperunit": Decimal("12.5000"), "manualdiscountamount": Decimal("10.0000"), **changes}


RESOLVED = {"customerid.Account(accountnumber).Contact(msdynce_contactnumber)": "ACC-01000",
            "transactioncurrencyid.isocurrencycode": "USD"}
LINE_RESOLVED = {"salesorderid.ordernumber": "ORD-0101", "productid.productnumber": "D0001",
                 "uomid.name": "Primary Unit", "productid.msdynce_ismaintainedexternally": True}


# ------------------------------------------------------------------------------------------- discounts (6.6)

def test_the_worked_example_of_reference_6_6_splits_and_recombines() -> None:
    parts = split_line_discount(Decimal("10.00"), 3)
    assert parts == LineDiscount(per_unit=Decimal("3.33"), charge=Decimal("-0.01"))
    assert 3 * parts.per_unit - parts.charge == Decimal("10.00")  # F&O -> Sales: 3 x 3.33 + 0.01
    assert parts.total(3) == Decimal("10.00")


@pytest.mark.parametrize(("total", "quantity", "per_unit", "charge"), [
    ("20.00", "3", "6.66", "-0.02"),   # rounded toward zero: the remainder of a positive discount is never positive
    ("9.00", "3", "3.00", "0.00"),     # divides evenly: no charge
    ("10.00", "0", "0.00", "-10.00"),  # quantity 0: nothing to divide by, the whole discount is the charge
    ("10.00", None, "0.00", "-10.00"),  # quantity empty: as 0
    ("0", "3", "0.00", "0.00"),        # no discount
    (None, "3", "0.00", "0.00"),       # discount empty: as 0
    ("1.00", "0.3", "3.33", "0.00"),   # fractional quantity: 0.3 x 3.33 = 0.999 -> 1.00 at currency precision
    ("10.00", "2.5", "4.00", "0.00"),
    ("5.00", "0.7", "7.14", "0.00"),  # 0.7 x 7.14 = 4.998 -> 5.00
    ("-10.00", "3", "-3.33", "0.01"),  # a negative discount is mirrored
])
def test_edge_cases_keep_the_total(total: str | None, quantity: str | None, per_unit: str, charge: str) -> None:
    parts = split_line_discount(total, quantity)
    assert (parts.per_unit, parts.charge) == (Decimal(per_unit), Decimal(charge))
    assert parts.total(quantity or 0) == Decimal(total or 0)


def test_a_negative_quantity_and_a_non_number_are_refused_naming_the_value() -> None:
    with pytest.raises(DiscountSplitError, match="quantity -2 is negative"):
        split_line_discount("10", -2)
    with pytest.raises(DiscountSplitError, match="discount 'ten' is not a number"):
        split_line_discount("ten", 2)


# ------------------------------------------------------------------------------------------------ mapping

def test_the_header_follows_reference_6_1_and_only_activated_orders_pass(spec) -> None:
    assert spec.filter_reason(header()) is None
    assert spec.filter_reason(header(msdynce_processingstatus=DRAFT)) == \
        f"msdynce_processingstatus is {DRAFT}, expected Active ({ACTIVE})"
    assert spec.filter_reason(header(msdynce_processingstatus=None)) is not None  # never activated
    assert spec.filter_reason(header(statecode=2)) == "statecode is 2, expected 0"  # cancelled
    mapped = spec.apply(header(), resolved=RESOLVED)
    assert mapped.key == {"dataAreaId": "usmf", "SalesOrderNumber": "ORD-0101"}  # row 7: the Sales number
    payload = mapped.payload
    assert payload["OrderingCustomerAccountNumber"] == "ACC-01000"  # row 1
    assert payload["CustomersOrderReference"] == "Bikes for spring"  # row 11
    assert payload["CurrencyCode"] == "USD" and payload["OrderTotalAmount"] == Decimal("250.0000")
    assert (payload["DeliveryAddressStreet"], payload["DeliveryAddressStreetNumber"],
            payload["DeliveryAddressZipCode"], payload["DeliveryAddressCity"],
            payload["DeliveryAddressStateId"]) == ("1 Main St", "Suite 5", "98052", "Redmond", "WA")
    assert payload["DeliveryAddressCountryRegionISOCode"] == "US"
    assert spec.apply(header(shipto_country=None), resolved=RESOLVED).payload[
        "DeliveryAddressCountryRegionISOCode"] == "US"  # blank -> US (documented)
    assert payload["IsDeliveryAddressOrderSpecific"] == "Yes" and payload["DeliveryAddressName"] == "Bikes for spring"


def test_a_line_follows_reference_6_2_with_the_discount_split(spec) -> None:
    assert spec.filter_reason(line(), line="order_lines", resolved=LINE_RESOLVED) is None
    made_in_sales = {**LINE_RESOLVED, "productid.msdynce_ismaintainedexternally": False}
    assert spec.filter_reason(line(), line="order_lines", resolved=made_in_sales) is not None
    mapped = spec.apply_line("order_lines", line(), company="USMF", resolved=LINE_RESOLVED)
    assert mapped.key == {"dataAreaId": "usmf", "SalesOrderNumber": "ORD-0101", "LineCreationSequenceNumber": 3}
    payload = mapped.payload
    assert payload["ProductNumber"] == "D0001" and payload["OrderedSalesQuantity"] == Decimal("3.0000")
    assert payload["SalesUnitSymbol"] == "ea" and payload["SalesPrice"] == Decimal("12.5000")
    assert (payload["LineDiscountAmount"], payload["FixedPriceCharges"]) == (Decimal("3.33"), Decimal("-0.01"))
    assert "TotalDiscountAmount" not in payload  # split, not sent twice
    plain = spec.apply_line("order_lines", line(manualdiscountamount=None), company="usmf", resolved=LINE_RESOLVED)
    assert (plain.payload["LineDiscountAmount"], plain.payload["FixedPriceCharges"]) == (Decimal(0), Decimal(0))
    with pytest.raises(MappedValueError, match=r"orders\.order_lines: LineDiscountAmount <- TotalDiscountAmount / "
                                               r"OrderedSalesQuantity: quantity -1.0000 is negative"):
        spec.apply_line("order_lines", line(quantity=Decimal("-1.0000")), company="usmf", resolved=LINE_RESOLVED)


def test_without_the_split_the_total_goes_as_the_template_sent_it() -> None:
    text = (MAPPINGS / "orders.yaml").read_text(encoding="utf-8")
    block = text[text.index("    discount_split:"):text.index("value_maps:")]
    spec = parse_mapping(text.replace(block, "\n"), "orders.yaml")
    payload = spec.apply_line("order_lines", line(), company="usmf", resolved=LINE_RESOLVED).payload
    assert payload["TotalDiscountAmount"] == Decimal("10.0000") and "LineDiscountAmount" not in payload


def test_the_split_is_checked_when_the_file_loads() -> None:
    text = (MAPPINGS / "orders.yaml").read_text(encoding="utf-8")
    with pytest.raises(MappingError, match=r"discount_split\.remainder: 'SalesCharges' is not a field of F&O "
                                           r"entity set CDSSalesOrderLines"):
        parse_mapping(text.replace("remainder: FixedPriceCharges", "remainder: SalesCharges"), "orders.yaml")
    with pytest.raises(MappingError, match=r"discount_split\.quantity: 'Quantity' is not a target field"):
        parse_mapping(text.replace("quantity: OrderedSalesQuantity", "quantity: Quantity"), "orders.yaml")


# ------------------------------------------------------------------------------------------------ routing

def _event(entity: str, record_id: str, message: str, *, attributes: dict[str, Any] | None = None,
           pre: dict[str, Any] | None = None) -> ChangeEvent:
    return ChangeEvent(source="dataverse", entity=entity, record_id=record_id, message_name=message,
                       source_message_name=message, dedupe_key=f"{entity}:{record_id}:{message}:op", version=None,
                       attributes=attributes or {}, pre_images={"p2c": pre} if pre else {}, is_complete=False,
                       raw_size=10)


def test_every_event_of_an_order_names_the_order_s_ledger_record(spec) -> None:
    steps = {(s.table, s.message): s for s in steps_for(spec)}
    delete = steps[("salesorderdetail", "Delete")].image
    assert delete is not None and (delete.imagetype, delete.attributes) == (IMAGETYPE_PRE,
                                                                           ["salesorderid", "modifiedon"])
    registry = build_registry(load_mappings(MAPPINGS))
    order = _event("salesorder", ORDER_ID, "Update")
    created = _event("salesorderdetail", "l1", "Create", attributes={"salesorderid": Ref(ORDER_ID.upper(), "salesorder")})
    deleted = _event("salesorderdetail", "l2", "Delete", pre={"salesorderid": Ref(ORDER_ID, "salesorder")})
    handler = registry.route(order)
    assert isinstance(handler, OrderSync)
    assert {registry.route(e) for e in (created, deleted)} == {handler}
    assert [handler.record_key(e) for e in (order, created, deleted)] == [f"orders:salesorder:{ORDER_ID}"] * 3
