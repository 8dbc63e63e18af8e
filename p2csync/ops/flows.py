"""The CLI layer of ``backfill`` and ``reconcile``: they read Dataverse and F&O, so they build the runtime's
own objects (connectors, ledger, queue transport, flow registry) from the settings, then render the report of
p2csync.ops.backfill / p2csync.ops.reconcile with rich (progress with rate and ETA, tables) or as JSON."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from p2csync.ops.context import _UNUSED_URL, ops_settings


class RateColumn(TextColumn):
    """Records per second of a task."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task: Any) -> Any:
        speed = task.finished_speed or task.speed
        from rich.text import Text

        return Text(f"{speed:,.0f}/s" if speed else "-/s")


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, transient=False)


async def run_flow_command(args: argparse.Namespace, console: Console) -> int:
    from p2csync.runtime import SyncRuntime

    settings = ops_settings(args.settings)
    if _UNUSED_URL in (settings.dataverse_url, settings.fno_url):
        print(f"error: {args.command} reads both systems: set DATAVERSE_URL and FNO_URL (or --settings)",
              file=sys.stderr)
        return 1
    runtime = SyncRuntime.from_settings(settings)
    try:
        spec = runtime.mappings.get(args.flow)
        if spec is None:
            print(f"error: flow {args.flow!r}: not a mapping file (known: {', '.join(sorted(runtime.mappings))})",
                  file=sys.stderr)
            return 1
        await runtime.start()
        if args.command == "backfill":
            return await _backfill(args, runtime, spec, console)
        return await _reconcile(args, runtime, spec, console)
    finally:
        await runtime.aclose()


async def _backfill(args: argparse.Namespace, runtime: Any, spec: Any, console: Console) -> int:
    from p2csync.ops.backfill import backfill, queue_of, wait_applied

    quiet = args.json
    client = runtime.dataverse if spec.source.system == "dataverse" else runtime.fno
    queue = queue_of(spec, runtime.settings)
    with _progress(console) as progress:
        sending = progress.add_task("dry run" if args.dry_run else f"sending {spec.flow}", total=None,
                                    visible=not quiet)

        def sent(advance: int, total: int | None) -> None:
            progress.update(sending, advance=advance, total=total)

        report = await backfill(spec, client, runtime.transport, runtime.ledger, queue, restart=args.restart,
                                dry_run=args.dry_run, page_size=args.page_size, errors_csv=args.errors,
                                progress=sent, registry=runtime.registry)
        if not args.dry_run and not args.no_wait:
            applying = progress.add_task(f"applied {spec.flow}", total=report.sent, visible=not quiet)
            report = await wait_applied(runtime.ledger, report, timeout=args.timeout.total_seconds(),
                                        errors_csv=args.errors,
                                        progress=lambda advance, total: progress.update(applying, advance=advance))
    if quiet:
        print(report.model_dump_json(indent=2))
        return 0 if not report.errors else 1
    table = Table(title=f"backfill {report.flow} run {report.run}{' (resumed)' if report.resumed else ''}")
    for column in ("", "value"):
        table.add_column(column)
    if report.dry_run:
        for name, value in report.would.items():
            table.add_row(f"would: {name}", str(value))
    else:
        table.add_row("sent", f"{report.sent} to {report.queue} in {report.seconds:.1f} s ({report.rate:,.0f}/s)")
        for name, value in report.outcomes.items():
            table.add_row(name, str(value))
        if report.applied_seconds is not None:
            table.add_row("applied after", f"{report.applied_seconds:.1f} s")
    table.add_row("errors", f"{len(report.errors)} (every one in {args.errors})" if report.errors else "0")
    console.print(table)
    return 0 if not report.errors else 1


async def _reconcile(args: argparse.Namespace, runtime: Any, spec: Any, console: Console) -> int:
    from p2csync.ops.backfill import queue_of
    from p2csync.ops.reconcile import reconcile

    with _progress(console) as progress:
        task = progress.add_task(f"comparing {spec.flow}", total=None, visible=not args.json)
        report = await reconcile(spec, runtime.context, runtime.registry, fix=args.fix, transport=runtime.transport,
                                 queue=queue_of(spec, runtime.settings), where=args.where,
                                 progress=lambda advance, total: progress.update(task, advance=advance))
    if args.csv is not None:
        with args.csv.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(("flow", "record_key", "source", "kind", "fields", "detail"))
            for d in report.drift:
                writer.writerow((d.flow, d.record_key, d.source, d.kind, " ".join(d.fields), d.detail))
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    table = Table(title=f"reconcile {report.flow}: {report.checked} checked, {report.in_sync} in step, "
                        f"{report.filtered} filtered out, {len(report.drift)} drifted"
                        + (f", {report.fixed} resynced" if args.fix else ""))
    for column in ("kind", "record", "fields", "detail"):
        table.add_column(column)
    for d in report.drift:
        table.add_row(d.kind, d.source, ", ".join(d.fields), d.detail[:100])
    console.print(table)
    return 0
