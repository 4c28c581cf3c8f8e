{{- define "deep-recall.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "deep-recall.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "deep-recall.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deep-recall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "deep-recall.labels" -}}
{{ include "deep-recall.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "deep-recall.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "deep-recall.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "deep-recall.secretName" -}}
{{- default (printf "%s-secrets" (include "deep-recall.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "deep-recall.image" -}}
{{- $tag := .Values.image.tag | default (ternary (printf "%s-cuda" .Chart.AppVersion) .Chart.AppVersion .Values.gpu.enabled) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
