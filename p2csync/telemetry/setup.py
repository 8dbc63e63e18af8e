"""Turning telemetry on: structured logs always, export to Application Insights when configured.

Export follows the Functions guidance for Python ("Use OpenTelemetry with Azure Functions"): host.json
``"telemetryMode": "OpenTelemetry"`` and the app setting ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``,
with which the Python worker itself calls the Azure Monitor distro's ``configure_azure_monitor`` at start
(the guide: with that setting, skip calling it yourself). Only where the worker does not (that setting off,
or a process outside the Functions host such as an operator command with ``APPLICATIONINSIGHTS_CONNECTION_STRING``
set) does this module call it, importing the distro lazily: it costs hundreds of milliseconds of imports,
and a cold start that exports nothing must not pay them.

Identity-based ingestion: Application Insights has local authentication disabled (infra/modules/monitoring.bicep),
and the exporter reads ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` (``Authorization=AAD;ClientId=<id>``, set
by infra/modules/functionapp.bicep) to take a token with that managed identity; no key is involved.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from p2csync.telemetry.logs import configure_logging, log_format

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
WORKER_TELEMETRY = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
#: [Inferred] When this process configures the distro itself, only the integration's own loggers are
#: exported: under the Functions host the root logger's records already reach Application Insights through
#: the host, and exporting them again would count every line twice.
EXPORTED_LOGGER = "p2csync"

log = logging.getLogger("p2csync.telemetry")
_configured = False


def worker_exports(env: Mapping[str, str]) -> bool:
    """True when the Functions Python worker configures the Azure Monitor distro itself."""
    return (env.get(WORKER_TELEMETRY) or "").strip().lower() in ("true", "1")


def exporting(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool((env.get(CONNECTION_STRING) or "").strip())


def configure(env: Mapping[str, str] | None = None) -> None:
    """Once per process: logs in the configured format with the change's context; the Azure Monitor distro
    when a connection string is set and the worker does not configure it. Never raises for an export
    problem (telemetry must not stop the sync); a bad P2C_LOG_FORMAT is a configuration error."""
    global _configured
    if _configured:
        return
    env = os.environ if env is None else env
    configure_logging(log_format(env))
    _configured = True
    if exporting(env) and not worker_exports(env):
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure_azure_monitor(connection_string=env[CONNECTION_STRING].strip(), logger_name=EXPORTED_LOGGER)
        except Exception as exc:  # a missing package or a bad connection string: keep syncing, say why
            log.warning("telemetry export to Application Insights is off: %s: %s", type(exc).__name__, exc)


def reset_for_tests() -> None:
    global _configured
    _configured = False
