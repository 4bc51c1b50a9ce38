{{/* The name of every object: the release name, plus the chart name unless it already has it. */}}
{{- define "userns-labeler.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "userns-labeler.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "userns-labeler.labels" -}}
{{ include "userns-labeler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "userns-labeler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "userns-labeler.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "userns-labeler.configMapName" -}}
{{- printf "%s-drivers" (include "userns-labeler.fullname" .) -}}
{{- end -}}

{{/* The labeler-owned ConfigMap of hostPaths a node could not idmap-mount. */}}
{{- define "userns-labeler.evidenceConfigMapName" -}}
{{- printf "%s-idmap-evidence" (include "userns-labeler.fullname" .) -}}
{{- end -}}

{{- define "userns-labeler.webhookConfigName" -}}
{{- include "userns-labeler.fullname" . -}}
{{- end -}}

{{- define "userns-labeler.certificateName" -}}
{{- printf "%s-webhook" (include "userns-labeler.fullname" .) -}}
{{- end -}}

{{/* The Secret holding the serving certificate (modes cert-manager and secret). */}}
{{- define "userns-labeler.tlsSecretName" -}}
{{- if eq .Values.tls.mode "secret" -}}
{{- required "tls.secretName is required when tls.mode is secret" .Values.tls.secretName -}}
{{- else -}}
{{- printf "%s-webhook-tls" (include "userns-labeler.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* DNS name the API server uses for the webhook Service. */}}
{{- define "userns-labeler.serviceHost" -}}
{{- printf "%s.%s.svc" (include "userns-labeler.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Self-signed mode: the Secret through which the replicas share their CA. */}}
{{- define "userns-labeler.caSecretName" -}}
{{- printf "%s-webhook-ca" (include "userns-labeler.fullname" .) -}}
{{- end -}}

{{- define "userns-labeler.optOutKey" -}}
{{- printf "%s/opt-out" .Values.labelPrefix -}}
{{- end -}}
