"""A webhook is parsed once: the ingress remembers its parse by the exact body it enqueues, the runtime takes it
for the message the ingress stamped (p2c-ingress: webhook); and that parse equals what the runtime would have
parsed from the message, so the shortcut can never change an outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2csync.envelopes import INGRESS_PROPERTY, WEBHOOK_INGRESS, parse_change_event, recent_parses
from p2csync.envelopes.event import RecentParses
from p2csync.ingress import accept_dataverse_webhook
from p2csync.queue.base import OutboundMessage

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BODIES = [FIXTURES / "account_create.json", *sorted((FIXTURES / "envelopes").glob("dataverse_*.json")),
          FIXTURES / "envelopes" / "fno_data_event_custcustomerv3_updated.json"]
HEADERS = {"x-ms-dynamics-organization": "contoso.crm.dynamics.com",
           "x-ms-correlation-request-id": "8a1f7e2c-0d4b-4c36-9b1e-5f0a2e9c7d11"}


class Capture:
    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    async def send(self, queue: str, message: OutboundMessage) -> None:
        self.sent.append(message)


@pytest.mark.parametrize("path", BODIES, ids=lambda p: p.name)
@pytest.mark.parametrize("size_exceeded", [False, True])
async def test_the_remembered_parse_is_the_parse_of_the_enqueued_message(path: Path, size_exceeded: bool) -> None:
    headers = {**HEADERS, **({"x-ms-dynamics-msg-size-exceeded": "true"} if size_exceeded else {})}
    transport = Capture()
    result = await accept_dataverse_webhook(path.read_bytes(), headers, transport, "sales-events")
    assert result.status == 202, result.body
    [message] = transport.sent
    assert message.application_properties[INGRESS_PROPERTY] == WEBHOOK_INGRESS
    remembered = recent_parses.take(message.body)
    assert remembered is not None
    assert remembered == parse_change_event(message.body, message.application_properties,
                                            content_type=message.content_type)
    assert recent_parses.take(message.body) is None  # once


def test_the_cache_is_bounded_and_drops_the_oldest() -> None:
    cache = RecentParses(size=2)
    event = parse_change_event((FIXTURES / "account_create.json").read_bytes())
    for body in (b"1", b"2", b"3"):
        cache.remember(body, event)
    assert len(cache) == 2 and cache.take(b"1") is None and cache.take(b"3") is event


async def test_the_runtime_takes_the_ingress_parse_only_for_webhook_messages(runtime_env: dict[str, str]) -> None:
    from p2csync.runtime import InboundMessage, SyncRuntime
    from p2csync.settings import Settings

    body = (FIXTURES / "account_create.json").read_bytes().replace(b'"account"', b'"lead"')  # no flow: stops early
    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        parsed = parse_change_event(body)
        recent_parses.remember(body, parsed)
        from_queue = InboundMessage(queue="sales-events", body=body, message_id="m1",
                                    application_properties={INGRESS_PROPERTY: "resync"})
        _, event, _ = await runtime.process(from_queue)
        assert event == parsed and event is not parsed  # not stamped by the webhook ingress: parsed again
        from_webhook = InboundMessage(queue="sales-events", body=body, message_id="m1",
                                      application_properties={INGRESS_PROPERTY: WEBHOOK_INGRESS})
        _, event, _ = await runtime.process(from_webhook)
        assert event is parsed
        _, again, _ = await runtime.process(from_webhook)  # a redelivery: parsed afresh
        assert again == parsed and again is not parsed
    finally:
        await runtime.aclose()
