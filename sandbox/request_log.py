"""A record of every request a simulator answered, so tests can count retries and check who called."""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime

from pydantic import BaseModel

#: How many records of each history (requests, delivery attempts, system jobs, event errors) a simulator keeps;
#: the oldest go first. Far more than any test looks at, and bounded, so a 10,000-event benchmark run does not
#: grow the sandbox's memory. None: keep everything.
HISTORY_LIMIT: int | None = 10_000
#: How many delivered payloads (whole webhook contexts / F&O event messages, several KB each) are kept.
PAYLOAD_HISTORY_LIMIT: int | None = 1_000


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
    """Thread-safe, append-only (until cleared), keeping the last `limit` records."""

    def __init__(self, limit: int | None = HISTORY_LIMIT) -> None:
        self._lock = threading.Lock()
        self._records: deque[RequestRecord] = deque(maxlen=limit)

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

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
