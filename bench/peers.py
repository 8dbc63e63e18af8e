"""Figure 6, peers: upserts/s of our connectors vs Microsoft's Python Dataverse client
(``powerplatform-dataverse-client``, its async client) and the ``d365fo-client`` package, on the same sandbox
with the same records, concurrency and injected latency.

Neither peer is a dependency of the project: a full run installs them (pinned below, the versions measured)
into a throwaway venv, ``.var/bench/peers-venv``, made on first use and reused after. Each side runs in its own
process (ours: ``bench.peer_ours`` with the project's Python; the peers: ``bench.peer_dataverse`` /
``bench.peer_fno`` with the venv's), the sandbox in this one; rounds alternate which side goes first and the
figure is the median of the per-round ratios. A tiny run (``BENCH_SCALE=tiny``, the smoke test) installs
nothing: it runs our half only and reports the peers as not measured.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.common import Figure, at_least, median, pick, progress, scale
from bench.peer_protocol import Job, Outcome, parse_outcome
from p2csync.settings import ROOT
from sandbox import INTEGRATION_TOKEN, USD_CURRENCY_ID
from sandbox.server import SandboxServer

BENCH = "6 peers"
TARGET = 2.0
CONCURRENCY = 16
LATENCY = 0.03  # seconds per call, injected on every request (loopback alone would make it a CPU race)
VENV = ROOT / ".var" / "bench" / "peers-venv"
TIMEOUT = 600


@dataclass(frozen=True)
class Peer:
    """One peer client: what to install, how (``pip_args``), and the module that drives it."""

    system: str
    title: str
    requirements: tuple[str, ...]
    module: str
    pip_args: tuple[str, ...] = ()
    note: str = ""

    @property
    def marker(self) -> Path:
        return VENV / f".p2c-peer-{self.system}"

    @property
    def spec(self) -> str:
        return " ".join(self.pip_args + self.requirements)


DATAVERSE = Peer(
    system="dataverse", title="Dataverse connector upserts/s vs powerplatform-dataverse-client",
    # The versions measured; aiohttp is the [async] extra's (AsyncDataverseClient).
    requirements=("powerplatform-dataverse-client[async]==1.1.0", "aiohttp==3.14.5", "azure-core==1.41.0"),
    module="bench.peer_dataverse",
    note="upserts of new accounts by alternate key accountnumber (PATCH accounts(accountnumber='...')), "
         "records.upsert of one item each; its metadata reads (entity set, choice labels) once per client, "
         "from the sandbox's EntityDefinitions")
FNO = Peer(
    system="fno", title="F&O connector upserts/s vs d365fo-client",
    # Every d365fo-client release declares Requires-Python >= 3.13; the project runs 3.11 and this machine's
    # package sources have no 3.13 (Debian 12: python3.11; PyPI ships no CPython). The pin is overridden
    # (--ignore-requires-python): 0.3.7 imports and runs on 3.11. mcp<2: with mcp 2.x its import fails
    # (mcp.server.fastmcp was renamed).
    requirements=("d365fo-client==0.3.7", "mcp==1.30.0", "aiohttp==3.14.5"),
    module="bench.peer_fno", pip_args=("--ignore-requires-python",),
    note="creates of new CustomersV3 rows (one POST each: the package has no upsert; ours is FnOClient.upsert "
         "with exists=False, the call for a record the ledger never wrote); create_entity(skip_validation=True); "
         "d365fo-client requires Python >= 3.13, run on 3.11 with --ignore-requires-python")
PEERS = (DATAVERSE, FNO)


# ------------------------------------------------------------------------------------------- the peer venv
def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_installed(peer: Peer) -> str | None:
    """Install ``peer`` into the peer venv unless its marker says these pins are there; the reason on failure."""
    if peer.marker.exists() and peer.marker.read_text() == peer.spec and venv_python().exists():
        return None
    if not venv_python().exists():
        progress(f"peers: creating {VENV}")
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], capture_output=True, text=True)
        if made.returncode != 0:
            return f"python -m venv failed: {made.stderr.strip()[-300:]}"
    progress(f"peers: pip install {peer.spec}")
    done = subprocess.run([str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           *peer.pip_args, *peer.requirements], capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "ERROR" in line] or done.stderr.splitlines()[-3:]
        return f"pip install {peer.spec} failed: {' '.join(errors)[-400:]}"
    peer.marker.write_text(peer.spec)
    return None


# ------------------------------------------------------------------------------------------------ one run
class SideFailed(RuntimeError):
    """A side's process printed no result; ``module`` says which side."""

    def __init__(self, module: str, message: str) -> None:
        super().__init__(message)
        self.module = module


def run_side(python: str | Path, module: str, job: Job) -> Outcome:
    """One side's writes in its own process; its result line, or ``SideFailed`` with its stderr."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([str(python), "-m", module], input=job.to_json(), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    try:
        return parse_outcome(done.stdout)
    except ValueError as exc:
        raise SideFailed(module, f"{module} exited {done.returncode}: {exc}; stderr: {done.stderr[-1500:]}") from exc


def job_for(sandbox: SandboxServer, system: str, prefix: str, records: int) -> Job:
    url = sandbox.dataverse_url if system == "dataverse" else sandbox.fno_url
    return Job(system=system, url=url, token=INTEGRATION_TOKEN, records=records, concurrency=CONCURRENCY,
               prefix=prefix, currency_id=USD_CURRENCY_ID)


async def compare(peer: Peer, records: int, rounds: int) -> list[tuple[Outcome, Outcome]]:
    """(ours, peer) per round on one sandbox with LATENCY on every call; the order alternates per round."""
    pairs = []
    with SandboxServer() as sandbox:
        sandbox.dataverse.faults.latency(LATENCY)
        sandbox.fno.faults.latency(LATENCY)
        for index in range(rounds):
            sides = [(sys.executable, "bench.peer_ours", "O"), (venv_python(), peer.module, "P")]
            if index % 2:
                sides.reverse()
            results = {}
            for python, module, tag in sides:
                job = job_for(sandbox, peer.system, f"PR{index}{tag}", records)
                results[tag] = await asyncio.to_thread(run_side, python, module, job)
            ours, theirs = results["O"], results["P"]
            progress(f"peers {peer.system} round {index + 1}: ours {ours.rate:.0f}/s, peer {theirs.rate:.0f}/s, "
                     f"ratio {ratio(ours, theirs):.2f}")
            pairs.append((ours, theirs))
    return pairs


def ratio(ours: Outcome, theirs: Outcome) -> float:
    return ours.rate / theirs.rate if theirs.rate > 0 else float("inf")


def cpu_ms(outcome: Outcome) -> float:
    """Client CPU per successful write, in milliseconds."""
    done = outcome.records - outcome.errors
    return outcome.cpu_seconds * 1000 / done if done else float("nan")


def ceiling(theirs: Outcome) -> str:
    """Why the target can be out of reach: no client exceeds concurrency / latency on the same service, so
    the best ratio possible is that ideal over the peer's rate."""
    best = CONCURRENCY / LATENCY / theirs.rate if theirs.rate > 0 else float("inf")
    return f"at most {best:.2f}x is possible against this peer at this concurrency and latency"


def conditions(records: int) -> str:
    return (f"{records} records per side per round, {CONCURRENCY} in flight, {LATENCY * 1000:.0f} ms injected "
            f"latency per call (ideal {CONCURRENCY / LATENCY:.0f}/s), each client in its own process")


def figure(peer: Peer, pairs: list[tuple[Outcome, Outcome]], records: int) -> Figure:
    """The median ratio of the rounds, with what was compared; not measured when any write failed."""
    failed = [o for pair in pairs for o in pair if o.errors]
    ours, theirs = pairs[0]
    if failed:
        return Figure(bench=BENCH, name=peer.title, value=None, unit="x", target=f">= {TARGET:g}", passed=None,
                      detail=f"not measured: {failed[0].client}: {failed[0].errors} of {failed[0].records} writes "
                             f"failed, first: {failed[0].first_error}")
    ratios = [ratio(o, t) for o, t in pairs]
    mid = sorted(pairs, key=lambda p: ratio(*p))[len(pairs) // 2]
    detail = (f"{ours.client} {mid[0].rate:.0f}/s vs {theirs.client} {mid[1].rate:.0f}/s (median of {len(pairs)} "
              f"rounds: {', '.join(f'{r:.2f}' for r in ratios)}); {peer.note}; {conditions(records)}; client CPU "
              f"per write {cpu_ms(mid[0]):.2f} ms ours vs {cpu_ms(mid[1]):.2f} ms peer; {ceiling(mid[1])}")
    return at_least(BENCH, peer.title, round(median(ratios), 3), TARGET, "x", detail)


async def ours_only(peer: Peer, records: int) -> Figure:
    """Tiny scale: our half of the harness against the sandbox, the peer not installed."""
    with SandboxServer() as sandbox:
        sandbox.dataverse.faults.latency(LATENCY)
        sandbox.fno.faults.latency(LATENCY)
        ours = await asyncio.to_thread(run_side, sys.executable, "bench.peer_ours",
                                       job_for(sandbox, peer.system, "TINY", records))
    if ours.errors:
        raise RuntimeError(f"our side failed {ours.errors} of {ours.records} writes: {ours.first_error}")
    return Figure(bench=BENCH, name=peer.title, value=None, unit="x", target=f">= {TARGET:g}", passed=None,
                  detail=f"peer not measured at tiny scale (nothing is installed in a smoke run); ours: "
                         f"{ours.client} {ours.rate:.0f}/s; {conditions(records)}")


async def run() -> list[Figure]:
    records, rounds = pick(6, 400), pick(1, 3)
    figures = []
    for peer in PEERS:
        if scale() == "tiny":
            figures.append(await ours_only(peer, records))
            continue
        reason = await asyncio.to_thread(ensure_installed, peer)
        if reason is not None:
            figures.append(Figure(bench=BENCH, name=peer.title, value=None, unit="x", target=f">= {TARGET:g}",
                                  passed=None, detail=f"not measured: {reason}"))
            continue
        try:
            figures.append(figure(peer, await compare(peer, records, rounds), records))
        except SideFailed as exc:
            if exc.module != peer.module:
                raise  # our side failing is this benchmark failing
            figures.append(Figure(bench=BENCH, name=peer.title, value=None, unit="x", target=f">= {TARGET:g}",
                                  passed=None, detail=f"not measured: the peer did not run: {str(exc)[-600:]}"))
    return figures
