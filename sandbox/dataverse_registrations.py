"""Plug-in registration tables: `serviceendpoint`, `sdkmessage`, `sdkmessagefilter`,
`sdkmessageprocessingstep` and `sdkmessageprocessingstepimage`.

What lives here: their definitions, the seeded messages and filters (Create, Update and Delete of every
business table), the rules Dataverse applies when such a row is written, the privileges a caller needs, and
the translation between these rows and the `WebhookRegistration`s the dispatcher delivers. The rows are the
only registry: a webhook registered over the Web API and one registered through `Dataverse.register_webhook`
are the same rows and deliver the same way.

Values of the enums, as documented for these tables:
* serviceendpoint.contract 8 Webhook (2 Queue, 5 Topic, ...); authtype 4 WebhookKey, 5 HttpHeader,
  6 HttpQueryString; messageformat 2 Json; userclaim 1 None, 2 UserId, 3 UserInfo; `authvalue` is write-only.
* sdkmessageprocessingstep.mode 0 Synchronous, 1 Asynchronous; stage 10/20/40; supporteddeployment 0 Server;
  statecode 0 Enabled, 1 Disabled.
* sdkmessageprocessingstepimage.imagetype 0 PreImage, 1 PostImage, 2 Both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

from sandbox.dataverse_events import EntityImage, WebhookEndpoint, WebhookRegistration, WebhookStep
from sandbox.dataverse_tables import Column, ColumnType, LookupValue, Table, choice, define_table

ENDPOINT = "serviceendpoint"
MESSAGE = "sdkmessage"
FILTER = "sdkmessagefilter"
STEP = "sdkmessageprocessingstep"
IMAGE = "sdkmessageprocessingstepimage"

#: Tables whose rows make up webhook registrations: a write to one of them changes what is delivered.
WEBHOOK_TABLES = (ENDPOINT, STEP, IMAGE)
#: Tables the Web API only reads.
READ_ONLY_TABLES = (MESSAGE, FILTER)
#: Tables that raise no events and get no message filters of their own.
PLATFORM_TABLES = frozenset({ENDPOINT, MESSAGE, FILTER, STEP, IMAGE, "asyncoperation"})

SEEDED_MESSAGES = ("Create", "Update", "Delete")
CONTRACT_WEBHOOK = 8
AUTH_TYPES = {4: "WebhookKey", 5: "HttpHeader", 6: "HttpQueryString"}
MODE_ASYNCHRONOUS = 1
STAGE_POST_OPERATION = 40
PRE_IMAGE, POST_IMAGE, BOTH_IMAGES = 0, 1, 2
#: The message property an image is taken from, per message.
MESSAGE_PROPERTY = {"Create": "Id", "Update": "Target", "Delete": "Target"}

_IDS = uuid.UUID("0d6f3b52-8c1e-4f7a-9b2d-5e4c3a2b1f00")
#: Privilege names per table (prv<Verb><SchemaName>).
_SCHEMA_NAMES = {ENDPOINT: "ServiceEndpoint", STEP: "SdkMessageProcessingStep",
                 IMAGE: "SdkMessageProcessingStepImage"}
_VERBS = {"GET": "Read", "POST": "Create", "PATCH": "Write", "PUT": "Write", "DELETE": "Delete"}
INVALID_ARGUMENT = "0x80040203"


class RuleViolation(Exception):
    """A write Dataverse would refuse; the store turns it into a `DataverseError`."""

    def __init__(self, message: str, status: int = 400, code: str = INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


#: Hosts on which the sandbox lets a webhook use any port: the local host and test receivers listen on
#: loopback ports. [Inferred] Dataverse cannot reach loopback at all, so this changes nothing a real
#: registration could do.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _check_webhook_port(url: str) -> None:
    """"Registered WebHooks support only port 80 for HTTP and port 443 for HTTPS" (Register a WebHook).
    [GAP] The wording of Dataverse's refusal is not published; the sandbox answers 400 InvalidArgument."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RuleViolation(f"A webhook needs an absolute http(s) url; got '{url}'.") from None
    if parts.hostname in LOOPBACK_HOSTS or port is None:
        return
    allowed = 80 if parts.scheme == "http" else 443
    if port != allowed:
        raise RuleViolation(f"Registered webhooks support only port 80 for HTTP and port 443 for HTTPS; "
                            f"got port {port} in '{url}'.")


def message_id(name: str) -> str:
    """The fixed id of a seeded sdkmessage (the same after every reset)."""
    return str(uuid.uuid5(_IDS, f"sdkmessage:{name}"))


def filter_id(table: str, message: str) -> str:
    """The fixed id of the seeded sdkmessagefilter of a table and message."""
    return str(uuid.uuid5(_IDS, f"sdkmessagefilter:{table}:{message}"))


def _lookup(target: str, navigation: str | None = None) -> Column:
    return Column(name="", type=ColumnType.LOOKUP, targets=[target],
                  navigation={target: navigation} if navigation else {})


def registration_tables() -> list[Table]:
    """The five tables, organisation-owned, with the columns a registration reads and writes."""
    S, M, I, B = ColumnType.STRING, ColumnType.MEMO, ColumnType.INT, ColumnType.BOOL

    def table(logical_name: str, entity_set: str, columns: dict[str, Any]) -> Table:
        return define_table(logical_name, entity_set, primary_name="name", ownership="organization",
                            columns=columns)

    endpoint = table(ENDPOINT, "serviceendpoints", {
        "description": M, "url": S, "namespaceaddress": S, "path": S, "solutionnamespace": S, "saskeyname": S,
        "contract": choice({1: "OneWay", 2: "Queue", 3: "Rest", 4: "TwoWay", 5: "Topic",
                             6: "Queue (Persistent)", 7: "Event Hub", 8: "Webhook", 9: "Event Grid"}),
        "authtype": choice({1: "ACS", 2: "SAS Key", 3: "SAS Token", 4: "Webhook Key", 5: "Http Header",
                             6: "Http Query String", 7: "Connection String", 8: "Access Key"}),
        "authvalue": Column(name="authvalue", type=S, readable=False),
        "messageformat": choice({1: "Binary XML", 2: "Json", 3: "Text XML"}),
        "userclaim": choice({1: "None", 2: "UserId", 3: "UserInfo"}),
        "connectionmode": choice({1: "Normal", 2: "Federated"}),
    })
    message = table(MESSAGE, "sdkmessages", {"categoryname": S, "isprivate": B, "availability": I})
    message_filter = table(FILTER, "sdkmessagefilters", {
        "primaryobjecttypecode": S, "secondaryobjecttypecode": S, "sdkmessageid": _lookup(MESSAGE),
        "iscustomprocessingstepallowed": B, "isvisible": B, "availability": I,
    })
    step = table(STEP, "sdkmessageprocessingsteps", {
        "description": M, "configuration": M, "filteringattributes": S, "rank": I, "asyncautodelete": B,
        "mode": choice({0: "Synchronous", 1: "Asynchronous"}),
        "stage": choice({10: "Pre-validation", 20: "Pre-operation", 30: "Main Operation",
                          40: "Post-operation"}),
        "supporteddeployment": choice({0: "Server Only", 1: "Microsoft Dynamics 365 Client for Outlook Only",
                                        2: "Both"}),
        "sdkmessageid": _lookup(MESSAGE), "sdkmessagefilterid": _lookup(FILTER),
        "eventhandler": _lookup(ENDPOINT, "eventhandler_serviceendpoint"),
        "statecode": choice({0: "Enabled", 1: "Disabled"}),
        "statuscode": choice({1: "Enabled", 2: "Disabled"}),
    })
    image = table(IMAGE, "sdkmessageprocessingstepimages", {
        "description": M, "entityalias": S, "messagepropertyname": S, "attributes": S,
        "imagetype": choice({0: "PreImage", 1: "PostImage", 2: "Both"}),
        "sdkmessageprocessingstepid": _lookup(STEP),
    })
    return [endpoint, message, message_filter, step, image]


def seed_rows(tables: Iterable[Table]) -> dict[str, list[dict[str, Any]]]:
    """Create, Update and Delete, and their filter for every business table (not the platform's own)."""
    messages = [{"sdkmessageid": message_id(name), "name": name, "categoryname": name, "isprivate": False,
                 "availability": 0} for name in SEEDED_MESSAGES]
    filters = [{"sdkmessagefilterid": filter_id(table.logical_name, name), "name": name,
                "primaryobjecttypecode": table.logical_name, "secondaryobjecttypecode": "none",
                "sdkmessageid": LookupValue(table=MESSAGE, id=message_id(name)),
                "iscustomprocessingstepallowed": True, "isvisible": True, "availability": 0}
               for table in tables if table.logical_name not in PLATFORM_TABLES for name in SEEDED_MESSAGES]
    return {MESSAGE: messages, FILTER: filters}


def required_privilege(table: str, method: str) -> str | None:
    """The privilege a Web API call on a registration table needs (the System Customizer role has them)."""
    schema = _SCHEMA_NAMES.get(table)
    verb = _VERBS.get(method.upper())
    return f"prv{verb}{schema}" if schema and verb else None


def _sides(imagetype: Any) -> set[str]:
    """Which of the pre and post images an imagetype asks for."""
    sides = set()
    if imagetype in (PRE_IMAGE, BOTH_IMAGES):
        sides.add("pre")
    if imagetype in (POST_IMAGE, BOTH_IMAGES):
        sides.add("post")
    return sides


def _csv(value: Any) -> list[str]:
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


def _ref(row: Mapping[str, Any], column: str) -> str | None:
    value = row.get(column)
    return value.id if isinstance(value, LookupValue) else None


class Registrations:
    """The rules and the derived registrations, over the store's rows (`rows()[table][id] -> row`).

    The store calls `check` before it commits a write to a registration table, `cascade` when it deletes
    one, and `webhook_registrations` after every such write to tell the dispatcher what to deliver.
    """

    def __init__(self, rows: Callable[[], Mapping[str, dict[str, dict[str, Any]]]],
                 tables: Mapping[str, Table]) -> None:
        self._rows = rows
        self.tables = tables

    @property
    def rows(self) -> Mapping[str, dict[str, dict[str, Any]]]:
        return self._rows()

    # -- rules -----------------------------------------------------------------------------------------
    def check(self, table: Table, row: Mapping[str, Any]) -> None:
        """Raise `RuleViolation` for a row Dataverse would not store."""
        if table.logical_name == ENDPOINT:
            self._check_endpoint(row)
        elif table.logical_name == STEP:
            self._check_step(row)
        elif table.logical_name == IMAGE:
            self._check_image(row)

    @staticmethod
    def _check_endpoint(row: Mapping[str, Any]) -> None:
        if row.get("contract") is None:
            raise RuleViolation("A service endpoint needs a contract.")
        if row["contract"] != CONTRACT_WEBHOOK:
            return
        url = row.get("url") or ""
        if not url.startswith(("https://", "http://")):
            raise RuleViolation(f"A webhook needs an absolute http(s) url; got '{url}'.")
        _check_webhook_port(url)
        if row.get("authtype") not in AUTH_TYPES:
            raise RuleViolation("A webhook's authtype must be 4 (WebhookKey), 5 (HttpHeader) or 6 "
                                "(HttpQueryString).")

    def _check_step(self, row: Mapping[str, Any]) -> None:
        message, message_filter = _ref(row, "sdkmessageid"), _ref(row, "sdkmessagefilterid")
        if message is None:
            raise RuleViolation("A step needs sdkmessageid.")
        if _ref(row, "eventhandler") is None:
            raise RuleViolation("A step needs an event handler (eventhandler_serviceendpoint).")
        for column in ("mode", "stage", "rank"):
            if row.get(column) is None:
                raise RuleViolation(f"A step needs {column}.")
        if message_filter is not None:
            filter_row = self.rows[FILTER][message_filter]
            if _ref(filter_row, "sdkmessageid") != message:
                message_name = self.rows[MESSAGE][message].get("name")
                raise RuleViolation(
                    f"The sdkmessagefilter {message_filter} ({filter_row.get('primaryobjecttypecode')} "
                    f"{filter_row.get('name')}) does not belong to the message {message_name} of the step.")
            if not filter_row.get("iscustomprocessingstepallowed"):
                table_name = filter_row.get("primaryobjecttypecode")
                raise RuleViolation(f"Custom steps are not allowed on {table_name}.")
        if row["mode"] == MODE_ASYNCHRONOUS and row["stage"] != STAGE_POST_OPERATION:
            raise RuleViolation("An asynchronous step can only be registered in the PostOperation stage "
                                "(40).")
        if row["mode"] != MODE_ASYNCHRONOUS:
            if row.get("asyncautodelete"):
                raise RuleViolation("asyncautodelete applies to asynchronous steps only.")
            raise RuleViolation("The sandbox runs service endpoint steps asynchronously only (mode 1).")
        table = self._step_table(row)
        for name in _csv(row.get("filteringattributes")):
            if table is not None and table.column(name) is None:
                raise RuleViolation(f"Filtering attribute '{name}' is not a column of {table.logical_name}.")

    def _check_image(self, row: Mapping[str, Any]) -> None:
        step_id = _ref(row, "sdkmessageprocessingstepid")
        if step_id is None:
            raise RuleViolation("An image needs sdkmessageprocessingstepid.")
        if not row.get("entityalias"):
            raise RuleViolation("An image needs an entityalias.")
        step = self.rows[STEP][step_id]
        message = self._message_name(step)
        kind = row.get("imagetype")
        if kind not in (PRE_IMAGE, POST_IMAGE, BOTH_IMAGES):
            raise RuleViolation("imagetype must be 0 (PreImage), 1 (PostImage) or 2 (Both).")
        if message == "Create" and kind != POST_IMAGE:
            raise RuleViolation("A Create step can only have a post image.")
        if message == "Delete" and kind != PRE_IMAGE:
            raise RuleViolation("A Delete step can only have a pre image.")
        expected = MESSAGE_PROPERTY.get(message or "")
        if expected and row.get("messagepropertyname") != expected:
            raise RuleViolation(f"messagepropertyname of an image on a {message} step must be '{expected}'.")
        table = self._step_table(step)
        for name in _csv(row.get("attributes")):
            if table is not None and table.column(name) is None:
                raise RuleViolation(f"Image attribute '{name}' is not a column of {table.logical_name}.")
        for other_id, other in self.rows[IMAGE].items():
            if other_id == row.get("sdkmessageprocessingstepimageid") \
                    or _ref(other, "sdkmessageprocessingstepid") != step_id:
                continue
            if _sides(kind) & _sides(other.get("imagetype")):
                raise RuleViolation("The sandbox supports one pre image and one post image per step.")

    # -- cascades ---------------------------------------------------------------------------------------
    def dependants(self, table: Table, record_id: str) -> list[tuple[str, str]]:
        """Rows deleted with this one: a step's images, an endpoint's steps and their images."""
        found: list[tuple[str, str]] = []
        if table.logical_name == ENDPOINT:
            for step_id, step in self.rows[STEP].items():
                if _ref(step, "eventhandler") == record_id:
                    found += self.dependants(self.tables[STEP], step_id) + [(STEP, step_id)]
        elif table.logical_name == STEP:
            found += [(IMAGE, image_id) for image_id, image in self.rows[IMAGE].items()
                      if _ref(image, "sdkmessageprocessingstepid") == record_id]
        return found

    # -- rows -> registrations --------------------------------------------------------------------------
    def _message_name(self, step: Mapping[str, Any]) -> str | None:
        message = self.rows[MESSAGE].get(_ref(step, "sdkmessageid") or "")
        return message.get("name") if message else None

    def _step_table(self, step: Mapping[str, Any]) -> Table | None:
        message_filter = self.rows[FILTER].get(_ref(step, "sdkmessagefilterid") or "")
        return self.tables.get(message_filter.get("primaryobjecttypecode")) if message_filter else None

    def webhook_registrations(self) -> list[WebhookRegistration]:
        """Every webhook endpoint (contract 8) with its enabled steps on Create, Update or Delete of a table,
        steps in rank order."""
        registrations = []
        for endpoint_id, endpoint in self.rows[ENDPOINT].items():
            if endpoint.get("contract") != CONTRACT_WEBHOOK:
                continue
            steps = [(step_id, step) for step_id, step in self.rows[STEP].items()
                     if _ref(step, "eventhandler") == endpoint_id and step.get("statecode") == 0]
            steps.sort(key=lambda item: item[1].get("rank") or 0)
            registrations.append(WebhookRegistration(endpoint=_endpoint(endpoint_id, endpoint), steps=[
                step for step_id, row in steps if (step := self._webhook_step(step_id, row)) is not None]))
        return registrations

    def _webhook_step(self, step_id: str, row: Mapping[str, Any]) -> WebhookStep | None:
        message, table = self._message_name(row), self._step_table(row)
        if message not in SEEDED_MESSAGES or table is None:
            return None  # a step on another message never fires in the sandbox
        images = [image for image in self.rows[IMAGE].values()
                  if _ref(image, "sdkmessageprocessingstepid") == step_id]

        def image_of(*kinds: int) -> EntityImage | None:
            for image in images:
                if image.get("imagetype") in kinds:
                    columns = _csv(image.get("attributes")) or None  # none listed: all columns
                    return EntityImage(alias=image["entityalias"], columns=columns)
            return None

        filtering = _csv(row.get("filteringattributes")) if message == "Update" else []
        return WebhookStep(id=step_id, name=row.get("name"), table=table.logical_name, message=message,
                           filtering_attributes=filtering,
                           post_image=image_of(POST_IMAGE, BOTH_IMAGES) if message != "Delete" else None,
                           pre_image=image_of(PRE_IMAGE, BOTH_IMAGES) if message != "Create" else None,
                           async_auto_delete=bool(row.get("asyncautodelete")))

    # -- registrations -> rows (the Python API) -----------------------------------------------------------
    def rows_for(self, registration: WebhookRegistration) -> list[tuple[str, dict[str, Any]]]:
        """The rows that store a registration: the endpoint, then each step followed by its images."""
        endpoint = registration.endpoint
        endpoint_type = {name: number for number, name in AUTH_TYPES.items()}[endpoint.auth]
        settings = endpoint.headers if endpoint.auth == "HttpHeader" else endpoint.query
        authvalue = endpoint.auth_value if endpoint.auth == "WebhookKey" else _settings_xml(settings)
        rows: list[tuple[str, dict[str, Any]]] = [(ENDPOINT, {
            "serviceendpointid": endpoint.id, "name": endpoint.name, "url": endpoint.url,
            "contract": CONTRACT_WEBHOOK, "authtype": endpoint_type, "authvalue": authvalue,
            "messageformat": 2, "userclaim": 1, "connectionmode": 1})]
        for rank, step in enumerate(registration.steps, start=1):
            if filter_id(step.table, step.message) not in self.rows[FILTER]:
                raise RuleViolation(f"No sdkmessagefilter for {step.message} of '{step.table}'.")
            rows.append((STEP, {
                "sdkmessageprocessingstepid": step.id, "name": step.name, "mode": MODE_ASYNCHRONOUS,
                "stage": STAGE_POST_OPERATION, "rank": rank, "supporteddeployment": 0,
                "asyncautodelete": step.async_auto_delete,
                "filteringattributes": ",".join(step.filtering_attributes) or None,
                "sdkmessageid": LookupValue(table=MESSAGE, id=message_id(step.message)),
                "sdkmessagefilterid": LookupValue(table=FILTER, id=filter_id(step.table, step.message)),
                "eventhandler": LookupValue(table=ENDPOINT, id=endpoint.id)}))
            for kind, image in ((POST_IMAGE, step.post_image), (PRE_IMAGE, step.pre_image)):
                if image is not None:
                    rows.append((IMAGE, {
                        "name": image.alias, "entityalias": image.alias, "imagetype": kind,
                        "messagepropertyname": MESSAGE_PROPERTY[step.message],
                        "attributes": ",".join(image.columns) if image.columns else None,
                        "sdkmessageprocessingstepid": LookupValue(table=STEP, id=step.id)}))
        return rows


def _settings_xml(settings: Mapping[str, str]) -> str:
    """HttpHeader / HttpQueryString pairs as Dataverse keeps them in authvalue."""
    root = ElementTree.Element("settings")
    for name, value in settings.items():
        ElementTree.SubElement(root, "setting", name=name, value=value)
    return ElementTree.tostring(root, encoding="unicode")


def _parse_settings(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return {}
    return {item.get("name", ""): item.get("value", "") for item in root.iter("setting")}


def _endpoint(endpoint_id: str, row: Mapping[str, Any]) -> WebhookEndpoint:
    auth = AUTH_TYPES[row["authtype"]]
    authvalue = row.get("authvalue")
    return WebhookEndpoint(
        id=endpoint_id, name=row.get("name") or "", url=row["url"], auth=auth,  # type: ignore[arg-type]
        auth_value=authvalue if auth == "WebhookKey" else None,
        headers=_parse_settings(authvalue) if auth == "HttpHeader" else {},
        query=_parse_settings(authvalue) if auth == "HttpQueryString" else {})
