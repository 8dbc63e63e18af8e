"""(b) checkov over infra/: no failed check, no parsing error, every skip inline with a reason.

checkov runs once for this module (about 10 s). A file pycep cannot parse shows up in
results.parsing_errors and is NOT checked, so an empty parsing_errors list is asserted explicitly.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra._bicep import INFRA, ROOT, bicep_files

# Every accepted skip: check id -> resources it is skipped on. A new skip must be added here on purpose.
EXPECTED_SKIPS = {
    "CKV_AZURE_35": {"Microsoft.Storage/storageAccounts.storage"},
    "CKV_AZURE_59": {"Microsoft.Storage/storageAccounts.storage"},
    "CKV_AZURE_206": {"Microsoft.Storage/storageAccounts.storage"},
    "CKV_AZURE_225": {"Microsoft.Web/serverfarms.plan"},
    "CKV_AZURE_222": {"Microsoft.Web/sites.site"},
    "CKV_AZURE_17": {"Microsoft.Web/sites.site"},
    "CKV_AZURE_212": {"Microsoft.Web/sites.site"},
    "CKV_AZURE_213": {"Microsoft.Web/sites.site"},
    "CKV_AZURE_109": {"Microsoft.KeyVault/vaults.vault"},
    "CKV_AZURE_189": {"Microsoft.KeyVault/vaults.vault"},
}

SKIP_COMMENT = re.compile(r"//\s*checkov:skip=([A-Z0-9_]+)(:?)(.*)$")


def _checkov_command() -> list[str]:
    exe = Path(sys.executable).with_name("checkov")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("checkov")
    if found:
        return [found]
    pytest.fail("checkov is not installed (pip install -r requirements-dev.txt)")


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    cmd = _checkov_command() + [
        "-d", str(INFRA),
        "--framework", "bicep",
        "--skip-download",
        "--compact",
        "--output", "json",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    data = json.loads(proc.stdout)
    if isinstance(data, list):  # several frameworks -> a list of reports
        data = next(r for r in data if r.get("check_type") == "bicep")
    assert data.get("check_type") == "bicep", f"unexpected checkov output: {proc.stdout[:500]}"
    return data


def test_no_parsing_errors(report: dict[str, Any]) -> None:
    assert report["results"]["parsing_errors"] == []
    assert report["summary"]["parsing_errors"] == 0


def test_every_template_was_scanned(report: dict[str, Any]) -> None:
    results = report["results"]
    scanned = {
        Path(check["file_path"]).name
        for key in ("passed_checks", "failed_checks", "skipped_checks")
        for check in results[key]
    }
    # Files holding resource types checkov has checks for must appear in the results.
    assert {"functionapp.bicep", "storage.bicep", "keyvault.bicep"} <= scanned
    assert report["summary"]["resource_count"] > 0
    assert report["summary"]["passed"] > 0
    assert len(bicep_files()) >= 7


def test_no_failed_checks(report: dict[str, Any]) -> None:
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    assert report["summary"]["failed"] == 0


def test_skips_are_the_expected_ones_with_reasons(report: dict[str, Any]) -> None:
    skipped: dict[str, set[str]] = {}
    for check in report["results"]["skipped_checks"]:
        comment = check["check_result"].get("suppress_comment", "")
        assert comment and comment != "No comment provided", f"{check['check_id']} skipped without a reason"
        assert len(comment.strip()) >= 30, f"{check['check_id']}: reason too short: {comment!r}"
        skipped.setdefault(check["check_id"], set()).add(check["resource"])
    assert skipped == EXPECTED_SKIPS


def test_every_inline_skip_comment_is_effective(report: dict[str, Any]) -> None:
    """No dead skip comments: each `//checkov:skip=` in the sources matches a skip checkov applied."""
    applied = {c["check_id"] for c in report["results"]["skipped_checks"]}
    for path in bicep_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = SKIP_COMMENT.search(line)
            if not match:
                continue
            check_id, colon, reason = match.groups()
            assert colon and reason.strip(), f"{path.name}:{number}: skip without ': reason'"
            assert check_id in applied, f"{path.name}:{number}: {check_id} skip is not applied by checkov"
