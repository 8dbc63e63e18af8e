"""Flow 2: Sales quotes become F&O sales quotations, header and lines (P2C template "Sales Quotes (Sales to Fin
and Ops) - Direct", tasks QuoteHeader then QuoteLine).

A quote and its quote products are one document (handlers/documents.py): every event of the quote or of one of
its lines syncs the whole quote in one F&O change set, header first. Everything flow-specific is in
mappings/quotes.yaml: only active quotes whose products are all externally maintained, the quote number from
Sales, the customer and the released products must exist in F&O first (the message waits, naming them).

Sales makes an active quote read-only: its lines change through Revise, which closes the quote as Revised and
opens a draft revision with the same number; once that revision is activated it takes over the F&O quotation
(the same number) and the sync adds, changes and removes lines to match it. Deleting a quote in Sales does not
delete the F&O quotation (as for accounts); it frees the number. A revision routed to another company (its
customer moved) becomes a quotation there; the one in the old company is left as it is (F&O may have acted on
it already): cancel it in F&O.
"""

from __future__ import annotations

from handlers.base import FlowContext
from handlers.documents import DocumentSync
from p2csync.envelopes import ChangeEvent
from p2csync.ledger.base import RecordState
from p2csync.outcomes import Outcome, Skipped

FLOW = "quotes"

#: Told with every active quote that was not synced: Sales will raise no further event for it on its own.
REVISE_HINT = ("an active quote is read-only in Sales, so nothing will bring it here again: fix the cause, then "
               "Revise the quote and activate the revision to sync it")


class QuoteSync(DocumentSync):
    """The document sync, plus one thing only quotes need: an active quote left out (a product not externally
    maintained, a line refused) says how to bring it back, since a read-only quote raises no more events."""

    async def sync(self, event: ChangeEvent, state: RecordState, ctx: FlowContext) -> Outcome:
        outcome = await super().sync(event, state, ctx)
        if isinstance(outcome, Skipped) and outcome.reason.startswith("filtered out: quotedetail"):
            return outcome.model_copy(update={"reason": f"{outcome.reason}; {REVISE_HINT}"})
        return outcome


def create_handler() -> DocumentSync:
    return QuoteSync(FLOW)
