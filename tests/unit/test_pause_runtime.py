"""The runtime's pause check: a paused flow's message waits on the queue (a scheduled copy, no limit, the
record untouched) and is processed normally once the flow is resumed; the check is cached."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p2csync.pauses import PAUSE_WAITS, PauseCache, PauseRecord, pause_key, paused_flows
from p2csync.queue.embedded import EmbeddedTransport
from p2csync.runtime import DEFERRALS, InboundMessage, SyncRuntime
from p2csync.settings import Settings

CREATE = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes" / "dataverse_create_account.json"
CREATE_KEY = "accounts:account:44bfc2a7-903e-eb11-a813-000d3ad9c2e1"


class _Actions:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def complete(self, message: Any) -> None:
        self.calls.append("complete")

    def abandon(self, message: Any) -> None:
        self.calls.append("abandon")

    def deadletter(self, message: Any, **kwargs: Any) -> None:
        self.calls.append("deadletter")


async def test_a_paused_flows_message_is_rescheduled_uncounted_and_touches_nothing(
    runtime_env: dict[str, str], monkeypatch: Any
) -> None:
    monkeypatch.setenv("P2C_PAUSE_RECHECK_SECONDS", "42")
    monkeypatch.setenv("P2C_PAUSE_CACHE_SECONDS", "0")
    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        await runtime.ledger.put_value(pause_key("accounts"), PauseRecord(flow="accounts", by="ops").model_dump_json())
        message = InboundMessage(queue="sales-events", body=CREATE.read_bytes(), message_id="m-1",
                                 application_properties={DEFERRALS: runtime.settings.max_deferrals, PAUSE_WAITS: 7})
        actions = _Actions()
        outcome = await runtime.handle(message, message, actions)
        assert outcome.kind == "deferred" and outcome.paused  # type: ignore[union-attr]
        assert actions.calls == ["complete"]  # no deferral left, yet not dead-lettered: waiting is not failing
        assert isinstance(runtime.transport, EmbeddedTransport)
        [copy] = runtime.transport.queue.peek("sales-events")
        assert copy.application_properties[PAUSE_WAITS] == 8
        assert copy.application_properties[DEFERRALS] == runtime.settings.max_deferrals
        assert copy.message_id.startswith("m-1~") and copy.body == CREATE.read_bytes()
        waited = (copy.enqueued_time_utc - copy.scheduled_enqueue_time_utc).total_seconds()  # type: ignore[operator]
        assert waited == 0 and copy.state == "scheduled"
        # the record was not leased nor written; the journal says why it waits
        assert (await runtime.ledger.record_state(CREATE_KEY)).version is None
        [entry] = await runtime.ledger.journal_entries(record_key=CREATE_KEY)
        assert entry.outcome == "deferred" and "paused: the accounts flow is paused" in (entry.reason or "")
        assert "42.0s" in (entry.reason or "")
    finally:
        await runtime.aclose()


async def test_a_resumed_flows_message_goes_to_its_handler(runtime_env: dict[str, str], monkeypatch: Any) -> None:
    monkeypatch.setenv("P2C_PAUSE_CACHE_SECONDS", "0")
    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        await runtime.ledger.put_value(pause_key("quotes"), "{}")  # another flow's pause changes nothing here
        message = InboundMessage(queue="sales-events", body=CREATE.read_bytes(), message_id="m-2")
        outcome, _, _ = await runtime.process(message)
        # no sandbox listens on the placeholder URL: the handler ran and met the network
        assert outcome.kind == "deferred" and not outcome.paused  # type: ignore[union-attr]
        assert "paused" not in outcome.reason  # type: ignore[union-attr]
    finally:
        await runtime.aclose()


class _CountingLedger:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.reads = 0
        self.fail = False

    async def list_values(self, prefix: str = "") -> dict[str, str]:
        self.reads += 1
        if self.fail:
            raise OSError("ledger unreachable")
        return {k: v for k, v in self.values.items() if k.startswith(prefix)}


async def test_the_pause_check_reads_the_ledger_once_per_ttl_and_survives_a_failed_read(monkeypatch: Any) -> None:
    ledger = _CountingLedger()
    clock = [100.0]
    monkeypatch.setattr("p2csync.pauses.time.monotonic", lambda: clock[0])
    cache = PauseCache(ledger, ttl=5.0)
    assert not await cache.is_paused("accounts")
    ledger.values[pause_key("accounts")] = json.dumps({"flow": "accounts"})
    assert not await cache.is_paused("accounts") and ledger.reads == 1  # cached
    clock[0] += 5.0
    assert await cache.is_paused("accounts") and ledger.reads == 2
    ledger.fail = True
    clock[0] += 5.0
    assert await cache.is_paused("accounts") and ledger.reads == 3  # the last known answer stands


async def test_paused_flows_reads_records_and_tolerates_a_plain_value() -> None:
    ledger = _CountingLedger()
    ledger.values = {pause_key("accounts"): PauseRecord(flow="accounts", by="ana", note="F&O upgrade").model_dump_json(),
                     pause_key("quotes"): "not json", "other": "x"}
    found = await paused_flows(ledger)  # type: ignore[arg-type]
    assert sorted(found) == ["accounts", "quotes"]
    assert (found["accounts"].by, found["accounts"].note) == ("ana", "F&O upgrade")
    assert found["quotes"].note == "not json"
