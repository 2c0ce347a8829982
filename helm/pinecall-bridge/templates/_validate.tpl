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
{{- /* Each secret: "given" when the chart sets it for sure, "possible" when it may be set. */}}
{{- $given := dict }}
{{- $possible := dict }}
{{- range $item, $var := include "pinecall-bridge.secretEnvNames" . | fromYaml }}
{{- $spec := get $s $item }}
{{- $sure := or $spec.value $spec.secretName (has $var $extraEnv) }}
{{- $_ := set $given $item (ternary true false (not (not $sure))) }}
{{- $_ := set $possible $item (ternary true false (not (not (or $sure $s.existingSecret)))) }}
{{- end }}
{{- $webhook := include "pinecall-bridge.withDefaults" (list $c.webhook (dict "allowUnsigned" false "path" "/webhooks/pinecall")) | fromJson }}
{{- /* A sender normalises `.` and `..` away: every webhook would be 404 (the rest of the path's
rules are values.schema.json's pattern). */}}
{{- $segments := splitList "/" (trimAll "/" (toString $webhook.path)) }}
{{- if or (has "." $segments) (has ".." $segments) }}
{{- $problems = append $problems (printf "config.webhook.path (%s) must be a plain path: no '.' or '..' segment (a sender normalises them away, and every webhook would be 404)" $webhook.path) }}
{{- end }}
{{- if not (or (get $possible "webhookSecrets") $webhook.allowUnsigned) }}
{{- $problems = append $problems (printf "no webhook secret: set secrets.webhookSecrets.value or secrets.webhookSecrets.secretName, or secrets.existingSecret (a Secret with the key %q); only for local testing, config.webhook.allowUnsigned=true accepts unsigned webhooks" $s.webhookSecrets.key) }}
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
always, the feed's when it is on). Its host as urllib reads it: past any user info, before a port;
an IPv6 literal is left to the bridge (loopback has more than one spelling there), and 127.0.0.0/8
as Python's ipaddress reads it (no leading zeros). Not urlParse: Go's parser fails where urllib
does not (a `%` that escapes nothing), and its error quotes the URL, password and token too. */}}
{{- $plain := dict }}
{{- $_ := set $plain "config.pinecall.apiUrl" (list $pinecall.apiUrl "http" "the API key and the webhook secret") }}
{{- if $websocket.enabled }}{{ $_ := set $plain "config.websocket.url" (list $websocket.url "ws" "the API key or feed token") }}{{ end }}
{{- if not (($c.pinecall | default dict).allowInsecureUrls) }}
{{- range $where, $spec := $plain }}
{{- $scheme := index $spec 1 }}
{{- $url := toString (index $spec 0) }}
{{- if hasPrefix (printf "%s://" $scheme) $url }}
{{- $hostinfo := trimPrefix (printf "%s://" $scheme) $url | regexFind "^[^/?#]*" | splitList "@" | last }}
{{- $host := regexReplaceAll "\\.+$" (index (splitList ":" $hostinfo) 0 | lower) "" }}
{{- $octet := "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])" }}
{{- $loopback := or (eq $host "localhost") (regexMatch (printf "^127(\\.%s){3}$" $octet) $host) (contains "[" $hostinfo) }}
{{- if not $loopback }}
{{- /* Never echoed: the URL may hold a password or a token (refused below). */}}
{{- $problems = append $problems (printf "%s is a plain %s:// URL to another host: it would send %s unencrypted; use %ss://, or on a trusted network set config.pinecall.allowInsecureUrls=true" $where $scheme (index $spec 2) $scheme) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Each URL as the bridge checks it (bridge/config.py's _check_url), the feed's whether on or
off: `check` prints it and the logs name it, so no credentials before the host nor in the query
(the older feed's `?token=...` pasted whole); no fragment, no whitespace (Python's isspace()), a
port from 0 to 65535. Never echoed: it may hold a secret. A query name percent-encoded or with a
`+` is left to the bridge, which decodes it. */}}
{{- $urls := dict "config.pinecall.apiUrl" $pinecall.apiUrl "config.websocket.url" $websocket.url }}
{{- $publicUrl := toString ($pinecall.publicUrl | default "") }}
{{- if trim $publicUrl }}{{ $_ := set $urls "config.pinecall.publicUrl" $publicUrl }}{{ end }}
{{- range $where, $url := $urls }}
{{- $url = toString $url }}
{{- /* User info as bridge/redaction.py's has_userinfo finds it: an `@` before the first `/` past
the scheme's slashes (a password's `#` or `?` does not end it), or past a port that is no number
(a password's `/` ends the host there: `user:pa/ss@host`). */}}
{{- $after := regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*:[/\\\\]*" $url "" }}
{{- $authority := regexFind "^[^/\\\\]*" $after }}
{{- $afterBracket := last (splitList "]" $authority) }}
{{- $badPort := and (contains ":" $afterBracket) (not (regexMatch "^[0-9]+$" (index (splitn ":" 2 $afterBracket) "_1"))) }}
{{- $userinfo := or (contains "@" (index (splitList "/" $after) 0)) (and $badPort (contains "@" (trimPrefix $authority $after))) }}
{{- /* The port as urllib reads it: after the host's first `:` (an IPv6 literal's `]`), no sign. */}}
{{- $hostinfo := regexFind "^[^/?#]*" $after | splitList "@" | last }}
{{- if contains "[" $hostinfo }}{{ $hostinfo = last (splitList "]" $hostinfo) }}{{ end }}
{{- $port := "" }}
{{- if contains ":" $hostinfo }}{{ $port = index (splitn ":" 2 $hostinfo) "_1" }}{{ end }}
{{- $digits := regexReplaceAll "^0+" $port "" }}
{{- $portOk := or (eq $port "") (and (regexMatch "^[0-9]+$" $port) (le (len $digits) 5) (le (atoi (default "0" $digits)) 65535)) }}
{{- $names := list }}
{{- if contains "?" $url }}
{{- range splitList "&" (index (splitList "#" (index (splitn "?" 2 $url) "_1")) 0) }}
{{- $name := index (splitList "=" .) 0 }}
{{- if not (regexMatch "[%+]" $name) }}{{ $names = append $names (replace "_" "" $name | replace "-" "" | lower) }}{{ end }}
{{- end }}
{{- end }}
{{- $credential := false }}
{{- range $names }}
{{- if or (regexMatch "(token|secret|passw|pwd|jwt|credential|signature)" .) (regexMatch "(key|sig|auth|authorization)$" .) }}{{ $credential = true }}{{ end }}
{{- end }}
{{- if regexMatch "[\\s\\v\\x1c-\\x1f\\x85\\p{Z}]" $url }}
{{- $problems = append $problems (printf "%s must not contain whitespace (percent-encode it in a path)" $where) }}
{{- else if $userinfo }}
{{- $problems = append $problems (printf "%s must not carry credentials (user:password@): `check` prints it and the logs name it; the API key goes in secrets.pinecallApiKey" $where) }}
{{- else if not $portOk }}
{{- $problems = append $problems (printf "%s has a port that is not a number from 0 to 65535" $where) }}
{{- else if contains "#" $url }}
{{- $problems = append $problems (printf "%s must not have a fragment (#...)" $where) }}
{{- else if $credential }}
{{- $problems = append $problems (printf "%s must not carry a token or key in its query (?token=...): `check` prints it and the logs name it; the bridge fetches the feed's token with secrets.pinecallApiKey" $where) }}
{{- end }}
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
{{- /* A window kept past the TTL reads a gap at least as long as a full restore's: refused. */}}
{{- $keep := ($c.dedup | default dict).keepRevokedSeconds }}
{{- if and (not (kindIs "invalid" $keep)) (gt (float64 $keep) $ttl) }}
{{- $problems = append $problems (printf "config.dedup.keepRevokedSeconds (%s) must not exceed config.dedup.ttlSeconds (%s): a window kept longer reads a gap at least as long as a full restore's and holds its memory meanwhile (leave it null for the TTL)" (include "pinecall-bridge.envValue" (float64 $keep)) (include "pinecall-bridge.envValue" $ttl)) }}
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
{{- range $servers }}
{{- $port := regexFind "[0-9]+$" (trim .) | default "0" | atoi }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- $problems = append $problems (printf "config.kafka.bootstrapServers: %q has no port between 1 and 65535" (trim .)) }}
{{- end }}
{{- if contains "/" . }}
{{- $problems = append $problems (printf "config.kafka.bootstrapServers: %q is not host:port: no scheme (e.g. kafka-0:9092)" (trim .)) }}
{{- end }}
{{- /* Never echoed: the part before the @ is a password. */}}
{{- if contains "@" . }}
{{- $problems = append $problems "config.kafka.bootstrapServers: a server is given with credentials (user:password@), which `check` prints and the logs name: SASL's go in config.kafka.saslUsername and secrets.kafkaSaslPassword" }}
{{- end }}
{{- $host := regexReplaceAll ":[^:]*$" (trim .) "" }}
{{- if and (contains ":" $host) (not (and (hasPrefix "[" $host) (hasSuffix "]" $host))) }}
{{- $problems = append $problems (printf "config.kafka.bootstrapServers: %q is not host:port: an IPv6 address goes in brackets (e.g. [fd00::1]:9092)" (trim .)) }}
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
{{- if not (or $token.audience (has "BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE" $extraEnv)) }}
{{- $problems = append $problems "config.kafka.saslMechanism=OAUTHBEARER needs its token: set serviceAccount.kafkaOauthAudience (the audience the broker's validator expects)" }}
{{- end }}
{{- else if $token.audience }}
{{- $problems = append $problems (printf "serviceAccount.kafkaOauthAudience is ignored with config.kafka.securityProtocol=%s and config.kafka.saslMechanism=%s: use SASL_PLAINTEXT or SASL_SSL with OAUTHBEARER, or unset it" $protocol (toString $k.saslMechanism)) }}
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
{{- if ne $hasFile.cert $hasFile.key }}
{{- $problems = append $problems "kafkaTls.cert and kafkaTls.key go together (a client certificate): set both or neither" }}
{{- end }}
{{- if and (get $given "kafkaSslKeyPassword") (not $hasFile.key) }}
{{- $problems = append $problems "secrets.kafkaSslKeyPassword needs kafkaTls.key (the encrypted client key)" }}
{{- end }}
{{- if and (not $usesTls) (or $hasFile.ca $hasFile.cert (get $given "kafkaSslKeyPassword")) }}
{{- $problems = append $problems (printf "kafkaTls and secrets.kafkaSslKeyPassword are ignored with config.kafka.securityProtocol=%s: use SSL or SASL_SSL, or unset them" $protocol) }}
{{- end }}
{{- /* The same files given as paths in extraEnv (a CA mounted from extraVolumes). */}}
{{- $tlsVars := list }}
{{- range $var := list "BRIDGE_KAFKA__SSL_CAFILE" "BRIDGE_KAFKA__SSL_CERTFILE" "BRIDGE_KAFKA__SSL_KEYFILE" }}
{{- if has $var $extraEnv }}{{ $tlsVars = append $tlsVars $var }}{{ end }}
{{- end }}
{{- if and (not $usesTls) $tlsVars }}
{{- $problems = append $problems (printf "extraEnv sets %s, ignored with config.kafka.securityProtocol=%s: use SSL or SASL_SSL, or unset them" (join ", " $tlsVars) $protocol) }}
{{- end }}
{{- $http := include "pinecall-bridge.withDefaults" (list $c.http (dict "port" 8080)) | fromJson }}
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
