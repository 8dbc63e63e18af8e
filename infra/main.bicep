// p2c-sync infrastructure, provisioned by `azd up` / `azd provision` (see docs/deploy.md).
// Subscription scope, like the azd templates: this file creates the resource group and deploys one small
// local module per resource family into it. Every role assignment lives in the module of the resource
// it grants, scoped to that resource.

targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names and the azd-env-name tag are derived from it.')
param environmentName string

@minLength(1)
@description('Region for every resource; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name; empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Service Bus tier: Standard (default) or Premium.')
@allowed([
  'Standard'
  'Premium'
])
param serviceBusSku string = 'Standard'

@description('Dataverse environment URL, e.g. https://contoso.crm.dynamics.com.')
param dataverseUrl string

@description('F&O environment URL, e.g. https://contoso.operations.dynamics.com.')
param fnoUrl string

@description('dataAreaId used when a mapping routes nowhere else.')
param fnoDefaultCompany string = 'usmf'

@description('Comma-separated Dataverse systemuser ids of the application user(s) the sync writes as (echo filter).')
param integrationUserIds string = ''

@description('Object id of the SERVICE PRINCIPAL (enterprise application) of the Entra app F&O uses to read Key Vault. Empty: grant it later (docs/deploy.md).')
param fnoKeyVaultReaderObjectId string = ''

@description('Ledger table name.')
param ledgerTableName string = 'ledger'

@description('Queue of Dataverse change events.')
param salesEventsQueueName string = 'sales-events'

@description('Queue of F&O business events and data events.')
param fnoEventsQueueName string = 'fno-events'

@description('Key Vault secret that holds the F&O publisher connection string.')
param fnoSecretName string = 'fno-events-send-connection'

@description('Days a deleted Key Vault stays recoverable (purge protection is on, so its name is taken for that long).')
@minValue(7)
@maxValue(90)
param keyVaultSoftDeleteRetentionInDays int = 90

@description('Maximum instances of the function app.')
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

@description('E-mail address for the dead-letter and latency alerts; empty: the alerts show in the portal only.')
param alertEmailAddress string = ''

@description('Latency alert: average seconds from a source change to its counterpart written, over 15 minutes.')
@minValue(1)
param latencyThresholdSeconds int = 120

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'p2c-sync'
}
var names = {
  resourceGroup: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  identity: 'id-p2c-${resourceToken}'
  storage: 'stp2c${resourceToken}'
  serviceBus: 'sb-p2c-${resourceToken}'
  keyVault: 'kv-p2c-${resourceToken}'
  logAnalytics: 'log-p2c-${resourceToken}'
  applicationInsights: 'appi-p2c-${resourceToken}'
  plan: 'plan-p2c-${resourceToken}'
  functionApp: 'func-p2c-${resourceToken}'
  deploymentContainer: 'app-package-${resourceToken}'
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module identity './modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module storage './modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: names.storage
    location: location
    tags: tags
    deploymentContainerName: names.deploymentContainer
    ledgerTableName: ledgerTableName
    principalId: identity.outputs.principalId
  }
}

module serviceBus './modules/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: names.serviceBus
    location: location
    tags: tags
    skuName: serviceBusSku
    salesEventsQueueName: salesEventsQueueName
    fnoEventsQueueName: fnoEventsQueueName
    principalId: identity.outputs.principalId
  }
}

module keyVault './modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: names.keyVault
    location: location
    tags: tags
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
    serviceBusNamespaceName: serviceBus.outputs.name
    fnoEventsQueueName: serviceBus.outputs.fnoEventsQueueName
    fnoPublisherRuleName: serviceBus.outputs.fnoPublisherRuleName
    fnoSecretName: fnoSecretName
    fnoKeyVaultReaderObjectId: fnoKeyVaultReaderObjectId
  }
}

module monitoring './modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: names.logAnalytics
    applicationInsightsName: names.applicationInsights
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

module functionApp './modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: tags
    serviceName: 'api'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    ledgerTableEndpoint: storage.outputs.tableEndpoint
    ledgerTableName: storage.outputs.ledgerTableName
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    salesEventsQueueName: serviceBus.outputs.salesEventsQueueName
    fnoEventsQueueName: serviceBus.outputs.fnoEventsQueueName
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    dataverseUrl: dataverseUrl
    fnoUrl: fnoUrl
    fnoDefaultCompany: fnoDefaultCompany
    integrationUserIds: integrationUserIds
    serviceBusMaxMessageBytes: serviceBusSku == 'Premium' ? '1048576' : '262144'
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
}

module observability './modules/observability.bicep' = {
  name: 'observability'
  scope: rg
  params: {
    location: location
    tags: tags
    namePrefix: 'p2c-${resourceToken}'
    serviceBusNamespaceId: serviceBus.outputs.id
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    alertEmailAddress: alertEmailAddress
    latencyThresholdSeconds: latencyThresholdSeconds
  }
}

// Outputs land in .azure/<env>/.env. None of them is a key, a connection string or a secret value.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_CLIENT_ID string = identity.outputs.clientId
output SERVICE_API_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = 'https://${functionApp.outputs.defaultHostName}'
// The Dataverse webhook URL WITHOUT its function key (get the key with az functionapp function keys list).
output WEBHOOK_URL string = 'https://${functionApp.outputs.defaultHostName}/api/dataverse/webhook'
output SERVICEBUS_NAMESPACE string = serviceBus.outputs.name
output SERVICEBUS_FULLY_QUALIFIED_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output SALES_EVENTS_QUEUE string = serviceBus.outputs.salesEventsQueueName
output FNO_EVENTS_QUEUE string = serviceBus.outputs.fnoEventsQueueName
output DATAVERSE_PUBLISHER_RULE_NAME string = serviceBus.outputs.dataversePublisherRuleName
output FNO_PUBLISHER_RULE_NAME string = serviceBus.outputs.fnoPublisherRuleName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output LEDGER_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output LEDGER_TABLE_NAME string = storage.outputs.ledgerTableName
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URI string = keyVault.outputs.uri
output FNO_PUBLISHER_SECRET_NAME string = keyVault.outputs.fnoSecretName
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output P2C_WORKBOOK_ID string = observability.outputs.workbookId
