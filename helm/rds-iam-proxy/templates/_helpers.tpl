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
