{{/* Every topic the bridge writes to: its three topics, the ephemeral one, routing targets. */}}
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
