{{/*
Names, labels, images and addresses shared by the templates. Resource names are cut to 63
characters (the DNS label limit) minus room for the component suffixes.
*/}}

{{- define "offpeak.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "offpeak.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "offpeak.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource; call with (dict "ctx" $ "component" "scheduler"). */}}
{{- define "offpeak.labels" -}}
helm.sh/chart: {{ include "offpeak.chart" .ctx }}
{{ include "offpeak.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: offpeak
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; call with (dict "ctx" $ "component" "scheduler"). */}}
{{- define "offpeak.selectorLabels" -}}
app.kubernetes.io/name: {{ include "offpeak.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Component resource names. */}}
{{- define "offpeak.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "offpeak.fullname" .) }}
{{- end }}
{{- define "offpeak.agent.fullname" -}}
{{- printf "%s-agent" (include "offpeak.fullname" .) }}
{{- end }}
{{- define "offpeak.operator.fullname" -}}
{{- printf "%s-operator" (include "offpeak.fullname" .) }}
{{- end }}

{{/* ServiceAccount names: the created one, or the one named, or "default". */}}
{{- define "offpeak.serviceAccountName" -}}
{{- $sa := index .ctx.Values .component "serviceAccount" }}
{{- if $sa.create }}
{{- default (printf "%s-%s" (include "offpeak.fullname" .ctx) .component) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/* A component's image, its overrides over the top-level image; call with
(dict "ctx" $ "component" "scheduler"). Empty overrides inherit. */}}
{{- define "offpeak.imageValues" -}}
{{- toYaml (merge (deepCopy (index .ctx.Values .component "image")) (deepCopy .ctx.Values.image)) }}
{{- end }}

{{- define "offpeak.image" -}}
{{- $image := include "offpeak.imageValues" . | fromYaml }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .ctx.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "offpeak.imagePullPolicy" -}}
{{- (include "offpeak.imageValues" . | fromYaml).pullPolicy }}
{{- end }}

{{/* The scheduler's gRPC address for agents and the operator. */}}
{{- define "offpeak.schedulerAddress" -}}
{{- if .Values.scheduler.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "offpeak.scheduler.fullname" .) .Release.Namespace (int .Values.scheduler.grpcPort) }}
{{- else if .Values.externalSchedulerAddress }}
{{- .Values.externalSchedulerAddress }}
{{- else }}
{{- fail "scheduler.enabled is false: set externalSchedulerAddress to the gRPC address (http://host:port) of the scheduler the agents and the operator should use" }}
{{- end }}
{{- end }}

{{/* Name of the Secret with the PostgreSQL URL. */}}
{{- define "offpeak.postgresSecretName" -}}
{{- $pg := .Values.scheduler.database.postgres }}
{{- if $pg.existingSecret }}
{{- $pg.existingSecret }}
{{- else if $pg.url }}
{{- printf "%s-database" (include "offpeak.scheduler.fullname" .) }}
{{- else }}
{{- fail "scheduler.database.type is postgres: set scheduler.database.postgres.existingSecret (a Secret holding the URL) or scheduler.database.postgres.url" }}
{{- end }}
{{- end }}

{{/* Name of the Secret with the provider API keys, empty when there is none. */}}
{{- define "offpeak.apiKeysSecretName" -}}
{{- $k := .Values.scheduler.apiKeys }}
{{- if $k.existingSecret }}
{{- $k.existingSecret }}
{{- else if $k.keys }}
{{- printf "%s-api-keys" (include "offpeak.scheduler.fullname" .) }}
{{- end }}
{{- end }}

{{/* A zone name as a DNS label: lower case, runs of other characters turned into "-". */}}
{{- define "offpeak.zoneSlug" -}}
{{- regexReplaceAll "[^a-z0-9]+" (lower .) "-" | trimAll "-" | trunc 20 | trimSuffix "-" }}
{{- end }}

{{/*
Container security context shared by the scheduler and the operator: an unprivileged user, no
capabilities, no privilege escalation, a read-only root file system.
*/}}
{{- define "offpeak.restrictedContainerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "offpeak.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}
