"""The registration plan: steps derived from the mappings, the diff against what exists, the key kept
secret."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mappings import MappingSpec, load_mappings
from p2csync.connectors import AuthenticationError, PermanentError
from p2csync.records import image_alias
from p2csync.registration import (
    MASK, Desired, Existing, RegistrationError, apply_plan, check_webhook_url, desired_registration,
    describe_error, mask, plan_registration, steps_for,
)
from p2csync.settings import ROOT

SHIPPED = load_mappings(ROOT / "mappings")["accounts"]
URL = "https://func-p2c.azurewebsites.net/api/dataverse/webhook"
ENDPOINT_ID = "e0000000-0000-0000-0000-000000000001"
MESSAGES = {"Create": "m0000000-0000-0000-0000-00000000000c",
            "Update": "m0000000-0000-0000-0000-00000000000u",
            "Delete": "m0000000-0000-0000-0000-00000000000d"}


def variant(spec: MappingSpec, *, flow: str | None = None, **source: Any) -> MappingSpec:
    """The accounts mapping with other source settings (what a consultant's edit would give)."""
    return spec.model_copy(update={"flow": flow or spec.flow,
                                   "source": spec.source.model_copy(update=source)})


#: The mechanics below are shown on the two steps that carry images; the shipped mapping's Delete step (no image)
#: is checked on its own.
ACCOUNTS = variant(SHIPPED, triggers=["Create", "Update"])


def filters_for(desired: Desired) -> dict[tuple[str, str], str]:
    return {(s.table, s.message): f"f-{s.table}-{s.message}" for s in desired.steps}


def existing_as_registered(desired: Desired, **changes: Any) -> Existing:
    """What Dataverse returns after `desired` was registered: rows with ids, lookups as _x_value."""
    endpoint = {"serviceendpointid": ENDPOINT_ID, **desired.endpoint.columns()}
    steps, images = [], {}
    for number, step in enumerate(desired.steps):
        step_id = f"s{number}"
        steps.append({"sdkmessageprocessingstepid": step_id, **step.columns(),
                      "_sdkmessageid_value": MESSAGES[step.message],
                      "_sdkmessagefilterid_value": f"f-{step.table}-{step.message}"})
        images[step_id] = [{"sdkmessageprocessingstepimageid": f"i{number}", **step.image.columns()}] \
            if step.image else []
    existing = Existing(endpoint=endpoint, steps=steps, images=images, messages=dict(MESSAGES),
                        filters=filters_for(desired))
    for name, value in changes.items():
        setattr(existing, name, value)
    return existing


def nothing_exists(desired: Desired) -> Existing:
    return Existing(messages=dict(MESSAGES), filters=filters_for(desired))


def ops(plan: Any) -> list[tuple[str, str, str]]:
    return [(a.op, a.kind, a.name) for a in plan.actions]


# ------------------------------------------------------------------------------------------ derivation


def test_accounts_mapping_gives_create_and_update_steps_with_post_images_and_a_delete_step() -> None:
    create, update, delete = steps_for(SHIPPED)
    # Delete carries no image: it only frees the account's claim on its customer number
    assert (delete.message, delete.image, delete.filteringattributes) == ("Delete", None, [])
    read = [c for c in ACCOUNTS.source_columns() if c != "accountid"]
    assert (create.table, create.message, create.name) == ("account", "Create", "p2c-sync: Create of account")
    assert (update.message, update.name) == ("Update", "p2c-sync: Update of account")
    assert create.filteringattributes == []  # filtering attributes apply to Update only
    # the Update step fires on the columns the mapping reads, not on modifiedon (every update changes it)
    assert update.filteringattributes == [c for c in read if c != "modifiedon"]
    assert {"accountnumber", "name", "creditlimit", "address2_country", "transactioncurrencyid"} \
        <= set(update.filteringattributes)
    assert "accountid" not in update.filteringattributes
    # the post image carries what the mapping reads, the version column included (the image's Id is the id)
    for step, prop in ((create, "Id"), (update, "Target")):
        assert step.image is not None
        image = step.image
        assert (image.entityalias, image.imagetype, image.messagepropertyname) == (image_alias(read), 1, prop)
        assert image.entityalias.startswith("p2c-") and image.name == "p2c"
        assert step.image.attributes == read and "modifiedon" in step.image.attributes
        assert (step.mode, step.stage, step.supporteddeployment, step.rank, step.asyncautodelete) \
            == (1, 40, 0, 1, True)
        assert step.flows == ["accounts"]


def test_delete_trigger_has_no_image_and_other_sources_register_nothing() -> None:
    steps = steps_for(variant(ACCOUNTS, triggers=["Create", "Update", "Delete", "Update"]))
    assert [s.message for s in steps] == ["Create", "Update", "Delete"]
    assert steps[2].image is None and steps[2].filteringattributes == []
    assert steps_for(variant(ACCOUNTS, system="fno")) == []


def test_flows_on_the_same_table_share_one_step_reading_the_union() -> None:
    other = variant(ACCOUNTS, flow="account_contacts", columns=["telephone2"], triggers=["Update"])
    desired = desired_registration({"accounts": ACCOUNTS, "account_contacts": other}, url=URL)
    assert [s.name for s in desired.steps] == ["p2c-sync: Create of account", "p2c-sync: Update of account"]
    update = desired.steps[1]
    assert update.flows == ["accounts", "account_contacts"]
    assert update.filteringattributes[-1] == "telephone2" and len(set(update.filteringattributes)) == len(
        update.filteringattributes)
    assert update.image is not None and "telephone2" in update.image.attributes
    assert "telephone2" not in desired.steps[0].image.attributes  # type: ignore[union-attr]
    assert desired.endpoint.url == URL and desired.endpoint.name == "p2c-sync webhook"


def test_a_step_description_stays_within_its_256_characters() -> None:
    many = [variant(ACCOUNTS, flow=f"flow_number_{i}") for i in range(40)]
    [create, _] = desired_registration(many).steps
    assert len(create.flows) == 40 and len(create.columns()["description"]) == 256


@pytest.mark.parametrize("url,fragment", [
    (f"{URL}?code=secret", "must not carry the key"),
    (f"{URL}?x=1&CODE=secret", "must not carry the key"),
    ("/api/dataverse/webhook?code=secret", "must not carry the key"),
    ("/api/dataverse/webhook", "absolute"),
    ("ftp://host/hook", "absolute"),
    (f"{URL}#frag", "fragment"),
    ("http://fn.example.net/api/dataverse/webhook", "must be https"),
    ("https://fn.example.net:8443/api/dataverse/webhook", "port 8443: Dataverse webhooks support only port 443"),
    ("https://fn.example.net:80/api/dataverse/webhook", "port 80"),
    ("https://fn.example.net:99999/api/dataverse/webhook", "invalid port"),
])
def test_webhook_url_is_checked(url: str, fragment: str) -> None:
    with pytest.raises(RegistrationError, match=fragment) as caught:
        desired_registration([ACCOUNTS], url=url)
    assert "secret" not in str(caught.value)  # a key in the URL is not repeated in the message


@pytest.mark.parametrize("url", [
    "https://fn.example.net:443/api/dataverse/webhook",
    "http://127.0.0.1:7071/api/dataverse/webhook",  # the sandbox's local host: loopback, any port
    "http://localhost:54321/api/dataverse/webhook",
])
def test_default_https_port_and_loopback_ports_are_accepted(url: str) -> None:
    assert check_webhook_url(url) == url


# ------------------------------------------------------------------------------------------------ plan


def test_nothing_exists_yet_everything_is_created_and_apply_needs_url_and_key() -> None:
    desired = desired_registration([ACCOUNTS])
    plan = plan_registration(desired, nothing_exists(desired), key_given=False)
    assert ops(plan) == [("create", "serviceendpoint", "p2c-sync webhook"),
                         ("create", "sdkmessageprocessingstep", "p2c-sync: Create of account"),
                         ("create", "sdkmessageprocessingstepimage", "p2c"),
                         ("create", "sdkmessageprocessingstep", "p2c-sync: Update of account"),
                         ("create", "sdkmessageprocessingstepimage", "p2c")]
    assert len(plan.blockers) == 2
    assert "--webhook-url" in plan.blockers[0] and "P2C_WEBHOOK_KEY" in plan.blockers[1]
    text = plan.render(dry_run=True)
    assert "dry run: nothing will be written" in text and "Plan: 5 to create, 0 to update" in text
    assert text.count("Cannot apply:") == 2

    ready = plan_registration(desired_registration([ACCOUNTS], url=URL), nothing_exists(desired),
                              key_given=True)
    assert ready.blockers == []
    endpoint, create_step = ready.actions[0], ready.actions[1]
    assert endpoint.body == {"name": "p2c-sync webhook", "contract": 8, "authtype": 4, "messageformat": 2,
                             "userclaim": 1, "description": endpoint.body["description"], "url": URL}
    assert "authvalue" not in endpoint.body  # the key is never part of a plan
    assert [c.column for c in endpoint.changes if c.write_only] == ["authvalue"]
    assert create_step.body["sdkmessageid@odata.bind"] == f"/sdkmessages({MESSAGES['Create']})"
    assert create_step.body["sdkmessagefilterid@odata.bind"] == "/sdkmessagefilters(f-account-Create)"
    assert "statecode" not in create_step.body and create_step.body["asyncautodelete"] is True


def test_what_was_registered_is_unchanged_and_a_key_is_a_write_only_update() -> None:
    desired = desired_registration([ACCOUNTS], url=URL)
    existing = existing_as_registered(desired)
    # Dataverse may return a column list in another order and case: still the same set
    update_row = existing.steps[1]
    columns = update_row["filteringattributes"].upper().split(",")
    update_row["filteringattributes"] = ",".join(reversed(columns))
    plan = plan_registration(desired, existing, key_given=False)
    assert {a.op for a in plan.actions} == {"unchanged"} and plan.writes == []
    assert "authvalue kept" in (plan.actions[0].note or "")
    assert "Plan: 0 to create, 0 to update, 0 to delete, 5 unchanged." in plan.render(dry_run=False)

    with_key = plan_registration(desired, existing, key_given=True)
    assert [a.op for a in with_key.actions] == ["update"] + ["unchanged"] * 4
    endpoint = with_key.actions[0]
    assert endpoint.body == {} and [(c.column, c.new, c.write_only) for c in endpoint.changes] \
        == [("authvalue", MASK, True)]
    assert f"authvalue = {MASK} (write-only" in with_key.render(dry_run=False)


def test_changes_are_updates_of_just_the_changed_columns() -> None:
    desired = desired_registration([ACCOUNTS], url=URL)
    existing = existing_as_registered(desired)
    existing.endpoint["url"] = "https://old.azurewebsites.net/api/dataverse/webhook"  # type: ignore[index]
    update_row = existing.steps[1]
    update_row["filteringattributes"] = "name,fax,telephone2"
    update_row["statecode"] = 1  # somebody disabled it
    existing.steps[0]["_sdkmessagefilterid_value"] = "f-wrong"
    existing.images["s1"][0]["messagepropertyname"] = "Id"

    plan = plan_registration(desired, existing, key_given=False)
    assert [a.op for a in plan.actions] == ["update", "update", "unchanged", "update", "update"]
    endpoint, create_step, _, update_step, update_image = plan.actions
    assert endpoint.body == {"url": URL}
    assert create_step.body == {"sdkmessagefilterid@odata.bind": "/sdkmessagefilters(f-account-Create)"}
    assert set(update_step.body) == {"filteringattributes", "statecode", "statuscode"}
    assert (update_step.body["statecode"], update_step.body["statuscode"]) == (0, 1)
    assert update_image.body == {"messagepropertyname": "Target"}
    text = plan.render(dry_run=False)
    assert "url: https://old.azurewebsites.net/api/dataverse/webhook -> " + URL in text
    line = next(line for line in text.splitlines() if "filteringattributes:" in line)
    assert "-telephone2" in line and "+accountnumber" in line and "+name" not in line and "-fax" not in line
    assert "statecode: 1 (Disabled) -> 0 (Enabled)" in text


def test_steps_no_mapping_needs_are_stale_and_deleted_only_with_prune() -> None:
    with_delete = desired_registration([variant(ACCOUNTS, triggers=["Create", "Update", "Delete"])], url=URL)
    existing = existing_as_registered(with_delete)
    existing.steps.append({"sdkmessageprocessingstepid": "foreign", "name": "audit: Update of account"})
    existing.steps.append({**existing.steps[0], "sdkmessageprocessingstepid": "dup"})  # a second "Create"
    existing.images["s0"].append({"sdkmessageprocessingstepimageid": "i-extra", "entityalias": "p2c",
                                  "name": "p2c"})
    desired = desired_registration([ACCOUNTS], url=URL)

    plan = plan_registration(desired, existing, key_given=False)
    stale = [(a.op, a.kind, a.record_id, a.note) for a in plan.actions if a.op == "stale"]
    assert stale == [("stale", "sdkmessageprocessingstepimage", "i-extra", "not needed by the step"),
                     ("stale", "sdkmessageprocessingstep", "dup", "a second step of that name"),
                     ("stale", "sdkmessageprocessingstep", "s2", "no mapping needs it")]
    assert "foreign" not in {a.record_id for a in plan.actions}  # not ours: left alone
    assert plan.writes == [] and "3 stale (kept; --prune deletes)" in plan.summary()

    pruned = plan_registration(desired, existing, key_given=False, prune=True)
    deletes = [(a.kind, a.record_id, a.dependants) for a in pruned.writes]
    assert deletes == [("sdkmessageprocessingstepimage", "i-extra", []),
                       ("sdkmessageprocessingstep", "dup", []),
                       ("sdkmessageprocessingstep", "s2", [])]
    assert "3 to delete" in pruned.summary()


def test_steps_on_an_endpoint_registered_elsewhere() -> None:
    queue = {"serviceendpointid": ENDPOINT_ID, "name": "p2c-sync sales-events", "contract": 2,
             "authtype": 7, "url": None, "messageformat": 2}
    webhook = desired_registration([ACCOUNTS], endpoint_name="p2c-sync sales-events")
    with pytest.raises(RegistrationError, match=r"not a webhook \(contract 2 \(Queue\)\): pass --existing"):
        plan_registration(webhook, Existing(endpoint=queue, messages=dict(MESSAGES),
                                            filters=filters_for(webhook)), key_given=False)

    desired = desired_registration([ACCOUNTS], endpoint_name="p2c-sync sales-events", existing_endpoint=True)
    existing = Existing(endpoint=queue, messages=dict(MESSAGES), filters=filters_for(desired))
    plan = plan_registration(desired, existing, key_given=False)
    assert [a.op for a in plan.actions] == ["unchanged", "create", "create", "create", "create"]
    assert plan.actions[0].record_id == ENDPOINT_ID and plan.actions[0].body == {}
    assert "left as it is" in (plan.actions[0].note or "") and plan.blockers == []
    with pytest.raises(RegistrationError, match="a key does not go with --existing-endpoint"):
        plan_registration(desired, existing, key_given=True)
    missing = plan_registration(desired, nothing_exists(desired), key_given=False)
    assert missing.actions[0].note == "missing" and "no service endpoint named" in missing.blockers[0]
    with pytest.raises(RegistrationError, match="--webhook-url does not go with --existing-endpoint"):
        desired_registration([ACCOUNTS], url=URL, existing_endpoint=True)
    binary = plan_registration(desired, Existing(endpoint={**queue, "messageformat": 1}, messages=dict(MESSAGES),
                                                 filters=filters_for(desired)), key_given=False)
    assert "not 2 (Json)" in binary.blockers[0]  # .NETBinary: every message would be dead-lettered
    loopback = desired_registration([ACCOUNTS], url="http://127.0.0.1:7071/api/dataverse/webhook")
    assert loopback.endpoint.url == "http://127.0.0.1:7071/api/dataverse/webhook"  # the local host is plain http


async def test_apply_refuses_a_blocked_plan_before_any_request() -> None:
    desired = desired_registration([ACCOUNTS])
    plan = plan_registration(desired, nothing_exists(desired), key_given=False)
    with pytest.raises(RegistrationError, match="--webhook-url"):
        await apply_plan(None, plan, key=None)  # type: ignore[arg-type]  # no client needed: nothing is sent


# ----------------------------------------------------------------------------------------------- secrets


def test_the_key_is_masked_everywhere() -> None:
    assert mask("abc") == MASK and mask(None) == "(none)" and mask("") == "(none)"
    assert len(mask("a" * 80)) == len(mask("b"))  # not even the length shows
    request = httpx.Request("PATCH", "https://org.crm.dynamics.com/api/data/v9.2/serviceendpoints(x)")
    echoed = PermanentError("dataverse", 400, "0x1", "Invalid authvalue 'sup3r-secret-key'", "PATCH",
                            request.url)
    line = describe_error(echoed, secrets=["sup3r-secret-key", None])
    assert "sup3r-secret-key" not in line and MASK in line and "\n" not in line


def test_errors_read_as_one_line_with_what_to_do() -> None:
    denied = PermanentError("dataverse", 403, "0x80040220",
                            "Principal user is missing prvCreateServiceEndpoint privilege")
    assert describe_error(denied).startswith(
        "Dataverse refused the request (HTTP 403): Principal user is missing")
    assert "System Customizer" in describe_error(denied)
    unauthorised = AuthenticationError("dataverse", 401, None, "The user is not authenticated")
    assert "authentication failed (HTTP 401)" in describe_error(unauthorised)
    assert "az login" in describe_error(unauthorised)
    no_token = AuthenticationError("dataverse", None, "ClientAuthenticationError",
                                   "could not obtain an access token: DefaultAzureCredential failed\nmore")
    assert describe_error(no_token).startswith("Dataverse authentication failed: could not obtain")
    assert "\n" not in describe_error(no_token)
