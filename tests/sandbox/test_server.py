"""The standalone runner used by `python -m p2csync sandbox`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_main_prints_urls_and_tokens_and_stops_on_interrupt() -> None:
    code = "import sys; from sandbox.server import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, "--dataverse-port", "0", "--fno-port", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        dataverse_api = lines[0].split(": ", 1)[1].strip()
        fno_data = lines[1].split(": ", 1)[1].strip()
        assert dataverse_api.startswith("http://127.0.0.1:") and dataverse_api.endswith("/api/data/v9.2/")
        assert fno_data.endswith("/data/")
        rest = "".join(process.stdout.readline() for _ in range(5))
        assert "sandbox-integration-user" in rest and "sandbox-sales-user" in rest
        headers = {"Authorization": "Bearer sandbox-integration-user"}
        assert httpx.get(dataverse_api + "WhoAmI", headers=headers, trust_env=False).status_code == 200
        assert httpx.get(fno_data + "CustomersV3", headers=headers, trust_env=False).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0


@pytest.mark.parametrize(("busy", "name", "option"), [
    ("--dataverse-port", "Dataverse", "--dataverse-port"),
    ("--fno-port", "F&O", "--fno-port"),
])
def test_a_busy_port_is_one_line_naming_the_port_and_the_simulator(busy: str, name: str, option: str,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from sandbox.server import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--fno-port" if busy == "--dataverse-port" else "--dataverse-port"
        assert main([busy, str(port), other, "0"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0] and f"{name} simulator" in lines[0] and option in lines[0]
