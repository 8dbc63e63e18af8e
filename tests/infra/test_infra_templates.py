"""(c) Assertions on the parsed templates: identity-only settings, queue semantics, scoped and deterministic
role assignments, no key anywhere in settings or outputs."""

from __future__ import annotations

import re

import pytest

from tests.infra._bicep import (
    ALLOWED_ROLES,
    GUID,
    INFRA,
    all_resources,
    app_settings,
    body,
    bicep_files,
    dumps,
    main,
    module,
    parse,
    resolve,
    resources,
    role_definition_ids,
)

SECRET_MARKERS = re.compile(
    r"listkeys|list_keys|listconnectionstrings|accountkey|sharedaccesskey|primarykey|secondarykey"
    r"|connectionstring|primarysharedkey|\.key\b",
    re.I,
)

REQUIRED_SETTINGS = {
    "AzureWebJobsStorage__accountName": "storageAccountName",
    "AzureWebJobsStorage__credential": "managedidentity",
    "AzureWebJobsStorage__clientId": "identityClientId",
    "ServiceBusConnection__fullyQualifiedNamespace": "serviceBusFullyQualifiedNamespace",
    "ServiceBusConnection__credential": "managedidentity",
    "ServiceBusConnection__clientId": "identityClientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "applicationInsightsConnectionString",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=${identityClientId};Authorization=AAD",
    "AZURE_CLIENT_ID": "identityClientId",
    "DATAVERSE_URL": "dataverseUrl",
    "FNO_URL": "fnoUrl",
    "FNO_DEFAULT_COMPANY": "fnoDefaultCompany",
    "LEDGER_TABLE_ENDPOINT": "ledgerTableEndpoint",
    "LEDGER_TABLE_NAME": "ledgerTableName",
    "SALES_EVENTS_QUEUE": "salesEventsQueueName",
    "FNO_EVENTS_QUEUE": "fnoEventsQueueName",
    "INTEGRATION_USER_IDS": "integrationUserIds",
    "P2C_SERVICEBUS_MAX_MESSAGE_BYTES": "serviceBusMaxMessageBytes",
    "P2C_CATCHUP_SCHEDULE": "catchUpSchedule",
    "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": "1048576",
}

# Settings Flex Consumption rejects or that would bring a secret back.
FORBIDDEN_SETTINGS = {
    "AzureWebJobsStorage",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "APPINSIGHTS_INSTRUMENTATIONKEY",
    "ServiceBusConnection",
}


# ---------------------------------------------------------------- function app settings


def test_identity_based_settings_present() -> None:
    settings = app_settings()
    for name, expected in REQUIRED_SETTINGS.items():
        assert name in settings, f"missing app setting {name}"
        assert settings[name] == expected, f"{name} = {settings[name]!r}, expected {expected!r}"


def test_no_secret_in_app_settings() -> None:
    settings = app_settings()
    assert not FORBIDDEN_SETTINGS & set(settings), FORBIDDEN_SETTINGS & set(settings)
    fa = module("functionapp")
    for name, value in settings.items():
        if name == "APPLICATIONINSIGHTS_CONNECTION_STRING":
            # An address only: the component has local auth disabled (checked below).
            assert value == "applicationInsightsConnectionString"
            assert "secure" not in dumps(fa["parameters"][value]["decorators"])
            continue
        assert not SECRET_MARKERS.search(dumps(value)), f"{name} looks like a secret: {value!r}"
        assert "connectionstring" not in name.lower() and "key" not in name.lower(), name


def test_app_insights_connection_string_comes_from_a_local_auth_disabled_component() -> None:
    wiring = main()["modules"]["functionApp"]["config"]["params"]["applicationInsightsConnectionString"]
    assert "monitoring" in dumps(wiring) and "applicationInsightsConnectionString" in dumps(wiring)
    mon = module("monitoring")
    (_, ai), = resources(mon, "Microsoft.Insights/components")
    assert body(ai)["properties"]["DisableLocalAuth"] is True
    output = dumps(mon["outputs"]["applicationInsightsConnectionString"])
    assert '"applicationInsights"' in output and '"ConnectionString"' in output
    (_, law), = resources(mon, "Microsoft.OperationalInsights/workspaces")
    assert body(law)["properties"]["features"]["disableLocalAuth"] is True


def test_function_app_site_hardening() -> None:
    fa = module("functionapp")
    site = body(dict(resources(fa, "Microsoft.Web/sites"))["site"])
    assert site["kind"] == "functionapp,linux"
    assert "'azd-service-name'" in dumps(site["tags"]) and resolve(fa, "serviceName") == "api"
    assert main()["modules"]["functionApp"]["config"]["params"]["serviceName"] == "api"
    assert site["identity"]["type"] == "UserAssigned"
    props = site["properties"]
    assert props["httpsOnly"] is True
    config = props["siteConfig"]
    assert config["minTlsVersion"] == "1.2"
    assert config["ftpsState"] == "Disabled"
    fac = props["functionAppConfig"]
    storage = fac["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert storage["authentication"]["userAssignedIdentityResourceId"] == "identityId"
    assert fac["runtime"] == {"name": "python", "version": "3.11"}
    assert "maximumInstanceCount" in fac["scaleAndConcurrency"]
    assert "instanceMemoryMB" in fac["scaleAndConcurrency"]
    (_, plan), = resources(fa, "Microsoft.Web/serverfarms")
    assert body(plan)["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    policies = {
        body(r)["name"]: body(r)["properties"]["allow"]
        for _, r in resources(fa, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    }
    assert policies == {"ftp": False, "scm": False}


# ---------------------------------------------------------------- storage


def test_storage_account_is_entra_only() -> None:
    st = module("storage")
    (_, account), = resources(st, "Microsoft.Storage/storageAccounts")
    props = body(account)["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["allowBlobPublicAccess"] is False
    (_, container), = resources(st, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert body(container)["properties"]["publicAccess"] == "None"
    (_, table), = resources(st, "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert resolve(st, body(table)["name"]) == "ledger"
    assert "ledgerTableName" in st["outputs"] and "tableEndpoint" in st["outputs"]


# ---------------------------------------------------------------- Service Bus


def test_queues_have_the_delivery_semantics_the_runtime_relies_on() -> None:
    sb = module("servicebus")
    queues = dict(resources(sb, "Microsoft.ServiceBus/namespaces/queues"))
    names = {resolve(sb, body(q)["name"]) for q in queues.values()}
    assert names == {"sales-events", "fno-events"}
    for symbol, queue in queues.items():
        props = {k: resolve(sb, v) for k, v in body(queue)["properties"].items()}
        assert props["requiresSession"] is False, symbol
        assert props["deadLetteringOnMessageExpiration"] is True, symbol
        assert props["requiresDuplicateDetection"] is True, symbol
        assert re.fullmatch(r"P(T\d+[HMS]|\d+D)", props["duplicateDetectionHistoryTimeWindow"]), symbol
        assert props["maxDeliveryCount"] == 10, symbol
        assert props["lockDuration"] == "PT2M", symbol
        assert re.fullmatch(r"P\d+D", props["defaultMessageTimeToLive"]), symbol


def test_publishers_get_send_only_rules_on_their_own_queue() -> None:
    sb = module("servicebus")
    ns_rules = [s for s, _ in resources(sb, "Microsoft.ServiceBus/namespaces/AuthorizationRules")]
    assert not ns_rules, f"namespace-wide SAS rules: {ns_rules}"
    rules = dict(resources(sb, "Microsoft.ServiceBus/namespaces/queues/authorizationRules"))
    parents = {body(rule)["parent"]: body(rule)["properties"]["rights"] for rule in rules.values()}
    assert parents == {"salesEventsQueue": ["Send"], "fnoEventsQueue": ["Send"]}
    # SAS stays enabled on purpose (publishers need it); the reason is documented inline.
    (_, ns), = resources(sb, "Microsoft.ServiceBus/namespaces")
    assert body(ns)["properties"]["disableLocalAuth"] is False
    text = (INFRA / "modules" / "servicebus.bicep").read_text(encoding="utf-8")
    assert "can only publish with a SAS connection string" in text


def test_fno_connection_string_goes_to_key_vault_only() -> None:
    kv = module("keyvault")
    (_, vault), = resources(kv, "Microsoft.KeyVault/vaults")
    props = body(vault)["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enablePurgeProtection"] is True
    assert props["enableSoftDelete"] is True
    (_, secret), = resources(kv, "Microsoft.KeyVault/vaults/secrets")
    value = body(secret)["properties"]["value"]
    assert "fnoPublisherRule.listKeys()" in value and "EntityPath" not in value
    grants = [
        role_definition_ids(kv, r) for _, r in resources(kv, "Microsoft.Authorization/roleAssignments")
    ]
    assert grants == [["4633458b-17de-408a-b874-0445c86b69e6"]]


# ---------------------------------------------------------------- role assignments


def _assignments():
    for path in bicep_files():
        template = parse(path)
        for symbol, res in resources(template, "Microsoft.Authorization/roleAssignments"):
            yield path, template, symbol, res


def test_there_are_role_assignments_for_every_family() -> None:
    files = {path.name for path, *_ in _assignments()}
    assert files == {"storage.bicep", "servicebus.bicep", "keyvault.bicep", "monitoring.bicep"}


@pytest.mark.parametrize("case", list(_assignments()), ids=lambda c: f"{c[0].stem}.{c[2]}")
def test_role_assignment_is_scoped_to_a_resource_with_a_deterministic_name(case) -> None:
    path, template, symbol, res = case
    config = body(res)
    scope = config.get("scope")
    assert isinstance(scope, str) and scope, f"{symbol}: no scope (would land on the resource group)"
    target = template["resources"].get(scope)
    assert target is not None, f"{symbol}: scope {scope!r} is not a resource in {path.name}"
    assert target["type"] not in ("Microsoft.Resources/resourceGroups",), symbol
    assert "resourceGroup()" not in dumps(config) and "subscription()" not in dumps(config)
    name = config["name"]["function"]
    assert name["type"] == "guid", f"{symbol}: name is not guid(...)"
    args = name["parameters"]
    assert args["base_string"] == {
        "operator": {"type": "property_accessor", "operands": {"operand_1": scope, "operand_2": "id"}}
    }, f"{symbol}: guid() must start with the scope's id"
    principal = config["properties"]["principalId"]
    assert args["extra_string_1"] == principal, f"{symbol}: guid() must include the principal"
    roles = role_definition_ids(template, res)
    role_ref = config["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
    assert args["extra_string_2"] == role_ref, f"{symbol}: guid() must include the role"
    for role in roles:
        assert isinstance(role, str) and GUID.match(role), f"{symbol}: {role!r} is not a role GUID"
        assert role in ALLOWED_ROLES, f"{symbol}: unexpected role {role}"
    assert config["properties"]["principalType"] == "ServicePrincipal"


def test_role_ids_are_declared_once_per_module() -> None:
    for path, template, symbol, res in _assignments():
        role_ids = template["variables"]["roleIds"]["value"]
        assert set(role_ids.values()) <= set(ALLOWED_ROLES), path.name
        for role in role_definition_ids(template, res):
            assert role in role_ids.values(), f"{path.name}:{symbol} uses a role id outside roleIds"


def test_least_privilege_grants_for_the_function_identity() -> None:
    granted = {}
    for path, template, symbol, res in _assignments():
        for role in role_definition_ids(template, res):
            granted.setdefault(ALLOWED_ROLES[role], set()).add((path.stem, body(res)["scope"]))
    queues = {("servicebus", "salesEventsQueue"), ("servicebus", "fnoEventsQueue")}
    assert granted == {
        "Storage Blob Data Owner": {("storage", "storage")},
        "Storage Table Data Contributor": {("storage", "storage")},
        "Azure Service Bus Data Receiver": queues,
        "Azure Service Bus Data Sender": queues,
        "Monitoring Metrics Publisher": {("monitoring", "applicationInsights")},
        "Key Vault Secrets User": {("keyvault", "fnoSecret")},
    }


# ---------------------------------------------------------------- outputs


def test_no_output_exposes_a_key() -> None:
    for path in bicep_files():
        template = parse(path)
        for name, output in template.get("outputs", {}).items():
            if path.name == "monitoring.bicep" and name == "applicationInsightsConnectionString":
                continue  # address only (local auth disabled); main.bicep does not re-export it
            text = dumps(output)
            assert not SECRET_MARKERS.search(text), f"{path.name}: output {name} exposes a key: {text}"
            assert not re.search(r"connection|sas|password|(?<!_VAULT)_KEY\b|secret_value", name, re.I), (
                f"{path.name}: output name {name} suggests a secret"
            )
    for name in main()["outputs"]:
        assert "CONNECTION_STRING" not in name


def test_main_outputs_what_azd_and_the_operator_need() -> None:
    outputs = main()["outputs"]
    for name in (
        "AZURE_LOCATION",
        "AZURE_TENANT_ID",
        "AZURE_RESOURCE_GROUP",
        "AZURE_FUNCTION_APP_NAME",
        "SERVICE_API_NAME",
        "WEBHOOK_URL",
        "SERVICEBUS_FULLY_QUALIFIED_NAMESPACE",
        "SALES_EVENTS_QUEUE",
        "FNO_EVENTS_QUEUE",
        "LEDGER_TABLE_ENDPOINT",
        "LEDGER_TABLE_NAME",
        "AZURE_KEY_VAULT_NAME",
        "AZURE_KEY_VAULT_URI",
        "FNO_PUBLISHER_SECRET_NAME",
    ):
        assert name in outputs, name
    webhook = outputs["WEBHOOK_URL"]["value"]
    assert webhook.startswith("https://") and webhook.endswith("/api/dataverse/webhook")
    assert "code=" not in webhook


def test_main_creates_the_resource_group_at_subscription_scope() -> None:
    template = main()
    assert template["globals"]["scope"]["value"] == "subscription"
    rgs = [s for s, _ in resources(template, "Microsoft.Resources/resourceGroups")]
    assert rgs == ["rg"]
    assert [s for _, s, _ in all_resources("Microsoft.Resources/resourceGroups")] == ["rg"]
