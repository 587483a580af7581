// Key Vault for the one credential a managed identity cannot replace: a Dataverse client
// certificate, for a tenant where the application user must be an app registration with a
// certificate. With the default (managed identity) setup the vault stays empty and closed.

@description('Key Vault name (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param vaultName string

@description('Region of the vault.')
param location string

@description('Tags for every resource.')
param tags object

@description('Public network access. Disabled by default (nothing needs the vault with managed identity); set Enabled, with allowedIpAddresses, to import a certificate, or add a private endpoint.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Disabled'

@description('Public IP addresses or CIDR ranges allowed through the vault firewall when public network access is Enabled.')
param allowedIpAddresses array = []

@description('Principal (object) id of the function app\'s user-assigned identity.')
param functionPrincipalId string

var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: vaultName
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // Azure RBAC, not access policies: the role assignment below is the whole access model.
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // Once on, purge protection cannot be turned off: a deleted certificate stays recoverable for
    // the retention period, and the vault name stays taken for as long.
    enablePurgeProtection: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
      ipRules: [for address in allowedIpAddresses: {
        value: address
      }]
    }
  }
}

// Key Vault Secrets User on this vault only: reads secret values, which is how a certificate's
// private key (the PFX) is retrieved; it cannot list, write or delete.
resource secretsUserRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, functionPrincipalId, keyVaultSecretsUserRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output vaultName string = vault.name
output vaultUri string = vault.properties.vaultUri
