"""Settings come from the environment; a wrong one is reported by its variable name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2csync.settings import DataverseAccess, Settings, SettingsError, load_local_settings

BASE = {"DATAVERSE_URL": "https://contoso.crm.dynamics.com/", "FNO_URL": "https://contoso.operations.dynamics.com"}


def test_defaults_and_normalisation() -> None:
    settings = Settings.from_env({**BASE, "INTEGRATION_USER_IDS": " A0BDE583-0537-EB11-BF68-0022489B563D , ,x "})
    assert settings.dataverse_url == "https://contoso.crm.dynamics.com"
    assert settings.fno_default_company == "usmf"
    assert settings.auth_mode == "azure"
    assert settings.integration_user_ids == ("a0bde583-0537-eb11-bf68-0022489b563d", "x")
    assert settings.sales_events_queue == "sales-events"


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"FNO_URL": BASE["FNO_URL"]}, "DATAVERSE_URL"),
        ({**BASE, "FNO_URL": "contoso.operations.dynamics.com"}, "FNO_URL"),
        ({**BASE, "P2C_AUTH_MODE": "password"}, "P2C_AUTH_MODE"),
        ({**BASE, "P2C_LEASE_SECONDS": "-1"}, "P2C_LEASE_SECONDS"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


def test_dataverse_access_needs_only_the_dataverse_variables() -> None:
    access = DataverseAccess.from_env({"DATAVERSE_URL": "https://contoso.crm.dynamics.com/",
                                       "P2C_AUTH_MODE": "static", "P2C_STATIC_TOKEN": "t", "AZURE_CLIENT_ID": "c"})
    assert (access.dataverse_url, access.auth_mode, access.static_token, access.managed_identity_client_id) \
        == ("https://contoso.crm.dynamics.com", "static", "t", "c")
    with pytest.raises(SettingsError, match="DATAVERSE_URL: Field required"):
        DataverseAccess.from_env({"FNO_URL": BASE["FNO_URL"]})
    with pytest.raises(SettingsError, match="DATAVERSE_URL.*http.*P2C_AUTH_MODE"):
        DataverseAccess.from_env({"DATAVERSE_URL": "contoso", "P2C_AUTH_MODE": "password"})


def test_local_settings_fill_only_unset_variables(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {"FNO_URL": "https://a", "DATAVERSE_URL": "https://b"}}))
    env = {"FNO_URL": "https://already-set"}
    load_local_settings(path, env)
    assert env == {"FNO_URL": "https://already-set", "DATAVERSE_URL": "https://b"}


def test_local_settings_with_bad_json_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text("{ nope")
    with pytest.raises(SettingsError, match="local.settings.json"):
        load_local_settings(path, {})


def test_the_triggers_identity_connection_selects_the_service_bus_transport() -> None:
    from p2csync.queue.servicebus import ServiceBusTransport
    from p2csync.runtime import _transport

    settings = Settings.from_env({**BASE, "ServiceBusConnection__fullyQualifiedNamespace": "ns.servicebus.windows.net"})
    assert settings.servicebus_namespace == "ns.servicebus.windows.net"
    assert isinstance(_transport(settings), ServiceBusTransport)
    assert _transport(Settings.from_env(BASE)) is None


def test_the_table_endpoint_selects_the_table_ledger_and_no_ledger_is_an_error() -> None:
    from p2csync.ledger.table import TableLedger
    from p2csync.runtime import _ledger

    settings = Settings.from_env({**BASE, "LEDGER_TABLE_ENDPOINT": "https://acct.table.core.windows.net",
                                  "LEDGER_TABLE_NAME": "p2cledger"})
    assert isinstance(_ledger(settings), TableLedger)
    with pytest.raises(SettingsError, match="LEDGER_TABLE_ENDPOINT"):
        _ledger(Settings.from_env(BASE))
