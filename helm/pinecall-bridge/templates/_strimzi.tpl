{{/* The output topics: its three topics, the ephemeral one, routing rules' targets. */}}
{{- define "pinecall-bridge.topics" -}}
{{- $t := .Values.config.topics }}
{{- $topics := list $t.events $t.alerts $t.dlq }}
{{- with $t.ephemeral }}{{ $topics = append $topics . }}{{ end }}
{{- range .Values.config.routing.rules }}{{ $topics = append $topics .topic }}{{ end }}
{{- toYaml (uniq $topics) }}
{{- end }}

{{/* A KafkaTopic's metadata.name for a topic (list topic allTopics): the topic lower-cased with
"_" -> "-" (the chart's earlier names, kept so an upgrade renames no KafkaTopic: deleting one
deletes its topic) when that is a valid Kubernetes name no other topic maps to (an exact match
keeps it); otherwise, as Strimzi names such topics, the name made valid plus "---" and the
topic's SHA-1, unique where Kafka's names differ only by case or "_"/"-". */}}
{{- define "pinecall-bridge.kafkaTopicName" -}}
{{- $topic := index . 0 }}
{{- $legacy := $topic | lower | replace "_" "-" }}
{{- $valid := regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" $legacy }}
{{- $shared := false }}
{{- range index . 1 }}
{{- if and (ne . $topic) (eq (. | lower | replace "_" "-") $legacy) }}{{ $shared = true }}{{ end }}
{{- end }}
{{- if and $valid (or (eq $legacy $topic) (not $shared)) }}
{{- $legacy }}
{{- else }}
{{- /* 253 - len("---") - 40 = 210 characters of the base at most. */}}
{{- $base := $legacy | replace "." "-" | trimAll "-" | trunc 210 | trimSuffix "-" }}
{{- if $base }}{{ printf "%s---%s" $base (sha1sum $topic) }}{{ else }}{{ sha1sum $topic }}{{ end }}
{{- end }}
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

{{/*
The dedup stage's consumer group (it also prefixes the transactional ids and names the lease's
group). No default: one shared by every release made two releases on one Kafka cluster one
deployment (their pods deciding each other's events, one feed reader between them), and one
derived from the release would move an existing release to a group with no committed offsets.
*/}}
{{- define "pinecall-bridge.dedupGroup" -}}
{{- $group := .Values.config.dedup.group }}
{{- if not $group }}
{{- fail (printf "\n\nconfig.dedup.group is required: the dedup stage's Kafka consumer group, which also names the feed lease's group and the transactional ids, this deployment's alone on its Kafka cluster.\n  - Upgrading a release installed before it was required: set config.dedup.group=pinecall-bridge (the chart's former default, unless you had set another). Another name would start a group with no committed offsets, which outputs again every event the ingest topic holds (README, \"Upgrading\").\n  - A new release: a name no other deployment on that Kafka cluster uses, e.g. %s-%s; beside another deployment on the cluster, also a config.topics.ingest of its own (two groups reading one ingest topic each output every event)." .Release.Namespace (include "pinecall-bridge.fullname" .)) }}
{{- end }}
{{- $group }}
{{- end }}
