{{/* Names, labels and the few numbers derived from values (each derived once, here). */}}

{{- define "herd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "herd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: replica, gateway or redis. */}}
{{- define "herd.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "herd.replicaName" -}}{{ include "herd.fullname" . }}-replica{{- end -}}
{{- define "herd.gatewayName" -}}{{ include "herd.fullname" . }}-gateway{{- end -}}
{{- define "herd.redisName" -}}{{ include "herd.fullname" . }}-redis{{- end -}}

{{- define "herd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herd.gatewayName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "herd.image" -}}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion .Values.image.flavour) .Values.image.tag -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}

{{/* A replica's grace period: the preStop sleep, then herd's drain, then a margin to exit. */}}
{{- define "herd.replicaGrace" -}}
{{- $r := .Values.replica -}}
{{- add (int $r.pre_stop_sleep_s) (int (ceil $r.drain_timeout)) (int $r.grace_margin_s) -}}
{{- end -}}

{{- define "herd.gatewayGrace" -}}
{{- $g := .Values.gateway -}}
{{- add (int $g.pre_stop_sleep_s) (int $g.drain_timeout) (int $g.grace_margin_s) -}}
{{- end -}}

{{/* Where the gateway finds replicas: herd gateway --discover. */}}
{{- define "herd.discoverUrl" -}}
{{- $port := int .Values.replica.port -}}
{{- if eq .Values.gateway.discovery "k8s" -}}
k8s://{{ .Release.Namespace }}/{{ include "herd.replicaName" . }}:{{ $port }}
{{- else if eq .Values.gateway.discovery "dns" -}}
dns://{{ include "herd.replicaName" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ $port }}
{{- else -}}
{{- fail (printf "gateway.discovery must be k8s or dns, not %q" .Values.gateway.discovery) -}}
{{- end -}}
{{- end -}}

{{- define "herd.redisUrl" -}}
{{- if .Values.redis.url -}}
{{ .Values.redis.url }}
{{- else -}}
redis://{{ include "herd.redisName" . }}:6379/0
{{- end -}}
{{- end -}}

{{- define "herd.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "herd.fullname" .)) .Values.gateway.apiKeys.existingSecret -}}
{{- end -}}

{{/* The one query both autoscalers use: the gateways' load per ready replica, summed over
gateways (each divides its own in-flight + queued by the same ready count). */}}
{{- define "herd.loadQuery" -}}
sum(herd_gateway_load_per_replica{namespace="{{ .Release.Namespace }}",service="{{ include "herd.gatewayName" . }}"})
{{- end -}}

{{/* HPA behavior from the autoscale windows and steps (shared by the HPA and KEDA). */}}
{{- define "herd.behavior" -}}
{{- $a := .Values.autoscale -}}
scaleUp:
  stabilizationWindowSeconds: {{ int $a.scale_up_window_s }}
  selectPolicy: Max
  policies:
    - type: Pods
      value: {{ int $a.max_scale_up_step }}
      periodSeconds: {{ int $a.decision_period_s }}
scaleDown:
  stabilizationWindowSeconds: {{ int $a.scale_down_window_s }}
  selectPolicy: Min
  policies:
    - type: Pods
      value: {{ int $a.max_scale_down_step }}
      periodSeconds: {{ int $a.decision_period_s }}
{{- end -}}

{{- define "herd.validate" -}}
{{- $a := .Values.autoscale -}}
{{- if and $a.enabled (eq $a.kind "hpa") (lt (int $a.min_replicas) 1) -}}
{{- fail "autoscale.min_replicas 0 (scale to zero) needs autoscale.kind keda" -}}
{{- end -}}
{{- if and $a.enabled (not (has $a.kind (list "hpa" "keda"))) -}}
{{- fail (printf "autoscale.kind must be hpa or keda, not %q" $a.kind) -}}
{{- end -}}
{{- if lt (int $a.max_replicas) (max 1 (int $a.min_replicas) | int) -}}
{{- fail "autoscale: need min_replicas <= max_replicas and max_replicas >= 1" -}}
{{- end -}}
{{- if le (float64 $a.target_load) 0.0 -}}
{{- fail "autoscale.target_load must be > 0" -}}
{{- end -}}
{{- if and (eq .Values.gateway.discovery "k8s") (not .Values.rbac.create) -}}
{{- fail "gateway.discovery k8s needs rbac.create (the gateway must list/watch EndpointSlices)" -}}
{{- end -}}
{{- end -}}
