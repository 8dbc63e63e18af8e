"""Structured logs: every record carries the change's context; in Azure each line is one JSON object.

``P2C_LOG_FORMAT``: ``json`` or ``text``. Default: ``json`` under the Functions host (``FUNCTIONS_WORKER_RUNTIME``
is set there), ``text`` elsewhere (a terminal, the tests).

The context reaches every record through a log record factory, not a filter: a filter on a handler misses
handlers added later (the Azure Monitor distro adds its own), a filter on a logger misses its children. The
attributes are named ``p2c.<field>`` so they can never clash with a caller's ``extra=`` keys (the logging
module raises on a clash). The OpenTelemetry log handler exports them as attributes (customDimensions in
Application Insights); the JSON formatter writes them under their short names.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from p2csync.telemetry.context import current

LogFormat = Literal["json", "text"]
LOG_FORMAT_SETTING = "P2C_LOG_FORMAT"
#: Set by the Functions host in every worker's environment.
FUNCTIONS_HOST_MARKER = "FUNCTIONS_WORKER_RUNTIME"
ATTRIBUTE_PREFIX = "p2c."
#: LogRecord attributes that are not caller extras.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def log_format(env: Mapping[str, str] | None = None) -> LogFormat:
    """The format the settings ask for; an unknown value is a configuration error naming the setting."""
    env = os.environ if env is None else env
    value = (env.get(LOG_FORMAT_SETTING) or "").strip().lower()
    if not value:
        return "json" if env.get(FUNCTIONS_HOST_MARKER) else "text"
    if value not in ("json", "text"):
        raise ValueError(f"{LOG_FORMAT_SETTING}: must be 'json' or 'text', not {value!r}")
    return value  # type: ignore[return-value]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the change's context and the caller's extras.
    Values that are not JSON (datetimes, UUIDs) are written as text; an exception as its formatted trace."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key.startswith(ATTRIBUTE_PREFIX):
                line[key[len(ATTRIBUTE_PREFIX):]] = value
            elif key not in _STANDARD and not key.startswith("_"):
                line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class ContextTextFormatter(logging.Formatter):
    """The usual text line, followed by the change's context in brackets when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{key[len(ATTRIBUTE_PREFIX):]}={value}" for key, value in vars(record).items()
                           if key.startswith(ATTRIBUTE_PREFIX))
        return f"{text} [{context}]" if context else text


_installed = False


def install_context_factory() -> None:
    """Make every log record carry the current change's context (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        for key, value in current().fields().items():
            setattr(record, ATTRIBUTE_PREFIX + key, value)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def configure_logging(fmt: LogFormat, root: logging.Logger | None = None) -> None:
    """Context on every record; for ``json``, the JSON formatter on the root logger's handlers (in Azure the
    Python worker's handler, which forwards the formatted line to the host), adding a stderr handler when
    there is none. ``text`` leaves existing handlers' formats alone (a terminal, the CLI, pytest) and gives
    the context suffix only to a handler it adds itself."""
    install_context_factory()
    root = root or logging.getLogger()
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else ContextTextFormatter()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        return
    if fmt == "json":
        for handler in root.handlers:
            handler.setFormatter(formatter)
