"""The local host's queue pump: at most maxConcurrentCalls invocations at once, and one receive for as many
messages as there are free calls (not one lock round trip per message); ``run`` takes maxConcurrentCalls from
host.json as the Functions host does."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from p2csync.cli import host_max_concurrent_calls
from p2csync.localhost import LocalHost
from p2csync.settings import SettingsError


class Consumer:
    """A queue of numbered messages that records how many each receive asked for."""

    def __init__(self, count: int) -> None:
        self.waiting = list(range(count))
        self.asked: list[int] = []
        self.completed: list[int] = []

    async def receive_wait(self, queue: str, max_messages: int = 1, timeout: float | timedelta = 5.0) -> list[Any]:
        self.asked.append(max_messages)
        batch, self.waiting = self.waiting[:max_messages], self.waiting[max_messages:]
        if not batch:
            await asyncio.sleep(0.01)
        return batch

    async def complete(self, message: Any) -> None:
        self.completed.append(message)

    async def abandon(self, message: Any) -> None:
        raise AssertionError("nothing fails here")

    async def dead_letter(self, message: Any, reason: str | None = None, description: str | None = None) -> None:
        raise AssertionError("nothing fails here")

    async def renew_lock(self, message: Any) -> datetime:
        return datetime.now(UTC) + timedelta(minutes=1)


async def test_the_pump_fills_free_calls_with_one_receive_and_never_runs_more() -> None:
    gate, running, peak = asyncio.Event(), [0], [0]
    app = func.FunctionApp()

    @app.service_bus_queue_trigger(arg_name="msg", queue_name="work", connection="ServiceBusConnection",
                                   auto_complete_messages=True)
    async def work(msg: Any) -> None:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await gate.wait()
        running[0] -= 1

    consumer = Consumer(10)
    host = LocalHost(app, consumer, function_key="k", port=0, max_concurrent_calls=4)
    pump = asyncio.create_task(host._pump(host.queue_functions[0]))
    try:
        for _ in range(100):
            if running[0] == 4:
                break
            await asyncio.sleep(0.01)
        assert running[0] == 4 and consumer.asked[0] == 4  # the first receive asked for every free call
        gate.set()
        for _ in range(300):
            if len(consumer.completed) == 10:
                break
            await asyncio.sleep(0.01)
    finally:
        host.stop()
        await asyncio.wait_for(pump, 10)
    assert sorted(consumer.completed) == list(range(10)) and peak[0] == 4
    assert len([n for n in consumer.asked if n > 0]) < 10  # fewer receives than messages


def test_run_takes_max_concurrent_calls_from_host_json(tmp_path: Path) -> None:
    assert host_max_concurrent_calls() == json.loads(
        (Path(__file__).resolve().parents[2] / "host.json").read_text())["extensions"]["serviceBus"]["maxConcurrentCalls"]
    assert host_max_concurrent_calls(tmp_path / "missing.json") == 16  # the Functions host's own default
    bad = tmp_path / "host.json"
    bad.write_text(json.dumps({"extensions": {"serviceBus": {"maxConcurrentCalls": 0}}}))
    with pytest.raises(SettingsError, match="maxConcurrentCalls must be a positive whole number"):
        host_max_concurrent_calls(bad)
