{{/*
The router's admin key: {name, key} of the Secret holding it, or {} when none is set. With API
keys on, the router's /metrics opens only to it (the router ServiceMonitor sends it).
*/}}
{{- define "vfleet.adminKeyRef" -}}
{{- $k := .Values.routerSpec.adminKey -}}
{{- if and $k (kindIs "map" $k) $k.secretName -}}
{{- dict "name" $k.secretName "key" ($k.secretKey | default "adminKey") | toJson -}}
{{- else if $k -}}
{{- fail "routerSpec.adminKey must name an existing Secret: {secretName, secretKey}" -}}
{{- else -}}
{}
{{- end -}}
{{- end }}
