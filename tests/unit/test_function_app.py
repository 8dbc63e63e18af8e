"""function_app.py: the generated bindings, and the functions called directly (no Functions host)."""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

import function_app
from p2csync.localhost import indexed_functions
from p2csync.queue.embedded import EmbeddedQueue
from p2csync.settlement import SettlementRequested, settlement_scope

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "account_create.json"


def _functions() -> dict[str, dict]:
    return {f.get_function_name(): json.loads(f.get_function_json()) for f in indexed_functions(function_app.app)}


def _trigger(spec: dict) -> dict:
    return next(b for b in spec["bindings"] if b["type"].endswith("Trigger"))


def test_the_app_registers_exactly_the_four_functions() -> None:
    assert set(_functions()) == {"dataverse_webhook", "sales_events", "fno_events", "health"}


def test_webhook_binding_is_a_function_key_post_on_dataverse_webhook() -> None:
    trigger = _trigger(_functions()["dataverse_webhook"])
    assert trigger["type"] == "httpTrigger"
    assert trigger["route"] == "dataverse/webhook"
    assert [m.upper() for m in trigger["methods"]] == ["POST"]
    assert trigger["authLevel"].upper() == "FUNCTION"


@pytest.mark.parametrize("name,queue", [("sales_events", "sales-events"), ("fno_events", "fno-events")])
def test_queue_triggers_use_the_identity_connection_setting(name: str, queue: str) -> None:
    trigger = _trigger(_functions()[name])
    assert trigger["type"] == "serviceBusTrigger"
    assert trigger["queueName"] == queue
    assert trigger["connection"] == "ServiceBusConnection"
    assert not trigger.get("isSessionsEnabled", False)


def test_health_is_anonymous_get() -> None:
    trigger = _trigger(_functions()["health"])
    assert trigger["authLevel"].upper() == "ANONYMOUS"
    assert [m.upper() for m in trigger["methods"]] == ["GET"]


def _post(body: bytes, headers: dict[str, str] | None = None) -> func.HttpRequest:
    return func.HttpRequest(method="POST", url="/api/dataverse/webhook", headers=headers or {}, params={},
                            route_params={}, body=body)


async def test_webhook_called_directly_enqueues_once_with_a_deterministic_message_id(runtime_env: dict) -> None:
    body = FIXTURE.read_bytes()
    first = await function_app.dataverse_webhook(_post(body, {"x-ms-dynamics-entity-name": "account"}))
    second = await function_app.dataverse_webhook(_post(body))
    assert first.status_code == 202 and second.status_code == 202
    first_id = json.loads(first.get_body())["messageId"]
    assert json.loads(second.get_body())["messageId"] == first_id
    queue = EmbeddedQueue(runtime_env["P2C_LOCAL_QUEUE_PATH"])
    messages = queue.peek("sales-events")
    assert [m.message_id for m in messages] == [first_id]  # the second POST was a duplicate
    assert messages[0].body == body


@pytest.mark.parametrize(
    "body,status,code",
    [
        (b"not json", 400, "MalformedPayload"),
        (b"[1, 2]", 400, "MalformedPayload"),
        (b'{"MessageName": "Create"}', 400, "MalformedPayload"),
        (b"{" + b" " * (256 * 1024) + b"}", 413, "PayloadTooLarge"),
    ],
)
async def test_webhook_rejects_bad_bodies_with_a_reason(runtime_env: dict, body: bytes, status: int, code: str) -> None:
    response = await function_app.dataverse_webhook(_post(body))
    assert response.status_code == status
    error = json.loads(response.get_body())["error"]
    assert error["code"] == code and error["message"]
    assert EmbeddedQueue(runtime_env["P2C_LOCAL_QUEUE_PATH"]).peek("sales-events") == []


async def test_health_reports_the_flows(runtime_env: dict) -> None:
    request = func.HttpRequest(method="GET", url="/api/health", headers={}, params={}, route_params={}, body=b"")
    response = await function_app.health(request)
    assert response.status_code == 200
    assert "accounts" in json.loads(response.get_body())["flows"]


class RecordingActions:
    """Message actions that remember how the function settled the message."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def complete(self, message: object) -> None:
        self.calls.append(("complete", None))

    def abandon(self, message: object) -> None:
        self.calls.append(("abandon", None))

    def deadletter(self, message: object, deadletter_reason: str | None = None,
                   deadletter_error_description: str | None = None) -> None:
        self.calls.append(("deadletter", deadletter_reason))


def _sb_message(body: bytes, message_id: str = "m-1") -> ServiceBusMessage:
    return ServiceBusMessage(body=body, message_id=message_id, application_properties={}, user_properties={},
                             delivery_count=1, lock_token="lock-1", content_type="application/json")


async def test_queue_trigger_called_directly_dead_letters_a_malformed_message(runtime_env: dict) -> None:
    actions = RecordingActions()
    with settlement_scope(actions):
        await function_app.sales_events(_sb_message(b'{"MessageName": 5}'))
    assert actions.calls == [("deadletter", "MalformedMessage")]


async def test_queue_trigger_skips_an_event_no_flow_handles(runtime_env: dict) -> None:
    body = json.loads(FIXTURE.read_text())
    body["PrimaryEntityName"] = "lead"
    body["InputParameters"][0]["value"]["LogicalName"] = "lead"
    actions = RecordingActions()
    with settlement_scope(actions):
        await function_app.fno_events(_sb_message(json.dumps(body).encode()))
    assert actions.calls == [("complete", None)]


async def test_without_message_actions_a_dead_letter_request_makes_the_host_abandon(runtime_env: dict) -> None:
    # Plain bindings with autoCompleteMessages: raising is the only way to refuse a message.
    with pytest.raises(SettlementRequested, match="MalformedMessage"):
        await function_app.sales_events(_sb_message(b"not json"))
