"""Webhook payloads (RemoteExecutionContext) and delivery rules, received by a real loopback endpoint."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from sandbox import INTEGRATION_USER_ID, SALES_USER_ID, EntityImage, SandboxServer, WebhookStep
from tests.sandbox.conftest import Receiver

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
ACCOUNT_KEY = "accounts(accountnumber='US-001')"


def kv(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    return {p["key"]: p["value"] for p in pairs}


def target(payload: dict[str, Any]) -> dict[str, Any]:
    return kv(payload["InputParameters"])["Target"]


def attributes(entity: dict[str, Any]) -> dict[str, Any]:
    return kv(entity["Attributes"])


def register(sandbox: SandboxServer, receiver: Receiver, *steps: WebhookStep, key: str = "fn-key") -> None:
    sandbox.dataverse.register_webhook(receiver.url, key=key, steps=list(steps))


def settle(sandbox: SandboxServer) -> None:
    assert sandbox.dataverse.wait_idle(5)


def test_create_payload_shape(sandbox: SandboxServer, receiver: Receiver, dv: httpx.Client) -> None:
    step = WebhookStep(table="account", message="Create", post_image=EntityImage(alias="PostImage",
                                                                                 columns=["name", "revenue"]))
    register(sandbox, receiver, step)
    dv.patch(ACCOUNT_KEY + "?tag=fo-sync", json={"name": "Contoso", "revenue": 5000000, "industrycode": 7})
    settle(sandbox)
    [call] = receiver.calls
    assert call["query"] == {"code": "fn-key"}
    headers = call["headers"]
    assert headers["x-ms-dynamics-organization"] == sandbox.dataverse.organization.domain
    assert headers["x-ms-dynamics-entity-name"] == "account"
    assert headers["x-ms-dynamics-request-name"] == "Create"
    assert "x-ms-dynamics-msg-size-exceeded" not in headers
    assert b"http:\\/\\/schemas.microsoft.com" in call["raw"]  # DataContractJsonSerializer escaping

    payload = call["json"]
    record_id = sandbox.dataverse.get("account", {"accountnumber": "US-001"})["accountid"]
    assert headers["x-ms-correlation-request-id"] == payload["CorrelationId"]
    assert payload["MessageName"] == "Create" and payload["Stage"] == 40 and payload["Mode"] == 1
    assert payload["Depth"] == 1 and payload["ParentContext"] is None
    assert payload["PrimaryEntityName"] == "account" and payload["PrimaryEntityId"] == record_id
    assert payload["InitiatingUserId"] == payload["UserId"] == INTEGRATION_USER_ID
    assert payload["OrganizationId"] == sandbox.dataverse.organization.id
    assert payload["OwningExtension"]["Id"] == step.id
    assert payload["OwningExtension"]["LogicalName"] == "sdkmessageprocessingstep"
    assert kv(payload["OutputParameters"]) == {"id": record_id}
    assert re.fullmatch(r"/Date\(\d+\+0000\)/", payload["OperationCreatedOn"])
    assert kv(payload["SharedVariables"])["tag"] == "fo-sync"

    entity = target(payload)
    assert entity["__type"] == f"Entity:{CONTRACTS}"
    assert entity["LogicalName"] == "account" and entity["Id"] == record_id
    assert kv(entity["KeyAttributes"]) == {"accountnumber": "US-001"}
    attrs = attributes(entity)
    assert attrs["accountid"] == record_id and attrs["name"] == "Contoso"
    assert attrs["revenue"] == {"__type": f"Money:{CONTRACTS}", "Value": 5000000.0}
    assert attrs["industrycode"] == {"__type": f"OptionSetValue:{CONTRACTS}", "Value": 7}
    assert attrs["statecode"]["Value"] == 0 and attrs["statuscode"]["Value"] == 1
    assert attrs["ownerid"]["__type"] == f"EntityReference:{CONTRACTS}"
    assert attrs["ownerid"]["LogicalName"] == "systemuser" and attrs["ownerid"]["Id"] == INTEGRATION_USER_ID
    assert attrs["transactioncurrencyid"]["LogicalName"] == "transactioncurrency"
    assert re.fullmatch(r"/Date\(\d+\)/", attrs["createdon"]) and attrs["createdon"] == attrs["modifiedon"]
    assert attrs["modifiedonbehalfby"] is None
    formatted = kv(entity["FormattedValues"])
    assert formatted["industrycode"] == "Consulting" and formatted["revenue"] == "$5,000,000.00"
    assert formatted["statecode"] == "Active"

    images = kv(payload["PostEntityImages"])
    assert set(images) == {"AsynchronousStepPrimaryName", "PostImage"}
    primary = images["AsynchronousStepPrimaryName"]
    assert "__type" not in primary
    assert attributes(primary) == {"name": "Contoso", "accountid": record_id}
    assert set(attributes(images["PostImage"])) == {"name", "revenue"}
    assert payload["PreEntityImages"] == []


def test_update_target_holds_only_the_changed_columns(sandbox: SandboxServer, receiver: Receiver,
                                                      dv_sales: httpx.Client) -> None:
    register(sandbox, receiver, WebhookStep(table="account", message="Update",
                                            pre_image=EntityImage(alias="PreImage", columns=["telephone1"]),
                                            post_image=EntityImage(alias="PostImage")))
    record_id = sandbox.dataverse.create("account", {"name": "Contoso", "accountnumber": "US-001",
                                                     "telephone1": "111"})
    dv_sales.patch(f"accounts({record_id})", json={"telephone1": "222"})
    settle(sandbox)
    [payload] = receiver.payloads()
    assert payload["MessageName"] == "Update"
    entity = target(payload)
    assert set(attributes(entity)) == {"accountid", "telephone1", "modifiedon", "modifiedby"}
    assert attributes(entity)["modifiedby"]["Id"] == SALES_USER_ID
    assert entity["KeyAttributes"] == []  # addressed by GUID
    assert payload["OutputParameters"] == []
    assert payload["UserId"] == SALES_USER_ID
    assert payload["ParentContext"]["Stage"] == 30
    assert attributes(kv(payload["PreEntityImages"])["PreImage"]) == {"telephone1": "111"}
    post = attributes(kv(payload["PostEntityImages"])["PostImage"])
    assert post["telephone1"] == "222" and post["name"] == "Contoso" and post["accountnumber"] == "US-001"


def test_python_api_raises_events_like_the_web_api(sandbox: SandboxServer, receiver: Receiver) -> None:
    register(sandbox, receiver, WebhookStep(table="contact", message="Create"),
             WebhookStep(table="contact", message="Update"), WebhookStep(table="contact", message="Delete"))
    dv = sandbox.dataverse
    contact_id = dv.create("contact", {"firstname": "Ada", "lastname": "Lovelace", "msdynce_contactnumber": "C-1"})
    assert dv.update("contact", contact_id, {"firstname": "Ada", "jobtitle": "Analyst"}) is True
    assert dv.update("contact", contact_id, {"jobtitle": "Analyst"}) is False  # nothing changed: no save
    dv.delete("contact", {"msdynce_contactnumber": "C-1"})
    settle(sandbox)
    created, updated, deleted = receiver.payloads()
    assert [p["MessageName"] for p in (created, updated, deleted)] == ["Create", "Update", "Delete"]
    assert created["UserId"] == SALES_USER_ID  # the UI user by default
    assert attributes(target(created))["fullname"] == "Ada Lovelace"
    assert set(attributes(target(updated))) == {"contactid", "jobtitle", "modifiedon", "modifiedby"}
    reference = target(deleted)
    assert reference["__type"] == f"EntityReference:{CONTRACTS}"
    assert reference["Id"] == contact_id and reference["LogicalName"] == "contact"
    assert kv(reference["KeyAttributes"]) == {"msdynce_contactnumber": "C-1"}
    assert deleted["PostEntityImages"] == []
    assert len({p["OperationId"] for p in (created, updated, deleted)}) == 3


def test_filtering_attributes(sandbox: SandboxServer, receiver: Receiver) -> None:
    register(sandbox, receiver, WebhookStep(table="account", message="Update",
                                            filtering_attributes=["name", "telephone1"]))
    dv = sandbox.dataverse
    record_id = dv.create("account", {"name": "A"})
    dv.update("account", record_id, {"websiteurl": "https://example.invalid"})
    dv.update("account", record_id, {"telephone1": "1"})
    settle(sandbox)
    payloads = receiver.payloads()
    assert len(payloads) == 1
    assert "telephone1" in attributes(target(payloads[0]))


def test_steps_match_table_and_message(sandbox: SandboxServer, receiver: Receiver) -> None:
    register(sandbox, receiver, WebhookStep(table="account", message="Update"))
    dv = sandbox.dataverse
    record_id = dv.create("account", {"name": "A"})
    dv.create("contact", {"lastname": "B"})
    dv.update("account", record_id, {"name": "A2"})
    settle(sandbox)
    assert [(p["PrimaryEntityName"], p["MessageName"]) for p in receiver.payloads()] == [("account", "Update")]


def test_bypass_custom_async_logic_suppresses_webhooks(sandbox: SandboxServer, receiver: Receiver,
                                                        dv: httpx.Client) -> None:
    register(sandbox, receiver, WebhookStep(table="account", message="Create"))
    dv.post("accounts", json={"name": "quiet"}, headers={"MSCRM.BypassBusinessLogicExecution": "CustomAsync"})
    dv.post("accounts", json={"name": "loud"}, headers={"MSCRM.BypassCustomPluginExecution": "true"})
    settle(sandbox)
    assert [attributes(target(p))["name"] for p in receiver.payloads()] == ["loud"]


def test_5xx_gateway_errors_get_exactly_one_retry(sandbox: SandboxServer, receiver: Receiver) -> None:
    register(sandbox, receiver, WebhookStep(table="account", message="Create"))
    receiver.statuses = [502, 502]
    sandbox.dataverse.create("account", {"name": "A"})
    settle(sandbox)
    assert len(receiver.calls) == 2
    [job] = sandbox.dataverse.system_jobs()
    assert job.statuscode == 31 and job.attempts == 2

    receiver.reset()
    receiver.statuses = [503]
    sandbox.dataverse.create("account", {"name": "B"})
    settle(sandbox)
    assert len(receiver.calls) == 2
    assert sandbox.dataverse.system_jobs(statuscode=30)[0].attempts == 2


@pytest.mark.parametrize("status", [400, 500])
def test_other_failures_are_not_retried_and_leave_a_failed_system_job(
        sandbox: SandboxServer, receiver: Receiver, dv: httpx.Client, status: int) -> None:
    step = WebhookStep(table="account", message="Create")
    register(sandbox, receiver, step)
    receiver.statuses = [status]
    sandbox.dataverse.create("account", {"name": "A"})
    settle(sandbox)
    assert len(receiver.calls) == 1
    [job] = sandbox.dataverse.system_jobs(statuscode=31)
    assert job.step_id == step.id and str(status) in (job.message or "")
    # queryable like the real asyncoperation table, and through the admin endpoint
    jobs = dv.get("asyncoperations", params={
        "$filter": f"_owningextensionid_value eq {step.id} and statuscode eq 31"}).json()["value"]
    assert [j["asyncoperationid"] for j in jobs] == [job.id]
    admin = httpx.get(f"{sandbox.dataverse_url}/_sandbox/systemjobs", params={"statuscode": 31}, trust_env=False)
    assert [j["id"] for j in admin.json()] == [job.id]


def test_unreachable_endpoint_fails_without_retry(sandbox: SandboxServer) -> None:
    sandbox.dataverse.register_webhook("http://127.0.0.1:9/hook", steps=[WebhookStep(table="account",
                                                                                     message="Create")])
    sandbox.dataverse.create("account", {"name": "A"})
    settle(sandbox)
    [job] = sandbox.dataverse.system_jobs()
    assert job.statuscode == 31 and job.attempts == 1


def test_duplicates_knob_redelivers_the_same_operation(sandbox: SandboxServer, receiver: Receiver) -> None:
    register(sandbox, receiver, WebhookStep(table="account", message="Create"))
    sandbox.dataverse.webhooks.duplicates = 3
    sandbox.dataverse.create("account", {"name": "A"})
    settle(sandbox)
    payloads = receiver.payloads()
    assert len(payloads) == 3
    assert len({p["OperationId"] for p in payloads}) == 1


def test_pause_and_reversed_resume(sandbox: SandboxServer, receiver: Receiver) -> None:
    register(sandbox, receiver, WebhookStep(table="account", message="Create"),
             WebhookStep(table="account", message="Update"))
    dv = sandbox.dataverse
    dv.webhooks.pause()
    record_id = dv.create("account", {"name": "v1"})
    dv.update("account", record_id, {"name": "v2"})
    dv.update("account", record_id, {"name": "v3"})
    assert dv.wait_idle(0.2) is False  # held
    assert receiver.calls == []
    dv.webhooks.resume(order="reversed")
    settle(sandbox)
    names = [attributes(target(p))["name"] for p in receiver.payloads()]
    assert names == ["v3", "v2", "v1"]


def test_delivery_is_in_commit_order_by_default(sandbox: SandboxServer, receiver: Receiver) -> None:
    register(sandbox, receiver, WebhookStep(table="account", message="Update"))
    dv = sandbox.dataverse
    record_id = dv.create("account", {"name": "v0"})
    for i in range(1, 6):
        dv.update("account", record_id, {"name": f"v{i}"})
    settle(sandbox)
    assert [attributes(target(p))["name"] for p in receiver.payloads()] == [f"v{i}" for i in range(1, 6)]


def test_oversized_payload_is_trimmed_with_header(sandbox: SandboxServer, receiver: Receiver) -> None:
    register(sandbox, receiver, WebhookStep(table="account", message="Create",
                                            post_image=EntityImage(alias="PostImage")))
    sandbox.dataverse.create("account", {"name": "Big", "description": "x" * 300_000})
    settle(sandbox)
    [call] = receiver.calls
    assert call["headers"]["x-ms-dynamics-msg-size-exceeded"]
    payload = call["json"]
    for member in ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages"):
        assert member not in payload  # removed, not emptied
    assert payload["PrimaryEntityName"] == "account" and payload["MessageName"] == "Create"
    assert len(call["raw"]) < 256 * 1024


def test_webhook_registration_through_admin_endpoint(sandbox: SandboxServer, receiver: Receiver) -> None:
    response = httpx.post(f"{sandbox.dataverse_url}/_sandbox/webhooks", trust_env=False, json={
        "url": receiver.url, "key": "k2",
        "steps": [{"table": "account", "message": "Update", "filtering_attributes": ["name"]}]})
    assert response.status_code == 201
    record_id = sandbox.dataverse.create("account", {"name": "A"})
    sandbox.dataverse.update("account", record_id, {"name": "B"})
    idle = httpx.get(f"{sandbox.dataverse_url}/_sandbox/delivery/idle", params={"timeout": 5}, trust_env=False)
    assert idle.json() == {"idle": True}
    assert [c["query"]["code"] for c in receiver.calls] == ["k2"]


@pytest.mark.parametrize("workers", [1, 4])
def test_webhook_workers_deliver_that_many_at_once(workers: int) -> None:
    """The asynchronous service runs async steps in parallel: with ``webhook_workers`` N, a slow endpoint
    sees N deliveries at once (1, the default, keeps commit order: one at a time)."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sandbox.dataverse import Dataverse

    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            self.rfile.read(int(self.headers["content-length"]))
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.1)
            with lock:
                state["now"] -= 1
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dataverse = Dataverse(webhook_workers=workers)
    try:
        dataverse.register_webhook(f"http://127.0.0.1:{server.server_port}/hook",
                                   steps=[WebhookStep(table="account", message="Create")])
        for n in range(8):
            dataverse.create("account", {"name": f"Parallel {n}"})
        assert dataverse.wait_idle(10)
        assert state["most"] == workers
        assert len(dataverse.webhooks.delivered_payloads) == 8
    finally:
        dataverse.close()
        server.shutdown()
