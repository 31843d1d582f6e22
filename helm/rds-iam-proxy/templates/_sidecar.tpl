{{/*
rds-iam-proxy as a sidecar, for any pod template. Call with a context whose .Values follow this
chart's values (image, proxy, ...), e.g. from a pod spec:

  initContainers:                      # native sidecar (proxy.nativeSidecar, Kubernetes >= 1.29)
    {{- include "rds-iam-proxy.nativeSidecars" . | nindent 4 }}
  containers:
    - name: app
      volumeMounts:                    # the proxy's local CA, for sslmode=verify-full
        {{- include "rds-iam-proxy.appVolumeMounts" . | nindent 8 }}
    {{- include "rds-iam-proxy.regularSidecars" . | nindent 4 }}
  volumes:
    {{- include "rds-iam-proxy.volumes" . | nindent 4 }}

Exactly one of nativeSidecars / regularSidecars renders the container (see rds-iam-proxy.native).
*/}}

{{/* One probe: the values' timing plus a handler on the admin address (exec on loopback, else httpGet). */}}
{{- define "rds-iam-proxy.probe" -}}
{{- $admin := include "rds-iam-proxy.admin" .root | fromYaml }}
{{- if $admin.loopback -}}
exec:
  command:
    - node
    - -e
    - {{ printf "require('http').get('http://%s:%v%s',{timeout:%d},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1))" (ternary (printf "[%s]" $admin.host) $admin.host (contains ":" $admin.host)) $admin.port .path (mul (int (.probe.timeoutSeconds | default 1)) 1000) | quote }}
{{- else -}}
httpGet:
  path: {{ .path }}
  port: admin
{{- end }}
{{ toYaml .probe }}
{{- end }}

{{/* The proxy container. A native sidecar is an initContainer with restartPolicy: Always. */}}
{{- define "rds-iam-proxy.sidecar" -}}
{{- $admin := include "rds-iam-proxy.admin" . | fromYaml -}}
- name: {{ .Values.proxy.name }}
  {{- if .Values.image.digest }}
  image: "{{ .Values.image.repository }}@{{ .Values.image.digest }}"
  {{- else }}
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  {{- end }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if include "rds-iam-proxy.native" . }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/rds-iam-proxy/config.yaml"]
  {{- with .Values.proxy.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if not $admin.loopback }}
  ports:
    - name: admin
      containerPort: {{ $admin.port }}
      protocol: TCP
  {{- end }}
  startupProbe:
    {{- include "rds-iam-proxy.probe" (dict "root" . "path" "/healthz" "probe" .Values.proxy.startupProbe) | nindent 4 }}
  livenessProbe:
    {{- include "rds-iam-proxy.probe" (dict "root" . "path" "/healthz" "probe" .Values.proxy.livenessProbe) | nindent 4 }}
  readinessProbe:
    {{- include "rds-iam-proxy.probe" (dict "root" . "path" "/readyz" "probe" .Values.proxy.readinessProbe) | nindent 4 }}
  resources:
    {{- toYaml .Values.proxy.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.proxy.securityContext | nindent 4 }}
  volumeMounts:
    - name: rds-iam-proxy-config
      mountPath: /etc/rds-iam-proxy
      readOnly: true
    - name: rds-iam-proxy-run
      mountPath: {{ .Values.proxy.runDir }}
    - name: rds-iam-proxy-tmp
      mountPath: /tmp
{{- end }}

{{/* The sidecar for `initContainers:` when it runs as a native sidecar; nothing otherwise. */}}
{{- define "rds-iam-proxy.nativeSidecars" -}}
{{- if include "rds-iam-proxy.native" . }}
{{- include "rds-iam-proxy.sidecar" . }}
{{- end }}
{{- end }}

{{/* The sidecar for `containers:` when it runs as a regular container; nothing otherwise. */}}
{{- define "rds-iam-proxy.regularSidecars" -}}
{{- if not (include "rds-iam-proxy.native" .) }}
{{- include "rds-iam-proxy.sidecar" . }}
{{- end }}
{{- end }}

{{/* For the app containers: proxy.runDir read-only (the local CA, unix sockets). */}}
{{- define "rds-iam-proxy.appVolumeMounts" -}}
- name: rds-iam-proxy-run
  mountPath: {{ .Values.proxy.runDir }}
  readOnly: true
{{- end }}

{{/* Volumes: the config, runDir shared with the app, and an in-memory /tmp (read-only root filesystem). */}}
{{- define "rds-iam-proxy.volumes" -}}
- name: rds-iam-proxy-config
  configMap:
    name: {{ include "rds-iam-proxy.configMapName" . }}
- name: rds-iam-proxy-run
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.proxy.runSizeLimit }}
- name: rds-iam-proxy-tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.proxy.tmpSizeLimit }}
{{- end }}

{{/* Pod annotation that restarts pods when the proxy's config changes. */}}
{{- define "rds-iam-proxy.configChecksum" -}}
checksum/rds-iam-proxy-config: {{ toYaml .Values.proxy.config | sha256sum }}
{{- end }}
