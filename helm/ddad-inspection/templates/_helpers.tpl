{{/* Names, labels, images, the shared environment and the topic definitions of every component. */}}

{{- define "ddad.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ddad.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "worker") */}}
{{- define "ddad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ddad.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ddad.labels" -}}
{{ include "ddad.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ddad-inspection
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ddad.serviceAccountName" -}}
{{- default (include "ddad.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* An image reference: repository:tag, or repository:tag@digest when a digest is pinned. */}}
{{- define "ddad.image" -}}
{{- if .digest -}}
{{- printf "%s:%s@%s" .repository .tag .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* The topic definitions: files/topics.yaml (= services/contracts/topics.yaml) with the values' changes, as YAML. */}}
{{- define "ddad.topics" -}}
{{- $defs := .Files.Get "files/topics.yaml" | fromYaml -}}
{{- if not $defs.topics -}}
{{- fail "files/topics.yaml is missing or empty (it links to services/contracts/topics.yaml)" -}}
{{- end -}}
{{- if not (kindIs "invalid" .Values.topics.replicas) -}}
{{- $_ := set $defs "replicas" .Values.topics.replicas -}}
{{- end -}}
{{- if not (kindIs "invalid" .Values.topics.minInsyncReplicas) -}}
{{- $_ := set $defs "minInsyncReplicas" .Values.topics.minInsyncReplicas -}}
{{- end -}}
{{- range $name, $change := .Values.topics.overrides -}}
{{- if not (hasKey $defs.topics $name) -}}
{{- fail (printf "topics.overrides.%s: no such topic in files/topics.yaml (topics: %s)" $name (keys $defs.topics | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $_ := set $defs.topics $name (mergeOverwrite (index $defs.topics $name) (deepCopy $change)) -}}
{{- end -}}
{{- toYaml $defs -}}
{{- end -}}

{{/* Partitions of `frames`: the ceiling of worker pods (a consumer beyond it would sit idle). */}}
{{- define "ddad.framesPartitions" -}}
{{- $defs := include "ddad.topics" . | fromYaml -}}
{{- int $defs.topics.frames.partitions -}}
{{- end -}}

{{- define "ddad.topicName" -}}
{{- if .root.Values.topicPrefix -}}{{ printf "%s.%s" .root.Values.topicPrefix .topic }}{{- else -}}{{ .topic }}{{- end -}}
{{- end -}}

{{/*
The settings every service shares, as env entries: (dict "root" $ "prefix" "WORKER_").
Secrets only through secretKeyRef (the services merge <PREFIX>_REDIS_PASSWORD into the Redis URL themselves), so
no password is ever a literal in the pod spec.
*/}}
{{- define "ddad.commonEnv" -}}
{{- $v := .root.Values -}}
{{- $p := .prefix -}}
- name: {{ $p }}KAFKA_BOOTSTRAP_SERVERS
  value: {{ $v.kafka.bootstrapServers | quote }}
- name: {{ $p }}KAFKA_SECURITY_PROTOCOL
  value: {{ $v.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol }}
{{- if not $v.kafka.sasl.existingSecret }}
{{- fail (printf "kafka.sasl.existingSecret is required with kafka.securityProtocol %s" $v.kafka.securityProtocol) }}
{{- end }}
- name: {{ $p }}KAFKA_SASL_MECHANISM
  value: {{ $v.kafka.sasl.mechanism | quote }}
- name: {{ $p }}KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $v.kafka.sasl.existingSecret }}
      key: {{ $v.kafka.sasl.usernameKey }}
- name: {{ $p }}KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.kafka.sasl.existingSecret }}
      key: {{ $v.kafka.sasl.passwordKey }}
{{- end }}
{{- if $v.kafka.tls.caSecret }}
- name: {{ $p }}KAFKA_SSL_CAFILE
  value: /etc/inspection/kafka-ca/{{ $v.kafka.tls.caKey }}
{{- end }}
- name: {{ $p }}TOPIC_PREFIX
  value: {{ $v.topicPrefix | quote }}
{{- if not .noRedis }}
{{- if $v.redis.urlSecret }}
- name: {{ $p }}REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.urlSecret }}
      key: {{ $v.redis.urlSecretKey }}
{{- else }}
- name: {{ $p }}REDIS_URL
  value: {{ $v.redis.url | quote }}
{{- if $v.redis.auth.username }}
- name: {{ $p }}REDIS_USERNAME
  value: {{ $v.redis.auth.username | quote }}
{{- end }}
{{- if $v.redis.auth.existingSecret }}
- name: {{ $p }}REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.auth.existingSecret }}
      key: {{ $v.redis.auth.passwordKey }}
{{- end }}
{{- end }}
{{- end }}
{{- if not .noObjectStore }}
- name: {{ $p }}OBJECT_STORE_URL
  value: {{ $v.objectStore.url | quote }}
{{- include "ddad.s3Env" (dict "root" .root "prefix" $p) }}
{{- end }}
- name: {{ $p }}LOG_LEVEL
  value: {{ $v.logLevel | quote }}
- name: {{ $p }}HTTP_PORT
  value: "8080"
{{- end -}}

{{/* S3 endpoint and credentials: (dict "root" $ "prefix" "WORKER_") */}}
{{- define "ddad.s3Env" -}}
{{- $v := .root.Values }}
{{- if $v.objectStore.s3.endpointUrl }}
- name: {{ .prefix }}S3_ENDPOINT_URL
  value: {{ $v.objectStore.s3.endpointUrl | quote }}
{{- end }}
- name: {{ .prefix }}S3_REGION
  value: {{ $v.objectStore.s3.region | quote }}
{{- if $v.objectStore.s3.credentialsSecret }}
- name: {{ .prefix }}S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $v.objectStore.s3.credentialsSecret }}
      key: {{ $v.objectStore.s3.accessKeyIdKey }}
- name: {{ .prefix }}S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.objectStore.s3.credentialsSecret }}
      key: {{ $v.objectStore.s3.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/* Extra env of a component, as entries: (dict "env" .Values.worker.env) */}}
{{- define "ddad.extraEnv" -}}
{{- range $name, $value := .env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* The Kafka CA volume and its mount (only with kafka.tls.caSecret). */}}
{{- define "ddad.kafkaCaVolume" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: {{ .Values.kafka.tls.caKey }}
{{- end }}
{{- end -}}

{{- define "ddad.kafkaCaMount" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/inspection/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Health probes of a service on its http port: (dict "startup" true "period" 10 "failures" 60) */}}
{{- define "ddad.httpProbes" -}}
startupProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: {{ .startupPeriod | default 5 }}
  failureThreshold: {{ .startupFailures | default 24 }}
  timeoutSeconds: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: {{ .readinessPeriod | default 10 }}
  failureThreshold: 3
  timeoutSeconds: 3
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: {{ .livenessPeriod | default 20 }}
  failureThreshold: {{ .livenessFailures | default 3 }}
  timeoutSeconds: 5
{{- end -}}

{{/* Pod-level fields shared by every Deployment: (dict "root" $ "c" .Values.worker) */}}
{{- define "ddad.podCommon" -}}
{{- if not .noServiceAccount }}
serviceAccountName: {{ include "ddad.serviceAccountName" .root }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
