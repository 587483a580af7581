// Day-one alerts, all to one action group that emails the admin:
//   - a message in the queue's dead-letter queue (the guardrail could not process an event),
//   - any failed decision (`guardrails.decision` audit record with result GiveUp),
//   - more reverts in an hour than expected (result Done with wrote true): a runaway policy or
//     someone fighting the guardrail.

@description('Region of the log alert rules (the Application Insights region).')
param location string

@description('Tags for every resource.')
param tags object

@description('Name prefix of the alert resources.')
param namePrefix string

@description('Email address the alerts go to.')
param alertEmail string

@description('Resource id of the Service Bus namespace.')
param serviceBusNamespaceId string

@description('Queue whose dead-letter count is watched.')
param queueName string

@description('Resource id of the Application Insights component holding the audit records.')
param appInsightsId string

@description('Reverts (writes back to Dataverse) in one hour above which the admin is alerted.')
@minValue(1)
param revertsPerHourThreshold int = 20

// The audit records are structlog JSON lines (guardrails/audit.py): the trace message is the JSON
// object, with event "guardrails.decision", result (Done, NothingToDo, RetryLater, GiveUp) and
// wrote (true when the guardrail wrote the row back).
var decisionRecords = 'traces | where message has "guardrails.decision" | extend record = parse_json(message) | where tostring(record.event) == "guardrails.decision"'

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-admins'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'guardrails'
    enabled: true
    emailReceivers: [
      {
        name: 'admin-email'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource deadLetterAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-dead-lettered'
  location: 'global'
  tags: tags
  properties: {
    description: 'A message is in the dead-letter queue of ${queueName}: the guardrail gave up on a mailbox event after every delivery, or the event expired unprocessed. Inspect it with Service Bus Explorer.'
    severity: 1
    enabled: true
    scopes: [
      serviceBusNamespaceId
    ]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'DeadletteredMessages'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                queueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    autoMitigate: true
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

resource failedDecisionAlert 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: '${namePrefix}-failed-decisions'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix}: failed guardrail decisions'
    description: 'The guardrail gave up on a mailbox event (guardrails.decision with result GiveUp). The audit record says why.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: '${decisionRecords} | where tostring(record.result) == "GiveUp"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource revertRateAlert 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: '${namePrefix}-reverts-per-hour'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix}: reverts per hour above ${revertsPerHourThreshold}'
    description: 'The guardrail wrote more than ${revertsPerHourThreshold} mailbox rows back in the last hour (guardrails.decision with result Done and wrote true): a policy that is too strict, or someone changing mailboxes against it.'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    criteria: {
      allOf: [
        {
          query: '${decisionRecords} | where tostring(record.result) == "Done" and tobool(record.wrote) == true'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: revertsPerHourThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output actionGroupId string = actionGroup.id
