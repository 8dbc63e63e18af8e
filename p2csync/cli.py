"""Command line: ``python -m p2csync <command>``.

run       the local host (function_app.py on 127.0.0.1; queue triggers fed by the embedded queue, or by a
          Service Bus namespace when ServiceBusConnection__fullyQualifiedNamespace is set)
sandbox   the Dataverse and F&O simulators, standalone
demo      the prospect-to-cash story through the real code path, against the sandbox
schema    print the JSON Schema of the mapping files
validate  load and validate the mapping files (exit 1 with the file and field at fault)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path

from p2csync.settings import ROOT, SettingsError, load_local_settings

log = logging.getLogger("p2csync.cli")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def run_local_host(port: int, settings_file: Path | None, function_key: str | None) -> None:
    """Start the local host with the settings of local.settings.json (and the environment).

    Queue triggers read the embedded queue, unless ``ServiceBusConnection__fullyQualifiedNamespace`` names a
    namespace and no ``P2C_LOCAL_QUEUE_PATH`` is set: then they read that namespace's queues, signed in with
    the developer's Azure identity (``az login``), and the webhook and deferrals send there too.
    """
    from p2csync.localhost import LocalHost, install_signal_handlers
    from p2csync.queue.base import QueueConsumer
    from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport
    from p2csync.runtime import get_runtime

    if settings_file is not None and settings_file.exists():
        load_local_settings(settings_file)
    var = ROOT / ".var"
    var.mkdir(exist_ok=True)
    os.environ.setdefault("P2C_LEDGER_PATH", str(var / "ledger.sqlite"))
    namespace = os.environ.get("ServiceBusConnection__fullyQualifiedNamespace")
    if not namespace:
        os.environ.setdefault("P2C_LOCAL_QUEUE_PATH", str(var / "queue.sqlite"))

    import function_app

    key = function_key or os.environ.get("P2C_LOCAL_FUNCTION_KEY") or secrets.token_urlsafe(24)
    runtime = get_runtime()  # build everything now: a wrong mapping file or setting fails at start-up
    consumer: QueueConsumer
    if runtime.settings.local_queue_path is not None:
        lock = timedelta(seconds=float(os.environ.get("P2C_LOCAL_LOCK_SECONDS", "60")))
        consumer = EmbeddedTransport(EmbeddedQueue(runtime.settings.local_queue_path, lock_duration=lock))
        source = f"embedded queue {runtime.settings.local_queue_path}"
    elif isinstance(runtime.transport, QueueConsumer):
        consumer, source = runtime.transport, f"Service Bus namespace {namespace}"
    else:
        raise SettingsError("no queue to read: set P2C_LOCAL_QUEUE_PATH or "
                            "ServiceBusConnection__fullyQualifiedNamespace")
    host = LocalHost(function_app.app, consumer, function_key=key, port=port,
                     receive_wait=0.05 if runtime.settings.local_queue_path else 5.0)
    install_signal_handlers(host)
    serving = asyncio.create_task(host.serve())
    await host.started.wait()
    print(f"local host ready on {host.base_url}", flush=True)
    for fn in host.http_functions:
        print(f"  {sorted(fn.methods)} {host.base_url}/{fn.route}  (auth {fn.auth_level.lower()})", flush=True)
    for q in host.queue_functions:
        print(f"  queue trigger {q.name} <- {q.queue} ({source})", flush=True)
    await serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2csync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the local host")
    run.add_argument("--port", type=int, default=7071)
    run.add_argument("--settings", type=Path, default=ROOT / "local.settings.json")
    run.add_argument("--function-key", default=None, help="the key callers must send as ?code=")
    commands.add_parser("sandbox", help="start the Dataverse and F&O simulators", add_help=False)
    demo = commands.add_parser("demo", help="play the prospect-to-cash story against the sandbox")
    demo.add_argument("--accounts", type=int, default=8, help="how many accounts to create")
    commands.add_parser("schema", help="print the JSON Schema of the mapping files")
    validate = commands.add_parser("validate", help="validate the mapping files")
    validate.add_argument("directory", nargs="?", type=Path, default=ROOT / "mappings")

    args, rest = parser.parse_known_args(argv)
    if args.command != "sandbox" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _configure_logging(args.verbose)
    if args.command == "demo" and not args.verbose:
        logging.getLogger("p2csync").setLevel(logging.WARNING)  # the demo prints its own table
    try:
        if args.command == "run":
            asyncio.run(run_local_host(args.port, args.settings, args.function_key))
        elif args.command == "sandbox":
            from sandbox.server import main as sandbox_main

            return sandbox_main(rest)
        elif args.command == "demo":
            from p2csync.demo import run_demo

            return asyncio.run(run_demo(accounts=args.accounts))
        elif args.command == "schema":
            from mappings import mapping_json_schema

            print(json.dumps(mapping_json_schema(), indent=2))
        elif args.command == "validate":
            from mappings import MappingError, load_mappings

            try:
                specs = load_mappings(args.directory)
            except MappingError as exc:
                print(f"invalid mapping: {exc}", file=sys.stderr)
                return 1
            for name, spec in sorted(specs.items()):
                print(f"{name}: {spec.source.table} -> {spec.target.entity_set} ({len(spec.fields)} fields)")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
