{{/* Name of the chart, overridable. */}}
{{- define "hexarch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name. */}}
{{- define "hexarch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "hexarch.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "hexarch.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Standard labels (app.kubernetes.io/*) on every object. */}}
{{- define "hexarch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "hexarch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hexarch
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "injector"). */}}
{{- define "hexarch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hexarch.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hexarch.injectorImage" -}}
{{- printf "%s:%s" .Values.injector.image.repository (default .Chart.AppVersion .Values.injector.image.tag) }}
{{- end }}

{{- define "hexarch.sidecarImage" -}}
{{- $repo := default .Values.injector.image.repository .Values.sidecar.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.injector.image.tag) .Values.sidecar.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{- define "hexarch.policyConfigMap" -}}
{{- default (printf "%s-policy" (include "hexarch.fullname" .)) .Values.policy.configMapName }}
{{- end }}

{{- define "hexarch.injectorService" -}}
{{- printf "%s-injector" (include "hexarch.fullname" .) }}
{{- end }}

{{/* The Redis URL injected sidecars use, from redis.mode. */}}
{{- define "hexarch.redisUrl" -}}
{{- if and (ne .Values.redis.mode "standalone") .Values.redis.urlSecret.name }}
{{- printf "from Secret %s, key %s" .Values.redis.urlSecret.name .Values.redis.urlSecret.key }}
{{- else if eq .Values.redis.mode "external" }}
{{- required "redis.externalUrl is required when redis.mode is external" .Values.redis.externalUrl }}
{{- else if eq .Values.redis.mode "cluster" }}
{{- required "redis.clusterUrl is required when redis.mode is cluster" .Values.redis.clusterUrl }}
{{- else }}
{{- printf "redis://%s-redis.%s.svc:6379/0" (include "hexarch.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* "true" when cert-manager issues the injector's certificate. */}}
{{- define "hexarch.certManager" -}}
{{- $src := .Values.injector.tls.source }}
{{- if or (eq $src "certManager") (and (eq $src "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1")) }}true{{ end }}
{{- end }}

{{/* "true" when Prometheus operator objects are rendered. */}}
{{- define "hexarch.monitoring" -}}
{{- $m := .Values.monitoring.enabled }}
{{- if or (eq (toString $m) "true") (and (eq (toString $m) "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}true{{ end }}
{{- end }}

{{/* "true" when injected containers are native sidecars. */}}
{{- define "hexarch.nativeSidecars" -}}
{{- $n := .Values.injector.nativeSidecars }}
{{- if or (eq (toString $n) "true") (and (eq (toString $n) "auto") (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) }}true{{ end }}
{{- end }}

{{- define "hexarch.podSecurity" -}}
securityContext:
  {{- toYaml .Values.injector.podSecurityContext | nindent 2 }}
{{- end }}
