"""Sales' one discount per line -> F&O's per-unit line discount plus a sales charge for the rounding remainder.

Reference section 6.6 (P2C sales orders): "the full line discount is divided by quantity into F&O Line discount;
the rounding remainder goes into the line's Sales charges. Example: qty 3, Sales discount $10.00 -> F&O line
discount $3.33, sales charge -$0.01", and back: 3 x 3.33 + 0.01 = $10.00. So, for a line:

    quantity x per_unit - charge == total          (to the currency's precision)

Decisions (none published; [Inferred], each covered by tests/unit/test_mappings_orders.py):

* The per-unit amount is rounded toward zero to ``decimals`` places, so the remainder of a positive discount is
  never positive: the charge is zero or negative, as in the documented example (-$0.01). Rounding half-up would
  give charges of either sign (qty 3, $20.00 -> 6.67 and +$0.01).
* A fractional quantity: ``quantity x per_unit`` is rounded to ``decimals`` (half-up, as F&O rounds a line
  amount to the currency) before the remainder is taken, so the charge always has the currency's precision.
* Quantity 0 or empty: there is nothing to divide by; the whole discount becomes the (negative) charge and the
  per-unit discount is 0, so the total is still carried.
* Discount 0 or empty: 0 and 0.
* A negative discount (Sales does not give one in normal use) is split the same way, mirrored.
* A negative quantity is a return line; P2C does not sync return orders (reference A.11), so it is refused with
  a reason naming the quantity instead of guessing a sign convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

__all__ = ["DiscountSplitError", "LineDiscount", "split_line_discount"]


class DiscountSplitError(ValueError):
    """The line cannot be split (a negative quantity, a value that is no number); the message says which."""


@dataclass(frozen=True)
class LineDiscount:
    """F&O's side of one Sales line discount: ``per_unit`` (LineDiscountAmount) and ``charge`` (the remainder,
    written as the line's price charges)."""

    per_unit: Decimal
    charge: Decimal

    def total(self, quantity: Decimal | int | str, decimals: int = 2) -> Decimal:
        """The Sales discount again (the F&O -> Sales recombination): quantity x per_unit - charge."""
        step = Decimal(1).scaleb(-decimals)
        amount = (_number(quantity, "quantity") * self.per_unit).quantize(step, rounding=ROUND_HALF_UP)
        return amount - self.charge


def _number(value: Any, name: str) -> Decimal:
    if value is None or value == "":
        return Decimal(0)
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise DiscountSplitError(f"{name} {value!r} is not a number") from None
    if not number.is_finite():
        raise DiscountSplitError(f"{name} {value!r} is not a finite number")
    return number


def split_line_discount(total: Any, quantity: Any, *, decimals: int = 2) -> LineDiscount:
    """Split a Sales line's full discount (``manualdiscountamount``) over its quantity: see the module doc."""
    discount, qty = _number(total, "discount"), _number(quantity, "quantity")
    step = Decimal(1).scaleb(-decimals)
    if qty < 0:
        raise DiscountSplitError(f"quantity {qty} is negative (a return line); return orders are not synced")
    if discount == 0:
        return LineDiscount(per_unit=Decimal(0).quantize(step), charge=Decimal(0).quantize(step))
    if qty == 0:
        return LineDiscount(per_unit=Decimal(0).quantize(step), charge=(-discount).quantize(step, ROUND_HALF_UP))
    per_unit = (discount / qty).quantize(step, rounding=ROUND_DOWN)
    amount = (qty * per_unit).quantize(step, rounding=ROUND_HALF_UP)
    return LineDiscount(per_unit=per_unit, charge=(amount - discount).quantize(step, ROUND_HALF_UP) + 0)  # no -0.00
