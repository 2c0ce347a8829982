{{/* The output topics: its three topics, the ephemeral one, routing rules' targets. */}}
{{- define "pinecall-bridge.topics" -}}
{{- $t := .Values.config.topics }}
{{- $topics := list $t.events $t.alerts $t.dlq }}
{{- with $t.ephemeral }}{{ $topics = append $topics . }}{{ end }}
{{- range .Values.config.routing.rules }}{{ $topics = append $topics .topic }}{{ end }}
{{- toYaml (uniq $topics) }}
{{- end }}

{{- define "pinecall-bridge.strimziUser" -}}
{{- .Values.strimzi.user.name | default (include "pinecall-bridge.fullname" .) }}
{{- end }}

{{/* The ingest topic's retention: the dedup TTL plus its margin, so a restore finds every id. */}}
{{- define "pinecall-bridge.ingestRetentionMs" -}}
{{- $d := .Values.config.dedup }}
{{- $ttl := $d.ttlSeconds | default 900 | float64 }}
{{- $margin := 3600.0 }}
{{- /* Not `default`: it would take an explicit 0 for unset. */}}
{{- if not (kindIs "invalid" $d.ingestRetentionMarginSeconds) }}{{ $margin = $d.ingestRetentionMarginSeconds | float64 }}{{ end }}
{{- mulf (addf $ttl $margin) 1000 | int64 }}
{{- end }}

{{/* The dedup stage's consumer group (it also prefixes the transactional ids and the lease's group). */}}
{{- define "pinecall-bridge.dedupGroup" -}}
{{- .Values.config.dedup.group | default "pinecall-bridge" }}
{{- end }}
