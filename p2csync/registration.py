"""The webhook registration in Dataverse, as code: what ``python -m p2csync register`` does instead of the
Plugin Registration Tool.

From the mapping files (every flow whose ``source.system`` is ``dataverse``) it derives one webhook service
endpoint (contract 8 Webhook, authtype 4 WebhookKey: Dataverse appends the function key as ``?code=``) and,
per table and message the flows are triggered by, one asynchronous PostOperation step with a post image of
the columns the flows read. It reads what exists, computes a ``Plan`` and applies it; a second run finds
everything unchanged.

```python
desired = desired_registration(load_mappings(dir), url=webhook_url)
plan = plan_registration(desired, await read_existing(dv, desired), key_given=key is not None)
print(plan.render(dry_run=False))
await apply_plan(dv, plan, key=key)
```

Which records are ours:
* the endpoint: the ``serviceendpoint`` with that name (``--endpoint-name``, default ``p2c-sync webhook``);
* a step: attached to that endpoint and named ``p2c-sync: <message> of <table>``. Steps on the endpoint under
  other names are somebody else's and left alone; ours that the mappings no longer need are ``stale``, shown
  in the plan and deleted only with ``prune=True`` (``--prune``);
* an image: on one of our steps, named ``p2c``; a post image's alias is ``p2c-<fingerprint of its columns>``
  (records.image_alias), which tells a handler the image holds every column it reads.

The key: ``serviceendpoint.authvalue`` is write-only (Dataverse never returns it), so it cannot be compared.
It is written when the endpoint is created (a key is required then) and afterwards only when a key is given
again: the plan shows that as a write-only update of ``authvalue``, never as "unchanged". Without a key, an
existing endpoint keeps the one it has. The key is never part of a plan: plans show ``********``, and the key
itself goes to ``apply_plan`` separately, so printing or logging a plan cannot leak it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict

from mappings import MappingSpec
from p2csync.connectors.dataverse import DataverseClient
from p2csync.connectors.errors import AuthenticationError, ConnectorError
from p2csync.connectors.odata import odata_literal
from p2csync.records import IMAGE_ALIAS, image_alias

__all__ = [
    "DEFAULT_ENDPOINT_NAME",
    "KEY_ENV",
    "MASK",
    "Action",
    "ColumnChange",
    "Desired",
    "EndpointSpec",
    "Existing",
    "ImageSpec",
    "Plan",
    "RegistrationError",
    "StepSpec",
    "apply_plan",
    "desired_registration",
    "describe_error",
    "mask",
    "plan_registration",
    "read_existing",
    "register",
    "steps_for",
]

DEFAULT_ENDPOINT_NAME = "p2c-sync webhook"
#: The environment variable the command reads the function key from.
KEY_ENV = "P2C_WEBHOOK_KEY"
STEP_PREFIX = "p2c-sync: "
MASK = "********"

CONTRACT_WEBHOOK = 8
AUTHTYPE_WEBHOOK_KEY = 4
MESSAGEFORMAT_JSON = 2
USERCLAIM_NONE = 1
MODE_ASYNCHRONOUS = 1
STAGE_POST_OPERATION = 40
DEPLOYMENT_SERVER = 0
IMAGETYPE_PRE = 0
IMAGETYPE_POST = 1
#: The message property a post image is taken from (Create: the new id; Update: the target).
MESSAGE_PROPERTY = {"Create": "Id", "Update": "Target"}
#: The message property a pre image is taken from: a Delete's Target (an EntityReference, so the image is the only
#: place a deleted document line still names its document).
PRE_IMAGE_PROPERTY = {"Delete": "Target"}

ENDPOINT, STEP, IMAGE = "serviceendpoint", "sdkmessageprocessingstep", "sdkmessageprocessingstepimage"
Kind = Literal["serviceendpoint", "sdkmessageprocessingstep", "sdkmessageprocessingstepimage"]
Op = Literal["create", "update", "unchanged", "delete", "stale"]

_ENTITY_SETS = {ENDPOINT: "serviceendpoints", STEP: "sdkmessageprocessingsteps",
                IMAGE: "sdkmessageprocessingstepimages"}
_LABELS = {ENDPOINT: "endpoint", STEP: "step", IMAGE: "image"}
_ENDPOINT_SELECT = ["serviceendpointid", "name", "url", "contract", "authtype", "messageformat", "userclaim",
                    "description"]
_STEP_SELECT = ["sdkmessageprocessingstepid", "name", "description", "mode", "stage", "rank",
                "supporteddeployment", "asyncautodelete", "filteringattributes", "statecode",
                "_sdkmessageid_value", "_sdkmessagefilterid_value"]
_FILTER_SELECT = ["sdkmessagefilterid", "primaryobjecttypecode", "iscustomprocessingstepallowed"]
_IMAGE_SELECT = ["sdkmessageprocessingstepimageid", "name", "entityalias", "imagetype", "messagepropertyname",
                 "attributes"]
#: Columns holding comma-separated column lists: compared as sets.
_LIST_COLUMNS = frozenset({"filteringattributes", "attributes"})
#: Lookups of a step: column -> (read property, entity set of the bind).
_STEP_LOOKUPS = {"sdkmessageid": ("_sdkmessageid_value", "sdkmessages"),
                 "sdkmessagefilterid": ("_sdkmessagefilterid_value", "sdkmessagefilters")}
#: Enum labels shown next to values in a plan.
_ENUMS = {
    "contract": {1: "OneWay", 2: "Queue", 3: "Rest", 4: "TwoWay", 5: "Topic", 6: "Queue (Persistent)",
                 7: "Event Hub", 8: "Webhook", 9: "Event Grid"},
    "authtype": {4: "WebhookKey"}, "messageformat": {2: "Json"},
    "userclaim": {1: "None"}, "mode": {0: "Synchronous", 1: "Asynchronous"},
    "stage": {10: "PreValidation", 20: "PreOperation", 40: "PostOperation"},
    "supporteddeployment": {0: "Server"}, "imagetype": {0: "PreImage", 1: "PostImage", 2: "Both"},
    "statecode": {0: "Enabled", 1: "Disabled"},
}


class RegistrationError(Exception):
    """A registration that cannot be done as asked; the message says why, on one line."""


def mask(secret: str | None) -> str:
    """What a plan or a message shows for a secret: never any part of it, not even its length."""
    return MASK if secret else "(none)"


# ------------------------------------------------------------------------------------------ what we want


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EndpointSpec(_Model):
    """The ``serviceendpoint``: a webhook with WebhookKey auth. ``url`` None: keep the existing one.
    ``managed`` False: an endpoint registered elsewhere (a Service Bus queue with its SAS connection string),
    only found by name and given the steps, never written."""

    name: str = DEFAULT_ENDPOINT_NAME
    url: str | None = None
    managed: bool = True
    contract: int = CONTRACT_WEBHOOK
    authtype: int = AUTHTYPE_WEBHOOK_KEY
    messageformat: int = MESSAGEFORMAT_JSON
    userclaim: int = USERCLAIM_NONE
    description: str = ("p2c-sync ingress (dataverse_webhook function). "
                        "Managed by `python -m p2csync register`.")

    def columns(self) -> dict[str, Any]:
        columns = self.model_dump(exclude={"url", "managed"})
        if self.url is not None:
            columns["url"] = self.url
        return columns


class ImageSpec(_Model):
    """A post image (``sdkmessageprocessingstepimage``) of the columns the flows read, or the pre image of a
    document line's Delete (its parent lookup, so the delete reaches its document)."""

    messagepropertyname: str
    attributes: list[str]
    imagetype: int = IMAGETYPE_POST

    @property
    def entityalias(self) -> str:
        """A post image's alias names its columns (records.image_alias), so a handler knows it can trust it."""
        return image_alias(self.attributes) if self.imagetype == IMAGETYPE_POST else IMAGE_ALIAS

    @property
    def name(self) -> str:
        return IMAGE_ALIAS

    def columns(self) -> dict[str, Any]:
        return {"name": self.name, "entityalias": self.entityalias, "imagetype": self.imagetype,
                "messagepropertyname": self.messagepropertyname, "attributes": ",".join(self.attributes)}


class StepSpec(_Model):
    """An ``sdkmessageprocessingstep`` on the endpoint: asynchronous, PostOperation, on the server, system
    jobs deleted when they succeed (failed ones stay for diagnosis)."""

    table: str
    message: str
    flows: list[str]
    filteringattributes: list[str] = []
    image: ImageSpec | None = None
    mode: int = MODE_ASYNCHRONOUS
    stage: int = STAGE_POST_OPERATION
    rank: int = 1
    supporteddeployment: int = DEPLOYMENT_SERVER
    asyncautodelete: bool = True

    @property
    def name(self) -> str:
        return f"{STEP_PREFIX}{self.message} of {self.table}"

    def columns(self) -> dict[str, Any]:
        """The step's own columns as written (lookups apart); ``statecode`` 0 is compared, never created."""
        return {
            "name": self.name,
            "description": _clip(f"Sends {self.message} of {self.table} to p2c-sync (flows: "
                                 f"{', '.join(self.flows)}). Managed by `python -m p2csync register`."),
            "mode": self.mode, "stage": self.stage, "rank": self.rank,
            "supporteddeployment": self.supporteddeployment, "asyncautodelete": self.asyncautodelete,
            "filteringattributes": ",".join(self.filteringattributes) or None, "statecode": 0,
        }


def _clip(text: str, limit: int = 256) -> str:
    """Within a column's maximum length (a step's description holds 256 characters)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Desired(_Model):
    endpoint: EndpointSpec
    steps: list[StepSpec]


def steps_for(spec: MappingSpec) -> list[StepSpec]:
    """The steps a Sales -> F&O flow needs, one per trigger message.

    The post image (Create and Update) holds every column the mapping reads, the version column included
    (``modifiedon``, which orders the states of a record); the primary id is the image's own ``Id``. An Update
    step is filtered on the same columns without the version column, which changes on every update and would
    make the filter let everything through.
    """
    if spec.source.system != "dataverse":
        return []
    read = [column for column in spec.source_columns() if column != spec.source.id_column]
    filtering = [column for column in read if column != spec.source.version_field]
    steps = []
    for message in dict.fromkeys(spec.source.triggers):
        image = (ImageSpec(messagepropertyname=MESSAGE_PROPERTY[message], attributes=read)
                 if message in MESSAGE_PROPERTY else None)
        steps.append(StepSpec(table=spec.source.table, message=message, flows=[spec.flow], image=image,
                              filteringattributes=filtering if message == "Update" else []))
    for line in spec.lines:
        steps += _line_steps(spec, line.name)
    return steps


def _line_steps(spec: MappingSpec, name: str) -> list[StepSpec]:
    """The steps of a document's line table: Create and Update with a post image of what the line mapping reads
    (the parent lookup included: it names the document the event syncs), Delete with a pre image of the parent
    lookup and the version column (a Delete's Target is only a reference)."""
    line = spec.line(name)
    read = [column for column in spec.line_source_columns(name) if column != line.source.id_column]
    filtering = [column for column in read if column != line.source.version_field]
    steps = []
    for message in dict.fromkeys(line.source.triggers):
        image = None
        if message in MESSAGE_PROPERTY:
            image = ImageSpec(messagepropertyname=MESSAGE_PROPERTY[message], attributes=read)
        elif message in PRE_IMAGE_PROPERTY:
            pre = [c for c in (line.source.parent_column, line.source.version_field) if c]
            image = ImageSpec(messagepropertyname=PRE_IMAGE_PROPERTY[message], attributes=pre,
                              imagetype=IMAGETYPE_PRE)
        steps.append(StepSpec(table=line.source.table, message=message, flows=[spec.flow], image=image,
                              filteringattributes=filtering if message == "Update" else []))
    return steps


def _merge(first: StepSpec, second: StepSpec) -> StepSpec:
    """Two flows on the same table and message share one step: the union of what they read."""
    image = first.image
    if image is not None and second.image is not None:
        attributes = list(dict.fromkeys(image.attributes + second.image.attributes))
        image = image.model_copy(update={"attributes": attributes})
    return first.model_copy(update={
        "flows": first.flows + second.flows, "image": image,
        "filteringattributes": list(dict.fromkeys(first.filteringattributes + second.filteringattributes)),
    })


#: Loopback hosts: the sandbox's local host, where http and any port are accepted (nothing leaves the
#: machine; the real Dataverse cannot reach loopback anyway).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_webhook_url(url: str) -> str:
    """An absolute http(s) URL without the key: the key is write-only, a URL is readable by anyone who can
    read the endpoint."""
    url = url.strip()
    parts = urlsplit(url)
    if any(name.lower() == "code" for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
        raise RegistrationError(f"--webhook-url must not carry the key (?code=): give it through {KEY_ENV} "
                                "or --key-stdin, it is stored write-only")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise RegistrationError(f"--webhook-url must be an absolute https URL, got {url!r}")
    loopback = parts.hostname in LOOPBACK_HOSTS
    if parts.scheme == "http" and not loopback:
        raise RegistrationError(f"--webhook-url must be https: Dataverse sends the key in the query string, "
                                f"so plain http would expose it (http is accepted on loopback only), got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise RegistrationError(f"--webhook-url has an invalid port, got {url!r}") from None
    if port is not None and port != 443 and not loopback:
        raise RegistrationError(f"--webhook-url uses port {port}: Dataverse webhooks support only port 443 for "
                                f"HTTPS (and 80 for HTTP); use the default https port, got {url!r}")
    if parts.fragment:
        raise RegistrationError("--webhook-url must not have a #fragment")
    return url


def check_key(key: str) -> str:
    """A usable function key (the message never shows it)."""
    if not key or any(ch.isspace() or ord(ch) < 32 for ch in key):
        raise RegistrationError("the function key is empty or contains white space or control characters")
    return key


def desired_registration(specs: Mapping[str, MappingSpec] | Iterable[MappingSpec], *, url: str | None = None,
                         endpoint_name: str = DEFAULT_ENDPOINT_NAME,
                         existing_endpoint: bool = False) -> Desired:
    """The endpoint and the steps every Sales -> F&O mapping needs, one step per table and message.
    ``existing_endpoint``: the steps go on an endpoint registered elsewhere, which is left as it is."""
    merged: dict[tuple[str, str], StepSpec] = {}
    for spec in (specs.values() if isinstance(specs, Mapping) else specs):
        for step in steps_for(spec):
            key = (step.table, step.message)
            merged[key] = _merge(merged[key], step) if key in merged else step
    if not endpoint_name.strip():
        raise RegistrationError("--endpoint-name must not be empty")
    if existing_endpoint and url:
        raise RegistrationError("--webhook-url does not go with --existing-endpoint: that endpoint is not "
                                "written")
    endpoint = EndpointSpec(name=endpoint_name.strip(), url=check_webhook_url(url) if url else None,
                            managed=not existing_endpoint)
    return Desired(endpoint=endpoint, steps=list(merged.values()))


# ------------------------------------------------------------------------------------------ what exists


@dataclass
class Existing:
    """What Dataverse holds: the endpoint (None when absent), every step on it, their images, and the ids of
    the messages and message filters the desired steps bind to."""

    endpoint: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    filters: dict[tuple[str, str], str] = field(default_factory=dict)


async def _rows(dv: DataverseClient, entity_set: str, filter: str, select: list[str]) -> list[dict[str, Any]]:
    return [row async for row in dv.query(entity_set, filter=filter, select=select)]


async def read_existing(dv: DataverseClient, desired: Desired) -> Existing:
    """Read the endpoint by name, its steps and their images, and resolve the messages and filters."""
    existing = Existing()
    name = desired.endpoint.name
    endpoints = await _rows(dv, "serviceendpoints", f"name eq {odata_literal(name)}", _ENDPOINT_SELECT)
    if len(endpoints) > 1:
        raise RegistrationError(f"{len(endpoints)} service endpoints are named {name!r}; delete or rename "
                                "all but one, or choose another --endpoint-name")
    if endpoints:
        existing.endpoint = endpoints[0]
        endpoint_id = endpoints[0]["serviceendpointid"]
        existing.steps = await _rows(dv, "sdkmessageprocessingsteps", f"_eventhandler_value eq {endpoint_id}",
                                     _STEP_SELECT)
        for step in existing.steps:
            step_id = step["sdkmessageprocessingstepid"]
            condition = f"_sdkmessageprocessingstepid_value eq {step_id}"
            existing.images[step_id] = await _rows(dv, _ENTITY_SETS[IMAGE], condition, _IMAGE_SELECT)
    for step in desired.steps:
        if step.message not in existing.messages:
            found = await _rows(dv, "sdkmessages", f"name eq {odata_literal(step.message)}",
                                ["sdkmessageid", "name"])
            if not found:
                raise RegistrationError(f"Dataverse has no message {step.message!r} (a trigger of flow "
                                        f"{', '.join(step.flows)})")
            existing.messages[step.message] = found[0]["sdkmessageid"]
        condition = (f"primaryobjecttypecode eq {odata_literal(step.table)} "
                     f"and _sdkmessageid_value eq {existing.messages[step.message]}")
        filters = await _rows(dv, "sdkmessagefilters", condition, _FILTER_SELECT)
        what = f"{step.message} of table {step.table!r} (flow {', '.join(step.flows)})"
        if not filters:
            raise RegistrationError(f"no sdkmessagefilter for {what}: the table does not exist in this "
                                    "environment, or has no such event; check source.table")
        if filters[0].get("iscustomprocessingstepallowed") is False:
            raise RegistrationError(f"Dataverse does not allow custom steps on {what}")
        existing.filters[(step.table, step.message)] = filters[0]["sdkmessagefilterid"]
    return existing


# ------------------------------------------------------------------------------------------------ plan


class ColumnChange(_Model):
    """One column of a create or an update. ``write_only``: written, but Dataverse cannot return it."""

    column: str
    old: Any = None
    new: Any = None
    write_only: bool = False

    def describe(self, op: Op) -> str:
        if self.write_only:
            return f"{self.column} = {MASK} (write-only: cannot be read back or compared)"
        if op == "create":
            return f"{self.column} = {_show(self.column, self.new)}"
        if self.column in _LIST_COLUMNS:
            before, after = _csv(self.old), _csv(self.new)
            gone = [c for c in before if c.lower() not in {a.lower() for a in after}]
            added = [c for c in after if c.lower() not in {b.lower() for b in before}]
            return f"{self.column}: " + " ".join([f"+{c}" for c in added] + [f"-{c}" for c in gone])
        return f"{self.column}: {_show(self.column, self.old)} -> {_show(self.column, self.new)}"


class Action(_Model):
    """What happens to one record. ``body`` is what ``apply_plan`` writes (never the key); binds to records
    created in the same run (endpoint, step) are added when they exist."""

    op: Op
    kind: Kind
    name: str
    record_id: str | None = None
    parent: str | None = None  # an image's step, a step's endpoint (by name)
    changes: list[ColumnChange] = []
    body: dict[str, Any] = {}
    dependants: list[str] = []  # images deleted with a stale step
    note: str | None = None

    @property
    def title(self) -> str:
        """``endpoint p2c-sync webhook``, ``image p2c-sync: Update of account / p2c``."""
        name = f"{self.parent} / {self.name}" if self.kind == IMAGE else self.name
        return f"{_LABELS[self.kind]} {name}"

    def render(self) -> list[str]:
        label, _, name = self.title.partition(" ")
        lines = [f"  {self.op:<9}  {label:<8}  {name}" + (f"  ({self.note})" if self.note else "")]
        if self.op in ("create", "update"):
            lines += [f"{'':15}{change.describe(self.op)}" for change in self.changes]
        return lines


class Plan(_Model):
    endpoint_name: str
    actions: list[Action]
    #: Why applying would fail (no URL or no key for a new endpoint); a dry run shows them.
    blockers: list[str] = []

    def count(self, op: Op) -> int:
        return sum(1 for action in self.actions if action.op == op)

    @property
    def writes(self) -> list[Action]:
        return [action for action in self.actions if action.op in ("create", "update", "delete")]

    def summary(self) -> str:
        parts = [f"{self.count(op)} to {op}" for op in ("create", "update", "delete")]
        parts.append(f"{self.count('unchanged')} unchanged")
        if stale := self.count("stale"):
            parts.append(f"{stale} stale (kept; --prune deletes)")
        return ", ".join(parts)

    def render(self, *, dry_run: bool) -> str:
        head = f"Webhook registration plan for service endpoint {self.endpoint_name!r}"
        lines = [head + (" (dry run: nothing will be written)" if dry_run else "") + ":"]
        for action in self.actions:
            lines += action.render()
        lines.append(f"Plan: {self.summary()}.")
        lines += [f"Cannot apply: {blocker}." for blocker in self.blockers]
        return "\n".join(lines)


def _csv(value: Any) -> list[str]:
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


def _show(column: str, value: Any) -> str:
    number = isinstance(value, int) and not isinstance(value, bool)
    label = _ENUMS.get(column, {}).get(value) if number else None
    text = "null" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
    return f"{text} ({label})" if label else text


def _same(column: str, current: Any, wanted: Any) -> bool:
    if column in _LIST_COLUMNS:
        return {c.lower() for c in _csv(current)} == {c.lower() for c in _csv(wanted)}
    if current in ("", None) and wanted in ("", None):
        return True
    return bool(current == wanted)


def _diff(wanted: Mapping[str, Any], row: Mapping[str, Any]) -> list[ColumnChange]:
    return [ColumnChange(column=column, old=row.get(column), new=value)
            for column, value in wanted.items() if not _same(column, row.get(column), value)]


def _created(wanted: Mapping[str, Any]) -> list[ColumnChange]:
    return [ColumnChange(column=column, new=value) for column, value in wanted.items() if value is not None]


def _update_body(wanted: Mapping[str, Any], changes: list[ColumnChange]) -> dict[str, Any]:
    body = {change.column: wanted[change.column] for change in changes if change.column in wanted}
    if "statecode" in body:  # re-enabling: SetState through PATCH takes the status with the state
        body["statuscode"] = 1
    return body


def _id(row: Mapping[str, Any], kind: Kind) -> str:
    return str(row[f"{kind}id"])


def _endpoint_action(spec: EndpointSpec, row: dict[str, Any] | None, key_given: bool,
                     blockers: list[str]) -> Action:
    if not spec.managed:
        if key_given:
            raise RegistrationError("a key does not go with --existing-endpoint: that endpoint is not "
                                    "written")
        if row is None:
            blockers.append(f"there is no service endpoint named {spec.name!r} to put the steps on: register "
                            "it first, or leave out --existing-endpoint to create a webhook")
            return Action(op="unchanged", kind=ENDPOINT, name=spec.name, note="missing")
        contract = _show("contract", row.get("contract"))
        if row.get("messageformat") != MESSAGEFORMAT_JSON:
            blockers.append(f"the service endpoint {spec.name!r} sends message format "
                            f"{row.get('messageformat')}, not 2 (Json): the runtime reads JSON only, so every "
                            "message would be dead-lettered; set Message Format to JSON on it first")
        return Action(op="unchanged", kind=ENDPOINT, name=spec.name, record_id=_id(row, ENDPOINT),
                      note=f"contract {contract}; registered elsewhere, left as it is (--existing-endpoint)")
    if row is not None and row.get("contract") != CONTRACT_WEBHOOK:
        contract = _show("contract", row.get("contract"))
        raise RegistrationError(
            f"the service endpoint {spec.name!r} is not a webhook (contract {contract}): pass "
            "--existing-endpoint to register only the steps on it, or choose another --endpoint-name")
    wanted = spec.columns()
    key_change = [ColumnChange(column="authvalue", new=MASK, write_only=True)] if key_given else []
    if row is None:
        if spec.url is None:
            blockers.append("the endpoint does not exist yet: pass --webhook-url (the function URL without "
                            "the key)")
        if not key_given:
            blockers.append(f"the endpoint does not exist yet: give the function key ({KEY_ENV} or "
                            "--key-stdin)")
        return Action(op="create", kind=ENDPOINT, name=spec.name, changes=_created(wanted) + key_change,
                      body=wanted)
    changes = _diff(wanted, row)
    note = None if key_given else "authvalue kept: write-only, give a key to rewrite it"
    if spec.url is None:
        note = "url kept: no --webhook-url given" + (f"; {note}" if note else "")
    return Action(op="update" if changes or key_change else "unchanged", kind=ENDPOINT, name=spec.name,
                  record_id=_id(row, ENDPOINT), changes=changes + key_change,
                  body=_update_body(wanted, changes), note=note)


def _step_action(step: StepSpec, row: dict[str, Any] | None, existing: Existing, endpoint: str) -> Action:
    wanted = step.columns()
    binds = {"sdkmessageid": existing.messages[step.message],
             "sdkmessagefilterid": existing.filters[(step.table, step.message)]}
    bind_body = {f"{column}@odata.bind": f"/{_STEP_LOOKUPS[column][1]}({value})"
                 for column, value in binds.items()}
    shown = {"sdkmessageid": step.message, "sdkmessagefilterid": f"{step.table} {step.message}"}
    if row is None:
        created = {column: value for column, value in wanted.items() if column != "statecode"}
        changes = [ColumnChange(column=column, new=shown[column]) for column in binds] + _created(created)
        return Action(op="create", kind=STEP, name=step.name, parent=endpoint, changes=changes,
                      body={**created, **bind_body})
    changes = _diff(wanted, row)
    body = _update_body(wanted, changes)
    for column, value in binds.items():
        current = row.get(_STEP_LOOKUPS[column][0])
        if str(current or "").lower() != value.lower():
            changes.append(ColumnChange(column=column, old=current, new=f"{shown[column]} ({value})"))
            body[f"{column}@odata.bind"] = bind_body[f"{column}@odata.bind"]
    return Action(op="update" if changes else "unchanged", kind=STEP, name=step.name, parent=endpoint,
                  record_id=_id(row, STEP), changes=changes, body=body)


def _image_action(image: ImageSpec, row: dict[str, Any] | None, step: str) -> Action:
    wanted = image.columns()
    if row is None:
        return Action(op="create", kind=IMAGE, name=image.name, parent=step, changes=_created(wanted),
                      body=wanted)
    changes = _diff(wanted, row)
    return Action(op="update" if changes else "unchanged", kind=IMAGE, name=image.name, parent=step,
                  record_id=_id(row, IMAGE), changes=changes, body=_update_body(wanted, changes))


def _stale(kind: Kind, row: dict[str, Any], parent: str, prune: bool, reason: str,
           dependants: list[str] | None = None) -> Action:
    return Action(op="delete" if prune else "stale", kind=kind,
                  name=str(row.get("name") or row.get("entityalias")), parent=parent,
                  record_id=_id(row, kind), dependants=dependants or [], note=reason)


def plan_registration(desired: Desired, existing: Existing, *, key_given: bool, prune: bool = False) -> Plan:
    """Compare what is wanted with what exists, record by record. Pure: no I/O, no key (only whether one
    was given)."""
    blockers: list[str] = []
    endpoint = desired.endpoint.name
    actions = [_endpoint_action(desired.endpoint, existing.endpoint, key_given, blockers)]
    ours: dict[str, list[dict[str, Any]]] = {}
    for row in existing.steps:
        if str(row.get("name") or "").startswith(STEP_PREFIX):
            ours.setdefault(row["name"], []).append(row)
    leftovers: list[tuple[dict[str, Any], str]] = []
    for step in desired.steps:
        rows = ours.pop(step.name, [])
        row = rows[0] if rows else None
        leftovers += [(extra, "a second step of that name") for extra in rows[1:]]
        actions.append(_step_action(step, row, existing, endpoint))
        on_step = existing.images.get(_id(row, STEP), []) if row is not None else []
        images = [image for image in on_step if str(image.get("name") or "") == IMAGE_ALIAS
                  or str(image.get("entityalias") or "").split("-", 1)[0] == IMAGE_ALIAS]
        if step.image is not None:
            actions.append(_image_action(step.image, images[0] if images else None, step.name))
            images = images[1:]
        actions += [_stale(IMAGE, image, step.name, prune, "not needed by the step") for image in images]
    leftovers += [(row, "no mapping needs it") for rows in ours.values() for row in rows]
    for row, reason in leftovers:
        dependants = [_id(image, IMAGE) for image in existing.images.get(_id(row, STEP), [])]
        actions.append(_stale(STEP, row, endpoint, prune, reason, dependants))
    return Plan(endpoint_name=endpoint, actions=actions, blockers=blockers)


# ------------------------------------------------------------------------------------------------ apply


def _record_id(record: Mapping[str, Any], kind: Kind) -> str:
    if record.get(f"{kind}id"):
        return str(record[f"{kind}id"])
    match = re.search(r"\(([0-9a-fA-F-]{36})\)\s*$", str(record.get("@odata.id") or ""))
    if match is None:
        raise RegistrationError(f"Dataverse created the {kind} but did not say its id")
    return match.group(1).lower()


async def apply_plan(dv: DataverseClient, plan: Plan, *, key: str | None,
                     report: Callable[[str], None] = lambda line: None) -> None:
    """Write the plan: the endpoint, then each step followed by its image, then the deletions (``--prune``).

    Stops at the first failure; what was written stays, and running again carries on from there.
    """
    if plan.blockers:
        raise RegistrationError("; ".join(plan.blockers))
    ids: dict[tuple[str, str], str] = {}  # (kind, name) -> id, for binds to records created in this run
    for action in plan.actions:
        if action.record_id:
            ids[(action.kind, action.name)] = action.record_id
        if action.op not in ("create", "update", "delete"):
            continue
        entity_set = _ENTITY_SETS[action.kind]
        body = dict(action.body)
        if action.kind == ENDPOINT and key is not None and any(c.write_only for c in action.changes):
            body["authvalue"] = check_key(key)
        if action.op == "create":
            if action.kind == STEP:
                endpoint_id = ids[(ENDPOINT, plan.endpoint_name)]
                body["eventhandler_serviceendpoint@odata.bind"] = f"/serviceendpoints({endpoint_id})"
            elif action.kind == IMAGE:
                step_id = ids[(STEP, action.parent or "")]
                body["sdkmessageprocessingstepid@odata.bind"] = f"/sdkmessageprocessingsteps({step_id})"
            result = await dv.create(entity_set, body, select=[f"{action.kind}id"])
            ids[(action.kind, action.name)] = _record_id(result.record, action.kind)
            report(f"created {action.title} ({ids[(action.kind, action.name)]})")
        elif action.op == "update":
            await dv.upsert(entity_set, action.record_id or "", body, update_only=True,
                            select=[f"{action.kind}id"])
            report(f"updated {action.title}: {', '.join(change.column for change in action.changes)}")
        else:
            for image_id in action.dependants:
                await dv.delete(_ENTITY_SETS[IMAGE], image_id)
            await dv.delete(entity_set, action.record_id or "")
            report(f"deleted {action.title} ({action.record_id})")


async def register(dv: DataverseClient, specs: Mapping[str, MappingSpec], *, url: str | None, key: str | None,
                   endpoint_name: str = DEFAULT_ENDPOINT_NAME, existing_endpoint: bool = False,
                   prune: bool = False, dry_run: bool = False, out: Callable[[str], None] = print) -> Plan:
    """Read, plan, print the plan through ``out`` and (unless ``dry_run``) apply it. Returns the plan."""
    if key is not None:
        check_key(key)
    desired = desired_registration(specs, url=url, endpoint_name=endpoint_name,
                                   existing_endpoint=existing_endpoint)
    existing = await read_existing(dv, desired)
    plan = plan_registration(desired, existing, key_given=key is not None, prune=prune)
    out(plan.render(dry_run=dry_run))
    if not dry_run:
        if plan.writes:
            await apply_plan(dv, plan, key=key, report=out)
        else:
            out("Nothing to do.")
    return plan


def describe_error(exc: BaseException, *, secrets: Iterable[str | None] = ()) -> str:
    """One line for a person: what failed and what to check. Any secret given is masked, should a service
    ever echo it back."""
    if isinstance(exc, AuthenticationError):
        status = f" (HTTP {exc.status})" if exc.status else ""
        text = (f"Dataverse authentication failed{status}: {_sentence(exc.detail)} Sign in as a user of "
                "DATAVERSE_URL (az login), or check P2C_AUTH_MODE / P2C_STATIC_TOKEN.")
    elif isinstance(exc, ConnectorError) and exc.status == 403:
        text = (f"Dataverse refused the request (HTTP 403): {_sentence(exc.detail)} Registering webhooks "
                "needs the System Customizer or System Administrator role.")
    elif isinstance(exc, ConnectorError):
        text = str(exc)
    else:
        text = str(exc) or type(exc).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return " ".join(text.split())


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."
