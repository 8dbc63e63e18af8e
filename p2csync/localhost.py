"""The local host: runs the functions registered in function_app.py the way the Functions host does.

For machines without Azure Functions Core Tools, and for tests. HTTP triggers are served on
``127.0.0.1:<port>/api/<route>`` with function-key auth. Service Bus queue triggers are fed by a
``QueueConsumer``: the embedded queue, or a real Service Bus namespace. As with SDK-type bindings, the
function gets the received message and, if it declares one, a ``ServiceBusMessageActions`` parameter to
settle it; the lock is renewed while the function runs; what the function leaves unsettled is completed
when the trigger has ``autoCompleteMessages`` on, and left to its lock expiry when off; a function that
raises gets its message abandoned. function_app.py stays a standard v2 app: ``func start`` runs it
unchanged where Core Tools are installed.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import os
import re
import signal
import socket
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import azure.functions as func
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from p2csync.queue.base import MessageLockLost, QueueConsumer

log = logging.getLogger("p2csync.localhost")
_T = TypeVar("_T")

#: The Functions host's request body limit (app setting FUNCTIONS_REQUEST_BODY_SIZE_LIMIT, bytes; the host
#: answers 413 above it). Its default is 100 MB (104857600 bytes).
BODY_LIMIT_SETTING = "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"
DEFAULT_BODY_LIMIT = 100 * 1024 * 1024
#: What `python -m p2csync run` uses when the setting is unset: the value the infra sets in Azure
#: (infra/modules/functionapp.bicep), since Dataverse never posts more than 256 KB.
RUN_BODY_LIMIT = 1024 * 1024


def request_body_limit(env: typing.Mapping[str, str] | None = None) -> int:
    """The host's request body limit from FUNCTIONS_REQUEST_BODY_SIZE_LIMIT (default 100 MB)."""
    value = (os.environ if env is None else env).get(BODY_LIMIT_SETTING, "").strip()
    if not value:
        return DEFAULT_BODY_LIMIT
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{BODY_LIMIT_SETTING}: expected a number of bytes, got {value!r}") from None
    if limit < 1:
        raise ValueError(f"{BODY_LIMIT_SETTING}: must be positive, got {limit}")
    return limit


class PortInUse(OSError):
    """The local host cannot listen on its address (the port is taken, or the address is not local)."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        super().__init__(cause.errno, f"cannot listen on {host}:{port}: {cause.strerror or cause} (another "
                         f"process uses the port? pick another with --port)")


class BodyTooLarge(Exception):
    """The request body is over the host's limit (answered 413 without reading the rest)."""


@dataclass
class HttpFunction:
    name: str
    route: str
    pattern: re.Pattern[str]
    methods: frozenset[str]
    auth_level: str
    call: Callable[..., Any]


@dataclass
class QueueFunction:
    name: str
    queue: str
    call: Callable[..., Any]
    arg_name: str
    actions_arg: str | None = None  # the parameter annotated ServiceBusMessageActions, if any
    auto_complete: bool = True


def _route_pattern(route: str) -> re.Pattern[str]:
    """Functions route templates: literal segments and {name} / {name?} / {name:constraint} parameters."""
    parts = []
    for segment in route.strip("/").split("/"):
        if m := re.fullmatch(r"\{(\w+)(?::[^}?]+)?(\??)\}", segment):
            name, optional = m.group(1), m.group(2)
            parts.append(f"(?:/(?P<{name}>[^/]+)){'?' if optional else ''}")
        else:
            parts.append("/" + re.escape(segment))
    return re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE)


_indexed: dict[int, list[Any]] = {}


def indexed_functions(app: func.FunctionApp) -> list[Any]:
    """``app.get_functions()``, once per app: the library's name-uniqueness check keeps state between
    calls, so a second call fails although the Functions host itself calls it only once."""
    if id(app) not in _indexed:
        _indexed[id(app)] = app.get_functions()
    return _indexed[id(app)]


def discover(app: func.FunctionApp) -> tuple[list[HttpFunction], list[QueueFunction]]:
    """Read the functions and their trigger bindings from the app, as the host's indexer does."""
    http: list[HttpFunction] = []
    queues: list[QueueFunction] = []
    for function in indexed_functions(app):
        spec = json.loads(function.get_function_json())
        trigger = next(b for b in spec["bindings"] if b["type"].endswith("Trigger"))
        call = function.get_user_function()
        name = function.get_function_name()
        if trigger["type"] == "httpTrigger":
            route = trigger.get("route") or name
            methods = frozenset(m.upper() for m in (trigger.get("methods") or ["GET", "POST"]))
            http.append(HttpFunction(name, route, _route_pattern(route), methods,
                                     str(trigger.get("authLevel", "FUNCTION")).upper(), call))
        elif trigger["type"] == "serviceBusTrigger" and "queueName" in trigger:
            queues.append(QueueFunction(name, trigger["queueName"], call, trigger["name"], _actions_arg(call),
                                        bool(trigger.get("autoCompleteMessages", True))))
        elif trigger["type"] == "timerTrigger":  # off locally: run its code by hand (README, catch-up)
            log.debug("function %s: timer triggers are not run by the local host", name)
        else:
            log.warning("function %s: trigger %s is not supported by the local host", name, trigger["type"])
    return http, queues


def _actions_arg(fn: Callable[..., Any]) -> str | None:
    """The parameter the worker would bind message actions to: the one annotated ServiceBusMessageActions."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: fall back to their names
        hints = dict(getattr(fn, "__annotations__", {}))
    for name, hint in hints.items():
        if getattr(hint, "__name__", str(hint)).endswith("ServiceBusMessageActions"):
            return name
    return None


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


class LocalMessageActions:
    """The message actions of one invocation: settle the received message on the consumer it came from,
    at most once (a second settlement raises, as with Service Bus)."""

    def __init__(self, consumer: QueueConsumer) -> None:
        self.consumer = consumer
        self.settled: str | None = None

    def _claim(self, kind: str) -> None:
        if self.settled:
            raise RuntimeError(f"message already settled ({self.settled})")
        self.settled = kind

    async def complete(self, message: Any) -> None:
        self._claim("complete")
        await self.consumer.complete(message)

    async def abandon(self, message: Any) -> None:
        self._claim("abandon")
        await self.consumer.abandon(message)

    async def deadletter(
        self, message: Any, deadletter_reason: str | None = None, deadletter_error_description: str | None = None
    ) -> None:
        self._claim("deadletter")
        await self.consumer.dead_letter(message, deadletter_reason, deadletter_error_description)


class LocalHost:
    """Serves one FunctionApp: HTTP on loopback, queue triggers from a queue consumer."""

    def __init__(
        self,
        app: func.FunctionApp,
        consumer: QueueConsumer,
        *,
        function_key: str,
        host: str = "127.0.0.1",
        port: int = 7071,
        max_concurrent_calls: int = 16,
        lock_renewal: timedelta = timedelta(minutes=5),
        poll_interval: float = 0.05,
        receive_wait: float | None = None,
        max_request_body_bytes: int | None = None,
    ) -> None:
        """``receive_wait``: how long one receive call may wait for a message (default ``poll_interval``;
        longer for Service Bus, where each empty receive is a network round trip).
        ``max_request_body_bytes``: the host's request body limit (default: FUNCTIONS_REQUEST_BODY_SIZE_LIMIT,
        else 100 MB, as the Functions host); bodies are read as a stream and refused with 413 at the limit."""
        if not function_key:
            raise ValueError("a function key is required")
        self.http_functions, self.queue_functions = discover(app)
        self.consumer = consumer
        self.function_key = function_key
        self.host = host
        self.port = port
        self.max_concurrent_calls = max_concurrent_calls
        self.lock_renewal = lock_renewal
        self.poll_interval = poll_interval
        self.receive_wait = poll_interval if receive_wait is None else receive_wait
        self.max_request_body_bytes = (request_body_limit() if max_request_body_bytes is None
                                       else max_request_body_bytes)
        self._stopping = asyncio.Event()
        self._server: Any = None
        self.started = asyncio.Event()

    # -- HTTP ------------------------------------------------------------------------------------------
    def asgi_app(self) -> Starlette:
        return Starlette(routes=[Route("/api/{path:path}", self._dispatch,
                                       methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])])

    def _authorised(self, request: Request, level: str) -> bool:
        if level == "ANONYMOUS":
            return True
        supplied = request.query_params.get("code") or request.headers.get("x-functions-key") or ""
        return hmac.compare_digest(supplied.encode(), self.function_key.encode())

    async def _dispatch(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        for fn in self.http_functions:
            match = fn.pattern.match(path)
            if not match:
                continue
            if request.method not in fn.methods:
                return JSONResponse({"error": f"method {request.method} not allowed"}, status_code=405)
            if not self._authorised(request, fn.auth_level):
                return JSONResponse({"error": "a valid function key is required (code or x-functions-key)"},
                                    status_code=401)
            try:
                body = await self._read_body(request)
            except BodyTooLarge as exc:
                return JSONResponse({"error": str(exc)}, status_code=413, headers={"Connection": "close"})
            req = func.HttpRequest(
                method=request.method,
                url=str(request.url),
                headers=dict(request.headers),
                params=dict(request.query_params),
                route_params={k: v for k, v in match.groupdict().items() if v is not None},
                body=body,
            )
            try:
                resp: func.HttpResponse = await _call(fn.call, req)
            except Exception:
                log.exception("function %s failed", fn.name)
                return JSONResponse({"error": f"function {fn.name} failed"}, status_code=500)
            headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
            return Response(resp.get_body(), status_code=resp.status_code, headers=headers, media_type=resp.mimetype)
        return JSONResponse({"error": f"no function at /api{path}"}, status_code=404)

    async def _read_body(self, request: Request) -> bytes:
        """The body, read as a stream: refused as soon as it passes the limit (a declared Content-Length
        over it is refused before reading), so an oversize upload never sits in memory whole."""
        limit = self.max_request_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"request body of {declared} bytes is over the host's limit of {limit} bytes "
                               f"({BODY_LIMIT_SETTING})")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is over the host's limit of {limit} bytes ({BODY_LIMIT_SETTING})")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- queue triggers -------------------------------------------------------------------------------
    async def _pump(self, fn: QueueFunction) -> None:
        """Keep up to ``max_concurrent_calls`` invocations running, receiving as many messages at once as there
        are free calls (one lock round trip for several messages, not one per message)."""
        running: set[asyncio.Task[None]] = set()
        while not self._stopping.is_set():
            if len(running) >= self.max_concurrent_calls:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                batch = await self.consumer.receive_wait(fn.queue, self.max_concurrent_calls - len(running),
                                                         self.receive_wait)
            except Exception:
                log.exception("receive from %s failed", fn.queue)
                batch = []
            if not batch:
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.poll_interval)
                except TimeoutError:
                    pass
                continue
            for message in batch:
                task = asyncio.create_task(self._invoke(fn, message))
                running.add(task)
                task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def _invoke(self, fn: QueueFunction, message: Any) -> None:
        actions = LocalMessageActions(self.consumer)
        kwargs: dict[str, Any] = {fn.arg_name: message}
        if fn.actions_arg:
            kwargs[fn.actions_arg] = actions
        renewer = asyncio.create_task(self._renew_lock(message))
        try:
            await _call(fn.call, **kwargs)
        except Exception:
            log.exception("function %s failed on message %s", fn.name, message.message_id)
            if not actions.settled:
                await self._settle_quietly(self.consumer.abandon, message)
            return
        finally:
            renewer.cancel()
        if actions.settled:
            return
        if fn.auto_complete:  # autoCompleteMessages: the host completes what the function left
            await self._settle_quietly(self.consumer.complete, message)
        else:
            log.warning("function %s left message %s unsettled with autoCompleteMessages off: it is delivered "
                        "again when its lock expires", fn.name, message.message_id)

    async def _renew_lock(self, message: Any) -> None:
        """Renew the lock at half its remaining time while the function runs (maxAutoLockRenewalDuration)."""
        deadline = asyncio.get_running_loop().time() + self.lock_renewal.total_seconds()
        locked_until: datetime | None = getattr(message, "locked_until_utc", None)
        while locked_until is not None:
            pause = max((locked_until - datetime.now(UTC)).total_seconds() / 2, 0.05)
            if asyncio.get_running_loop().time() + pause > deadline:
                return
            await asyncio.sleep(pause)
            try:
                locked_until = await self.consumer.renew_lock(message)
            except MessageLockLost:
                return
            except Exception as exc:  # the link or the connection: the settlement will tell
                log.warning("renewing the lock of %s failed: %s: %s", message.message_id, type(exc).__name__, exc)
                return

    @staticmethod
    async def _settle_quietly(action: Callable[[Any], Any], message: Any) -> None:
        try:
            await action(message)
        except MessageLockLost:
            log.warning("lock lost before settlement; the message will be delivered again")
        except Exception as exc:
            log.error("settling %s failed (%s: %s); it will be delivered again when its lock expires",
                      message.message_id, type(exc).__name__, exc)

    # -- lifecycle ------------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Run until ``stop()``: the HTTP server and one pump per queue trigger."""
        import uvicorn

        sock = self.bind()
        config = uvicorn.Config(self.asgi_app(), host=self.host, port=self.port, log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        server_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if server_task.done():
                await server_task  # raises the bind error
                return
            await asyncio.sleep(0.01)
        pumps = [asyncio.create_task(self._pump(fn)) for fn in self.queue_functions]
        self.started.set()
        log.info("local host on http://%s:%d/api (%d HTTP, %d queue functions)", self.host, self.port,
                 len(self.http_functions), len(self.queue_functions))
        await self._stopping.wait()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._server.should_exit = True
        await server_task

    def bind(self) -> socket.socket:
        """The listening socket, bound before anything starts: a busy port is one ``PortInUse`` error, not
        a server that fails half-started."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it each webhook answer (headers + body) waits ~40 ms for a
        # delayed ACK (Nagle), which capped the local host at ~20 webhooks/s (make bench, figure 4).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise PortInUse(self.host, self.port, exc) from None
        self.port = sock.getsockname()[1]
        return sock

    def stop(self) -> None:
        self._stopping.set()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"


#: ``P2C_EVENT_LOOP``: the local host's event loop, ``uvloop`` (the default where it is installed) or ``asyncio``.
EVENT_LOOP_SETTING = "P2C_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the local host runs on: uvloop (libuv; requirements-dev.txt, not on Windows) unless
    ``P2C_EVENT_LOOP=asyncio`` or it is not installed, then asyncio's own. Issue 11: the local host is one
    Python process doing the Functions host's HTTP and queue work as well as ours, and asyncio's loop (its
    selector, handles and socket transports) was about a tenth of its CPU per event; the Functions Python worker
    can run on uvloop too (azure-functions-python-worker#1697). ``None``: asyncio's default."""
    choice = os.environ.get(EVENT_LOOP_SETTING, "").strip().lower() or "uvloop"
    if choice not in ("uvloop", "asyncio"):
        raise ValueError(f"{EVENT_LOOP_SETTING} must be 'uvloop' or 'asyncio', not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_on_local_loop(main: typing.Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run`` on `loop_factory`'s loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def install_signal_handlers(host: LocalHost) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, host.stop)

