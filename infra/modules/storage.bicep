// The Function App's storage account: AzureWebJobsStorage for the Functions host, the guardrail's
// durable state in Table Storage, and the blob container Flex Consumption deploys the app package
// from. Identity-only: shared keys (and so connection strings and SAS) are switched off.

@description('Storage account name (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param accountName string

@description('Region of the account.')
param location string

@description('Tags for every resource.')
param tags object

@description('Replication. Geo-redundant by default: the tables hold the guardrail\'s ledger and audit state.')
@allowed([
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
  'Standard_ZRS'
  'Standard_LRS'
])
param skuName string = 'Standard_GRS'

@description('Blob container Flex Consumption deploys the app package from.')
param deploymentContainerName string = 'app-package'

@description('Principal (object) id of the function app\'s user-assigned identity.')
param functionPrincipalId string

var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: accountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // No account keys: the host, the app and the deployment all authenticate with the managed
    // identity, so no connection string can exist to leak.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    accessTier: 'Hot'
    // A Flex Consumption app without virtual network integration reaches its host storage over
    // the public endpoint (see .checkov.yaml, CKV_AZURE_35/CKV_AZURE_59). Access is by Entra ID
    // and RBAC only.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
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

// Storage Blob Data Owner on the account: the Functions host keeps its locks, leases and keys in
// blob containers it creates itself (azure-webjobs-hosts, azure-webjobs-secrets) through
// AzureWebJobsStorage, which needs container create rights at account scope; the same role lets
// Flex Consumption read the app package from the deployment container.
resource blobOwnerRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: account
  name: guid(account.id, functionPrincipalId, storageBlobDataOwnerRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Table Data Contributor on the account: the guardrail's durable state (ledger, outbox,
// throttle, audit) lives in tables named under GUARDRAILS_TABLE_PREFIX that the app creates on
// first use, so the role cannot be scoped to tables that do not exist yet.
resource tableContributorRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: account
  name: guid(account.id, functionPrincipalId, storageTableDataContributorRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output accountName string = account.name
output accountId string = account.id
output deploymentContainerUrl string = '${account.properties.primaryEndpoints.blob}${deploymentContainer.name}'
