{{- define "modelpool.name" -}}{{ .Release.Name }}-modelpool{{- end -}}

{{- define "modelpool.labels" -}}
app.kubernetes.io/name: modelpool
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "modelpool.secretName" -}}
{{- if .Values.secrets.existingSecret }}{{ .Values.secrets.existingSecret }}{{ else }}{{ include "modelpool.name" . }}-secrets{{ end -}}
{{- end -}}

{{- define "modelpool.hasApiKeys" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.apiKeys }}true{{ end -}}
{{- end -}}

{{- define "modelpool.scheme" -}}
{{- if .Values.tls.secretName }}https{{ else }}http{{ end -}}
{{- end -}}
