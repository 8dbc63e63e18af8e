"""What the simulators keep per request or per event is bounded (sandbox.request_log.HISTORY_LIMIT and
PAYLOAD_HISTORY_LIMIT): the oldest records go first, the newest stay for assertions."""

from __future__ import annotations

from datetime import datetime, timezone

from sandbox.dataverse import Dataverse
from sandbox.dataverse_events import WebhookStep
from sandbox.fno import FnO
from sandbox.fno_events import FnoMessage
from sandbox.request_log import HISTORY_LIMIT, PAYLOAD_HISTORY_LIMIT, RequestLog, RequestRecord
from tests.sandbox.conftest import Receiver


def record(path: str) -> RequestRecord:
    return RequestRecord(method="GET", path=path, query="", status=200, user=None,
                         time=datetime.now(timezone.utc), duration_ms=1.0)


def test_defaults_are_bounded() -> None:
    assert HISTORY_LIMIT is not None and PAYLOAD_HISTORY_LIMIT is not None
    assert PAYLOAD_HISTORY_LIMIT <= HISTORY_LIMIT <= 100_000
    assert Dataverse().webhooks.history_limit == HISTORY_LIMIT


def test_the_request_log_keeps_the_newest_records() -> None:
    log = RequestLog(limit=3)
    for index in range(5):
        log.append(record(f"/r{index}"))
    assert len(log) == 3 and [r.path for r in log.entries()] == ["/r2", "/r3", "/r4"]
    unbounded = RequestLog(limit=None)
    for index in range(5):
        unbounded.append(record(f"/r{index}"))
    assert len(unbounded) == 5


def test_webhook_history_is_bounded(receiver: Receiver) -> None:
    dv = Dataverse(history_limit=3, payload_history_limit=2)
    try:
        dv.register_webhook(receiver.url, steps=[WebhookStep(table="account", message="Create")])
        ids = [dv.create("account", {"name": f"A{index}"}) for index in range(6)]
        assert dv.wait_idle()
        assert len(receiver.calls) == 6  # every event is still delivered
        assert len(dv.webhooks.attempts) == 3
        assert [p["PrimaryEntityId"] for p in dv.webhooks.delivered_payloads] == ids[-2:]
        jobs = dv.webhooks.jobs
        assert len(jobs) == 3 and all(job.statuscode == 30 for job in jobs)
        assert jobs[-1].record_id == ids[-1]
    finally:
        dv.close()


def test_fno_event_history_is_bounded() -> None:
    fno = FnO(history_limit=2, payload_history_limit=2)
    events = fno.events
    events.retry_count, events.retry_wait = 0, 0.0
    failing = {"on": True}

    def sink(message: FnoMessage) -> None:
        if failing["on"]:
            raise ConnectionError("queue unreachable")

    events.set_endpoint(sink)
    events.activate_data_event("CustomersV3")
    try:
        for index in range(4):
            fno.create("CustomersV3", {"CustomerAccount": f"E-{index}", "CustomerGroupId": "10"})
        assert events.wait_idle()
        assert len(events.errors()) == 2
        failing["on"] = False
        for index in range(4, 9):
            fno.create("CustomersV3", {"CustomerAccount": f"E-{index}", "CustomerGroupId": "10"})
        assert events.wait_idle()
        delivered = events.delivered("data_event")
        assert len(delivered) == 2 and b"E-8" in delivered[-1].body
    finally:
        events.close()
