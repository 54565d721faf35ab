{{/* The targets, one Deployment each, in the binary's order. */}}
{{- define "carnet.targets" -}}
contacts consent comms enrichment dsar gateway
{{- end }}

{{/* Every database the chart gives a URL for: one per target, and the key store's. */}}
{{- define "carnet.databases" -}}
{{ include "carnet.targets" . }} keys
{{- end }}

{{/* Whether a target seals personal data with the key store (it then gets its URL and master key). */}}
{{- define "carnet.usesKeys" -}}
{{- if has . (list "contacts" "comms") }}true{{ end }}
{{- end }}

{{/* The gRPC service each target registers in grpc.health.v1 (its readiness check). */}}
{{- define "carnet.healthService" -}}
{{- $names := dict "contacts" "carnet.contacts.v1.ContactsService" "consent" "carnet.consent.v1.ConsentService" "comms" "carnet.comms.v1.CommsService" "enrichment" "carnet.enrichment.v1.EnrichmentService" "dsar" "carnet.dsar.v1.DsarService" -}}
{{- get $names . -}}
{{- end }}

{{- define "carnet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-carnet, or the release name when it already contains the chart name. */}}
{{- define "carnet.fullname" -}}
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

{{/* The name of a target's objects: <fullname>-<target>, within 63 characters. Input: dict root, target. */}}
{{- define "carnet.componentName" -}}
{{- printf "%s-%s" (include "carnet.fullname" .root | trunc 51 | trimSuffix "-") .target }}
{{- end }}

{{- define "carnet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. Input: dict root, component. */}}
{{- define "carnet.labels" -}}
helm.sh/chart: {{ include "carnet.chart" .root }}
{{ include "carnet.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: carnet
{{- end }}

{{/* Selector labels. Input: dict root, component. */}}
{{- define "carnet.selectorLabels" -}}
{{ include "carnet.releaseLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The labels every pod of this release carries (the NetworkPolicies' "pods of the release"). */}}
{{- define "carnet.releaseLabels" -}}
app.kubernetes.io/name: {{ include "carnet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "carnet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "carnet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "carnet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
A target's settings as JSON: targetDefaults, each key of the target's own section replacing the
same key whole. Input: dict root, target.
*/}}
{{- define "carnet.targetValues" -}}
{{- $merged := deepCopy .root.Values.targetDefaults }}
{{- range $key, $value := (get .root.Values .target | default dict) }}
{{- $_ := set $merged $key $value }}
{{- end }}
{{- toJson $merged }}
{{- end }}

{{/* The port of a URL, or the default. Input: dict url, default. */}}
{{- define "carnet.urlPort" -}}
{{- $port := (urlParse .url).host | splitList ":" | last }}
{{- if regexMatch "^[0-9]+$" $port }}{{ $port }}{{ else }}{{ .default }}{{ end }}
{{- end }}

{{- define "carnet.meshSecretName" -}}
{{- default (printf "%s-mesh" (include "carnet.fullname" .)) .Values.mesh.existingSecret }}
{{- end }}

{{- define "carnet.meshSecretKey" -}}
{{- if .Values.mesh.existingSecret }}{{ .Values.mesh.existingSecretKey }}{{ else }}signing-key{{ end }}
{{- end }}

{{- define "carnet.keysSecretName" -}}
{{- default (printf "%s-keys" (include "carnet.fullname" .)) .Values.keys.existingSecret }}
{{- end }}

{{- define "carnet.keysSecretKey" -}}
{{- if .Values.keys.existingSecret }}{{ .Values.keys.existingSecretKey }}{{ else }}master-key{{ end }}
{{- end }}

{{/* "true" when comms gets SMTP credentials; fails when only half of them is given. */}}
{{- define "carnet.smtpCredentials" -}}
{{- $password := or .Values.smtp.existingSecret .Values.smtp.password }}
{{- if and .Values.smtp.username (not $password) }}
{{- fail "smtp.username needs smtp.password or smtp.existingSecret (comms.smtp.username and comms.smtp.password go together)" }}
{{- else if and $password (not .Values.smtp.username) }}
{{- fail "smtp.password (or smtp.existingSecret) needs smtp.username (comms.smtp.username and comms.smtp.password go together)" }}
{{- else if $password }}true{{ end }}
{{- end }}

{{- define "carnet.smtpSecretName" -}}
{{- default (printf "%s-smtp" (include "carnet.fullname" .)) .Values.smtp.existingSecret }}
{{- end }}

{{- define "carnet.smtpSecretKey" -}}
{{- if .Values.smtp.existingSecret }}{{ .Values.smtp.existingSecretKey }}{{ else }}smtp-password{{ end }}
{{- end }}

{{/* The database URLs' Secret: the existing one, or the chart's (<fullname>-database). Input: dict root, hook. */}}
{{- define "carnet.databaseSecretName" -}}
{{- if .root.Values.postgresql.existingSecret }}
{{- .root.Values.postgresql.existingSecret }}
{{- else if .hook }}
{{- printf "%s-migrations" (include "carnet.fullname" .root) }}
{{- else }}
{{- printf "%s-database" (include "carnet.fullname" .root) }}
{{- end }}
{{- end }}

{{- define "carnet.databaseSecretKey" -}}
{{- if .root.Values.postgresql.existingSecret }}
{{- required (printf "postgresql.existingSecretKeys.%s is required" .target) (get .root.Values.postgresql.existingSecretKeys .target) }}
{{- else }}
{{- printf "%s-database-url" .target }}
{{- end }}
{{- end }}

{{/* The `data` of the chart's database Secret: one postgres:// URL per target. */}}
{{- define "carnet.databaseSecretData" -}}
{{- $pg := .Values.postgresql }}
{{- $host := required "postgresql.host (or postgresql.existingSecret) is required: Carnet runs on an external PostgreSQL" $pg.host }}
{{- $user := urlquery (required "postgresql.username is required" $pg.username) | replace "+" "%20" }}
{{- $auth := $user }}
{{- if $pg.password }}
{{- $auth = printf "%s:%s" $user (urlquery $pg.password | replace "+" "%20") }}
{{- end }}
{{- range $target := include "carnet.databases" . | splitList " " }}
{{- $db := required (printf "postgresql.databases.%s is required" $target) (get $pg.databases $target) }}
{{- $url := printf "postgres://%s@%s:%d/%s" $auth $host (int $pg.port) (urlquery $db) }}
{{- if $pg.params }}
{{- $url = printf "%s?%s" $url $pg.params }}
{{- end }}
{{ $target }}-database-url: {{ $url | b64enc | quote }}
{{- end }}
{{- end }}

{{/* The NATS URL of bus.nats_url (empty when it comes from externalNats.existingSecret). */}}
{{- define "carnet.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- if not (hasKey .Subcharts "nats") }}
{{- fail "nats.enabled is true but the NATS chart is not in charts/: run `helm dependency build` on the chart, or set nats.enabled=false and externalNats.url" }}
{{- end }}
{{- $nats := .Values.nats }}
{{- $name := default "nats" $nats.nameOverride }}
{{- $fullname := "" }}
{{- if $nats.fullnameOverride }}
{{- $fullname = $nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains $name .Release.Name }}
{{- $fullname = .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $fullname = printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- $service := dig "service" "name" $fullname $nats }}
{{- printf "nats://%s:%s" $service (include "carnet.natsPort" .) }}
{{- else if .Values.externalNats.existingSecret }}
{{- else }}
{{- $url := required "externalNats.url (or externalNats.existingSecret) is required when nats.enabled is false" .Values.externalNats.url }}
{{- if not (hasPrefix "nats://" $url) }}
{{- fail "externalNats.url must be a nats:// URL" }}
{{- end }}
{{- $url }}
{{- end }}
{{- end }}

{{- define "carnet.natsPort" -}}
{{- if .Values.nats.enabled }}
{{- dig "config" "nats" "port" 4222 .Values.nats | int }}
{{- else if .Values.externalNats.existingSecret }}
{{- .Values.externalNats.port | int }}
{{- else }}
{{- include "carnet.urlPort" (dict "url" .Values.externalNats.url "default" 4222) }}
{{- end }}
{{- end }}

{{/* comms.public_url: publicUrl, the ingress's first host, or the gateway Service. */}}
{{- define "carnet.publicUrl" -}}
{{- if .Values.publicUrl }}
{{- trimSuffix "/" .Values.publicUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- printf "%s://%s" (ternary "https" "http" (not (empty .Values.ingress.tls))) (first .Values.ingress.hosts).host }}
{{- else if dig "comms" "smtp" "host" "" .Values.config }}
{{- fail "publicUrl is required when an SMTP relay is set (config.comms.smtp.host) and the ingress is off: mails carry links to the gateway" }}
{{- else }}
{{- printf "http://%s:%d" (include "carnet.componentName" (dict "root" . "target" "gateway")) (int .Values.ports.http) }}
{{- end }}
{{- end }}

{{/* carnet.toml: config, plus what the chart owns (addresses, endpoints, NATS, telemetry export). */}}
{{- define "carnet.configToml" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $endpoints := dict }}
{{- range $target := list "contacts" "consent" "comms" "enrichment" "dsar" }}
{{- $_ := set $endpoints $target (printf "http://%s:%d" (include "carnet.componentName" (dict "root" $ "target" $target)) (int $.Values.ports.grpc)) }}
{{- end }}
{{- $section := dict }}
{{- $section = get $cfg "node" | default dict }}
{{- $_ := set $section "data_dir" "/var/lib/carnet" }}
{{- $_ := set $cfg "node" $section }}
{{- $section = get $cfg "grpc" | default dict }}
{{- $_ := set $section "listen_addr" (printf "%s:%d" .Values.listenHost (int .Values.ports.grpc)) }}
{{- $_ := set $cfg "grpc" $section }}
{{- $section = get $cfg "telemetry" | default dict }}
{{- $_ := set $section "log_format" .Values.telemetry.logFormat }}
{{- $_ := set $section "otlp_endpoint" .Values.telemetry.otlpEndpoint }}
{{- $_ := set $section "service_name" .Values.telemetry.serviceNamePrefix }}
{{- $_ := set $cfg "telemetry" $section }}
{{- $section = get $cfg "bus" | default dict }}
{{- $_ := set $section "nats_url" (include "carnet.natsUrl" .) }}
{{- $_ := set $cfg "bus" $section }}
{{- $section = get $cfg "consent" | default dict }}
{{- $_ := set $section "contacts_endpoint" $endpoints.contacts }}
{{- $_ := set $cfg "consent" $section }}
{{- $section = get $cfg "comms" | default dict }}
{{- $_ := set $section "contacts_endpoint" $endpoints.contacts }}
{{- $_ := set $section "consent_endpoint" $endpoints.consent }}
{{- $_ := set $section "public_url" (include "carnet.publicUrl" .) }}
{{- $_ := set $cfg "comms" $section }}
{{- $section = get $cfg "enrichment" | default dict }}
{{- $_ := set $section "contacts_endpoint" $endpoints.contacts }}
{{- $_ := set $section "consent_endpoint" $endpoints.consent }}
{{- $_ := set $cfg "enrichment" $section }}
{{- $section = get $cfg "dsar" | default dict }}
{{- $dsarEndpoints := get $section "endpoints" | default dict }}
{{- range $participant := append (dig "participants" (list "contacts" "consent" "comms" "enrichment") $section) "contacts" | uniq }}
{{- if and (hasKey $endpoints $participant) (not (hasKey $dsarEndpoints $participant)) }}
{{- $_ := set $dsarEndpoints $participant (get $endpoints $participant) }}
{{- end }}
{{- end }}
{{- $_ := set $section "endpoints" $dsarEndpoints }}
{{- $_ := set $cfg "dsar" $section }}
{{- $section = get $cfg "gateway" | default dict }}
{{- $_ := set $section "listen_addr" (printf "%s:%d" .Values.listenHost (int .Values.ports.http)) }}
{{- range $target := list "contacts" "consent" "comms" "enrichment" "dsar" }}
{{- $_ := set $section (printf "%s_endpoint" $target) (get $endpoints $target) }}
{{- end }}
{{- $_ := set $cfg "gateway" $section }}
{{- include "carnet.wholeNumbers" $cfg }}
{{- toToml $cfg }}
{{- end }}

{{/*
Turns whole-number floats of a map into integers, in place: values files reach templates with
numbers as floats, and `port = 587.0` in carnet.toml would puzzle whoever reads it.
*/}}
{{- define "carnet.wholeNumbers" -}}
{{- $map := . }}
{{- range $key, $value := $map }}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- $_ := set $map $key (int64 $value) }}
{{- else if kindIs "map" $value }}
{{- include "carnet.wholeNumbers" $value }}
{{- end }}
{{- end }}
{{- end }}
