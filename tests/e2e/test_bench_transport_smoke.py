"""bench/transport.py keeps working (a tiny run); it asserts the figure's shape, never the timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from p2csync.settings import ROOT

pytestmark = pytest.mark.e2e


def test_a_tiny_transport_benchmark_reports_cpu_per_request_for_both_transports() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.transport"], cwd=ROOT, env={**os.environ, "BENCH_SCALE": "tiny"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (figure,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert figure["bench"] == "transport" and figure["value"] > 0 and figure["passed"] in (True, False)
    assert "httpx (httpcore)" in figure["detail"] and "aiohttp" in figure["detail"]
