"""Figure 3, throttled throughput: F&O enforces a scaled-down service-protection window (sandbox/limits.py:
at most R requests per W seconds per user, 52 concurrent, 429 + Retry-After beyond). Accounts flow through
the real path faster than the limit allows; the product must run at the limit (>= 95%) with <= 1% of its
requests answered 429.

The limit is a sliding window, so a client can at best send R at once and R again W seconds later: over a run
whose successes span T seconds the most the limit admits is R * (floor(T / W) + 1). Achieved = successes / that.

The window is 10 s (100 requests, 10/s, well below what the real path pushes on 2 cores): ``Retry-After`` has whole
seconds, as both services send it, so a client learns the window's length to within a second; the real window
is 300 s (0.3%), a 3 s window would have made that second a third of it. Four windows, so the 429s of the first
contact (every request in flight when the window fills is refused) are weighed against a run, as in service.
"""

from __future__ import annotations

import asyncio
import math

from bench.common import Figure, at_least, at_most, pick, progress
from bench.world import create_accounts, local_world, settle
from sandbox.limits import ServiceProtectionLimits


async def run() -> list[Figure]:
    bench = "3 throttled throughput"
    window, per_window, windows = (1.0, 4, 2) if pick(0, 1) == 0 else (10.0, 100, 4)
    records = per_window * windows
    async with local_world(16) as (stack, _dv_rec, fno_rec):
        sandbox = stack.sandbox
        await asyncio.to_thread(create_accounts, sandbox, "WARM", 2)
        await settle(stack)
        await asyncio.sleep(window)  # the warm-up's requests leave the window
        fno = stack.runtime.fno
        sandbox.fno.protection.configure(ServiceProtectionLimits(max_concurrent=52, max_requests=per_window,
                                                                 window_seconds=window, retry_after=1))
        fno_rec.calls.clear()
        await asyncio.to_thread(create_accounts, sandbox, "THR", records)
        await settle(stack, timeout=records * window)
        calls = list(fno_rec.calls)
        learned = f"budget {fno.pacer.budget} per {fno.pacer.period or 0:.2f} s"
    ok = [c for c in calls if c.status is not None and c.status < 400]
    throttled = [c for c in calls if c.status == 429]
    span = max(c.ended for c in ok) - min(c.started for c in ok)
    allowed = per_window * (math.floor(span / window) + 1)
    achieved = len(ok) / allowed
    share = len(throttled) / len(calls)
    progress(f"throttle: {len(ok)} writes in {span:.1f} s (limit {per_window}/{window:g} s allows {allowed}), "
             f"{len(throttled)} of {len(calls)} requests 429; the client learned {learned}")
    detail = (f"{len(ok)} F&O writes in {span:.1f} s under {per_window} requests / {window:g} s (admits "
              f"{allowed}); {len(throttled)}/{len(calls)} answered 429; learned {learned}")
    return [at_least(bench, "achieved share of the limit", round(achieved * 100, 1), 95, "%", detail),
            at_most(bench, "requests answered 429", round(share * 100, 2), 1, "%", detail)]
