"""Serving the simulators over real loopback HTTP: `SandboxServer` for tests and the demo (ephemeral
ports, background thread), `main(argv)` for a standalone run on fixed ports.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from sandbox.dataverse import Dataverse
from sandbox.fno import FnO

LOOPBACK = "127.0.0.1"


class PortUnavailable(OSError):
    """A simulator cannot listen on its port (another process uses it, or the address is not local)."""

    def __init__(self, name: str, host: str, port: int, cause: OSError) -> None:
        self.name, self.host, self.port = name, host, port
        super().__init__(cause.errno, f"cannot listen on {host}:{port} for the {name} simulator: "
                         f"{cause.strerror or cause}")

    def __str__(self) -> str:
        return str(self.strerror)


class BackgroundServers:
    """Runs ASGI apps with uvicorn on one event loop in a daemon thread. Port 0 picks a free port."""

    def __init__(self, apps: Sequence[ASGIApp], ports: Sequence[int] | None = None, host: str = LOOPBACK,
                 start_timeout: float = 10.0, names: Sequence[str] | None = None) -> None:
        """``names`` label the apps in errors (a busy port names the simulator it was for)."""
        self.host = host
        self.names = list(names) if names is not None else [f"app {index}" for index in range(len(apps))]
        self.apps = list(apps)
        self.requested_ports = list(ports) if ports is not None else [0] * len(self.apps)
        self.start_timeout = start_timeout
        self.ports: list[int] = []
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.host}:{port}" for port in self.ports]

    def start(self) -> BackgroundServers:
        sockets: list[socket.socket] = []
        try:
            for name, port in zip(self.names, self.requested_ports):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # Accepted sockets inherit this; without it a response written as headers + body waits
                # ~40 ms for a delayed ACK (Nagle).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    sock.bind((self.host, port))
                except OSError as exc:
                    raise PortUnavailable(name, self.host, port, exc) from None
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        self.ports = [sock.getsockname()[1] for sock in sockets]
        self._servers = [
            uvicorn.Server(uvicorn.Config(app, host=self.host, port=port, log_level="warning", lifespan="off",
                                          access_log=False, http="h11", proxy_headers=False,
                                          timeout_graceful_shutdown=2))
            for app, port in zip(self.apps, self.ports)
        ]

        async def serve_all() -> None:
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(self._servers, sockets)))

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(serve_all())
            except BaseException as exc:  # noqa: BLE001 - surfaced to the starting thread
                self._error = exc
            finally:
                loop.close()
                for sock in sockets:
                    sock.close()

        self._thread = threading.Thread(target=run, name="sandbox-servers", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not all(server.started for server in self._servers):
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"sandbox servers failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("sandbox servers did not start in time")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


class SandboxServer:
    """Both simulators on loopback. Use as `with SandboxServer() as sandbox:` (or `async with`).

    Attributes after start: `dataverse_url` (the Web API root is `dataverse_api_url`), `fno_url` (OData
    root `fno_data_url`), and the in-process `dataverse` / `fno` simulators.
    """

    def __init__(self, *, dataverse: Dataverse | None = None, fno: FnO | None = None, host: str = LOOPBACK,
                 dataverse_port: int = 0, fno_port: int = 0) -> None:
        self.dataverse = dataverse or Dataverse()
        self.fno = fno or FnO()
        self._servers = BackgroundServers([self.dataverse.app, self.fno.app], [dataverse_port, fno_port], host,
                                          names=["Dataverse", "F&O"])

    @property
    def dataverse_url(self) -> str:
        return self._servers.urls[0]

    @property
    def fno_url(self) -> str:
        return self._servers.urls[1]

    @property
    def dataverse_api_url(self) -> str:
        return f"{self.dataverse_url}/api/data/v9.2/"

    @property
    def fno_data_url(self) -> str:
        return f"{self.fno_url}/data/"

    def start(self) -> SandboxServer:
        self._servers.start()
        return self

    def stop(self) -> None:
        self._servers.stop()
        self.dataverse.close()

    def reset(self) -> None:
        self.dataverse.reset()
        self.fno.reset()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> SandboxServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sandbox on fixed ports until interrupted; prints URLs and tokens."""
    parser = argparse.ArgumentParser(
        prog="python -m p2csync sandbox", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run the Dataverse Web API and F&O OData simulators until Ctrl+C; prints their URLs and the "
        "bearer tokens of their users.",
        epilog="example: python -m p2csync sandbox --dataverse-port 7081 --fno-port 7082")
    parser.add_argument("--host", default=LOOPBACK, help="address to listen on")
    parser.add_argument("--dataverse-port", type=int, default=7081, help="port of the Dataverse Web API simulator")
    parser.add_argument("--fno-port", type=int, default=7082, help="port of the F&O OData simulator")
    args = parser.parse_args(list(argv) if argv is not None else None)
    sandbox = SandboxServer(host=args.host, dataverse_port=args.dataverse_port, fno_port=args.fno_port)
    try:
        sandbox.start()
    except PortUnavailable as exc:
        option = "--dataverse-port" if exc.name == "Dataverse" else "--fno-port"
        print(f"cannot start the sandbox: {exc} (another process uses the port? pick another with {option})",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot start the sandbox: {exc}", file=sys.stderr)
        return 1
    print(f"Dataverse Web API: {sandbox.dataverse_api_url}")
    print(f"F&O OData:         {sandbox.fno_data_url}")
    for user in sandbox.dataverse.users:
        print(f"Dataverse token    {user.token!r} -> systemuser {user.id} ({user.fullname})")
    for fno_user in sandbox.fno.users:
        print(f"F&O token          {fno_user.token!r} -> user {fno_user.user_id} "
              f"(default company {fno_user.default_company})")
    print("Admin: POST /_sandbox/reset, /_sandbox/faults; GET /_sandbox/requests (both); "
          "POST /_sandbox/webhooks (Dataverse); POST /_sandbox/actions/confirm-sales-order, "
          "/_sandbox/actions/calculate-sales-totals, /_sandbox/actions/post-sales-invoice (F&O). Ctrl+C stops.",
          flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
