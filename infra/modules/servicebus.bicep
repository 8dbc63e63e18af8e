// Service Bus namespace with the two inbound queues of the sync, the publishers' Send-only SAS rules and
// the function identity's data-plane roles.
//
//   sales-events  <- Dataverse (our webhook function, or a Dataverse Service Bus service endpoint)
//   fno-events    <- F&O business events and data events (F&O Service Bus endpoint)
//
// Local (SAS) authentication stays ENABLED on purpose: Dataverse service endpoints and F&O business-event
// endpoints can only publish with a SAS connection string (they cannot use Entra ID against our namespace).
// To keep that exposure small, every publisher gets its own Send-only rule on ITS OWN queue; there is no
// namespace-wide rule besides the built-in RootManageSharedAccessKey, which nothing here reads or outputs.
// The function app itself never uses SAS: it connects with its managed identity (Data Receiver/Sender).

@description('Namespace name (6-50 characters).')
@minLength(6)
@maxLength(50)
param name string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Standard by default; Premium for isolation, larger messages and predictable latency.')
@allowed([
  'Standard'
  'Premium'
])
param skuName string = 'Standard'

@description('Messaging units when skuName is Premium (1, 2, 4, 8 or 16).')
@allowed([
  1
  2
  4
  8
  16
])
param premiumCapacity int = 1

@description('Queue that receives Dataverse change events.')
param salesEventsQueueName string = 'sales-events'

@description('Queue that receives F&O business events and data events.')
param fnoEventsQueueName string = 'fno-events'

@description('Name of the Send-only SAS rule on the sales-events queue, for a Dataverse service endpoint.')
param dataversePublisherRuleName string = 'dataverse-send'

@description('Name of the Send-only SAS rule on the fno-events queue, for the F&O business-event endpoint.')
param fnoPublisherRuleName string = 'fno-send'

@description('Peek-lock duration. PT2M: a handler makes a few HTTP calls (read, then POST/PATCH, with retries) and normally ends in seconds; two minutes leaves room for a slow upstream call while a message whose worker died is redelivered quickly. The host renews the lock while the function runs (host.json maxAutoLockRenewalDuration), independent of the ledger lease (P2C_LEASE_SECONDS, 15 s, renewed while a sync runs).')
param lockDuration string = 'PT2M'

@description('Deliveries before Service Bus dead-letters a message (MaxDeliveryCountExceeded).')
@minValue(1)
@maxValue(2000)
param maxDeliveryCount int = 10

@description('Default message time to live; expired messages are dead-lettered, never dropped.')
param defaultMessageTimeToLive string = 'P14D'

@description('Duplicate-detection window. The webhook sets a deterministic MessageId, so a Dataverse retry of the same notification within this window is dropped by Service Bus; later duplicates are caught by the ledger.')
param duplicateDetectionHistoryTimeWindow string = 'PT1H'

@description('Principal (object) id of the function app identity.')
param principalId string

// Built-in role definition ids, in one place.
var roleIds = {
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
}

// The function identity both receives from and sends to each queue: triggers receive and settle on both;
// the webhook sends to sales-events; deferrals re-send (scheduled copies) to the queue they came from.
var functionQueueRoles = [
  roleIds.serviceBusDataReceiver
  roleIds.serviceBusDataSender
]

var isPremium = skuName == 'Premium'

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: isPremium ? {
    name: 'Premium'
    tier: 'Premium'
    capacity: premiumCapacity
  } : {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    minimumTlsVersion: '1.2'
    // SAS stays on: the Dataverse and F&O publishers can only authenticate with a SAS connection string.
    disableLocalAuth: false
    publicNetworkAccess: 'Enabled'
  }
}

// Both queues: no sessions (publishers we do not control set no SessionId, and a session-enabled queue
// rejects messages without one), dead-lettering on expiry, duplicate detection on MessageId.
// requiresSession, requiresDuplicateDetection and enablePartitioning cannot be changed after creation.
resource salesEventsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: salesEventsQueueName
  properties: {
    requiresSession: false
    lockDuration: lockDuration
    maxDeliveryCount: maxDeliveryCount
    defaultMessageTimeToLive: defaultMessageTimeToLive
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionHistoryTimeWindow
    enableBatchedOperations: true
    enablePartitioning: false
  }
}

resource fnoEventsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: fnoEventsQueueName
  properties: {
    requiresSession: false
    lockDuration: lockDuration
    maxDeliveryCount: maxDeliveryCount
    defaultMessageTimeToLive: defaultMessageTimeToLive
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionHistoryTimeWindow
    enableBatchedOperations: true
    enablePartitioning: false
  }
}

// Send-only, queue-scoped SAS rules: one per publisher, each valid for its own queue only.
// The Dataverse rule's key is read by the operator when registering the service endpoint (docs/deploy.md);
// the F&O rule's connection string is written to Key Vault by keyvault.bicep. Neither is ever an output.
resource dataversePublisherRule 'Microsoft.ServiceBus/namespaces/queues/authorizationRules@2024-01-01' = {
  parent: salesEventsQueue
  name: dataversePublisherRuleName
  properties: {
    rights: [
      'Send'
    ]
  }
}

resource fnoPublisherRule 'Microsoft.ServiceBus/namespaces/queues/authorizationRules@2024-01-01' = {
  parent: fnoEventsQueue
  name: fnoPublisherRuleName
  properties: {
    rights: [
      'Send'
    ]
  }
}

// Data-plane roles for the function identity, scoped to each queue (not the namespace).
resource salesEventsQueueRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in functionQueueRoles: {
  name: guid(salesEventsQueue.id, principalId, roleId)
  scope: salesEventsQueue
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    description: 'p2c-sync function app: receive and send on ${salesEventsQueueName}'
  }
}]

resource fnoEventsQueueRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in functionQueueRoles: {
  name: guid(fnoEventsQueue.id, principalId, roleId)
  scope: fnoEventsQueue
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    description: 'p2c-sync function app: receive and send on ${fnoEventsQueueName}'
  }
}]

output id string = namespace.id
output name string = namespace.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
output salesEventsQueueName string = salesEventsQueue.name
output fnoEventsQueueName string = fnoEventsQueue.name
output dataversePublisherRuleName string = dataversePublisherRule.name
output fnoPublisherRuleName string = fnoPublisherRule.name
