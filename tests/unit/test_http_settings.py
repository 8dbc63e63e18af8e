"""The HTTP settings: concurrency and pacing of both connectors, from the environment."""

from __future__ import annotations

import pytest

from p2csync.settings import Settings, SettingsError

BASE = {"DATAVERSE_URL": "https://contoso.crm.dynamics.com/", "FNO_URL": "https://contoso.operations.dynamics.com"}


def test_defaults_start_at_the_maximum_and_pace() -> None:
    options = Settings.from_env(BASE).http_options()
    assert (options.initial_concurrency, options.max_concurrency) == (32, 32)
    assert options.pacing.enabled and options.pacing.probe_requests == 200


def test_overrides() -> None:
    options = Settings.from_env({**BASE, "P2C_HTTP_MAX_CONCURRENCY": "16", "P2C_HTTP_INITIAL_CONCURRENCY": "40",
                                 "P2C_HTTP_PACING": "false", "P2C_HTTP_PROBE_REQUESTS": "50"}).http_options()
    assert (options.initial_concurrency, options.max_concurrency) == (16, 16)  # never above the maximum
    assert not options.pacing.enabled and options.pacing.probe_requests == 50


@pytest.mark.parametrize("variable,value", [("P2C_HTTP_MAX_CONCURRENCY", "53"), ("P2C_HTTP_MAX_CONCURRENCY", "0"),
                                            ("P2C_HTTP_PACING", "sometimes")])
def test_errors_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({**BASE, variable: value})
