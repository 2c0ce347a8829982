{{/*
Refuse at render time what the bridge would refuse at start (bridge/config.py's validators), so
a broken install fails `helm install` with the values to fix instead of pods that exit 2 and
crash-loop. Included by the Deployment; every problem is listed at once. Per-value rules (types,
ranges, patterns) are values.schema.json's; these are the ones that combine values or secrets.
A value left out (null) is the bridge's default, as the ConfigMap leaves it out too (a 0 or false
stays itself: sprig's merge would take those for unset too).
secrets.existingSecret holds whichever keys it holds (optional): it may supply any secret, so a
secret it could supply is never refused for missing, nor refused as superfluous.
*/}}
{{- define "pinecall-bridge.validate" -}}
{{- $c := .Values.config }}
{{- $s := .Values.secrets }}
{{- $tls := .Values.kafkaTls }}
{{- $problems := list }}
{{- $extraEnv := list }}
{{- range .Values.extraEnv }}{{ $extraEnv = append $extraEnv .name }}{{ end }}
{{- /* Those set to something: a blank value is no setting to the bridge (an empty path is unset). */}}
{{- $extraSet := list }}
{{- range .Values.extraEnv }}{{ if or .valueFrom (trim (toString (.value | default ""))) }}{{ $extraSet = append $extraSet .name }}{{ end }}{{ end }}
{{- /* Each secret: "given" when the chart sets it for sure, "possible" when it may be set. One
extraEnv names is its alone (secretItems leaves the chart's sources out): a blank value there is
unset to the bridge, as in $extraSet, not set nor possibly set by existingSecret. */}}
{{- $given := dict }}
{{- $possible := dict }}
{{- range $item, $var := include "pinecall-bridge.secretEnvNames" . | fromYaml }}
{{- $spec := get $s $item }}
{{- $named := has $var $extraEnv }}
{{- $sure := ternary (has $var $extraSet) (not (not (or $spec.value $spec.secretName))) $named }}
{{- $_ := set $given $item $sure }}
{{- $_ := set $possible $item (or $sure (and (not $named) (not (not $s.existingSecret)))) }}
{{- end }}
{{- $webhook := include "pinecall-bridge.withDefaults" (list $c.webhook (dict "allowUnsigned" false "path" "/webhooks/pinecall")) | fromJson }}
{{- /* A sender normalises `.` and `..` away: every webhook would be 404 (the rest of the path's
rules are values.schema.json's pattern). Not echoed, as the bridge does not: a path may be a
secret of its own (an unguessable webhook URL). */}}
{{- $segments := splitList "/" (trimAll "/" (toString $webhook.path)) }}
{{- if or (has "." $segments) (has ".." $segments) }}
{{- $problems = append $problems "config.webhook.path must be a plain path: no '.' or '..' segment (a sender normalises them away, and every webhook would be 404)" }}
{{- end }}
{{- if not (or (get $possible "webhookSecrets") $webhook.allowUnsigned) }}
{{- $problems = append $problems (printf "no webhook secret: set secrets.webhookSecrets.value or secrets.webhookSecrets.secretName, or secrets.existingSecret (a Secret with the key %q); only for local testing, config.webhook.allowUnsigned=true accepts unsigned webhooks" $s.webhookSecrets.key) }}
{{- end }}
{{- /* A secret given as a value in the chart, read as the bridge reads it (a Secret's contents are
not visible here). Never echoed. The API key goes in an HTTP header: whitespace inside it, or a
control character (Unicode's C, Z), is refused; surrounding whitespace is dropped (what Python's
str.strip() drops), and a leading byte order mark too (a secret file loses it). Webhook secrets
are comma-separated, each stripped, none holding a control character (Cc); not a JSON list. */}}
{{- $chartValue := dict }}
{{- range $item, $var := include "pinecall-bridge.secretEnvNames" . | fromYaml }}
{{- $spec := get $s $item }}
{{- if and $spec.value (not $spec.secretName) (not $s.existingSecret) (not (has $var $extraEnv)) }}{{ $_ := set $chartValue $item (toString $spec.value) }}{{ end }}
{{- end }}
{{- $space := "[\\t-\\r\\x1c-\\x20\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}]" }}
{{- with $chartValue.pinecallApiKey }}
{{- if regexMatch "[\\p{C}\\p{Z}]" (regexReplaceAll (printf "^%s+|%s+$" $space $space) (trimPrefix "\ufeff" .) "") }}
{{- $problems = append $problems "secrets.pinecallApiKey.value must not contain whitespace or control characters: it is sent in an HTTP header (is it two values, or a file with two lines?)" }}
{{- end }}
{{- end }}
{{- with $chartValue.webhookSecrets }}
{{- if eq (include "pinecall-bridge.jsonList" .) "true" }}
{{- $problems = append $problems "secrets.webhookSecrets.value is a JSON list: give the secrets comma-separated, without brackets or quotes (e.g. old,new; a single secret that is itself a JSON list, such as [1], with a trailing comma: [1],)" }}
{{- else }}
{{- $broken := false }}
{{- range splitList "," . }}
{{- if regexMatch "\\p{Cc}" (regexReplaceAll (printf "^%s+|%s+$" $space $space) . "") }}{{ $broken = true }}{{ end }}
{{- end }}
{{- if $broken }}
{{- $problems = append $problems "secrets.webhookSecrets.value: a secret holds a line break or another control character (is it one secret a line?): give them comma-separated, e.g. old,new" }}
{{- end }}
{{- end }}
{{- end }}
{{- $apiKey := printf "the Pinecall API key: set secrets.pinecallApiKey.value or secrets.pinecallApiKey.secretName, or secrets.existingSecret (a Secret with the key %q)" $s.pinecallApiKey.key }}
{{- $pinecall := include "pinecall-bridge.withDefaults" (list $c.pinecall (dict "registerWebhook" false "apiUrl" "https://api.pinecall.io")) | fromJson }}
{{- if and $pinecall.registerWebhook (not $pinecall.publicUrl) }}
{{- $problems = append $problems "config.pinecall.registerWebhook=true needs config.pinecall.publicUrl (the bridge's public base URL, e.g. https://bridge.example.com)" }}
{{- end }}
{{- if and $pinecall.registerWebhook (not (get $possible "pinecallApiKey")) }}
{{- $problems = append $problems (printf "config.pinecall.registerWebhook=true needs %s" $apiKey) }}
{{- end }}
{{- $websocket := include "pinecall-bridge.withDefaults" (list $c.websocket (dict "enabled" false "url" "wss://api.pinecall.io/v1/ws" "maxFrameBytes" 983040 "maxBacklogBytes" 67108864 "backoffInitialSeconds" 0.5 "backoffMaxSeconds" 30)) | fromJson }}
{{- /* A plain http:// or ws:// URL to a host other than loopback would carry the API key, the feed's
token and the webhook secret unencrypted: the bridge refuses it unless allowInsecureUrls (the API's
always, the feed's when it is on). Its host as pinecall-bridge.url reads it (urllib's): past any
user info, before a port. Never echoed: the URL may hold a password or a token (refused below). */}}
{{- $plain := dict }}
{{- $_ := set $plain "config.pinecall.apiUrl" (list $pinecall.apiUrl "http" "the API key and the webhook secret") }}
{{- if $websocket.enabled }}{{ $_ := set $plain "config.websocket.url" (list $websocket.url "ws" "the API key or feed token") }}{{ end }}
{{- if not (($c.pinecall | default dict).allowInsecureUrls) }}
{{- range $where, $spec := $plain }}
{{- $url := include "pinecall-bridge.url" (toString (index $spec 0)) | fromJson }}
{{- $scheme := index $spec 1 }}
{{- if and (eq $url.scheme $scheme) (not $url.loopback) }}
{{- $problems = append $problems (printf "%s is a plain %s:// URL to another host: it would send %s unencrypted; use %ss://, or on a trusted network set config.pinecall.allowInsecureUrls=true" $where $scheme (index $spec 2) $scheme) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Each URL as the bridge checks it (bridge/config.py's _check_url, pinecall-bridge.url's
problem), the feed's whether on or off. Never echoed: it may hold a secret. */}}
{{- $urls := dict "config.pinecall.apiUrl" $pinecall.apiUrl "config.websocket.url" $websocket.url }}
{{- $publicUrl := toString ($pinecall.publicUrl | default "") }}
{{- if trim $publicUrl }}{{ $_ := set $urls "config.pinecall.publicUrl" $publicUrl }}{{ end }}
{{- range $where, $url := $urls }}
{{- with (include "pinecall-bridge.url" (toString $url) | fromJson).problem }}
{{- $problems = append $problems (printf "%s %s" $where .) }}
{{- end }}
{{- end }}
{{- /* Given as one string, a JSON list would be split at its commas into items like `["a"`, which
match no event: the bridge refuses it (bridge/config.py's _split_csv). */}}
{{- $events := ($c.websocket | default dict).events }}
{{- if and (not (kindIs "invalid" $events)) (eq (include "pinecall-bridge.jsonList" (include "pinecall-bridge.envValue" $events)) "true") }}
{{- $problems = append $problems "config.websocket.events is a JSON list given as a string: give a YAML list, or the event types comma-separated without brackets or quotes (e.g. call.started,call.ended)" }}
{{- end }}
{{- /* CloudEvents' `source`, stamped on every event: a URI-reference (RFC 3986), no credentials
(bridge/config.py's _check_uri_reference). An IPv6 host's form is left to the bridge. */}}
{{- $source := toString (include "pinecall-bridge.withDefaults" (list $c.cloudevents (dict "source" "https://api.pinecall.io")) | fromJson).source }}
{{- $sourceUrl := include "pinecall-bridge.url" $source | fromJson }}
{{- if not (regexMatch "^(?:[A-Za-z0-9._~:/?#\\[\\]@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+$" $source) }}
{{- $problems = append $problems "config.cloudevents.source must be a URI-reference (RFC 3986), e.g. https://api.pinecall.io or /pinecall: no whitespace; other characters than [A-Za-z0-9-._~:/?#[]@!$&'()*+,;=] percent-encoded" }}
{{- else if and (contains ":" (index (regexSplit "[/?#]" $source 2) 0)) (not (regexMatch "^[A-Za-z][A-Za-z0-9+.-]*:" $source)) }}
{{- $problems = append $problems "config.cloudevents.source must be a URI-reference (RFC 3986): the part before the first ':' is no scheme (a relative reference has no ':' before its first '/')" }}
{{- else if $sourceUrl.unclosed }}
{{- $problems = append $problems "config.cloudevents.source must be a URI-reference (RFC 3986): its host's '[' (an IPv6 address) is not closed" }}
{{- else if $sourceUrl.credentials }}
{{- $problems = append $problems "config.cloudevents.source must not carry credentials (user:password@, or a token or key in its query): it is the `source` of every event published, and `check` prints it" }}
{{- end }}
{{- if and $websocket.enabled (not (get $possible "pinecallApiKey")) }}
{{- $problems = append $problems (printf "config.websocket.enabled=true needs %s" $apiKey) }}
{{- end }}
{{- if lt (float64 $websocket.maxBacklogBytes) (float64 $websocket.maxFrameBytes) }}
{{- $problems = append $problems (printf "config.websocket.maxBacklogBytes (%s) must be at least config.websocket.maxFrameBytes (%s)" (include "pinecall-bridge.envValue" (float64 $websocket.maxBacklogBytes)) (include "pinecall-bridge.envValue" (float64 $websocket.maxFrameBytes))) }}
{{- end }}
{{- if gt (float64 $websocket.backoffInitialSeconds) (float64 $websocket.backoffMaxSeconds) }}
{{- $problems = append $problems (printf "config.websocket.backoffInitialSeconds (%s) must not exceed config.websocket.backoffMaxSeconds (%s)" (include "pinecall-bridge.envValue" (float64 $websocket.backoffInitialSeconds)) (include "pinecall-bridge.envValue" (float64 $websocket.backoffMaxSeconds))) }}
{{- end }}
{{- $sse := include "pinecall-bridge.withDefaults" (list $c.sse (dict "enabled" false "maxEventBytes" 983040 "backoffInitialSeconds" 1 "backoffMaxSeconds" 30)) | fromJson }}
{{- if and $sse.enabled (not (get $possible "pinecallApiKey")) }}
{{- $problems = append $problems (printf "config.sse.enabled=true needs %s" $apiKey) }}
{{- end }}
{{- if gt (float64 $sse.backoffInitialSeconds) (float64 $sse.backoffMaxSeconds) }}
{{- $problems = append $problems (printf "config.sse.backoffInitialSeconds (%s) must not exceed config.sse.backoffMaxSeconds (%s)" (include "pinecall-bridge.envValue" (float64 $sse.backoffInitialSeconds)) (include "pinecall-bridge.envValue" (float64 $sse.backoffMaxSeconds))) }}
{{- end }}
{{- /* The dedup stage's timeouts must nest (a zombie's transaction times out before its
partition is handed on). Numbers may be int64 (--set) or float64 (YAML): compared as floats. */}}
{{- $d := include "pinecall-bridge.withDefaults" (list $c.dedup (dict "commitIntervalMs" 100 "transactionTimeoutMs" 8000 "sessionTimeoutMs" 10000 "heartbeatIntervalMs" 3000 "endTransactionTimeoutSeconds" 5 "hangingReportSeconds" 120)) | fromJson }}
{{- $commit := float64 $d.commitIntervalMs }}
{{- $transaction := float64 $d.transactionTimeoutMs }}
{{- $session := float64 $d.sessionTimeoutMs }}
{{- if not (and (lt $commit $transaction) (lt $transaction $session)) }}
{{- $problems = append $problems (printf "config.dedup needs commitIntervalMs < transactionTimeoutMs < sessionTimeoutMs (got %s, %s, %s)" (include "pinecall-bridge.envValue" $commit) (include "pinecall-bridge.envValue" $transaction) (include "pinecall-bridge.envValue" $session)) }}
{{- end }}
{{- if gt (mulf (float64 $d.heartbeatIntervalMs) 3) $session }}
{{- $problems = append $problems (printf "config.dedup.heartbeatIntervalMs (%s) must be at most a third of config.dedup.sessionTimeoutMs (%s)" (include "pinecall-bridge.envValue" (float64 $d.heartbeatIntervalMs)) (include "pinecall-bridge.envValue" $session)) }}
{{- end }}
{{- if ge (mulf (float64 $d.endTransactionTimeoutSeconds) 1000) $transaction }}
{{- $problems = append $problems (printf "config.dedup.endTransactionTimeoutSeconds (%s s) must be shorter than config.dedup.transactionTimeoutMs (%s ms)" (include "pinecall-bridge.envValue" (float64 $d.endTransactionTimeoutSeconds)) (include "pinecall-bridge.envValue" $transaction)) }}
{{- end }}
{{- if le (mulf (float64 $d.hangingReportSeconds) 1000) $transaction }}
{{- $problems = append $problems (printf "config.dedup.hangingReportSeconds (%s s) must be longer than config.dedup.transactionTimeoutMs (%s ms)" (include "pinecall-bridge.envValue" (float64 $d.hangingReportSeconds)) (include "pinecall-bridge.envValue" $transaction)) }}
{{- end }}
{{- /* A replayed webhook body at the far end of the accepted window (maxAgeSeconds either side
of its time) must still be within the dedup TTL of its first copy, with room for the replicas'
clocks disagreeing (60 s, bridge/clocks.py) and a copy appended up to the publish timeout late. */}}
{{- $maxAge := float64 (include "pinecall-bridge.withDefaults" (list $c.webhook (dict "maxAgeSeconds" 0)) | fromJson).maxAgeSeconds }}
{{- $ttl := float64 (include "pinecall-bridge.withDefaults" (list $c.dedup (dict "ttlSeconds" 900)) | fromJson).ttlSeconds }}
{{- $publish := float64 (include "pinecall-bridge.withDefaults" (list $c.kafka (dict "publishTimeoutSeconds" 10)) | fromJson).publishTimeoutSeconds }}
{{- $margin := addf 60 $publish }}
{{- if and (gt $maxAge 0.0) (gt (addf (mulf $maxAge 2) $margin) $ttl) }}
{{- $problems = append $problems (printf "config.webhook.maxAgeSeconds (%s) is too long for config.dedup.ttlSeconds (%s): 2 x maxAgeSeconds + %s s (a 60 s clock skew allowance plus config.kafka.publishTimeoutSeconds) must not exceed the TTL, or a replay later than the TTL after the first copy would be published again (lower it, 0 turns the check off, or raise the TTL)" (include "pinecall-bridge.envValue" $maxAge) (include "pinecall-bridge.envValue" $ttl) (include "pinecall-bridge.envValue" $margin)) }}
{{- end }}
{{- /* The call-log source reads an ended call until its end plus the TTL less the 60 s clock skew
allowance: at a TTL of 60 s or less, never. */}}
{{- if and $sse.enabled (le $ttl 60.0) }}
{{- $problems = append $problems (printf "config.dedup.ttlSeconds (%s) must be more than 60 s with config.sse.enabled=true: the call-log source reads an ended call only until its end plus the TTL less a 60 s clock skew allowance, so a call that ended before its log was read would never be read, and the entries only its log carries would be lost" (include "pinecall-bridge.envValue" $ttl)) }}
{{- end }}
{{- /* A window kept past the TTL reads a gap at least as long as a full restore's: refused. */}}
{{- $keep := ($c.dedup | default dict).keepRevokedSeconds }}
{{- if and (not (kindIs "invalid" $keep)) (gt (float64 $keep) $ttl) }}
{{- $problems = append $problems (printf "config.dedup.keepRevokedSeconds (%s) must not exceed config.dedup.ttlSeconds (%s): a window kept longer reads a gap at least as long as a full restore's and holds its memory meanwhile (leave it null for the TTL)" (include "pinecall-bridge.envValue" (float64 $keep)) (include "pinecall-bridge.envValue" $ttl)) }}
{{- end }}
{{- /* The ingest topic keeps records ttlSeconds + ingestRetentionMarginSeconds, as retention.ms: a
64-bit count the broker refuses beyond 2^63 - 1. addf and mulf round each step to a float64 as the
bridge's float arithmetic does (their decimal inputs are shortest forms, which change no result
near the bound), so refused from the bridge's first float past it: 2^63 ms. */}}
{{- $retention := include "pinecall-bridge.withDefaults" (list $c.dedup (dict "ttlSeconds" 900 "ingestRetentionMarginSeconds" 3600)) | fromJson }}
{{- if ge (mulf (addf (float64 $retention.ttlSeconds) (float64 $retention.ingestRetentionMarginSeconds)) 1000) 9223372036854775808.0 }}
{{- $problems = append $problems (printf "config.dedup.ttlSeconds (%s) plus config.dedup.ingestRetentionMarginSeconds (%s) is the ingest topic's retention: at most 9223372036854775 s (Kafka's 64-bit retention.ms)" (include "pinecall-bridge.envValue" (float64 $retention.ttlSeconds)) (include "pinecall-bridge.envValue" (float64 $retention.ingestRetentionMarginSeconds))) }}
{{- end }}
{{- $shutdown := include "pinecall-bridge.withDefaults" (list $c.shutdown (dict "graceSeconds" 25 "drainDelaySeconds" 0)) | fromJson }}
{{- if ge (float64 $shutdown.drainDelaySeconds) (float64 $shutdown.graceSeconds) }}
{{- $problems = append $problems (printf "config.shutdown.drainDelaySeconds (%s) must be shorter than config.shutdown.graceSeconds (%s)" (include "pinecall-bridge.envValue" (float64 $shutdown.drainDelaySeconds)) (include "pinecall-bridge.envValue" (float64 $shutdown.graceSeconds))) }}
{{- end }}
{{- /* With worker processes, what a stop cut at a short grace period's end runs past it, and the
worker's exit, must fit in the 3 s its supervisor allows: bridge/stopbudget.py's supervised_fits in
the same float arithmetic (a 2.5 s cut overrun less a reserve of at most a quarter of the grace,
plus a 1 s exit), so from 2 s on. The grace as the bridge gets it, not rounded up to the whole
seconds of terminationGracePeriodSeconds. */}}
{{- $grace := float64 $shutdown.graceSeconds }}
{{- $overrun := subf 2.5 (minf 2.5 (divf (maxf $grace 0.0) 4.0)) }}
{{- if and (eq (include "pinecall-bridge.supervised" .) "true") (gt (addf $overrun 1.0) 3.0) }}
{{- $problems = append $problems (printf "config.shutdown.graceSeconds (%s) is too short for worker processes (config.http.workers other than 1, or config.dedup.ownProcess): at least 2, so a stop cut short still ends within the 3 s their supervisor allows after it" (include "pinecall-bridge.envValue" $grace)) }}
{{- end }}
{{- /* Topics: the internal ones are never outputs, and differ from each other. */}}
{{- $t := include "pinecall-bridge.withDefaults" (list $c.topics (dict "events" "pinecall.events" "alerts" "pinecall.alerts" "dlq" "pinecall.dlq" "ingest" "pinecall.ingest" "feedLease" "pinecall.feed-lease")) | fromJson }}
{{- $outputs := dict "config.topics.events" $t.events "config.topics.alerts" $t.alerts "config.topics.dlq" $t.dlq }}
{{- with $t.ephemeral }}{{ $_ := set $outputs "config.topics.ephemeral" . }}{{ end }}
{{- range $i, $rule := ($c.routing | default dict).rules | default list }}
{{- $_ := set $outputs (printf "config.routing.rules[%d].topic" $i) $rule.topic }}
{{- end }}
{{- range $value, $name := dict "ingest" $t.ingest "feedLease" $t.feedLease }}
{{- range $where, $output := $outputs }}
{{- if eq $output $name }}
{{- $problems = append $problems (printf "config.topics.%s (%s) is an internal topic: it must not also be %s" $value $name $where) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Dead letters are no CloudEvents, and `redrive` resubmits what the topic holds. */}}
{{- range $where, $output := omit $outputs "config.topics.dlq" }}
{{- if eq $output $t.dlq }}
{{- $problems = append $problems (printf "config.topics.dlq (%s) must not also be %s: dead letters are no CloudEvents" $t.dlq $where) }}
{{- end }}
{{- end }}
{{- if eq $t.ingest $t.feedLease }}
{{- $problems = append $problems (printf "config.topics.ingest and config.topics.feedLease must differ (both %s)" $t.ingest) }}
{{- end }}
{{- $topics := merge (dict "config.topics.ingest" $t.ingest "config.topics.feedLease" $t.feedLease) $outputs }}
{{- range $where, $name := $topics }}
{{- if or (eq $name ".") (eq $name "..") }}
{{- $problems = append $problems (printf "%s: %q is not a valid Kafka topic name" $where $name) }}
{{- end }}
{{- end }}
{{- /* Kafka names a topic's metrics with '.' as '_', so it refuses to create a topic alike but for
those while the other exists: the second stays missing and what is routed to it stalls. One name
given twice is one topic. */}}
{{- $alike := dict }}
{{- range $where, $name := $topics }}
{{- $key := replace "." "_" $name }}
{{- $first := get $alike $key }}
{{- if not $first }}
{{- $_ := set $alike $key (list $where $name) }}
{{- else if ne (index $first 1) $name }}
{{- $problems = append $problems (printf "%s (%s) and %s (%s) collide: Kafka reads '.' as '_' in a topic's metric names and refuses to create either while the other exists; use the same separator in both" (index $first 0) (index $first 1) $where $name) }}
{{- end }}
{{- end }}
{{- /* Kafka: ports in range, and security settings the protocol uses, all of them. */}}
{{- $k := include "pinecall-bridge.withDefaults" (list $c.kafka (dict "securityProtocol" "PLAINTEXT" "bootstrapServers" "127.0.0.1:9092" "maxRequestBytes" 1048576 "maxBatchBytes" 262144)) | fromJson }}
{{- $servers := $k.bootstrapServers }}
{{- if kindIs "string" $servers }}{{ $servers = splitList "," $servers }}{{ end }}
{{- /* Each server named by its position, never echoed: one given with credentials (user:password@)
holds a password, which helm's error would put in CI logs and terminals. One with an `@` is
refused for it alone: its other problems (a password's `:` or `/`) are the password's. */}}
{{- range $i, $server := $servers }}
{{- $server = trim $server }}
{{- $which := ternary "the server" (printf "server %d of %d" (add1 $i) (len $servers)) (eq (len $servers) 1) }}
{{- if contains "@" $server }}
{{- $problems = append $problems (printf "config.kafka.bootstrapServers: %s is given with credentials (user:password@), which `check` prints and the logs name: SASL's go in config.kafka.saslUsername and secrets.kafkaSaslPassword" $which) }}
{{- continue }}
{{- end }}
{{- $port := regexFind "[0-9]+$" $server | default "0" | atoi }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- $problems = append $problems (printf "config.kafka.bootstrapServers: %s has no port between 1 and 65535" $which) }}
{{- end }}
{{- if contains "/" $server }}
{{- $problems = append $problems (printf "config.kafka.bootstrapServers: %s is not host:port: no scheme (e.g. kafka-0:9092)" $which) }}
{{- end }}
{{- $host := regexReplaceAll ":[^:]*$" $server "" }}
{{- if and (contains ":" $host) (not (and (hasPrefix "[" $host) (hasSuffix "]" $host))) }}
{{- $problems = append $problems (printf "config.kafka.bootstrapServers: %s is not host:port: an IPv6 address goes in brackets (e.g. [fd00::1]:9092)" $which) }}
{{- end }}
{{- end }}
{{- /* Record sizes: an input within its limit plus the envelope the bridge adds (bridge/config.py's
RECORD_RESERVE_BYTES) must fit in a Kafka request. */}}
{{- /* A connection's set-up (bridge/sink/connectsetup.py) is bounded within the request timeout;
left null, the bridge takes 10000 or the request timeout if lower. */}}
{{- $connect := get ($c.kafka | default dict) "connectTimeoutMs" }}
{{- $requestTimeout := (include "pinecall-bridge.withDefaults" (list $c.kafka (dict "requestTimeoutMs" 30000)) | fromJson).requestTimeoutMs }}
{{- if and (not (kindIs "invalid" $connect)) (gt (float64 $connect) (float64 $requestTimeout)) }}
{{- $problems = append $problems (printf "config.kafka.connectTimeoutMs (%s) must not exceed config.kafka.requestTimeoutMs (%s)" (include "pinecall-bridge.envValue" (float64 $connect)) (include "pinecall-bridge.envValue" (float64 $requestTimeout))) }}
{{- end }}
{{- $request := float64 $k.maxRequestBytes }}
{{- $reserve := 65536.0 }}
{{- if gt (float64 $k.maxBatchBytes) $request }}
{{- $problems = append $problems (printf "config.kafka.maxBatchBytes (%s) must not exceed config.kafka.maxRequestBytes (%s)" (include "pinecall-bridge.envValue" (float64 $k.maxBatchBytes)) (include "pinecall-bridge.envValue" $request)) }}
{{- end }}
{{- /* Every record waits the linger before it is sent: half the publish timeout is left for the
ack, or deliveries are answered 503 with Kafka up (bridge/config.py). */}}
{{- $sending := include "pinecall-bridge.withDefaults" (list $c.kafka (dict "lingerMs" 5 "publishTimeoutSeconds" 10)) | fromJson }}
{{- if gt (float64 $sending.lingerMs) (mulf (float64 $sending.publishTimeoutSeconds) 500) }}
{{- $problems = append $problems (printf "config.kafka.lingerMs (%s) must be at most half of config.kafka.publishTimeoutSeconds (%s s): each record waits the linger before it is sent, and a delivery not acknowledged within the publish timeout is answered 503" (include "pinecall-bridge.envValue" (float64 $sending.lingerMs)) (include "pinecall-bridge.envValue" (float64 $sending.publishTimeoutSeconds))) }}
{{- end }}
{{- $bodyLimit := (include "pinecall-bridge.withDefaults" (list $c.webhook (dict "maxBodyBytes" 983040)) | fromJson).maxBodyBytes }}
{{- range $name, $limit := dict "config.webhook.maxBodyBytes" $bodyLimit "config.websocket.maxFrameBytes" $websocket.maxFrameBytes "config.sse.maxEventBytes" $sse.maxEventBytes }}
{{- if gt (addf (float64 $limit) $reserve) $request }}
{{- $problems = append $problems (printf "%s (%s) leaves no room for the record's envelope: it must be at most config.kafka.maxRequestBytes (%s) - %s (raise the Kafka limit and the topics' max.message.bytes, or lower this)" $name (include "pinecall-bridge.envValue" (float64 $limit)) (include "pinecall-bridge.envValue" $request) (include "pinecall-bridge.envValue" $reserve)) }}
{{- end }}
{{- end }}
{{- $protocol := $k.securityProtocol }}
{{- $sasl := hasPrefix "SASL" $protocol }}
{{- $usesTls := has $protocol (list "SSL" "SASL_SSL") }}
{{- $oauth := eq (toString $k.saslMechanism) "OAUTHBEARER" }}
{{- $token := include "pinecall-bridge.oauthToken" . | fromJson }}
{{- if and $sasl $oauth }}
{{- if or $k.saslUsername (get $given "kafkaSaslPassword") }}
{{- $problems = append $problems "config.kafka.saslUsername and secrets.kafkaSaslPassword are ignored with config.kafka.saslMechanism=OAUTHBEARER (it authenticates with a token): unset them" }}
{{- end }}
{{- if not (or $token.audience (has "BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE" $extraSet)) }}
{{- $problems = append $problems "config.kafka.saslMechanism=OAUTHBEARER needs its token: set serviceAccount.kafkaOauthAudience (the audience the broker's validator expects)" }}
{{- end }}
{{- else if $token.audience }}
{{- $problems = append $problems (printf "serviceAccount.kafkaOauthAudience is ignored with config.kafka.securityProtocol=%s and config.kafka.saslMechanism=%s: use SASL_PLAINTEXT or SASL_SSL with OAUTHBEARER, or unset it" $protocol (toString $k.saslMechanism)) }}
{{- else if has "BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE" $extraSet }}
{{- $problems = append $problems (printf "extraEnv sets BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE, ignored with config.kafka.securityProtocol=%s and config.kafka.saslMechanism=%s: use SASL_PLAINTEXT or SASL_SSL with OAUTHBEARER, or unset it" $protocol (toString $k.saslMechanism)) }}
{{- end }}
{{- if and $sasl (not $oauth) (not $k.saslUsername) }}
{{- $problems = append $problems (printf "config.kafka.securityProtocol=%s needs config.kafka.saslUsername" $protocol) }}
{{- end }}
{{- if and $sasl (not $oauth) (not (get $possible "kafkaSaslPassword")) }}
{{- $problems = append $problems (printf "config.kafka.securityProtocol=%s needs the SASL password: set secrets.kafkaSaslPassword.secretName (Strimzi: the KafkaUser's Secret, key password) or .value, or secrets.existingSecret" $protocol) }}
{{- end }}
{{- if and (not $sasl) (or $k.saslUsername (get $given "kafkaSaslPassword")) }}
{{- $problems = append $problems (printf "config.kafka.saslUsername and secrets.kafkaSaslPassword are ignored with config.kafka.securityProtocol=%s: use SASL_PLAINTEXT or SASL_SSL, or unset them" $protocol) }}
{{- end }}
{{- $hasFile := dict }}
{{- range $file := list "ca" "cert" "key" }}
{{- $spec := get $tls $file }}
{{- $_ := set $hasFile $file (ternary true false (not (not (or $spec.secretName $spec.value)))) }}
{{- end }}
{{- /* A client certificate or key may also be a path in extraEnv (mounted from extraVolumes): a
blank one is unset to the bridge. */}}
{{- $setFile := dict }}
{{- range $file, $var := dict "cert" "BRIDGE_KAFKA__SSL_CERTFILE" "key" "BRIDGE_KAFKA__SSL_KEYFILE" }}
{{- $_ := set $setFile $file (or (get $hasFile $file) (has $var $extraSet)) }}
{{- end }}
{{- if ne $setFile.cert $setFile.key }}
{{- $problems = append $problems "kafkaTls.cert and kafkaTls.key go together (a client certificate; or extraEnv's BRIDGE_KAFKA__SSL_CERTFILE and BRIDGE_KAFKA__SSL_KEYFILE, one of each): set both or neither" }}
{{- end }}
{{- if and (get $given "kafkaSslKeyPassword") (not $setFile.key) }}
{{- $problems = append $problems "secrets.kafkaSslKeyPassword needs kafkaTls.key or extraEnv's BRIDGE_KAFKA__SSL_KEYFILE (the encrypted client key)" }}
{{- end }}
{{- if and (not $usesTls) (or $hasFile.ca $hasFile.cert (get $given "kafkaSslKeyPassword")) }}
{{- $problems = append $problems (printf "kafkaTls and secrets.kafkaSslKeyPassword are ignored with config.kafka.securityProtocol=%s: use SSL or SASL_SSL, or unset them" $protocol) }}
{{- end }}
{{- /* The same files given as paths in extraEnv (a CA mounted from extraVolumes). */}}
{{- $tlsVars := list }}
{{- range $var := list "BRIDGE_KAFKA__SSL_CAFILE" "BRIDGE_KAFKA__SSL_CERTFILE" "BRIDGE_KAFKA__SSL_KEYFILE" }}
{{- if has $var $extraSet }}{{ $tlsVars = append $tlsVars $var }}{{ end }}
{{- end }}
{{- if and (not $usesTls) $tlsVars }}
{{- $problems = append $problems (printf "extraEnv sets %s, ignored with config.kafka.securityProtocol=%s: use SSL or SASL_SSL, or unset them" (join ", " $tlsVars) $protocol) }}
{{- end }}
{{- $http := include "pinecall-bridge.withDefaults" (list $c.http (dict "port" 8080 "host" "0.0.0.0")) | fromJson }}
{{- /* The address the server binds (bridge/config.py's _check_host): an IPv4 address, a hostname,
or an IPv6 address written bare (::) as Python's ipaddress reads one: eight hextets, the last two
maybe an IPv4 address; or a `::` for at least one, after $a of them (0 to 7) and before at most
7 - $a; then maybe a zone (`%`, then no `%` or `/`). */}}
{{- $bind := toString $http.host }}
{{- $labels := splitList "." (trimSuffix "." $bind) }}
{{- $hostname := and (le (len $bind) 253) (not (regexMatch "^[0-9]+$" (last $labels))) }}
{{- range $labels }}{{ if not (regexMatch "^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$" .) }}{{ $hostname = false }}{{ end }}{{ end }}
{{- $octet := "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])" }}
{{- $ipv4 := regexMatch (printf "^%s(?:\\.%s){3}$" $octet $octet) $bind }}
{{- $h := "[0-9A-Fa-f]{1,4}" }}
{{- $dotted := printf "%s(?:\\.%s){3}" $octet $octet }}
{{- $forms := list (printf "(?:%s:){7}%s" $h $h) (printf "(?:%s:){6}%s" $h $dotted) }}
{{- range $a := until 8 }}
{{- $left := ternary "" (printf "%s(?::%s){%d}" $h $h (sub $a 1)) (eq $a 0) }}
{{- $forms = append $forms (printf "%s::" $left) }}
{{- if lt $a 7 }}{{ $forms = append $forms (printf "%s::%s(?::%s){0,%d}" $left $h $h (sub 6 $a)) }}{{ end }}
{{- if lt $a 6 }}{{ $forms = append $forms (printf "%s::(?:%s:){0,%d}%s" $left $h (sub 5 $a) $dotted) }}{{ end }}
{{- end }}
{{- $ipv6 := regexMatch (printf "^(?:%s)(?:%%[^%%/]+)?$" (join "|" $forms)) $bind }}
{{- if not (or $ipv4 $hostname $ipv6) }}
{{- $problems = append $problems "config.http.host is neither an IP address (e.g. 0.0.0.0 or ::) nor a hostname: no scheme, port, brackets or whitespace (the port is config.http.port)" }}
{{- end }}
{{- if and $http.adminPort (eq (int $http.adminPort) (int $http.port)) }}
{{- $problems = append $problems (printf "config.http.adminPort (%d) must differ from config.http.port: the probes and /metrics need a port of their own (null turns it off)" (int $http.adminPort)) }}
{{- end }}
{{- /* Values of the previous chart: a key it had and this one removed. With none of this chart's
new alert keys, they are the previous chart's defaults, as `helm upgrade --reuse-values` passes
them (it keeps the old chart's values.yaml, not this one's): every setting added since would
render empty (alert thresholds of 0, `<nil>` in texts). */}}
{{- if hasKey (.Values.alerts | default dict) "dedupRestoreP99Seconds" }}
{{- if not (hasKey .Values.alerts "dedupRestoreRemainingMinutes") }}
{{- fail "\n\nthese values are a previous chart's defaults (alerts.dedupRestoreP99Seconds, no alerts.dedupRestoreRemainingMinutes): `helm upgrade --reuse-values` keeps the previous chart's values.yaml, so every setting added since would render empty. Upgrade with --reset-then-reuse-values (Helm 3.14 or later) or with your values file (-f)." }}
{{- end }}
{{- fail "\n\nalerts.dedupRestoreP99Seconds was removed (2026-12-05): the slow-restore alert now measures the time a pod's restores still need. Remove the key; alerts.dedupRestoreRemainingMinutes (10) and alerts.dedupRestoreSlowMinutes (3) set the new alert." }}
{{- end }}
{{- if $problems }}
{{- fail (printf "\n\nthe bridge would refuse to start with these values (it exits 2 and crash-loops):\n  - %s" (join "\n  - " $problems)) }}
{{- end }}
{{- /* After those: the bridge has a default group, which the chart refuses to guess. */}}
{{- $_ := include "pinecall-bridge.dedupGroup" . }}
{{- end }}

{{/*
extraEnv comes after the chart's own variables and wins over the ConfigMap's (envFrom): a variable
the chart sets there would run the bridge on a value the chart's checks and derived settings
(terminationGracePeriodSeconds from config.shutdown.graceSeconds, the probes' port, the worker
checks) never saw, while the ConfigMap shows the other. Refused, as is one name twice (the API
server keeps the last; `helm upgrade`'s patch of a list keyed by name breaks). Secret variables
stay allowed: the chart then leaves them out (secretItems). A `config` value nulled is not in the
ConfigMap, so extraEnv may set it (say from a ConfigMap of its own), unchecked.
*/}}
{{- define "pinecall-bridge.validateExtraEnv" -}}
{{- $from := dict "BRIDGE_DEDUP__INSTANCE_ID" "the pod's name: a fixed value gives every pod one dedup transactional id, and they fence each other" "BRIDGE_SECRETS_DIR" "secrets.asFiles" "BRIDGE_KAFKA__SSL_CAFILE" "kafkaTls.ca" "BRIDGE_KAFKA__SSL_CERTFILE" "kafkaTls.cert" "BRIDGE_KAFKA__SSL_KEYFILE" "kafkaTls.key" }}
{{- range $section, $fields := .Values.config }}
{{- range $field, $_ := $fields }}
{{- $_ := set $from (include "pinecall-bridge.envName" (list $section $field)) (printf "config.%s.%s: set it there instead (a value nulled there may be set here)" $section $field) }}
{{- end }}
{{- end }}
{{- $chartSet := include "pinecall-bridge.configEnv" . | fromYaml }}
{{- $_ := set $chartSet "BRIDGE_DEDUP__INSTANCE_ID" "" }}
{{- $seen := dict }}
{{- $problems := list }}
{{- range .Values.extraEnv }}
{{- if hasKey $seen .name }}
{{- $problems = append $problems (printf "extraEnv sets %s more than once" .name) }}
{{- else if hasKey $chartSet .name }}
{{- $problems = append $problems (printf "extraEnv sets %s, which the chart sets from %s" .name (get $from .name)) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- if $problems }}
{{- fail (printf "\n\nextraEnv would override what the chart sets:\n  - %s" (join "\n  - " $problems)) }}
{{- end }}
{{- end }}

{{/*
extraVolumes and extraVolumeMounts: the chart's own volumes and mount points stay its own. A volume
named like one of the chart's would replace it in the pod (or two volumes of one name, which the
API server refuses); a mount at, above or under /tmp, the secrets or the Kafka TLS directory would
hide the files the chart put there (or put files the bridge reads as settings, in the secrets
directory). Each mount names an extraVolume, once per path. The volume types, which the restricted
Pod Security Standard allows, are values.schema.json's.
*/}}
{{- define "pinecall-bridge.validateExtraVolumes" -}}
{{- $chartVolumes := list "tmp" "kafka-tls" "kafka-oauth" "secrets" }}
{{- $chartPaths := list "/tmp" (include "pinecall-bridge.tlsDir" .) (include "pinecall-bridge.oauthDir" .) (include "pinecall-bridge.secretsDir" .) }}
{{- $problems := list }}
{{- $volumes := dict }}
{{- range .Values.extraVolumes }}
{{- if has .name $chartVolumes }}
{{- $problems = append $problems (printf "extraVolumes: %q is the name of one of the chart's own volumes (%s): name it otherwise" .name (join ", " $chartVolumes)) }}
{{- else if hasKey $volumes .name }}
{{- $problems = append $problems (printf "extraVolumes: %q is named twice" .name) }}
{{- end }}
{{- $_ := set $volumes .name true }}
{{- end }}
{{- $paths := dict }}
{{- range .Values.extraVolumeMounts }}
{{- $path := clean .mountPath }}
{{- if not (hasKey $volumes .name) }}
{{- $problems = append $problems (printf "extraVolumeMounts: %s mounts %q, which is no volume of extraVolumes" .mountPath .name) }}
{{- end }}
{{- range $chartPaths }}
{{- if or (eq $path .) (hasPrefix (printf "%s/" .) $path) (hasPrefix (printf "%s/" (trimSuffix "/" $path)) .) }}
{{- $problems = append $problems (printf "extraVolumeMounts: %s would hide or change what the chart mounts at %s: mount it elsewhere (e.g. under /etc/ssl/ or /etc/pinecall-bridge/<name>)" $path .) }}
{{- end }}
{{- end }}
{{- if hasKey $paths $path }}
{{- $problems = append $problems (printf "extraVolumeMounts: %s is mounted more than once" $path) }}
{{- end }}
{{- $_ := set $paths $path true }}
{{- end }}
{{- if $problems }}
{{- fail (printf "\n\nextraVolumes/extraVolumeMounts would clash with the chart's own:\n  - %s" (join "\n  - " $problems)) }}
{{- end }}
{{- end }}

{{/*
A URL (a string) read as the bridge reads it, as JSON; the chart's one URL reader. Not urlParse:
Go's parser fails where urllib does not (a `%` that escapes nothing, a `{` in a host), and its
error quotes the URL, password and token too. As urllib's urlsplit reads it: scheme (lower case),
netloc, hostname (lower case, an IPv6 literal without its brackets), port ("" for none), unclosed
(a `[` or `]` in the netloc without the other: urllib refuses it); loopback (localhost or
127.0.0.0/8 as Python's ipaddress reads it, no leading zeros, every trailing dot off, as
bridge/config.py's is_loopback; an IPv6 literal is left to the bridge, which has more than one
spelling of it: taken for loopback here); credentials ("userinfo" as bridge/redaction.py's
has_userinfo finds it, else "query" for a query name holding a credential word, else ""); and
problem, why bridge/config.py's _check_url refuses it ("" when it would not). `check` prints
these URLs and the logs name them: no credentials before the host nor in the query (the older
feed's `?token=...` pasted whole); no fragment, no whitespace (Python's isspace()); a host, a
port from 0 to 65535.
*/}}
{{- define "pinecall-bridge.url" -}}
{{- $url := toString . }}
{{- /* What urllib drops before reading a URL: C0 controls and spaces before it, a tab or line
break anywhere. */}}
{{- $read := regexReplaceAll "[\\t\\n\\r]" (regexReplaceAll "^[\\x00-\\x20]+" $url "") "" }}
{{- $schemePart := regexFind "^[A-Za-z][A-Za-z0-9+.-]*:" $read }}
{{- $rest := substr (len $schemePart) -1 $read }}
{{- /* urlsplit's netloc: after `//`, up to the first `/`, `?` or `#`; its query: after the first
`?` of what follows, before the first `#`. */}}
{{- $netloc := "" }}
{{- if hasPrefix "//" $rest }}
{{- $netloc = regexFind "^[^/?#]*" (substr 2 -1 $rest) }}
{{- $rest = substr (add 2 (len $netloc) | int) -1 $rest }}
{{- end }}
{{- $query := "" }}
{{- $beforeFragment := index (splitn "#" 2 $rest) "_0" }}
{{- if contains "?" $beforeFragment }}{{ $query = index (splitn "?" 2 $beforeFragment) "_1" }}{{ end }}
{{- /* The host past any user info (the last `@`), before a port: after an IPv6 literal's `]`. */}}
{{- $hostinfo := splitList "@" $netloc | last }}
{{- $hostname := "" }}
{{- $port := "" }}
{{- if contains "[" $hostinfo }}
{{- $bracketed := index (splitn "[" 2 $hostinfo) "_1" }}
{{- $hostname = index (splitn "]" 2 $bracketed) "_0" }}
{{- $afterBracket := index (splitn "]" 2 $bracketed) "_1" | default "" }}
{{- if contains ":" $afterBracket }}{{ $port = index (splitn ":" 2 $afterBracket) "_1" }}{{ end }}
{{- else }}
{{- $hostname = index (splitn ":" 2 $hostinfo) "_0" }}
{{- if contains ":" $hostinfo }}{{ $port = index (splitn ":" 2 $hostinfo) "_1" }}{{ end }}
{{- end }}
{{- $unclosed := ne (contains "[" $netloc) (contains "]" $netloc) }}
{{- $host := regexReplaceAll "\\.+$" (lower $hostname) "" }}
{{- $octet := "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])" }}
{{- $loopback := or (eq $host "localhost") (regexMatch (printf "^127(?:\\.%s){3}$" $octet) $host) (contains "[" $hostinfo) }}
{{- /* User info as has_userinfo finds it: past the scheme and its slashes (any run of `/` or `\`
after http, https, ws, wss or ftp; two after another scheme or none), an `@` before the first `/`
(a password's `#`, `?` or `\` does not end it), or past a port that is no number (a password's
`/` ends the host there: `user:pa/ss@host`). */}}
{{- $userinfo := false }}
{{- $before := regexFind "(?i)^(?:(?:https?|wss?|ftp):[/\\\\]*|(?:[a-z][a-z0-9+.-]*:)?[/\\\\]{2})" $read }}
{{- if $before }}
{{- $after := substr (len $before) -1 $read }}
{{- $authority := regexFind "^[^/\\\\]*" $after }}
{{- $afterBracket := splitList "]" $authority | last }}
{{- /* Python's isdigit(): decimal digits, and superscript, subscript and circled ones. */}}
{{- $isdigit := "^[\\p{Nd}\\x{b2}-\\x{b3}\\x{b9}\\x{1369}-\\x{1371}\\x{19da}\\x{2070}\\x{2074}-\\x{2079}\\x{2080}-\\x{2089}\\x{2460}-\\x{2468}\\x{2474}-\\x{247c}\\x{2488}-\\x{2490}\\x{24ea}\\x{24f5}-\\x{24fd}\\x{24ff}\\x{2776}-\\x{277e}\\x{2780}-\\x{2788}\\x{278a}-\\x{2792}\\x{10a40}-\\x{10a43}\\x{10e60}-\\x{10e68}\\x{11052}-\\x{1105a}\\x{1f100}-\\x{1f10a}]+$" }}
{{- $badPort := and (contains ":" $afterBracket) (not (regexMatch $isdigit (index (splitn ":" 2 $afterBracket) "_1"))) }}
{{- $userinfo = or (contains "@" (index (splitList "/" $after) 0)) (and $badPort (contains "@" (substr (len $authority) -1 $after))) }}
{{- end }}
{{- $credentials := "" }}
{{- range splitList "&" $query }}
{{- /* The name as parse_qsl decodes it: a `+` is a space, each %XX its byte (ASCII's as a
character, the others read as UTF-8 where they run unbroken: pinecall-bridge.utf8). */}}
{{- $name := "" }}
{{- $bytes := "" }}
{{- range regexFindAll "%[0-9A-Fa-f]{2}|[^%]+|%" (index (splitList "=" .) 0 | replace "+" " ") -1 }}
{{- $byte := ternary (int64 (printf "0x%s" (trimPrefix "%" .))) -1 (regexMatch "^%[0-9A-Fa-f]{2}$" .) }}
{{- if ge $byte 128 }}{{ $bytes = printf "%s%s" $bytes (lower (trimPrefix "%" .)) }}
{{- else }}{{ $name = printf "%s%s%s" $name (include "pinecall-bridge.utf8" $bytes) (ternary (printf "%c" $byte) . (ge $byte 0)) }}{{ $bytes = "" }}
{{- end }}
{{- end }}
{{- /* Lower case as Python's str.lower(): "İ" is "i̇" (i and a combining dot) there, "i" to Go's. */}}
{{- $name = printf "%s%s" $name (include "pinecall-bridge.utf8" $bytes) | replace "_" "" | replace "-" "" | replace "\u0130" "i\u0307" | lower }}
{{- if (or (regexMatch "(token|secret|passw|pwd|jwt|credential|signature)" $name) (regexMatch "(key|sig|auth|authorization)$" $name)) }}{{ $credentials = "query" }}{{ end }}
{{- end }}
{{- if $userinfo }}{{ $credentials = "userinfo" }}{{ end }}
{{- /* A port of ASCII digits, leading zeros aside, at most 65535 (urllib: 0 included, no sign). */}}
{{- $number := regexReplaceAll "^0+([0-9])" $port "${1}" }}
{{- $badPort := and $port (or (not (regexMatch "^[0-9]+$" $port)) (gt (len $number) 5) (gt (atoi $number) 65535)) }}
{{- $problem := "" }}
{{- if regexMatch "[\\t-\\r\\x1c-\\x20\\x{85}\\p{Z}]" $url }}
{{- $problem = "must not contain whitespace (percent-encode it in a path)" }}
{{- else if $unclosed }}
{{- $problem = "has a '[' or ']' (an IPv6 address in brackets) without the other" }}
{{- else if $userinfo }}
{{- $problem = "must not carry credentials (user:password@): `check` prints it and the logs name it; the API key goes in secrets.pinecallApiKey" }}
{{- else if not $hostname }}
{{- $problem = "has no host (scheme://host[:port]/...)" }}
{{- else if $badPort }}
{{- $problem = "has a port that is not a number from 0 to 65535" }}
{{- else if contains "#" $url }}
{{- $problem = "must not have a fragment (#...)" }}
{{- else if eq $credentials "query" }}
{{- $problem = "must not carry a token or key in its query (?token=...): `check` prints it and the logs name it; the bridge fetches the feed's token with secrets.pinecallApiKey" }}
{{- end }}
{{- dict "scheme" (trimSuffix ":" $schemePart | lower) "netloc" $netloc "hostname" (lower $hostname) "port" $port "unclosed" $unclosed "loopback" $loopback "credentials" $credentials "problem" $problem | toJson }}
{{- end }}

{{/* Bytes not ASCII (lower-case hex, two digits each) as Python's UTF-8 decoding reads them for a
query name, as far as pinecall-bridge.url's words can tell: of the characters not ASCII only İ and
K (the Kelvin sign) lower-case to ASCII letters; any other, or an undecodable byte (U+FFFD), is a
character no word spans. A lead byte ends any sequence before it: "c4b0" and "e284aa" are those
characters wherever they are. */}}
{{- define "pinecall-bridge.utf8" -}}
{{- regexReplaceAll "[0-9a-f]{2}" (. | replace "c4b0" "\u0130" | replace "e284aa" "\u212a") "\ufffd" }}
{{- end }}

{{/* "true" when TEXT (a string) is a JSON list as the bridge tells one (bridge/config.py's
_is_json_list): it starts with `[` and the whole of it parses as one JSON array. Python's json
takes NaN, Infinity and -Infinity as numbers, Go's none; and any number, where Go's float64 fails on
one past its range (1e400, or 400 digits). Each is a 0 here, spaced so that it joins no neighbour
(`[1NaN]`, `[1e1e5]` stay no list); in a string that changes nothing but its text, once each
\uXXXX escape is one without digits (which the 0s would split). But an integer of more than 4300
digits (no fraction, no exponent) is no number to Python's json, whose int() refuses it: no list
then; its tokens read left to right, strings apart, are JSON's wherever Python reads a list. */}}
{{- define "pinecall-bridge.jsonList" -}}
{{- $text := toString . }}
{{- if hasPrefix "[" (trim $text) }}
{{- $longInt := false }}
{{- range regexFindAll "\"(?:[^\"\\\\]|\\\\.)*\"|-?[0-9]+(?:\\.[0-9]+)?(?:[eE][+-]?[0-9]+)?" $text -1 }}
{{- if and (regexMatch "^-?[0-9]+$" .) (gt (len (trimPrefix "-" .)) 4300) }}{{ $longInt = true }}{{ end }}
{{- end }}
{{- $json := $text | replace "-Infinity" " 0 " | replace "Infinity" " 0 " | replace "NaN" " 0 " }}
{{- $json = regexReplaceAll "\\\\u[0-9A-Fa-f]{4}" $json "\\uaaaa" }}
{{- $json = regexReplaceAll "-?(?:0|[1-9][0-9]*)(?:\\.[0-9]+)?(?:[eE][+-]?[0-9]+)?" $json " 0 " }}
{{- $parsed := fromJsonArray (printf "[%s]" $json) }}
{{- and (not $longInt) (eq (len $parsed) 1) (kindIs "slice" (index $parsed 0)) }}
{{- end }}
{{- end }}
