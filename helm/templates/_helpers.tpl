{{- define "flotilla.fullname" -}}
{{- printf "%s-controller" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flotilla.labels" -}}
app.kubernetes.io/name: flotilla-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flotilla.selector" -}}
app.kubernetes.io/name: flotilla-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "flotilla.agentName" -}}
{{- printf "%s-agent" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flotilla.agentLabels" -}}
app.kubernetes.io/name: flotilla-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flotilla.agentSelector" -}}
app.kubernetes.io/name: flotilla-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* registry/repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "flotilla.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- $repository := $image.repository -}}
{{- with $root.Values.imageRegistry }}{{ $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}{{ end -}}
{{- printf "%s:%s" $repository ($image.tag | default $root.Chart.AppVersion) -}}
{{- with $image.digest }}@{{ . }}{{ end -}}
{{- end -}}

{{- define "flotilla.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (printf "%s-flotilla" .Release.Name | trunc 63 | trimSuffix "-") -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "flotilla.keysSecret" -}}
{{- .Values.auth.keysSecret | default (printf "%s-keys" (include "flotilla.fullname" .)) -}}
{{- end -}}

{{/* The scheme the controller serves REST and gRPC with. */}}
{{- define "flotilla.scheme" -}}
{{- ternary "https" "http" (not (empty .Values.tls.existingSecret)) -}}
{{- end -}}

{{/* OTel variables shared by both processes; the argument is the service name. */}}
{{- define "flotilla.otelEnv" -}}
{{- $root := index . 0 -}}
- name: OTEL_SERVICE_NAME
  value: {{ index . 1 | quote }}
{{- with $root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $root.Values.otel.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $root.Values.otel.samplerRatio | quote }}
{{- end }}
{{- end -}}

{{/* Refusals of combinations that would render but not work. */}}
{{- define "flotilla.validate" -}}
{{- if and (hasPrefix "file://" .Values.objectStore.url) (gt (int .Values.replicaCount) 1) -}}
{{- fail "objectStore.url is file://: each replica would keep its own blobs on its own emptyDir; use an s3:// store with replicaCount > 1" -}}
{{- end -}}
{{- if and .Values.agent.enabled (gt (int .Values.agent.gpus) 0) (empty .Values.agent.gpuResource) -}}
{{- fail "agent.gpus needs agent.gpuResource: the extended resource (e.g. nvidia.com/gpu) by which the device plugin hands a GPU device to the pod" -}}
{{- end -}}
{{- if and .Values.agent.enabled (not (empty .Values.agent.gpuResource)) (not (contains "/" .Values.agent.gpuResource)) -}}
{{- fail "agent.gpuResource must be an extended resource name such as nvidia.com/gpu" -}}
{{- end -}}
{{- end -}}
