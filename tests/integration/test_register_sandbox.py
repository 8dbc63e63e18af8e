"""``register`` against the Dataverse sandbox over real loopback HTTP: the plan, idempotency, mapping
changes, pruning, errors, and the proof that what it registers makes the sandbox POST the webhook. The last
tests run ``python -m p2csync register`` as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mappings import MappingSpec, load_mappings
from p2csync.connectors import ConnectorError, DataverseClient, StaticTokenProvider
from p2csync.records import image_alias
from p2csync.registration import MASK, Plan, RegistrationError, describe_error, register
from p2csync.settings import ROOT
from sandbox import INTEGRATION_TOKEN, SALES_TOKEN, SandboxServer
from tests.sandbox.conftest import Receiver

SHIPPED = load_mappings(ROOT / "mappings")
# The mechanics are shown on the two steps that carry images (Create, Update); the shipped mapping's Delete step
# (no image) is registered by the CLI test below and checked in tests/unit/test_registration.py.
ACCOUNTS = SHIPPED["accounts"].model_copy(
    update={"source": SHIPPED["accounts"].source.model_copy(update={"triggers": ["Create", "Update"]})})
SPECS = {"accounts": ACCOUNTS}  # the other shipped flows (contacts) add steps of their own, not mechanics
KEY = "fn-key-Zx81"
TABLES = ("serviceendpoint", "sdkmessageprocessingstep", "sdkmessageprocessingstepimage")


@pytest.fixture(scope="module")
def _world() -> Iterator[tuple[SandboxServer, Receiver]]:
    receiver = Receiver()
    receiver.server.start()
    try:
        with SandboxServer() as server:
            yield server, receiver
    finally:
        receiver.server.stop()


@pytest.fixture
def sandbox(_world: tuple[SandboxServer, Receiver]) -> SandboxServer:
    server, receiver = _world
    server.dataverse.reset(webhooks=True)
    receiver.reset()
    return server


@pytest.fixture
def receiver(_world: tuple[SandboxServer, Receiver]) -> Receiver:
    return _world[1]


@pytest.fixture
async def dv(sandbox: SandboxServer) -> AsyncIterator[DataverseClient]:
    tokens = StaticTokenProvider(INTEGRATION_TOKEN)
    async with DataverseClient(sandbox.dataverse_url, tokens, tag=None) as client:
        yield client


class Output:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines += text.splitlines()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


async def run(dv: DataverseClient, specs: dict[str, MappingSpec] | None = None,
              **options: Any) -> tuple[Plan, str]:
    out = Output()
    plan = await register(dv, specs or SPECS, out=out, **{"url": None, "key": None, **options})
    return plan, out.text


def rows(sandbox: SandboxServer) -> dict[str, list[dict[str, Any]]]:
    return {table: sandbox.dataverse.rows(table) for table in TABLES}


def writes(sandbox: SandboxServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in sandbox.dataverse.request_log.entries() if r.method != "GET"]


def with_columns(*extra: str) -> dict[str, MappingSpec]:
    source = ACCOUNTS.source.model_copy(update={"columns": [*ACCOUNTS.source.columns, *extra]})
    return {"accounts": ACCOUNTS.model_copy(update={"source": source})}


def with_triggers(*triggers: str) -> dict[str, MappingSpec]:
    source = ACCOUNTS.source.model_copy(update={"triggers": list(triggers)})
    return {"accounts": ACCOUNTS.model_copy(update={"source": source})}


async def test_dry_run_prints_the_plan_and_writes_nothing(sandbox: SandboxServer,
                                                          dv: DataverseClient) -> None:
    before = rows(sandbox)
    plan, text = await run(dv, dry_run=True)
    assert [(a.op, a.kind) for a in plan.actions] == [
        ("create", "serviceendpoint"), ("create", "sdkmessageprocessingstep"),
        ("create", "sdkmessageprocessingstepimage"), ("create", "sdkmessageprocessingstep"),
        ("create", "sdkmessageprocessingstepimage")]
    assert "(dry run: nothing will be written)" in text
    assert "  create     step      p2c-sync: Update of account" in text
    assert "               sdkmessagefilterid = account Update" in text
    assert "Cannot apply: the endpoint does not exist yet: pass --webhook-url" in text
    assert rows(sandbox) == before == {table: [] for table in TABLES}
    assert writes(sandbox) == []

    await run(dv, url=receiver_url(), key=KEY)
    sandbox.dataverse.request_log.clear()
    before = rows(sandbox)
    plan, text = await run(dv, specs=with_columns("telephone2"), key="another-key", dry_run=True, prune=True)
    assert [a.op for a in plan.actions] == ["update", "unchanged", "update", "update", "update"]
    assert rows(sandbox) == before and writes(sandbox) == []
    assert "another-key" not in text and f"authvalue = {MASK}" in text


def receiver_url() -> str:
    return "http://127.0.0.1:9/api/dataverse/webhook"  # nothing listens: these tests do not deliver


async def test_register_creates_each_record_once(sandbox: SandboxServer, dv: DataverseClient) -> None:
    plan, text = await run(dv, url=receiver_url(), key=KEY)
    assert plan.count("create") == 5 and KEY not in text
    created = rows(sandbox)
    [endpoint] = created["serviceendpoint"]
    assert (endpoint["name"], endpoint["url"], endpoint["contract"], endpoint["authtype"],
            endpoint["messageformat"], endpoint["userclaim"]) \
        == ("p2c-sync webhook", receiver_url(), 8, 4, 2, 1)
    assert "authvalue" not in endpoint
    assert sandbox.dataverse.webhooks.registrations[0].endpoint.auth_value == KEY  # stored, for delivery
    steps = {s["name"]: s for s in created["sdkmessageprocessingstep"]}
    assert set(steps) == {"p2c-sync: Create of account", "p2c-sync: Update of account"}
    read = [c for c in ACCOUNTS.source_columns() if c != "accountid"]
    for step in steps.values():
        settings = [step[c] for c in ("mode", "stage", "supporteddeployment", "rank", "asyncautodelete")]
        assert settings == [1, 40, 0, 1, True]
        assert step["_eventhandler_value"] == endpoint["serviceendpointid"] and step["statecode"] == 0
    update = steps["p2c-sync: Update of account"]
    assert update["filteringattributes"].split(",") == [c for c in read if c != "modifiedon"]
    assert steps["p2c-sync: Create of account"]["filteringattributes"] is None
    images = {i["_sdkmessageprocessingstepid_value"]: i for i in created["sdkmessageprocessingstepimage"]}
    for step in steps.values():
        image = images[step["sdkmessageprocessingstepid"]]
        assert (image["entityalias"], image["imagetype"], image["attributes"].split(",")) == (image_alias(read), 1, read)
        assert image["messagepropertyname"] == ("Id" if "Create" in step["name"] else "Target")

    sandbox.dataverse.request_log.clear()
    again, text = await run(dv, url=receiver_url())
    assert {a.op for a in again.actions} == {"unchanged"}
    assert "Plan: 0 to create, 0 to update, 0 to delete, 5 unchanged." in text and "Nothing to do." in text
    assert writes(sandbox) == [] and rows(sandbox) == created

    rotated, text = await run(dv, key="rotated-key")  # the URL is kept, the key is written, nothing else
    assert [a.op for a in rotated.actions] == ["update"] + ["unchanged"] * 4
    assert [method for method, _ in writes(sandbox)] == ["PATCH"]
    assert sandbox.dataverse.webhooks.registrations[0].endpoint.auth_value == "rotated-key"
    assert "rotated-key" not in text and "updated endpoint p2c-sync webhook: authvalue" in text
    assert {t: len(r) for t, r in rows(sandbox).items()} == {t: len(r) for t, r in created.items()}


async def test_a_changed_mapping_updates_the_filter_and_the_images(
        sandbox: SandboxServer, dv: DataverseClient, receiver: Receiver) -> None:
    await run(dv, url=receiver.url, key=KEY)
    record_id = sandbox.dataverse.create("account", {"name": "Contoso", "accountnumber": "REG-1"})
    assert sandbox.dataverse.wait_idle(5)
    receiver.reset()
    sandbox.dataverse.update("account", record_id, {"telephone2": "not read by the mapping"})
    assert sandbox.dataverse.wait_idle(5) and receiver.calls == []

    plan, text = await run(dv, specs=with_columns("telephone2"))
    assert [a.op for a in plan.actions] == ["unchanged", "unchanged", "update", "update", "update"]
    assert "filteringattributes: +telephone2" in text and "attributes: +telephone2" in text
    update = next(s for s in sandbox.dataverse.rows("sdkmessageprocessingstep") if "Update" in s["name"])
    assert update["filteringattributes"].split(",")[-1] == "telephone2"

    sandbox.dataverse.update("account", record_id, {"telephone2": "now it is"})
    assert sandbox.dataverse.wait_idle(5)
    [call] = receiver.calls
    [post_image] = [p["value"] for p in call["json"]["PostEntityImages"] if p["key"].startswith("p2c-")]
    assert {"key": "telephone2", "value": "now it is"} in post_image["Attributes"]
    assert (await run(dv, specs=with_columns("telephone2")))[0].writes == []


async def test_registration_drives_webhook_delivery(sandbox: SandboxServer, dv: DataverseClient,
                                                    receiver: Receiver) -> None:
    await run(dv, url=receiver.url, key=KEY)
    steps = {s["name"]: s["sdkmessageprocessingstepid"]
             for s in sandbox.dataverse.rows("sdkmessageprocessingstep")}
    record_id = sandbox.dataverse.create("account", {"name": "Fabrikam", "accountnumber": "REG-2",
                                                     "telephone2": "x"})
    sandbox.dataverse.update("account", record_id, {"name": "Fabrikam Inc"})
    assert sandbox.dataverse.wait_idle(5)
    assert [c["query"] for c in receiver.calls] == [{"code": KEY}, {"code": KEY}]
    create, update = receiver.payloads()
    assert create["OwningExtension"]["Id"] == steps["p2c-sync: Create of account"]
    assert update["OwningExtension"]["Id"] == steps["p2c-sync: Update of account"]
    assert (create["MessageName"], create["Stage"], create["Mode"]) == ("Create", 40, 1)
    [image] = [p["value"] for p in update["PostEntityImages"] if p["key"].startswith("p2c-")]
    attributes = {p["key"]: p["value"] for p in image["Attributes"]}
    assert attributes["name"] == "Fabrikam Inc" and attributes["accountnumber"] == "REG-2"
    assert "telephone2" not in attributes and "modifiedon" in attributes
    assert image["Id"] == record_id
    # asyncautodelete: the succeeded system jobs are gone from asyncoperation
    assert [j.statuscode for j in sandbox.dataverse.system_jobs()] == [30, 30]
    assert sandbox.dataverse.rows("asyncoperation") == []


async def test_stale_steps_are_deleted_only_with_prune(sandbox: SandboxServer, dv: DataverseClient) -> None:
    await run(dv, specs=with_triggers("Create", "Update", "Delete"), url=receiver_url(), key=KEY)
    endpoint_id = sandbox.dataverse.rows("serviceendpoint")[0]["serviceendpointid"]
    foreign = await dv.create("sdkmessageprocessingsteps", {
        "name": "audit: Create of account", "mode": 1, "stage": 40, "rank": 2,
        "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
        "sdkmessageid@odata.bind": f"/sdkmessages({await _message_id(dv, 'Create')})"}, select=["name"])
    assert len(sandbox.dataverse.rows("sdkmessageprocessingstep")) == 4

    plan, text = await run(dv)
    changed = [(a.op, a.name) for a in plan.actions if a.op != "unchanged"]
    assert changed == [("stale", "p2c-sync: Delete of account")]
    assert "stale      step      p2c-sync: Delete of account  (no mapping needs it)" in text
    assert "1 stale (kept; --prune deletes)" in text
    assert len(sandbox.dataverse.rows("sdkmessageprocessingstep")) == 4

    plan, text = await run(dv, prune=True)
    assert [(a.op, a.name) for a in plan.writes] == [("delete", "p2c-sync: Delete of account")]
    names = sorted(s["name"] for s in sandbox.dataverse.rows("sdkmessageprocessingstep"))
    assert names == ["audit: Create of account", "p2c-sync: Create of account", "p2c-sync: Update of account"]
    assert foreign.record["name"] in names  # another tool's step on our endpoint is left alone
    assert (await run(dv, prune=True))[0].writes == []


async def _message_id(dv: DataverseClient, name: str) -> str:
    return [row async for row in dv.query("sdkmessages", filter=f"name eq '{name}'")][0]["sdkmessageid"]


async def test_steps_on_a_service_bus_endpoint_registered_elsewhere(sandbox: SandboxServer,
                                                                    dv: DataverseClient) -> None:
    queue = await dv.create("serviceendpoints", {
        "name": "p2c-sync sales-events", "contract": 2, "authtype": 7, "messageformat": 2, "userclaim": 2,
        "namespaceaddress": "sb://ns.servicebus.windows.net/", "path": "sales-events",
        "authvalue": "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=dataverse-send;..."},
        select=["serviceendpointid"])
    with pytest.raises(RegistrationError, match="not a webhook"):
        await run(dv, endpoint_name="p2c-sync sales-events", url=receiver_url(), key=KEY)
    plan, text = await run(dv, endpoint_name="p2c-sync sales-events", existing_endpoint=True)
    assert [a.op for a in plan.actions] == ["unchanged", "create", "create", "create", "create"]
    assert "contract 2 (Queue); registered elsewhere" in text
    steps = sandbox.dataverse.rows("sdkmessageprocessingstep")
    assert {s["_eventhandler_value"] for s in steps} == {queue.record["serviceendpointid"]} and len(steps) == 2
    [endpoint] = sandbox.dataverse.rows("serviceendpoint")
    assert (endpoint["contract"], endpoint["path"]) == (2, "sales-events")  # untouched
    sandbox.dataverse.request_log.clear()
    again, _ = await run(dv, endpoint_name="p2c-sync sales-events", existing_endpoint=True)
    assert {a.op for a in again.actions} == {"unchanged"} and writes(sandbox) == []


async def test_errors_are_clear(sandbox: SandboxServer, dv: DataverseClient) -> None:
    source = ACCOUNTS.source.model_copy(update={"table": "nosuchtable"})
    with pytest.raises(RegistrationError, match="no sdkmessagefilter for Create of table 'nosuchtable'"):
        await run(dv, specs={"accounts": ACCOUNTS.model_copy(update={"source": source})}, dry_run=True)
    async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(SALES_TOKEN), tag=None) as sales:
        with pytest.raises(ConnectorError) as denied:
            await run(sales, url=receiver_url(), key=KEY)
    assert denied.value.status == 403
    assert "prvReadServiceEndpoint" in describe_error(denied.value)
    assert rows(sandbox) == {table: [] for table in TABLES}


# ------------------------------------------------------------------------------------------------ CLI


def cli(sandbox: SandboxServer, *args: str, token: str = INTEGRATION_TOKEN, key: str | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2C_", "DATAVERSE_"))}
    env.update({"DATAVERSE_URL": sandbox.dataverse_url, "P2C_AUTH_MODE": "static", "P2C_STATIC_TOKEN": token})
    if key is not None:
        env["P2C_WEBHOOK_KEY"] = key
    command = [sys.executable, "-m", "p2csync", "register", "--settings", "/nonexistent.json", *args]
    return subprocess.run(command, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60)


def test_cli_dry_run_then_apply(sandbox: SandboxServer) -> None:
    result = cli(sandbox, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Webhook registration plan for service endpoint 'p2c-sync webhook' (dry run" in result.stdout
    assert "  create     endpoint  p2c-sync webhook" in result.stdout
    # The endpoint, then per table (account, contact: the two contact templates share their steps; quote,
    # salesorder) a Create and an Update step with their post images and a Delete step; quotedetail and
    # salesorderdetail the same plus its Delete step's pre image (the line's document): 1 + 4 * 5 + 2 * 6.
    assert "Plan: 33 to create, 0 to update, 0 to delete, 0 unchanged." in result.stdout
    assert rows(sandbox) == {table: [] for table in TABLES}

    applied = cli(sandbox, "--webhook-url", receiver_url(), key=KEY)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("created ") == 33 and KEY not in applied.stdout + applied.stderr
    again = cli(sandbox, "--key-stdin", stdin="stdin-key\n")
    assert again.returncode == 0, again.stderr
    assert "updated endpoint p2c-sync webhook: authvalue" in again.stdout and "stdin-key" not in again.stdout
    assert sandbox.dataverse.webhooks.registrations[0].endpoint.auth_value == "stdin-key"


@pytest.mark.parametrize("args,options,message", [
    ((), {}, "error: the endpoint does not exist yet: pass --webhook-url"),
    (("--webhook-url", "http://x.invalid/hook?code=abc"), {"key": KEY},
     "error: --webhook-url must not carry"),
    (("--dry-run",), {"token": SALES_TOKEN}, "error: Dataverse refused the request (HTTP 403)"),
    (("--dry-run",), {"token": "wrong"}, "error: Dataverse authentication failed (HTTP 401)"),
    (("--key-stdin",), {"stdin": ""}, "error: --key-stdin: nothing on standard input"),
])
def test_cli_errors_are_one_line(sandbox: SandboxServer, args: tuple[str, ...], options: dict[str, Any],
                                 message: str) -> None:
    result = cli(sandbox, *args, **options)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert rows(sandbox) == {table: [] for table in TABLES}


def test_cli_unknown_table_is_one_line(sandbox: SandboxServer, tmp_path: Path) -> None:
    text = (ROOT / "mappings" / "accounts.yaml").read_text(encoding="utf-8")
    assert "  table: account " in text
    (tmp_path / "accounts.yaml").write_text(text.replace("  table: account ", "  table: nosuchtable "),
                                            encoding="utf-8")
    result = cli(sandbox, "--dry-run", "--mappings", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: no sdkmessagefilter for Create of table 'nosuchtable' (flow accounts): the table does not exist "
        "in this environment, or has no such event; check source.table")
