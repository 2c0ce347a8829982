{{/*
The alert rules (Prometheus rule groups), shared by the PrometheusRule and, through
`make deploy-generate`, deploy/prometheus/pinecall-bridge.rules.yaml. Thresholds: .Values.alerts.
Alertmanager templates ({{ $labels.pod }}) are escaped as {{`...`}} so Helm leaves them alone.
Aggregations keep namespace and pod, the labels Kubernetes service discovery adds.
*/}}
{{- define "pinecall-bridge.alertGroups" -}}
{{- $a := .Values.alerts }}
{{- $job := include "pinecall-bridge.fullname" . -}}
groups:
  - name: pinecall-bridge
    rules:
      - alert: PinecallBridgePublishingStalled
        # Events come in but none reaches Kafka: the one symptom every other failure leads to.
        expr: |
          (sum by (namespace, pod) (increase(pinecall_bridge_events_received_total[{{ $a.publishStalledMinutes }}m])) > 0)
          unless
          (sum by (namespace, pod) (increase(pinecall_bridge_events_published_total[{{ $a.publishStalledMinutes }}m])) > 0)
        for: 1m
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s received events but published none for %vm" "{{ $labels.pod }}" $a.publishStalledMinutes | quote }}
          description: {{ printf "%s/%s received events in the last %v minutes and Kafka acknowledged none of them: webhooks are answered 503 and Pinecall keeps retrying." "{{ $labels.namespace }}" "{{ $labels.pod }}" $a.publishStalledMinutes | quote }}
          runbook_url: {{ printf "%s#pinecallbridgepublishingstalled" $a.runbookUrl }}
      - alert: PinecallBridgeRejectionRateHigh
        # Rejected requests are lost (Pinecall does not retry a 4xx); kafka_unavailable (503,
        # retried) is left to the Kafka alerts. `or ... * 0`: no events received at all is 100 %.
        expr: |
          sum by (namespace) (rate(pinecall_bridge_events_rejected_total{reason!="kafka_unavailable"}[5m]))
          /
          (
            sum by (namespace) (rate(pinecall_bridge_events_rejected_total{reason!="kafka_unavailable"}[5m]))
            + (sum by (namespace) (rate(pinecall_bridge_events_received_total[5m])) or sum by (namespace) (rate(pinecall_bridge_events_rejected_total{reason!="kafka_unavailable"}[5m])) * 0)
          )
          > {{ $a.rejectedRatio }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "%s of webhook requests to pinecall-bridge in %s are rejected" "{{ $value | humanizePercentage }}" "{{ $labels.namespace }}" | quote }}
          description: {{ printf "More than %v%% of requests were refused (bad signature, body or content type) for 10 minutes. Pinecall does not retry these: their events are lost." (mulf $a.rejectedRatio 100) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgerejectionratehigh" $a.runbookUrl }}
      - alert: PinecallBridgeDeadLettersHigh
        expr: |
          sum by (namespace) (rate(pinecall_bridge_events_dead_lettered_total[5m]))
          /
          (
            sum by (namespace) (rate(pinecall_bridge_events_dead_lettered_total[5m]))
            + (sum by (namespace) (rate(pinecall_bridge_events_received_total[5m])) or sum by (namespace) (rate(pinecall_bridge_events_dead_lettered_total[5m])) * 0)
          )
          > {{ $a.deadLetterRatio }}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "%s of Pinecall input in %s goes to the dead-letter topic" "{{ $value | humanizePercentage }}" "{{ $labels.namespace }}" | quote }}
          description: {{ printf "More than %v%% of authenticated input was not a recognisable event for 15 minutes: Pinecall may have changed its payloads." (mulf $a.deadLetterRatio 100) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgedeadlettershigh" $a.runbookUrl }}
      - alert: PinecallBridgePublishLatencyHigh
        expr: |
          histogram_quantile(0.99, sum by (namespace, le) (rate(pinecall_bridge_publish_duration_seconds_bucket[5m])))
          > {{ $a.publishLatencyP99Seconds }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "pinecall-bridge p99 publish latency in %s is %s" "{{ $labels.namespace }}" "{{ $value | humanizeDuration }}" | quote }}
          description: {{ printf "The 99th percentile from receipt to Kafka's acknowledgement has been above %vs for 10 minutes." $a.publishLatencyP99Seconds | quote }}
          runbook_url: {{ printf "%s#pinecallbridgepublishlatencyhigh" $a.runbookUrl }}
      - alert: PinecallBridgeEventLagHigh
        expr: |
          histogram_quantile(0.99, sum by (namespace, le) (rate(pinecall_bridge_event_lag_seconds_bucket[5m])))
          > {{ $a.eventLagP99Seconds }}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "pinecall-bridge p99 event lag in %s is %s" "{{ $labels.namespace }}" "{{ $value | humanizeDuration }}" | quote }}
          description: {{ printf "The 99th percentile from an event's own time to Kafka's acknowledgement has been above %vs for 15 minutes: events reach Kafka late (Pinecall retries, or a slow cluster)." $a.eventLagP99Seconds | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeeventlaghigh" $a.runbookUrl }}
      - alert: PinecallBridgeKafkaDisconnected
        expr: |
          max by (namespace, pod) (pinecall_bridge_kafka_connected) == 0
        for: {{ $a.kafkaDisconnectedMinutes }}m
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s cannot reach Kafka" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s has not reached the Kafka cluster for %v minutes; it is unready and answers webhooks 503." "{{ $labels.namespace }}" "{{ $labels.pod }}" $a.kafkaDisconnectedMinutes | quote }}
          runbook_url: {{ printf "%s#pinecallbridgekafkadisconnected" $a.runbookUrl }}
      - alert: PinecallBridgeWebSocketDown
        # Never connected during the window while still trying: the gauge alone is 0 on pods
        # without the feed too, so reconnect attempts tell an enabled feed from a disabled one.
        expr: |
          max by (namespace, pod) (max_over_time(pinecall_bridge_websocket_connected[{{ $a.websocketDownMinutes }}m])) == 0
          and on (namespace, pod)
          sum by (namespace, pod) (increase(pinecall_bridge_websocket_reconnects_total[{{ $a.websocketDownMinutes }}m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s has no WebSocket connection to Pinecall" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s has not been connected to Pinecall's WebSocket feed for %v minutes and keeps reconnecting; events still arrive by webhook, if Pinecall sends them." "{{ $labels.namespace }}" "{{ $labels.pod }}" $a.websocketDownMinutes | quote }}
          runbook_url: {{ printf "%s#pinecallbridgewebsocketdown" $a.runbookUrl }}
      - alert: PinecallBridgePodNotReady
        expr: |
          max by (namespace, pod) (pinecall_bridge_ready) == 0
        for: {{ $a.notReadyMinutes }}m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s is not ready" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s has answered /readyz 503 for %v minutes, so it receives no webhooks." "{{ $labels.namespace }}" "{{ $labels.pod }}" $a.notReadyMinutes | quote }}
          runbook_url: {{ printf "%s#pinecallbridgepodnotready" $a.runbookUrl }}
      - alert: PinecallBridgeTargetDown
        # A crash-looping pod reports nothing itself: Prometheus' own view.
        expr: |
          up{job="{{ $job }}"} == 0
        for: {{ $a.notReadyMinutes }}m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Prometheus cannot scrape %s" "{{ $labels.instance }}" | quote }}
          description: {{ printf "The pinecall-bridge target %s (job %s) has been down for %v minutes." "{{ $labels.instance }}" $job $a.notReadyMinutes | quote }}
          runbook_url: {{ printf "%s#pinecallbridgetargetdown" $a.runbookUrl }}
      - alert: PinecallBridgeReplicasUnavailable
        # Needs kube-state-metrics; without it this rule never fires.
        expr: |
          kube_deployment_spec_replicas{deployment="{{ $job }}"}
          > kube_deployment_status_replicas_available{deployment="{{ $job }}"}
        for: {{ mul $a.notReadyMinutes 2 }}m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Deployment %s has unavailable replicas" "{{ $labels.namespace }}/{{ $labels.deployment }}" | quote }}
          description: {{ printf "Fewer replicas are available than wanted for %v minutes (pods not ready, crash-looping or unschedulable)." (mul $a.notReadyMinutes 2) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgereplicasunavailable" $a.runbookUrl }}
{{- end }}
