"""Figure 6's pure helpers: the result line both sides print, the timed loop they share, the figure made of
the rounds, and the peer venv's reuse (installed once, then found by its marker)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import peers
from bench.peer_protocol import RESULT_PREFIX, Job, Outcome, account, customer, drive, parse_outcome


def _outcome(rate: float, *, errors: int = 0, client: str = "x") -> Outcome:
    return Outcome(client=client, records=100, errors=errors, seconds=100 / rate, cpu_seconds=0.2,
                   first_error="boom" if errors else None)


def _job(**kwargs: Any) -> Job:
    return Job(**{"system": "dataverse", "url": "http://h", "token": "t", "records": 20, "concurrency": 3,
                  "prefix": "T", "warmup": 2, "currency_id": "c1", **kwargs})


# ------------------------------------------------------------------------------------------ result line
def test_the_last_result_line_wins_among_other_output() -> None:
    text = ("noise\n" + RESULT_PREFIX + '{"client": "a", "records": 5, "errors": 0, "seconds": 1.0}\n'
            + RESULT_PREFIX + '{"client": "b", "records": 10, "errors": 2, "seconds": 2.0, "cpu_seconds": 0.5}\n'
            + "trailing log\n")
    outcome = parse_outcome(text)
    assert outcome == Outcome(client="b", records=10, errors=2, seconds=2.0, cpu_seconds=0.5)
    assert outcome.rate == 4.0


@pytest.mark.parametrize(("text", "reason"), [
    ("Traceback ...\nImportError: x\n", "no PEER-RESULT line"),
    (RESULT_PREFIX + "{not json\n", "malformed"),
    (RESULT_PREFIX + '{"client": "a", "records": 5}\n', "malformed"),
    (RESULT_PREFIX + '{"client": "a", "records": 5, "errors": 0, "seconds": 0}\n', "impossible"),
    (RESULT_PREFIX + '{"client": "a", "records": 5, "errors": 6, "seconds": 1}\n', "impossible"),
])
def test_a_missing_or_broken_result_line_is_an_error_naming_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_outcome(text)


def test_a_job_survives_its_json_round_trip() -> None:
    job = _job(system="fno", company="usrt")
    assert Job.from_json(job.to_json()) == job


# --------------------------------------------------------------------------------------------- records
def test_records_carry_the_key_apart_from_the_columns() -> None:
    key, columns = account(_job(), "A1")
    assert key == {"accountnumber": "A1"} and "accountnumber" not in columns
    assert columns["transactioncurrencyid@odata.bind"] == "/transactioncurrencies(c1)"
    key, fields = customer(_job(system="fno"), "C1")
    assert key == {"dataAreaId": "usmf", "CustomerAccount": "C1"} and not set(key) & set(fields)


# -------------------------------------------------------------------------------------------- the loop
def test_drive_times_n_new_rows_after_an_untimed_warm_up_within_the_concurrency() -> None:
    seen: list[str] = []
    in_flight = peak = 0

    async def write(key: dict[str, Any], columns: dict[str, Any]) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        seen.append(key["accountnumber"])
        if key["accountnumber"] == "T00007":
            raise RuntimeError("refused")

    outcome = asyncio.run(drive(_job(), "fake 1.0", write))
    assert outcome.client == "fake 1.0" and outcome.records == 20 and outcome.errors == 1
    assert outcome.first_error is not None and outcome.first_error.startswith("T00007: RuntimeError: refused")
    assert peak == 3
    assert len(seen) == len(set(seen)) == 22 and sum(n.startswith("TW") for n in seen) == 2


# ------------------------------------------------------------------------------------------- the figure
def test_the_figure_is_the_median_round_ratio_with_what_was_compared() -> None:
    pairs = [(_outcome(300, client="ours"), _outcome(100, client="peer")),
             (_outcome(150), _outcome(100)), (_outcome(220), _outcome(100))]
    figure = peers.figure(peers.DATAVERSE, pairs, 100)
    assert figure.value == 2.2 and figure.passed is True and figure.target == ">= 2"
    assert "ours 220/s vs peer 100/s" in figure.detail and "3.00, 1.50, 2.20" in figure.detail
    assert "16 in flight" in figure.detail and "30 ms" in figure.detail and "accountnumber" in figure.detail
    assert "at most 5.33x is possible" in figure.detail  # 16 in flight / 30 ms = 533/s, the peer at 100/s
    assert peers.figure(peers.DATAVERSE, pairs[1:2], 100).passed is False


def test_a_round_with_failed_writes_leaves_the_figure_not_measured_saying_why() -> None:
    figure = peers.figure(peers.FNO, [(_outcome(300), _outcome(100, errors=3, client="peer 0.1"))], 100)
    assert figure.value is None and figure.passed is None
    assert "peer 0.1: 3 of 100 writes failed, first: boom" in figure.detail


# ---------------------------------------------------------------------------------------------- the venv
def test_the_peer_venv_is_installed_once_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "VENV", tmp_path / "venv")
    calls: list[list[str]] = []

    def fake_run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append([str(a) for a in args])
        if "venv" in args:
            (tmp_path / "venv" / "bin").mkdir(parents=True)
            (tmp_path / "venv" / "bin" / "python").touch()
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(peers.subprocess, "run", fake_run)
    assert peers.ensure_installed(peers.FNO) is None
    assert [c[1:3] for c in calls] == [["-m", "venv"], ["-m", "pip"]]
    assert "--ignore-requires-python" in calls[1] and "d365fo-client==0.3.7" in calls[1]
    assert peers.ensure_installed(peers.FNO) is None and len(calls) == 2  # the marker says it is there
    peers.FNO.marker.write_text("d365fo-client==0.3.6")  # other pins: installed again, the venv kept
    assert peers.ensure_installed(peers.FNO) is None and [c[1:3] for c in calls[2:]] == [["-m", "pip"]]


def test_a_failed_install_is_the_reason_the_figure_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "VENV", tmp_path / "venv")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").touch()
    monkeypatch.setattr(peers.subprocess, "run", lambda args, **kw: subprocess.CompletedProcess(
        args, 1, "", "Collecting x\nERROR: No matching distribution found for d365fo-client==0.3.7\n"))
    reason = peers.ensure_installed(peers.FNO)
    assert reason is not None and "No matching distribution found" in reason
    assert not peers.FNO.marker.exists()


def test_a_peer_that_does_not_run_is_not_measured_but_our_side_failing_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "scale", lambda: "full")
    monkeypatch.setattr(peers, "ensure_installed", lambda peer: None)
    failing = {"module": peers.DATAVERSE.module}

    async def compare(peer: peers.Peer, records: int, rounds: int) -> list[tuple[Outcome, Outcome]]:
        if peer is peers.DATAVERSE:
            raise peers.SideFailed(failing["module"], "ImportError: no module named PowerPlatform")
        return [(_outcome(200), _outcome(100))]

    monkeypatch.setattr(peers, "compare", compare)
    dataverse, fno = asyncio.run(peers.run())
    assert dataverse.value is None and "the peer did not run: ImportError" in dataverse.detail
    assert fno.value == 2.0
    failing["module"] = "bench.peer_ours"
    with pytest.raises(peers.SideFailed):
        asyncio.run(peers.run())
