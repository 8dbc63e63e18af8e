"""Products (F&O -> Sales) against the sandbox over loopback HTTP: every F&O change goes through the data event
F&O raises (relayed for the entity's virtual table), the runtime, the products flow and the Dataverse Web API.

Covered: a released product becomes an active Sales product priced in the first price list of its currency; a
price change updates the product and its price-list item; a replayed or unchanged event writes nothing; a unit
Sales lacks defers naming it and applies once the unit exists; a currency without a price list is dead-lettered
with nothing written; a product of another legal entity is filtered out; a product number Dataverse cannot take
in a key URL still syncs; a delete is not synced."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from p2csync.outcomes import Applied, Deferred, Outcome, Rejected, Skipped
from p2csync.runtime import InboundMessage, SyncRuntime
from sandbox import SandboxServer
from sandbox.dataverse_tables import DEFAULT_UNIT_GROUP_ID, EACH_UNIT_ID, USD_PRICE_LIST_ID
from tests.integration.runtime_world import RecordingActions, fno_change

PRODUCTS = "CDSReleasedDistinctProducts"


async def handled(runtime: SyncRuntime, message: InboundMessage) -> Outcome:
    return await runtime.handle(message, message, RecordingActions())


async def released(sandbox: SandboxServer, number: str, **extra: Any) -> InboundMessage:
    """Release a product in F&O (an OData create, as an F&O user would): its data event."""
    row = {"dataAreaId": "usmf", "ProductNumber": number, "ProductName": f"Speaker {number}",
           "ProductDescription": "Bookshelf speaker", "SalesUnitSymbol": "ea", "SalesPrice": 129.5,
           "UnitCost": 61.25, "IsStockedProduct": "Yes", "ProductType": "Item", **extra}
    [message] = await fno_change(sandbox, lambda: sandbox.fno.create(PRODUCTS, row), data_events=(PRODUCTS,))
    return message


async def changed(sandbox: SandboxServer, number: str, company: str = "usmf", **values: Any) -> InboundMessage:
    [message] = await fno_change(sandbox, lambda: sandbox.fno.update(
        PRODUCTS, {"dataAreaId": company, "ProductNumber": number}, values), data_events=(PRODUCTS,))
    return message


def sales_product(sandbox: SandboxServer, number: str) -> dict[str, Any] | None:
    return next((r for r in sandbox.dataverse.rows("product") if r["productnumber"] == number), None)


def price_items(sandbox: SandboxServer, product_id: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.dataverse.rows("productpricelevel") if r["_productid_value"] == product_id]


def dataverse_writes(sandbox: SandboxServer) -> list[tuple[str, str]]:
    return [(r.method, r.path.split("/api/data/v9.2/", 1)[-1].split("(")[0].split("?")[0])
            for r in sandbox.dataverse.request_log.entries() if r.method != "GET"]


async def test_a_released_product_becomes_an_active_sales_product_priced_in_its_currency(
        sandbox: SandboxServer, runtime: SyncRuntime) -> None:
    message = await released(sandbox, "SPK-100")
    sandbox.dataverse.request_log.clear()
    outcome = await handled(runtime, message)
    assert isinstance(outcome, Applied), outcome
    assert outcome.detail == ("created products(productnumber='SPK-100') from CDSReleasedDistinctProducts("
                              "dataAreaId='usmf',ProductNumber='SPK-100'); published, created its price in "
                              "'CRM Service USA (sample)'")
    product = sales_product(sandbox, "SPK-100")
    assert product is not None
    assert (product["name"], product["description"]) == ("Speaker SPK-100", "Bookshelf speaker")
    assert product["msdynce_ismaintainedexternally"] is True and product["isstockitem"] is True
    assert product["producttypecode"] == 1 and product["quantitydecimal"] == 0
    assert Decimal(str(product["price"])) == Decimal("129.5")
    assert (product["_defaultuomid_value"], product["_defaultuomscheduleid_value"]) == (EACH_UNIT_ID,
                                                                                        DEFAULT_UNIT_GROUP_ID)
    assert product["statecode"] == 0  # published: quotes and orders can use it
    [item] = price_items(sandbox, product["productid"])
    assert (item["_pricelevelid_value"], item["_uomid_value"]) == (USD_PRICE_LIST_ID, EACH_UNIT_ID)
    assert Decimal(str(item["amount"])) == Decimal("129.5")
    # writes: the upsert, the publish, the price-list item
    assert dataverse_writes(sandbox) == [("PATCH", "products"), ("PATCH", "products"), ("POST", "productpricelevels")]

    # F&O delivers the event again, then an update that changes nothing Sales holds: no Dataverse write.
    sandbox.dataverse.request_log.clear()
    again = await handled(runtime, message)
    assert isinstance(again, Skipped) and again.reason.startswith("duplicate")
    same = await handled(runtime, await changed(sandbox, "SPK-100", ProductStyleId="Classic"))
    assert isinstance(same, Skipped) and same.reason.startswith("unchanged"), same
    assert dataverse_writes(sandbox) == []


async def test_a_price_change_updates_the_product_and_its_price_list_item(
        sandbox: SandboxServer, runtime: SyncRuntime) -> None:
    assert isinstance(await handled(runtime, await released(sandbox, "SPK-200")), Applied)
    outcome = await handled(runtime, await changed(sandbox, "SPK-200", SalesPrice=99.99))
    assert isinstance(outcome, Applied), outcome
    assert outcome.detail.startswith("updated products(productnumber='SPK-200')")
    assert outcome.detail.endswith("updated its price in 'CRM Service USA (sample)'")
    product = sales_product(sandbox, "SPK-200")
    assert product is not None and Decimal(str(product["price"])) == Decimal("99.99")
    [item] = price_items(sandbox, product["productid"])
    assert Decimal(str(item["amount"])) == Decimal("99.99")


async def test_a_unit_sales_lacks_defers_naming_it_and_applies_once_it_exists(
        sandbox: SandboxServer, runtime: SyncRuntime) -> None:
    sandbox.dataverse.delete("uom", EACH_UNIT_ID)
    message = await released(sandbox, "SPK-300")
    outcome = await handled(runtime, message)
    assert isinstance(outcome, Deferred), outcome
    assert outcome.reason == ("waiting for a uom with name 'Each' in Sales (the CDSReleasedDistinctProducts("
                              "dataAreaId='usmf',ProductNumber='SPK-300') points at it)")
    assert sales_product(sandbox, "SPK-300") is None
    sandbox.dataverse.create("uom", {"name": "Each", "quantity": 1,
                                     "uomscheduleid": ("uomschedule", DEFAULT_UNIT_GROUP_ID)})
    assert isinstance(await handled(runtime, message), Applied)
    assert sales_product(sandbox, "SPK-300") is not None


async def test_an_unknown_unit_symbol_is_dead_lettered_naming_it(
        sandbox: SandboxServer, runtime: SyncRuntime) -> None:
    outcome = await handled(runtime, await released(sandbox, "SPK-350", SalesUnitSymbol="box"))
    assert isinstance(outcome, Rejected) and outcome.reason == "MappingFailed", outcome
    assert "defaultuomid.uom(name) <- SalesUnitSymbol" in outcome.description and "'box'" in outcome.description


async def test_a_currency_without_a_price_list_is_dead_lettered_with_nothing_written(
        sandbox: SandboxServer, runtime: SyncRuntime) -> None:
    sandbox.dataverse.delete("pricelevel", USD_PRICE_LIST_ID)
    message = await released(sandbox, "SPK-400")
    sandbox.dataverse.request_log.clear()
    outcome = await handled(runtime, message)
    assert isinstance(outcome, Rejected) and outcome.reason == "NoPriceList", outcome
    assert "no active price list in Sales has the currency USD" in outcome.description
    assert outcome.description.endswith("Nothing was written.")
    assert sales_product(sandbox, "SPK-400") is None and dataverse_writes(sandbox) == []


async def test_a_product_of_another_legal_entity_and_a_delete_are_not_synced(
        sandbox: SandboxServer, runtime: SyncRuntime) -> None:
    outcome = await handled(runtime, await released(sandbox, "SPK-500", dataAreaId="usrt"))
    assert isinstance(outcome, Skipped) and outcome.reason == "filtered out: dataAreaId is 'usrt', expected 'usmf' (as " \
        "the Create event shows it; F&O not read)"
    assert isinstance(await handled(runtime, await released(sandbox, "SPK-501")), Applied)
    [delete] = await fno_change(sandbox, lambda: sandbox.fno.delete(
        PRODUCTS, {"dataAreaId": "usmf", "ProductNumber": "SPK-501"}), data_events=(PRODUCTS,))
    outcome = await handled(runtime, delete)
    assert isinstance(outcome, Skipped), outcome
    assert outcome.reason.startswith("Delete of CDSReleasedDistinctProducts(") and "not synced" in outcome.reason
    assert sales_product(sandbox, "SPK-501") is not None


@pytest.mark.parametrize("number", ["SPK/600", "SPK+601"])
async def test_a_product_number_dataverse_refuses_in_a_key_url_still_syncs(
        sandbox: SandboxServer, runtime: SyncRuntime, number: str) -> None:
    """Dataverse takes no / < > * % & : \\ ? + in alternate-key values (wire-formats 2.1): found by $filter."""
    assert isinstance(await handled(runtime, await released(sandbox, number)), Applied)
    outcome = await handled(runtime, await changed(sandbox, number, SalesPrice=10))
    assert isinstance(outcome, Applied) and outcome.detail.startswith(f"updated products(productnumber='{number}')")
    assert [r["productnumber"] for r in sandbox.dataverse.rows("product")].count(number) == 1
