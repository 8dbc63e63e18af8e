"""Figure 7, the sandbox is not the bottleneck: in figure 5's run (the product as its own process, the sandbox
in this one) the CPU each side spent on the same events. The sandbox should cost less than the product."""

from __future__ import annotations

from bench.coldstart import host_run
from bench.common import Figure, at_most, pick


async def run() -> list[Figure]:
    bench = "7 sandbox share"
    events = pick(12, 1500)
    host = await host_run(events)
    share = host.sandbox_cpu / (host.sandbox_cpu + host.host_cpu)
    per_event = 1000 / (events - max(1, events // 3))
    detail = (f"sandbox {host.sandbox_cpu * per_event:.1f} ms CPU/event, product {host.host_cpu * per_event:.1f} ms "
              f"CPU/event; {(events - max(1, events // 3)) / host.seconds:.0f} events/s end to end")
    return [at_most(bench, "sandbox share of CPU (sandbox + product)", round(share * 100, 1), 50, "%", detail)]
