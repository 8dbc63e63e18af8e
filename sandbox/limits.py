"""Per-user service protection limits (concurrent requests and requests per sliding window), as both
Dataverse and F&O enforce them. Defaults mirror the documented values; tests lower them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field


class ServiceProtectionLimits(BaseModel):
    """None disables a limit. `retry_after` is what a concurrency rejection advertises."""

    max_concurrent: int | None = Field(default=52, ge=1)
    max_requests: int | None = Field(default=6000, ge=1)
    window_seconds: float = Field(default=300.0, gt=0)
    retry_after: int = Field(default=1, ge=0)


@dataclass(frozen=True)
class LimitRejection:
    kind: Literal["concurrent", "requests"]
    limit: int
    window_seconds: float
    retry_after: int


class ServiceProtection:
    """Counts in-flight requests and recent request times per user; thread-safe."""

    def __init__(self, limits: ServiceProtectionLimits | None = None) -> None:
        self.limits = limits or ServiceProtectionLimits()
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = defaultdict(int)
        self._recent: dict[str, deque[float]] = defaultdict(deque)

    def configure(self, limits: ServiceProtectionLimits) -> None:
        with self._lock:
            self.limits = limits

    def reset(self) -> None:
        with self._lock:
            self._in_flight.clear()
            self._recent.clear()

    def enter(self, user: str) -> LimitRejection | None:
        """Admit one request (call `leave` when it ends) or say which limit it hit."""
        now = time.monotonic()
        with self._lock:
            limits = self.limits
            recent = self._recent[user]
            while recent and now - recent[0] >= limits.window_seconds:
                recent.popleft()
            if limits.max_requests is not None and len(recent) >= limits.max_requests:
                wait = limits.window_seconds - (now - recent[0])
                return LimitRejection("requests", limits.max_requests, limits.window_seconds,
                                      max(1, math.ceil(wait)))
            if limits.max_concurrent is not None and self._in_flight[user] >= limits.max_concurrent:
                return LimitRejection("concurrent", limits.max_concurrent, limits.window_seconds,
                                      limits.retry_after)
            recent.append(now)
            self._in_flight[user] += 1
            return None

    def in_flight(self, user: str | None = None) -> int:
        """Requests admitted and not yet ended (of one user, or of all)."""
        with self._lock:
            return self._in_flight[user] if user is not None else sum(self._in_flight.values())

    def leave(self, user: str) -> None:
        with self._lock:
            self._in_flight[user] = max(0, self._in_flight[user] - 1)
