{{- define "modelpool.name" -}}{{ .Release.Name }}-modelpool{{- end -}}

{{- define "modelpool.labels" -}}
app.kubernetes.io/name: modelpool
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "modelpool.secretName" -}}
{{- if .Values.secrets.existingSecret }}{{ .Values.secrets.existingSecret }}{{ else }}{{ include "modelpool.name" . }}-secrets{{ end -}}
{{- end -}}

{{- /* An existing Secret holds api-keys only when the values say so: a keys file the Secret lacks
would stop the coordinator at start. */ -}}
{{- define "modelpool.hasApiKeys" -}}
{{- if .Values.secrets.existingSecret }}{{ if .Values.secrets.existingSecretHasApiKeys }}true{{ end }}{{ else if .Values.secrets.apiKeys }}true{{ end -}}
{{- end -}}

{{- /* Where a worker pod is dialled. With TLS, a name one certificate can hold for every pod
(*.<name>-worker.<namespace>.svc.cluster.local, through the headless Service): no certificate can
name pod IPs that are only known once pods start. Without TLS, the pod's IP. */ -}}
{{- define "modelpool.workerAdvertise" -}}
{{- if .Values.tls.secretName -}}
https://$(POD_NAME).{{ include "modelpool.name" . }}-worker.$(POD_NAMESPACE).svc.cluster.local:{{ .Values.worker.port }}
{{- else -}}
http://$(POD_IP):{{ .Values.worker.port }}
{{- end -}}
{{- end -}}

{{- define "modelpool.scheme" -}}
{{- if .Values.tls.secretName }}https{{ else }}http{{ end -}}
{{- end -}}
