"""The product's F&O values against the stricter sandbox over loopback HTTP: a mapped date reaches an
Edm.DateTimeOffset field zone-qualified and is accepted, under both over-long-text settings of the sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import date

import pytest

from mappings import parse_mapping
from p2csync.connectors import FnOClient, StaticTokenProvider
from sandbox import INTEGRATION_TOKEN, FnO, SandboxServer

QUOTES = """\
flow: quotes
direction: sales_to_fno
source: {system: dataverse, table: quote, entity_set: quotes}
target: {system: fno, entity_set: CDSSalesQuotationHeaders, key: [dataAreaId, SalesQuotationNumber]}
company: {default: usmf}
fields:
  - {target: SalesQuotationNumber, source: quotenumber}
  - {target: SalesQuotationExpiryDate, source: expireson, transform: date}
  - {target: RequestedShippingDate, source: requestdeliveryby}
"""
KEY = {"dataAreaId": "usmf", "SalesQuotationNumber": "Q-1"}


@pytest.fixture(scope="module", params=["error", "truncate"])
def server(request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    with SandboxServer(dataverse=None, fno=FnO(string_overflow=request.param)) as running:
        yield running


@pytest.fixture
async def fno(server: SandboxServer) -> AsyncIterator[FnOClient]:
    server.fno.reset()
    async with FnOClient(server.fno_url, StaticTokenProvider(INTEGRATION_TOKEN)) as client:
        yield client


async def test_a_mapped_date_is_written_zone_qualified_and_accepted(server: SandboxServer, fno: FnOClient) -> None:
    mapped = parse_mapping(QUOTES, "quotes.yaml").apply(
        {"quotenumber": "Q-1", "expireson": "2026-01-31", "requestdeliveryby": "2026-02-15T09:30:00"}
    )
    assert mapped.payload["SalesQuotationExpiryDate"] == "2026-01-31T00:00:00Z"
    result = await fno.upsert("CDSSalesQuotationHeaders", mapped.key, mapped.payload)
    assert result.created
    row = server.fno.get("CDSSalesQuotationHeaders", KEY)
    assert row is not None
    assert row["SalesQuotationExpiryDate"] == "2026-01-31T00:00:00Z"
    assert row["RequestedShippingDate"] == "2026-02-15T09:30:00Z"  # no zone in the source: taken as UTC


async def test_a_python_date_in_an_fno_body_is_sent_as_midnight_utc(server: SandboxServer, fno: FnOClient) -> None:
    await fno.upsert("CDSSalesQuotationHeaders", KEY, {"SalesQuotationFollowUpDate": date(2026, 3, 1)})
    row = server.fno.get("CDSSalesQuotationHeaders", KEY)
    assert row is not None and row["SalesQuotationFollowUpDate"] == "2026-03-01T00:00:00Z"
