"""Fault injection shared by both simulators: latency, throttling (429), server errors and dropped
connections, chosen per request by probability or for "the next N requests", reproducible with a seed.

The integration's retry policy is tested against these, so every decision is deterministic for a given
seed and request order.
"""

from __future__ import annotations

import random
import threading
from typing import Literal

from pydantic import BaseModel, Field, model_validator

FaultKind = Literal["latency", "throttle", "error", "drop"]


class FaultRule(BaseModel):
    """One fault. It applies to the next `count` matching requests, or to each matching request with
    `probability` (0..1) while `count` is None."""

    kind: FaultKind
    count: int | None = Field(default=None, ge=0, description="apply to the next N matching requests")
    probability: float = Field(default=1.0, ge=0.0, le=1.0)
    status: int = Field(default=503, description="HTTP status for kind=error (500, 502, 503, 504, ...)")
    retry_after: int = Field(default=1, ge=0, description="Retry-After seconds for kind=throttle")
    delay: float = Field(default=0.0, ge=0.0, description=(
        "round trip in seconds for kind=latency: the request is served after half of it, and every answer "
        "(401s and 429s too) leaves no sooner than all of it after arrival"))
    method: str | None = Field(default=None, description="only requests with this method")
    path_contains: str | None = Field(default=None, description="only requests whose path contains this")

    @model_validator(mode="after")
    def _check(self) -> FaultRule:
        if self.kind == "error" and not 400 <= self.status <= 599:
            raise ValueError("error faults need a 4xx/5xx status")
        return self

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        if self.path_contains and self.path_contains not in path:
            return False
        return True


class FaultConfig(BaseModel):
    """Body of `POST /_sandbox/faults`: replace (default) or extend the rules, optionally reseed."""

    rules: list[FaultRule] = Field(default_factory=list)
    seed: int | None = None
    replace: bool = True


class FaultDecision(BaseModel):
    """What to do to one request. `latency` happens first, then at most one of drop/throttle/error."""

    latency: float = 0.0
    outcome: Literal["drop", "throttle", "error"] | None = None
    status: int = 0
    retry_after: int = 0

    @property
    def label(self) -> str | None:
        if self.outcome == "error":
            return f"error:{self.status}"
        if self.outcome:
            return self.outcome
        return "latency" if self.latency else None


class FaultInjector:
    """Thread-safe rule set with its own seeded random generator."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._seed = seed
        self._random = random.Random(seed)

    # -- configuration -----------------------------------------------------------------------------
    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def configure(self, config: FaultConfig) -> None:
        with self._lock:
            if config.replace:
                self._rules = []
            self._rules.extend(config.rules)
            if config.seed is not None:
                self._seed = config.seed
                self._random = random.Random(config.seed)

    def clear(self) -> None:
        with self._lock:
            self._rules = []
            self._random = random.Random(self._seed)

    def seed(self, seed: int) -> None:
        with self._lock:
            self._seed = seed
            self._random = random.Random(seed)

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return [rule.model_copy() for rule in self._rules]

    # -- shorthands --------------------------------------------------------------------------------
    def latency(self, seconds: float, *, count: int | None = None, probability: float = 1.0,
                method: str | None = None, path_contains: str | None = None) -> FaultRule:
        return self.add(FaultRule(kind="latency", delay=seconds, count=count, probability=probability,
                                  method=method, path_contains=path_contains))

    def throttle(self, *, count: int | None = 1, retry_after: int = 1, probability: float = 1.0,
                 method: str | None = None, path_contains: str | None = None) -> FaultRule:
        return self.add(FaultRule(kind="throttle", retry_after=retry_after, count=count,
                                  probability=probability, method=method, path_contains=path_contains))

    def error(self, status: int = 503, *, count: int | None = 1, probability: float = 1.0,
              method: str | None = None, path_contains: str | None = None) -> FaultRule:
        return self.add(FaultRule(kind="error", status=status, count=count, probability=probability,
                                  method=method, path_contains=path_contains))

    def drop(self, *, count: int | None = 1, probability: float = 1.0, method: str | None = None,
             path_contains: str | None = None) -> FaultRule:
        return self.add(FaultRule(kind="drop", count=count, probability=probability, method=method,
                                  path_contains=path_contains))

    # -- decision ----------------------------------------------------------------------------------
    def decide(self, method: str, path: str) -> FaultDecision:
        """Consume matching rules in order; exhausted `count` rules are removed."""
        decision = FaultDecision()
        with self._lock:
            for rule in list(self._rules):
                if not rule.matches(method, path):
                    continue
                if rule.kind != "latency" and decision.outcome is not None:
                    continue
                if rule.count is None and self._random.random() >= rule.probability:
                    continue
                if rule.count is not None:
                    if rule.count <= 0:
                        continue
                    if rule.probability < 1.0 and self._random.random() >= rule.probability:
                        continue
                    rule.count -= 1
                    if rule.count == 0:
                        self._rules.remove(rule)
                if rule.kind == "latency":
                    decision.latency += rule.delay
                elif rule.kind == "drop":
                    decision.outcome = "drop"
                elif rule.kind == "throttle":
                    decision.outcome = "throttle"
                    decision.retry_after = rule.retry_after
                else:
                    decision.outcome = "error"
                    decision.status = rule.status
        return decision
