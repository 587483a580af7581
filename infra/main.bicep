// Mailbox Guardrails on Azure: a Python function on Flex Consumption triggered by the Service Bus
// queue Dataverse posts mailbox events to, with identity-based access to Service Bus, Storage
// (host storage, durable state, deployment package), Application Insights and Key Vault.
//
// Deploy with `azd up` (azure.yaml), or:
//   cp infra/main.parameters.example.json infra/main.parameters.json   (then fill it in)
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json
// Checked offline by `make infra-check` (checkov with the custom checks in infra/checks, and
// azure-functions-doctor); see infra/README.md for the Dataverse side.

targetScope = 'resourceGroup'

@description('Environment name (azd: AZURE_ENV_NAME); part of every resource name.')
@minLength(1)
@maxLength(20)
param environmentName string

@description('Region of every regional resource; must offer Flex Consumption.')
param location string = resourceGroup().location

@description('Dataverse environment root URL, e.g. https://contoso.crm.dynamics.com.')
param dataverseUrl string

@description('Microsoft Graph root URL (a national cloud has its own).')
param graphUrl string = 'https://graph.microsoft.com'

@description('Email address the alerts go to.')
param alertEmail string

@description('Queue the Dataverse service endpoint posts to.')
param queueName string = 'dataverse-mailbox-events'

@description('Deliveries before a message is dead-lettered.')
@minValue(5)
@maxValue(10)
param maxDeliveryCount int = 10

@description('Most instances the Service Bus function scales out to; see modules/functionapp.bicep for why 6.')
@minValue(1)
@maxValue(6)
param maximumInstanceCount int = 6

@description('Memory of each Flex Consumption instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Python version of the Flex Consumption runtime.')
@allowed([
  '3.11'
  '3.12'
  '3.13'
])
param pythonVersion string = '3.11'

@description('Policy file, relative to the app root.')
param guardrailsPolicy string = 'policy.yaml'

@description('Prefix of the guardrail\'s table names.')
param guardrailsTablePrefix string = 'guardrails'

@description('true: decide and audit, but write nothing. For a first safe run use policy mode: audit instead.')
@allowed([
  'true'
  'false'
])
param guardrailsDryRun string = 'false'

@description('NCRONTAB schedule of the reconcile run (seconds first): 02:00 UTC daily by default.')
param guardrailsReconcileSchedule string = '0 0 2 * * *'

@description('Reverts per hour above which the admin is alerted.')
@minValue(1)
param revertsPerHourThreshold int = 20

@description('Days Log Analytics keeps logs, and with them the audit records.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 90

@description('Key Vault public network access: Disabled until a certificate has to be imported.')
@allowed([
  'Enabled'
  'Disabled'
])
param keyVaultPublicNetworkAccess string = 'Disabled'

@description('IP addresses or CIDR ranges allowed through the Key Vault firewall when public network access is Enabled.')
param keyVaultAllowedIpAddresses array = []

var token = uniqueString(subscription().id, resourceGroup().id, environmentName)
var prefix = 'gr-${environmentName}'
var tags = {
  'azd-env-name': environmentName
  application: 'mailbox-guardrails'
}

// The one identity the app runs as. AZURE_CLIENT_ID gives its client id to the app, which asks it
// for tokens to Dataverse (as an application user) and to Microsoft Graph (Mail.Send).
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-${token}'
  location: location
  tags: tags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    workspaceName: 'log-${prefix}-${token}'
    appInsightsName: 'appi-${prefix}-${token}'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
    functionPrincipalId: identity.properties.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    accountName: 'stgr${token}'
    location: location
    tags: tags
    functionPrincipalId: identity.properties.principalId
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    namespaceName: 'sb-${prefix}-${token}'
    location: location
    tags: tags
    queueName: queueName
    maxDeliveryCount: maxDeliveryCount
    functionPrincipalId: identity.properties.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    vaultName: 'kv-gr-${token}'
    location: location
    tags: tags
    publicNetworkAccess: keyVaultPublicNetworkAccess
    allowedIpAddresses: keyVaultAllowedIpAddresses
    functionPrincipalId: identity.properties.principalId
  }
}

// Takes outputs of every module above, so it is created after them, role assignments included:
// the app starts with its access already granted.
module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    appName: 'func-${prefix}-${token}'
    planName: 'plan-${prefix}-${token}'
    location: location
    tags: tags
    pythonVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    identityId: identity.id
    identityClientId: identity.properties.clientId
    storageAccountName: storage.outputs.accountName
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    serviceBusQueueName: serviceBus.outputs.queueName
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    dataverseUrl: dataverseUrl
    graphUrl: graphUrl
    guardrailsPolicy: guardrailsPolicy
    guardrailsTablePrefix: guardrailsTablePrefix
    guardrailsDryRun: guardrailsDryRun
    guardrailsReconcileSchedule: guardrailsReconcileSchedule
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    tags: tags
    namePrefix: prefix
    alertEmail: alertEmail
    serviceBusNamespaceId: serviceBus.outputs.namespaceId
    queueName: serviceBus.outputs.queueName
    appInsightsId: monitoring.outputs.appInsightsId
    revertsPerHourThreshold: revertsPerHourThreshold
  }
}

// What an admin needs next: the app to deploy to, where to register the Dataverse service
// endpoint (namespace, queue, the Send rule's id; its key is read with
// `az servicebus queue authorization-rule keys list`, never output here), and the identity to
// register as the Dataverse application user and to grant Graph Mail.Send.
output FUNCTION_APP_NAME string = functionApp.outputs.appName
output SERVICEBUS_NAMESPACE string = serviceBus.outputs.namespaceName
output SERVICEBUS_FULLY_QUALIFIED_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output SERVICEBUS_QUEUE string = serviceBus.outputs.queueName
output DATAVERSE_SEND_RULE_NAME string = serviceBus.outputs.dataverseSendRuleName
output DATAVERSE_SEND_RULE_ID string = serviceBus.outputs.dataverseSendRuleId
output MANAGED_IDENTITY_CLIENT_ID string = identity.properties.clientId
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.properties.principalId
output STORAGE_ACCOUNT_NAME string = storage.outputs.accountName
output KEY_VAULT_NAME string = keyVault.outputs.vaultName
output APPLICATION_INSIGHTS_NAME string = monitoring.outputs.appInsightsName
