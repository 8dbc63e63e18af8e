"""Plug-in registration over the Web API: serviceendpoint, sdkmessage, sdkmessagefilter,
sdkmessageprocessingstep and sdkmessageprocessingstepimage.

The rows are the sandbox's only webhook registry: what a client registers over HTTP is what the sandbox
delivers, received here by a real loopback endpoint.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sandbox import (
    SALES_USER_ID, EntityImage, SandboxServer, WebhookEndpoint, WebhookRegistration, WebhookStep,
)
from tests.sandbox.conftest import Receiver

KEY = "fn-key-123"


def kv(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    return {p["key"]: p["value"] for p in pairs}


def one(dv: httpx.Client, entity_set: str, filter: str) -> dict[str, Any]:
    [row] = dv.get(entity_set, params={"$filter": filter}).json()["value"]
    return row


def message_id(dv: httpx.Client, name: str) -> str:
    return one(dv, "sdkmessages", f"name eq '{name}'")["sdkmessageid"]


def filter_id(dv: httpx.Client, table: str, message: str) -> str:
    row = one(dv, "sdkmessagefilters",
              f"primaryobjecttypecode eq '{table}' and _sdkmessageid_value eq {message_id(dv, message)}")
    return row["sdkmessagefilterid"]


def created_id(response: httpx.Response) -> str:
    assert response.status_code == 204, response.text
    return response.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def post_endpoint(dv: httpx.Client, url: str, key: str | None = KEY, **extra: Any) -> str:
    body = {"name": "hook", "contract": 8, "authtype": 4, "url": url, "messageformat": 2, "userclaim": 1,
            **extra}
    if key is not None:
        body["authvalue"] = key
    return created_id(dv.post("serviceendpoints", json=body))


def step_body(dv: httpx.Client, endpoint_id: str, message: str, table: str = "account", **extra: Any) -> dict:
    return {"name": f"{message} of {table}", "mode": 1, "stage": 40, "rank": 1, "supporteddeployment": 0,
            "asyncautodelete": False,
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
            "sdkmessageid@odata.bind": f"/sdkmessages({message_id(dv, message)})",
            "sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({filter_id(dv, table, message)})", **extra}


def post_step(dv: httpx.Client, endpoint_id: str, message: str, table: str = "account", **extra: Any) -> str:
    body = step_body(dv, endpoint_id, message, table, **extra)
    return created_id(dv.post("sdkmessageprocessingsteps", json=body))


def image_body(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"name": "post", "entityalias": "post", "imagetype": 1, "messagepropertyname": "Target",
            "attributes": "name,telephone1",
            "sdkmessageprocessingstepid@odata.bind": f"/sdkmessageprocessingsteps({step_id})", **extra}


def settle(sandbox: SandboxServer) -> None:
    assert sandbox.dataverse.wait_idle(5)


def test_messages_and_filters_are_seeded_and_read_only(dv: httpx.Client) -> None:
    assert {m["name"] for m in dv.get("sdkmessages").json()["value"]} >= {"Create", "Update", "Delete"}
    update = message_id(dv, "Update")
    tables = {f["primaryobjecttypecode"] for f in dv.get("sdkmessagefilters", params={
        "$filter": f"_sdkmessageid_value eq {update}"}).json()["value"]}
    assert {"account", "contact", "quote", "salesorder", "invoicedetail"} <= tables
    assert not tables & {"sdkmessageprocessingstep", "serviceendpoint", "asyncoperation"}
    assert dv.get("sdkmessagefilters", params={"$filter": "primaryobjecttypecode eq 'nosuchtable'"}).json()[
        "value"] == []
    response = dv.post("sdkmessagefilters", json={"name": "x", "primaryobjecttypecode": "account"})
    assert response.status_code == 405


def test_endpoint_create_read_and_write_only_authvalue(sandbox: SandboxServer, dv: httpx.Client) -> None:
    response = dv.post("serviceendpoints", headers={"Prefer": "return=representation"}, json={
        "name": "hook", "contract": 8, "authtype": 4, "url": "https://example.invalid/api/hook",
        "authvalue": KEY})
    assert response.status_code == 201
    row = response.json()
    assert row["contract"] == 8 and row["authtype"] == 4 and row["url"] == "https://example.invalid/api/hook"
    assert "authvalue" not in row and KEY not in response.text
    endpoint_id = row["serviceendpointid"]
    assert response.headers["OData-EntityId"].endswith(f"serviceendpoints({endpoint_id})")
    fetched = dv.get(f"serviceendpoints({endpoint_id})")
    assert fetched.status_code == 200 and "authvalue" not in fetched.json() and KEY not in fetched.text
    assert KEY not in dv.get("serviceendpoints").text
    assert dv.get("serviceendpoints", params={"$select": "authvalue"}).status_code == 400
    assert dv.get("serviceendpoints", params={"$filter": f"authvalue eq '{KEY}'"}).status_code == 400
    # still stored: it is what the delivery sends
    [registration] = sandbox.dataverse.webhooks.registrations
    assert registration.endpoint.auth_value == KEY and registration.steps == []
    assert dv.patch(f"serviceendpoints({endpoint_id})", json={"authvalue": "rotated"}).status_code == 204
    assert sandbox.dataverse.webhooks.registrations[0].endpoint.auth_value == "rotated"


@pytest.mark.parametrize("body,fragment", [
    ({"contract": 8, "authtype": 4, "url": "not-a-url"}, "absolute http(s) url"),
    ({"contract": 8, "authtype": 2, "url": "https://x.invalid/"}, "authtype"),
    ({"contract": 8, "authtype": 4, "url": "https://x.invalid:8443/hook"},
     "support only port 80 for HTTP and port 443 for HTTPS"),
    ({"contract": 8, "authtype": 4, "url": "http://x.invalid:8080/hook"}, "got port 8080"),
    ({"contract": 8, "authtype": 4, "url": "https://x.invalid:80/hook"}, "got port 80"),
])
def test_endpoint_rules(dv: httpx.Client, body: dict[str, Any], fragment: str) -> None:
    response = dv.post("serviceendpoints", json={"name": "bad", **body})
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]
    assert dv.get("serviceendpoints").json()["value"] == []


@pytest.mark.parametrize("url", ["https://x.invalid:443/hook", "http://x.invalid:80/hook", "https://x.invalid/hook",
                                 "http://127.0.0.1:7071/api/dataverse/webhook"])
def test_endpoint_ports_dataverse_accepts(dv: httpx.Client, url: str) -> None:
    response = dv.post("serviceendpoints", json={"name": "ok", "contract": 8, "authtype": 4, "url": url,
                                                 "authvalue": "k"})
    assert response.status_code == 204, response.text


def test_step_binds_and_rules(dv: httpx.Client, receiver: Receiver) -> None:
    endpoint_id = post_endpoint(dv, receiver.url)
    missing = "00000000-0000-0000-0000-0000000000aa"
    cases = [
        ({"eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({missing})"}, "Does Not Exist"),
        ({"sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({filter_id(dv, 'account', 'Create')})"},
         "does not belong to the message"),
        ({"stage": 20}, "PostOperation"),
        ({"filteringattributes": "name,nosuchcolumn"}, "nosuchcolumn"),
        ({"mode": 0, "asyncautodelete": True}, "asynchronous"),
    ]
    for extra, fragment in cases:
        response = dv.post("sdkmessageprocessingsteps", json=step_body(dv, endpoint_id, "Update", **extra))
        assert response.status_code == 400, extra
        error = response.json()["error"]
        assert error["code"].startswith("0x") and fragment in error["message"], (extra, error)
    assert dv.get("sdkmessageprocessingsteps").json()["value"] == []
    step_id = post_step(dv, endpoint_id, "Update", filteringattributes="name")
    step = dv.get(f"sdkmessageprocessingsteps({step_id})").json()
    assert step["_eventhandler_value"] == endpoint_id and step["statecode"] == 0 and step["statuscode"] == 1
    assert step["_sdkmessagefilterid_value"] == filter_id(dv, "account", "Update")
    # an update that would break a rule is refused, and the row stays as it was
    response = dv.patch(f"sdkmessageprocessingsteps({step_id})", json={
        "sdkmessageid@odata.bind": f"/sdkmessages({message_id(dv, 'Create')})"})
    assert response.status_code == 400
    unchanged = dv.get(f"sdkmessageprocessingsteps({step_id})").json()
    assert unchanged["_sdkmessageid_value"] == message_id(dv, "Update")


def test_image_rules(dv: httpx.Client, receiver: Receiver) -> None:
    endpoint_id = post_endpoint(dv, receiver.url)
    create = post_step(dv, endpoint_id, "Create")
    delete = post_step(dv, endpoint_id, "Delete")
    update = post_step(dv, endpoint_id, "Update")
    for step_id, extra, fragment in [
        (create, {}, "'Id'"),  # the post image of a Create comes from the Id property
        (create, {"imagetype": 0, "messagepropertyname": "Id"}, "only have a post image"),
        (delete, {}, "only have a pre image"),
        (update, {"attributes": "name,nosuchcolumn"}, "nosuchcolumn"),
        (update, {"entityalias": None}, "entityalias"),
        ("00000000-0000-0000-0000-0000000000bb", {}, "Does Not Exist"),
    ]:
        response = dv.post("sdkmessageprocessingstepimages", json=image_body(step_id, **extra))
        assert response.status_code == 400, extra
        assert fragment in response.json()["error"]["message"], (extra, response.json())
    assert created_id(dv.post("sdkmessageprocessingstepimages",
                              json=image_body(create, messagepropertyname="Id")))
    assert created_id(dv.post("sdkmessageprocessingstepimages", json=image_body(update)))
    second = dv.post("sdkmessageprocessingstepimages", json=image_body(update, entityalias="again"))
    assert second.status_code == 400


def test_rows_registered_over_the_web_api_drive_delivery(sandbox: SandboxServer, dv: httpx.Client,
                                                         receiver: Receiver) -> None:
    endpoint_id = post_endpoint(dv, receiver.url)
    create_id = post_step(dv, endpoint_id, "Create")
    update_id = post_step(dv, endpoint_id, "Update", filteringattributes="name,telephone1")
    created_id(dv.post("sdkmessageprocessingstepimages",
                       json=image_body(create_id, messagepropertyname="Id")))
    created_id(dv.post("sdkmessageprocessingstepimages", json=image_body(update_id, attributes="name")))

    record_id = sandbox.dataverse.create("account", {"name": "Contoso", "telephone1": "1", "fax": "2"})
    sandbox.dataverse.update("account", record_id, {"fax": "3"})  # not a filtering attribute: no event
    sandbox.dataverse.update("account", record_id, {"telephone1": "4"})
    settle(sandbox)
    assert [c["query"] for c in receiver.calls] == [{"code": KEY}, {"code": KEY}]
    create, update = receiver.payloads()
    assert (create["MessageName"], update["MessageName"]) == ("Create", "Update")
    assert create["OwningExtension"]["Id"] == create_id and update["OwningExtension"]["Id"] == update_id
    assert create["OwningExtension"]["Name"] == "Create of account"
    assert create["Mode"] == 1 and create["Stage"] == 40 and create["UserId"] == SALES_USER_ID
    images = kv(create["PostEntityImages"])
    assert set(kv(images["post"]["Attributes"])) == {"name", "telephone1"}
    assert kv(kv(update["PostEntityImages"])["post"]["Attributes"]) == {"name": "Contoso"}
    assert receiver.calls[1]["headers"]["x-ms-dynamics-request-name"] == "Update"


def test_disabling_or_deleting_a_step_stops_delivery(sandbox: SandboxServer, dv: httpx.Client,
                                                     receiver: Receiver) -> None:
    endpoint_id = post_endpoint(dv, receiver.url)
    step_id = post_step(dv, endpoint_id, "Create")
    image_id = created_id(dv.post("sdkmessageprocessingstepimages",
                                  json=image_body(step_id, messagepropertyname="Id")))

    def created(name: str) -> int:
        receiver.reset()
        sandbox.dataverse.create("account", {"name": name})
        settle(sandbox)
        return len(receiver.calls)

    assert created("first") == 1
    assert dv.patch(f"sdkmessageprocessingsteps({step_id})", json={"statecode": 1}).status_code == 204
    assert dv.get(f"sdkmessageprocessingsteps({step_id})").json()["statuscode"] == 2  # Disabled
    assert created("while disabled") == 0
    enable = dv.patch(f"sdkmessageprocessingsteps({step_id})", json={"statecode": 0, "statuscode": 1})
    assert enable.status_code == 204
    assert created("enabled again") == 1
    assert dv.delete(f"sdkmessageprocessingsteps({step_id})").status_code == 204
    assert dv.get(f"sdkmessageprocessingstepimages({image_id})").status_code == 404  # deleted with its step
    assert created("after the delete") == 0
    post_step(dv, endpoint_id, "Create")
    assert dv.delete(f"serviceendpoints({endpoint_id})").status_code == 204
    assert dv.get("sdkmessageprocessingsteps").json()["value"] == []  # deleted with their endpoint
    assert created("without an endpoint") == 0


def test_register_webhook_writes_the_same_rows(sandbox: SandboxServer, dv: httpx.Client,
                                               receiver: Receiver) -> None:
    step = WebhookStep(table="contact", message="Update", filtering_attributes=["lastname"],
                       post_image=EntityImage(alias="img", columns=["lastname"]))
    registration = sandbox.dataverse.register_webhook(receiver.url, steps=[step], key=KEY, name="python api")
    endpoint = one(dv, "serviceendpoints", "name eq 'python api'")
    assert endpoint["serviceendpointid"] == registration.endpoint.id and "authvalue" not in endpoint
    assert (endpoint["contract"], endpoint["authtype"], endpoint["url"]) == (8, 4, receiver.url)
    row = dv.get(f"sdkmessageprocessingsteps({step.id})").json()
    assert row["_eventhandler_value"] == registration.endpoint.id and row["filteringattributes"] == "lastname"
    assert (row["mode"], row["stage"], row["_sdkmessageid_value"]) == (1, 40, message_id(dv, "Update"))
    image = one(dv, "sdkmessageprocessingstepimages", f"_sdkmessageprocessingstepid_value eq {step.id}")
    assert (image["entityalias"], image["imagetype"], image["attributes"]) == ("img", 1, "lastname")
    assert registration.steps == [step.model_copy(update={"name": row["name"]})]

    sandbox.dataverse.reset()  # registrations survive a reset ...
    assert len(dv.get("sdkmessageprocessingsteps").json()["value"]) == 1
    sandbox.dataverse.reset(webhooks=True)  # ... unless asked
    assert dv.get("serviceendpoints").json()["value"] == []
    assert sandbox.dataverse.webhooks.registrations == []
    with pytest.raises(Exception, match="No sdkmessagefilter"):
        sandbox.dataverse.register_webhook(receiver.url, steps=[WebhookStep(table="asyncoperation",
                                                                            message="Create")])
    assert dv.get("serviceendpoints").json()["value"] == []


def test_http_header_auth_is_kept_as_settings_in_authvalue(sandbox: SandboxServer,
                                                           receiver: Receiver) -> None:
    sandbox.dataverse.add_webhook(WebhookRegistration(
        endpoint=WebhookEndpoint(url=receiver.url, auth="HttpHeader", headers={"x-functions-key": KEY}),
        steps=[WebhookStep(table="account", message="Create")]))
    sandbox.dataverse.create("account", {"name": "A"})
    settle(sandbox)
    [call] = receiver.calls
    assert call["headers"]["x-functions-key"] == KEY and call["query"] == {}


def test_registration_needs_the_customizer_privileges(dv: httpx.Client, dv_sales: httpx.Client) -> None:
    response = dv_sales.post("serviceendpoints", json={"name": "x", "contract": 8, "authtype": 4,
                                                       "url": "https://x.invalid/"})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "0x80040220" and "prvCreateServiceEndpoint" in error["message"]
    assert dv_sales.get("sdkmessageprocessingsteps").status_code == 403
    assert dv_sales.get("sdkmessages").status_code == 200  # messages and filters are readable by anyone
    assert dv.get("sdkmessageprocessingsteps").status_code == 200


def test_asyncautodelete_removes_succeeded_system_jobs_only(sandbox: SandboxServer, dv: httpx.Client,
                                                            receiver: Receiver) -> None:
    endpoint_id = post_endpoint(dv, receiver.url)
    step_id = post_step(dv, endpoint_id, "Create", asyncautodelete=True)
    receiver.statuses = [200, 400]
    sandbox.dataverse.create("account", {"name": "ok"})
    sandbox.dataverse.create("account", {"name": "fails"})
    settle(sandbox)
    assert sorted(job.statuscode for job in sandbox.dataverse.system_jobs(step_id=step_id)) == [30, 31]
    jobs = dv.get("asyncoperations",
                  params={"$filter": f"_owningextensionid_value eq {step_id}"}).json()["value"]
    assert [job["statuscode"] for job in jobs] == [31]
