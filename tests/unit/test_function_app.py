"""function_app.py: the generated bindings, and the functions called directly (no Functions host)."""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func
import pytest

import function_app
from p2csync.localhost import indexed_functions
from p2csync.queue.embedded import EmbeddedQueue

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "account_create.json"


def _functions() -> dict[str, dict]:
    return {f.get_function_name(): json.loads(f.get_function_json()) for f in indexed_functions(function_app.app)}


def _trigger(spec: dict) -> dict:
    return next(b for b in spec["bindings"] if b["type"].endswith("Trigger"))


def test_the_app_registers_exactly_the_five_functions() -> None:
    assert set(_functions()) == {"dataverse_webhook", "sales_events", "fno_events", "health", "catch_up"}


def test_the_catch_up_runs_on_the_schedule_setting_and_not_at_start_up() -> None:
    trigger = _trigger(_functions()["catch_up"])
    assert trigger["type"] == "timerTrigger" and trigger["schedule"] == "%P2C_CATCHUP_SCHEDULE%"
    assert trigger.get("runOnStartup") is False


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


def test_queue_triggers_settle_explicitly_with_sdk_type_bindings() -> None:
    """autoCompleteMessages off, and the parameters typed with the binding's classes (not strings), which is
    how the Python worker decides to pass a ServiceBusReceivedMessage and the message actions."""
    import typing

    import azurefunctions.extensions.bindings.servicebus as servicebus

    user_functions = {f.get_function_name(): f.get_user_function() for f in indexed_functions(function_app.app)}
    for name in ("sales_events", "fno_events"):
        assert _trigger(_functions()[name])["autoCompleteMessages"] is False
        hints = typing.get_type_hints(user_functions[name])
        assert hints["msg"] is servicebus.ServiceBusReceivedMessage
        assert hints["message_actions"] is servicebus.ServiceBusMessageActions


def test_a_retry_message_id_is_distinct_per_attempt_and_stable() -> None:
    from p2csync.runtime import retry_message_id

    assert retry_message_id("dataverse:account:1", b"{}", 1) == "dataverse:account:1~1"
    for original in ("x" * 128, "x" * 126, ""):  # too long to extend, or no id at all
        ids = [retry_message_id(original, b"{}", attempt) for attempt in range(1, 21)]
        assert len(set(ids)) == 20 and original not in ids
        assert all(0 < len(i) <= 128 for i in ids)
        assert retry_message_id(original, b"{}", 3) == ids[2]  # the same attempt scheduled twice: one copy
    # two id-less messages about different records never share a copy id
    assert retry_message_id("", b'{"a":1}', 1) != retry_message_id("", b'{"a":2}', 1)


def test_property_values_the_copy_cannot_carry_become_text() -> None:
    import uuid
    from datetime import UTC, datetime

    from p2csync.runtime import property_value

    marker = uuid.uuid4()
    assert property_value(marker) == str(marker)
    assert property_value(datetime(2026, 1, 2, tzinfo=UTC)) == "2026-01-02T00:00:00+00:00"
    assert property_value(None) is None
    assert [property_value(v) for v in ("a", 1, 2.5, True)] == ["a", 1, 2.5, True]


def test_indexing_function_app_does_not_import_the_runtime() -> None:
    """The host imports function_app.py to index the functions (cold start); the runtime (connectors, ledger,
    mappings, handlers) loads on the first invocation, so indexing costs only the platform packages."""
    import subprocess
    import sys

    from p2csync.settings import ROOT

    probe = ("import sys, function_app; "
             "print(sorted(m for m in ('p2csync.runtime', 'p2csync.ingress', 'handlers', 'mappings', 'httpx') "
             "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
