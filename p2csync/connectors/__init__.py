"""Connectors of the shared core: Dataverse Web API and F&O OData over one HTTP layer.

* ``errors``: ``TransientError`` (retry later) vs ``PermanentError`` (dead-letter) and their subclasses.
* ``auth``: ``TokenProvider`` (azure-identity in Azure, a static token for the sandbox).
* ``http``: the one ``RetryPolicy``, ``AdaptiveConcurrency`` limiter and ``ApiClient`` base.
* ``dataverse``: ``DataverseClient`` (upsert = PATCH on an alternate key).
* ``fno``: ``FnOClient`` (upsert = GET by key, then POST or a minimal PATCH; races handled).
"""

from p2csync.connectors.auth import (
    AzureIdentityTokenProvider,
    StaticTokenProvider,
    TokenProvider,
    default_credential,
    scope_for,
)
from p2csync.connectors.dataverse import DataverseClient, format_key
from p2csync.connectors.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConnectorError,
    InvalidKeyError,
    NotFoundError,
    PermanentError,
    PreconditionFailedError,
    ThrottledError,
    TransientError,
)
from p2csync.connectors.fno import FnOClient
from p2csync.connectors.http import AdaptiveConcurrency, ApiClient, HttpOptions, RetryPolicy
from p2csync.connectors.odata import ODataEnum, odata_literal
from p2csync.connectors.results import UpsertResult

__all__ = [
    "AdaptiveConcurrency",
    "AlreadyExistsError",
    "ApiClient",
    "AuthenticationError",
    "AzureIdentityTokenProvider",
    "ConnectorError",
    "DataverseClient",
    "FnOClient",
    "HttpOptions",
    "InvalidKeyError",
    "NotFoundError",
    "ODataEnum",
    "PermanentError",
    "PreconditionFailedError",
    "RetryPolicy",
    "StaticTokenProvider",
    "ThrottledError",
    "TokenProvider",
    "TransientError",
    "UpsertResult",
    "default_credential",
    "format_key",
    "odata_literal",
    "scope_for",
]
