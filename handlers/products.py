"""Flow: F&O released products become Sales products, priced in the first price list of their currency (P2C
template "Products (Fin and Ops to Sales) - Direct"; mappings/products.yaml).

On top of the F&O -> Sales record sync (handlers/fno_records.py) a product needs two things Sales does not do
by itself (reference 4.3):

* a price: the product goes into the first price list, by name, whose currency is the product's, at the F&O
  sales price in the product's default unit. A currency without a price list dead-letters the product BEFORE
  anything is written, naming the currency (never a product in Sales that no document can price);
* to be usable: Sales creates products as Draft unless its "create products in Active state" setting is on,
  and a Draft product cannot go on a quote or order. A product the sync leaves in Draft is published.

The price-list item has no alternate key in Dataverse, so it is found by (price list, product, unit) and
updated or created. Calls for a new product: the price-list lookup (cached), the upsert, the publish, the
price-list item query and its create; for a changed product: the upsert, the query and the update.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from handlers.base import FlowContext
from handlers.fno_records import LOOKUP_TTL, FnOToSalesRecordSync, TargetLookup
from mappings import MappingSpec, payload_hash, to_json_ready
from mappings.model import parse_path
from p2csync.connectors.fno import format_key
from p2csync.ledger.base import RecordState
from p2csync.outcomes import Applied, Outcome, Rejected

FLOW = "products"
CURRENCY = "transactioncurrencyid"
UNIT = "defaultuomid"
#: Product statecode / statuscode: Draft products are published to Active.
DRAFT, ACTIVE, ACTIVE_STATUS = 2, 0, 1


class ProductSync(FnOToSalesRecordSync):
    """A released product -> a Sales product in its price list."""

    def bind(self, *specs: MappingSpec) -> ProductSync:
        """The price step needs the product's currency and default unit: refuse a mapping without them."""
        super().bind(*specs)
        lookups = {parse_path(f.target).attribute for f in specs[0].fields if "." in f.target}
        if missing := [name for name in (CURRENCY, UNIT) if name not in lookups]:
            raise ValueError(f"{self.flow}.yaml: the product's price needs the lookups {', '.join(missing)} "
                             "among the fields (e.g. target: transactioncurrencyid.isocurrencycode)")
        return self

    async def write(self, spec: MappingSpec, key: Mapping[str, Any], row: Mapping[str, Any], state: RecordState,
                    ctx: FlowContext, described: str) -> Outcome:
        prepared = await self.prepare(spec, row, ctx, described)
        if not isinstance(prepared, tuple):
            return prepared
        mapped, body = prepared
        currency_id = _bound_id(body, CURRENCY)
        unit_id = _bound_id(body, UNIT)
        currency_code = _lookup_value(mapped.payload, CURRENCY)
        price_list = await self.price_list(currency_id, ctx)
        if price_list is None:
            return Rejected(reason="NoPriceList",
                            description=f"no active price list in Sales has the currency {currency_code} of "
                                        f"{described}; the Prospect to cash flow prices every product in the first "
                                        f"price list of its currency. Create one (e.g. a {currency_code} price "
                                        "list), then replay this message. Nothing was written.")
        price = body.get("price")
        digest = payload_hash({**body, "@pricelist": price_list[0]})
        target = self.target_key(spec, mapped.key)
        if unchanged := self.unchanged(digest, target, state):
            return unchanged
        result = await self.upsert(spec, mapped.key, body, ctx, select=["productid", "statecode"])
        product_id = str(result.record["productid"])
        done = ["created" if result.created else "updated", f"{spec.target.entity_set}{format_key(mapped.key)}"]
        if result.record.get("statecode") == DRAFT:
            await ctx.dataverse.upsert(spec.target.entity_set, product_id,
                                       {"statecode": ACTIVE, "statuscode": ACTIVE_STATUS}, update_only=True)
            done.append("published")
        verb = await self.price(price_list[0], product_id, unit_id, price, currency_id, ctx)
        done.append(f"{verb} its price in {price_list[1]!r}")
        return Applied(detail=f"{' '.join(done[:2])} from {described}; {', '.join(done[2:])}",
                       payload_hash=digest, target_key=target)

    async def price_list(self, currency_id: str, ctx: FlowContext) -> tuple[str, str] | None:
        """(id, name) of the first active price list, by name, in the currency; cached like other lookups."""
        cache_key = ("pricelevel", "@first", currency_id)
        now = time.monotonic()
        cached = ctx.lookup_cache.get(cache_key)
        if cached is not None and cached[1] > now:
            return cached[0]
        rows = [r async for r in ctx.dataverse.query(
            "pricelevels", select=["pricelevelid", "name"], top=1, orderby="name asc",
            filter=f"_transactioncurrencyid_value eq {currency_id} and statecode eq 0")]
        found = (str(rows[0]["pricelevelid"]), str(rows[0]["name"])) if rows else None
        if found is not None:  # a missing price list is looked for again on the replay
            ctx.lookup_cache[cache_key] = (found, now + LOOKUP_TTL)
        return found

    @staticmethod
    async def price(price_list: str, product: str, unit: str, amount: Any, currency: str, ctx: FlowContext) -> str:
        """Create or update the price-list item (price list, product, unit) at ``amount``."""
        condition = (f"_pricelevelid_value eq {price_list} and _productid_value eq {product} "
                     f"and _uomid_value eq {unit}")
        rows = [r async for r in ctx.dataverse.query("productpricelevels", filter=condition, top=1,
                                                     select=["productpricelevelid", "amount"])]
        body = {"amount": to_json_ready(amount), "pricingmethodcode": 1}  # 1: Currency Amount
        if rows:
            await ctx.dataverse.upsert("productpricelevels", str(rows[0]["productpricelevelid"]), body,
                                       update_only=True)
            return "updated"
        await ctx.dataverse.create("productpricelevels", {
            **body, "pricelevelid@odata.bind": f"/pricelevels({price_list})",
            "productid@odata.bind": f"/products({product})", "uomid@odata.bind": f"/uoms({unit})",
            "transactioncurrencyid@odata.bind": f"/transactioncurrencies({currency})"})
        return "created"


def _bound_id(body: Mapping[str, Any], lookup: str) -> str:
    """The GUID a ``<lookup>@odata.bind`` of the body points at."""
    value = str(body[f"{lookup}@odata.bind"])
    return value[value.index("(") + 1:value.rindex(")")]


def _lookup_value(payload: Mapping[str, Any], lookup: str) -> Any:
    for name, value in payload.items():
        if "." in name and TargetLookup(parse_path(name)).path.attribute == lookup:
            return value
    return None


def create_handler() -> ProductSync:
    return ProductSync(FLOW)


__all__ = ["FLOW", "ProductSync", "create_handler"]
