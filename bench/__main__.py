"""``python -m bench``: run every benchmark in one go, write ``.var/bench/report.md`` and ``report.json``, print
the Markdown. ``BENCH_SCALE=tiny`` (the smoke test) runs each at a size that proves only that it works;
``--only NAME`` runs some of them."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import calls, concurrency, coldstart, overhead, peers, sandbox_share, throttle, transport
from bench.common import Figure, progress, scale

BENCHES: dict[str, Callable[[], Awaitable[list[Figure]]]] = {
    "overhead": overhead.run,
    "calls": calls.run,
    "throttle": throttle.run,
    "concurrency": concurrency.run,
    "coldstart": coldstart.run,
    "peers": peers.run,
    "sandbox": sandbox_share.run,
    "transport": transport.run,  # behind figures 1, 4 and 6: CPU per request of each HTTP transport
}
ROOT = Path(__file__).resolve().parent.parent


def render(figures: list[Figure], seconds: float) -> str:
    lines = [f"# p2c-sync benchmarks ({scale()} scale, {seconds:.0f} s)", "",
             "| # | figure | value | target | result | detail |", "| --- | --- | --- | --- | --- | --- |"]
    for f in figures:
        value = "not measured" if f.value is None else f"{f.value:g} {f.unit}"
        result = {True: "PASS", False: "MISS", None: "n/a"}[f.passed]
        lines.append(f"| {f.bench} | {f.name} | {value} | {f.target} {f.unit} | {result} | "
                     f"{f.detail.replace('|', '/')} |")
    passed = sum(1 for f in figures if f.passed)
    missed = sum(1 for f in figures if f.passed is False)
    lines += ["", f"{passed} PASS, {missed} MISS, {len(figures) - passed - missed} not measured."]
    return "\n".join(lines) + "\n"


async def run_all(names: list[str]) -> list[Figure]:
    figures: list[Figure] = []
    for name in names:
        progress(f"--- {name}")
        started = time.perf_counter()
        try:
            figures += await BENCHES[name]()
        except Exception as exc:  # one broken benchmark still leaves a report naming it
            logging.getLogger("bench").exception("benchmark %s failed", name)
            figures.append(Figure(bench=name, name="benchmark failed", value=None, unit="", target="runs",
                                  passed=False, detail=f"{type(exc).__name__}: {exc}"))
        progress(f"--- {name} done in {time.perf_counter() - started:.1f} s")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only these")
    parser.add_argument("--out", type=Path, default=ROOT / ".var" / "bench", help="report directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.disable(logging.INFO)  # the product logs every request at INFO: noise here
    started = time.perf_counter()
    figures = asyncio.run(run_all(args.only or list(BENCHES)))
    seconds = time.perf_counter() - started
    markdown = render(figures, seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(markdown)
    (args.out / "report.json").write_text(json.dumps(
        {"scale": scale(), "seconds": round(seconds, 1), "figures": [f.model_dump() for f in figures]}, indent=2))
    sys.stdout.write(markdown)
    return 1 if any(f.name == "benchmark failed" for f in figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
