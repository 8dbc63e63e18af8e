"""A new user's first hour (issue 7, point 13): `run` prints the function key, a copied example settings
file is refused naming its placeholders, a busy port is one line, every command's --help shows its
defaults and an example, and the README's change-by-hand recipe works as written."""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from p2csync.cli import build_parser, main
from p2csync.devstack import LocalStack
from p2csync.settings import SettingsError, load_local_settings
from sandbox import INTEGRATION_TOKEN, SALES_TOKEN

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2C_", "DATAVERSE_", "FNO_", "ServiceBus"))}
    env.update({"DATAVERSE_URL": "http://127.0.0.1:9", "FNO_URL": "http://127.0.0.1:9", "P2C_AUTH_MODE": "static",
                "P2C_STATIC_TOKEN": "sandbox-integration-user", "P2C_LEDGER_PATH": str(tmp_path / "ledger.sqlite"),
                "P2C_LOCAL_QUEUE_PATH": str(tmp_path / "queue.sqlite"), **extra})
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2csync", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- run prints the function key --------------------------------------------------------------------


@pytest.mark.parametrize("given", [True, False])
def test_run_prints_the_function_key_and_it_opens_the_webhook(tmp_path: Path, given: bool) -> None:
    args = ["run", "--port", "0", "--settings", str(tmp_path / "none.json")]
    if given:
        args += ["--function-key", "first-hour-key"]
    proc = subprocess.Popen([sys.executable, "-m", "p2csync", *args], cwd=ROOT, env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any("function key:" in line for line in lines) and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        match = re.search(r"function key: (\S+)", text)
        assert match, text
        key = match.group(1)
        if given:
            assert key == "first-hour-key"
        base = re.search(r"local host ready on (\S+)", text).group(1)  # type: ignore[union-attr]
        url = f"{base}/dataverse/webhook"
        assert httpx.post(url, content=b"{}", params={"code": key}, trust_env=False).status_code == 400
        assert httpx.post(url, content=b"{}", params={"code": key + "x"}, trust_env=False).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _start_run(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`run` on a free port without a settings file; its start-up lines up to the body limit line."""
    proc = subprocess.Popen([sys.executable, "-m", "p2csync", "run", "--port", "0", "--settings",
                             str(tmp_path / "none.json"), "--function-key", "limit-key"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while not any("request body limit:" in line for line in seen) and time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.2))
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                break
        if any(line.strip() == "" for line in seen[-1:]) or any("queue trigger" in line for line in seen):
            break  # the start-up lines are over
    return proc, "".join(seen)


@pytest.mark.parametrize(("setting", "limit"), [(None, 1048576), ("2097152", 2097152)])
def test_run_limits_request_bodies_to_1_mb_unless_set_and_says_so(tmp_path: Path, setting: str | None,
                                                                   limit: int) -> None:
    """Issue 7 points 9/13: without local.settings.json, `run` must not read bodies up to the Functions
    host's 100 MB default; it uses the 1 MB the infra sets in Azure, and prints the limit."""
    env = {k: v for k, v in cli_env(tmp_path).items() if k != "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"}
    if setting is not None:
        env["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"] = setting
    proc, text = _start_run(tmp_path, env)
    try:
        assert f"request body limit: {limit} bytes (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT" in text, text
        base = re.search(r"local host ready on (\S+)", text).group(1)  # type: ignore[union-attr]
        answer = httpx.post(f"{base}/dataverse/webhook", content=b"x" * (limit + 1), params={"code": "limit-key"},
                            trust_env=False, timeout=30)
        assert answer.status_code == 413
        assert f"host's limit of {limit} bytes" in answer.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- placeholders -------------------------------------------------------------------------------------


def test_a_copied_example_settings_file_is_refused_naming_each_placeholder(tmp_path: Path) -> None:
    settings = tmp_path / "local.settings.json"
    shutil.copy(ROOT / "local.settings.example.json", settings)
    env = {k: v for k, v in cli_env(tmp_path).items() if k not in ("DATAVERSE_URL", "FNO_URL")}
    result = run_cli(["run", "--port", "0", "--settings", str(settings)], env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for name in ("DATAVERSE_URL", "FNO_URL", "INTEGRATION_USER_IDS", "ServiceBusConnection__fullyQualifiedNamespace"):
        assert name in result.stderr
    assert "<placeholder>" in result.stderr


def test_a_placeholder_overridden_by_the_environment_is_not_used_so_not_refused(tmp_path: Path) -> None:
    settings = tmp_path / "local.settings.json"
    settings.write_text('{"Values": {"DATAVERSE_URL": "https://<your-org>.crm.dynamics.com", "A": "1"}}')
    env = {"DATAVERSE_URL": "http://127.0.0.1:7081"}
    assert load_local_settings(settings, env)["A"] == "1"
    assert env == {"DATAVERSE_URL": "http://127.0.0.1:7081", "A": "1"}
    with pytest.raises(SettingsError, match=r"DATAVERSE_URL = 'https://<your-org>\.crm\.dynamics\.com'"):
        load_local_settings(settings, {})


# --- a busy port --------------------------------------------------------------------------------------


def test_a_busy_port_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["run", "--port", str(port), "--settings", str(tmp_path / "none.json")], cli_env(tmp_path))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0]


# --- help ---------------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_every_command_has_help_with_defaults_and_an_example(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "example:" in text
    assert "python -m p2csync" in text
    if command == "sandbox":  # delegated to the sandbox's own parser
        for option in ("--host", "--dataverse-port", "--fno-port"):
            assert option in text
        assert "(default: 7081)" in text
        return
    for action in _subparsers(build_parser())[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, f"{command} {action.dest} has no sentence of help"
        if action.default not in (None, argparse.SUPPRESS):
            shown = action.default.name if isinstance(action.default, Path) else action.default
            assert "default" in action.help or f"(default: {shown}" in text, (command, action.dest)


# --- the README's change by hand ----------------------------------------------------------------------


CREATE_BODY = '{"name": "Fabrikam by hand", "accountnumber": "HAND-001", "telephone1": "+1 425 555 0142"}'
CUSTOMER_PATH = "/data/CustomersV3(dataAreaId='usmf',CustomerAccount='HAND-001')"
JOURNAL_SQL = "SELECT datetime(at / 1000000, 'unixepoch'), outcome, reason, detail\n  FROM journal ORDER BY id DESC LIMIT 5"
RENAME_BODY = '{"name": "Fabrikam renamed by hand"}'
ACCOUNT_BY_KEY = "/api/data/v9.2/accounts(accountnumber='HAND-001')"
JOURNAL_SCRIPT = re.search(r"^\.venv/bin/python - <<'EOF'\n(.*?)^EOF$", README, re.S | re.M)


def test_the_readme_shows_the_requests_this_test_makes() -> None:
    assert "curl -s -X POST http://127.0.0.1:7081/api/data/v9.2/accounts" in README
    assert f'-H "Authorization: Bearer {SALES_TOKEN}"' in README
    assert f"-d '{CREATE_BODY}'" in README
    assert f'"http://127.0.0.1:7082{CUSTOMER_PATH}"' in README
    assert f'-H "Authorization: Bearer {INTEGRATION_TOKEN}"' in README
    assert JOURNAL_SQL in README
    assert f'curl -s -X PATCH "http://127.0.0.1:7081{ACCOUNT_BY_KEY}"' in README
    assert f"-d '{RENAME_BODY}'" in README and '-H "If-Match: *"' in README
    assert JOURNAL_SCRIPT and JOURNAL_SQL in JOURNAL_SCRIPT.group(1) and "sqlite3 .var" not in README
    assert "twice and the journal shows the duplicate skipped" not in " ".join(README.split())


async def test_a_change_made_by_hand_as_the_readme_says(tmp_path: Path) -> None:
    async with LocalStack(tmp_path) as stack:
        async with httpx.AsyncClient(trust_env=False) as http:
            created = await http.post(f"{stack.sandbox.dataverse_url}/api/data/v9.2/accounts", content=CREATE_BODY,
                                      headers={"Authorization": f"Bearer {SALES_TOKEN}",
                                               "Content-Type": "application/json"})
            assert created.status_code == 204, created.text
            assert await stack.wait_settled()
            customer = await http.get(f"{stack.sandbox.fno_url}{CUSTOMER_PATH}",
                                      headers={"Authorization": f"Bearer {INTEGRATION_TOKEN}"})
        assert customer.status_code == 200, customer.text
        assert customer.json()["OrganizationName"] == "Fabrikam by hand"
        rows = await asyncio.to_thread(_journal, stack.ledger_path)
        assert rows and rows[0][1] == "applied" and "HAND-001" in (rows[0][2] or "")

        async with httpx.AsyncClient(trust_env=False) as http:
            again = await http.post(f"{stack.sandbox.dataverse_url}/api/data/v9.2/accounts", content=CREATE_BODY,
                                    headers={"Authorization": f"Bearer {SALES_TOKEN}",
                                             "Content-Type": "application/json"})
            assert again.status_code == 412, again.text  # the README: POSTing again creates nothing
            renamed = await http.patch(f"{stack.sandbox.dataverse_url}{ACCOUNT_BY_KEY}", content=RENAME_BODY,
                                       headers={"Authorization": f"Bearer {SALES_TOKEN}", "If-Match": "*",
                                                "Content-Type": "application/json"})
            assert renamed.status_code == 204, renamed.text
            assert await stack.wait_settled()
            customer = await http.get(f"{stack.sandbox.fno_url}{CUSTOMER_PATH}",
                                      headers={"Authorization": f"Bearer {INTEGRATION_TOKEN}"})
        assert customer.json()["OrganizationName"] == "Fabrikam renamed by hand"
        assert JOURNAL_SCRIPT
        script = JOURNAL_SCRIPT.group(1).replace(".var/ledger.sqlite", str(stack.ledger_path))
        shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-"], input=script, capture_output=True,
                                        text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert len(lines) >= 2 and all("|  applied  |" in line for line in lines[:2]), shown.stdout


def _journal(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(JOURNAL_SQL).fetchall()
