{{/* Names and labels, as `helm create` makes them. */}}
{{- define "api-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "api-router.fullname" -}}
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

{{- define "api-router.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "api-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "api-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "api-router.labels" -}}
helm.sh/chart: {{ include "api-router.chart" . }}
{{ include "api-router.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "api-router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "api-router.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "api-router.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The chart's own Secret exists when it has to hold a value that no existing Secret holds. */}}
{{- define "api-router.ownSecret" -}}
{{- if or (and .Values.apiKey.value (not .Values.apiKey.existingSecret)) (and .Values.redis.url (not .Values.redis.existingSecret)) -}}
true
{{- end }}
{{- end }}

{{/* Seconds Kubernetes waits after the preStop hook started before SIGKILL: the preStop
     sleep, the drain time of the streams, and a margin for the process to exit. */}}
{{- define "api-router.terminationGrace" -}}
{{- add .Values.router.preStopSleepSeconds .Values.router.drainSeconds 10 }}
{{- end }}
