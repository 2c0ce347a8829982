{{/* Names and labels, as `helm create` makes them. */}}
{{- define "pinecall-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pinecall-bridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pinecall-bridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pinecall-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pinecall-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pinecall-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pinecall-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pinecall-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pinecall-bridge.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The chart-created Secret (holds only the `value`s of items with no other source). */}}
{{- define "pinecall-bridge.secretName" -}}
{{- /* Not the bare fullname: that is the KafkaUser's, whose Secret Strimzi writes. Not cut at
63 either (a Secret's name may have 253): a 62- or 63-character fullname cut back to itself. */}}
{{- printf "%s-secret" (include "pinecall-bridge.fullname" .) }}
{{- end }}

{{/*
One config value as the environment variable's text. Helm reads YAML numbers as float64,
which would print 1048576 as 1.048576e+06: whole numbers are printed as integers, with printf
rather than int64, which turned 1e19 (past int64) into -9223372036854775808.
Lists of objects and objects are JSON; other lists are comma-separated.
*/}}
{{- define "pinecall-bridge.envValue" -}}
{{- if kindIs "slice" . }}
{{- if kindIs "map" (first .) }}{{ toJson . }}{{ else }}{{ join "," . }}{{ end }}
{{- else if kindIs "map" . }}{{ toJson . }}
{{- else if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ printf "%.0f" . }}{{ else }}{{ . }}{{ end }}
{{- else }}{{ . }}
{{- end }}
{{- end }}

{{/* Settings that are secrets or files: never accepted under `config`. */}}
{{- define "pinecall-bridge.notInConfig" -}}
{{- $forbidden := dict
  "kafka" (list "saslPassword" "sslKeyPassword" "sslCafile" "sslCertfile" "sslKeyfile" "saslOauthTokenFile")
  "webhook" (list "secrets")
  "pinecall" (list "apiKey") }}
{{- range $section, $fields := $forbidden }}
{{- range $fields }}
{{- if hasKey (get $.Values.config $section | default dict) . }}
{{- fail (printf "config.%s.%s is a secret or a file: set it under `secrets`, `kafkaTls` or `serviceAccount.kafkaOauthAudience`, never in the ConfigMap" $section .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The variable of `config` SECTION FIELD (list SECTION FIELD): kafka lingerMs -> BRIDGE_KAFKA__LINGER_MS. */}}
{{- define "pinecall-bridge.envName" -}}
{{- printf "BRIDGE_%s__%s" (snakecase (index . 0) | upper) (snakecase (index . 1) | upper) }}
{{- end }}

{{/*
The bridge's environment from `config`, as a dict NAME -> text (rendered into the ConfigMap).
null values and empty lists are left out: the bridge's own default applies.
*/}}
{{- define "pinecall-bridge.configEnv" -}}
{{- include "pinecall-bridge.notInConfig" . }}
{{- $env := dict }}
{{- range $section, $fields := .Values.config }}
{{- range $field, $value := $fields }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "slice" $value) (empty $value))) }}
{{- $name := include "pinecall-bridge.envName" (list $section $field) }}
{{- $_ := set $env $name (include "pinecall-bridge.envValue" $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $file, $var := dict "ca" "SSL_CAFILE" "cert" "SSL_CERTFILE" "key" "SSL_KEYFILE" }}
{{- $item := get $.Values.kafkaTls $file }}
{{- if or $item.secretName $item.value }}
{{- $path := printf "%s/%s" (include "pinecall-bridge.tlsDir" $) (include "pinecall-bridge.tlsFileName" $file) }}
{{- $_ := set $env (printf "BRIDGE_KAFKA__%s" $var) $path }}
{{- end }}
{{- end }}
{{- if (include "pinecall-bridge.oauthToken" . | fromJson).audience }}
{{- $_ := set $env "BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE" (include "pinecall-bridge.oauthTokenFile" .) }}
{{- end }}
{{- if (include "pinecall-bridge.secretFiles" . | fromYaml).items }}
{{- $_ := set $env "BRIDGE_SECRETS_DIR" (include "pinecall-bridge.secretsDir" .) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/*
A `config` section (list SECTION DEFAULTS) with DEFAULTS where a value is unset or null, as JSON
(fromJson: numbers become float64). Not sprig's merge, which also replaces a 0 or false.
*/}}
{{- define "pinecall-bridge.withDefaults" -}}
{{- $out := deepCopy (index . 1) }}
{{- range $key, $value := index . 0 | default dict }}
{{- if not (kindIs "invalid" $value) }}{{ $_ := set $out $key $value }}{{ end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{- define "pinecall-bridge.tlsDir" -}}/etc/pinecall-bridge/kafka-tls{{- end }}

{{/* The OAUTHBEARER token to project, as JSON: {"audience", "seconds"}; audience "" is none
(also in a previous chart's values, which lack the keys). */}}
{{- define "pinecall-bridge.oauthToken" -}}
{{- $sa := .Values.serviceAccount | default dict }}
{{- dict "audience" (trim ($sa.kafkaOauthAudience | default "")) "seconds" ($sa.kafkaOauthTokenSeconds | default 3600) | toJson }}
{{- end }}

{{- define "pinecall-bridge.oauthDir" -}}/etc/pinecall-bridge/kafka-oauth{{- end }}

{{- define "pinecall-bridge.oauthTokenFile" -}}{{ include "pinecall-bridge.oauthDir" . }}/token{{- end }}

{{- define "pinecall-bridge.tlsFileName" -}}
{{- get (dict "ca" "ca.crt" "cert" "client.crt" "key" "client.key") . }}
{{- end }}

{{/* Secret items: environment variable -> values item. */}}
{{- define "pinecall-bridge.secretEnvNames" -}}
webhookSecrets: BRIDGE_WEBHOOK__SECRETS
kafkaSaslPassword: BRIDGE_KAFKA__SASL_PASSWORD
kafkaSslKeyPassword: BRIDGE_KAFKA__SSL_KEY_PASSWORD
pinecallApiKey: BRIDGE_PINECALL__API_KEY
{{- end }}

{{- define "pinecall-bridge.secretsDir" -}}/etc/pinecall-bridge/secrets{{- end }}

{{/*
The secret settings given a source, as a YAML list of {var, secret, key, optional}: from their own
Secret, else existingSecret (optional there: it holds whichever keys it holds), else the chart's.
Not those extraEnv sets: the bridge refuses a secret both as a file and a variable, and one
variable twice in a container's env breaks `helm upgrade` (a strategic merge patch of a list
keyed by name) while the API server keeps only the last.
*/}}
{{- define "pinecall-bridge.secretItems" -}}
{{- $extraEnv := list }}
{{- range .Values.extraEnv }}{{ $extraEnv = append $extraEnv .name }}{{ end }}
{{- $items := list }}
{{- range $item, $var := include "pinecall-bridge.secretEnvNames" . | fromYaml }}
{{- $spec := get $.Values.secrets $item }}
{{- if has $var $extraEnv }}{{ continue }}{{ end }}
{{- $from := $spec.secretName | default $.Values.secrets.existingSecret }}
{{- if or $from $spec.value }}
{{- $ref := dict "var" $var "secret" ($from | default (include "pinecall-bridge.secretName" $)) "key" $spec.key "optional" false }}
{{- if and (not $spec.secretName) $.Values.secrets.existingSecret }}
{{- $_ := set $ref "optional" true }}
{{- end }}
{{- $items = append $items $ref }}
{{- end }}
{{- end }}
{{- toYaml (dict "items" $items) }}
{{- end }}

{{/* The secret settings mounted as files (secrets.asFiles): secretItems, or none. */}}
{{- define "pinecall-bridge.secretFiles" -}}
{{- $files := list }}
{{- if .Values.secrets.asFiles }}
{{- $files = (include "pinecall-bridge.secretItems" . | fromYaml).items }}
{{- end }}
{{- toYaml (dict "items" $files) }}
{{- end }}

{{/* The chart-created Secret's data: every item whose only source is its `value`. */}}
{{- define "pinecall-bridge.secretData" -}}
{{- $data := dict }}
{{- range $item, $_ := include "pinecall-bridge.secretEnvNames" . | fromYaml }}
{{- $spec := get $.Values.secrets $item }}
{{- if and $spec.value (not $spec.secretName) (not $.Values.secrets.existingSecret) }}
{{- $_ := set $data $spec.key ($spec.value | b64enc) }}
{{- end }}
{{- end }}
{{- range $file := list "ca" "cert" "key" }}
{{- $spec := get $.Values.kafkaTls $file }}
{{- if and $spec.value (not $spec.secretName) }}
{{- $_ := set $data $spec.key ($spec.value | b64enc) }}
{{- end }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
"true" when the pod runs worker processes (config.http.workers other than 1, or
config.dedup.ownProcess): a supervisor, and probes answered by asking every worker.
*/}}
{{- define "pinecall-bridge.supervised" -}}
{{- $c := .Values.config }}
{{- $http := include "pinecall-bridge.withDefaults" (list $c.http (dict "workers" 1)) | fromJson }}
{{- $dedup := include "pinecall-bridge.withDefaults" (list $c.dedup (dict "ownProcess" false)) | fromJson }}
{{- or (ne (int $http.workers) 1) $dedup.ownProcess }}
{{- end }}

{{/*
preStop pause + the bridge's own grace (which includes its drain delay) + 5 s margin. With worker
processes (config.http.workers other than 1, or config.dedup.ownProcess) their supervisor kills
stragglers 3 s past the grace (bridge/workers/parent.py's GRACE_MARGIN_SECONDS) and logs them:
the kubelet must not kill the pod before it does. One process has no supervisor: a grace period
under 10 s keeps only a quarter of itself for Kafka client stops cut at their deadline, which may
run on past it (bridge/stopbudget.py's overrun_seconds, same float arithmetic), a LeaveGroup among
them: the kubelet must not kill those either.
*/}}
{{- define "pinecall-bridge.terminationGracePeriodSeconds" -}}
{{- $pause := int .Values.lifecycle.preStopSleepSeconds }}
{{- $c := .Values.config }}
{{- $graceSeconds := float64 (include "pinecall-bridge.withDefaults" (list $c.shutdown (dict "graceSeconds" 25)) | fromJson).graceSeconds }}
{{- $grace := $graceSeconds | ceil | int }}
{{- $overrun := subf 2.5 (minf 2.5 (divf (maxf $graceSeconds 0.0) 4.0)) }}
{{- $supervised := eq (include "pinecall-bridge.supervised" .) "true" }}
{{- $needed := add $pause $grace 3 1 }}
{{- if not $supervised }}
{{- $needed = add $pause (addf $graceSeconds $overrun | ceil | int) 1 }}
{{- end }}
{{- $value := .Values.terminationGracePeriodSeconds | default (add $pause $grace 5) | int }}
{{- if lt $value $needed }}
{{- if $supervised }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + config.shutdown.graceSeconds + 3 (%d): with worker processes (config.http.workers other than 1, or config.dedup.ownProcess) their supervisor stops the last of them 3 s after the grace period" $value (sub $needed 1)) }}
{{- else if gt $overrun 0.0 }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + config.shutdown.graceSeconds + %s (%d): a grace period under 10 s keeps a quarter of itself for Kafka client stops cut at its end, which may run this long past it (a group's LeaveGroup among them)" $value (include "pinecall-bridge.envValue" $overrun) (sub $needed 1)) }}
{{- else }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + config.shutdown.graceSeconds (%d)" $value (sub $needed 1)) }}
{{- end }}
{{- end }}
{{- $value }}
{{- end }}

{{/*
A Prometheus duration ("30s", "1m30s", "500ms", "0") in milliseconds; the schema holds values to
that form. Go's regexp takes the leftmost alternative first: "ms" before "m".
*/}}
{{- define "pinecall-bridge.durationMs" -}}
{{- $units := dict "y" 31536000000 "w" 604800000 "d" 86400000 "h" 3600000 "m" 60000 "s" 1000 "ms" 1 }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+(ms|y|w|d|h|m|s)" (toString .) -1 }}
{{- $total = add $total (mul (regexFind "^[0-9]+" . | atoi) (get $units (regexReplaceAll "^[0-9]+" . ""))) }}
{{- end }}
{{- $total }}
{{- end }}
