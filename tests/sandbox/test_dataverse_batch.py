"""The Dataverse sandbox's `$batch` over loopback HTTP, written by hand as the documented examples are (issue 9).

Change sets are all or nothing and their webhooks fire after commit only; without continue-on-error the batch
answers with the failing request's status; GET inside a change set, nested change sets and over 1000 requests
are refused whole with 400 in Dataverse's error shape; `$n` references a row created earlier in the set."""

from __future__ import annotations

import json

import httpx

from p2csync.connectors.odata import BatchRequestPart, decode_batch_response, encode_batch
from sandbox import SandboxServer
from sandbox.dataverse_events import WebhookStep
from tests.sandbox.conftest import Receiver

ROOT = "/api/data/v9.2/"


def part(method: str, url: str, body: dict | None = None, content_id: str | None = None) -> BatchRequestPart:
    data = json.dumps(body).encode() if body is not None else None
    return BatchRequestPart(method, ROOT + url, data, {"Content-Type": "application/json"} if data else {},
                            content_id)


def send(dv: httpx.Client, items: list, *, prefer: str | None = None) -> httpx.Response:
    content_type, body = encode_batch(items)
    headers = {"Content-Type": content_type, **({"Prefer": prefer} if prefer else {})}
    return dv.post("$batch", content=body, headers=headers)


def answers(response: httpx.Response) -> list[list[int]]:
    return [[p.status for p in item] for item in decode_batch_response(response.headers["content-type"],
                                                                       response.content)]


def test_changeset_commits_in_order_with_content_id_references(sandbox: SandboxServer, dv: httpx.Client) -> None:
    response = send(dv, [[part("POST", "accounts", {"name": "Parent"}, "1"),
                          part("POST", "contacts", {"lastname": "Child", "parentcustomerid_account@odata.bind": "$1"},
                               "2"),
                          part("PATCH", "$1", {"telephone1": "555"}, "3")]])
    assert response.status_code == 200 and answers(response) == [[204, 204, 204]]
    account = sandbox.dataverse.rows("account")[0]
    assert account["telephone1"] == "555"
    assert sandbox.dataverse.rows("contact")[0]["_parentcustomerid_value"] == account["accountid"]


def test_failed_changeset_rolls_back_answers_its_status_and_fires_no_webhook(
        sandbox: SandboxServer, dv: httpx.Client, receiver: Receiver) -> None:
    sandbox.dataverse.register_webhook(receiver.url, steps=[WebhookStep(table="account", message="Create")])
    response = send(dv, [[part("POST", "accounts", {"name": "A", "accountnumber": "K-1"}, "1"),
                          part("POST", "accounts", {"name": "B", "accountnumber": "K-1"}, "2")],
                         part("POST", "accounts", {"name": "never run"})])
    assert response.status_code == 412  # the failing request's status (the duplicate key)
    parsed = decode_batch_response(response.headers["content-type"], response.content)
    assert len(parsed) == 1 and parsed[0][0].status == 412 and parsed[0][0].content_id == "2"
    assert json.loads(parsed[0][0].body)["error"]["code"] == "0x80060892"
    assert sandbox.dataverse.rows("account") == []
    assert sandbox.dataverse.wait_idle(5) and receiver.calls == []
    ok = send(dv, [[part("POST", "accounts", {"name": "C"}, "1")]])
    assert ok.status_code == 200 and sandbox.dataverse.wait_idle(5) and len(receiver.calls) == 1


def test_continue_on_error_runs_every_item(sandbox: SandboxServer, dv: httpx.Client) -> None:
    response = send(dv, [part("POST", "accounts", {"name": "A", "creditlimit": "bad"}),
                         [part("POST", "accounts", {"name": "B"}, "1")],
                         part("GET", "accounts?$select=name")], prefer="odata.continue-on-error")
    assert response.status_code == 200 and answers(response) == [[400], [204], [200]]
    assert [row["name"] for row in sandbox.dataverse.rows("account")] == ["B"]


def test_upsert_by_alternate_key_inside_a_changeset(sandbox: SandboxServer, dv: httpx.Client) -> None:
    items = [[part("PATCH", "salesorders(ordernumber='SO-1')", {"name": "SO-1"}, "1"),
              part("PATCH", "salesorderdetails(msdynce_ordernumber='SO-1',sequencenumber=1)",
                   {"quantity": 2, "salesorderid@odata.bind": "/salesorders(ordernumber='SO-1')"}, "2")]]
    assert answers(send(dv, items)) == [[204, 204]]
    assert answers(send(dv, items)) == [[204, 204]]
    assert len(sandbox.dataverse.rows("salesorder")) == 1 and len(sandbox.dataverse.rows("salesorderdetail")) == 1


def refused(response: httpx.Response, text: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and text in error["message"]


def test_refuses_what_dataverse_refuses_and_runs_nothing(sandbox: SandboxServer, dv: httpx.Client) -> None:
    refused(send(dv, [[part("POST", "accounts", {"name": "x"}, str(n)) for n in range(1, 1002)]]),
            "The current change set contains too many operations. A maximum number of '1000' operations")
    refused(send(dv, [part("POST", "accounts", {"name": "x"}) for _ in range(1001)]),
            "The current batch message contains too many parts. A maximum number of '1000'")
    get_in_set = ("--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Type: application/http\r\n"
                  "Content-Transfer-Encoding: binary\r\n\r\nGET /api/data/v9.2/accounts HTTP/1.1\r\n\r\n\r\n--c--\r\n"
                  "--b--\r\n")
    refused(dv.post("$batch", content=get_in_set, headers={"Content-Type": "multipart/mixed; boundary=b"}),
            "An invalid HTTP method 'GET' was detected for a request in a change set")
    nested = ("--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n"
              "Content-Type: multipart/mixed; boundary=d\r\n\r\n--d--\r\n--c--\r\n--b--\r\n")
    refused(dv.post("$batch", content=nested, headers={"Content-Type": "multipart/mixed; boundary=b"}),
            "Nested change sets in a batch payload are not supported.")
    undeclared = send(dv, [[part("POST", "contacts", {"lastname": "x", "parentcustomerid_account@odata.bind": "$1"},
                                 "2"), part("POST", "accounts", {"name": "later"}, "1")]])
    assert undeclared.status_code == 400
    assert "Content-ID Reference: '$1' does not exist in the batch context." in undeclared.text
    assert sandbox.dataverse.rows("account") == [] and sandbox.dataverse.rows("contact") == []
    assert len(sandbox.dataverse.request_log.entries(method="POST")) == 5  # a batch is one request
