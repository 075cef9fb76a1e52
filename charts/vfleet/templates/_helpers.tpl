{{/*
Names and labels. Object names follow vllm-stack's (<release>-router-service,
<release>-<model>-storage-claim, ...) so port-forwards, scripts and existing PVCs keep working
after a migration.
*/}}

{{- define "vfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "vfleet.labels" -}}
helm.sh/chart: {{ include "vfleet.chart" . }}
app.kubernetes.io/name: vfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vfleet
{{- end }}

{{- define "vfleet.routerSelector" -}}
app.kubernetes.io/name: vfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end }}

{{- define "vfleet.routerLabels" -}}
{{ include "vfleet.labels" . }}
app.kubernetes.io/component: router
{{- with .Values.routerSpec.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The label selector the router's discovery uses: every serving engine pod of the release. */}}
{{- define "vfleet.engineDiscoverySelector" -}}
app.kubernetes.io/name=vfleet,app.kubernetes.io/instance={{ .Release.Name }},app.kubernetes.io/component=engine
{{- end }}

{{- /* the router pods, as each router finds its peers (their demand adds up for KEDA) */}}
{{- define "vfleet.routerPeerSelector" -}}
app.kubernetes.io/name=vfleet,app.kubernetes.io/instance={{ .Release.Name }},app.kubernetes.io/component=router
{{- end }}

{{- /*
"true" when the router serves KEDA's external scaler (routerSpec.kedaPort) and at least one
model's autoscaling goes through it: provider keda, not vllm-stack's own modelSpec[].keda.
*/}}
{{- define "vfleet.scalerUsed" -}}
{{- $A := .Values.servingEngineSpec.autoscaling | default dict -}}
{{- $used := false -}}
{{- if and .Values.routerSpec.enableRouter .Values.servingEngineSpec.enableEngine (gt (int64 (.Values.routerSpec.kedaPort | default 0)) 0) -}}
{{- range $m := (.Values.servingEngineSpec.modelSpec | default list) -}}
{{- if and (ne $m.enabled false) (not ($m.keda | default dict).enabled) -}}
{{- $p := include "vfleet.model" (dict "root" $ "m" $m) | fromJson -}}
{{- if and $p.auto (eq (toString (($m.autoscaling).provider | default $A.provider | default "keda")) "keda") -}}{{- $used = true -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- ternary "true" "" $used -}}
{{- end }}

{{- /*
HPA behavior from Knative-style settings of modelSpec[].autoscaling, as JSON ({} for none):
scale-down waits max(stableWindowS, scaleDownDelayS) (HPA takes the highest recommendation of
that window, as Knative's stable window and scale-down delay do); maxScaleUpRate and
maxScaleDownRate bound one 15 s HPA period, the HPA's sync period.
*/}}
{{- define "vfleet.hpaBehavior" -}}
{{- $a := . | default dict -}}
{{- $b := dict -}}
{{- $down := dict -}}
{{- $up := dict -}}
{{- $wait := 0.0 -}}
{{- range $k := list "stableWindowS" "scaleDownDelayS" -}}
{{- $v := get $a $k -}}
{{- if not (kindIs "invalid" $v) -}}{{- $wait = maxf $wait (float64 $v) -}}{{- end -}}
{{- end -}}
{{- if or (hasKey $a "stableWindowS") (hasKey $a "scaleDownDelayS") -}}
{{- $_ := set $down "stabilizationWindowSeconds" (min 3600 (int64 (ceil $wait))) -}}
{{- end -}}
{{- with $a.maxScaleDownRate -}}
{{- $pct := max 1 (min 100 (int64 (round (mulf 100 (subf 1 (divf 1 (float64 .)))) 0))) -}}
{{- $_ := set $down "policies" (list (dict "type" "Percent" "value" $pct "periodSeconds" 15)) -}}
{{- end -}}
{{- with $a.maxScaleUpRate -}}
{{- $pct := max 1 (int64 (round (mulf 100 (subf (float64 .) 1)) 0)) -}}
{{- $_ := set $up "policies" (list (dict "type" "Percent" "value" $pct "periodSeconds" 15)) -}}
{{- end -}}
{{- if $down -}}{{- $_ := set $b "scaleDown" $down -}}{{- end -}}
{{- if $up -}}{{- $_ := set $b "scaleUp" $up -}}{{- end -}}
{{- toJson $b -}}
{{- end }}

{{/*
An image's repository with global.imageRegistry (or the image's own registry) in front: a
registry already written in the repository (its first part has a '.' or ':', or is localhost)
is replaced, so one setting points every image at a mirror. Called with (list $root REPO REGISTRY).
*/}}
{{- define "vfleet.withRegistry" -}}
{{- $root := index . 0 -}}{{- $repo := toString (index . 1) -}}
{{- $reg := index . 2 | default ($root.Values.global | default dict).imageRegistry | default "" | trimSuffix "/" -}}
{{- if $reg -}}
{{- $parts := splitList "/" $repo -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $repo = rest $parts | join "/" -}}
{{- end -}}
{{- $repo = printf "%s/%s" $reg $repo -}}
{{- end -}}
{{- $repo -}}
{{- end }}

{{/*
The vfleet image of one component: its own {registry, repository, tag} over routerSpec.image's
(the one place the vfleet image is set), the tag defaulting to the chart's appVersion.
Called with (list $root OVERRIDES).
*/}}
{{- define "vfleet.vfleetImage" -}}
{{- $root := index . 0 -}}
{{- $own := index . 1 | default dict -}}
{{- $base := $root.Values.routerSpec.image | default dict -}}
{{- $repo := $own.repository | default $base.repository | default "ghcr.io/vfleet/vfleet" -}}
{{- $tag := toString ($own.tag | default $base.tag | default $root.Chart.AppVersion) -}}
{{- $reg := $own.registry | default $base.registry | default "" -}}
{{- printf "%s:%s" (include "vfleet.withRegistry" (list $root $repo $reg)) $tag -}}
{{- end }}

{{- define "vfleet.routerImage" -}}
{{- include "vfleet.vfleetImage" (list . dict) -}}
{{- end }}

{{- define "vfleet.downloadImage" -}}
{{- include "vfleet.vfleetImage" (list . ((.Values.servingEngineSpec.download | default dict).image)) -}}
{{- end }}

{{- define "vfleet.testImage" -}}
{{- include "vfleet.vfleetImage" (list . ((.Values.tests | default dict).image)) -}}
{{- end }}

{{/*
The imagePullSecrets of a pod, as a JSON list of {name}: global.imagePullSecrets (every pod),
then the component's own (a list, or one name as a model's imagePullSecret is), each name once
and in that order. Entries are names or {name} maps, the Kubernetes form.
Called with (list $root OWN).
*/}}
{{- define "vfleet.pullSecrets" -}}
{{- $root := index . 0 -}}{{- $own := index . 1 -}}
{{- if kindIs "string" $own -}}{{- $own = list $own -}}{{- end -}}
{{- $all := concat (($root.Values.global | default dict).imagePullSecrets | default list) ($own | default list) -}}
{{- $names := list -}}
{{- range $all -}}
{{- $n := . -}}
{{- if kindIs "map" . -}}{{- $n = .name | default "" -}}{{- end -}}
{{- $n = toString $n -}}
{{- if and $n (not (has $n $names)) -}}{{- $names = append $names $n -}}{{- end -}}
{{- end -}}
{{- $out := list -}}
{{- range $names -}}{{- $out = append $out (dict "name" .) -}}{{- end -}}
{{- toJson $out -}}
{{- end }}

{{- define "vfleet.routerServiceAccount" -}}
{{- .Values.routerSpec.serviceAccountName | default (printf "%s-router-service-account" .Release.Name) -}}
{{- end }}

{{/* The Secret holding the client API key: {name, key}, or {} when there is none. */}}
{{- define "vfleet.apiKeyRef" -}}
{{- $k := .Values.servingEngineSpec.vllmApiKey -}}
{{- if and $k (kindIs "string" $k) -}}
{{- dict "name" (printf "%s-secrets" .Release.Name) "key" "vllmApiKey" | toJson -}}
{{- else if and $k (kindIs "map" $k) $k.secretName $k.secretKey -}}
{{- dict "name" $k.secretName "key" $k.secretKey | toJson -}}
{{- else -}}
{}
{{- end -}}
{{- end }}

{{/* Kubernetes env entries; values become strings, as a container environment only holds strings. */}}
{{- define "vfleet.env" -}}
{{- $out := list -}}
{{- range . -}}
{{- if hasKey . "valueFrom" -}}
{{- $out = append $out (dict "name" (toString .name) "valueFrom" .valueFrom) -}}
{{- else -}}
{{- $v := .value -}}
{{- $out = append $out (dict "name" (toString .name) "value" (ternary "" (include "vfleet.scalar" $v) (kindIs "invalid" $v))) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end }}

{{/* A number or string as text: integers without a decimal point or exponent. */}}
{{- define "vfleet.scalar" -}}
{{- if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 .) (float64 (int64 .)) -}}{{ int64 . }}{{- else -}}{{ toString . }}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end }}

{{/* A probe from vllm-stack-style settings. */}}
{{- define "vfleet.probe" -}}
initialDelaySeconds: {{ .initialDelaySeconds | default 15 | int64 }}
periodSeconds: {{ .periodSeconds | default 10 | int64 }}
failureThreshold: {{ .failureThreshold | default 3 | int64 }}
{{- with .timeoutSeconds }}
timeoutSeconds: {{ . | int64 }}
{{- end }}
{{- if .exec }}
exec:
  {{- toYaml .exec | nindent 2 }}
{{- else if .tcpSocket }}
tcpSocket:
  {{- toYaml .tcpSocket | nindent 2 }}
{{- else }}
{{- $get := .httpGet | default dict }}
httpGet:
  path: {{ $get.path | default "/health" }}
  port: {{ $get.port | default "http" }}
  {{- with $get.httpHeaders }}
  httpHeaders:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
