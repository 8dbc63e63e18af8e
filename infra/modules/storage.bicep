// Storage account of the function app: host storage (AzureWebJobsStorage: blobs for keys, leases and
// the deployment package) and the idempotency ledger (Table Storage). Entra ID only: shared keys are off,
// so no connection string or account key for this account exists anywhere.
// Role assignments for the function identity sit beside the account they grant.

@description('Storage account name (3-24 lower-case letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Replication of the account. ZRS keeps the host and the ledger available through a zone outage.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_ZRS'

@description('Blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string

@description('Table that holds the idempotency ledger.')
param ledgerTableName string = 'ledger'

@description('Principal (object) id of the function app identity.')
param principalId string

// Built-in role definition ids, in one place.
var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

// Public endpoint with default-allow: the Flex Consumption app runs without VNet integration in this
// template, so the host reaches storage over the public endpoint (authorised by Entra ID only).
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35: no VNet integration in this template, so the Flex host reaches storage over the public endpoint; access is Entra ID only (shared key off)
  //checkov:skip=CKV_AZURE_59: no VNet integration in this template, so the Flex host reaches storage over the public endpoint; access is Entra ID only (shared key off)
  //checkov:skip=CKV_AZURE_206: the function app runs in one region, so a geo copy could not be used by it; ZRS (the default) survives a zone outage, and the ledger is rebuildable idempotency state
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    dnsEndpointType: 'Standard'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      services: {
        blob: {
          enabled: true
        }
        table: {
          enabled: true
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource ledgerTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: ledgerTableName
}

// Storage Blob Data Owner on the account: the host creates its own containers (azure-webjobs-hosts,
// azure-webjobs-secrets) and reads the deployment package; Blob Data Contributor cannot create
// containers with the identity the host uses, so Owner is the documented minimum for host storage.
resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageBlobDataOwner)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    description: 'p2c-sync function app: host storage and deployment package'
  }
}

// Storage Table Data Contributor on the account (not only the ledger table): the ledger may create its
// table when it is missing (an account-level operation) and the Functions host writes its diagnostic
// events table in AzureWebJobsStorage. The account holds no other table data.
// Storage Queue Data Contributor is deliberately NOT granted: the host only needs queues for blob
// triggers and Durable Functions, and this app has neither (HTTP + Service Bus triggers only).
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageTableDataContributor)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
    description: 'p2c-sync function app: idempotency ledger'
  }
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output tableEndpoint string = storage.properties.primaryEndpoints.table
output deploymentContainerName string = deploymentContainer.name
output ledgerTableName string = ledgerTable.name
