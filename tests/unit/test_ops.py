"""The operator functions (p2csync.ops) on a SQLite ledger and an embedded queue, without the local world."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from p2csync.ledger.base import JournalEntry
from p2csync.ledger.sqlite import SqliteLedger
from p2csync.ops import deadletters as dl
from p2csync.ops.common import Classified, MessageClassifier, flow_of, parse_duration, reason_category
from p2csync.ops.context import ops_settings
from p2csync.ops.pause import PauseError, pause, resume
from p2csync.ops.send import default_content_type, parse_property, send_body
from p2csync.ops.status import status
from p2csync.ops.trace import trace
from p2csync.queue.base import OutboundMessage, ReceivedMessage
from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport
from p2csync.runtime import DEFERRALS, REPLAYED_FROM

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
RK = "accounts:account:6f1c2a8e-0d4b-4c7e-9a51-2f3e4d5c6b7a"


def _entry(minutes_ago: float, outcome: str, reason: str, *, record_key: str | None = RK, key: str = "k1",
           message_id: str = "m1", **extra: Any) -> JournalEntry:
    return JournalEntry(message_key=key, record_key=record_key, queue="sales-events", message_id=message_id,
                        delivery_count=1, outcome=outcome, reason=reason, at=NOW - timedelta(minutes=minutes_ago),
                        **extra)


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    with SqliteLedger(tmp_path / "ledger.sqlite") as opened:
        yield opened


@pytest.fixture
def queue(tmp_path: Path) -> Any:
    with EmbeddedQueue(tmp_path / "queue.sqlite") as opened:
        yield opened


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800),
                                               ("1w", 604800), ("30", 30), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_parse_duration_names_what_it_expects() -> None:
    with pytest.raises(ValueError, match="s, m, h, d or w"):
        parse_duration("an hour")


@pytest.mark.parametrize(("outcome", "reason", "category"), [
    ("applied", "applied: created CustomersV3(usmf|A-1)", "created"),
    ("rejected", "rejected (MappingFailed): accountnumber is empty", "MappingFailed"),
    ("deferred", "deferred 3.2s: throttled by fno: 429 Too Many Requests", "throttled by fno"),
    ("deferred", "deferred 0.4s: record accounts:account:1 is being synced by another worker (its lease ends "
                 "in 2.0 s)", "waiting for another worker"),
    ("deferred", "deferred 60.0s: paused: the accounts flow is paused", "paused"),
    ("skipped", "skipped: duplicate: this change was already applied at 2025-03-01T11:00:00Z", "duplicate"),
    ("skipped", "skipped: stale: version 1 is older than applied 2", "stale"),
])
def test_reason_categories(outcome: str, reason: str, category: str) -> None:
    assert reason_category(_entry(0, outcome, reason)) == category


def test_flow_of_a_record_key() -> None:
    assert flow_of(RK) == "accounts" and flow_of(None) is None and flow_of("nokey") is None


async def test_status_counts_a_window_by_flow_reason_throttle_and_pause(ledger: SqliteLedger,
                                                                        queue: EmbeddedQueue) -> None:
    for entry in [
        _entry(60 * 30, "applied", "applied: created X", key="old"),  # outside the window; still last applied
        _entry(50, "deferred", "deferred 2.0s: throttled by fno: 429", key="k1"),
        _entry(49, "applied", "applied: updated CustomersV3(usmf|A-1)", key="k1"),
        _entry(40, "rejected", "rejected (MappingFailed): no number", key="k2"),
        _entry(30, "deferred", "deferred 60.0s: paused: the accounts flow is paused", key="k3"),
        _entry(20, "deferred", "deferred 60.0s: paused: the accounts flow is paused", key="k3"),
        _entry(10, "deferred", "deferred 60.0s: paused: the accounts flow is paused", key="k4"),
        _entry(9, "skipped", "skipped: no flow syncs dataverse 'lead' Create", record_key=None, key="k5"),
    ]:
        await ledger.journal(entry)
    await pause(ledger, "accounts", ["accounts"], by="ops", note="upgrade")
    queue.send("sales-events", OutboundMessage(body=b"{}", message_id="live"))
    report = await status(ledger, EmbeddedTransport(queue), ["sales-events"], ["accounts", "quotes"],
                          window=timedelta(hours=1), now=NOW)
    flows = {f.flow: f for f in report.flows}
    accounts = flows["accounts"]
    assert accounts.outcomes == {"deferred": 4, "applied": 1, "rejected": 1}
    assert accounts.reasons == {"deferred: paused": 3, "applied: updated": 1, "deferred: throttled by fno": 1,
                                "rejected: MappingFailed": 1}
    assert (accounts.deferrals, accounts.throttled, accounts.waiting) == (4, 1, 2)
    assert accounts.last_applied == NOW - timedelta(minutes=49)
    assert accounts.paused is not None and accounts.paused.note == "upgrade"
    assert flows["quotes"].outcomes == {} and flows["quotes"].last_applied is None  # quiet flows are listed
    assert flows["(no flow)"].outcomes == {"skipped": 1} and report.flows[-1].flow == "(no flow)"
    assert report.queues[0].active == 1 and report.since == NOW - timedelta(hours=1)


async def test_status_reports_a_queue_it_cannot_count_instead_of_failing(ledger: SqliteLedger) -> None:
    class Broken:
        async def counts(self, queue: str) -> Any:
            raise PermissionError("the management API needs a role that reads entities")

    report = await status(ledger, Broken(), ["sales-events"], [], window=timedelta(hours=1), now=NOW)  # type: ignore[arg-type]
    assert report.queues[0].error is not None and "PermissionError" in report.queues[0].error


async def test_trace_finds_a_record_by_any_of_its_names(ledger: SqliteLedger) -> None:
    other = "accounts:account:0b0b0b0b-0000-0000-0000-000000000002"
    entries = [
        _entry(10, "deferred", "deferred 1.0s: throttled by fno: 429", message_id="m1", correlation_id="c-1"),
        _entry(9, "applied", "applied: created CustomersV3(usmf|A-1)", message_id="m1~1", correlation_id="c-1",
               version=5, target_key="fno:CustomersV3:usmf|a-1"),
        _entry(8, "applied", "applied: created Y", record_key=other, key="k9", message_id="m9"),
        _entry(7, "rejected", "rejected (MalformedMessage): not JSON", record_key=None, key="bad", message_id="bad"),
    ]
    for entry in entries:
        await ledger.journal(entry)
    by_key = await trace(ledger, RK)
    assert by_key.matched_by == "record key"
    assert [d.outcome for d in by_key.records[0].deliveries] == ["deferred", "applied"]
    assert by_key.records[0].deliveries[1].target_key == "fno:CustomersV3:usmf|a-1"
    by_retry_id = await trace(ledger, "m1~1")  # a retry copy's id leads to the whole record
    assert by_retry_id.matched_by == "message id" and len(by_retry_id.records[0].deliveries) == 2
    assert (await trace(ledger, "k1")).matched_by == "message key"
    by_source = await trace(ledger, "{6F1C2A8E-0D4B-4C7E-9A51-2F3E4D5C6B7A}")  # as Dataverse shows a GUID
    assert by_source.matched_by == "source id" and [r.record_key for r in by_source.records] == [RK]
    unrouted = await trace(ledger, "bad")
    assert unrouted.records[0].record_key is None and unrouted.records[0].deliveries[0].outcome == "rejected"
    assert (await trace(ledger, "nothing-like-it")).records == []


class _Classifier(MessageClassifier):
    def __init__(self) -> None:
        super().__init__(None)

    def classify(self, message: ReceivedMessage) -> Classified:
        flow = json.loads(message.body).get("flow")
        return Classified(flow, f"{flow}:t:{message.message_id}" if flow else None, "test")


def _dead(queue: EmbeddedQueue, message_id: str, flow: str, reason: str, **props: Any) -> None:
    queue.send("sales-events", OutboundMessage(body=json.dumps({"flow": flow}).encode(), message_id=message_id,
                                               correlation_id="corr", application_properties=props))
    [received] = queue.receive("sales-events")
    queue.dead_letter(received.lock_token, reason, f"{reason} for {message_id}")


async def test_dead_letters_filter_by_flow_reason_and_age(queue: EmbeddedQueue) -> None:
    _dead(queue, "a1", "accounts", "MappingFailed")
    _dead(queue, "q1", "quotes", "fnoRejected")
    _dead(queue, "a2", "accounts", "MaxDeferralsExceeded")
    admin, classifier = EmbeddedTransport(queue), _Classifier()
    now = datetime.now(UTC)

    async def ids(where: dl.DeadLetterFilter, at: datetime = now, **kw: Any) -> list[str]:
        found = await dl.find_dead_letters(admin, ["sales-events", "fno-events"], classifier, where, now=at, **kw)
        return [letter.message_id for letter, _ in found]

    assert await ids(dl.DeadLetterFilter()) == ["a1", "q1", "a2"]
    assert await ids(dl.DeadLetterFilter(flow="accounts")) == ["a1", "a2"]
    assert await ids(dl.DeadLetterFilter(reason="mappingfailed")) == ["a1"]
    assert await ids(dl.DeadLetterFilter(older_than=timedelta(hours=1))) == []
    assert await ids(dl.DeadLetterFilter(older_than=timedelta(hours=1)), now + timedelta(hours=2)) == ["a1", "q1", "a2"]
    seq = queue.peek_dead_letters("sales-events")[1].sequence_number
    assert await ids(dl.DeadLetterFilter(), ids=[str(seq), "a2"]) == ["q1", "a2"]
    [(letter, raw)] = await dl.find_dead_letters(admin, ["sales-events"], classifier, dl.DeadLetterFilter(),
                                                 now=now, ids=["a1"])
    shown = dl.detail(letter, raw)
    assert (shown.reason, shown.flow, shown.correlation_id, shown.body) == (
        "MappingFailed", "accounts", "corr", '{"flow": "accounts"}')


async def test_replay_sends_the_original_with_a_derived_id_then_deletes_and_twice_is_one(
    queue: EmbeddedQueue
) -> None:
    _dead(queue, "a1", "accounts", "MaxDeferralsExceeded", **{DEFERRALS: 20, "x-ms-correlation-request-id": "c"})
    admin = EmbeddedTransport(queue)
    letters = await dl.find_dead_letters(admin, ["sales-events"], _Classifier(), dl.DeadLetterFilter(),
                                         now=datetime.now(UTC))
    [result] = await dl.replay(admin, admin, letters)
    assert (result.new_message_id, result.error) == ("a1~replay", None)
    assert queue.peek_dead_letters("sales-events") == []
    [sent] = queue.peek("sales-events")
    assert sent.body == b'{"flow": "accounts"}' and sent.correlation_id == "corr"
    assert sent.application_properties == {"x-ms-correlation-request-id": "c", REPLAYED_FROM: "a1"}  # counters reset
    [again] = await dl.replay(admin, admin, letters)  # a crash between send and delete, replayed once more
    assert again.error == "sent, but the dead letter was already gone"
    assert len(queue.peek("sales-events")) == 1  # the same derived MessageId: dropped as a duplicate


async def test_replay_keeps_the_dead_letter_when_the_send_fails(queue: EmbeddedQueue) -> None:
    _dead(queue, "a1", "accounts", "MappingFailed")
    admin = EmbeddedTransport(queue)

    class Down:
        async def send(self, queue: str, message: OutboundMessage) -> None:
            raise ConnectionError("namespace unreachable")

    letters = await dl.find_dead_letters(admin, ["sales-events"], _Classifier(), dl.DeadLetterFilter(),
                                         now=datetime.now(UTC))
    [result] = await dl.replay(admin, Down(), letters)  # type: ignore[arg-type]
    assert result.new_message_id is None and "kept" in (result.error or "")
    assert len(queue.peek_dead_letters("sales-events")) == 1


def test_replay_ids_are_deterministic_and_bounded() -> None:
    assert dl.replay_message_id("m-1", b"x") == "m-1~replay"
    long = dl.replay_message_id("x" * 120, b"x")
    assert long.startswith("sha256:") and len(long) <= 128 and long == dl.replay_message_id("x" * 120, b"x")


async def test_purge_deletes_only_what_matched(queue: EmbeddedQueue) -> None:
    _dead(queue, "a1", "accounts", "MappingFailed")
    _dead(queue, "q1", "quotes", "MappingFailed")
    admin = EmbeddedTransport(queue)
    letters = await dl.find_dead_letters(admin, ["sales-events"], _Classifier(), dl.DeadLetterFilter(flow="quotes"),
                                         now=datetime.now(UTC))
    assert await dl.purge(admin, letters) == 1
    assert [m.message_id for m in queue.peek_dead_letters("sales-events")] == ["a1"]


async def test_send_defaults_and_properties(queue: EmbeddedQueue) -> None:
    transport = EmbeddedTransport(queue)
    result = await send_body(transport, "fno-events", b'{"EventId": "E-1"}', properties={"source": "manual"})
    assert result.content_type == "application/json" and result.message_id.startswith("send:")
    [sent] = queue.peek("fno-events")
    assert sent.application_properties == {"source": "manual"} and sent.body == b'{"EventId": "E-1"}'
    await send_body(transport, "fno-events", b'{"EventId": "E-1"}')  # the same body: one message
    await send_body(transport, "fno-events", b'{"EventId": "E-1"}', message_id="on-purpose")
    assert [m.message_id for m in queue.peek("fno-events")] == [result.message_id, "on-purpose"]
    assert default_content_type(b"<xml/>") == "application/octet-stream"
    assert parse_property("a=b=c") == ("a", "b=c")
    with pytest.raises(ValueError, match="key=value"):
        parse_property("novalue")


async def test_pause_and_resume(ledger: SqliteLedger) -> None:
    first = await pause(ledger, "accounts", ["accounts", "quotes"], by="ana")
    again = await pause(ledger, "accounts", ["accounts", "quotes"], by="bob")
    assert again.by == "ana" and again.paused_at == first.paused_at  # the first pause is kept
    with pytest.raises(PauseError, match="known: accounts, quotes"):
        await pause(ledger, "acounts", ["accounts", "quotes"])
    assert (await resume(ledger, "accounts", ["accounts"])).was_paused
    assert not (await resume(ledger, "accounts", ["accounts"])).was_paused
    await ledger.put_value("pause:retired", "{}")  # a flow whose mapping was removed can still be resumed
    assert (await resume(ledger, "retired", ["accounts"])).was_paused


def test_ops_settings_need_neither_system_url_and_default_to_the_local_hosts_files(tmp_path: Path) -> None:
    settings = ops_settings(None, {})
    assert settings.ledger_path is not None and settings.ledger_path.name == "ledger.sqlite"
    assert settings.local_queue_path is not None and settings.local_queue_path.name == "queue.sqlite"
    on_azure = ops_settings(None, {"LEDGER_TABLE_ENDPOINT": "https://a.table.core.windows.net",
                                   "ServiceBusConnection__fullyQualifiedNamespace": "ns.servicebus.windows.net"})
    assert on_azure.ledger_path is None and on_azure.local_queue_path is None


def test_purge_on_the_command_line_asks_unless_yes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from p2csync.cli import main

    monkeypatch.setenv("P2C_LEDGER_PATH", str(tmp_path / "l.sqlite"))
    monkeypatch.setenv("P2C_LOCAL_QUEUE_PATH", str(tmp_path / "q.sqlite"))
    with EmbeddedQueue(tmp_path / "q.sqlite") as queue:
        _dead(queue, "a1", "accounts", "MappingFailed")
    settings = ["--settings", str(tmp_path / "none.json")]
    assert main(["deadletters", "purge", *settings]) == 2  # no id, no filter, no --all
    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    assert main(["deadletters", "purge", "--all", *settings]) == 2  # not a terminal: --yes is required
    assert "confirm with --yes" in capsys.readouterr().err
    assert main(["deadletters", "list", "--json", *settings]) == 0
    assert [d["message_id"] for d in json.loads(capsys.readouterr().out)] == ["a1"]
    assert main(["deadletters", "purge", "--all", "--yes", *settings]) == 0
    assert "deleted 1 dead letter(s)" in capsys.readouterr().out
    assert main(["pause", "nope", *settings]) == 1 and "not a flow" in capsys.readouterr().err
