"""The HTTP front both simulators sit behind: it logs each request, applies injected faults, checks the
bearer token and the service protection limits, and serves the `/_sandbox/...` admin endpoints.

It is a plain ASGI wrapper placed outside Starlette, so that a "dropped connection" fault can close the
socket before any response byte is written, the way a failing load balancer would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.faults import FaultConfig, FaultInjector
from sandbox.limits import LimitRejection, ServiceProtection, ServiceProtectionLimits
from sandbox.request_log import RequestLog, RequestRecord

ADMIN_PREFIX = "/_sandbox"


#: Statuses whose answer has no body: HTTP servers (h11) finish the response with its head, so a client can hold
#: the complete answer before the empty body message passes the front; they are logged with the head.
BODILESS = frozenset({204, 304})

class FrontedSimulator(Protocol):
    """What the front needs from a simulator."""

    faults: FaultInjector
    request_log: RequestLog
    protection: ServiceProtection

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's user id for an `Authorization` header value, or None."""

    def unauthorized_response(self) -> Response: ...

    def throttled_response(self, retry_after: int, rejection: LimitRejection | None) -> Response: ...

    def server_error_response(self, status: int) -> Response: ...

    def reset(self) -> None: ...

    def admin_routes(self) -> Sequence[BaseRoute]: ...


def request_user(request: Request) -> str:
    """The authenticated caller, as put in the scope by the front."""
    return str(request.scope["state"]["sandbox_user"])


class SandboxFront:
    """ASGI app: admin endpoints under /_sandbox, everything else through faults/auth/limits to `app`."""

    def __init__(self, simulator: FrontedSimulator, app: ASGIApp) -> None:
        self.simulator = simulator
        self.app = app
        self.admin = Starlette(routes=[*self._common_admin_routes(), *simulator.admin_routes()])

    # -- admin ---------------------------------------------------------------------------------
    def _common_admin_routes(self) -> list[BaseRoute]:
        sim = self.simulator

        async def requests(request: Request) -> Response:
            records = sim.request_log.entries(
                method=request.query_params.get("method"),
                path_contains=request.query_params.get("path_contains"),
            )
            return JSONResponse([json.loads(r.model_dump_json()) for r in records])

        async def faults(request: Request) -> Response:
            if request.method == "POST":
                try:
                    sim.faults.configure(FaultConfig.model_validate(await request.json()))
                except (ValidationError, ValueError) as exc:
                    return JSONResponse({"error": str(exc)}, status_code=400)
            elif request.method == "DELETE":
                sim.faults.clear()
            return JSONResponse([rule.model_dump() for rule in sim.faults.rules])

        async def limits(request: Request) -> Response:
            if request.method == "POST":
                try:
                    sim.protection.configure(ServiceProtectionLimits.model_validate(await request.json()))
                except (ValidationError, ValueError) as exc:
                    return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(sim.protection.limits.model_dump())

        async def reset(request: Request) -> Response:
            await asyncio.to_thread(sim.reset)
            return Response(status_code=204)

        return [
            Route(f"{ADMIN_PREFIX}/requests", requests, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/faults", faults, methods=["GET", "POST", "DELETE"]),
            Route(f"{ADMIN_PREFIX}/limits", limits, methods=["GET", "POST"]),
            Route(f"{ADMIN_PREFIX}/reset", reset, methods=["POST"]),
        ]

    # -- requests ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            await self.admin(scope, receive, send)
            return

        sim = self.simulator
        started = time.perf_counter()
        method: str = scope["method"]
        headers = Headers(scope=scope)
        user = sim.authenticate(headers.get("authorization"))
        state: dict[str, Any] = {"status": None, "fault": None, "logged": False, "admitted": False}

        def release() -> None:
            if state["admitted"]:
                state["admitted"] = False
                sim.protection.leave(str(user))

        def record() -> None:
            """Log before the last byte leaves, so a client that got its answer always finds the entry."""
            if state["logged"]:
                return
            state["logged"] = True
            sim.request_log.append(RequestRecord(
                method=method, path=path, query=scope.get("query_string", b"").decode("latin-1"),
                status=state["status"], user=user, time=datetime.now(timezone.utc),
                duration_ms=round((time.perf_counter() - started) * 1000, 3), fault=state["fault"],
                client_request_id=headers.get("x-ms-client-request-id"),
                correlation_id=headers.get("x-ms-correlation-id")))

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if answer_at:  # the answer's way back: it leaves no sooner than the latency after arrival
                    await asyncio.sleep(answer_at - time.perf_counter())
                state["status"] = message["status"]
                if message["status"] in BODILESS:  # the client has the whole answer once the head is out
                    release()
                    record()
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                release()  # a client's next request must not count this one as still in flight
                record()
            await send(message)

        decision = sim.faults.decide(method, path)
        state["fault"] = decision.label
        # Latency is a network's round trip: the request reaches the service after half of it, and the answer
        # leaves no sooner than all of it after arrival. The service's own work (serial here, parallel in the
        # real one) fits inside the second half instead of queueing on top of it. Every answer waits for it,
        # 401s and limit 429s included. [Inferred, on the strict side] the request holds its concurrency slot
        # for the whole trip, not only while it is at the service.
        answer_at = started + decision.latency if decision.latency else 0.0
        try:
            if decision.outcome is not None:  # answered by the front, nothing served: the whole trip first
                if decision.latency:
                    await asyncio.sleep(decision.latency)
                if decision.outcome == "drop":
                    record()
                    await _drop_connection(send)
                elif decision.outcome == "throttle":
                    await _drain(receive)
                    await sim.throttled_response(decision.retry_after, None)(scope, receive, recording_send)
                else:
                    await _drain(receive)
                    await sim.server_error_response(decision.status)(scope, receive, recording_send)
                return
            if user is None:
                await sim.unauthorized_response()(scope, receive, recording_send)
                return
            rejection = sim.protection.enter(user)
            if rejection is not None:
                state["fault"] = f"limit:{rejection.kind}"
                await _drain(receive)
                await sim.throttled_response(rejection.retry_after, rejection)(scope, receive, recording_send)
                return
            state["admitted"] = True
            try:
                if decision.latency:
                    await asyncio.sleep(decision.latency / 2)
                scope.setdefault("state", {})["sandbox_user"] = user
                await self.app(scope, receive, recording_send)
            finally:
                release()
        finally:
            record()


async def _drain(receive: Receive) -> None:
    """Read the request body so the connection stays usable after an early answer."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _drop_connection(send: Send) -> None:
    """Close the socket without a response. Uses uvicorn's transport when it is reachable; otherwise
    starts a response it never finishes, which the client also sees as a protocol error."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is not None:
        transport.close()
        for _ in range(50):
            if getattr(cycle, "disconnected", True):
                return
            await asyncio.sleep(0.001)
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"1000"), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"partial":', "more_body": True})
    raise ConnectionAbortedError("sandbox: injected dropped connection")

