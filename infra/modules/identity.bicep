// User-assigned managed identity: the one identity the function app uses for everything
// (host storage, deployment package, ledger table, Service Bus, Application Insights, Dataverse, F&O).
// It is user-assigned (not system-assigned) so that its client id is known before the site exists and
// can be written into the app settings, and so that the role assignments are in place before the
// first cold start.

@description('Name of the user-assigned identity.')
param name string

@description('Azure region.')
param location string

@description('Tags for the resource.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
