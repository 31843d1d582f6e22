{{/*
rds-iam-proxy as a sidecar, for any pod template. Call with a context whose .Values follow this
chart's values (image, proxy, ...), e.g. from a pod spec:

  initContainers:                      # proxy.nativeSidecar: true (Kubernetes >= 1.29)
    {{- include "rds-iam-proxy.nativeSidecars" . | nindent 4 }}
  containers:
    - name: app
      ...
    {{- include "rds-iam-proxy.regularSidecars" . | nindent 4 }}
  volumes:
    {{- include "rds-iam-proxy.volumes" . | nindent 4 }}

Exactly one of nativeSidecars / regularSidecars renders the container, per proxy.nativeSidecar.
*/}}

{{/* The proxy container. A native sidecar is an initContainer with restartPolicy: Always. */}}
{{- define "rds-iam-proxy.sidecar" -}}
- name: {{ .Values.proxy.name }}
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.proxy.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/rds-iam-proxy/config.yaml"]
  {{- with .Values.proxy.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: admin
      containerPort: {{ .Values.proxy.adminPort }}
      protocol: TCP
  startupProbe:
    {{- toYaml .Values.proxy.startupProbe | nindent 4 }}
  livenessProbe:
    {{- toYaml .Values.proxy.livenessProbe | nindent 4 }}
  readinessProbe:
    {{- toYaml .Values.proxy.readinessProbe | nindent 4 }}
  resources:
    {{- toYaml .Values.proxy.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.proxy.securityContext | nindent 4 }}
  volumeMounts:
    - name: rds-iam-proxy-config
      mountPath: /etc/rds-iam-proxy
      readOnly: true
    - name: rds-iam-proxy-tmp
      mountPath: /tmp
{{- end }}

{{/* The sidecar for `initContainers:` when proxy.nativeSidecar is true; nothing otherwise. */}}
{{- define "rds-iam-proxy.nativeSidecars" -}}
{{- if .Values.proxy.nativeSidecar }}
{{- include "rds-iam-proxy.sidecar" . }}
{{- end }}
{{- end }}

{{/* The sidecar for `containers:` when proxy.nativeSidecar is false; nothing otherwise. */}}
{{- define "rds-iam-proxy.regularSidecars" -}}
{{- if not .Values.proxy.nativeSidecar }}
{{- include "rds-iam-proxy.sidecar" . }}
{{- end }}
{{- end }}

{{/* Volumes the sidecar mounts: the config and an in-memory /tmp (read-only root filesystem). */}}
{{- define "rds-iam-proxy.volumes" -}}
- name: rds-iam-proxy-config
  configMap:
    name: {{ include "rds-iam-proxy.configMapName" . }}
- name: rds-iam-proxy-tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.proxy.tmpSizeLimit }}
{{- end }}

{{/* Pod annotation that restarts pods when the proxy's config changes. */}}
{{- define "rds-iam-proxy.configChecksum" -}}
checksum/rds-iam-proxy-config: {{ toYaml .Values.proxy.config | sha256sum }}
{{- end }}
