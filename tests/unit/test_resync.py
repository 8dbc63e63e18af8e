"""The resync message (envelope, routing to the same ledger record as real events), keyset paging and the
backfill checkpoint, and the dry-run comparison helpers."""

from __future__ import annotations

from typing import Any

import pytest

from handlers import build_registry
from mappings import load_mappings
from p2csync.envelopes import EnvelopeError, ResyncRequest, parse_change_event, resync_body, resync_message_id
from p2csync.ledger.sqlite import SqliteLedger
from p2csync.ops.backfill import backfill, load_checkpoint
from p2csync.ops.dryrun import dataverse_differences
from p2csync.ops.sources import FlowSource
from p2csync.queue.base import OutboundMessage
from p2csync.settings import ROOT

MAPPINGS = load_mappings(ROOT / "mappings")


def test_a_dataverse_resync_is_a_notification_on_the_records_own_ledger_record() -> None:
    request = ResyncRequest(flow="accounts", system="dataverse", table="account", run="r1",
                            id="{AB000000-0000-0000-0000-000000000001}")
    event = parse_change_event(resync_body(request))
    assert (event.source, event.entity, event.message_name, event.is_complete, event.version) == \
        ("resync", "account", "Resync", False, None)
    handler = build_registry(MAPPINGS).route(event)
    assert handler is not None and handler.record_key(event) == "accounts:account:ab000000-0000-0000-0000-000000000001"
    assert event.dedupe_key == "resync:r1:accounts:ab000000-0000-0000-0000-000000000001"


def test_an_fno_resync_names_the_record_key_a_data_event_of_the_row_names() -> None:
    request = ResyncRequest(flow="products", system="fno", table="mserp_ecoresreleaseddistinctproductcdsentity",
                            key={"dataAreaId": "USMF", "ProductNumber": "D0001"}, run="r1")
    event = parse_change_event(resync_body(request))
    handler = build_registry(MAPPINGS).route(event)
    assert handler is not None and handler.flow == "products"
    assert handler.record_key(event) == "products:CDSReleasedDistinctProducts:(dataAreaId='usmf',ProductNumber='d0001')"


def test_the_message_id_is_the_same_for_the_same_run_and_record_and_differs_for_another_run() -> None:
    one = ResyncRequest(flow="accounts", system="dataverse", table="account", id="a" * 8 + "-0000-0000-0000-" + "0" * 12,
                        run="r1")
    assert resync_message_id(one) == resync_message_id(one.model_copy())
    assert resync_message_id(one) != resync_message_id(one.model_copy(update={"run": "r2"}))
    assert len(resync_message_id(one)) <= 128


@pytest.mark.parametrize("body, member", [
    (b'{"p2c": "resync", "flow": "accounts", "system": "dataverse", "table": "account", "run": "r"}', "body"),
    (b'{"p2c": "resync", "flow": "products", "system": "fno", "table": "t", "run": "r"}', "body"),
    (b'{"p2c": "resync", "flow": "accounts", "system": "sql", "table": "account", "id": "x", "run": "r"}', "system"),
])
def test_a_resync_that_does_not_name_its_record_is_malformed(body: bytes, member: str) -> None:
    with pytest.raises(EnvelopeError) as error:
        parse_change_event(body)
    assert member in str(error.value)


def test_keyset_filters_start_after_the_last_key() -> None:
    fno = FlowSource.of(MAPPINGS["products"])
    assert fno.after_filter({"dataAreaId": "usmf", "ProductNumber": "D'1"}) == \
        "dataAreaId gt 'usmf' or (dataAreaId eq 'usmf' and ProductNumber gt 'D''1')"
    assert fno.orderby == "dataAreaId asc,ProductNumber asc"
    dv = FlowSource.of(MAPPINGS["accounts"])
    assert dv.after_filter({"accountid": "{AB000000-0000-0000-0000-000000000001}"}) == \
        "accountid gt ab000000-0000-0000-0000-000000000001"
    assert dv.after_filter(None) is None


class FakeSource:
    """A Dataverse-like source: rows in key order, honouring the keyset filter the pager sends."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = sorted(ids)
        self.filters: list[str | None] = []

    async def query(self, entity_set: str, filter: str | None = None, **_: Any):  # noqa: A002
        self.filters.append(filter)
        after = filter.split(" gt ")[1] if filter else ""
        for one in self.ids:
            if one > after:
                yield {"accountid": one}


class FakeTransport:
    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[OutboundMessage] = []
        self.fail_after = fail_after

    async def send(self, queue: str, message: OutboundMessage) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("queue gone")
        self.sent.append(message)


async def test_a_killed_backfill_resumes_after_its_checkpoint_under_the_same_run(tmp_path) -> None:
    ids = [f"{i:08x}-0000-0000-0000-000000000000" for i in range(25)]
    source = FakeSource(ids)
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    dying = FakeTransport(fail_after=10)
    with pytest.raises(ConnectionError):
        await backfill(MAPPINGS["accounts"], source, dying, ledger, "sales-events", batch=5, with_total=False)
    checkpoint = await load_checkpoint(ledger, "accounts")
    assert checkpoint is not None and checkpoint.sent == 10 and checkpoint.after == {"accountid": ids[9]}

    alive = FakeTransport()
    report = await backfill(MAPPINGS["accounts"], source, alive, ledger, "sales-events", batch=5)
    assert report.resumed and report.run == checkpoint.run and report.sent == 25 and report.total == 25
    assert source.filters[-1] == f"accountid gt {ids[9]}"
    assert [parse_change_event(m.body).record_id for m in alive.sent] == ids[10:]
    assert (await load_checkpoint(ledger, "accounts")).done  # type: ignore[union-attr]

    again = FakeTransport()
    fresh = await backfill(MAPPINGS["accounts"], source, again, ledger, "sales-events", batch=5)
    assert not fresh.resumed and fresh.run != report.run and len(again.sent) == 25


async def test_a_dry_run_backfill_counts_and_sends_nothing(tmp_path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    transport = FakeTransport()
    report = await backfill(MAPPINGS["accounts"], FakeSource(["0" * 8 + "-0000-0000-0000-000000000001"]), transport,
                            ledger, "sales-events", dry_run=True, registry=build_registry(MAPPINGS))
    assert transport.sent == [] and report.would["rows"] == 1 and await load_checkpoint(ledger, "accounts") is None


def test_dataverse_differences_name_the_columns_and_lookups_that_differ() -> None:
    row = {"name": "A", "price": 10.0, "_transactioncurrencyid_value": "AB"}
    body = {"name": "A", "price": 10, "transactioncurrencyid@odata.bind": "/transactioncurrencies(ab)"}
    assert dataverse_differences(row, body) == []
    body = {"name": "B", "price": 11, "transactioncurrencyid@odata.bind": "/transactioncurrencies(cd)"}
    assert dataverse_differences(row, body) == ["name", "price", "transactioncurrencyid"]
