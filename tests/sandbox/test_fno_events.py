"""F&O raises its events like F&O: business events and data events activated on an endpoint, in the real
formats (wire-formats section 3), each one read by the product's `parse_change_event`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from p2csync.envelopes.event import CLAIM_ENTITY_LOGICAL_NAME, CLAIM_INITIATING_USER_AGENT, CLAIM_REQUEST_NAME
from p2csync.envelopes.event import ChangeEvent, parse_change_event
from mappings.catalog import fno_fields
from p2csync.envelopes.fno import EndpointTestMessage
from sandbox import SALES_TOKEN, SandboxServer
from sandbox.fno_events import FnoMessage
from tests.sandbox.conftest import client

PRODUCTS = "CDSReleasedDistinctProducts"
PRODUCT_TABLE = "mserp_ecoresreleaseddistinctproductcdsentity"
INVOICE_EVENT = "SalesInvoicePostedBusinessEvent"
#: The contract members of SalesInvoicePostedBusinessEvent (wire-formats 3.1, dev-doc sample contract).
INVOICE_MEMBERS = {"BusinessEventId", "BusinessEventLegalEntity", "ContextRecordSubject", "ControlNumber", "EventId",
                   "EventTime", "EventTimeIso8601", "InitiatingUserAADObjectId", "InvoiceAccount",
                   "InvoiceAmountInAccountingCurrency", "InvoiceDate", "InvoiceDueDate", "InvoiceId",
                   "InvoiceTaxAmount", "LegalEntity", "MajorVersion", "MinorVersion", "ParentContextRecordSubjects",
                   "SalesOrderId"}


class Sink:
    """The endpoint's queue: records what F&O sends; can be told to fail (the queue unreachable)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[FnoMessage] = []
        self.failing = False

    def __call__(self, message: FnoMessage) -> None:
        if self.failing:
            raise ConnectionError("the namespace is unreachable")
        with self.lock:
            self.messages.append(message)

    def of(self, kind: str) -> list[FnoMessage]:
        with self.lock:
            return [m for m in self.messages if m.kind == kind]


@pytest.fixture
def sink(sandbox: SandboxServer) -> Iterator[Sink]:
    events = sandbox.fno.events
    events.deactivate_all()
    events.retry_wait = 0.01
    received = Sink()
    events.set_endpoint(received)
    yield received
    events.wait_idle(5)
    events.deactivate_all()
    events.endpoint = None


@pytest.fixture
def fo_sales(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    """F&O OData as a person (the sales user), not as the integration."""
    with client(sandbox.fno_data_url, SALES_TOKEN) as c:
        yield c


def parsed(message: FnoMessage) -> ChangeEvent:
    return parse_change_event(message.body, message.application_properties, content_type=message.content_type)


def settle(sandbox: SandboxServer) -> None:
    assert sandbox.fno.events.wait_idle(5)


def product(number: str = "D0001", **extra: Any) -> dict[str, Any]:
    return {"dataAreaId": "usmf", "ProductNumber": number, "ProductName": "Speaker", "SalesUnitSymbol": "ea",
            "SalesPrice": 129.5, "CurrencyCode": "USD", "IsStockedProduct": "Yes", **extra}


def test_activating_a_business_event_sends_the_endpoint_test_message(sandbox: SandboxServer, sink: Sink) -> None:
    sandbox.fno.events.activate_business_event(INVOICE_EVENT)
    settle(sandbox)
    [test] = sink.of("test")
    assert json.loads(test.body)["BusinessEventId"] == INVOICE_EVENT
    with pytest.raises(EndpointTestMessage):
        parsed(test)
    with pytest.raises(ValueError, match="not in the catalog"):
        sandbox.fno.events.activate_business_event("SalesOrderConfirmedBusinessEvent")
    sandbox.fno.events.endpoint = None
    with pytest.raises(ValueError, match="no endpoint"):
        sandbox.fno.events.activate_data_event(PRODUCTS)


def test_a_released_product_posted_through_odata_raises_its_data_event(
        sandbox: SandboxServer, sink: Sink, fo_sales: httpx.Client) -> None:
    sandbox.fno.events.activate_data_event(PRODUCTS)
    assert fo_sales.post(PRODUCTS, json=product()).status_code == 201
    settle(sandbox)
    [message] = sink.of("data_event")
    event = parsed(message)
    assert (event.source, event.entity, event.message_name, event.source_message_name) == \
        ("fno_data_event", PRODUCT_TABLE, "Create", "OnExternalCreated")
    assert event.company == "usmf" and event.is_complete
    assert event.attributes["mserp_productnumber"] == "D0001"
    assert event.attributes["mserp_salesprice"] == pytest.approx(129.5)
    assert event.attributes["mserp_isstockedproduct"] == 200000001  # NoYes as an option set
    assert event.formatted["mserp_isstockedproduct"] == "Yes"
    assert message.application_properties[CLAIM_ENTITY_LOGICAL_NAME] == PRODUCT_TABLE
    assert message.application_properties[CLAIM_REQUEST_NAME] == "OnExternalCreated"
    assert "FINOPS" in str(message.application_properties[CLAIM_INITIATING_USER_AGENT])
    assert message.message_id == json.loads(message.body)["OperationId"]
    assert json.loads(message.body)["Stage"] == 40 and json.loads(message.body)["Mode"] == 1


def test_update_and_delete_carry_the_record_and_its_pre_image(
        sandbox: SandboxServer, sink: Sink, fo_sales: httpx.Client) -> None:
    sandbox.fno.events.activate_data_event(PRODUCTS)
    fo_sales.post(PRODUCTS, json=product())
    key = f"{PRODUCTS}(dataAreaId='usmf',ProductNumber='D0001')"
    assert fo_sales.patch(key, json={"SalesPrice": 99}).status_code == 204
    assert fo_sales.delete(key).status_code == 204
    settle(sandbox)
    created, updated, deleted = (parsed(m) for m in sink.of("data_event"))
    assert created.record_id == updated.record_id == deleted.record_id  # one virtual-table row
    assert (updated.message_name, updated.source_message_name) == ("Update", "OnExternalUpdated")
    assert not updated.is_complete  # the handler re-reads the record
    assert updated.attributes["mserp_salesprice"] == 99 and "mserp_productname" not in updated.attributes
    assert updated.attributes["mserp_productnumber"] == "D0001" and updated.company == "usmf"
    assert updated.pre_images["PreImage"]["mserp_salesprice"] == pytest.approx(129.5)
    assert (deleted.message_name, deleted.source_message_name) == ("Delete", "OnExternalDeleted")
    assert deleted.company == "usmf" and deleted.pre_images["PreImage"]["mserp_productnumber"] == "D0001"
    assert len({created.dedupe_key, updated.dedupe_key, deleted.dedupe_key}) == 3


def test_only_activated_entities_and_committed_writes_raise_events(
        sandbox: SandboxServer, sink: Sink, fo_sales: httpx.Client) -> None:
    sandbox.fno.events.activate_data_event(PRODUCTS)
    fo_sales.post("CustomersV3", json={"CustomerAccount": "C-1", "CustomerGroupId": "10"})  # not activated
    fo_sales.post(PRODUCTS, json=product())
    assert fo_sales.post(PRODUCTS, json=product()).status_code == 500  # already exists: nothing committed
    settle(sandbox)
    assert [parsed(m).entity for m in sink.messages] == [PRODUCT_TABLE]
    sandbox.fno.events.deactivate(PRODUCTS)
    fo_sales.patch(f"{PRODUCTS}(dataAreaId='usmf',ProductNumber='D0001')", json={"SalesPrice": 1})
    settle(sandbox)
    assert len(sink.messages) == 1


def test_the_integration_s_own_writes_raise_events_naming_who_made_them(
        sandbox: SandboxServer, sink: Sink, fo: httpx.Client, fo_sales: httpx.Client) -> None:
    sandbox.fno.events.activate_data_event(PRODUCTS)
    fo.post(PRODUCTS, json=product("D0001"))  # the integration's user
    fo_sales.post(PRODUCTS, json=product("D0002"))  # a person
    settle(sandbox)
    ours, theirs = (parsed(m) for m in sink.of("data_event"))
    assert ours.initiating_user_id and theirs.initiating_user_id
    assert ours.initiating_user_id != theirs.initiating_user_id
    body = json.loads(sink.of("data_event")[0].body)
    integration = sandbox.fno.user("p2csync-integration")
    assert body["InitiatingUserAzureActiveDirectoryObjectId"] == integration.aad_object_id


def test_the_invoice_posted_business_event_has_the_documented_contract(
        sandbox: SandboxServer, sink: Sink) -> None:
    events = sandbox.fno.events
    events.activate_business_event(INVOICE_EVENT)
    first = events.raise_business_event(INVOICE_EVENT, "usmf", {"InvoiceId": "CIV-1", "SalesOrderId": "SO-1"},
                                        sandbox.fno.user("sam.seller"))
    second = events.raise_business_event(INVOICE_EVENT, "usmf", {"InvoiceId": "CIV-2"}, sandbox.fno.user("sam.seller"))
    settle(sandbox)
    assert first is not None and second is not None
    body = json.loads(first.body)
    assert set(body) == INVOICE_MEMBERS
    assert body["BusinessEventLegalEntity"] == "USMF" and body["EventId"] == body["EventId"].upper()
    assert body["InitiatingUserAADObjectId"].startswith("{") and body["EventTime"].startswith("/Date(")
    assert first.message_id == body["EventId"]
    assert first.application_properties["BusinessEventId"] == INVOICE_EVENT
    one, two = parsed(first), parsed(second)
    assert (one.source, one.entity, one.record_id, one.company) == \
        ("fno_business_event", INVOICE_EVENT, "CIV-1", "usmf")
    assert one.dedupe_key == body["EventId"] and one.attributes["SalesOrderId"] == "SO-1"
    assert one.initiating_user_id == sandbox.fno.user("sam.seller").aad_object_id
    assert two.version is not None and one.version is not None and two.version > one.version


def test_a_business_event_activated_for_one_legal_entity_is_not_raised_for_another(
        sandbox: SandboxServer, sink: Sink) -> None:
    events = sandbox.fno.events
    events.activate_business_event(INVOICE_EVENT, legal_entity="USRT")
    user = sandbox.fno.user("sam.seller")
    assert events.raise_business_event(INVOICE_EVENT, "usmf", {"InvoiceId": "CIV-1"}, user) is None
    assert events.raise_business_event(INVOICE_EVENT, "usrt", {"InvoiceId": "CIV-2"}, user) is not None
    settle(sandbox)
    assert [parsed(m).record_id for m in sink.of("business_event")] == ["CIV-2"]


def test_an_event_the_endpoint_refuses_is_retried_then_kept_in_the_errors_tab(
        sandbox: SandboxServer, sink: Sink, fo_sales: httpx.Client) -> None:
    events = sandbox.fno.events
    events.activate_data_event(PRODUCTS)
    sink.failing = True
    fo_sales.post(PRODUCTS, json=product())
    settle(sandbox)
    [error] = events.errors()
    assert error.attempts == events.retry_count + 1 and "unreachable" in error.error
    assert sink.messages == []  # nothing reached the queue
    with client(sandbox.fno_url, token=None) as admin:
        listed = admin.get("/_sandbox/events").json()
    assert listed["data_events"] == [PRODUCTS] and listed["errors"][0]["id"] == error.id
    sink.failing = False
    events.resend(error.id)
    settle(sandbox)
    assert events.errors() == [] and parsed(sink.messages[0]).entity == PRODUCT_TABLE


@pytest.mark.parametrize("entity_set,key", [
    ("CDSReleasedDistinctProducts", ["dataAreaId", "ProductNumber"]),
    ("CDSSalesOrderHeaders", ["dataAreaId", "SalesOrderNumber"]),
    ("CDSSalesOrderLines", ["dataAreaId", "SalesOrderNumber", "LineCreationSequenceNumber"]),
    ("SalesInvoiceHeadersV2", ["dataAreaId", "InvoiceNumber", "InvoiceDate", "LedgerVoucher"]),
    ("SalesInvoiceLinesV2", ["dataAreaId", "InvoiceNumber", "LineCreationSequenceNumber", "InvoiceDate",
                             "LedgerVoucher"]),
])
def test_the_entities_the_fno_to_sales_flows_read_have_the_reference_keys_and_catalog_fields(
        sandbox: SandboxServer, entity_set: str, key: list[str]) -> None:
    entity = sandbox.fno.entity(entity_set)
    assert entity.key == key  # wire-formats 4.3
    assert entity.fields == fno_fields(entity_set)
    for status in ("SalesOrderProcessingStatus", "AreTotalsUpdated", "OrderTotalAmount", "OrderTotalTaxAmount",
                   "OrderHeaderTaxAmount"):
        assert entity_set != "CDSSalesOrderHeaders" or status in entity.fields
