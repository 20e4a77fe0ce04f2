{{/* Labels of every object; selectorLabels (name + component) are the Deployments' and Services' selectors. */}}
{{- define "docent.labels" -}}
app.kubernetes.io/name: docent
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: docent
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "docent.selectorLabels" -}}
app.kubernetes.io/name: docent
app.kubernetes.io/component: {{ . }}
{{- end }}

{{- define "docent.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "docent.secretName" -}}
{{ .Values.existingSecret | default "docent-secrets" }}
{{- end }}

{{/* The gRPC client targets: every ready pod behind the headless Service, balanced round-robin. */}}
{{- define "docent.configData" -}}
DOCENT_BIND_HOST: "0.0.0.0"
DOCENT_DATA_DIR: /var/lib/docent
DOCENT_GATEWAY_PORT: {{ .Values.ports.gateway | quote }}
DOCENT_INGEST_PORT: {{ .Values.ports.ingest | quote }}
DOCENT_RETRIEVAL_PORT: {{ .Values.ports.retrieval | quote }}
DOCENT_CHAT_PORT: {{ .Values.ports.chat | quote }}
DOCENT_INGEST_METRICS_PORT: {{ .Values.ports.metrics.ingest | quote }}
DOCENT_RETRIEVAL_METRICS_PORT: {{ .Values.ports.metrics.retrieval | quote }}
DOCENT_CHAT_METRICS_PORT: {{ .Values.ports.metrics.chat | quote }}
DOCENT_WORKER_METRICS_PORT: {{ .Values.ports.metrics.worker | quote }}
DOCENT_INGEST_TARGET: {{ printf "dns:///ingest-headless:%v" .Values.ports.ingest | quote }}
DOCENT_RETRIEVAL_TARGET: {{ printf "dns:///retrieval-headless:%v" .Values.ports.retrieval | quote }}
DOCENT_CHAT_TARGET: {{ printf "dns:///chat-headless:%v" .Values.ports.chat | quote }}
DOCENT_MAX_UPLOAD_BYTES: {{ .Values.maxUploadBytes | int64 | toString | quote }}
DOCENT_WORKER_SWEEPER: "true"
{{- $managed := list "DOCENT_BIND_HOST" "DOCENT_DATA_DIR" "DOCENT_MAX_UPLOAD_BYTES" "DOCENT_WORKER_SWEEPER" }}
{{- $secret := list "DOCENT_JWT_SECRET" "DOCENT_WEBHOOK_SECRET" "DOCENT_DATABASE_URL" "DOCENT_REDIS_URL" "DOCENT_QDRANT_URL" }}
{{- range $name, $value := .Values.config }}
{{- if or (has $name $managed) (hasSuffix "_PORT" $name) (hasSuffix "_TARGET" $name) }}
{{- fail (printf "config.%s is set by the chart: use ports.* / maxUploadBytes" $name) }}
{{- end }}
{{- if or (has $name $secret) (hasSuffix "_API_KEY" $name) }}
{{- fail (printf "config.%s is a secret: put it in the Secret (existingSecret or secret.*), not the ConfigMap" $name) }}
{{- end }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.tracing }}
{{- if .endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .endpoint | quote }}
{{- with .protocol }}
OTEL_EXPORTER_OTLP_PROTOCOL: {{ . | quote }}
{{- end }}
{{- with .sampler }}
OTEL_TRACES_SAMPLER: {{ . | quote }}
{{- end }}
{{- if ne (toString .samplerArg) "" }}
OTEL_TRACES_SAMPLER_ARG: {{ .samplerArg | toString | quote }}
{{- end }}
{{- with .resourceAttributes }}
OTEL_RESOURCE_ATTRIBUTES: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Restart the pods when the configuration changes. */}}
{{- define "docent.podAnnotations" -}}
checksum/config: {{ include "docent.configData" .root | sha256sum }}
{{- if .metricsPort }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .metricsPort | quote }}
{{- if .metricsPath }}
prometheus.io/path: {{ .metricsPath }}
{{- end }}
{{- end }}
{{- end }}

{{- define "docent.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "docent.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{- define "docent.envFrom" -}}
- configMapRef:
    name: {{ .configMap }}
- secretRef:
    name: {{ include "docent.secretName" .root }}
{{- end }}

{{- define "docent.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/docent
{{- end }}

{{- define "docent.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi  # temp files (the gateway spools multipart uploads here)
# DOCENT_DATA_DIR: nothing durable lands here when the Secret sets DOCENT_JWT_SECRET and the URLs
- name: data
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "docent.podCommon" -}}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "docent.podSecurityContext" . | nindent 2 }}
{{- end }}

{{- define "docent.spread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "docent.selectorLabels" . | nindent 8 }}
{{- end }}

{{/* An Ingress (or NetworkPolicy...) body size for nginx: DOCENT_MAX_UPLOAD_BYTES + 1 MiB, in KiB. */}}
{{- define "docent.proxyBodySize" -}}
{{ add (div (int64 .Values.maxUploadBytes) 1024) 1024 }}k
{{- end }}
