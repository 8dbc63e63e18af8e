"""Settings: every knob is an environment variable.

In Azure they are app settings (set by infra/); locally they are the ``Values`` of ``local.settings.json``,
which the local host loads into the environment the way Core Tools does. Nothing here is a secret: Azure
uses managed identity, the sandbox a fixed, well-known token.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from p2csync.connectors.http import HttpOptions

ROOT = Path(__file__).resolve().parent.parent

_M = TypeVar("_M", bound=BaseModel)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in (value or "").split(",") if part.strip())


def _http_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


def _from_env(model: type[_M], env: Mapping[str, str] | None, names: Mapping[str, str],
              extra: Mapping[str, object] | None = None) -> _M:
    """Validate ``model`` from the environment variables ``names`` (field -> variable); errors name the
    variable."""
    env = os.environ if env is None else env
    data: dict[str, object] = {field: env[var] for field, var in names.items() if env.get(var)}
    data.update(extra or {})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            var = names.get(field, field.upper())
            problems.append(f"{var}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


#: The settings of the Dataverse connection: URL and how tokens are obtained.
_DATAVERSE_NAMES = {
    "dataverse_url": "DATAVERSE_URL",
    "auth_mode": "P2C_AUTH_MODE",
    "static_token": "P2C_STATIC_TOKEN",
    "managed_identity_client_id": "AZURE_CLIENT_ID",
}


class Settings(BaseModel):
    """The run-time configuration of one process (function app instance or local host)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataverse_url: str = Field(description="Environment URL, e.g. https://contoso.crm.dynamics.com")
    fno_url: str = Field(description="F&O environment URL, e.g. https://contoso.operations.dynamics.com")
    fno_default_company: str = Field("usmf", description="dataAreaId used when a mapping routes nowhere else")
    auth_mode: Literal["azure", "static"] = Field(
        "azure", description="'azure': tokens from azure-identity; 'static': the sandbox's fixed token"
    )
    static_token: str | None = Field(None, description="Bearer token for the sandbox (auth_mode=static only)")
    managed_identity_client_id: str | None = Field(None, description="Client id of a user-assigned identity")
    integration_user_ids: tuple[str, ...] = Field(
        (), description="Dataverse systemuser ids of the integration's own application user(s): echo filter"
    )
    write_tag: str = Field("p2c-sync", description="?tag= on Dataverse writes; events carrying it are echoes")
    mappings_dir: Path = ROOT / "mappings"
    sales_events_queue: str = "sales-events"
    fno_events_queue: str = "fno-events"
    local_queue_path: Path | None = Field(None, description="SQLite file of the embedded queue (local host)")
    servicebus_namespace: str | None = Field(
        None, description="<ns>.servicebus.windows.net: the identity-based ServiceBusConnection of the triggers"
    )
    ledger_path: Path | None = Field(None, description="SQLite file of the ledger (local default)")
    ledger_table_endpoint: str | None = Field(None, description="https://<account>.table.core.windows.net (Azure)")
    ledger_table_name: str = Field("ledger", description="Table of the ledger in that account")
    lease_seconds: float = Field(
        15.0, gt=0, description="How long a worker's hold on a record lasts without renewal; renewed every third "
        "of it while the work runs, so a crashed worker's records are free again within this time"
    )
    max_future_seconds: float = Field(
        300.0, ge=0, description="How far ahead of this clock a source version (modifiedon, event time) may be "
        "and still be trusted; a version further ahead is re-read from the source instead"
    )
    document_settle_seconds: float = Field(
        5.0, ge=0, description="A document (quote, order) read less than this long after its newest change records "
        "a version this long before the read, so a line whose transaction committed after the read (its modifiedon "
        "is earlier than a row the read saw) is re-read, not skipped as stale"
    )
    max_deferrals: int = Field(20, ge=1, description="Deferrals of one message before it is dead-lettered")
    max_lease_waits: int = Field(
        240, ge=1, description="Waits of one message for a record another worker keeps syncing (each at most one "
        "lease long) before it is dead-lettered; counted apart from deferrals"
    )
    pause_recheck_seconds: float = Field(
        60.0, gt=0, description="How long a message of a paused flow waits on the queue before it is checked "
        "again (it is then rescheduled, in order, until the flow is resumed)"
    )
    pause_cache_seconds: float = Field(
        5.0, ge=0, description="How long a runtime trusts its last read of the paused flows from the ledger"
    )
    servicebus_max_message_bytes: int = Field(
        256 * 1024, ge=64 * 1024, le=100 * 1024 * 1024,
        description="Maximum message size of the queues, properties included: 262144 (256 KB) on the Standard "
        "tier; on Premium the queue's maxMessageSizeInKilobytes (1 MB by default, up to 100 MB)",
    )

    http_max_concurrency: int = Field(
        32, ge=1, le=52, description="Requests in flight to each system per process at most (both services allow "
        "52 concurrent requests per user; a 429 halves it, successes raise it back)"
    )
    http_initial_concurrency: int | None = Field(
        None, ge=1, le=52, description="Requests in flight to each system at start (default: the maximum)"
    )
    http_pacing: bool = Field(
        True, description="Learn each system's request window from its 429s and keep below it (off: only wait "
        "out each Retry-After)"
    )
    http_probe_requests: int = Field(
        200, ge=0, description="Requests admitted without a 429 before the pacer tries a larger budget (each try "
        "that overshoots costs one 429)"
    )

    _url = field_validator("dataverse_url", "fno_url")(_http_url)

    def http_options(self) -> HttpOptions:
        """How the connectors talk HTTP under these settings (concurrency, pacing)."""
        from p2csync.connectors.http import HttpOptions
        from p2csync.connectors.pacing import PacingPolicy

        maximum = self.http_max_concurrency
        return HttpOptions(initial_concurrency=min(self.http_initial_concurrency or maximum, maximum),
                           max_concurrency=maximum,
                           pacing=PacingPolicy(enabled=self.http_pacing, probe_requests=self.http_probe_requests))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from the environment (or ``env``); errors name the variable."""
        env = os.environ if env is None else env
        names = {
            **_DATAVERSE_NAMES,
            "fno_url": "FNO_URL",
            "fno_default_company": "FNO_DEFAULT_COMPANY",
            "write_tag": "P2C_WRITE_TAG",
            "mappings_dir": "P2C_MAPPINGS_DIR",
            "sales_events_queue": "SALES_EVENTS_QUEUE",
            "fno_events_queue": "FNO_EVENTS_QUEUE",
            "local_queue_path": "P2C_LOCAL_QUEUE_PATH",
            "servicebus_namespace": "ServiceBusConnection__fullyQualifiedNamespace",
            "ledger_path": "P2C_LEDGER_PATH",
            "ledger_table_endpoint": "LEDGER_TABLE_ENDPOINT",
            "ledger_table_name": "LEDGER_TABLE_NAME",
            "lease_seconds": "P2C_LEASE_SECONDS",
            "max_future_seconds": "P2C_MAX_FUTURE_SECONDS",
            "document_settle_seconds": "P2C_DOCUMENT_SETTLE_SECONDS",
            "max_deferrals": "P2C_MAX_DEFERRALS",
            "max_lease_waits": "P2C_MAX_LEASE_WAITS",
            "servicebus_max_message_bytes": "P2C_SERVICEBUS_MAX_MESSAGE_BYTES",
            "pause_recheck_seconds": "P2C_PAUSE_RECHECK_SECONDS",
            "pause_cache_seconds": "P2C_PAUSE_CACHE_SECONDS",
            "http_max_concurrency": "P2C_HTTP_MAX_CONCURRENCY",
            "http_initial_concurrency": "P2C_HTTP_INITIAL_CONCURRENCY",
            "http_pacing": "P2C_HTTP_PACING",
            "http_probe_requests": "P2C_HTTP_PROBE_REQUESTS",
        }
        return _from_env(cls, env, names, {"integration_user_ids": _csv(env.get("INTEGRATION_USER_IDS"))})


class DataverseAccess(BaseModel):
    """Just the Dataverse connection, for commands that talk to nothing else (``register``): the same
    variables as ``Settings``, without requiring the F&O or queue ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataverse_url: str
    auth_mode: Literal["azure", "static"] = "azure"
    static_token: str | None = None
    managed_identity_client_id: str | None = None

    _url = field_validator("dataverse_url")(_http_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DataverseAccess:
        return _from_env(cls, env, _DATAVERSE_NAMES)

    def token_provider(self) -> tuple[Any, Any]:
        """(token provider, the azure-identity credential to close afterwards or None) for these settings."""
        from p2csync.connectors import AzureIdentityTokenProvider, StaticTokenProvider, default_credential, scope_for

        if self.auth_mode == "static":
            if not self.static_token:
                raise SettingsError("P2C_STATIC_TOKEN: required when P2C_AUTH_MODE=static")
            return StaticTokenProvider(self.static_token), None
        credential = default_credential(self.managed_identity_client_id)
        return AzureIdentityTokenProvider(credential, scope_for(self.dataverse_url)), credential


#: A value still holding a template placeholder, e.g. "https://<your-org>.crm.dynamics.com".
_PLACEHOLDER = re.compile(r"<[^<>]+>")


def placeholders(values: Mapping[str, object]) -> dict[str, str]:
    """The settings among ``values`` whose value still holds a ``<...>`` placeholder of the example file."""
    return {key: str(value) for key, value in values.items() if _PLACEHOLDER.search(str(value))}


def load_local_settings(path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """Load ``Values`` of a local.settings.json into ``env`` (os.environ by default) without overriding
    variables that are already set, as Core Tools does. Returns the values read.

    Refuses (SettingsError naming each setting) a file whose applied values still hold the ``<...>``
    placeholders of local.settings.example.json: a copied example would otherwise send the run to
    ``https://<your-org>.crm.dynamics.com`` or a namespace that does not exist."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    values = document.get("Values", {})
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: 'Values' must be an object")
    applied = {key: value for key, value in values.items() if key not in env}
    if unfilled := placeholders(applied):
        listed = "; ".join(f"{key} = {value!r}" for key, value in unfilled.items())
        raise SettingsError(f"{path}: fill in or remove the settings that still hold a <placeholder> of the "
                            f"example file: {listed}")
    for key, value in values.items():
        env.setdefault(key, str(value))
    return {k: str(v) for k, v in values.items()}
