{{- define "cedana.helperArgs" -}}
{{- if not (kindIs "invalid" .Values.checkpointRepository) }}
- --checkpoint-repository
- {{ .Values.checkpointRepository | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.compression) }}
- --compression
- {{ .Values.compression | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.maxCheckpointsPerContainer) }}
- --max-checkpoints-per-container
- {{ .Values.maxCheckpointsPerContainer | int64 | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.maxTotalBytes) }}
- --max-total-bytes
- {{ .Values.maxTotalBytes | int64 | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.maxOperations) }}
- --max-operations
- {{ .Values.maxOperations | int64 | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.maxOperationsPerNamespace) }}
- --max-operations-per-namespace
- {{ .Values.maxOperationsPerNamespace | int64 | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.maxCheckpointDirBytes) }}
- --max-checkpoint-dir-bytes
- {{ .Values.maxCheckpointDirBytes | int64 | toString | quote }}
{{- end }}
{{- range .Values.registryPrefixes }}
- --registry-prefix
- {{ . | toString | quote }}
{{- end }}
{{- end }}
