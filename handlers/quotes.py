"""Flow 2: Sales quotes become F&O sales quotations, header and lines (P2C template "Sales Quotes (Sales to Fin
and Ops) - Direct", tasks QuoteHeader then QuoteLine).

A quote and its quote products are one document (handlers/documents.py): every event of the quote or of one of
its lines syncs the whole quote in one F&O change set, header first. Everything flow-specific is in
mappings/quotes.yaml: only active quotes whose products are all externally maintained, the quote number from
Sales, the customer and the released products must exist in F&O first (the message waits, naming them).

Sales makes an active quote read-only: its lines change through Revise, which closes the quote as Revised and
opens a draft revision with the same number; once that revision is activated it takes over the F&O quotation
(the same number) and the sync adds, changes and removes lines to match it. Deleting a quote in Sales does not
delete the F&O quotation (as for accounts); it frees the number.
"""

from __future__ import annotations

from handlers.documents import DocumentSync

FLOW = "quotes"


def create_handler() -> DocumentSync:
    return DocumentSync(FLOW)
