"""Settlement in Azure, at the SDK-type binding's boundary, without the Functions host.

The queue functions of function_app.py are called the way the Python worker calls them: with a message
decoded by the binding package from the host's bytes, and the package's real ``ServiceBusMessageActions``
talking gRPC to a settlement service on loopback (tests/functions_host.py). What reaches that service is
what the host would do to the message on Service Bus.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import function_app
from p2csync.queue.embedded import EmbeddedQueue
from p2csync.envelopes import parse_change_event
from p2csync.runtime import DEFERRALS, LEASE_WAITS, InboundMessage, get_runtime
from tests.functions_host import SettlementServer, binding_actions, host_message

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "account_create.json"


@pytest.fixture
def host() -> SettlementServer:
    with SettlementServer() as server:
        yield server


def test_the_binding_message_reads_as_the_publisher_sent_it() -> None:
    token = uuid.uuid4()
    body = FIXTURE.read_bytes()
    msg = host_message(body, message_id="dataverse:account:1", delivery_count=3, lock_token=token,
                       properties={"http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName": "account",
                                   DEFERRALS: 2})
    inbound = InboundMessage.from_trigger("sales-events", msg)
    assert inbound.body == body
    assert inbound.message_id == "dataverse:account:1"
    assert inbound.delivery_count == 3
    assert inbound.lock_token == str(token)
    assert inbound.content_type == "application/json"
    # AMQP hands keys and string values over as bytes; the runtime sees the strings the publisher set
    assert inbound.application_properties == {
        "http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName": "account", DEFERRALS: 2}
    assert inbound.deferrals == 2
    assert inbound.enqueued_time_utc is not None


async def test_a_malformed_message_is_dead_lettered_with_its_reason(runtime_env: dict, host: SettlementServer) -> None:
    token = uuid.uuid4()
    with binding_actions(host) as actions:
        await function_app.sales_events(host_message(b'{"MessageName": 5}', lock_token=token), actions)
    [call] = host.calls
    assert (call.action, call.lock_token, call.reason) == ("deadletter", str(token), "MalformedMessage")
    assert call.description and "MessageName" in call.description


async def test_an_event_no_flow_syncs_is_completed(runtime_env: dict, host: SettlementServer) -> None:
    body = json.loads(FIXTURE.read_text())
    body["PrimaryEntityName"] = "lead"
    body["InputParameters"][0]["value"]["LogicalName"] = "lead"
    with binding_actions(host) as actions:
        await function_app.fno_events(host_message(json.dumps(body).encode()), actions)
    assert [c.action for c in host.calls] == ["complete"]


async def test_a_busy_record_schedules_a_retry_then_completes(runtime_env: dict, host: SettlementServer) -> None:
    runtime = get_runtime()
    event = parse_change_event(FIXTURE.read_bytes(), {})
    record_key = runtime.registry.route(event).record_key(event)
    await runtime.ledger.acquire(record_key, "another-worker", timedelta(minutes=1))  # someone else syncs it
    with binding_actions(host) as actions:
        await function_app.sales_events(host_message(FIXTURE.read_bytes(), message_id="m-7"), actions)
    assert [c.action for c in host.calls] == ["complete"]
    [retry] = EmbeddedQueue(runtime_env["P2C_LOCAL_QUEUE_PATH"]).peek("sales-events")
    # a wait for the record, counted apart from deferrals (a live holder is not a failure)
    assert retry.message_id == "m-7~1" and retry.application_properties[LEASE_WAITS] == 1
    assert DEFERRALS not in retry.application_properties
    assert retry.body == FIXTURE.read_bytes()


async def test_a_lost_lock_does_not_fail_the_invocation(
    runtime_env: dict, host: SettlementServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = uuid.uuid4()
    host.lost_locks.add(str(token))
    with binding_actions(host) as actions, caplog.at_level(logging.WARNING, "p2csync.settlement"):
        await function_app.sales_events(host_message(b"not json", lock_token=token), actions)
    assert host.calls == []  # refused by the host: Service Bus delivers the message again
    assert "deadletter failed" in caplog.text and "delivered again" in caplog.text


def test_the_first_delivery_counts_one() -> None:
    # the AMQP header counts earlier attempts (0 here); the runtime counts deliveries from 1, like .NET
    assert InboundMessage.from_trigger("sales-events", host_message(b"{}", delivery_count=1)).delivery_count == 1


@pytest.mark.parametrize("body,body_type", [([200000000], "value"), ({"a": 1}, "value"), ([[1, 2]], "sequence")])
async def test_a_body_that_is_not_binary_data_is_dead_lettered_unread(
    runtime_env: dict, host: SettlementServer, body: object, body_type: str
) -> None:
    with binding_actions(host) as actions:
        await function_app.sales_events(host_message(body, body_type=body_type), actions)
    [call] = host.calls
    assert (call.action, call.reason) == ("deadletter", "MalformedMessage")
    assert "section, not data" in (call.description or "")  # (uamqp decodes a sequence as a value)


async def test_a_deferral_carries_properties_amqp_types_as_text(runtime_env: dict, host: SettlementServer) -> None:
    """Publishers set AMQP types our outbound model does not take (a UUID here; a timestamp arrives as epoch
    milliseconds). The scheduled copy must still be sendable, or the deferral would become a redelivery loop."""
    runtime = get_runtime()
    event = parse_change_event(FIXTURE.read_bytes(), {})
    await runtime.ledger.acquire(runtime.registry.route(event).record_key(event), "another-worker",
                                 timedelta(minutes=1))
    marker, when = uuid.uuid4(), datetime(2026, 11, 22, 8, 30, tzinfo=UTC)
    msg = host_message(FIXTURE.read_bytes(), message_id="m-8", properties={"Marker": marker, "EventTime": when})
    with binding_actions(host) as actions:
        await function_app.sales_events(msg, actions)
    assert [c.action for c in host.calls] == ["complete"]
    [retry] = EmbeddedQueue(runtime_env["P2C_LOCAL_QUEUE_PATH"]).peek("sales-events")
    assert retry.application_properties["Marker"] == str(marker)
    assert retry.application_properties["EventTime"] == int(when.timestamp() * 1000)


async def test_an_unexpected_error_is_deferred_not_abandoned(
    runtime_env: dict, host: SettlementServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger outage must not burn the queue's ten deliveries in seconds: it is retried with backoff, and
    dead-lettered with the error as its reason only if it persists (MaxDeferralsExceeded)."""
    runtime = get_runtime()

    async def unavailable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("ledger unreachable")

    monkeypatch.setattr(runtime.ledger, "acquire", unavailable)
    with binding_actions(host) as actions:
        await function_app.sales_events(host_message(FIXTURE.read_bytes(), message_id="m-9"), actions)
    assert [c.action for c in host.calls] == ["complete"]
    [retry] = EmbeddedQueue(runtime_env["P2C_LOCAL_QUEUE_PATH"]).peek("sales-events")
    assert retry.message_id == "m-9~1"

    host.calls.clear()
    last = host_message(FIXTURE.read_bytes(), message_id="m-9~20", properties={
        DEFERRALS: runtime.settings.max_deferrals, "p2c-original-message-id": "m-9"})
    with binding_actions(host) as actions:
        await function_app.sales_events(last, actions)
    [call] = host.calls
    assert (call.action, call.reason) == ("deadletter", "MaxDeferralsExceeded")
    assert "unexpected ConnectionError: ledger unreachable" in (call.description or "")
