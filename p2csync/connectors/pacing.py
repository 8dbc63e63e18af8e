"""Pacing one client's requests to what the service admits: a shared gate after a 429 and a learned window.

Both services enforce their service-protection limits per user over a sliding window (Dataverse: 6,000
requests per 300 s; F&O's optional user-based limits the same) and answer ``429`` with ``Retry-After``
beyond it. Microsoft's guidance: after a 429 wait ``Retry-After`` before sending more, then ramp up slowly.
A client that lets each request retry on its own keeps hitting the full window (every request in flight
gets its own 429), and one that only waits runs far below the limit. ``RequestPacer`` learns the limit
from the 429s alone (the ``x-ms-ratelimit-*`` headers are documented as for debugging only):

* **gate**: after a 429 no request of this client starts before its ``Retry-After`` has elapsed;
* **budget**: at the first 429 of a burst, the requests the service admitted since the run began are the
  window's budget ``B``, and the time from the run's first request to the end of ``Retry-After`` its period
  ``P`` (the oldest request leaves the window then). From then on at most ``B`` requests start in any ``P``
  seconds: a client-side sliding window, so the service's window never overflows;
* **probe**: after ``probe_after`` periods and ``probe_requests`` admitted requests (fewer for a small budget:
  eight budgets) in which the pacer had to hold requests back without a 429, the budget grows by ``probe_step``
  of itself (at least one). A probe that overshoots costs one 429, the budget becomes what the window held and
  the step starts again small; one that does not shows the budget was below the limit (a window partly used
  by someone else when the run began, or a raised limit): the step doubles (up to the budget itself) and the
  next probe comes after half as many periods alone, so the limit is found again in a few periods. Probes at
  the limit are rare because each costs a 429 and the wait of its ``Retry-After``.

[Inferred] Not documented by Microsoft and decided here: a request answered 429 does not count against the
window (the service rejected it unprocessed); a run begins after ``idle_reset`` seconds without a request
(the budget is then unknown); the service stamps a request when it arrives, so the pacer dates a request's
place in the window by its answer (never too early) and the period, measured from a send, gets a small margin.

**Memory.** The log of requests a window needs is bounded by ``max_log`` entries whatever the request rate (before
the first 429 it spans up to ``max_run``: 120,000 requests at 200/s). When it grows past that, runs of answered
requests between those still in flight fold into spans: their count against the window, the first one's send time
and the latest date at which one of them leaves, each span at first a ``max_log / 4``-th of the window wide (0.6 s of
Dataverse's 300 s; before the first 429 of ``max_run``), the width doubling until the log fits in half of
``max_log``. What the pacer learns is unchanged: ``B`` counts the admitted requests sent before the refused one (a
span never holds a request in flight, so it is wholly before or after it) and ``P`` starts at the run's first send;
a span leaves the window when its last request does, so the sliding window only ever admits later, never earlier, by
at most a span's width.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["GateTooLong", "PaceTicket", "PacingPolicy", "RequestPacer"]

log = logging.getLogger("p2csync.connectors.pacing")

#: Doublings of a span's width tried before the log is left as folded as it gets (in-flight requests stay apart).
_MAX_WIDENINGS = 24

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PacingPolicy:
    """How a client paces itself. ``enabled=False`` keeps only the shared gate after a 429."""

    enabled: bool = True
    probe_after: float = 4.0
    probe_requests: int = 200
    probe_step: float = 0.125
    idle_reset: float = 5.0
    max_run: float = 600.0
    margin: float = 0.05
    margin_share: float = 0.01
    max_margin: float = 1.0
    max_log: int = 2048  # entries of the request log before runs of answered requests fold into spans (~330 KB)

    def __post_init__(self) -> None:
        if self.probe_after <= 0 or self.idle_reset <= 0 or self.max_run <= 0 or self.probe_requests < 0:
            raise ValueError("probe_after, idle_reset and max_run must be positive, probe_requests not negative")
        if self.max_log < 8:
            raise ValueError(f"max_log must be at least 8, not {self.max_log}")
        if self.probe_step < 0 or self.margin < 0 or self.margin_share < 0 or self.max_margin < 0:
            raise ValueError("probe_step and margins must not be negative")

    def period_with_margin(self, observed: float) -> float:
        return observed + min(self.max_margin, self.margin + self.margin_share * observed)


class GateTooLong(Exception):
    """The gate stays closed longer than the caller is willing to wait (``retry_after`` seconds left)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"throttled for another {retry_after:.1f} s")
        self.retry_after = retry_after


@dataclass(eq=False, slots=True)
class PaceTicket:
    """One request let through: when it started, and in which learning epoch."""

    at: float
    epoch: int
    seq: int
    counted: bool = True  # against the window: in flight or admitted by the service
    done: float | None = None  # when it was answered: the service stamped it between ``at`` and this
    logged: bool = True  # still in the pacer's log (itself, not folded into a span)

    @property
    def weight(self) -> int:
        """Requests against the window: 1 or 0."""
        return 1 if self.counted else 0

    @property
    def leaves(self) -> float | None:
        """When it leaves the log: a counted request by its answer (None in flight), a refused one by its send."""
        return self.done if self.counted else self.at


@dataclass(eq=False, slots=True)
class _Span:
    """Consecutive answered requests folded into one log entry: what the window needs of them, dated so that the span
    leaves no earlier than the last of them would have."""

    at: float  # the first one's send
    seq: int  # the last one's sequence number
    weight: int  # how many count against the window
    leaves: float  # when the last of them leaves the log
    low: float  # when the first of them leaves: the span is ``leaves - low`` wide

    @classmethod
    def of(cls, entry: PaceTicket | _Span) -> _Span:
        """``entry`` as a span (a ticket folded leaves the log: a late ``_uncount`` no longer touches the count)."""
        if isinstance(entry, _Span):
            return entry
        entry.logged = False
        leaves = entry.leaves
        assert leaves is not None  # only answered requests fold
        return cls(entry.at, entry.seq, entry.weight, leaves, leaves)

    def absorb(self, other: _Span, width: float) -> bool:
        """Take in the next span if this one stays within ``width``; whether it did."""
        if max(self.leaves, other.leaves) - min(self.low, other.low) > width:
            return False
        self.seq, self.weight = other.seq, self.weight + other.weight
        self.leaves, self.low = max(self.leaves, other.leaves), min(self.low, other.low)
        return True


_Entry = PaceTicket | _Span


@dataclass
class RequestPacer:
    """The gate and learned window of one client (one per system and process, shared by every request)."""

    policy: PacingPolicy = field(default_factory=PacingPolicy)
    clock: Clock = time.monotonic
    sleep: Sleep | None = None
    name: str = "http"  # the system, for the log line that says what was learned
    budget: int | None = None
    period: float | None = None
    gate_until: float = -math.inf
    throttles: int = 0
    _log: deque[_Entry] = field(default_factory=deque)
    _fold_at: int = 0  # the log's length that folds it next (0: max_log)
    _counted: int = 0
    _epoch: int = 0
    _seq: int = 0
    _learned_seq: int = -1  # the request whose 429 set the budget
    _admitted_since: int = 0  # answered without a 429 since the budget last changed
    _step: float | None = None  # the next probe's share of the budget
    _adjusted_at: float = -math.inf
    _held_back: bool = False
    _last_send: float | None = None
    _offset: float = 0.0  # time the sleeps said passed and the clock did not (a test's instant sleep)

    def now(self) -> float:
        return self.clock() + self._offset

    async def admit(self, *, max_wait: float = math.inf, waited_for: float | None = None) -> PaceTicket:
        """Wait until a request may start, and count it. ``waited_for``: the gate this caller already slept
        through itself (a retried 429); ``GateTooLong`` when the gate stays closed beyond ``max_wait``."""
        while True:
            now = self.now()
            if self.gate_until > now and (waited_for is None or self.gate_until > waited_for):
                wait = self.gate_until - now
                if wait > max_wait:
                    raise GateTooLong(wait)
                await self._sleep(now + wait)
                continue
            wait = self._window_wait(now)
            if wait <= 0:
                return self._start(now)
            self._held_back = True
            await self._sleep(now + wait)

    def answered(self, ticket: PaceTicket, status: int | None, retry_after: float | None = None, *,
                 learn: bool = True) -> float:
        """Record the answer to ``ticket``'s request; returns the gate (a 429 closes it for ``Retry-After``).
        ``learn=False``: a 429 that is not about the request window (e.g. too many concurrent requests)."""
        now = self.now()
        if status != 429:
            ticket.done = now
            self._admitted_since += 1
            return self.gate_until
        self.throttles += 1
        self._uncount(ticket)
        self.gate_until = max(self.gate_until, now + (1.0 if retry_after is None else retry_after))
        if not learn or not self.policy.enabled:
            return self.gate_until
        if ticket.epoch == self._epoch:  # the first 429 of a burst: learn from it
            self._learn(ticket, now)
        elif ticket.epoch == self._epoch - 1 and ticket.seq < self._learned_seq and self.budget is not None:
            self.budget = max(1, self.budget - 1)  # counted in the budget, but the service refused it
        return self.gate_until

    # -- internals -------------------------------------------------------------------------------------
    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (a retry's own wait); whatever the clock did not advance counts as passed anyway,
        so an instant test sleep with the real clock never spins on the gate or the window."""
        until = self.now() + seconds
        await (self.sleep or asyncio.sleep)(seconds)
        self._offset += max(0.0, until - self.now())

    async def _sleep(self, until: float) -> None:
        await self.pause(until - self.now())

    def _window_wait(self, now: float) -> float:
        """Seconds until the learned window has room (0: now)."""
        if self.budget is None or self.period is None:
            return 0.0
        self._prune(now - self.period)
        self._maybe_probe(now)
        if self._counted < self.budget:
            return 0.0
        oldest = next(entry for entry in self._log if entry.weight)
        # From when it leaves the log (``_prune``): a request's answer; a span's last member, which may be a refused
        # request sent after the span's answers (waiting from those would wake every millisecond until then).
        leaves = oldest.leaves
        return max((now if leaves is None else leaves) + self.period - now, 1e-3)

    def _start(self, now: float) -> PaceTicket:
        if self.budget is None:
            idle = self._last_send is not None and now - self._last_send >= self.policy.idle_reset
            if idle:
                for entry in self._log:
                    if isinstance(entry, PaceTicket):
                        entry.logged = False
                self._log.clear()
                self._counted = 0
            self._prune(now - self.policy.max_run)
        self._seq += 1
        ticket = PaceTicket(now, self._epoch, self._seq)
        self._log.append(ticket)
        self._counted += 1
        self._last_send = now
        if len(self._log) > (self._fold_at or self.policy.max_log):
            self._fold()
        return ticket

    def _fold(self) -> None:
        """Fold runs of answered requests into spans (see **Memory** above) until the log holds at most half of
        ``max_log`` entries, or as few as the requests in flight between them allow; the next fold comes when it
        has doubled again, so folding costs a constant per request."""
        width = 4 * (self.period or self.policy.max_run) / self.policy.max_log
        for _ in range(_MAX_WIDENINGS):
            folded: deque[_Entry] = deque()
            for entry in self._log:
                last = folded[-1] if folded else None
                if entry.leaves is None:  # in flight: stays itself, a 429 may still come for it
                    folded.append(entry)
                    continue
                span = _Span.of(entry)
                if not (isinstance(last, _Span) and last.absorb(span, width)):
                    folded.append(span)
            self._log = folded
            if len(folded) <= self.policy.max_log // 2:
                break
            width *= 2
        self._fold_at = max(self.policy.max_log, 2 * len(self._log))

    def _prune(self, before: float) -> None:
        """Forget what left the window: a counted request by its answer time (the service stamped it on arrival,
        somewhere before that; one still in flight stays), a refused one by its send time."""
        while self._log:
            head = self._log[0]
            left = head.leaves
            if left is None or left > before:
                return
            self._log.popleft()
            self._counted -= head.weight
            if isinstance(head, PaceTicket):
                head.logged = False

    def _uncount(self, ticket: PaceTicket) -> None:
        if ticket.counted:
            ticket.counted = False
            if ticket.logged:
                self._counted -= 1

    def _learn(self, ticket: PaceTicket, now: float) -> None:
        # a span holds no request in flight: its requests are all before ``ticket`` or all after it
        admitted_before = sum(entry.weight for entry in self._log if entry.seq < ticket.seq)
        if admitted_before == 0 and self.budget is None:
            return  # refused before anything was admitted: says nothing about a window (F&O's resource-based 429)
        if self.budget is None or self.period is None:
            first = self._log[0].at if self._log else ticket.at
            self.period = self.policy.period_with_margin(max(self.gate_until - first, 1e-3))
        self.budget = max(1, admitted_before)
        log.info("%s: pacing at %d requests per %.2f s, learned from a 429", self.name, self.budget, self.period)
        self._epoch += 1
        self._learned_seq = ticket.seq
        self._step = self.policy.probe_step
        self._adjusted(now)

    def _adjusted(self, now: float) -> None:
        self._adjusted_at = now
        self._admitted_since = 0
        self._held_back = False

    def _maybe_probe(self, now: float) -> None:
        assert self.budget is not None and self.period is not None
        step = self.policy.probe_step if self._step is None else self._step
        # At the limit (no probe has succeeded since the last 429) a probe waits for enough requests that its
        # 429 is a small share; once one succeeded the budget is below the limit and each period counts.
        climbing = step > self.policy.probe_step
        after = self.policy.probe_after * self.period / (2 if climbing else 1)
        if self._held_back and now - self._adjusted_at >= after and step > 0 \
                and (climbing or self._admitted_since >= min(self.policy.probe_requests, 8 * self.budget)):
            self.budget += max(1, int(self.budget * step))
            log.info("%s: trying %d requests per %.2f s", self.name, self.budget, self.period)
            self._step = min(1.0, step * 2)
            self._adjusted(now)
