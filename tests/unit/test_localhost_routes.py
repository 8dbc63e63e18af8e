"""The local host reads the app's bindings like the Functions host's indexer and matches routes alike."""

from __future__ import annotations

import importlib
import sys

import pytest

import function_app
from p2csync.localhost import EVENT_LOOP_SETTING, _route_pattern, discover, loop_factory, run_on_local_loop


def test_discover_reads_triggers_from_function_app() -> None:
    http, queues = discover(function_app.app)
    routes = {fn.route: (fn.auth_level, fn.methods) for fn in http}
    assert routes == {"dataverse/webhook": ("FUNCTION", frozenset({"POST"})), "health": ("ANONYMOUS", frozenset({"GET"}))}
    assert {q.queue: q.name for q in queues} == {"sales-events": "sales_events", "fno-events": "fno_events"}
    # as the worker binds them: the message by the trigger's name, the actions by their annotation
    assert {(q.arg_name, q.actions_arg, q.auto_complete) for q in queues} == {("msg", "message_actions", False)}


def test_route_templates() -> None:
    pattern = _route_pattern("orders/{id}/lines/{line?}")
    assert pattern.match("/orders/42/lines").groupdict() == {"id": "42", "line": None}
    assert pattern.match("/orders/42/lines/3").groupdict() == {"id": "42", "line": "3"}
    assert pattern.match("/orders/42") is None
    assert _route_pattern("dataverse/webhook").match("/Dataverse/Webhook/")


def test_event_loop_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop by default where it is installed (requirements-dev.txt, not on Windows), asyncio's loop on request."""
    import asyncio

    monkeypatch.setenv(EVENT_LOOP_SETTING, "asyncio")
    assert loop_factory() is None
    assert issubclass(run_on_local_loop(_loop_type()), asyncio.BaseEventLoop)  # asyncio's own, not uvloop's
    monkeypatch.setenv(EVENT_LOOP_SETTING, "trio")
    with pytest.raises(ValueError, match="P2C_EVENT_LOOP must be 'uvloop' or 'asyncio', not 'trio'"):
        loop_factory()
    monkeypatch.delenv(EVENT_LOOP_SETTING)
    if sys.platform == "win32":  # no uvloop there: asyncio's loop
        assert loop_factory() is None
        return
    uvloop = importlib.import_module("uvloop")
    assert loop_factory() is uvloop.new_event_loop
    assert run_on_local_loop(_loop_type()) is uvloop.Loop


async def _loop_type() -> type:
    import asyncio

    return type(asyncio.get_running_loop())
