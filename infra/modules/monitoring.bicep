// Log Analytics workspace and a workspace-based Application Insights component. The guardrail's
// audit records (`guardrails.decision`) are traces in this component, so the workspace retention
// is the audit retention.

@description('Log Analytics workspace name.')
param workspaceName string

@description('Application Insights component name.')
param appInsightsName string

@description('Region of both resources.')
param location string

@description('Tags for every resource.')
param tags object

@description('Days the workspace keeps logs, and with them the audit records.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 90

@description('Principal (object) id of the function app\'s user-assigned identity.')
param functionPrincipalId string

var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource workspace 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      enableLogAccessUsingOnlyResourcePermissions: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    // Entra ID (AAD) authenticated ingestion only: the instrumentation key in the connection
    // string no longer suffices on its own; the host sends telemetry as the managed identity
    // (APPLICATIONINSIGHTS_AUTHENTICATION_STRING), which holds Monitoring Metrics Publisher below.
    DisableLocalAuth: true
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

// Monitoring Metrics Publisher on the component only: required for Entra ID ingestion.
resource metricsPublisherRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: appInsights
  name: guid(appInsights.id, functionPrincipalId, monitoringMetricsPublisherRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output appInsightsId string = appInsights.id
output appInsightsName string = appInsights.name
// Not a secret: it identifies where telemetry goes, and with local auth disabled it cannot be
// used to send telemetry without an Entra token. It is the documented way to configure the host.
output appInsightsConnectionString string = appInsights.properties.ConnectionString
output workspaceId string = workspace.id
