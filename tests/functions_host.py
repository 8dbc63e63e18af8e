"""The Functions host's side of the Service Bus SDK-type binding, for tests without the host.

What the host does, and what we reproduce with the binding package's own code:
- it hands the worker each delivery as ``model_binding_data``: the lock token (16 bytes, little-endian
  GUID), the marker ``x-opt-lock-token``, then the AMQP-encoded message. ``host_message`` builds those
  bytes with uamqp and decodes them with the package's ``ServiceBusConverter``, exactly as the worker does;
- it serves the settlement gRPC service (``Settlement``: Complete, Abandon, Deadletter, ...) that the
  package's ``ServiceBusMessageActions`` calls. ``SettlementServer`` is that service on 127.0.0.1, recording
  each request; ``binding_actions`` connects the real ``ServiceBusMessageActions`` to it through the worker's
  command-line arguments (``--host --port --functions-grpc-max-message-length``).
"""

from __future__ import annotations

import sys
import types
import uuid
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import uamqp
from uamqp.constants import MessageBodyType
from azurefunctions.extensions.base import Datum
from azurefunctions.extensions.bindings.protos import settlement_pb2_grpc
from azurefunctions.extensions.bindings.servicebus import (
    ServiceBusConverter,
    ServiceBusMessageActions,
    ServiceBusReceivedMessage,
)
from google.protobuf.empty_pb2 import Empty


def host_message(
    body: Any,
    *,
    body_type: str = "data",
    message_id: str = "m-1",
    properties: dict[str, Any] | None = None,
    delivery_count: int = 1,
    content_type: str | None = "application/json",
    lock_token: uuid.UUID | None = None,
) -> Any:
    """Delivery number ``delivery_count`` (1 = first) as the SDK-type binding gives it to the function (an
    azure-servicebus message). On the wire, the AMQP header counts the earlier attempts: ``delivery_count - 1``.
    ``body_type`` "value" or "sequence" builds what publishers other than ours may send."""
    amqp = uamqp.Message(
        body,
        body_type={"data": MessageBodyType.Data, "value": MessageBodyType.Value,
                   "sequence": MessageBodyType.Sequence}[body_type],
        properties=uamqp.message.MessageProperties(message_id=message_id, content_type=content_type),
        application_properties=properties or {},
    )
    amqp.header = uamqp.message.MessageHeader()
    amqp.header.delivery_count = delivery_count - 1
    amqp.annotations = {b"x-opt-enqueued-time": int(datetime.now(UTC).timestamp() * 1000),
                        b"x-opt-sequence-number": 1}
    token = lock_token or uuid.uuid4()
    content = token.bytes_le + b"x-opt-lock-token" + amqp.encode_message()
    data = types.SimpleNamespace(version="1.0", source="AzureServiceBusReceivedMessage",
                                 content_type="application/octet-stream", content=content)
    return ServiceBusConverter.decode(Datum(data, "model_binding_data"), trigger_metadata=None,
                                      pytype=ServiceBusReceivedMessage)


@dataclass
class SettlementCall:
    action: str
    lock_token: str
    reason: str | None = None
    description: str | None = None


class _Servicer(settlement_pb2_grpc.SettlementServicer):
    def __init__(self, server: SettlementServer) -> None:
        self.server = server

    def _record(self, context: Any, call: SettlementCall) -> Empty:
        if call.lock_token in self.server.lost_locks:
            context.abort(grpc.StatusCode.INTERNAL, f"MessageLockLost: the lock {call.lock_token} was lost")
        self.server.calls.append(call)
        return Empty()

    def Complete(self, request: Any, context: Any) -> Empty:  # noqa: N802 - gRPC method names
        return self._record(context, SettlementCall("complete", request.locktoken))

    def Abandon(self, request: Any, context: Any) -> Empty:  # noqa: N802
        return self._record(context, SettlementCall("abandon", request.locktoken))

    def Deadletter(self, request: Any, context: Any) -> Empty:  # noqa: N802
        reason = request.deadletterReason.value if request.HasField("deadletterReason") else None
        description = (request.deadletterErrorDescription.value
                       if request.HasField("deadletterErrorDescription") else None)
        return self._record(context, SettlementCall("deadletter", request.locktoken, reason, description))


class SettlementServer:
    """The host's settlement gRPC service on loopback, recording what the function asked for."""

    def __init__(self) -> None:
        self.calls: list[SettlementCall] = []
        self.lost_locks: set[str] = set()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        settlement_pb2_grpc.add_SettlementServicer_to_server(_Servicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def __enter__(self) -> SettlementServer:
        self._server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.stop(grace=None).wait()


@contextmanager
def binding_actions(server: SettlementServer) -> Iterator[ServiceBusMessageActions]:
    """The binding's real ``ServiceBusMessageActions``, connected to ``server`` as the worker would be."""
    saved_argv, saved_instance = sys.argv, ServiceBusMessageActions._instance
    sys.argv = [saved_argv[0], "--host", "127.0.0.1", "--port", str(server.port),
                "--functions-grpc-max-message-length", str(4 * 1024 * 1024)]
    ServiceBusMessageActions._instance = None
    try:
        yield ServiceBusMessageActions.get_instance()
    finally:
        sys.argv = saved_argv
        ServiceBusMessageActions._instance = saved_instance
