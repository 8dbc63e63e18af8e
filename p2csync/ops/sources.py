"""Paging a flow's source for ``backfill``, ``reconcile`` and the catch-up, and the resync messages they send.

Paging is keyset paging on the source's key, in key order: ``$orderby`` the key and ``$filter`` past the last key
seen, with the server's page size (``Prefer: odata.maxpagesize``) and ``@odata.nextLink`` followed by the
connector. Why not a saved nextLink: its skip token is the server's, documented only as the way to the next
page of the same request, not as a bookmark to keep across runs. The last key of a finished page is a bookmark
any later request can start after, whatever was created or deleted in between: a killed run resumes there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mappings import MappingSpec
from p2csync.connectors.fno import fno_literal
from p2csync.envelopes import INGRESS_PROPERTY, ResyncRequest, resync_body, resync_message_id
from p2csync.envelopes._common import normalise_guid
from p2csync.queue.base import OutboundMessage

#: Rows per page asked of the server: the largest page the Dataverse Web API returns (wire-formats: 5,000),
#: below F&O's own server page of 10,000. [Inferred] one page is also one checkpoint.
DEFAULT_PAGE_SIZE = 5000


@dataclass(frozen=True)
class FlowSource:
    """Where a flow reads from: its system, the table its events name, the entity set and the key fields."""

    flow: str
    system: str
    table: str
    entity_set: str
    key: tuple[str, ...]

    @classmethod
    def of(cls, spec: MappingSpec) -> FlowSource:
        source = spec.source
        if source.system == "dataverse":
            key: tuple[str, ...] = (str(source.id_column or f"{source.table}id"),)
        else:
            key = tuple(source.key)
            if not key:
                raise ValueError(f"{spec.flow}.yaml: source.key is needed to page and resync an F&O source")
        return cls(flow=spec.flow, system=source.system, table=source.table, entity_set=str(source.entity_set),
                   key=key)

    def key_of(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row's key (raises KeyError naming the field a row lacks)."""
        missing = [name for name in self.key if row.get(name) in (None, "")]
        if missing:
            raise KeyError(f"{self.entity_set} row without {', '.join(missing)}")
        return {name: row[name] for name in self.key}

    def request(self, key: Mapping[str, Any], run: str) -> ResyncRequest:
        if self.system == "dataverse":
            return ResyncRequest(flow=self.flow, system="dataverse", table=self.table, id=str(key[self.key[0]]),
                                 run=run)
        return ResyncRequest(flow=self.flow, system="fno", table=self.table, run=run,
                             key={name: value if isinstance(value, int) else str(value) for name, value in key.items()})

    def message(self, key: Mapping[str, Any], run: str) -> OutboundMessage:
        request = self.request(key, run)
        return OutboundMessage(body=resync_body(request), message_id=resync_message_id(request),
                               content_type="application/json",
                               application_properties={INGRESS_PROPERTY: "resync", "p2c-run": run})

    def after_filter(self, after: Mapping[str, Any] | None) -> str | None:
        """The rows past ``after`` in key order: ``k1 gt v1 or (k1 eq v1 and k2 gt v2) ...``."""
        if not after:
            return None
        if self.system == "dataverse":
            return f"{self.key[0]} gt {normalise_guid(str(after[self.key[0]]))}"
        alternatives = []
        for index, name in enumerate(self.key):
            parts = [f"{prior} eq {fno_literal(after[prior])}" for prior in self.key[:index]]
            parts.append(f"{name} gt {fno_literal(after[name])}")
            alternatives.append(parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")")
        return " or ".join(alternatives)

    @property
    def orderby(self) -> str:
        return ",".join(f"{name} asc" for name in self.key)


async def pages(client: Any, source: FlowSource, *, after: Mapping[str, Any] | None = None,
                select: Sequence[str] | None = None, page_size: int = DEFAULT_PAGE_SIZE,
                where: str | None = None) -> AsyncIterator[list[dict[str, Any]]]:
    """The source's rows past ``after`` in key order, ``page_size`` at a time (``select``: the key fields plus
    these; ``where``: an extra ``$filter`` ANDed in). ``client`` is the source system's connector."""
    columns = list(dict.fromkeys([*source.key, *(select or [])]))
    conditions = [c for c in (source.after_filter(after), where) if c]
    condition = " and ".join(f"({c})" for c in conditions) if len(conditions) > 1 else (conditions or [None])[0]
    page: list[dict[str, Any]] = []
    async for row in client.query(source.entity_set, filter=condition, select=columns, orderby=source.orderby,
                                  page_size=page_size):
        page.append(row)
        if len(page) >= page_size:
            yield page
            page = []
    if page:
        yield page


async def count(client: Any, source: FlowSource, *, after: Mapping[str, Any] | None = None,
                page_size: int = DEFAULT_PAGE_SIZE) -> int:
    """How many rows lie past ``after``: a key-only pass (Dataverse's ``$count`` stops at 5,000), cheap next to
    the sync itself, so progress can show an ETA."""
    total = 0
    async for page in pages(client, source, after=after, page_size=page_size):
        total += len(page)
    return total
