"""Webhook bodies at the edges, through the real ingress, the embedded queue and the runtime against the
sandbox (issue 7, points 5 and 9): a Create carrying an image column and attribute kinds the parser does not
know is applied; a body a few bytes under 256 KB is enqueued trimmed and synced by fetching the account."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from p2csync.ingress import MAX_BODY_BYTES, accept_dataverse_webhook
from p2csync.outcomes import Applied
from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport
from p2csync.runtime import InboundMessage, SyncRuntime
from p2csync.settings import Settings
from sandbox import INTEGRATION_TOKEN, INTEGRATION_USER_ID, USD_CURRENCY_ID, SandboxServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes"
CREATE = json.loads((FIXTURES / "dataverse_create_account.json").read_text())
NS = "http://schemas.microsoft.com/xrm/2011/Contracts"
QUEUE = "sales-events"
HEADERS = {"x-ms-dynamics-organization": "contoso.crm.dynamics.com", "x-ms-dynamics-entity-name": "account",
           "x-ms-dynamics-request-name": "Create", "x-ms-correlation-request-id": CREATE["CorrelationId"]}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


@pytest.fixture
async def world(sandbox: SandboxServer, tmp_path: Path) -> AsyncIterator[tuple[SyncRuntime, EmbeddedQueue]]:
    sandbox.reset()
    settings = Settings.from_env({
        "DATAVERSE_URL": sandbox.dataverse_url, "FNO_URL": sandbox.fno_url, "FNO_DEFAULT_COMPANY": "usmf",
        "P2C_AUTH_MODE": "static", "P2C_STATIC_TOKEN": INTEGRATION_TOKEN,
        "INTEGRATION_USER_IDS": INTEGRATION_USER_ID, "P2C_LEDGER_PATH": str(tmp_path / "ledger.sqlite"),
        "P2C_LOCAL_QUEUE_PATH": str(tmp_path / "queue.sqlite")})
    runtime = SyncRuntime.from_settings(settings)
    queue = EmbeddedQueue(tmp_path / "webhook-queue.sqlite")  # Standard tier: 256 KB with properties
    yield runtime, queue
    await runtime.aclose()
    queue.close()


def create_context(account_id: str, number: str, name: str, extra: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """The webhook body of a Create of ``account_id`` (the documented shape, values of the sandbox row)."""
    data = copy.deepcopy(CREATE)
    data["PrimaryEntityId"] = account_id
    target = data["InputParameters"][0]["value"]
    target["Id"] = account_id
    values = {"accountid": account_id, "accountnumber": number, "name": name}
    for pair in target["Attributes"]:
        if pair["key"] in values:
            pair["value"] = values[pair["key"]]
        elif pair["key"] == "transactioncurrencyid":
            pair["value"]["Id"] = USD_CURRENCY_ID
    target["Attributes"].extend(copy.deepcopy(list(extra)))
    data["PostEntityImages"] = []
    return data


async def deliver(runtime: SyncRuntime, queue: EmbeddedQueue, body: bytes) -> tuple[dict[str, Any], Any]:
    """POST through the ingress onto the queue, then one delivery through the runtime."""
    result = await accept_dataverse_webhook(body, HEADERS, EmbeddedTransport(queue), QUEUE)
    assert result.status == 202, result.body
    [received] = queue.receive(QUEUE)
    message = InboundMessage(queue=QUEUE, body=received.body, message_id=received.message_id,
                             application_properties=dict(received.application_properties),
                             content_type=received.content_type, lock_token=received.lock_token)

    class Actions:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def complete(self, msg: Any) -> None:
            self.calls.append("complete")

        def abandon(self, msg: Any) -> None:
            self.calls.append("abandon")

        def deadletter(self, msg: Any, deadletter_reason: str | None = None,
                       deadletter_error_description: str | None = None) -> None:
            self.calls.append(f"deadletter: {deadletter_reason}")

    actions = Actions()
    outcome = await runtime.handle(message, message, actions)
    assert actions.calls == ["complete"], actions.calls
    return result.body, outcome


def customer(sandbox: SandboxServer, number: str) -> dict[str, Any] | None:
    return sandbox.fno.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": number})


async def test_an_image_column_and_unknown_kinds_do_not_stop_a_create(sandbox, world):
    runtime, queue = world
    account_id = sandbox.dataverse.create("account", {"name": "Imaged Ltd", "accountnumber": "IMG-001"})
    extra = [
        {"key": "entityimage", "value": list(range(256)) * 40},  # a 10 KB image as DataContractJsonSerializer writes it
        {"key": "entityimageid", "value": "5f0c3a1e-4d2b-4c6a-9e8f-1a2b3c4d5e6f"},
        {"key": "iscustomizable", "value": {"__type": f"BooleanManagedProperty:{NS}", "CanBeChanged": True,
                                            "ManagedPropertyLogicalName": "iscustomizableanddeletable",
                                            "Value": True}},
        {"key": "p2c_regions", "value": [{"__type": f"OptionSetValue:{NS}", "Value": 2}]},
        {"key": "p2c_something_new", "value": {"__type": f"SomethingNew:{NS}", "Payload": {"a": 1}}},
    ]
    body = json.dumps(create_context(account_id, "IMG-001", "Imaged Ltd", extra)).encode()
    _, outcome = await deliver(runtime, queue, body)
    assert isinstance(outcome, Applied), outcome
    row = customer(sandbox, "IMG-001")
    assert row is not None and row["OrganizationName"] == "Imaged Ltd"


async def test_a_body_a_few_bytes_under_256_kb_is_enqueued_trimmed_and_synced_by_fetch(sandbox, world):
    runtime, queue = world
    account_id = sandbox.dataverse.create("account", {"name": "Large Notes Ltd", "accountnumber": "BIG-001",
                                                      "telephone1": "+1 425 555 0199"})
    data = create_context(account_id, "BIG-001", "Name in the (discarded) body",
                          [{"key": "description", "value": ""}])
    padding = MAX_BODY_BYTES - 7 - len(json.dumps(data).encode())
    data["InputParameters"][0]["value"]["Attributes"][-1]["value"] = "n" * padding
    body = json.dumps(data).encode()
    assert MAX_BODY_BYTES - 10 < len(body) < MAX_BODY_BYTES

    accepted, outcome = await deliver(runtime, queue, body)
    assert accepted["trimmed"] is True
    assert isinstance(outcome, Applied), outcome
    row = customer(sandbox, "BIG-001")
    assert row is not None
    assert row["OrganizationName"] == "Large Notes Ltd"  # the fetched row, not the trimmed body
    fetches = [r for r in sandbox.dataverse.request_log.entries() if r.method == "GET" and "accounts(" in r.path]
    assert fetches, "the handler fetched the account"
