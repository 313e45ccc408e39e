{{- define "cadml.name" -}}cadml{{- end -}}
{{- define "cadml.fullname" -}}
{{- if contains "cadml" .Release.Name -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-cadml" .Release.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- define "cadml.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "cadml.labels" -}}
app.kubernetes.io/name: cadml
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cadml
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "cadml.operatorSelector" -}}
app.kubernetes.io/name: cadml
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
{{- define "cadml.storeEnv" -}}
- name: CADML_STORE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.existingSecret }}
      key: {{ .Values.store.urlKey }}
{{- end -}}
{{- define "cadml.indexBuildPod" -}}
restartPolicy: Never
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  fsGroup: {{ .Values.securityContext.runAsGroup }}
  seccompProfile: {type: RuntimeDefault}
volumes:
  - {name: tmp, emptyDir: {}}
  - name: data
    persistentVolumeClaim: {claimName: {{ .Values.indexBuild.volume.claimName }}}
{{- end -}}
{{- define "cadml.indexBuildContainer" -}}
env:
  - {name: HOME, value: /tmp}
  {{- if .shard }}
  - name: INDEX_FAILURES  # this index's failed attempts so far (the Job controller counts)
    valueFrom:
      fieldRef:
        fieldPath: "metadata.annotations['batch.kubernetes.io/job-index-failure-count']"
  {{- end }}
securityContext: {{- toYaml .root.Values.securityContext | nindent 2 }}
volumeMounts:
  - {name: tmp, mountPath: /tmp}
  - {name: data, mountPath: {{ .root.Values.indexBuild.volume.mountPath }}}
{{- end -}}
