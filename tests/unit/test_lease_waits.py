"""A message waiting for a record another worker holds comes back within seconds a few times (a live holder
finishes soon: the 20 line events of one document sync once, then are skipped), then at the lease's end (a
crashed holder frees the record within one lease), never later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from p2csync.ledger.base import LeaseBusy
from p2csync.runtime import LEASE_WAIT_CAP, LEASE_WAITS, SHORT_LEASE_WAITS, InboundMessage, SyncRuntime
from p2csync.settings import Settings


async def test_waits_back_off_to_the_cap_and_never_past_the_lease(runtime_env: dict[str, str]) -> None:
    runtime = SyncRuntime.from_settings(Settings.from_env())
    try:
        long_lease = LeaseBusy("orders:salesorder:1", "other", datetime.now(UTC) + timedelta(seconds=60))
        for waits in range(SHORT_LEASE_WAITS):
            message = InboundMessage(queue="sales-events", body=b"{}", message_id=f"m{waits}",
                                     application_properties={LEASE_WAITS: waits})
            deferred = runtime._wait_for_lease(long_lease, message)
            assert deferred.lease_wait and 0.2 <= deferred.delay <= LEASE_WAIT_CAP, (waits, deferred.delay)
        message = InboundMessage(queue="sales-events", body=b"{}", message_id="late",
                                 application_properties={LEASE_WAITS: SHORT_LEASE_WAITS})
        assert runtime._wait_for_lease(long_lease, message).delay >= 59  # then at the lease's end (a dead holder)
        short_lease = LeaseBusy("orders:salesorder:1", "other", datetime.now(UTC) + timedelta(seconds=0.3))
        message = InboundMessage(queue="sales-events", body=b"{}", message_id="m", application_properties={LEASE_WAITS: 9})
        assert runtime._wait_for_lease(short_lease, message).delay <= 0.3 + 0.5
    finally:
        await runtime.aclose()
