// Key Vault that hands the F&O business-event endpoint its Service Bus connection string.
//
// F&O's endpoint configuration (System administration > Setup > Business events > Endpoints) takes a
// Microsoft Entra application id + secret (F&O's OWN app registration, not ours), a Key Vault DNS name and a
// secret name; F&O reads the Service Bus connection string from that secret. So this vault holds exactly
// one secret: the connection string of the Send-only rule on the fno-events queue. The vault is
// RBAC-authorised (no access policies), soft-delete and purge protection are on, and F&O's app gets
// Key Vault Secrets User on that one secret only.

@description('Key Vault name (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Days a deleted vault or secret stays recoverable (7-90). Cannot be changed after creation.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Service Bus namespace that holds the fno-events queue.')
param serviceBusNamespaceName string

@description('The queue the F&O endpoint publishes to.')
param fnoEventsQueueName string

@description('The Send-only SAS rule on that queue.')
param fnoPublisherRuleName string

@description('Name of the secret that holds the F&O publisher connection string.')
param fnoSecretName string = 'fno-events-send-connection'

@description('Object id of the service principal (enterprise application) of the Entra app F&O uses to read Key Vault. Empty: no role assignment (grant it later, see docs/deploy.md).')
param fnoKeyVaultReaderObjectId string = ''

@description('Months until the secret expires (a rotation reminder; every provision rewrites the secret and moves the date). Key Vault still returns an expired secret, so F&O keeps working.')
@minValue(1)
@maxValue(24)
param secretLifetimeMonths int = 12

@description('Deployment time; used only to compute the secret expiry. Leave the default.')
param now string = utcNow()

// Built-in role definition ids, in one place.
var roleIds = {
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  //checkov:skip=CKV_AZURE_109: F&O is a SaaS service that reads this vault from Microsoft's public IP ranges (no private link into the customer VNet); access is Entra ID + RBAC on the one secret
  //checkov:skip=CKV_AZURE_189: F&O is a SaaS service that reads this vault over the public endpoint; access is Entra ID + RBAC on the one secret
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource serviceBusNamespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName

  resource fnoEventsQueue 'queues' existing = {
    name: fnoEventsQueueName

    resource fnoPublisherRule 'authorizationRules' existing = {
      name: fnoPublisherRuleName
    }
  }
}

// The connection string F&O expects: namespace endpoint + SAS rule name + key, WITHOUT EntityPath (F&O
// takes the queue name in its own field). The key belongs to a queue-scoped, Send-only rule, so it can
// send to fno-events and nothing else. It is written here and never leaves the deployment as an output.
resource fnoSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: fnoSecretName
  properties: {
    contentType: 'Service Bus connection string (Send on ${fnoEventsQueueName})'
    attributes: {
      enabled: true
      exp: dateTimeToEpoch(dateTimeAdd(now, 'P${secretLifetimeMonths}M'))
    }
    value: 'Endpoint=sb://${serviceBusNamespace.name}.servicebus.windows.net/;SharedAccessKeyName=${serviceBusNamespace::fnoEventsQueue::fnoPublisherRule.name};SharedAccessKey=${serviceBusNamespace::fnoEventsQueue::fnoPublisherRule.listKeys().primaryKey}'
  }
}

// Key Vault Secrets User for F&O's Entra app, scoped to the one secret (narrower than the vault).
resource fnoSecretReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(fnoKeyVaultReaderObjectId)) {
  name: guid(fnoSecret.id, fnoKeyVaultReaderObjectId, roleIds.keyVaultSecretsUser)
  scope: fnoSecret
  properties: {
    principalId: fnoKeyVaultReaderObjectId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
    description: 'F&O business-event endpoint: read the Service Bus connection string'
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
output fnoSecretName string = fnoSecret.name
