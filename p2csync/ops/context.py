"""The objects the operator commands work on, built from the same settings the runtime reads.

The commands talk to the ledger and the queues only, never to Dataverse or F&O, so the URLs of those
systems are not required here. [Inferred] Without a ledger or queue setting, the local host's defaults apply
(.var/ledger.sqlite and .var/queue.sqlite in the repository), so ``status`` next to ``run`` sees its files.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2csync.ledger.base import Ledger
from p2csync.settings import ROOT, Settings, load_local_settings

_UNUSED_URL = "http://not-used-by-operator-commands.invalid"


def ops_settings(settings_file: Path | None, env: dict[str, str] | None = None) -> Settings:
    """Settings from the environment (and ``settings_file``'s Values), with the local host's defaults."""
    environ = os.environ if env is None else env
    if settings_file is not None and settings_file.exists():
        load_local_settings(settings_file, environ)  # type: ignore[arg-type]
    values = dict(environ)
    values.setdefault("DATAVERSE_URL", _UNUSED_URL)
    values.setdefault("FNO_URL", _UNUSED_URL)
    if not values.get("P2C_LEDGER_PATH") and not values.get("LEDGER_TABLE_ENDPOINT"):
        values["P2C_LEDGER_PATH"] = str(ROOT / ".var" / "ledger.sqlite")
    if not values.get("P2C_LOCAL_QUEUE_PATH") and not values.get("ServiceBusConnection__fullyQualifiedNamespace"):
        values["P2C_LOCAL_QUEUE_PATH"] = str(ROOT / ".var" / "queue.sqlite")
    return Settings.from_env(values)


@dataclass
class OpsContext:
    """Ledger, queue transport (which is also the QueueAdmin), queue names and the flow registry."""

    settings: Settings
    ledger: Ledger
    transport: Any
    registry: Any = None
    queues: list[str] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings, *, with_registry: bool = True) -> OpsContext:
        from p2csync.runtime import _ledger, _transport

        registry = None
        if with_registry:
            from handlers import build_registry
            from mappings import load_mappings

            registry = build_registry(load_mappings(settings.mappings_dir))
        return cls(settings=settings, ledger=_ledger(settings), transport=_transport(settings), registry=registry,
                   queues=[settings.sales_events_queue, settings.fno_events_queue])

    @property
    def flows(self) -> list[str]:
        """The flows the mappings run (the names ``pause`` takes)."""
        return sorted({h.flow for h in getattr(self.registry, "handlers", [])})

    async def aclose(self) -> None:
        if closer := getattr(self.transport, "aclose", None):
            await closer()
        elif (queue := getattr(self.transport, "queue", None)) is not None:
            queue.close()
        close = getattr(self.ledger, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result
