{{/* The chart's name, or nameOverride. */}}
{{- define "port-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's objects' name: fullnameOverride, else release and chart name (once). */}}
{{- define "port-agent.fullname" -}}
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

{{- define "port-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "port-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "port-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "port-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* "true" when the agent runs as a CronJob (one resync per schedule) rather than a service. */}}
{{- define "port-agent.isCronJob" -}}
{{- eq .Values.workload.kind "CronJob" }}
{{- end }}

{{/* The listener the agent is given: ONCE for a CronJob, else the values' own. */}}
{{- define "port-agent.eventListener" -}}
{{- if eq (include "port-agent.isCronJob" .) "true" }}
{{- dict "type" "ONCE" | toJson }}
{{- else }}
{{- if eq (upper (toString .Values.integration.eventListener.type)) "ONCE" }}
{{- fail "integration.eventListener.type ONCE runs one resync and exits: use workload.kind CronJob for it" }}
{{- end }}
{{- .Values.integration.eventListener | toJson }}
{{- end }}
{{- end }}

{{/* An integration setting as an environment value: maps and lists as JSON, the rest as text. */}}
{{- define "port-agent.envValue" -}}
{{- if or (kindIs "map" .) (kindIs "slice" .) }}{{ toJson . }}{{ else }}{{ toString . }}{{ end }}
{{- end }}

{{/* The Secrets whose OCEAN__* keys the agent reads, one name a line. */}}
{{- define "port-agent.secretNames" -}}
{{- if .Values.secret.create }}
{{- include "port-agent.fullname" . }}
{{- else }}
{{- $names := .Values.secret.name }}
{{- if not (kindIs "slice" $names) }}{{ $names = list $names }}{{ end }}
{{- range $names }}
{{ required "secret.name must name the Secret(s) to use when secret.create is false" . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the agent's files are: the ConfigMap's files, the state's volume. */}}
{{- define "port-agent.configDir" -}}/etc/port-agent{{- end }}
{{- define "port-agent.stateDir" -}}/var/lib/port-agent{{- end }}
{{- define "port-agent.containerPort" -}}8000{{- end }}

{{/* The pod, the same for the service and for each CronJob run. */}}
{{- define "port-agent.podSpec" -}}
{{- $cron := eq (include "port-agent.isCronJob" .) "true" }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podServiceAccount.name }}
serviceAccountName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- if $cron }}
restartPolicy: Never
{{- end }}
containers:
  - name: port-agent
    image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args: [run]
    securityContext:
      {{- toYaml .Values.containerSecurityContext | nindent 6 }}
    env:
      - name: PORT_AGENT_CONFIG
        value: {{ include "port-agent.configDir" . }}/agent.yaml
      - name: PORT_AGENT_LOG_FORMAT
        value: {{ .Values.logFormat | quote }}
      - name: PORT_AGENT_LOG
        value: {{ .Values.logLevel | quote }}
      {{- with .Values.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    envFrom:
      - configMapRef:
          name: {{ include "port-agent.fullname" . }}-env
      {{- range splitList "\n" (include "port-agent.secretNames" .) }}
      {{- if . }}
      - secretRef:
          name: {{ . }}
      {{- end }}
      {{- end }}
    {{- if not $cron }}
    ports:
      - name: http
        containerPort: {{ include "port-agent.containerPort" . }}
        protocol: TCP
    {{- if .Values.livenessProbe.enabled }}
    livenessProbe:
      httpGet:
        path: /health/live
        port: http
      {{- toYaml (omit .Values.livenessProbe "enabled") | nindent 6 }}
    {{- end }}
    {{- if .Values.readinessProbe.enabled }}
    readinessProbe:
      httpGet:
        path: /health/ready
        port: http
      {{- toYaml (omit .Values.readinessProbe "enabled") | nindent 6 }}
    {{- end }}
    {{- end }}
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    volumeMounts:
      - name: state
        mountPath: {{ include "port-agent.stateDir" . }}
      - name: config
        mountPath: {{ include "port-agent.configDir" . }}
        readOnly: true
      - name: tmp
        mountPath: /tmp
      {{- with .Values.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "port-agent.fullname" . }}-files
  - name: tmp
    emptyDir: {}
  {{- if $cron }}
  - name: state
    persistentVolumeClaim:
      claimName: {{ include "port-agent.fullname" . }}-state
  {{- end }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod annotations: the values' own, and checksums so a changed config or Secret restarts it. */}}
{{- define "port-agent.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The PersistentVolumeClaim's spec for the state. */}}
{{- define "port-agent.stateClaimSpec" -}}
accessModes:
  {{- toYaml .Values.persistence.accessModes | nindent 2 }}
{{- with .Values.persistence.storageClassName }}
storageClassName: {{ . | quote }}
{{- end }}
resources:
  requests:
    storage: {{ .Values.persistence.size | quote }}
{{- end }}
