// What an operator watches (README "Telemetry"): an alert on dead-lettered messages, an alert on the
// end-to-end latency, and a workbook with outcomes, latency, 429s, retries, queue depth and dead letters.
// Local resources like the rest of infra/ (the tests scan every resource; no registry modules).
//
// Sources: Service Bus platform metrics DeadletteredMessages and ActiveMessages (Count; Average/Minimum/Maximum;
// dimension EntityName; PT1M) from "Supported metrics - Microsoft.ServiceBus/Namespaces". The p2c.* custom
// metrics are the ones p2csync/telemetry/metrics.py records; the Azure Monitor exporter writes them to
// customMetrics (a histogram as valueSum/valueCount/valueMax), dimensions in customDimensions.

@description('Azure region of the log alert and the workbook.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Name prefix of the alert rules and the action group.')
param namePrefix string

@description('Resource id of the Service Bus namespace.')
param serviceBusNamespaceId string

@description('Resource id of the Application Insights component that receives the p2c.* metrics.')
param applicationInsightsId string

@description('E-mail address alerted; empty: the alerts only show in the portal.')
param alertEmailAddress string = ''

@description('Alert when the average end-to-end latency (source event time to counterpart written) over 15 minutes exceeds this many seconds.')
@minValue(1)
param latencyThresholdSeconds int = 120

var notify = !empty(alertEmailAddress)

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (notify) {
  name: '${namePrefix}-ops'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'p2c-ops'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

// A dead letter needs a person: a message the sync could not apply (its reason is on the message;
// `python -m p2csync deadletters list`). Any dead letter on either queue fires, once per queue.
resource deadLetterAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-dead-letters'
  location: 'global'
  tags: tags
  properties: {
    description: 'A message was dead-lettered on a p2c-sync queue: see `python -m p2csync deadletters list`.'
    severity: 2
    enabled: true
    scopes: [
      serviceBusNamespaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'DeadLettered'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    actions: notify ? [
      {
        actionGroupId: actionGroup.id
      }
    ] : []
  }
}

// The end-to-end latency (p2c.sync.latency, seconds): a log search alert over customMetrics, because a
// custom metric exists only once emitted and a histogram's average is valueSum / valueCount.
resource latencyAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-latency'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix}-latency'
    description: 'The average time from a source change to its counterpart written exceeds ${latencyThresholdSeconds} s.'
    severity: 3
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where name == "p2c.sync.latency" | extend flow = tostring(customDimensions.flow) | summarize AverageSeconds = sum(valueSum) / sum(valueCount) by flow'
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'AverageSeconds'
          dimensions: [
            {
              name: 'flow'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: latencyThresholdSeconds
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: notify ? [
        actionGroup.id
      ] : []
    }
  }
}

// The workbook: Application Insights queries over the p2c.* metrics, and the namespace's queue metrics.
var workbookItems = [
  {
    type: 1
    name: 'title'
    content: {
      json: '## p2c-sync\nOutcomes by flow and reason, end-to-end latency, HTTP 429s and retries from the sync\'s own metrics; queue depth and dead letters from Service Bus. The full story of one record: `python -m p2csync trace <key>`.'
    }
  }
  {
    type: 9
    name: 'parameters'
    content: {
      version: 'KqlParameterItem/1.0'
      parameters: [
        {
          id: 'time-range'
          version: 'KqlParameterItem/1.0'
          name: 'TimeRange'
          type: 4
          isRequired: true
          value: {
            durationMs: 86400000
          }
          typeSettings: {
            selectableValues: [
              {
                durationMs: 3600000
              }
              {
                durationMs: 86400000
              }
              {
                durationMs: 604800000
              }
            ]
          }
        }
      ]
    }
  }
  {
    type: 3
    name: 'outcomes'
    content: {
      version: 'KqlItem/1.0'
      title: 'Outcomes by flow, kind and reason'
      query: 'customMetrics | where name == "p2c.outcomes" | extend flow = tostring(customDimensions.flow), kind = tostring(customDimensions.kind), reason = tostring(customDimensions.reason) | summarize messages = sum(valueSum) by flow, kind, reason | order by messages desc'
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'table'
    }
  }
  {
    type: 3
    name: 'latency'
    content: {
      version: 'KqlItem/1.0'
      title: 'End-to-end latency (s): source event to counterpart written'
      query: 'customMetrics | where name == "p2c.sync.latency" | extend flow = tostring(customDimensions.flow) | summarize average = sum(valueSum) / sum(valueCount), maximum = max(valueMax) by flow, bin(timestamp, 5m)'
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'timechart'
    }
  }
  {
    type: 3
    name: 'throttling'
    content: {
      version: 'KqlItem/1.0'
      title: 'HTTP 429s and retries by system'
      query: 'customMetrics | where name in ("p2c.http.throttled", "p2c.http.retries") | extend system = tostring(customDimensions.system) | summarize count_ = sum(valueSum) by series = strcat(name, " ", system), bin(timestamp, 5m)'
      queryType: 0
      resourceType: 'microsoft.insights/components'
      timeContextFromParameter: 'TimeRange'
      visualization: 'barchart'
    }
  }
  {
    type: 10
    name: 'queues'
    content: {
      version: 'MetricsItem/2.0'
      title: 'Queue depth and dead letters per queue'
      size: 0
      chartType: 2
      resourceType: 'microsoft.servicebus/namespaces'
      metricScope: 0
      resourceIds: [
        serviceBusNamespaceId
      ]
      timeContextFromParameter: 'TimeRange'
      metrics: [
        {
          namespace: 'microsoft.servicebus/namespaces'
          metric: 'microsoft.servicebus/namespaces--ActiveMessages'
          aggregation: 3
          splitBy: 'EntityName'
        }
        {
          namespace: 'microsoft.servicebus/namespaces'
          metric: 'microsoft.servicebus/namespaces--DeadletteredMessages'
          aggregation: 3
          splitBy: 'EntityName'
        }
      ]
    }
  }
]

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, namePrefix, 'p2c-sync-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'p2c-sync operations'
    category: 'workbook'
    sourceId: applicationInsightsId
    version: 'Notebook/1.0'
    serializedData: string({
      version: 'Notebook/1.0'
      items: workbookItems
      isLocked: false
      fallbackResourceIds: [
        applicationInsightsId
      ]
    })
  }
}

output deadLetterAlertId string = deadLetterAlert.id
output latencyAlertId string = latencyAlert.id
output workbookId string = workbook.id
