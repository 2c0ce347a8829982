{{/*
The alert rules (Prometheus rule groups), shared by the PrometheusRule and, through
`make deploy-generate`, deploy/prometheus/pinecall-bridge.rules.yaml. Thresholds: .Values.alerts.
Alertmanager templates ({{ $labels.pod }}) are escaped as {{`...`}} so Helm leaves them alone.
Aggregations keep namespace and pod, the labels Kubernetes service discovery adds. A pod with
several worker processes (config.http.workers) labels each one's series `worker`: a pod-wide
state takes the worst worker (min of a 1-when-fine gauge), a per-process one keeps `worker`.
*/}}
{{- /* Minutes as a PromQL duration: whole minutes as "10m"; a fraction (a test's short windows,
which PromQL takes only in a smaller unit) in whole seconds, rounded up. */}}
{{- define "pinecall-bridge.minutes" -}}
{{- $seconds := mulf . 60 | ceil | int -}}
{{- if mod $seconds 60 }}{{ $seconds }}s{{ else }}{{ div $seconds 60 }}m{{ end -}}
{{- end }}
{{- /* A threshold as a person writes it: Helm reads a values file's numbers as float64, which
print with an exponent from a million up (1e+06) or below 0.0001 (5e-05). A whole number
without a point, else JSON's shortest form, its exponent (only below 1e-6) spelled out in zeros. */}}
{{- define "pinecall-bridge.number" -}}
{{- if not (kindIs "float64" .) }}{{ . }}
{{- else if eq . (floor .) }}{{ printf "%.0f" . }}
{{- else }}
{{- $text := toJson . }}
{{- if contains "e-" $text }}
{{- $sign := ternary "-" "" (hasPrefix "-" $text) }}
{{- $parts := splitList "e-" (trimPrefix "-" $text) }}
{{- $sign }}0.{{ repeat (sub (atoi (index $parts 1)) 1 | int) "0" }}{{ replace "." "" (index $parts 0) }}
{{- else }}{{ $text }}
{{- end }}
{{- end }}
{{- end }}
{{- /* A ratio (at most 1) as a percentage: mulf multiplies in decimal; rounding to 8 places
keeps a float product's residue (0.07 x 100 = 7.000000000000001) out all the same. */}}
{{- define "pinecall-bridge.percent" -}}
{{- include "pinecall-bridge.number" (round (mulf . 100) 8) }}
{{- end }}
{{- /* A regex of the names of the Deployment's pods (the argument: its name), not another
Deployment's (<name>-canary-...): <name>-<ReplicaSet hash, up to 10>-<5 random>, except that
Kubernetes cuts the part before the random 5 at 58 characters (names.SimpleNameGenerator), so with
a name over 46 characters the hash is cut short or its dash lost, and past 56 the name itself. */}}
{{- define "pinecall-bridge.podPattern" -}}
{{- $prefix := printf "%s-" . }}
{{- $room := sub 58 (len $prefix) | int }}
{{- if le $room 0 }}{{ regexQuoteMeta (trunc 58 $prefix) }}[a-z0-9]{5}
{{- else if gt $room 10 }}{{ regexQuoteMeta $prefix }}[a-z0-9]+-[a-z0-9]{5}
{{- else if eq $room 1 }}{{ regexQuoteMeta $prefix }}[a-z0-9][a-z0-9]{5}
{{- else }}{{ regexQuoteMeta $prefix }}(?:[a-z0-9]{1,{{ sub $room 1 }}}-|[a-z0-9]{ {{- $room -}} })[a-z0-9]{5}
{{- end }}
{{- end }}
{{- define "pinecall-bridge.alertGroups" -}}
{{- $a := .Values.alerts }}
{{- $stalled := include "pinecall-bridge.minutes" $a.publishStalledMinutes }}
{{- $stalledFor := include "pinecall-bridge.minutes" $a.stalledForMinutes }}
{{- $notReady := include "pinecall-bridge.minutes" $a.notReadyMinutes }}
{{- $dedupLag := include "pinecall-bridge.minutes" $a.dedupLagMinutes }}
{{- $websocketDown := include "pinecall-bridge.minutes" $a.websocketDownMinutes }}
{{- $websocketGap := include "pinecall-bridge.minutes" $a.websocketGapMinutes }}
{{- $callLogDown := include "pinecall-bridge.minutes" $a.callLogDownMinutes }}
{{- $callLogGaps := include "pinecall-bridge.minutes" $a.callLogGapsMinutes }}
{{- $adminRefused := include "pinecall-bridge.minutes" $a.adminConnectionsRefusedMinutes }}
{{- $adminRefusedWindow := include "pinecall-bridge.minutes" (divf $a.adminConnectionsRefusedMinutes 2) }}
{{- $job := include "pinecall-bridge.fullname" . -}}
{{- $pods := include "pinecall-bridge.podPattern" $job -}}
groups:
  - name: pinecall-bridge
    rules:
      - alert: PinecallBridgePublishingStalled
        # Events come in but none reaches the ingest topic: the one symptom every failure of the
        # ingest stage leads to. (The output is the dedup stage's: PinecallBridgeDedupStalled.)
        # Events dropped on purpose (ephemeral, markers) are not expected in the ingest topic.
        # Over 0.5, not 0: increase() extrapolates a counter starting at 0 in the window less far
        # than one above 0, so received less dropped leaves a fraction where all were dropped.
        # Per worker process (config.http.workers): each has its own producer, and a pod's other
        # workers ingesting would hide the one that stalls (its share of webhooks, the feed).
        expr: |
          (
            sum by (namespace, pod, worker) (increase(pinecall_bridge_events_received_total[{{ $stalled }}]))
            - (sum by (namespace, pod, worker) (increase(pinecall_bridge_events_dropped_total[{{ $stalled }}])) or sum by (namespace, pod, worker) (increase(pinecall_bridge_events_received_total[{{ $stalled }}])) * 0)
            > 0.5
          )
          unless
          (sum by (namespace, pod, worker) (increase(pinecall_bridge_events_ingested_total[{{ $stalled }}])) > 0)
        for: {{ $stalledFor }}
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s received events but wrote none to the ingest topic for %vm" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.publishStalledMinutes) | quote }}
          description: {{ printf "%s/%s received events in the last %v minutes and Kafka acknowledged none of them in the ingest topic: webhooks are answered 503, and Pinecall tries each webhook only twice." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.publishStalledMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgepublishingstalled" $a.runbookUrl }}
      - alert: PinecallBridgeDedupStalled
        # The ingest topic fills but the dedup stage commits nothing: no output and no duplicate
        # dropped anywhere in the namespace (whichever pods own the ingest partitions).
        expr: |
          (sum by (namespace) (increase(pinecall_bridge_events_ingested_total[{{ $stalled }}])) > 0)
          unless on (namespace)
          (
            (sum by (namespace) (increase(pinecall_bridge_events_published_total[{{ $stalled }}])) > 0)
            or
            (sum by (namespace) (increase(pinecall_bridge_events_duplicate_total[{{ $stalled }}])) > 0)
          )
        for: {{ $stalledFor }}
        labels:
          severity: critical
        annotations:
          summary: {{ printf "pinecall-bridge in %s ingested events but output none for %vm" "{{ $labels.namespace }}" (include "pinecall-bridge.number" $a.publishStalledMinutes) | quote }}
          description: {{ printf "Events reached the ingest topic in the last %v minutes but the dedup stage committed no output record and dropped no duplicate: consumers see nothing new. Webhooks are still answered 200; the events wait in the ingest topic." (include "pinecall-bridge.number" $a.publishStalledMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededupstalled" $a.runbookUrl }}
      - alert: PinecallBridgeRejectionRateHigh
        # Rejected input is lost (Pinecall does not retry a 4xx); 503s (kafka_unavailable,
        # overloaded and internal_error, retried once) are PinecallBridgeWebhooksRefused503's,
        # but stopping's (a webhook a pod's stop released, retried to another pod) nobody's;
        # requests to no webhook route (a scanner's too) PinecallBridgeWebhooksUnrouted's. `or ... * 0`:
        # no events received at all is 100 %.
        # Per channel: the call logs' volume must not hide every webhook being refused.
        # The denominator counts a refusal only if its event is not in received already: too_large
        # (an event refused after receipt) and shutdown (the feed's batch a stop cut off) count 0
        # there, or the ratio read r/(1+r) and fired at 5.26 %; their never-received kin
        # (too_large_unreceived, shutdown_unreceived: a note or a frame too large, a queue cut
        # off) count whole, as every other reason does.
        expr: |
          sum by (namespace, channel) (rate(pinecall_bridge_events_rejected_total{reason!~"kafka_unavailable|stopping|overloaded|internal_error|not_found|method_not_allowed"}[5m]))
          /
          (
            sum by (namespace, channel) (
              rate(pinecall_bridge_events_rejected_total{reason!~"kafka_unavailable|stopping|overloaded|internal_error|not_found|method_not_allowed|too_large|shutdown"}[5m])
              or rate(pinecall_bridge_events_rejected_total{reason!~"kafka_unavailable|stopping|overloaded|internal_error|not_found|method_not_allowed"}[5m]) * 0
            )
            + (sum by (namespace, channel) (rate(pinecall_bridge_events_received_total[5m])) or sum by (namespace, channel) (rate(pinecall_bridge_events_rejected_total{reason!~"kafka_unavailable|stopping|overloaded|internal_error|not_found|method_not_allowed"}[5m])) * 0)
          )
          > {{ include "pinecall-bridge.number" $a.rejectedRatio }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "%s of %s input to pinecall-bridge in %s is rejected" "{{ $value | humanizePercentage }}" "{{ $labels.channel }}" "{{ $labels.namespace }}" | quote }}
          description: {{ printf "More than %v%% of one channel's input was refused for 10 minutes (webhooks: a bad signature, body or content type; the feed: a full backlog). Pinecall does not send these again: their events are lost." (include "pinecall-bridge.percent" $a.rejectedRatio) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgerejectionratehigh" $a.runbookUrl }}
      - alert: PinecallBridgeDeadLettersHigh
        expr: |
          sum by (namespace) (rate(pinecall_bridge_events_dead_lettered_total[5m]))
          /
          (
            sum by (namespace) (rate(pinecall_bridge_events_dead_lettered_total[5m]))
            + (sum by (namespace) (rate(pinecall_bridge_events_received_total[5m])) or sum by (namespace) (rate(pinecall_bridge_events_dead_lettered_total[5m])) * 0)
          )
          > {{ include "pinecall-bridge.number" $a.deadLetterRatio }}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "%s of Pinecall input in %s goes to the dead-letter topic" "{{ $value | humanizePercentage }}" "{{ $labels.namespace }}" | quote }}
          description: {{ printf "More than %v%% of authenticated input was not a recognisable event for 15 minutes: Pinecall may have changed its payloads." (include "pinecall-bridge.percent" $a.deadLetterRatio) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgedeadlettershigh" $a.runbookUrl }}
      - alert: PinecallBridgePublishLatencyHigh
        expr: |
          histogram_quantile(0.99, sum by (namespace, le) (rate(pinecall_bridge_publish_duration_seconds_bucket[5m])))
          > {{ include "pinecall-bridge.number" $a.publishLatencyP99Seconds }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "pinecall-bridge p99 publish latency in %s is %s" "{{ $labels.namespace }}" "{{ $value | humanizeDuration }}" | quote }}
          description: {{ printf "The 99th percentile from receipt to the ingest topic's acknowledgement (what a webhook's answer waits for) has been above %vs for 10 minutes." (include "pinecall-bridge.number" $a.publishLatencyP99Seconds) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgepublishlatencyhigh" $a.runbookUrl }}
      - alert: PinecallBridgeEventLagHigh
        expr: |
          histogram_quantile(0.99, sum by (namespace, le) (rate(pinecall_bridge_event_lag_seconds_bucket[5m])))
          > {{ include "pinecall-bridge.number" $a.eventLagP99Seconds }}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "pinecall-bridge p99 event lag in %s is %s" "{{ $labels.namespace }}" "{{ $value | humanizeDuration }}" | quote }}
          description: {{ printf "The 99th percentile from an event's own time to its output record's committed transaction has been above %vs for 15 minutes: consumers see events late (Pinecall retries, a slow cluster, or dedup lag)." (include "pinecall-bridge.number" $a.eventLagP99Seconds) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeeventlaghigh" $a.runbookUrl }}
      - alert: PinecallBridgeDedupLagGrowing
        # The lag SREs watch: an owned ingest partition whose oldest unprocessed record stayed
        # old for the whole window, or whose backlog stayed large and grew.
        expr: |
          max by (namespace, pod, partition) (min_over_time(pinecall_bridge_dedup_lag_seconds[{{ $dedupLag }}])) > {{ include "pinecall-bridge.number" $a.dedupLagSeconds }}
          or
          (
            max by (namespace, pod, partition) (min_over_time(pinecall_bridge_dedup_lag_records[{{ $dedupLag }}])) > {{ include "pinecall-bridge.number" $a.dedupLagRecords }}
            and
            max by (namespace, pod, partition) (delta(pinecall_bridge_dedup_lag_records[{{ $dedupLag }}])) > 0
          )
        for: {{ $stalledFor }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Dedup stage of pod %s is behind on ingest partition %s" "{{ $labels.pod }}" "{{ $labels.partition }}" | quote }}
          description: {{ printf "%s/%s has been more than %vs or %v records behind on ingest partition %s for %v minutes: its events reach the output topics late." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.dedupLagSeconds) (include "pinecall-bridge.number" $a.dedupLagRecords) "{{ $labels.partition }}" (include "pinecall-bridge.number" $a.dedupLagMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededuplaggrowing" $a.runbookUrl }}
      - alert: PinecallBridgeDedupFetchesUnanswered
        # One pod's dedup stage whose fetches of an owned ingest partition go unanswered or fail
        # (a broker out of its reach, a refused ACL) while the other pods output theirs:
        # DedupStalled is namespace-wide, and the pod's lag gauges count from its last answered
        # fetch, so its lag reads as it was. Healthy, an answer comes every second at least (the
        # broker holds an empty fetch up to 1 s); a held partition reads 0 (DedupPartitionsHeld).
        # The age is itself how long no answer came, so it is held stalledForMinutes by adding
        # them to it, not by `for`: a member whose session flaps has no series at some scrapes
        # (the ages of an expired session are withdrawn), each gap would restart `for`, and its
        # age, back, goes on from the last answer. last_over_time bridges such gaps; a partition
        # handed on (withdrawn for good) ages no further: it pages only if its age had passed the
        # sum while owned, and then for up to the range past the handover.
        expr: |
          max by (namespace, pod, partition) (last_over_time(pinecall_bridge_dedup_fetch_age_seconds[2m])) > {{ include "pinecall-bridge.number" $a.dedupFetchAgeSeconds }} + {{ mulf $a.stalledForMinutes 60 | ceil | int }}
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Kafka answers no dedup fetch of pod %s on ingest partition %s" "{{ $labels.pod }}" "{{ $labels.partition }}" | quote }}
          description: {{ printf "%s/%s owns ingest partition %s but Kafka has answered none of its fetches for it for more than %vs: its events are not output, and its lag in records reads as at the last answer. The log says why (message: dedup stage fetch failed, or a refusal naming the ACL to grant)." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $labels.partition }}" (include "pinecall-bridge.number" (addf $a.dedupFetchAgeSeconds (mulf $a.stalledForMinutes 60 | ceil))) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededupfetchesunanswered" $a.runbookUrl }}
      - alert: PinecallBridgeDedupPartitionsUnowned
        # A partition no pod processes has no lag series at all (lag is per owned partition).
        # The count is the topic's, from the pods' Kafka metadata: a topic made elsewhere or
        # grown while running may differ from config.topics.ingestPartitions.
        # Not while no process in the namespace reaches Kafka: an outage loses the partitions of
        # the transaction open then, and past the session timeout a pod counts none owned (the
        # group hands them on), so it would fire or not by chance; KafkaDisconnected is the
        # alert, and `for` starts afresh.
        # A partition assigned to a pod and starting (in its first attempt: its committed offset,
        # its turn for a restore, the restore) is not unowned: a takeover at the cap restores for
        # minutes, 4 at a time. Unless the process's restores have read nothing for 5 minutes
        # with records left (a restore goes on after a stall for ever: its partitions would be
        # nobody's and no page), and a start that failed (retrying) counts as unowned. Per worker
        # process (config.http.workers): each restores its own partitions, and another worker
        # of the pod reading would hide one whose restores read nothing.
        # `or ... * 0`: none starting (or a pod without the gauge, older).
        expr: |
          (
            max by (namespace) (pinecall_bridge_ingest_partitions)
            - sum by (namespace) (pinecall_bridge_dedup_partitions_owned)
            - (
              sum by (namespace) (
                pinecall_bridge_dedup_partitions_starting
                unless on (namespace, pod, worker)
                (
                  sum by (namespace, pod, worker) (rate(pinecall_bridge_dedup_restore_records_read_total[5m])) == 0
                  and on (namespace, pod, worker)
                  sum by (namespace, pod, worker) (pinecall_bridge_dedup_restore_records_left) > 0
                )
              )
              or sum by (namespace) (pinecall_bridge_dedup_partitions_owned) * 0
            )
            > 0
          )
          unless on (namespace)
          (max by (namespace) (pinecall_bridge_kafka_connected) == 0)
        for: {{ include "pinecall-bridge.minutes" $a.dedupPartitionsUnownedMinutes }}
        labels:
          severity: critical
        annotations:
          summary: {{ printf "%s ingest partitions are processed by no pod in %s" "{{ $value }}" "{{ $labels.namespace }}" | quote }}
          description: {{ printf "For %v minutes %s of the ingest topic's partitions have been owned (restored and running) or being started (restored, or waiting their turn) by no pod: the events on them are not output at all." (include "pinecall-bridge.number" $a.dedupPartitionsUnownedMinutes) "{{ $value }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededuppartitionsunowned" $a.runbookUrl }}
      - alert: PinecallBridgeDedupPartitionsHeld
        # A pod holds an owned partition at an ingest record of a later release's format (README,
        # Upgrading) until a pod of that release takes it over: for minutes in a rolling upgrade,
        # so only past what an upgrade takes. Per namespace, not pod: in a stalled rollout the
        # partition may move between older pods, each holding it again (a pod's `for` restarts).
        # DedupLagGrowing fires on the partition too, without the cause.
        expr: |
          sum by (namespace) (pinecall_bridge_dedup_partitions_held) > 0
        for: {{ include "pinecall-bridge.minutes" $a.dedupPartitionsHeldMinutes }}
        labels:
          severity: critical
        annotations:
          summary: {{ printf "%s ingest partitions in %s are held at records of a later release" "{{ $value }}" "{{ $labels.namespace }}" | quote }}
          description: {{ printf "For %v minutes pods in %s have held %s ingest partitions at a record written by a newer release, in a format they do not know: nothing after it on those partitions is output until a pod of that release owns them. A rolling upgrade left unfinished, a rollback after the newer release wrote, or a newer release writing beside this one. The log names each partition (message: dedup partition held at an ingest record of a later release's format)." (include "pinecall-bridge.number" $a.dedupPartitionsHeldMinutes) "{{ $labels.namespace }}" "{{ $value }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededuppartitionsheld" $a.runbookUrl }}
      - alert: PinecallBridgeDedupRestoreSlow
        # What a pod's restores still have to read over what they read of late: the time they
        # still need. Not their duration: a takeover of every partition at the chart's cap reads
        # millions of records and takes minutes (every failover paged), and a restore that
        # never ends has no duration at all. Reading nothing with records left: +Inf. None
        # running: 0/0, no value. The `for` lets the read rate's window fill after a start.
        # A partition waiting for a restore slot has records not yet counted (its window's
        # start is looked up once it holds one): each is taken to hold as many as a reading one
        # still has on average, a low estimate, so a big takeover is not underestimated by half.
        # Per worker process (config.http.workers): each restores its own partitions, and a
        # pod-wide sum would divide one worker's stuck records by another's fast reads.
        expr: |
          sum by (namespace, pod, worker) (
            pinecall_bridge_dedup_restore_records_left
            * (1 + pinecall_bridge_dedup_restore_partitions_waiting / clamp_min(pinecall_bridge_dedup_restore_partitions_reading, 1))
          )
          / sum by (namespace, pod, worker) (rate(pinecall_bridge_dedup_restore_records_read_total[2m]))
          > {{ include "pinecall-bridge.number" (mulf $a.dedupRestoreRemainingMinutes 60) }}
        for: {{ include "pinecall-bridge.minutes" $a.dedupRestoreSlowMinutes }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Dedup restores of pod %s need %s more at their read rate" "{{ $labels.pod }}" "{{ $value | humanizeDuration }}" | quote }}
          description: {{ printf "For %v minutes the ingest-partition restores %s/%s runs would have needed more than %v minutes more at the rate they read in the last 2 minutes (+Inf: reading nothing). A restoring partition outputs nothing until its restore ends." (include "pinecall-bridge.number" $a.dedupRestoreSlowMinutes) "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.dedupRestoreRemainingMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededuprestoreslow" $a.runbookUrl }}
      - alert: PinecallBridgeDedupRepeatedFencing
        # The times the counter went up, not increase: one fence loses every partition of the
        # pod's transaction at once. changes() alone also counts a restart's reset to 0.
        expr: |
          sum by (namespace, pod) (
            changes(pinecall_bridge_dedup_partitions_lost_total{reason="fenced"}[15m])
            - resets(pinecall_bridge_dedup_partitions_lost_total{reason="fenced"}[15m])
          )
          > {{ include "pinecall-bridge.number" $a.dedupFencingsPer15Minutes }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s keeps being fenced out of its ingest partitions" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s was fenced out of its ingest partitions more than %v times in 15 minutes: it keeps stalling past the session timeout (CPU throttling, pauses, a flaky network) and another pod takes over. Exactly once holds; each takeover costs a restore." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.dedupFencingsPer15Minutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededuprepeatedfencing" $a.runbookUrl }}
      - alert: PinecallBridgeDedupTransactionsFailing
        # Any failure but a fence (a refused send, a commit timing out, a missing ACL, a producer
        # that cannot be replaced) loses every partition of the transaction (of the producer:
        # all owned); each restarts from its last commit and may fail again.
        # The lag gauges restart with them, so only the losses show it: the times the counter
        # went up (changes() less a restart's reset to 0).
        expr: |
          sum by (namespace, pod) (
            changes(pinecall_bridge_dedup_partitions_lost_total{reason=~"timeout|error|producer"}[15m])
            - resets(pinecall_bridge_dedup_partitions_lost_total{reason=~"timeout|error|producer"}[15m])
          )
          > 3
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Dedup transactions of pod %s keep failing" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s lost its ingest partitions to failed dedup transactions (reason timeout, error or producer) more than 3 times in 15 minutes: its events reach the output topics late or not at all until the cause goes, and records past the ingest topic's retention are lost. The log says why (message: dedup transaction step failed, dedup step failed, or the dedup producer could not be started)." "{{ $labels.namespace }}" "{{ $labels.pod }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededuptransactionsfailing" $a.runbookUrl }}
      - alert: PinecallBridgeDedupRecordsExpired
        # Answered 2xx, then deleted by the ingest topic's retention before the dedup stage read
        # them: lost. Counted once the skip past them commits.
        expr: |
          sum by (namespace, pod) (increase(pinecall_bridge_dedup_records_expired_total[15m])) > 0
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s lost %s ingest records to retention before deciding them" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          description: {{ printf "In the last 15 minutes the dedup stage of %s/%s found %s ingest records deleted by the ingest topic's retention before it decided them: they were answered 2xx and are published nowhere. The log names each partition and its offsets (message: ingest records deleted by retention before the dedup stage decided them)." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededuprecordsexpired" $a.runbookUrl }}
      - alert: PinecallBridgeDedupOffsetsReset
        # Someone moved the dedup group's offsets while every bridge was stopped (Kafka refuses
        # a reset while the group has members). Counted at the takeover, in a pod's first
        # seconds: a series first scraped above 0 has no increase(), hence the second term.
        expr: |
          sum by (namespace, pod, kind) (increase(pinecall_bridge_dedup_offset_resets_total[15m])) > 0
          or
          sum by (namespace, pod, kind) (
            pinecall_bridge_dedup_offset_resets_total > 0
            unless pinecall_bridge_dedup_offset_resets_total offset 15m
          )
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s took ingest partitions at offsets the bridge did not commit (%s)" "{{ $labels.pod }}" "{{ $labels.kind }}" | quote }}
          description: {{ printf "In the last 15 minutes the dedup stage of %s/%s took ingest partitions at committed offsets its group's bridges did not write (kind %s; unmarked: no bridge mark, as kafka-consumer-groups --reset-offsets writes, or the last commit of a bridge older than the mark; missing: none at all on a partition in use before, the group's offsets deleted or expired, so every record the ingest topic keeps is published again). It went on from them: reset backwards, events already published are published again; forwards, the events in between are never published. The log names each partition and offset (message: dedup partition's committed offset ...)." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $labels.kind }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededupoffsetsreset" $a.runbookUrl }}
      - alert: PinecallBridgeDedupEvictingEarly
        # Any id forgotten before its TTL: a copy arriving later would be output twice.
        expr: |
          sum by (namespace, pod) (increase(pinecall_bridge_dedup_evicted_early_total[10m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s forgets ids before their TTL" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s evicted %s ids before config.dedup.ttlSeconds in the last 10 minutes (config.dedup.maxEntriesPerPartition reached): a late copy of those events would be output twice." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededupevictingearly" $a.runbookUrl }}
      - alert: PinecallBridgeOutputRecordsSkipped
        # Answered 2xx, then refused by its output topic (a max.message.bytes below the ingest
        # topic's; no key while it compacts) or naming a topic not configured and missing: skipped
        # so its partition goes on, so published nowhere. Each counter labelled apart so `or`
        # keeps them all: a pod without one still counts.
        expr: |
          sum by (namespace, pod) (
            label_replace(increase(pinecall_bridge_dedup_output_too_large_total[15m]), "skipped", "too_large", "", "")
            or label_replace(increase(pinecall_bridge_dedup_output_keyless_refused_total[15m]), "skipped", "keyless", "", "")
            or label_replace(increase(pinecall_bridge_dedup_output_unknown_topic_total[15m]), "skipped", "unknown_topic", "", "")
          ) > 0
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s skipped %s output records their topic refuses" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          description: {{ printf "In the last 15 minutes the dedup stage of %s/%s skipped %s output records their output topic refuses (it takes smaller records than the ingest topic, or it compacts and they have no key) or that name a topic it is not configured with and that does not exist, or that this user may not describe: they were answered 2xx and are published nowhere. The log names each one's ingest partition, offset and id (message: output record too large for its topic, output record without a key for a topic that compacts, or output record for a topic the dedup stage is not configured with)." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeoutputrecordsskipped" $a.runbookUrl }}
      - alert: PinecallBridgeIngestRecordsSkipped
        # An ingest record the dedup stage cannot decode (damaged, or written by something other
        # than the bridge) is skipped so its partition goes on: an event answered 2xx, published
        # nowhere. Any one: the counter is at 0 from the start, so a first skip is an increase.
        expr: |
          sum by (namespace, pod) (increase(pinecall_bridge_ingest_invalid_total[15m])) > 0
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s skipped %s ingest records it could not decode" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          description: {{ printf "In the last 15 minutes the dedup stage of %s/%s skipped %s records of the ingest topic that the bridge did not write as they are (damaged headers, no value, or another producer writing to the topic): if they were events answered 2xx, those events are published nowhere. The log names the partition and offset (message: skipped an ingest record not written by the bridge)." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeingestrecordsskipped" $a.runbookUrl }}
      - alert: PinecallBridgeOutputTransactionHanging
        # The bridge's own transactions end within the commit interval, and the broker aborts a
        # dead producer's after its timeout: a stable offset held this long is neither.
        expr: |
          max by (namespace, topic) (pinecall_bridge_output_stable_offset_held_seconds)
          > {{ include "pinecall-bridge.number" $a.outputTransactionHangingSeconds }}
        labels:
          severity: critical
        annotations:
          summary: {{ printf "A transaction on output topic %s has not ended for %s" "{{ $labels.topic }}" "{{ $value | humanizeDuration }}" | quote }}
          description: {{ printf "read_committed consumers of a partition of %s (in %s) stop at a transaction nobody has ended for more than %vs; nothing newer reaches them until it is aborted. The bridge's log names the partition and the offset to abort from." "{{ $labels.topic }}" "{{ $labels.namespace }}" (include "pinecall-bridge.number" $a.outputTransactionHangingSeconds) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeoutputtransactionhanging" $a.runbookUrl }}
      - alert: PinecallBridgeDedupOffsetsUnstable
        # A transaction holding the group's offsets (one of duplicates only holds nothing else)
        # that nobody ends: OutputTransactionHanging watches the output topics and cannot see it.
        # DedupPartitionsUnowned fires too, later, without the cause.
        expr: |
          max by (namespace, pod) (pinecall_bridge_dedup_offsets_unstable_seconds)
          > {{ include "pinecall-bridge.number" $a.dedupOffsetsUnstableSeconds }}
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s has waited %s for an ingest partition's committed offset" "{{ $labels.pod }}" "{{ $value | humanizeDuration }}" | quote }}
          description: {{ printf "The group coordinator has answered UNSTABLE_OFFSET_COMMIT to %s/%s for an ingest partition for more than %vs: a transaction holding an offset commit for the dedup group has not ended, and the partition is not processed until it does. The bridge's log names the group, the partition and the __consumer_offsets partition." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.dedupOffsetsUnstableSeconds) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgededupoffsetsunstable" $a.runbookUrl }}
      - alert: PinecallBridgeTopicUnreadable
        # The dedup stage's topic check (at its start, then every config.dedup.topicCheckSeconds)
        # cannot read one of the bridge's topics: deleted (missing), an ACL (not_allowed), or
        # another refusal. A check that fails as a whole (Kafka away) changes nothing, so it
        # does not flap.
        expr: |
          max by (namespace, topic, problem) (pinecall_bridge_topic_problem{problem=~"missing|not_allowed|unreadable"}) == 1
        for: 2m
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Topic %s of the bridge cannot be read (%s)" "{{ $labels.topic }}" "{{ $labels.problem }}" | quote }}
          description: {{ printf "For 2 minutes the dedup stage in %s has found topic %s %s. The ingest topic missing: every webhook and feed event is answered 503. An output topic missing: its events wait in the ingest topic until it exists again, and are lost once its retention passes. The log says why (message: a topic of the bridge's cannot be read while running, or at the start: could not read a topic's configs to check them)." "{{ $labels.namespace }}" "{{ $labels.topic }}" "{{ $labels.problem }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgetopicunreadable" $a.runbookUrl }}
      - alert: PinecallBridgeIngestTopicUnsafe
        # An ingest topic config that lets a restore miss ids of the TTL (a copy output twice):
        # set at creation by someone else, or changed by an admin while it runs.
        expr: |
          max by (namespace, topic, problem) (pinecall_bridge_topic_problem{problem=~"timestamp_type|retention_ms|retention_bytes|cleanup_policy"}) == 1
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "The ingest topic %s has an unsafe %s" "{{ $labels.topic }}" "{{ $labels.problem }}" | quote }}
          description: {{ printf "For 5 minutes the ingest topic %s in %s has had a %s that lets a restore after a crash miss ids of the dedup TTL: a late copy of an event can then be output twice. The log says what to set it to (ERROR, with the topic's name)." "{{ $labels.topic }}" "{{ $labels.namespace }}" "{{ $labels.problem }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeingesttopicunsafe" $a.runbookUrl }}
      - alert: PinecallBridgeOutputTopicCompacted
        # Output records are keyed by call: compaction keeps one event per call and refuses
        # keyless records (dead letters, alerts of no agent or org), which the stage skips.
        expr: |
          max by (namespace, topic) (pinecall_bridge_topic_problem{problem="compacted"}) == 1
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Output topic %s compacts" "{{ $labels.topic }}" | quote }}
          description: {{ printf "For 5 minutes output topic %s in %s has had a cleanup.policy that compacts: Kafka keeps only the last record of each key (one event per call) and refuses records without a key, which the dedup stage skips (published nowhere). Set cleanup.policy=delete." "{{ $labels.topic }}" "{{ $labels.namespace }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeoutputtopiccompacted" $a.runbookUrl }}
      - alert: PinecallBridgeTopicPartitionsChanged
        # A topic's partition count changed while the bridge ran (made again, or partitions
        # added): calls' keys map to other partitions, so per-call order breaks for consumers
        # reading partitions apart. Counted once per process that saw it: max, not sum.
        expr: |
          max by (namespace, topic) (increase(pinecall_bridge_topic_partitions_changed_total[1h])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Topic %s changed its partition count while the bridge ran" "{{ $labels.topic }}" | quote }}
          description: {{ printf "In the last hour the bridge in %s saw topic %s's partition count change (made again, or partitions added): a call's key now maps to another partition, so a consumer reading partitions independently can see a call's later events before its earlier ones; the ingest topic's change can also output a copy of an event from before it again, until the dedup TTL has passed. The log says from what count to what (message: ... partition count changed while running)." "{{ $labels.namespace }}" "{{ $labels.topic }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgetopicpartitionschanged" $a.runbookUrl }}
      - alert: PinecallBridgeTopicRefusesWrites
        # A topic's min.insync.replicas above its replicas (made so elsewhere, or made again while
        # the bridge runs): Kafka refuses every write to it (NotEnoughReplicas).
        expr: |
          max by (namespace, topic) (pinecall_bridge_topic_problem{problem="unwritable"}) == 1
        for: 2m
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Topic %s refuses every write" "{{ $labels.topic }}" | quote }}
          description: {{ printf "For 2 minutes topic %s in %s has had a min.insync.replicas above its replication factor: Kafka refuses every write to it. The ingest topic: every webhook and feed event is answered 503. An output topic: its events wait in the ingest topic, and are lost once its retention passes. Lower min.insync.replicas to the factor." "{{ $labels.topic }}" "{{ $labels.namespace }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgetopicrefuseswrites" $a.runbookUrl }}
      - alert: PinecallBridgeTopicUndurable
        # A topic whose replicas and min.insync.replicas let one broker's loss take acknowledged
        # records (leader_alone), or stop writes at each broker restart (all_in_sync).
        expr: |
          max by (namespace, topic, problem) (pinecall_bridge_topic_problem{problem=~"leader_alone|all_in_sync"}) == 1
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Topic %s has an unsafe min.insync.replicas (%s)" "{{ $labels.topic }}" "{{ $labels.problem }}" | quote }}
          description: {{ printf "For 5 minutes topic %s in %s has had a min.insync.replicas that, with its replication factor, lets one broker's loss take records the bridge was told were written (leader_alone), or stops writes at each broker restart (all_in_sync). The log says what to set (with the topic's name)." "{{ $labels.topic }}" "{{ $labels.namespace }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgetopicundurable" $a.runbookUrl }}
      - alert: PinecallBridgeNoFeedLeaseHolder
        # Only pods with the feed enabled export the gauge (0 until elected): a namespace without
        # the feed has no series and stays quiet; one whose gauges are all 0 has a feed nobody reads.
        expr: |
          sum by (namespace) (pinecall_bridge_feed_lease_held) == 0
        for: {{ include "pinecall-bridge.minutes" $a.feedLeaseMissingMinutes }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "No pod in %s reads Pinecall's WebSocket feed" "{{ $labels.namespace }}" | quote }}
          description: {{ printf "The WebSocket feed is enabled and its lease has had no holder for %v minutes: the feed's events of the gap are missed unless Pinecall replays them or also sends them by webhook." (include "pinecall-bridge.number" $a.feedLeaseMissingMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgenofeedleaseholder" $a.runbookUrl }}
      - alert: PinecallBridgeFeedLeaseSplitBrain
        expr: |
          sum by (namespace) (pinecall_bridge_feed_lease_held) > 1
        for: {{ include "pinecall-bridge.minutes" $a.feedLeaseSplitBrainMinutes }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "%s pods in %s hold the feed lease" "{{ $value }}" "{{ $labels.namespace }}" | quote }}
          description: {{ printf "More than one pod has held the WebSocket feed lease for %v minutes: each reads the whole feed. The dedup stage still outputs each event once, but Pinecall sees several connections and the ingest topic gets every feed event several times." (include "pinecall-bridge.number" $a.feedLeaseSplitBrainMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgefeedleasesplitbrain" $a.runbookUrl }}
      - alert: PinecallBridgeKafkaDisconnected
        # Every process of the pod counts, the dedup-only one too: its stage waits on Kafka.
        expr: |
          min by (namespace, pod) (pinecall_bridge_kafka_connected) == 0
        for: {{ include "pinecall-bridge.minutes" $a.kafkaDisconnectedMinutes }}
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s cannot reach Kafka" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s has not reached the Kafka cluster for %v minutes: unready and answering webhooks 503 if a process serving the port lost it; if only its dedup process did, webhooks are still taken and wait in the ingest topic." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.kafkaDisconnectedMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgekafkadisconnected" $a.runbookUrl }}
      - alert: PinecallBridgeClockSkew
        # The broker's LogAppendTime against the pod's clock at each ingest ack: past the skew
        # allowance (bridge/clocks.py, 60 s), a rewind before any record is read looks back less.
        expr: |
          max by (namespace, pod) (abs(pinecall_bridge_broker_clock_offset_seconds)) > 60
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s's clock is %s s from the Kafka brokers'" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          description: {{ printf "%s/%s's clock has been more than 60 s (the bridge's clock skew allowance) from the Kafka brokers' for 10 minutes, by the append times of its ingest acks. The dedup stage's look-backs count from the brokers' clock as its records show it, but a rewind after a truncated log before its process has read any record counts from the pod's own: ahead, it misses ids and a copy of one is output twice. Synchronise the clocks (NTP)." "{{ $labels.namespace }}" "{{ $labels.pod }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeclockskew" $a.runbookUrl }}
      - alert: PinecallBridgeWebhooksRefused503
        # Pinecall retries a webhook once, seconds later, after a 5xx: two 503s lose the alert.
        # Left out of PinecallBridgeRejectionRateHigh, which only counts what no retry cures.
        # Not stopping: a pod's stop answers a webhook still waiting on Kafka so at every
        # rolling update, Kafka failing nothing (one Kafka failed is kafka_unavailable).
        expr: |
          sum by (namespace, pod) (increase(pinecall_bridge_events_rejected_total{channel="webhook", reason=~"kafka_unavailable|overloaded|internal_error"}[10m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s answered %s webhooks 503" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          description: {{ printf "%s/%s answered %s webhooks 503 in the last 10 minutes: Kafka did not acknowledge them in time, too many were in flight, or the bridge failed (logged). Pinecall tries a webhook twice: an alert refused both times is lost." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgewebhooksrefused503" $a.runbookUrl }}
      - alert: PinecallBridgeWebhooksUnrouted
        # A webhook URL misconfigured at Pinecall (a wrong path; a proxy turning POST into GET)
        # answers 404/405 to every webhook, which Pinecall never retries: the bridge sees only
        # silence. Some in every 10 minutes for 30 minutes: a scanner's burst is not steady. Or,
        # where webhooks are fewer than one in 10 minutes (each window without one reset the
        # wait, and every webhook was lost unalerted), some in 3 of the last 8 quarter hours
        # while no webhook was received (a busy public URL's background scans are not that).
        expr: |
          sum by (namespace) (increase(pinecall_bridge_events_rejected_total{channel="webhook", reason=~"not_found|method_not_allowed"}[10m])) > 0
          or
          (
            count_over_time((sum by (namespace) (increase(pinecall_bridge_events_rejected_total{channel="webhook", reason=~"not_found|method_not_allowed"}[15m])) > 0)[2h:15m]) >= 3
            unless on (namespace)
            sum by (namespace) (increase(pinecall_bridge_events_received_total{channel="webhook"}[2h])) > 0
          )
        for: 30m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "pinecall-bridge in %s answers requests to no webhook route 404/405" "{{ $labels.namespace }}" | quote }}
          description: "Requests reached the webhook port at a path or with a method it does not serve (404 not_found, 405 method_not_allowed) steadily (every 10 minutes for 30 minutes, or, none received, in 3 of the last 8 quarter hours for 30 minutes). If they are Pinecall's webhooks, its webhook URL or a proxy is misconfigured and every webhook is lost: Pinecall does not retry a 4xx."
          runbook_url: {{ printf "%s#pinecallbridgewebhooksunrouted" $a.runbookUrl }}
      - alert: PinecallBridgeConnectionsRefused
        # Past BRIDGE_HTTP__MAX_CONNECTIONS a connection is answered 503 unread (or closed): a
        # webhook on it is refused like an overloaded one, and so are the probes on that port.
        # The webhook port's alone: the admin port's refusals (listener="admin") are no webhook's
        # (PinecallBridgeAdminConnectionsRefused).
        expr: |
          sum by (namespace, pod) (increase(pinecall_bridge_http_connections_refused_total{listener="webhook"}[10m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s refused %s connections past its cap" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          description: {{ printf "%s/%s refused %s connections in the last 10 minutes because config.http.maxConnections were open (per process): each got a 503 unread, or was closed. A webhook sent on one is refused, and Pinecall tries a webhook twice. Probes and scrapes on that port fail too (not on config.http.adminPort)." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeconnectionsrefused" $a.runbookUrl }}
      - alert: PinecallBridgeAdminConnectionsRefused
        # The admin port's cap (64 per process) is far above what its probes and scrapes hold: a
        # refusal there is a probe or a scrape refused. One burst is absorbed (a probe's
        # failureThreshold, the next scrape) and holds the expression for half the `for` only;
        # refusals in every half of it are not: a leak, too many scrapers or a probe storm, which
        # restart or unready a healthy pod and leave gaps in its metrics.
        expr: |
          sum by (namespace, pod) (increase(pinecall_bridge_http_connections_refused_total{listener="admin"}[{{ $adminRefusedWindow }}])) > 0
        for: {{ $adminRefused }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s keeps refusing connections to its admin port" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s has refused connections to config.http.adminPort (probes and /metrics) in every %v minutes for %v minutes (%s in the last %v) because 64 were open (per process): the kubelet's probes or Prometheus' scrapes on them fail, so the pod may be restarted or marked unready for no fault of its own, and its metrics have gaps." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" (divf $a.adminConnectionsRefusedMinutes 2)) (include "pinecall-bridge.number" $a.adminConnectionsRefusedMinutes) "{{ $value | humanize }}" (include "pinecall-bridge.number" (divf $a.adminConnectionsRefusedMinutes 2)) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeadminconnectionsrefused" $a.runbookUrl }}
      - alert: PinecallBridgeOutOfDescriptors
        # EMFILE/ENFILE (bridge/connlimit.py): the by-reason panels showed it beside Pinecall's
        # outages, yet no retry cures it and webhooks and Kafka need descriptors too. Counted
        # only where the feed or the call logs connect (their counters start at 0). The sources
        # retry at least every 30 s (backoff caps): a window of 5 minutes held for 5 is a
        # shortage that lasts; one blip holds it for 4 minutes at most.
        expr: |
          sum by (namespace, pod) (
            increase(pinecall_bridge_websocket_reconnects_total{reason="out_of_descriptors"}[5m])
            or
            increase(pinecall_bridge_sse_reconnects_total{reason="out_of_descriptors"}[5m])
          ) > 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s is out of file descriptors" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s has failed to open connections for want of a file descriptor (EMFILE or ENFILE: its open-files limit, ulimit -n, or the node's) for 5 minutes, %s times in the last 5. Not an outage of Pinecall's: the feed's and the call logs' connections fail, and so may Kafka's new connections, and webhooks' connections cannot be accepted." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeoutofdescriptors" $a.runbookUrl }}
      - alert: PinecallBridgeDescriptorsNearLimit
        # Every process, a webhook-only one too (OutOfDescriptors sees only the feed's and the
        # call logs' EMFILE): accept() and Kafka's new connections fail at the limit. Over the
        # ratio, the 256 descriptors (with the admin port's, the followers', the refusals') the
        # connection cap was fitted to leave are being used: a process at its fitted cap under a
        # limit of 1024 stays near 0.8; under the usual 1,048,576 only a leak gets there. Held
        # for descriptorsNearLimitMinutes: a burst is refused at the cap and sampled by one
        # scrape, a leak or a shortage lasts. process_* are every exporter's: only the bridge's
        # targets count, not a sidecar's; told by the loop-lag histogram every bridge process
        # has (`ready` is not the dedup-only process's, which holds the call logs' followers).
        expr: |
          max by (namespace, pod, worker) (
            process_open_fds / process_max_fds
            and on (namespace, pod, instance, worker) pinecall_bridge_event_loop_lag_seconds_count
          ) > {{ include "pinecall-bridge.number" $a.descriptorsNearLimitRatio }}
        for: {{ include "pinecall-bridge.minutes" $a.descriptorsNearLimitMinutes }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s holds %s of its open-files limit" "{{ $labels.pod }}" "{{ $value | humanizePercentage }}" | quote }}
          description: {{ printf "A process of %s/%s%s has held more than %v%% of its file descriptor limit (ulimit -n) for %v minutes. At the limit it accepts no webhook connection and opens no new connection to Kafka, the feed or the call logs (EMFILE): a descriptor leak, or a limit too low for the connections it is configured for." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ with $labels.worker }} (worker {{ . }}){{ end }}" (include "pinecall-bridge.percent" $a.descriptorsNearLimitRatio) (include "pinecall-bridge.number" $a.descriptorsNearLimitMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgedescriptorsnearlimit" $a.runbookUrl }}
      - alert: PinecallBridgeFeedBacklogDropping
        # The feed's reader never waits (a blocked reader would miss pongs and lose the
        # connection), so past the backlog bounds frames are dropped: events lost for good.
        expr: |
          sum by (namespace, pod) (increase(pinecall_bridge_events_rejected_total{channel="websocket", reason="backlog_full"}[5m])) > 0
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s drops WebSocket feed events: its backlog is full" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s dropped %s feed events in 5 minutes because Kafka took them slower than the feed sent them; they are lost unless they also arrive by webhook or call log." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgefeedbacklogdropping" $a.runbookUrl }}
      - alert: PinecallBridgeInputTooLargeLost
        # Input Kafka refuses even as a dead letter (the ingest topic's max.message.bytes below
        # what the input limits let in): a webhook's 413 (final), a feed event dropped, a call-log
        # entry passed. Any one is a loss: RejectionRateHigh's ratio never sees a few.
        # publish_failures_total{reason="too_large"} counts these alone, at 0 from the start.
        # So is a feed frame over the read limit (four times BRIDGE_WEBSOCKET__MAX_FRAME_BYTES):
        # never read, no dead letter of it. Counted by its reconnect, which counts nothing else;
        # events_rejected_total{channel="websocket",reason="too_large_unreceived"} also counts
        # it, and with too_large the feed's share of the failures above. Both at 0 from the start
        # (the feed's once it is on).
        expr: |
          sum by (namespace, pod) (
            increase(pinecall_bridge_publish_failures_total{reason="too_large"}[15m])
            or
            increase(pinecall_bridge_websocket_reconnects_total{reason="frame_too_large"}[15m])
          ) > 0
        labels:
          severity: critical
        annotations:
          summary: {{ printf "Pod %s lost %s input too large to keep, even as a dead letter" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          description: {{ printf "In the last 15 minutes %s/%s lost %s events (or dead letters) for their size: the ingest topic refuses them even as a dead letter, or the WebSocket feed sent a frame too large even to read. They are in no topic and no one sends them again. Raise the ingest topic's max.message.bytes, or for a feed frame config.websocket.maxFrameBytes. The log names each one (messages: input too large for Kafka even as a dead letter is lost; feed sent a frame too large to read)." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeinputtoolargelost" $a.runbookUrl }}
      - alert: PinecallBridgeTaskCrashing
        # A long-lived task (feed reader, dedup loop, lease, ...) crashed and was restarted: a bug
        # or an unexpected answer; repeated crashes make the process exit (a pod restart).
        expr: |
          sum by (namespace, pod, task) (increase(pinecall_bridge_task_crashes_total[10m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Task %s crashed in pod %s" "{{ $labels.task }}" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s restarted its %s task after a crash in the last 10 minutes; the log has the traceback (message: task crashed; restarting it)." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $labels.task }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgetaskcrashing" $a.runbookUrl }}
      - alert: PinecallBridgeWorkerRestarting
        # With several worker processes (BRIDGE_HTTP__WORKERS), one exited on its own (a crash, an
        # OOM kill) and the pod's supervisor restarted it; too many exits stop the pod (exit 1).
        expr: |
          sum by (namespace, pod) (increase(pinecall_bridge_worker_restarts_total[10m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "A worker process of pod %s was restarted" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s restarted a worker process that exited on its own in the last 10 minutes; the log says which and why (message: worker exited unexpectedly; restarting it)." "{{ $labels.namespace }}" "{{ $labels.pod }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeworkerrestarting" $a.runbookUrl }}
      - alert: PinecallBridgeKafkaClientReplaced
        # An aiokafka client's background task died (aiokafka#1038: e.g. a write to a connection
        # reset under uvloop) and the bridge replaced the client. Recovered, but worth a look if
        # it recurs; replacing that keeps failing fails liveness instead.
        expr: |
          sum by (namespace, pod, client) (increase(pinecall_bridge_kafka_client_restarts_total[30m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s replaced its Kafka client %s" "{{ $labels.pod }}" "{{ $labels.client }}" | quote }}
          description: {{ printf "%s/%s replaced its %s in the last 30 minutes after the client's background task died; deliveries in flight then were answered 503 and retried." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $labels.client }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgekafkaclientreplaced" $a.runbookUrl }}
      - alert: PinecallBridgeWebSocketDown
        # Never connected during the window while still trying: only pods with the feed enabled
        # export the gauge, and it is 0 on those not holding the lease, which never try.
        # The `for`: a pod that just started or took the lease over has a window as young as its
        # trying, so one failed first attempt (a token request timing out) fired at once.
        expr: |
          max by (namespace, pod) (max_over_time(pinecall_bridge_websocket_connected[{{ $websocketDown }}])) == 0
          and on (namespace, pod)
          sum by (namespace, pod) (increase(pinecall_bridge_websocket_reconnects_total[{{ $websocketDown }}])) > 0
        for: {{ include "pinecall-bridge.minutes" (divf $a.websocketDownMinutes 5) }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s has no WebSocket connection to Pinecall" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s has not been connected to Pinecall's WebSocket feed for %v minutes and keeps reconnecting; events still arrive by webhook, if Pinecall sends them." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.websocketDownMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgewebsocketdown" $a.runbookUrl }}
      - alert: PinecallBridgeWebSocketGaps
        # Connected at times, yet down (no subscribed connection) for much of the window: a
        # flapping feed, or a subscription refused again and again. A feed never connected in
        # the window is PinecallBridgeWebSocketDown's.
        expr: |
          sum by (namespace, pod) (rate(pinecall_bridge_websocket_down_seconds_total[{{ $websocketGap }}])) > {{ include "pinecall-bridge.number" $a.websocketGapRatio }}
          and on (namespace, pod)
          max by (namespace, pod) (max_over_time(pinecall_bridge_websocket_connected[{{ $websocketGap }}])) == 1
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s's WebSocket feed keeps dropping" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s's WebSocket feed had no subscribed connection for %s of the last %v minutes (reconnects, or its subscription refused): what Pinecall sent meanwhile is missed unless webhooks or the call logs carry it." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanizePercentage }}" (include "pinecall-bridge.number" $a.websocketGapMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgewebsocketgaps" $a.runbookUrl }}
      - alert: PinecallBridgeWebSocketGarbage
        # Frames that are no JSON object are dropped (the feed's framing changed, or a proxy
        # answers in its place): every feed-only event could vanish while the feed looks connected.
        # Of the data frames (events and garbage): the feed's own pings, pongs and notices would
        # dilute the share most on a quiet feed.
        expr: |
          sum by (namespace, pod) (rate(pinecall_bridge_websocket_frames_total{kind="garbage"}[15m]))
          /
          sum by (namespace, pod) (rate(pinecall_bridge_websocket_frames_total{kind!="control"}[15m]))
          > {{ include "pinecall-bridge.number" $a.websocketGarbageRatio }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "%s of pod %s's WebSocket frames are not JSON objects" "{{ $value | humanizePercentage }}" "{{ $labels.pod }}" | quote }}
          description: {{ printf "More than %v%% of the data frames (events and garbage) %s/%s read from Pinecall's WebSocket feed for 15 minutes were not JSON objects and were dropped: Pinecall may have changed its framing, and the events it sends only by the feed are lost." (include "pinecall-bridge.percent" $a.websocketGarbageRatio) "{{ $labels.namespace }}" "{{ $labels.pod }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgewebsocketgarbage" $a.runbookUrl }}
      - alert: PinecallBridgeWebhookNotRegistered
        # Only processes that register the webhook (config.pinecall.registerWebhook) export the
        # gauge; 1 in any of them means Pinecall's one webhook points at this deployment.
        expr: |
          max by (namespace) (pinecall_bridge_webhook_registered) == 0
        for: {{ include "pinecall-bridge.minutes" $a.webhookNotRegisteredMinutes }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pinecall's webhook does not point at the bridge in %s" "{{ $labels.namespace }}" | quote }}
          description: {{ printf "For %v minutes no pod in %s has had the organisation's Pinecall webhook pointing at it: Pinecall posts its webhooks elsewhere or nowhere. The pods log why as `webhook registration failed; retrying`." (include "pinecall-bridge.number" $a.webhookNotRegisteredMinutes) "{{ $labels.namespace }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgewebhooknotregistered" $a.runbookUrl }}
      - alert: PinecallBridgeCallLogSourceDown
        # Only where the source is on: the org feed never connected in the window while still
        # trying (no call is discovered), or call streams failing while nothing arrives over them.
        # Per process: each worker of a pod reads the org feed and follows its own calls.
        # The `for`: a process just started has a window as young as its trying, so one failed
        # first attempt (Pinecall's API slow to answer) fired at once, as for the WebSocket feed.
        expr: |
          (
            max by (namespace, pod, worker) (pinecall_bridge_sse_enabled) == 1
            and on (namespace, pod, worker)
            max by (namespace, pod, worker) (max_over_time(pinecall_bridge_sse_org_feed_connected[{{ $callLogDown }}])) == 0
            and on (namespace, pod, worker)
            sum by (namespace, pod, worker) (increase(pinecall_bridge_sse_reconnects_total{stream="org_feed"}[{{ $callLogDown }}])) > 0
          )
          or
          (
            sum by (namespace, pod, worker) (increase(pinecall_bridge_sse_reconnects_total{stream="call", reason=~"auth|connect_error|out_of_descriptors|server_error"}[{{ $callLogDown }}])) > 0
            and on (namespace, pod, worker)
            sum by (namespace, pod, worker) (increase(pinecall_bridge_events_ingested_total{channel="sse"}[{{ $callLogDown }}])) == 0
          )
        for: {{ include "pinecall-bridge.minutes" (divf $a.callLogDownMinutes 5) }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s reads no Pinecall call logs" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s has not read the org feed, or its call-log streams have failed with nothing ingested, for %v minutes: the calls of its ingest partitions are not followed (they are read from where they got to once it recovers)." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.callLogDownMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgecalllogsourcedown" $a.runbookUrl }}
      - alert: PinecallBridgeCallLogGapsNotFilled
        expr: |
          sum by (namespace, pod, worker) (increase(pinecall_bridge_sse_reconnects_total{stream="call", reason="gap_fill_failed"}[{{ $callLogGaps }}])) > 0
          and on (namespace, pod, worker)
          sum by (namespace, pod, worker) (increase(pinecall_bridge_sse_gaps_filled_total[{{ $callLogGaps }}])) == 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s cannot fill call-log gaps" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s fell behind call logs (log.gap) and could not read the missing entries from the JSON pages for %v minutes; it re-reads the streams from the last published entry instead, which delays those calls." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.callLogGapsMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgecallloggapsnotfilled" $a.runbookUrl }}
      - alert: PinecallBridgeCallLogGivenUp
        # A call's log left before its end: 404, 410, or refused with no stream between for
        # BRIDGE_SSE__GIVE_UP_AFTER_SECONDS. Retrying could not help; the rest of its log is unread.
        expr: |
          sum by (namespace, pod, reason) (increase(pinecall_bridge_sse_calls_given_up_total[15m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s gave up %s call logs (%s)" "{{ $labels.pod }}" "{{ $value | humanize }}" "{{ $labels.reason }}" | quote }}
          description: {{ printf "%s/%s stopped following %s call logs before their end in the last 15 minutes because Pinecall refused them (%s): the rest of those calls' entries is not read; they are lost unless they also arrive by webhook or the feed. The log names each call (message: call log given up)." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" "{{ $labels.reason }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgecallloggivenup" $a.runbookUrl }}
      - alert: PinecallBridgeCallLogCallsDropped
        # More calls than BRIDGE_SSE__MAX_CALLS followed and ten times as many waiting: the rest
        # are not followed. The call list, swept again once the queue drains, finds those still
        # live or ended within the dedup TTL; older ones are lost. Also counted: an ended call
        # the list found that waited in the queue until its end left the TTL (not read twice).
        expr: |
          sum by (namespace, pod) (increase(pinecall_bridge_sse_calls_dropped_total[15m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s dropped %s calls from its call-log queue" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          description: {{ printf "%s/%s had more calls to follow than BRIDGE_SSE__MAX_CALLS and ten times as many waiting in the last 15 minutes, and dropped %s of them: their logs are read only if the call list, swept again once the queue drains, still shows them within the dedup TTL (an ended call that waited in the queue past it is dropped too, not read twice). Raise config.sse.maxCalls or add replicas." "{{ $labels.namespace }}" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgecalllogcallsdropped" $a.runbookUrl }}
      - alert: PinecallBridgePodNotReady
        # The pod's /readyz: only the processes serving the port export `ready` (a dedup-only
        # process, config.dedup.ownProcess, does not); one that answers no scrape has no series
        # here (PinecallBridgeWorkerUnreachable). A restarted worker not listening yet (ready 0)
        # takes no webhook: excused, as /readyz does, unless no worker listens.
        expr: |
          (
            min by (namespace, pod) (pinecall_bridge_ready unless pinecall_bridge_listening == 0)
            or max by (namespace, pod) (pinecall_bridge_listening)
          ) == 0
        for: {{ $notReady }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s is not ready" "{{ $labels.pod }}" | quote }}
          description: {{ printf "%s/%s has answered /readyz 503 for %v minutes, so it receives no webhooks." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.number" $a.notReadyMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgepodnotready" $a.runbookUrl }}
      - alert: PinecallBridgeWorkerNotListening
        # A restarted worker binds the webhook port only once ready, and PinecallBridgePodNotReady
        # excuses it meanwhile. 10m: PinecallBridgeWorkerRestarting covers a restart's first 10.
        expr: |
          count by (namespace, pod) (pinecall_bridge_listening == 0) > 0
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "%s restarted worker processes of pod %s take no webhooks" "{{ $value }}" "{{ $labels.pod }}" | quote }}
          description: {{ printf "For 10 minutes %s worker processes of %s/%s, restarted, have not become ready, so they have not bound the webhook port (the pod's /readyz shows them not_listening): the pod serves with fewer workers, or none (PinecallBridgePodNotReady). A restarted worker is ready in seconds unless it cannot reach Kafka." "{{ $value }}" "{{ $labels.namespace }}" "{{ $labels.pod }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeworkernotlistening" $a.runbookUrl }}
      - alert: PinecallBridgeWorkerUnreachable
        # A worker process that answers no scrape has no series at all: every other alert is
        # blind to it (min of ready sees only the workers that answered). One silent to its
        # supervisor too is restarted after config.http.workerSilenceSeconds (unless 0).
        expr: |
          max by (namespace, pod) (pinecall_bridge_workers_unreachable) > 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "%s worker processes of pod %s answer no scrape" "{{ $value }}" "{{ $labels.pod }}" | quote }}
          description: {{ printf "For 5 minutes %s of the worker processes of %s/%s have not answered the pod's scrape in time: overloaded (answering the supervisor's probes, not /metrics within 1 s), or hung with config.http.workerSilenceSeconds 0 or longer than that (else the supervisor kills and restarts a worker silent that long). Their metrics are missing, so other alerts cannot see them; one serving the port that answers nothing keeps the pod's /readyz at 503." "{{ $value }}" "{{ $labels.namespace }}" "{{ $labels.pod }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgeworkerunreachable" $a.runbookUrl }}
      - alert: PinecallBridgeTargetDown
        # A crash-looping pod reports nothing itself: Prometheus' own view.
        expr: |
          up{job="{{ $job }}"} == 0
        for: {{ $notReady }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Prometheus cannot scrape %s" "{{ $labels.instance }}" | quote }}
          description: {{ printf "The pinecall-bridge target %s (job %s) has been down for %v minutes." "{{ $labels.instance }}" $job (include "pinecall-bridge.number" $a.notReadyMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgetargetdown" $a.runbookUrl }}
{{- if .Values.serviceMonitor.enabled }}
      - alert: PinecallBridgeMetricsAbsent
        # Every other rule needs the bridge's own series: a ServiceMonitor no Prometheus selects,
        # a relabelling change or no pod at all silences them all at once. Only with the chart's
        # ServiceMonitor, whose job is the Service's name: any other scrape job's name is unknown.
        expr: |
          absent(up{job="{{ $job }}"} == 1)
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ printf "No pinecall-bridge target (job %s) is scraped" $job | quote }}
          description: {{ printf "For 10 minutes Prometheus has scraped no target of job %s: no other pinecall-bridge alert can fire. The ServiceMonitor is not selected by this Prometheus, its relabelling changed, or no pod runs." $job | quote }}
          runbook_url: {{ printf "%s#pinecallbridgemetricsabsent" $a.runbookUrl }}
{{- end }}
      - alert: PinecallBridgeReplicasUnavailable
        # Needs kube-state-metrics; without it this rule never fires.
        expr: |
          kube_deployment_spec_replicas{deployment="{{ $job }}"}
          > kube_deployment_status_replicas_available{deployment="{{ $job }}"}
        for: {{ include "pinecall-bridge.minutes" (mulf $a.notReadyMinutes 2) }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Deployment %s has unavailable replicas" "{{ $labels.namespace }}/{{ $labels.deployment }}" | quote }}
          description: {{ printf "Fewer replicas are available than wanted for %v minutes (pods not ready, crash-looping or unschedulable)." (include "pinecall-bridge.number" (mulf $a.notReadyMinutes 2)) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgereplicasunavailable" $a.runbookUrl }}
      - alert: PinecallBridgePodRestarting
        # Needs kube-state-metrics. A crash loop restarts faster than TargetDown's window, and the
        # process's own counters start again at 0 each time: only Kubernetes' count shows it.
        # The Deployment's pods are <name>-<ReplicaSet hash>-<5 characters>, the hash cut short
        # with a long name (pinecall-bridge.podPattern): not <name>-canary-...
        expr: |
          increase(kube_pod_container_status_restarts_total{container="bridge", pod=~"{{ $pods }}"}[30m]) > 2
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s restarted %s times in 30 minutes" "{{ $labels.pod }}" "{{ $value | humanize }}" | quote }}
          description: {{ printf "The bridge container of %s/%s restarted more than twice in 30 minutes: a crash loop (repeated task crashes or worker exits end the process with status 1), an OOM kill or a failing liveness probe. Each restart costs a rebalance and a restore." "{{ $labels.namespace }}" "{{ $labels.pod }}" | quote }}
          runbook_url: {{ printf "%s#pinecallbridgepodrestarting" $a.runbookUrl }}
      - alert: PinecallBridgeMemoryNearLimit
        # Needs cAdvisor's working set (usage less inactive page cache, what OOM kills track) and
        # kube-state-metrics' limit; no limit, no series, no alert. The dedup window grows with
        # the partitions a pod takes over: warn before the kill moves them on to the next pod.
        expr: |
          max by (namespace, pod, container) (container_memory_working_set_bytes{container="bridge", pod=~"{{ $pods }}"})
          / on (namespace, pod, container)
          (max by (namespace, pod, container) (kube_pod_container_resource_limits{resource="memory", container="bridge", pod=~"{{ $pods }}"}) > 0)
          > {{ include "pinecall-bridge.number" $a.memoryNearLimitRatio }}
        for: {{ include "pinecall-bridge.minutes" $a.memoryNearLimitMinutes }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Pod %s uses %s of its memory limit" "{{ $labels.pod }}" "{{ $value | humanizePercentage }}" | quote }}
          description: {{ printf "The bridge container of %s/%s has used more than %v%% of its memory limit for %v minutes. At the limit it is OOM-killed and its ingest partitions, with the dedup window they need, move to the pods left, which may follow it." "{{ $labels.namespace }}" "{{ $labels.pod }}" (include "pinecall-bridge.percent" $a.memoryNearLimitRatio) (include "pinecall-bridge.number" $a.memoryNearLimitMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgememorynearlimit" $a.runbookUrl }}
{{- if (.Values.prometheusRule.downstreamLag | default dict).enabled }}
{{- /* The output topics, as a regular expression (a raw PromQL string: no escaping twice). */}}
{{- $t := .Values.config.topics }}
{{- $topics := list ($t.events | default "pinecall.events") ($t.alerts | default "pinecall.alerts") ($t.dlq | default "pinecall.dlq") }}
{{- with $t.ephemeral }}{{ $topics = append $topics . }}{{ end }}
{{- range (.Values.config.routing | default dict).rules | default list }}{{ $topics = append $topics .topic }}{{ end }}
{{- $quoted := list }}
{{- range $topics | uniq }}{{ $quoted = append $quoted (regexQuoteMeta .) }}{{ end }}
  # Needs Kafka Exporter (Strimzi: spec.kafkaExporter in the Kafka resource); without its
  # metric this group never fires. Consumers of the output topics, not the bridge itself.
  - name: pinecall-bridge-downstream
    rules:
      - alert: PinecallBridgeDownstreamLagHigh
        # Lag per consumer group and output topic, summed over the topic's partitions. Kafka
        # Exporter says -1 for a partition the group has no offset of: clamped, or each takes one
        # record off the lag of the partitions behind.
        expr: |
          sum by (consumergroup, topic) (clamp_min(kafka_consumergroup_lag{topic=~`{{ join "|" $quoted }}`}, 0))
          > {{ include "pinecall-bridge.number" $a.downstreamLagRecords }}
        for: {{ include "pinecall-bridge.minutes" $a.downstreamLagMinutes }}
        labels:
          severity: warning
        annotations:
          summary: {{ printf "Consumer group %s is %s records behind on %s" "{{ $labels.consumergroup }}" "{{ $value | humanize }}" "{{ $labels.topic }}" | quote }}
          description: {{ printf "Consumer group %s has been more than %v records behind on the bridge's output topic %s for %v minutes (Kafka Exporter's kafka_consumergroup_lag, all partitions): that downstream team sees Pinecall's events late. The bridge itself is not behind." "{{ $labels.consumergroup }}" (include "pinecall-bridge.number" $a.downstreamLagRecords) "{{ $labels.topic }}" (include "pinecall-bridge.number" $a.downstreamLagMinutes) | quote }}
          runbook_url: {{ printf "%s#pinecallbridgedownstreamlaghigh" $a.runbookUrl }}
{{- end }}
{{- end }}
