"""A record of every request a simulator answered, so tests can count retries and check who called."""

from __future__ import annotations

import threading
from datetime import datetime

from pydantic import BaseModel


class RequestRecord(BaseModel):
    method: str
    path: str
    query: str
    status: int | None  # None when the connection was dropped
    user: str | None  # systemuser id (Dataverse) or F&O user id; None when unauthenticated
    time: datetime
    duration_ms: float
    fault: str | None = None  # e.g. "throttle", "error:503", "drop", "latency", "limit:concurrent"
    #: The caller's tracing headers, as a service logs them for support: x-ms-client-request-id (F&O
    #: "Service request tracing") and x-ms-correlation-id.
    client_request_id: str | None = None
    correlation_id: str | None = None


class RequestLog:
    """Thread-safe, append-only (until cleared)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def clear(self) -> None:
        with self._lock:
            self._records = []

    def entries(self, *, method: str | None = None, path_contains: str | None = None) -> list[RequestRecord]:
        with self._lock:
            records = list(self._records)
        if method:
            records = [r for r in records if r.method == method.upper()]
        if path_contains:
            records = [r for r in records if path_contains in r.path]
        return records

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
