"""Figure 7, the sandbox is not the bottleneck.

- In figure 5's run (the product as its own process, the sandbox in this one): the CPU each side spent on the
  same events. The sandbox should cost less than the product.
- Key lookups do not grow with the table: the last 500 of 5,000 writes cost about what the first 500 did
  (Dataverse upserts by alternate key over the Web API, in process; F&O creates each in its own change set, as
  a `$batch` writes them). Before the keys were indexed the ratio was ~30x.
"""

from __future__ import annotations

import time
import httpx

from bench.coldstart import host_run
from bench.common import Figure, at_most, median, pick, progress
from sandbox.dataverse import Dataverse
from sandbox.dataverse_tables import INTEGRATION_TOKEN
from sandbox.fno import FnO

#: Table growth a key lookup must not feel: the last window of writes against the first.
GROWTH_LIMIT = 1.3


async def run() -> list[Figure]:
    bench = "7 sandbox share"
    events = pick(12, 1500)
    host = await host_run(events)
    share = host.sandbox_cpu / (host.sandbox_cpu + host.host_cpu)
    per_event = 1000 / (events - max(1, events // 3))
    detail = (f"sandbox {host.sandbox_cpu * per_event:.1f} ms CPU/event, product {host.host_cpu * per_event:.1f} ms "
              f"CPU/event; {(events - max(1, events // 3)) / host.seconds:.0f} events/s end to end")
    figures = [at_most(bench, "sandbox share of CPU (sandbox + product)", round(share * 100, 1), 50, "%", detail)]
    total, window = pick(200, 5000), pick(20, 500)
    progress(f"sandbox key growth: {total} writes per simulator, 3 runs")
    dv_runs = [await _dataverse_growth(total, window) for _ in range(3)]
    fno_runs = [_fno_growth(total, window) for _ in range(3)]
    for name, runs in ((f"Dataverse upsert by key: last {window} of {total} / first {window}", dv_runs),
                       (f"F&O create in a change set: last {window} of {total} / first {window}", fno_runs)):
        ratio = median(last / first for first, last in runs)
        first, last = sorted(runs, key=lambda r: r[1] / r[0])[1]
        figures.append(at_most(bench, name, round(ratio, 2), GROWTH_LIMIT, "x",
                               f"median of 3; first {first * 1000 / window:.2f} ms/write, "
                               f"last {last * 1000 / window:.2f} ms/write"))
    return figures


async def _dataverse_growth(total: int, window: int) -> tuple[float, float]:
    """Seconds for the first and the last `window` upserts (PATCH accounts(accountnumber=...), each a create)
    over the Web API app; the rows between are created through the store directly, to keep the run short."""
    dv = Dataverse()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dv.app),
                                     base_url="http://sandbox/api/data/v9.2/",
                                     headers={"Authorization": f"Bearer {INTEGRATION_TOKEN}"}) as client:
            async def upserts(start: int) -> float:
                started = time.perf_counter()
                for index in range(start, start + window):
                    response = await client.patch(f"accounts(accountnumber='K{index:06d}')",
                                                  json={"name": f"Key {index}"})
                    response.raise_for_status()
                return time.perf_counter() - started

            first = await upserts(0)
            for index in range(window, total - window):
                dv.create("account", {"name": f"Key {index}", "accountnumber": f"K{index:06d}"})
            return first, await upserts(total - window)
    finally:
        dv.close()


def _fno_growth(total: int, window: int) -> tuple[float, float]:
    """Seconds for the first and the last `window` of `total` F&O creates, each in its own change set."""
    fno = FnO()

    def creates(indexes: range) -> float:
        started = time.perf_counter()
        for index in indexes:
            _fno_create(fno, index)
        return time.perf_counter() - started

    first = creates(range(window))
    creates(range(window, total - window))
    return first, creates(range(total - window, total))


def _fno_create(fno: FnO, index: int) -> None:
    with fno.change_set():
        fno.create("CustomersV3", {"CustomerAccount": f"K{index:06d}", "CustomerGroupId": "10",
                                   "OrganizationName": f"Key {index}"})
