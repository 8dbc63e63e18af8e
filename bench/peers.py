"""Figure 6, peers: upserts/s of our connectors vs Microsoft's Python Dataverse client
(``powerplatform-dataverse-client``) and the ``d365fo-client`` package on the same sandbox. Neither is a
dependency of the project (they would go in a throwaway venv); where one cannot be measured the figure says
why instead of a number."""

from __future__ import annotations

import sys

from bench.common import Figure

BENCH = "6 peers"


def _python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


async def run() -> list[Figure]:
    return [
        Figure(bench=BENCH, name="Dataverse connector upserts/s vs powerplatform-dataverse-client", value=None,
               unit="x", target=">= 2", passed=None,
               detail="not measured: installable from the index (1.1.0) into a throwaway venv, but no adapter "
                      "to drive it against the sandbox is written yet (its auth takes an azure-identity "
                      "credential; the comparison run is left for a follow-up)"),
        Figure(bench=BENCH, name="F&O connector upserts/s vs d365fo-client", value=None, unit="x",
               target=">= 2", passed=None,
               detail=f"not measured: every d365fo-client release requires Python >= 3.13; this project runs "
                      f"Python {_python()} (pip: no matching distribution)"),
    ]
