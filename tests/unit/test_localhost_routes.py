"""The local host reads the app's bindings like the Functions host's indexer and matches routes alike."""

from __future__ import annotations

import function_app
from p2csync.localhost import _route_pattern, discover


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
