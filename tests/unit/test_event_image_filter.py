"""An F&O data event judged by its own values (FnOToSalesRecordSync.filtered_by_event): skipped without reading
F&O only when it shows, plainly, its row failing the mapping's filter; anything it does not show plainly -> read.
Also the mapping check of lines.source.header_filter_fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from handlers.orders_back import create_handler as orders_back
from handlers.products import create_handler as products
from mappings import load_mappings
from mappings.model import MappingSpec
from p2csync.envelopes import ChangeEvent
from p2csync.outcomes import Skipped

ROOT = Path(__file__).resolve().parents[2]
SPECS = load_mappings(ROOT / "mappings")
HEADER, LINE = "mserp_salesorderheadercdsentity", "mserp_salesorderlinecdsentity"
OPTION = 200000000  # an enum's option value on the virtual table; only its label says which symbol it is


def event(entity: str, message: str = "Create", values: dict[str, Any] | None = None,
          labels: dict[str, str] | None = None, pre: dict[str, Any] | None = None, key: bool = True) -> ChangeEvent:
    values = {**({"mserp_dataareaid": "usmf", "mserp_salesordernumber": "SO-1"} if key else {}), **(values or {})}
    return ChangeEvent(source="fno_data_event", entity=entity, record_id="9b3c5d1e-0000-4000-8000-000000000001",
                       message_name=message, source_message_name=f"OnExternal{message}d", dedupe_key="k",
                       version=None, attributes=values, formatted=labels or {},
                       pre_images={"PreImage": pre} if pre is not None else {}, is_complete=False, raw_size=1)


ACTIVE_LINE = {"values": {"mserp_salesorderprocessingstatus": OPTION, "mserp_aresalesordertotalsupdated": OPTION},
               "labels": {"mserp_salesorderprocessingstatus": "Active", "mserp_aresalesordertotalsupdated": "No"}}


def judged(e: ChangeEvent, flow: str = "orders_back") -> Skipped | None:
    handler = (orders_back() if flow == "orders_back" else products()).bind(SPECS[flow])
    return handler.filtered_by_event(e, SPECS[flow], "the order")


def test_a_line_of_an_active_order_is_skipped_by_its_own_values() -> None:
    skipped = judged(event(LINE, **ACTIVE_LINE))
    assert skipped is not None and skipped.reason == ("filtered out: SalesOrderProcessingStatus is 'Active', expected "
                                                      "anything else (as the Create event shows it; F&O not read)")


def test_the_line_entitys_own_name_for_a_header_field_is_used() -> None:
    skipped = judged(event(LINE, values={"mserp_aresalesordertotalsupdated": OPTION},
                           labels={"mserp_aresalesordertotalsupdated": "No"}))
    assert skipped is not None and "AreTotalsUpdated is 'No', expected 'Yes'" in skipped.reason


def test_a_header_event_is_judged_by_the_header_fields() -> None:
    skipped = judged(event(HEADER, values={"mserp_salesorderprocessingstatus": OPTION},
                           labels={"mserp_salesorderprocessingstatus": "Active"}))
    assert skipped is not None and "SalesOrderProcessingStatus is 'Active'" in skipped.reason


@pytest.mark.parametrize("label", ["Aktiv", "Open order", ""])
def test_a_label_that_is_not_a_symbol_the_filter_names_means_a_read(label: str) -> None:
    assert judged(event(LINE, values={"mserp_salesorderprocessingstatus": OPTION},
                        labels={"mserp_salesorderprocessingstatus": label})) is None


def test_a_translated_no_yes_label_means_a_read_but_no_decides() -> None:
    flags = {"mserp_orderingcustomerisexternallymaintained": OPTION}
    assert judged(event(LINE, values=flags, labels={"mserp_orderingcustomerisexternallymaintained": "Nein"})) is None
    skipped = judged(event(LINE, values=flags, labels={"mserp_orderingcustomerisexternallymaintained": "no"}))
    assert skipped is not None and "OrderingCustomerIsExternallyMaintained is 'No'" in skipped.reason


def test_a_passing_order_and_an_event_without_the_fields_are_read() -> None:
    confirmed = {"values": {"mserp_salesorderprocessingstatus": OPTION},
                 "labels": {"mserp_salesorderprocessingstatus": "Confirmed"}}  # not named by the filter: unknown
    assert judged(event(LINE, **confirmed)) is None
    assert judged(event(LINE)) is None


def test_an_update_shows_what_changed_over_its_pre_image_whose_options_carry_no_label() -> None:
    # unchanged status: only in the PreImage, an option value without a label -> not shown plainly -> read
    assert judged(event(LINE, "Update", values={"mserp_orderedsalesquantity": 7},
                        pre={"mserp_salesorderprocessingstatus": OPTION})) is None
    # the Target holds the changed status with its label: that decides, over the PreImage
    skipped = judged(event(LINE, "Update", **ACTIVE_LINE, pre={"mserp_salesorderprocessingstatus": OPTION + 1}))
    assert skipped is not None and skipped.reason.startswith("filtered out: SalesOrderProcessingStatus is 'Active'")


def test_a_plain_typed_field_in_the_pre_image_decides() -> None:
    # products filter on dataAreaId (Edm.String): the value itself, no label needed
    other_company = {"mserp_dataareaid": "usrt", "mserp_productnumber": "P-1"}
    skipped = judged(event("mserp_ecoresreleaseddistinctproductcdsentity", "Update", values={"mserp_name": "x"},
                           pre=other_company, key=False), flow="products")
    assert skipped is not None and "dataAreaId is 'usrt', expected 'usmf'" in skipped.reason


def test_deletes_and_business_events_are_never_judged_by_their_values() -> None:
    assert judged(event(LINE, "Delete", **ACTIVE_LINE)) is None


def _orders_back_with(fields: dict[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "mappings" / "orders_back.yaml").read_text())
    raw["lines"][0]["source"]["header_filter_fields"] = fields
    return raw


def test_header_filter_fields_must_name_a_header_filter_field_and_a_line_field() -> None:
    with pytest.raises(ValidationError) as caught:
        MappingSpec.model_validate(_orders_back_with({"SalesOrderName": "SalesOrderProcessingStatus",
                                                      "AreTotalsUpdated": "AreTotalsUpdatedd"}))
    text = str(caught.value)
    assert "'SalesOrderName' is not a field of the header filter" in text
    assert "header_filter_fields" in text and "'AreTotalsUpdatedd'" in text
