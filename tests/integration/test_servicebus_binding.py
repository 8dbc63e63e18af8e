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
from datetime import timedelta
from pathlib import Path

import pytest

import function_app
from p2csync.queue.embedded import EmbeddedQueue
from p2csync.envelopes import parse_change_event
from p2csync.runtime import DEFERRALS, InboundMessage, get_runtime
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
    assert retry.message_id == "m-7~1" and retry.application_properties[DEFERRALS] == 1
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
