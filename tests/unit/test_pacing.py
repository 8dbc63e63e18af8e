"""The request pacer: the shared gate after a 429, the window learned from 429s, probing upward. A fake clock
that the fake sleep advances; a fake sliding-window service decides like the sandbox (429 + Retry-After =
seconds until the oldest request leaves, ceil, at least 1)."""

from __future__ import annotations

import logging
import math
from collections import deque

import httpx
import pytest

from p2csync.connectors.auth import StaticTokenProvider
from p2csync.connectors.errors import ThrottledError
from p2csync.connectors.http import ApiClient, HttpOptions, RetryPolicy
from p2csync.connectors.pacing import GateTooLong, PacingPolicy, RequestPacer


class FakeTime:
    """A clock and the sleep that advances it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


class Window:
    """A service admitting ``limit`` requests per sliding ``seconds`` (rejected requests are not counted)."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self.admitted: deque[float] = deque()
        self.refused = 0

    def decide(self, now: float) -> tuple[int, float | None]:
        while self.admitted and now - self.admitted[0] >= self.seconds:
            self.admitted.popleft()
        if len(self.admitted) >= self.limit:
            self.refused += 1
            return 429, float(max(1, math.ceil(self.seconds - (now - self.admitted[0]))))
        self.admitted.append(now)
        return 200, None


def pacer(time: FakeTime, **policy: float) -> RequestPacer:
    return RequestPacer(PacingPolicy(**policy), clock=time.clock, sleep=time.sleep)  # type: ignore[arg-type]


async def drive(p: RequestPacer, service: Window, time: FakeTime, requests: int, spacing: float = 0.01) -> float:
    """One request at a time, each ``spacing`` after the previous; a 429 is retried (after its Retry-After,
    as ApiClient does). Returns the time the last one was admitted."""
    for _ in range(requests):
        waited_for = None
        while True:
            ticket = await p.admit(waited_for=waited_for)
            status, retry_after = service.decide(time.now)
            gate = p.answered(ticket, status, retry_after)
            if status != 429:
                break
            assert retry_after is not None
            await time.sleep(retry_after)
            waited_for = gate
        time.now += spacing
    return time.now


async def test_nothing_is_held_back_before_the_first_429():
    time = FakeTime()
    p = pacer(time)
    for _ in range(50):
        p.answered(await p.admit(), 200)
    assert time.sleeps == [] and p.budget is None and p.period is None


async def test_after_a_429_no_request_starts_before_retry_after():
    time = FakeTime()
    p = pacer(time)
    first = await p.admit()
    time.now = 1.0
    p.answered(first, 429, 5.0)
    second = await p.admit()
    assert second.at == pytest.approx(6.0)
    assert time.sleeps == [pytest.approx(5.0)]


async def test_the_caller_that_slept_its_own_retry_after_is_not_held_twice():
    time = FakeTime()
    p = pacer(time)
    gate = p.answered(await p.admit(), 429, 3.0)
    await time.sleep(3.0)
    ticket = await p.admit(waited_for=gate)
    assert ticket.at == pytest.approx(3.0) and time.sleeps == [3.0]


async def test_a_gate_longer_than_the_caller_waits_raises_at_once():
    time = FakeTime()
    p = pacer(time)
    p.answered(await p.admit(), 429, 900.0)
    with pytest.raises(GateTooLong) as caught:
        await p.admit(max_wait=300.0)
    assert caught.value.retry_after == pytest.approx(900.0)
    assert time.sleeps == []


async def test_a_burst_teaches_the_budget_and_period_of_the_window(caplog):
    time = FakeTime()
    p = pacer(time)
    p.name = "fno"
    service = Window(10, 3.0)
    with caplog.at_level(logging.INFO, logger="p2csync.connectors.pacing"):
        await drive(p, service, time, 11, spacing=0.1)
    assert service.refused == 1
    assert p.budget == 10
    # the 11th request was refused at 1.0 with Retry-After 2: the first leaves the window at 3.0
    assert p.period is not None and 3.0 <= p.period <= 3.2
    assert caplog.messages == [f"fno: pacing at 10 requests per {p.period:.2f} s, learned from a 429"]


async def test_paced_client_runs_at_the_limit_with_one_429_in_a_long_run():
    time = FakeTime()
    p = pacer(time)
    service = Window(10, 3.0)
    last = await drive(p, service, time, 200, spacing=0.01)
    # the first contact, and one 429 per probe: a small budget is probed every eight budgets (80 requests)
    assert service.refused <= 3
    assert p.budget in (10, 11)
    # 200 requests need at least 19 more windows after the first burst; the learned period is within a second
    # of the real one (Retry-After has whole seconds): well above a naive retry loop, at or below the limit.
    assert 19 * 3.0 <= last <= 19 * (p.period or 0) + 1.0
    assert p.period is not None and p.period < 3.0 + 1.2


async def test_requests_in_flight_when_the_window_filled_are_taken_out_of_the_budget():
    time = FakeTime()
    p = pacer(time)
    admitted = [await p.admit() for _ in range(5)]  # all at the same instant: order, not time, decides
    for ticket in admitted:
        p.answered(ticket, 200)
    straggler_a, straggler_b = await p.admit(), await p.admit()  # sent, not yet answered
    learner = await p.admit()
    p.answered(learner, 429, 2.0)
    assert p.budget == 7  # the two in flight counted as admitted
    p.answered(straggler_a, 429, 2.0)
    p.answered(straggler_b, 429, 2.0)
    assert p.budget == 5  # they were refused too: the window held five
    assert p.throttles == 3


async def test_a_later_429_sets_the_budget_to_what_the_window_held():
    time = FakeTime()
    p = pacer(time)
    await drive(p, Window(10, 3.0), time, 11, spacing=0.1)
    assert p.budget == 10
    # the service's limit drops (another client of the same user, or a new limit): the pacer follows it
    service = Window(6, 3.0)
    time.now += 10
    await drive(p, service, time, 40, spacing=0.01)
    assert p.budget == 6
    assert service.refused <= 2


async def test_probing_raises_the_budget_slowly_and_an_overshoot_costs_one_429():
    time = FakeTime()
    p = pacer(time, probe_after=2.0, probe_step=0.1, probe_requests=50)
    service = Window(20, 2.0)
    await drive(p, service, time, 21, spacing=0.01)
    assert p.budget == 20
    service.limit = 30  # the limit was raised: the pacer finds it again, one step at a time
    before = service.refused
    await drive(p, service, time, 400, spacing=0.01)
    assert p.budget is not None and 26 <= p.budget <= 31
    # 400 requests, one probe at most every 50: each overshoot costs a single 429, never a burst
    assert service.refused - before <= 400 // 50 - 2


async def test_a_window_partly_used_when_the_run_began_is_found_again_by_probing():
    time = FakeTime()
    p = pacer(time)
    service = Window(20, 3.0)
    service.admitted.extend([-0.5] * 17)  # another process of the same user used most of the window
    await drive(p, service, time, 4, spacing=0.01)
    assert p.budget == 3  # what this run got before the 429: too little
    last = await drive(p, service, time, 400, spacing=0.01)
    assert p.budget is not None and 18 <= p.budget <= 24
    assert service.refused <= 6  # the first contact and one overshoot per probe series
    assert last <= 400 / 20 * 3.0 * 2  # within twice the best possible time, probes included


async def test_a_request_holds_its_place_in_the_window_until_its_answer_plus_the_period():
    time = FakeTime()
    p = pacer(time)
    slow = await p.admit()
    time.now = 0.5  # the service stamped it somewhere in between: only its answer is a safe date
    p.answered(slow, 200)
    time.now = 0.6
    p.answered(await p.admit(), 429, 1.0)
    assert p.budget == 1 and p.period is not None
    follower = await p.admit()
    assert follower.at == pytest.approx(0.5 + p.period)


async def test_idle_time_starts_a_new_run():
    time = FakeTime()
    p = pacer(time, idle_reset=5.0)
    for _ in range(3):
        p.answered(await p.admit(), 200)
    time.now = 60.0  # long idle: the window forgot those
    for _ in range(4):
        p.answered(await p.admit(), 200)
        time.now += 0.1
    p.answered(await p.admit(), 429, 1.0)
    assert p.budget == 4
    assert p.period is not None and p.period == pytest.approx(1.4 + 0.05 + 0.014, abs=0.01)


async def test_a_429_about_concurrency_or_with_pacing_off_only_closes_the_gate():
    time = FakeTime()
    p = pacer(time)
    p.answered(await p.admit(), 200)
    p.answered(await p.admit(), 429, 1.0, learn=False)
    assert p.budget is None and p.gate_until == pytest.approx(1.0)
    off = RequestPacer(PacingPolicy(enabled=False), clock=time.clock, sleep=time.sleep)  # type: ignore[arg-type]
    off.answered(await off.admit(), 429, 2.0)
    assert off.budget is None and off.gate_until == pytest.approx(2.0)


async def test_a_429_before_anything_was_admitted_teaches_no_budget():
    time = FakeTime()
    p = pacer(time)
    p.answered(await p.admit(), 429, 2.0)  # e.g. F&O's resource-based throttling: no window behind it
    assert p.budget is None and p.gate_until == pytest.approx(2.0)
    for _ in range(20):
        p.answered(await p.admit(), 200)
    assert time.sleeps == [pytest.approx(2.0)]


def test_policy_validates():
    with pytest.raises(ValueError):
        PacingPolicy(probe_after=0)
    with pytest.raises(ValueError):
        PacingPolicy(margin=-1)
    with pytest.raises(ValueError, match="max_log"):
        PacingPolicy(max_log=4)


# ------------------------------------------------------------------------------- through the ApiClient


def api(handler, time: FakeTime, *, retry: RetryPolicy | None = None) -> ApiClient:
    options = HttpOptions(transport=httpx.MockTransport(handler), sleep=time.sleep, clock=time.clock,
                          retry=retry or RetryPolicy())
    return ApiClient("https://contoso.operations.dynamics.com/", StaticTokenProvider("t"), http=options)


async def test_client_requests_share_the_gate_of_one_429():
    time = FakeTime()
    sent: list[float] = []
    answers = deque([httpx.Response(429, headers={"Retry-After": "4"}, json={"error": {"message": "busy"}})])

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(time.now)
        return answers.popleft() if answers else httpx.Response(200, json={})

    async with api(handler, time) as client:
        await client.request("GET", "data/CustomersV3")  # 429 at 0, retried at 4
        time.now = 1.0
        await client.request("GET", "data/CustomersV3")  # another request: also waits for the gate
    assert sent[0] == 0.0 and sent[1] == pytest.approx(4.0) and sent[2] >= 4.0


async def test_client_gate_longer_than_the_policy_waits_is_a_throttled_error_without_a_request():
    time = FakeTime()
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(429, headers={"Retry-After": "900"}, json={"error": {"message": "busy"}})

    async with api(handler, time) as client:
        with pytest.raises(ThrottledError) as first:
            await client.request("GET", "data/CustomersV3")
        with pytest.raises(ThrottledError) as second:
            await client.request("GET", "data/CustomersV3")
    assert first.value.retry_after == 900
    assert second.value.retry_after == pytest.approx(900) and second.value.status == 429
    assert len(sent) == 1  # the second never left: the message is deferred, not lost


async def test_client_learns_nothing_from_a_429_about_concurrent_requests():
    time = FakeTime()
    answers = deque([httpx.Response(200, json={}), httpx.Response(200, json={}), httpx.Response(
        429, headers={"Retry-After": "1"},
        json={"error": {"code": "0x80072326", "message": "Number of concurrent requests exceeded the limit of 52."}})])

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.popleft() if answers else httpx.Response(200, json={})

    async with api(handler, time) as client:
        for _ in range(4):
            await client.request("GET", "accounts")
    assert client.pacer.throttles == 1 and client.pacer.budget is None


async def test_the_log_stays_bounded_before_the_first_429_and_teaches_the_same_budget_and_period():
    """1,000 requests/s for 20 s, 16 in flight, one of them in flight throughout: a log of max_log entries learns
    what a log of every request learns (the requests sent before the refused one, the run's first send)."""
    learned = []
    for max_log in (256, 10**9):
        time = FakeTime()
        p = pacer(time, max_log=max_log)
        in_flight: deque = deque()
        longest = 0
        slow = None
        for index in range(20_000):
            ticket = await p.admit()
            if index == 5_000:
                slow = ticket  # answered last, with the 429
            else:
                in_flight.append(ticket)
            if len(in_flight) > 16:
                p.answered(in_flight.popleft(), 200)
            longest = max(longest, len(p._log))
            time.now += 0.001
        assert slow is not None
        p.answered(slow, 429, 3.0)
        learned.append((p.budget, p.period, longest))
    (budget, period, longest), (full_budget, full_period, full_longest) = learned
    assert full_longest == 20_000 and longest <= 256
    assert budget == full_budget == 5_000
    assert period == full_period == pytest.approx(20.0 + 3.0 + 0.05 + 0.23)


async def test_a_folded_log_keeps_the_window_it_learned():
    """Far more requests than the log's bound, at a limit of 2,000 per 2 s: the folded window admits no earlier
    (no more 429s) and costs at most a small share of the throughput (each request leaves at most a span's width,
    here 4/512 of the period, later than its own answer would let it)."""
    runs = []
    for max_log in (512, 10**9):
        time = FakeTime()
        p = pacer(time, max_log=max_log)
        service = Window(2_000, 2.0)
        last = await drive(p, service, time, 20_000, spacing=0.0001)
        runs.append((last, service.refused, p.budget, len(p._log)))
    (last, refused, budget, size), (full_last, full_refused, full_budget, full_size) = runs
    assert size <= 512 < full_size
    assert refused <= full_refused <= 3
    assert budget == full_budget
    assert full_last <= last <= full_last * 1.02


def test_a_full_window_waits_until_its_oldest_entry_leaves_the_log_not_in_millisecond_steps():
    """A span whose last member is a refused request sent after the span's answers leaves the log at that send:
    the wait runs until then (waiting from the answers woke every millisecond until it did)."""
    now = [0.0]
    p = RequestPacer(PacingPolicy(max_log=8, probe_after=1e9), clock=lambda: now[0])
    for index in range(10):
        now[0] = index * 0.1
        ticket = p._start(now[0])
        now[0] += 0.01
        if index == 5:
            p.answered(ticket, 429, 0.0, learn=False)  # refused: leaves the log by its send, 0.5
        elif index < 5:
            p.answered(ticket, 200)  # answered 0.01 .. 0.41
    p._fold()
    p.budget, p.period = 9, 10.0  # full: 5 answered + 4 in flight
    now[0] = 1.0
    wakes = 0
    while (wait := p._window_wait(now[0])) > 0:
        now[0] += wait
        wakes += 1
    assert wakes == 1 and now[0] == pytest.approx(10.5)  # the span's last member (sent at 0.5) plus the period
