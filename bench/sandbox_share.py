"""Figure 7, the sandbox is not the bottleneck.

- In figure 5's run (the product as its own process, the sandbox in this one): the CPU each side spent on the
  same events. The sandbox should cost less than the product.
- Key lookups do not grow with the table: the last 500 of 5,000 writes cost about what the first 500 did
  (Dataverse upserts by alternate key over the Web API, in process; F&O creates each in its own change set, as
  a `$batch` writes them). Before the keys were indexed the ratio was ~30x. The two windows run side by side,
  into a store that is empty and one that holds the 4,500 rows before them. They start on a frozen heap
  (`gc.freeze()`): the cyclic collector's walks over the rows already stored grow with any heap and are not what
  this figure is about (without it, F&O's 305-column rows alone made the last window 1.2-1.5x). A window's cost
  is the CPU time of this thread (the machine is shared), the median of its 10 slices times 10, the slices of the
  two windows alternating (a slice that a context switch or a collection landed in does not decide it).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import httpx

from bench.coldstart import host_run, memory_events
from bench.common import Figure, at_most, median, pick, progress
from sandbox.dataverse import Dataverse
from sandbox.dataverse_tables import INTEGRATION_TOKEN
from sandbox.fno import FnO

Write = Callable[[int], Awaitable[None]]
#: Table growth a key lookup must not feel: the last window of writes against the first.
GROWTH_LIMIT = 1.3


async def run() -> list[Figure]:
    bench = "7 sandbox share"
    events = memory_events()  # figure 5's run: the host is run once for both
    host = await host_run(events)
    share = host.sandbox_cpu / (host.sandbox_cpu + host.host_cpu)
    per_event = 1000 / (events - max(1, events // 3))
    detail = (f"sandbox {host.sandbox_cpu * per_event:.1f} ms CPU/event, product {host.host_cpu * per_event:.1f} ms "
              f"CPU/event; {(events - max(1, events // 3)) / host.seconds:.0f} events/s end to end")
    figures = [at_most(bench, "sandbox share of CPU (sandbox + product)", round(share * 100, 1), 50, "%", detail)]
    total, window = pick(200, 5000), pick(20, 500)
    progress(f"sandbox key growth: {total} writes per simulator, 3 runs")
    dv_runs = [await _dataverse_growth(total, window) for _ in range(3)]
    fno_runs = [await _fno_growth(total, window) for _ in range(3)]
    for name, runs in ((f"Dataverse upsert by key: last {window} of {total} / first {window}", dv_runs),
                       (f"F&O create in a change set: last {window} of {total} / first {window}", fno_runs)):
        ratio = median(last / first for first, last in runs)
        first, last = sorted(runs, key=lambda r: r[1] / r[0])[1]
        figures.append(at_most(bench, name, round(ratio, 2), GROWTH_LIMIT, "x",
                               f"median of 3; first {first * 1000 / window:.2f} ms CPU/write, "
                               f"last {last * 1000 / window:.2f} ms CPU/write"))
    return figures


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Objects alive now are left out of the collector's walks while timing (see the module docstring)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _paired_cost(first: Write, last: Write, total: int, window: int, slices: int = 10) -> tuple[float, float]:
    """CPU seconds of this thread for the first `window` writes (into a store holding 0..window rows) and the last
    (into one already holding total - window): slices of the two alternate, so both see the same machine; each
    window's cost is its median slice times the number of slices."""
    size = max(1, window // slices)
    costs: tuple[list[float], list[float]] = ([], [])
    with _frozen_heap():
        for start in range(0, window, size):
            for write, offset, spent in ((first, 0, costs[0]), (last, total - window, costs[1])):
                started = time.thread_time()
                for index in range(offset + start, offset + min(start + size, window)):
                    await write(index)
                spent.append(time.thread_time() - started)
    return median(costs[0]) * len(costs[0]), median(costs[1]) * len(costs[1])


async def _dataverse_growth(total: int, window: int) -> tuple[float, float]:
    """Upserts (PATCH accounts(accountnumber=...), each a create) over the Web API app: into an empty
    organisation and into one holding `total - window` accounts (created through the store, to keep it short)."""
    small, big = Dataverse(), Dataverse()
    for index in range(total - window):
        big.create("account", {"name": f"Fill {index}", "accountnumber": f"F{index:06d}"})
    try:
        async with _api(small) as small_client, _api(big) as big_client:
            def upsert(client: httpx.AsyncClient) -> Write:
                async def write(index: int) -> None:
                    response = await client.patch(f"accounts(accountnumber='K{index:06d}')",
                                                  json={"name": f"Key {index}"})
                    response.raise_for_status()
                return write

            return await _paired_cost(upsert(small_client), upsert(big_client), total, window)
    finally:
        small.close()
        big.close()


def _api(dv: Dataverse) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=dv.app), base_url="http://sandbox/api/data/v9.2/",
                             headers={"Authorization": f"Bearer {INTEGRATION_TOKEN}"})


async def _fno_growth(total: int, window: int) -> tuple[float, float]:
    """F&O creates, each in its own change set: into an empty environment and into one holding `total - window`
    customers."""
    small, big = FnO(), FnO()
    for index in range(total - window):
        _fno_create(big, index + total)  # other numbers than the measured ones

    def create(fno: FnO) -> Write:
        async def write(index: int) -> None:
            _fno_create(fno, index)
        return write

    return await _paired_cost(create(small), create(big), total, window)


def _fno_create(fno: FnO, index: int) -> None:
    with fno.change_set():
        fno.create("CustomersV3", {"CustomerAccount": f"K{index:06d}", "CustomerGroupId": "10",
                                   "OrganizationName": f"Key {index}"})
