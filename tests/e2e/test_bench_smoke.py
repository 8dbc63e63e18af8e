"""The benchmark suite (``make bench``) keeps working: a tiny run of every benchmark writes a report with every
figure. Timings are not asserted (the machine is shared); only that each figure was produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2csync.settings import ROOT

pytestmark = pytest.mark.e2e

FIGURES = ("1 overhead", "2 calls per record", "3 throttled throughput", "4 concurrency efficiency",
           "5 cold start and memory", "6 peers", "7 sandbox share", "transport")  # transport: behind 1, 4 and 6


def test_a_tiny_run_of_every_benchmark_reports_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_SCALE": "tiny"}
    done = subprocess.run([sys.executable, "-m", "bench", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    figures = report["figures"]
    assert {f["bench"] for f in figures} == set(FIGURES)
    assert all(f["name"] != "benchmark failed" for f in figures)
    markdown = (tmp_path / "report.md").read_text()
    assert markdown == done.stdout
    for f in figures:
        assert f["name"] in markdown and f["target"] in markdown
        if f["value"] is None:
            assert f["passed"] is None and f["detail"], f  # "not measured" says why
        else:
            assert f["passed"] in (True, False)
