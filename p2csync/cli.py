"""Command line: ``python -m p2csync <command>``.

run       the local host (function_app.py on 127.0.0.1; queue triggers fed by the embedded queue, or by a
          Service Bus namespace when ServiceBusConnection__fullyQualifiedNamespace is set)
sandbox   the Dataverse and F&O simulators, standalone
demo      the prospect-to-cash story through the real code path, against the sandbox
register  create or update the Dataverse webhook, its steps and images from the mappings (idempotent;
          --dry-run prints the plan and writes nothing)
schema    print the JSON Schema of the mapping files
validate  load and validate the mapping files (exit 1 with the file and field at fault)
status, trace, deadletters, send, pause, resume
          operator commands (p2csync/ops/): queue depths and flow outcomes, one record's history, dead
          letters, sending a saved message, pausing a flow
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import secrets
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2csync.localhost import PortInUse
from p2csync.ops.commands import OPS_COMMANDS

if TYPE_CHECKING:
    from p2csync.queue.embedded import EmbeddedQueue
from p2csync.settings import ROOT, SettingsError, load_local_settings

log = logging.getLogger("p2csync.cli")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def host_max_concurrent_calls(host_json: Path = ROOT / "host.json") -> int:
    """extensions.serviceBus.maxConcurrentCalls of host.json (the Functions host's default, 16, when unset)."""
    try:
        value = json.loads(host_json.read_text())["extensions"]["serviceBus"]["maxConcurrentCalls"]
    except (OSError, ValueError, KeyError, TypeError):
        return 16
    if not isinstance(value, int) or value < 1:
        raise SettingsError(f"{host_json}: extensions.serviceBus.maxConcurrentCalls must be a positive whole "
                            f"number, got {value!r}")
    return value


async def run_local_host(port: int, settings_file: Path | None, function_key: str | None,
                         max_concurrent_calls: int | None = None) -> None:
    """Start the local host with the settings of local.settings.json (and the environment).

    Queue triggers read the embedded queue, unless ``ServiceBusConnection__fullyQualifiedNamespace`` names a
    namespace and no ``P2C_LOCAL_QUEUE_PATH`` is set: then they read that namespace's queues, signed in with
    the developer's Azure identity (``az login``), and the webhook and deferrals send there too.
    FUNCTIONS_REQUEST_BODY_SIZE_LIMIT defaults to 1 MB, as the infra sets it in Azure.
    """
    from p2csync.localhost import BODY_LIMIT_SETTING, RUN_BODY_LIMIT, LocalHost, install_signal_handlers
    from p2csync.queue.base import QueueConsumer
    from p2csync.queue.embedded import EmbeddedQueue, EmbeddedTransport
    from p2csync.runtime import get_runtime

    if settings_file is not None and settings_file.exists():
        load_local_settings(settings_file)
    var = ROOT / ".var"
    var.mkdir(exist_ok=True)
    os.environ.setdefault("P2C_LEDGER_PATH", str(var / "ledger.sqlite"))
    if not os.environ.get(BODY_LIMIT_SETTING, "").strip():  # the Functions host's own default is 100 MB
        os.environ[BODY_LIMIT_SETTING] = str(RUN_BODY_LIMIT)
    namespace = os.environ.get("ServiceBusConnection__fullyQualifiedNamespace")
    if not namespace:
        os.environ.setdefault("P2C_LOCAL_QUEUE_PATH", str(var / "queue.sqlite"))

    import function_app

    key = function_key or os.environ.get("P2C_LOCAL_FUNCTION_KEY") or secrets.token_urlsafe(24)
    runtime = get_runtime()  # build everything now: a wrong mapping file or setting fails at start-up
    consumer: QueueConsumer
    if runtime.settings.local_queue_path is not None:
        lock = timedelta(seconds=float(os.environ.get("P2C_LOCAL_LOCK_SECONDS", "60")))
        consumer = EmbeddedTransport(EmbeddedQueue(runtime.settings.local_queue_path, lock_duration=lock,
                                                   max_message_bytes=runtime.settings.servicebus_max_message_bytes))
        source = f"embedded queue {runtime.settings.local_queue_path}"
    elif isinstance(runtime.transport, QueueConsumer):
        consumer, source = runtime.transport, f"Service Bus namespace {namespace}"
    else:
        raise SettingsError("no queue to read: set P2C_LOCAL_QUEUE_PATH or "
                            "ServiceBusConnection__fullyQualifiedNamespace")
    host = LocalHost(function_app.app, consumer, function_key=key, port=port,
                     max_concurrent_calls=max_concurrent_calls or host_max_concurrent_calls(),
                     receive_wait=0.05 if runtime.settings.local_queue_path else 1.0)
    install_signal_handlers(host)
    serving = asyncio.create_task(host.serve())
    started = asyncio.create_task(host.started.wait())
    await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
    if not host.started.is_set():
        started.cancel()
        await serving  # raises why it could not start (PortInUse, ...)
        return
    print(f"local host ready on {host.base_url}", flush=True)
    print(f"  function key: {key}  (callers send it as ?code= or the x-functions-key header; a local "
          "key, not your Azure one)", flush=True)
    print(f"  request body limit: {host.max_request_body_bytes} bytes ({BODY_LIMIT_SETTING}; larger bodies get "
          "413)", flush=True)
    for fn in host.http_functions:
        print(f"  {sorted(fn.methods)} {host.base_url}/{fn.route}  (auth {fn.auth_level.lower()})", flush=True)
    for q in host.queue_functions:
        print(f"  queue trigger {q.name} <- {q.queue} ({source})", flush=True)
        if isinstance(consumer, EmbeddedTransport):
            if held := held_by_earlier_run(consumer.queue, q.queue):
                print(f"  {held}", flush=True)
    await serving


def held_by_earlier_run(queue: EmbeddedQueue, name: str, *, now: datetime | None = None) -> str | None:
    """What a restarted host waits for: messages an earlier run locked and never settled (it crashed) come
    back only when their locks expire. Said once at start-up, so a quiet minute is not a mystery."""
    now = now or datetime.now(UTC)
    until = [m.locked_until_utc for m in queue.peek(name, max_messages=10_000)
             if m.locked_until_utc is not None and m.locked_until_utc > now]
    if not until:
        return None
    wait = (max(until) - now).total_seconds()
    return (f"{len(until)} message(s) on {name} are locked by an earlier run of the host (it stopped without "
            f"settling them); they are delivered again when their locks expire, within {wait:.0f} s "
            "(P2C_LOCAL_LOCK_SECONDS)")


def _read_key(from_stdin: bool) -> str | None:
    """The function key: the first line of stdin with ``--key-stdin`` (asked for without echo on a
    terminal), else ``$P2C_WEBHOOK_KEY``. Never an argument, which would land in the shell history and the
    process list."""
    from p2csync.registration import KEY_ENV, RegistrationError

    if from_stdin:
        key = (getpass.getpass("function key: ") if sys.stdin.isatty() else sys.stdin.readline()).strip()
        if not key:
            raise RegistrationError("--key-stdin: nothing on standard input")
        return key
    return os.environ.get(KEY_ENV) or None


async def register_webhook(args: argparse.Namespace) -> int:
    """``register``: plan (and unless ``--dry-run`` apply) the webhook registration; errors in one line."""
    from mappings import MappingError, load_mappings
    from p2csync.connectors import ConnectorError, DataverseClient
    from p2csync.registration import RegistrationError, describe_error, register
    from p2csync.settings import DataverseAccess

    if args.settings is not None and args.settings.exists():
        load_local_settings(args.settings)
    access = DataverseAccess.from_env()
    key: str | None = None
    credential = None
    try:
        key = _read_key(args.key_stdin)
        specs = load_mappings(args.mappings or os.environ.get("P2C_MAPPINGS_DIR") or ROOT / "mappings")
        tokens, credential = access.token_provider()
        async with DataverseClient(access.dataverse_url, tokens, tag=None) as dv:
            await register(dv, specs, url=args.webhook_url, key=key, endpoint_name=args.endpoint_name,
                           existing_endpoint=args.existing_endpoint, prune=args.prune, dry_run=args.dry_run)
    except MappingError as exc:
        print(f"invalid mapping: {exc}", file=sys.stderr)
        return 1
    except (RegistrationError, ConnectorError) as exc:
        print(f"error: {describe_error(exc, secrets=[key])}", file=sys.stderr)
        return 1
    finally:
        if credential is not None:
            await credential.close()
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help that keeps the description's line breaks and shows every option's default (unless the help
    already says what it is)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None:
            return text
        if isinstance(action.default, Path):  # repository paths read better relative to the root
            shown = action.default.relative_to(ROOT) if action.default.is_relative_to(ROOT) else action.default
            return f"{text} (default: {str(shown).replace('%', '%%')} in the repository)"
        return super()._get_help_string(action)


def _command(commands: Any, name: str, help: str, description: str, example: str, **kwargs: Any
             ) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=help, description=textwrap.fill(description, 100),
                               formatter_class=HelpFormatter, epilog=f"example:\n  {example}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per job; every option has a sentence of help and shows its
    default."""
    from p2csync.registration import DEFAULT_ENDPOINT_NAME

    parser = argparse.ArgumentParser(prog="python -m p2csync", description=__doc__, formatter_class=HelpFormatter,
                                     epilog="example:\n  python -m p2csync run --help")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    run = _command(
        commands, "run", "start the local host",
        "Run function_app.py on 127.0.0.1 as the Functions host does: the webhook on /api/dataverse/webhook "
        "(function key as ?code=), the queue triggers fed by the embedded queue (or a Service Bus namespace when "
        "ServiceBusConnection__fullyQualifiedNamespace is set and P2C_LOCAL_QUEUE_PATH is not). Prints the URLs "
        "and the function key. Runs on uvloop where it is installed; P2C_EVENT_LOOP=asyncio runs on asyncio's "
        "own loop.",
        "python -m p2csync run --port 7071 --function-key dev-key")
    run.add_argument("--port", type=int, default=7071, help="TCP port on 127.0.0.1 (0 picks a free one)")
    run.add_argument("--settings", type=Path, default=ROOT / "local.settings.json",
                     help="local.settings.json whose Values fill in unset environment variables (skipped when "
                     "missing)")
    run.add_argument("--max-concurrent-calls", type=int, default=None, metavar="N",
                     help="queue messages processed at once per queue (default: maxConcurrentCalls of host.json's "
                     "serviceBus extension, as the Functions host reads it)")
    run.add_argument("--function-key", default=None,
                     help="the key callers must send as ?code= (default: $P2C_LOCAL_FUNCTION_KEY, else a new "
                     "random key, printed at start)")
    _command(commands, "sandbox", "start the Dataverse and F&O simulators",
             "Run the sandbox standalone; see `python -m p2csync sandbox --help` for its options.",
             "python -m p2csync sandbox --dataverse-port 7081 --fno-port 7082", add_help=False)
    demo = _command(commands, "demo", "play the prospect-to-cash story against the sandbox",
                    "Start the sandbox and the local host, register the webhook, create and update accounts as a "
                    "Sales user and print what reached F&O. Exits non-zero if anything did not sync.",
                    "python -m p2csync demo --accounts 3")
    demo.add_argument("--accounts", type=int, default=8, help="how many accounts to create")
    register = _command(
        commands, "register", "register the Dataverse webhook and its steps from the mappings (idempotent)",
        "Create or update, in Dataverse, the webhook service endpoint, one step per table and message the Sales "
        "-> F&O mappings are triggered by, and a post image per Create/Update step. Prints the plan (create / "
        "update / unchanged / stale) before applying it. DATAVERSE_URL and the auth settings come from the "
        "environment or --settings. The function key is read from $P2C_WEBHOOK_KEY or, with --key-stdin, from "
        "standard input; it is write-only in Dataverse, so it is written when the endpoint is created and "
        "afterwards whenever a key is given, and never printed. Dataverse webhooks accept only https on port "
        "443 (http on loopback, any port, for the sandbox).",
        "P2C_WEBHOOK_KEY=... python -m p2csync register --webhook-url https://<app>.azurewebsites.net/api/"
        "dataverse/webhook --dry-run")
    register.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    register.add_argument("--webhook-url", default=None,
                          help="URL of the dataverse_webhook function, without the key (azd output "
                          "WEBHOOK_URL); needed to create the endpoint, optional later (the URL is kept)")
    register.add_argument("--key-stdin", action="store_true",
                          help="read the function key from the first line of standard input")
    register.add_argument("--endpoint-name", default=DEFAULT_ENDPOINT_NAME,
                          help="name of the service endpoint, how it is found again")
    register.add_argument("--existing-endpoint", action="store_true",
                          help="put the steps on an endpoint registered elsewhere (a Service Bus queue "
                          "endpoint with its SAS connection string), found by --endpoint-name, left as it is")
    register.add_argument("--prune", action="store_true",
                          help="delete our steps on the endpoint that no mapping needs any more")
    register.add_argument("--settings", type=Path, default=ROOT / "local.settings.json",
                          help="local.settings.json whose Values fill in unset variables")
    register.add_argument("--mappings", type=Path, default=None,
                          help="directory of the mapping files (default: $P2C_MAPPINGS_DIR, else mappings/)")
    _command(commands, "schema", "print the JSON Schema of the mapping files",
             "Print the JSON Schema that editors use to validate mapping files (mappings/mapping.schema.json).",
             "python -m p2csync schema > mappings/mapping.schema.json")
    validate = _command(commands, "validate", "validate the mapping files",
                        "Load and validate every mapping file; exit 1 naming the file and the field at fault.",
                        "python -m p2csync validate mappings/")
    validate.add_argument("directory", nargs="?", type=Path, default=ROOT / "mappings",
                          help="directory of the mapping files")
    validate.add_argument("--online", action="store_true",
                          help="also check the choice labels ({label: ...}) against the Dataverse environment of "
                          "DATAVERSE_URL and the auth settings (environment, else local.settings.json)")
    from p2csync.ops.commands import add_ops_commands

    add_ops_commands(commands, _command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "sandbox" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _configure_logging(args.verbose)
    if args.command == "demo" and not args.verbose:
        logging.getLogger("p2csync").setLevel(logging.WARNING)  # the demo prints its own table
    if args.command == "register" and not args.verbose:
        logging.getLogger("azure").setLevel(logging.ERROR)  # a failed sign-in is reported in one line
    try:
        if args.command == "run":
            from p2csync.localhost import run_on_local_loop

            run_on_local_loop(run_local_host(args.port, args.settings, args.function_key, args.max_concurrent_calls))
        elif args.command == "sandbox":
            from sandbox.server import main as sandbox_main

            return sandbox_main(rest)
        elif args.command == "demo":
            from p2csync.demo import run_demo
            from p2csync.localhost import run_on_local_loop

            return run_on_local_loop(run_demo(accounts=args.accounts))
        elif args.command == "register":
            return asyncio.run(register_webhook(args))
        elif args.command in OPS_COMMANDS:
            from p2csync.ops.commands import run_ops

            return run_ops(args)
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
            if args.online:
                from p2csync.choices import validate_online

                return asyncio.run(validate_online(specs, ROOT / "local.settings.json"))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PortInUse as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
