{{/* Names and labels shared by every template. */}}
{{- define "pg.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pg.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pg.labels" -}}
{{ include "pg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pg.secretName" -}}
{{- default (include "pg.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "pg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pg.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pg.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Whether replicas have a database: a URL in values, or declared for an existing Secret. */}}
{{- define "pg.database" -}}
{{- if or .Values.secrets.databaseUrl .Values.database.enabled -}}true{{- end -}}
{{- end -}}

{{/* The pod must outlive the shutdown: readiness off for shutdownDelaySeconds, then up to
     about 7 s to close sockets, flush and exit; 5 s of margin on top. */}}
{{- define "pg.checkTermination" -}}
{{- $need := add .Values.shutdownDelaySeconds 12 -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least shutdownDelaySeconds + 12 (%v), or Kubernetes kills replicas before their clients have moved" .Values.terminationGracePeriodSeconds $need) -}}
{{- end -}}
{{- end -}}

{{/* Two listeners cannot share a port; on one port /metrics would be public again. */}}
{{- define "pg.checkMetricsPort" -}}
{{- if eq (int .Values.metrics.port) (int .Values.service.port) -}}
{{- fail (printf "metrics.port (%v) must differ from service.port: /metrics is served on its own port so that the Ingress never reaches it" .Values.metrics.port) -}}
{{- end -}}
{{- end -}}
