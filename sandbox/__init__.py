"""Local simulators of the Dataverse Web API v9.2 and F&O OData, served over loopback HTTP, which raise
webhook events like the real systems and can inject faults. Start with `SandboxServer`."""

from sandbox.dataverse import Dataverse, DataverseError
from sandbox.dataverse_events import EntityImage, SystemJob, WebhookEndpoint, WebhookRegistration, WebhookStep
from sandbox.dataverse_tables import (
    EUR_CURRENCY_ID, INTEGRATION_TOKEN, INTEGRATION_USER_ID, ROOT_BUSINESS_UNIT_ID, SALES_TOKEN, SALES_USER_ID,
    USD_CURRENCY_ID, Column, ColumnType, DataverseUser, LookupValue, Organization, Table, default_tables,
    define_table,
)
from sandbox.faults import FaultConfig, FaultInjector, FaultRule
from sandbox.fno import FnO, FnoChange, FnoError, FnoUser
from sandbox.limits import ServiceProtectionLimits
from sandbox.request_log import RequestRecord
from sandbox.server import BackgroundServers, SandboxServer, main

__all__ = [
    "BackgroundServers", "Column", "ColumnType", "Dataverse", "DataverseError", "DataverseUser", "EUR_CURRENCY_ID",
    "EntityImage", "FaultConfig", "FaultInjector", "FaultRule", "FnO", "FnoChange", "FnoError", "FnoUser",
    "INTEGRATION_TOKEN", "INTEGRATION_USER_ID", "LookupValue", "Organization", "ROOT_BUSINESS_UNIT_ID",
    "RequestRecord", "SALES_TOKEN", "SALES_USER_ID", "SandboxServer", "ServiceProtectionLimits", "SystemJob",
    "Table", "USD_CURRENCY_ID", "WebhookEndpoint", "WebhookRegistration", "WebhookStep", "default_tables", "define_table", "main",
]
