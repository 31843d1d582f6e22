{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "rds-iam-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: RELEASE-rds-iam-proxy unless overridden. */}}
{{- define "rds-iam-proxy.fullname" -}}
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

{{/* Common labels. */}}
{{- define "rds-iam-proxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "rds-iam-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ServiceAccount the pod runs as. */}}
{{- define "rds-iam-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rds-iam-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the ConfigMap holding config.yaml. */}}
{{- define "rds-iam-proxy.configMapName" -}}
{{- printf "%s-config" (include "rds-iam-proxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fails the render when Kubernetes would SIGKILL the proxy before its drain can finish. */}}
{{- define "rds-iam-proxy.checkGracePeriod" -}}
{{- $shutdown := .Values.proxy.config.shutdown | default dict }}
{{- $maxDrain := add (int ($shutdown.minDelayMs | default 0)) (int ($shutdown.maxDelayMs | default 30000)) }}
{{- if le (mul (int .Values.terminationGracePeriodSeconds) 1000) (int $maxDrain) }}
{{- fail "terminationGracePeriodSeconds must exceed (proxy.config.shutdown.minDelayMs + maxDelayMs) / 1000" }}
{{- end }}
{{- end }}

{{/*
"true" when the proxy runs as a native sidecar (an initContainer with restartPolicy: Always),
"" for a regular container. proxy.nativeSidecar auto: native from Kubernetes 1.29 on (beta and on
by default there); true: native, and rendering fails where the cluster is older.
*/}}
{{- define "rds-iam-proxy.native" -}}
{{- $want := .Values.proxy.nativeSidecar }}
{{- $supported := semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version }}
{{- if eq (toString $want) "auto" }}
{{- if $supported }}true{{ end }}
{{- else if $want }}
{{- if not $supported }}
{{- fail (printf "proxy.nativeSidecar: true needs Kubernetes >= 1.29 (native sidecars), but the cluster is %s; set proxy.nativeSidecar: auto (a regular container there) or false" .Capabilities.KubeVersion.Version) }}
{{- end }}true
{{- end }}
{{- end }}

{{/* True (as a string) for loopback hosts: 127.0.0.0/8, ::1, localhost. */}}
{{- define "rds-iam-proxy.isLoopback" -}}
{{- if or (hasPrefix "127." .) (eq . "::1") (eq . "localhost") }}true{{ end }}
{{- end }}

{{/*
proxy.config.admin.listen as YAML {host, port, loopback}: host:port, [v6]:port, :port or a port
(host 127.0.0.1 then, as the proxy reads it). The probes and the admin containerPort come from here,
so they cannot disagree with the address the proxy binds.
*/}}
{{- define "rds-iam-proxy.admin" -}}
{{- $listen := toString ((.Values.proxy.config.admin | default dict).listen | default "") }}
{{- if not (regexMatch "^(\\[[^\\]]+\\]|[^:/\\[]*)?:?[0-9]+$" $listen) }}
{{- fail (printf "proxy.config.admin.listen must be host:port (e.g. 127.0.0.1:9090), got %q: the probes use it" $listen) }}
{{- end }}
{{- $port := regexFind "[0-9]+$" $listen }}
{{- $host := regexReplaceAll ":?[0-9]+$" $listen "" | trimPrefix "[" | trimSuffix "]" | default "127.0.0.1" }}
host: {{ $host | quote }}
port: {{ $port }}
loopback: {{ eq (include "rds-iam-proxy.isLoopback" $host) "true" }}
{{- end }}

{{/*
Cross-field rules of the proxy config that values.schema.json cannot express; each failure names
the key, like `rds-iam-proxy check` would (the pod would otherwise crash-loop with exit 78).
*/}}
{{- define "rds-iam-proxy.checkConfig" -}}
{{- $cfg := .Values.proxy.config }}
{{- $admin := include "rds-iam-proxy.admin" . | fromYaml }}
{{- if and .Values.metrics.podMonitor.enabled $admin.loopback }}
{{- fail "metrics.podMonitor.enabled needs proxy.config.admin.listen on a pod address (e.g. 0.0.0.0:9090): on loopback Prometheus cannot scrape it. /metrics names database users; restrict it with networkPolicy.enabled and networkPolicy.metricsFrom" }}
{{- end }}
{{- $ca := (($cfg.localTls | default dict).caFile | default "") }}
{{- if not (hasPrefix (printf "%s/" (trimSuffix "/" .Values.proxy.runDir)) $ca) }}
{{- fail (printf "proxy.config.localTls.caFile must be inside proxy.runDir (%s), the volume the app containers mount to verify the proxy's local TLS; got %q" .Values.proxy.runDir $ca) }}
{{- end }}
{{- range $i, $l := $cfg.listeners }}
{{- $listen := toString $l.listen }}
{{- if not (hasPrefix "/" $listen) }}
{{- $host := regexReplaceAll ":?[0-9]+$" $listen "" | trimPrefix "[" | trimSuffix "]" | default "127.0.0.1" }}
{{- $auth := (($l.client | default dict).auth | default "trust") }}
{{- if and (ne (include "rds-iam-proxy.isLoopback" $host) "true") (ne $auth "password") }}
{{- fail (printf "proxy.config.listeners.%d.listen: %s is not a loopback address: anyone who can reach it would log in as the IAM user; set client.auth: password (with client.users) or listen on 127.0.0.1" $i $host) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
