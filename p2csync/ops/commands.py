"""The CLI layer of the operator commands: argparse sub-commands, rich tables for people, ``--json`` for
programs. Each command builds an OpsContext, calls one function of p2csync.ops and renders its model."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from p2csync.ops.common import MessageClassifier, parse_duration
from p2csync.ops.pause import PauseError
from p2csync.ops.send import parse_property
from p2csync.ops.context import OpsContext, ops_settings
from p2csync.settings import ROOT

OPS_COMMANDS = ("status", "trace", "deadletters", "send", "pause", "resume", "backfill", "reconcile")
#: The commands that read Dataverse and F&O (the others see only the ledger and the queues).
SYSTEM_COMMANDS = ("backfill", "reconcile")


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def _json(model: BaseModel | list[Any]) -> str:
    if isinstance(model, list):
        return json.dumps([m.model_dump(mode="json") for m in model], indent=2)
    return model.model_dump_json(indent=2)


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument("--settings", type=Path, default=ROOT / "local.settings.json",
                        help="local.settings.json whose Values fill in unset variables (skipped when missing)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON for programs instead of a table")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", default=None, help="only this queue (default: every queue of the app)")
    parser.add_argument("--flow", default=None, help="only messages this flow takes (e.g. accounts)")
    parser.add_argument("--reason", default=None, help="only dead-letter reasons containing this text "
                        "(case-insensitive, e.g. MappingFailed)")
    parser.add_argument("--older-than", type=parse_duration, default=None, metavar="DURATION",
                        help="only dead letters enqueued longer ago than this (90s, 15m, 1h, 2d)")


def add_ops_commands(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the operator sub-commands on the CLI's sub-parsers (``command`` is cli._command)."""
    status = command(commands, "status", "queue depths and per-flow outcomes, deferrals, 429s, pauses",
                     "Per queue: active, scheduled, locked and dead-lettered messages. Per flow, from the ledger "
                     "journal over the window: last applied, outcomes by kind and reason, deferrals, 429 "
                     "throttles, whether it is paused and how many messages wait for it.",
                     "python -m p2csync status --since 1h --json")
    status.add_argument("--since", type=parse_duration, default=parse_duration("24h"), metavar="DURATION",
                        help="the window: 90s, 15m, 1h, 2d (default: 24h)")
    _common(status)

    trace = command(commands, "trace", "the whole story of one record from the journal",
                    "Every delivery of the record with its time, outcome, reason, version applied, what was "
                    "written (target) and the correlation id; the record's current ledger state. QUERY is a "
                    "record key (accounts:account:<guid>), a message id, a message key (an F&O EventId) or a "
                    "source id (a Dataverse GUID, an F&O natural key).",
                    "python -m p2csync trace 44bfc2a7-903e-eb11-a813-000d3ad9c2e1")
    trace.add_argument("query", help="record key, message id, message key or source id")
    _common(trace)

    dead = command(commands, "deadletters", "list, show, replay or purge dead-lettered messages",
                   "The dead-letter queues of the app's queues (embedded queue or Service Bus). Replay sends "
                   "the original body and properties to the queue again with a new MessageId derived from the "
                   "old one, then deletes the dead letter; the runtime re-reads the newest source state. Purge "
                   "deletes for good and asks first unless --yes.",
                   "python -m p2csync deadletters replay --flow accounts --reason MappingFailed")
    actions = dead.add_subparsers(dest="action", required=True, metavar="action",
                                  help="list | show | replay | purge (each has its own --help)")
    fmt = dead.formatter_class
    listing = actions.add_parser("list", help="list dead letters (filters: --flow, --reason, --older-than)",
                                 formatter_class=fmt,
                                 epilog="example:\n  python -m p2csync deadletters list --reason MappingFailed")
    _filters(listing)
    _common(listing)
    show = actions.add_parser("show", help="one dead letter with its body and properties", formatter_class=fmt,
                              epilog="example:\n  python -m p2csync deadletters show 42")
    show.add_argument("id", help="sequence number or MessageId")
    show.add_argument("--queue", default=None, help="the queue (default: search every queue)")
    _common(show)
    for name, verb in (("replay", "send again to its queue"), ("purge", "delete for good")):
        action = actions.add_parser(name, help=f"{verb}: the ids named, or every dead letter the filters match",
                                    formatter_class=fmt,
                                    epilog=f"example:\n  python -m p2csync deadletters {name} --flow accounts "
                                           "--older-than 1h" + (" --yes" if name == "purge" else ""))
        action.add_argument("ids", nargs="*", help="sequence numbers or MessageIds (default: all that match)")
        _filters(action)
        action.add_argument("--all", action="store_true", help="allow acting on every dead letter (no id, "
                            "no filter)")
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        _common(action)

    send = command(commands, "send", "put a file on a queue as a publisher would",
                   "Send FILE as one message: a saved Dataverse webhook body, an F&O business event JSON. The "
                   "MessageId defaults to a digest of the body, so the same file sent twice within the duplicate "
                   "detection window is one message.",
                   "python -m p2csync send --queue fno-events event.json --property source=manual")
    send.add_argument("file", type=Path, help="the message body")
    send.add_argument("--queue", required=True, help="queue name (e.g. sales-events, fno-events)")
    send.add_argument("--property", action="append", default=[], metavar="KEY=VALUE", type=parse_property,
                      help="an application property (repeatable)")
    send.add_argument("--content-type", default=None,
                      help="content type (default: application/json when the file is JSON)")
    send.add_argument("--message-id", default=None, help="MessageId (default: a digest of the body)")
    _common(send)

    for name, text in (("pause", "pause a flow: its messages wait on the queue, nothing is lost"),
                       ("resume", "resume a paused flow: its waiting messages are processed")):
        parser = command(commands, name, text,
                         f"{text[0].upper()}{text[1:]}. The state lives in the ledger, shared by every instance; "
                         "runtimes see it within P2C_PAUSE_CACHE_SECONDS, and waiting messages come back every "
                         "P2C_PAUSE_RECHECK_SECONDS.",
                         f"python -m p2csync {name} accounts")
        parser.add_argument("flow", help="the flow (e.g. accounts, contacts, quotes, orders)")
        if name == "pause":
            parser.add_argument("--note", default=None, help="why (shown by status)")
        _common(parser)

    backfill = command(commands, "backfill", "initial sync: resync every source record of a flow through the queue",
                       "Pages the flow's source in key order (server page size, nextLink) and sends one resync "
                       "message per record to the flow's queue; the running app applies them through the flow's "
                       "handler, as events. A checkpoint (the last key sent) is kept in the ledger: a killed run "
                       "resumes where it stopped, under the same run id (records sent twice are deduplicated). "
                       "Then follows the records until each has an outcome; every rejected one goes to the CSV.",
                       "python -m p2csync backfill accounts --errors backfill-errors.csv")
    backfill.add_argument("flow", help="the flow (its mapping file's name, e.g. accounts, products)")
    backfill.add_argument("--dry-run", action="store_true", help="count rows, filtered out, new and already synced; "
                          "send nothing")
    backfill.add_argument("--restart", action="store_true", help="start a new run even if one is unfinished")
    backfill.add_argument("--errors", type=Path, default=Path("backfill-errors.csv"),
                          help="CSV of every error (default: backfill-errors.csv)")
    backfill.add_argument("--page-size", type=int, default=5000, help="rows per page asked of the source "
                          "(default: 5000)")
    backfill.add_argument("--no-wait", action="store_true", help="stop once every record is sent")
    backfill.add_argument("--timeout", type=parse_duration, default=parse_duration("2h"), metavar="DURATION",
                          help="how long to follow the records being applied (default: 2h)")
    _common(backfill)

    rec = command(commands, "reconcile", "compare both systems through a flow's mapping and report drift",
                  "Runs the flow's handler as a dry run for every source record: it reads both systems and says "
                  "what it would write. Drift: missing (no counterpart), differs (the fields named), ledger (the "
                  "target holds the record, the ledger does not know it), waiting / error (cannot compare). "
                  "--fix resyncs the drifted records through the queue.",
                  "python -m p2csync reconcile accounts --csv drift.csv")
    rec.add_argument("flow", help="the flow (e.g. accounts, products)")
    rec.add_argument("--fix", action="store_true", help="resync every record that drifted")
    rec.add_argument("--csv", type=Path, default=None, help="also write the drift to this CSV")
    rec.add_argument("--where", default=None, help="an OData $filter on the source, e.g. \"dataAreaId eq 'usmf'\"")
    _common(rec)


def run_ops(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run one operator command; a wrong flow name or an unreadable file is one line on stderr, exit 1."""
    try:
        return asyncio.run(_run(args, console or Console(soft_wrap=False, width=160)))
    except (PauseError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, console: Console) -> int:
    if args.command in SYSTEM_COMMANDS:
        from p2csync.ops.flows import run_flow_command

        return await run_flow_command(args, console)
    settings = ops_settings(args.settings)
    ctx = OpsContext.from_settings(settings, with_registry=args.command in ("deadletters", "pause", "resume",
                                                                            "status"))
    try:
        handler = {"status": _status, "trace": _trace, "deadletters": _deadletters, "send": _send,
                   "pause": _pause, "resume": _resume}[args.command]
        return await handler(args, ctx, console)
    finally:
        await ctx.aclose()


def _print(console: Console, args: argparse.Namespace, model: Any, render: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(_json(model))
    else:
        render()


async def _status(args: argparse.Namespace, ctx: OpsContext, console: Console) -> int:
    from p2csync.ops.status import status

    report = await status(ctx.ledger, ctx.transport, ctx.queues, ctx.flows, window=args.since,
                          now=datetime.now(UTC))

    def render() -> None:
        queues = Table(title="Queues")
        for column in ("queue", "active", "scheduled", "locked", "dead-lettered"):
            queues.add_column(column, justify="left" if column == "queue" else "right")
        for q in report.queues:
            if q.error:
                queues.add_row(q.queue, f"[red]{q.error}[/red]", "", "", "")
            else:
                queues.add_row(q.queue, str(q.active), str(q.scheduled), str(q.locked), str(q.dead_lettered))
        console.print(queues)
        flows = Table(title=f"Flows since {_when(report.since)}")
        for column in ("flow", "state", "last applied", "applied", "skipped", "deferred", "rejected", "429s",
                       "top reasons"):
            flows.add_column(column)
        for f in report.flows:
            state = f"[yellow]paused[/yellow] ({f.waiting} waiting)" if f.paused else "running"
            top = "; ".join(f"{k} x{v}" for k, v in list(f.reasons.items())[:3])
            flows.add_row(f.flow, state, _when(f.last_applied), *(str(f.outcomes.get(k, 0)) for k in
                          ("applied", "skipped", "deferred", "rejected")), str(f.throttled), top)
        console.print(flows)
        if report.truncated:
            console.print("[yellow]the window holds more journal entries than were read; narrow --since[/]")

    _print(console, args, report, render)
    return 0


async def _trace(args: argparse.Namespace, ctx: OpsContext, console: Console) -> int:
    from p2csync.ops.trace import trace

    report = await trace(ctx.ledger, args.query)

    def render() -> None:
        if not report.records:
            console.print(f"nothing in the journal matches {args.query!r}")
            return
        for record in report.records:
            state = record.state
            title = f"{record.record_key or '(no record)'}  (matched by {report.matched_by})"
            if state is not None and state.version is not None:
                title += f"\napplied version {state.version} -> {state.target_key or '-'} at {_when(state.updated_at)}"
            table = Table(title=title)
            for column in ("time", "outcome", "reason", "version", "target", "message id", "try",
                           "correlation id"):
                table.add_column(column)
            for d in record.deliveries:
                table.add_row(_when(d.at), d.outcome, d.reason or "", str(d.version or ""), d.target_key or "",
                              d.message_id, str(d.delivery_count), d.correlation_id or "")
            console.print(table)

    _print(console, args, report, render)
    return 0 if report.records else 1


async def _deadletters(args: argparse.Namespace, ctx: OpsContext, console: Console) -> int:
    from p2csync.ops import deadletters as dl

    classifier = MessageClassifier(ctx.registry)
    now = datetime.now(UTC)
    where = dl.DeadLetterFilter(queue=args.queue, flow=getattr(args, "flow", None),
                                reason=getattr(args, "reason", None), older_than=getattr(args, "older_than", None))
    ids = [args.id] if args.action == "show" else getattr(args, "ids", None)
    letters = await dl.find_dead_letters(ctx.transport, ctx.queues, classifier, where, now=now, ids=ids)
    if args.action == "list":
        found = [letter for letter, _ in letters]

        def render() -> None:
            table = Table(title=f"{len(found)} dead letter(s)")
            for column in ("queue", "seq", "enqueued", "reason", "flow", "record", "description"):
                table.add_column(column)
            for d in found:
                table.add_row(d.queue, str(d.sequence_number), _when(d.enqueued_at), d.reason or "", d.flow or "-",
                              d.record_key or d.summary, (d.description or "")[:80])
            console.print(table)

        _print(console, args, found, render)
        return 0
    if args.action == "show":
        if not letters:
            print(f"no dead letter {args.id!r}", file=sys.stderr)
            return 1
        shown = [dl.detail(letter, raw) for letter, raw in letters]

        def render_show() -> None:
            for d in shown:
                console.print_json(d.model_dump_json(exclude={"body"}))
                console.print(d.body, markup=False, highlight=False)

        _print(console, args, shown if len(shown) > 1 else shown[0], render_show)
        return 0
    if not ids and not any([args.flow, args.reason, args.older_than, args.queue]) and not args.all:
        print(f"deadletters {args.action}: name dead letters, give a filter, or --all for every one",
              file=sys.stderr)
        return 2
    if args.action == "replay":
        results = await dl.replay(ctx.transport, ctx.transport, letters)

        def render_replay() -> None:
            table = Table(title=f"replayed {sum(r.error is None for r in results)} of {len(results)}")
            for column in ("queue", "seq", "old message id", "new message id", "error"):
                table.add_column(column)
            for r in results:
                table.add_row(r.queue, str(r.sequence_number), r.old_message_id, r.new_message_id or "-",
                              r.error or "")
            console.print(table)

        _print(console, args, results, render_replay)
        return 0 if all(r.new_message_id for r in results) else 1
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"purge: {len(letters)} dead letter(s) match; confirm with --yes", file=sys.stderr)
            return 2
        answer = input(f"delete {len(letters)} dead letter(s) for good? type 'yes': ")
        if answer.strip().lower() != "yes":
            print("nothing deleted")
            return 1
    deleted = await dl.purge(ctx.transport, letters)
    _print(console, args, _Count(deleted=deleted), lambda: console.print(f"deleted {deleted} dead letter(s)"))
    return 0


class _Count(BaseModel):
    deleted: int


async def _send(args: argparse.Namespace, ctx: OpsContext, console: Console) -> int:
    from p2csync.ops.send import send_body

    properties = dict(args.property)
    result = await send_body(ctx.transport, args.queue, args.file.read_bytes(), properties=properties,
                             content_type=args.content_type, message_id=args.message_id)
    _print(console, args, result, lambda: console.print(
        f"sent {result.size} bytes to {result.queue} as {result.message_id} ({result.content_type})"))
    return 0


async def _pause(args: argparse.Namespace, ctx: OpsContext, console: Console) -> int:
    from p2csync.ops.pause import pause

    record = await pause(ctx.ledger, args.flow, ctx.flows, by=_user(), note=args.note)
    _print(console, args, record, lambda: console.print(
        f"{record.flow} is paused since {_when(record.paused_at)}; its messages wait on the queue "
        f"(resume with: python -m p2csync resume {record.flow})"))
    return 0


async def _resume(args: argparse.Namespace, ctx: OpsContext, console: Console) -> int:
    from p2csync.ops.pause import resume

    result = await resume(ctx.ledger, args.flow, ctx.flows)
    _print(console, args, result, lambda: console.print(
        f"{result.flow} resumed; waiting messages are processed as they come back"
        if result.was_paused else f"{result.flow} was not paused"))
    return 0


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no login name in a container: the pause is recorded without it
        return None
