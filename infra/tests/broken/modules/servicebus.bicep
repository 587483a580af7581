// Service Bus: the namespace, the queue Dataverse posts mailbox events to, the Send-only SAS rule
// Dataverse authenticates with, and the function identity's data-plane roles on that queue.
//
// The custom checks in infra/checks read the values below as literals or parameter defaults
// (checkov does not follow parameters across module boundaries), so keep them that way.

@description('Service Bus namespace name.')
param namespaceName string

@description('Region of the namespace.')
param location string

@description('Tags for every resource.')
param tags object

@description('Queue the Dataverse service endpoint posts to (the app reads it as SERVICEBUS_QUEUE).')
param queueName string = 'dataverse-mailbox-events'

@description('Deliveries before a message is dead-lettered. 5-10: enough retries to ride out a transient Dataverse or Graph failure, few enough that a poison message reaches the dead-letter queue (and the alert) within the hour.')
@minValue(5)
@maxValue(10)
param maxDeliveryCount int = 10

@description('Principal (object) id of the function app\'s user-assigned identity.')
param functionPrincipalId string

// Built-in role definition ids (the same in every tenant).
var serviceBusDataReceiverRoleId = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var serviceBusDataSenderRoleId = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'

// Local (SAS) authentication stays enabled ONLY because a Dataverse service endpoint can
// authenticate to Service Bus with a SAS key or token, nothing else. The function app never uses
// SAS: it connects with its managed identity (SERVICEBUS__credential). The one SAS rule this
// template creates is the Send-only rule on the queue below. Azure also creates a namespace-level
// RootManageSharedAccessKey on every namespace; nothing here uses it, and an admin may delete it
// after deployment.
// (Comment blocks inside a resource body are kept to four lines: checkov's Bicep parser rejects
// longer ones.)
resource namespace 'Microsoft.ServiceBus/namespaces@2021-11-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    minimumTlsVersion: '1.2'
    // SAS for Dataverse only; see above.
    disableLocalAuth: false
    // Dataverse posts from Microsoft's cloud, outside any network of ours.
    publicNetworkAccess: 'Enabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2021-11-01' = {
  parent: namespace
  name: queueName
  properties: {
    // host.json: functionTimeout and serviceBus.maxAutoLockRenewalDuration are both 00:05:00, and
    // 5 minutes is the longest lock Service Bus grants; tests/infra checks the three agree.
    lockDuration: 'PT5M'
    maxDeliveryCount: 50 // BROKEN: CKV_GR_6 (outside 5-10)
    // An event nobody processed within its time to live goes to the dead-letter queue, where the
    // dead-letter alert sees it, instead of vanishing.
    deadLetteringOnMessageExpiration: false // BROKEN: CKV_GR_1
    // A mailbox change that has waited two weeks is stale; it is dead-lettered, not dropped.
    defaultMessageTimeToLive: 'P14D'
    // Dataverse posts without a session id; a session-enabled queue would reject its messages.
    requiresSession: false
    requiresDuplicateDetection: false
    enablePartitioning: false
    enableBatchedOperations: true
    maxSizeInMegabytes: 1024
  }
}

// The Dataverse service endpoint's credential: Send on this queue only. No Listen (it must not
// read or complete the guardrail's messages), no Manage (it must not change or delete the queue).
resource dataverseSendRule 'Microsoft.ServiceBus/namespaces/queues/authorizationRules@2021-11-01' = {
  parent: queue
  name: 'dataverse-send'
  properties: {
    rights: [
      'Send'
      'Listen' // BROKEN: CKV_GR_2 (Dataverse could read the guardrail's messages)
    ]
  }
}

// Receive: the trigger reads, completes and dead-letters messages on this queue.
resource receiverRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: queue
  name: guid(queue.id, functionPrincipalId, serviceBusDataReceiverRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataReceiverRoleId)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Send: the guardrail schedules delayed retry copies of a message onto this same queue.
resource senderRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: queue
  name: guid(queue.id, functionPrincipalId, serviceBusDataSenderRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSenderRoleId)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output namespaceName string = namespace.name
output namespaceId string = namespace.id
// serviceBusEndpoint is https://<name>.servicebus.windows.net:443/ (the suffix differs in
// sovereign clouds); the trigger wants the bare host name.
output fullyQualifiedNamespace string = split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]
output queueName string = queue.name
output dataverseSendRuleName string = dataverseSendRule.name
// The rule's resource id only: its keys are read by an admin when registering the Dataverse
// service endpoint (az servicebus queue authorization-rule keys list), never by this template.
output dataverseSendRuleId string = dataverseSendRule.id
