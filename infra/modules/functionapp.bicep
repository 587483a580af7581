// The Function App on a Flex Consumption plan, running as the user-assigned identity, with
// identity-based connections only: no connection string, key or secret in its settings.
//
// The custom checks in infra/checks read the values below as literals or parameter defaults
// (checkov does not follow parameters across module boundaries), so keep them that way, and keep
// appSettings a literal list of name/value pairs.

@description('Function app name.')
param appName string

@description('Flex Consumption plan name.')
param planName string

@description('Region of the plan and the app.')
param location string

@description('Tags for every resource; the app also gets azd-service-name.')
param tags object

@description('Python version of the Flex Consumption runtime.')
@allowed([
  '3.11'
  '3.12'
  '3.13'
])
param pythonVersion string = '3.11'

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// Dataverse enforces at most 52 concurrent requests per user, and every instance calls Dataverse
// as the same application user. host.json lets each instance run maxConcurrentCalls = 8 messages
// at a time, each making its Dataverse requests one after another, so an instance has at most 8
// requests in flight:
//     6 instances x 8 = 48 < 52,
// leaving 4 for the reconcile timer (its own function group, a singleton) and an admin's tools.
// Throughput is bound by the request count instead (6,000 per 300 s = 20 requests/s per user and
// web server), which takes only rate x time per request in flight to reach:
//     20/s x 0.1 s = 2 requests (0.4 at 20 ms),
// so one instance's 8 reach it for requests of up to 8 / 20 = 0.4 s (benchmarks/storm.py: a
// scaled 120/s at 23 ms a request is reached from 3 workers). More instances add throughput only
// where their sessions land on other web servers (limits are per server); 6 x 8 covers six.
// tests/infra recomputes this from host.json. If a region refuses a maximum below 40 (values below
// 40 were rolled out region by region), keep the product under 52 the other way round:
// maximumInstanceCount 40 with maxConcurrentCalls 1 in host.json.
@description('Most instances the Service Bus function scales out to (see the arithmetic above).')
@minValue(1)
@maxValue(6)
param maximumInstanceCount int = 6

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Storage account for AzureWebJobsStorage and the guardrail\'s tables.')
param storageAccountName string

@description('URL of the blob container Flex Consumption deploys the app package from.')
param deploymentContainerUrl string

@description('Service Bus host name, e.g. contoso.servicebus.windows.net.')
param serviceBusFullyQualifiedNamespace string

@description('Queue the trigger reads.')
param serviceBusQueueName string

@description('Application Insights connection string (not a secret; see monitoring.bicep).')
param appInsightsConnectionString string

@description('Dataverse environment root URL, e.g. https://contoso.crm.dynamics.com.')
param dataverseUrl string

@description('Microsoft Graph root URL.')
param graphUrl string = 'https://graph.microsoft.com'

@description('Policy file, relative to the app root.')
param guardrailsPolicy string = 'policy.yaml'

@description('Prefix of the guardrail\'s table names.')
param guardrailsTablePrefix string = 'guardrails'

@description('true: decide and audit, but write nothing. The first safe run is policy mode: audit, not this switch.')
@allowed([
  'true'
  'false'
])
param guardrailsDryRun string = 'false'

@description('NCRONTAB schedule of the reconcile run (seconds first).')
param guardrailsReconcileSchedule string = '0 0 2 * * *'

resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2023-12-01' = {
  name: appName
  location: location
  tags: union(tags, {
    'azd-service-name': 'guardrails'
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
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      // Identity-based connections only. The Flex-deprecated settings (FUNCTIONS_WORKER_RUNTIME,
      // FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE, WEBSITE_CONTENT*) stay out: the
      // runtime and the package location are in functionAppConfig below.
      appSettings: [
        {
          name: 'SERVICEBUS__credential'
          value: 'managedidentity'
        }
        {
          name: 'SERVICEBUS__fullyQualifiedNamespace'
          value: serviceBusFullyQualifiedNamespace
        }
        {
          name: 'SERVICEBUS__clientId'
          value: identityClientId
        }
        {
          name: 'SERVICEBUS_QUEUE'
          value: serviceBusQueueName
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storageAccountName
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsightsConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
        {
          name: 'DATAVERSE_URL'
          value: dataverseUrl
        }
        {
          name: 'GRAPH_URL'
          value: graphUrl
        }
        {
          name: 'AZURE_TENANT_ID'
          value: tenant().tenantId
        }
        {
          // The user-assigned identity: the app asks it for tokens to Dataverse and Graph.
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        {
          name: 'GUARDRAILS_POLICY'
          value: guardrailsPolicy
        }
        {
          name: 'GUARDRAILS_TABLE_PREFIX'
          value: guardrailsTablePrefix
        }
        {
          name: 'GUARDRAILS_DRY_RUN'
          value: guardrailsDryRun
        }
        {
          name: 'GUARDRAILS_RECONCILE_SCHEDULE'
          value: guardrailsReconcileSchedule
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

output appName string = app.name
output appId string = app.id
