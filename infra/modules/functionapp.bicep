// Flex Consumption plan (FC1) and the Python 3.11 function app. Identity-based connections only: every
// app setting below is an address, a client id or a plain setting -- none holds a key or a secret.
// The deployment package is read from a blob container with the user-assigned identity.

@description('Function app name.')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Azure region (must offer Flex Consumption).')
param location string

@description('Tags for the resources (the site also gets azd-service-name).')
param tags object = {}

@description('azd service name in azure.yaml; azd finds the site by this tag.')
param serviceName string = 'api'

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Storage account for the host (AzureWebJobsStorage) and the deployment package.')
param storageAccountName string

@description('Blob endpoint of that account, e.g. https://<account>.blob.core.windows.net/.')
param storageBlobEndpoint string

@description('Container that holds the deployment package.')
param deploymentContainerName string

@description('Table service endpoint of the ledger, e.g. https://<account>.table.core.windows.net/.')
param ledgerTableEndpoint string

@description('Ledger table name.')
param ledgerTableName string

@description('Service Bus namespace host name, e.g. <namespace>.servicebus.windows.net.')
param serviceBusFullyQualifiedNamespace string

@description('Queue of Dataverse change events.')
param salesEventsQueueName string

@description('Queue of F&O business events and data events.')
param fnoEventsQueueName string

@description('Application Insights connection string (no secret: local auth is disabled on the component).')
param applicationInsightsConnectionString string

@description('Dataverse environment URL, e.g. https://contoso.crm.dynamics.com.')
param dataverseUrl string

@description('F&O environment URL, e.g. https://contoso.operations.dynamics.com.')
param fnoUrl string

@description('dataAreaId used when a mapping routes nowhere else.')
param fnoDefaultCompany string

@description('Comma-separated Dataverse systemuser ids that the sync itself writes as (echo filter).')
param integrationUserIds string = ''

@description('Largest message the queues take, application properties included (P2C_SERVICEBUS_MAX_MESSAGE_BYTES): 262144 on Standard, the queue size on Premium (1 MB by default). The webhook trims what would not fit, as Dataverse does.')
param serviceBusMaxMessageBytes string = '262144'

@description('NCRONTAB schedule of the F&O -> Sales catch-up (timer trigger catch_up): reconcile and resync what differs. [Inferred] every 15 minutes.')
param catchUpSchedule string = '0 */15 * * * *'

@description('Maximum instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory per instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Concurrent HTTP invocations per instance (the Dataverse webhook).')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225: zone redundancy of a Flex Consumption plan depends on the region; left to the operator (see docs/deploy.md), the queues buffer events through an outage
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_222: the Dataverse webhook calls this app from the public internet (Dataverse has no private path into a customer network); requests need the function key
  //checkov:skip=CKV_AZURE_17: Dataverse webhooks cannot present a client certificate (their auth options are webhook key, HTTP header or query string); the function key authorises them
  //checkov:skip=CKV_AZURE_212: siteConfig.numberOfWorkers is a Dedicated-plan setting; Flex Consumption scales instances on demand (maximumInstanceCount) and Service Bus holds events while it scales
  //checkov:skip=CKV_AZURE_213: health-check instance eviction (healthCheckPath) is not used on Flex Consumption, whose instances are platform-managed and per-execution
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Host storage through the identity (no AzureWebJobsStorage connection string).
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storageAccountName
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        // Service Bus triggers and outputs (connection="ServiceBusConnection") through the identity.
        {
          name: 'ServiceBusConnection__fullyQualifiedNamespace'
          value: serviceBusFullyQualifiedNamespace
        }
        {
          name: 'ServiceBusConnection__credential'
          value: 'managedidentity'
        }
        {
          name: 'ServiceBusConnection__clientId'
          value: identityClientId
        }
        // Telemetry with Entra ID. The connection string is only an address here: local auth is disabled
        // on the component, so the instrumentation key inside it cannot authorise ingestion.
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: applicationInsightsConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
        // With host.json "telemetryMode": "OpenTelemetry": the Python worker configures the Azure Monitor
        // OpenTelemetry distro itself and streams its traces, metrics and logs directly ("Use OpenTelemetry
        // with Azure Functions"); the exporter takes its token with the identity named just above.
        {
          name: 'PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY'
          value: 'true'
        }
        // azure-identity (our code: Dataverse, F&O, Table Storage, Service Bus SDK) picks this identity.
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        // The sync's own settings (p2csync/settings.py).
        {
          name: 'DATAVERSE_URL'
          value: dataverseUrl
        }
        {
          name: 'FNO_URL'
          value: fnoUrl
        }
        {
          name: 'FNO_DEFAULT_COMPANY'
          value: fnoDefaultCompany
        }
        {
          name: 'LEDGER_TABLE_ENDPOINT'
          value: ledgerTableEndpoint
        }
        {
          name: 'LEDGER_TABLE_NAME'
          value: ledgerTableName
        }
        {
          name: 'SALES_EVENTS_QUEUE'
          value: salesEventsQueueName
        }
        {
          name: 'FNO_EVENTS_QUEUE'
          value: fnoEventsQueueName
        }
        {
          name: 'INTEGRATION_USER_IDS'
          value: integrationUserIds
        }
        {
          name: 'P2C_SERVICEBUS_MAX_MESSAGE_BYTES'
          value: serviceBusMaxMessageBytes
        }
        {
          name: 'P2C_CATCHUP_SCHEDULE'
          value: catchUpSchedule
        }
        // Dataverse never posts more than 256 KB: the host refuses larger bodies (413) before our code reads
        // them, instead of buffering up to its 100 MB default.
        {
          name: 'FUNCTIONS_REQUEST_BODY_SIZE_LIMIT'
          value: '1048576'
        }
      ]
    }
  }
}

// No basic (user name + password) publishing: azd deploys with an Entra token.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
