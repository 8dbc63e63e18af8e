"""Shared fixtures: an isolated runtime configuration per test (temp SQLite files, sandbox URLs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runtime_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Environment for a runtime that needs no network: placeholder URLs, temp ledger and queue."""
    env = {
        "DATAVERSE_URL": "http://127.0.0.1:9/dataverse",
        "FNO_URL": "http://127.0.0.1:9/fno",
        "FNO_DEFAULT_COMPANY": "usmf",
        "P2C_AUTH_MODE": "static",
        "P2C_STATIC_TOKEN": "sandbox-integration-user",
        "P2C_LEDGER_PATH": str(tmp_path / "ledger.sqlite"),
        "P2C_LOCAL_QUEUE_PATH": str(tmp_path / "queue.sqlite"),
    }
    from p2csync.runtime import reset_runtimes

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_runtimes()
    yield env
    reset_runtimes()
