"""Envelope parsing: the only place that reads raw inbound payloads (Dataverse RemoteExecutionContext from
webhooks and Service Bus, F&O data events relayed through Dataverse, F&O business events) and turns them
into a `ChangeEvent` (docs/architecture.md, "Change event")."""

from ._common import EnvelopeError
from .dataverse import EntityRef
from .event import (INGRESS_PROPERTY, WEBHOOK_INGRESS, ChangeEvent, Source, dedupe_message_id, parse_change_event,
                    recent_parses, trim_context_body)
from .fno import EndpointTestMessage
from .resync import RESYNC, ResyncRequest, resync_body, resync_message_id

__all__ = ["INGRESS_PROPERTY", "RESYNC", "WEBHOOK_INGRESS", "ChangeEvent", "EndpointTestMessage", "EntityRef",
           "EnvelopeError", "ResyncRequest", "Source", "dedupe_message_id", "parse_change_event", "recent_parses",
           "resync_body", "resync_message_id", "trim_context_body"]
