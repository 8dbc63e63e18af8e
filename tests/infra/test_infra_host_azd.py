"""host.json, azure.yaml and docs/deploy.md agree with the infrastructure."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import yaml

from tests.infra._bicep import ROOT, main


def _timespan(value: str) -> timedelta:
    hours, minutes, seconds = value.split(":")
    return timedelta(hours=int(hours), minutes=int(minutes), seconds=float(seconds))


def _host() -> dict:
    return json.loads((ROOT / "host.json").read_text(encoding="utf-8"))


def test_host_json_bundle_and_logging() -> None:
    host = _host()
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    assert sampling["isEnabled"] is True
    assert "Request" in sampling["excludedTypes"].split(";")


def test_host_json_service_bus_uses_the_5x_flat_settings() -> None:
    host = _host()
    sb = host["extensions"]["serviceBus"]
    legacy = {"messageHandlerOptions", "sessionHandlerOptions", "batchOptions"}
    assert not legacy & set(sb), "extension 3.x/4.x settings mixed with 5.x"
    assert sb["prefetchCount"] == 0
    # The runtime settles every message itself through the SDK-type binding's message actions; with
    # auto-complete on, the host would also complete a message the runtime had dead-lettered.
    assert sb["autoCompleteMessages"] is False
    assert isinstance(sb["maxConcurrentCalls"], int) and 1 <= sb["maxConcurrentCalls"] <= 16
    retry = sb["clientRetryOptions"]
    assert retry["mode"] == "exponential" and retry["maxRetries"] >= 1
    # The lock is renewed for the whole run of a function.
    timeout = _timespan(host["functionTimeout"])
    assert timedelta(minutes=1) <= timeout <= _timespan(sb["maxAutoLockRenewalDuration"])


def test_azure_yaml_deploys_the_root_as_the_api_function_app() -> None:
    project = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert project["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert project["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}
    # The site carries azd-service-name = the service key.
    assert main()["modules"]["functionApp"]["config"]["params"]["serviceName"] == "api"


def test_deploy_doc_covers_the_operator_steps() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for needle in (
        "azd up",
        "azd down --purge",
        "az functionapp function keys list",
        "System administration > Setup > Microsoft Entra applications",
        "Key Vault DNS name",
        "FNO_PUBLISHER_SECRET_NAME",
        "dataverse-send",
        "keys renew",
        "What was not verified offline",
        "autoCompleteMessages",
    ):
        assert needle in doc, needle
    # Every azd variable in main.parameters.json is documented.
    params = (ROOT / "infra" / "main.parameters.json").read_text(encoding="utf-8")
    for var in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", params):
        assert f"`{var}`" in doc, var
