{{/*
The engine pod template. Input: dict root, m (modelSpec entry), p (its plan from vfleet.model),
role: single (a Deployment's pod), leader or worker (a LeaderWorkerSet's).
Serving pods carry what the router's discovery reads: the app.kubernetes.io/component=engine
label, the vfleet.io/models annotation (served names, comma-separated) and a container port
named http (also in vfleet.io/port); an engine that publishes KV-cache events, their port in
vfleet.io/kv-events-port and container ports named kv-events and kv-replay (100 above); one of
N data-parallel ranks (N > 1) also vfleet.io/kv-events-ranks: N and, for rank r = 1..N-1, the
ports kv-events-r and kv-replay-r (each + r: vLLM offsets a rank's sockets so). LeaderWorkerSet workers are
labelled engine-worker, so the router never sends them requests.
*/}}
{{- define "vfleet.enginePod" -}}
{{- $root := .root -}}{{- $m := .m -}}{{- $p := .p -}}{{- $role := .role -}}
{{- $E := $root.Values.servingEngineSpec -}}
{{- $dl := deepCopy ($E.download | default dict) -}}
{{- range $k, $v := ($m.download | default dict) -}}{{- $_ := set $dl $k $v -}}{{- end -}}
{{- $serving := ne $role "worker" -}}
{{- $hasVolume := or $p.claim $p.emptyDir -}}
{{- /* the engine container's securityContext: servingEngineSpec's, a model's keys winning */ -}}
{{- $csc := deepCopy ($E.containerSecurityContext | default dict) -}}
{{- range $k, $v := ($m.containerSecurityContext | default dict) -}}{{- $_ := set $csc $k $v -}}{{- end -}}
{{- /* a read-only root filesystem: /tmp is an emptyDir, and HOME and the caches live there */ -}}
{{- $scratch := $csc.readOnlyRootFilesystem | default false -}}
metadata:
  labels:
    {{- include "vfleet.engineLabels" (dict "root" $root "p" $p "m" $m "pod" true "component" (ternary "engine" "engine-worker" $serving)) | nindent 4 }}
  annotations:
    {{- if and $serving $p.annotateModels }}
    vfleet.io/models: {{ join "," $p.models | quote }}
    {{- end }}
    vfleet.io/port: {{ $p.port | quote }}
    {{- if and $serving $p.kvEventsPort }}
    vfleet.io/kv-events-port: {{ $p.kvEventsPort | quote }}
    {{- if gt (int $p.kvRanks) 1 }}
    vfleet.io/kv-events-ranks: {{ $p.kvRanks | quote }}
    {{- end }}
    {{- end }}
    {{- with $m.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with $m.priorityClassName }}
  priorityClassName: {{ . | quote }}
  {{- end }}
  {{- with $m.serviceAccountName }}
  serviceAccountName: {{ . | quote }}
  {{- end }}
  {{- $sc := deepCopy ($E.securityContext | default dict) }}
  {{- if and (eq $p.mode "init") $p.claim (not (hasKey $sc "fsGroup")) ($dl.securityContext | default dict).fsGroup }}
  {{- $_ := set $sc "fsGroup" $dl.securityContext.fsGroup }}
  {{- end }}
  {{- with $sc }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $rc := ternary $m.runtimeClassName $E.runtimeClassName (hasKey $m "runtimeClassName") }}
  {{- with $rc }}
  runtimeClassName: {{ . | quote }}
  {{- end }}
  {{- with $E.schedulerName }}
  schedulerName: {{ . | quote }}
  {{- end }}
  {{- with $m.nodeName }}
  nodeName: {{ . | quote }}
  {{- end }}
  {{- with $m.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $m.affinity }}
  affinity:
    {{- toYaml $m.affinity | nindent 4 }}
  {{- else if and $m.nodeSelectorTerms (not $m.nodeName) }}
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          {{- toYaml $m.nodeSelectorTerms | nindent 10 }}
  {{- end }}
  {{- $tol := $E.tolerations | default list }}
  {{- if $m.tolerations }}
  {{- $tol = ternary $m.tolerations (concat $tol $m.tolerations) (eq (toString $m.tolerationsPolicy) "override") }}
  {{- end }}
  {{- with $tol }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "vfleet.pullSecrets" (list $root $m.imagePullSecret) | fromJsonArray }}
  imagePullSecrets: {{ toJson . }}
  {{- end }}
  {{- $inits := list }}
  {{- if and $serving (eq $p.mode "job") }}
  {{- $inits = append $inits "wait" }}
  {{- else if eq $p.mode "init" }}
  {{- $inits = append $inits "fetch" }}
  {{- end }}
  {{- if or $inits $m.initContainer $m.extraInitContainers }}
  initContainers:
    {{- range $inits }}
    - name: {{ ternary "wait-for-download" "download" (eq . "wait") }}
      image: {{ include "vfleet.downloadImage" $root | quote }}
      imagePullPolicy: {{ $root.Values.routerSpec.imagePullPolicy | default "IfNotPresent" }}
      {{- if eq . "wait" }}
      command: ["vfleet", "download", "--to", {{ $p.dir | quote }}, "--wait-all", {{ $p.shards | quote }}]
      resources:
        requests: {cpu: 10m, memory: 64Mi}
        limits: {memory: 256Mi}
      {{- else }}
      command: {{ concat (list "vfleet") $p.downloadArgs | toJson }}
      {{- include "vfleet.downloadEnv" (dict "root" $root "m" $m "p" $p) | nindent 6 }}
      resources:
        {{- toYaml $dl.resources | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "vfleet.downloadContainerSecurity" $dl | nindent 8 }}
      volumeMounts:
        - {name: model, mountPath: /data}
    {{- end }}
    {{- with $m.initContainer }}
    - name: {{ .name | default "init" }}
      image: {{ .image | quote }}
      {{- with .command }}
      command: {{ toJson . }}
      {{- end }}
      {{- with .args }}
      args: {{ toJson . }}
      {{- end }}
      {{- with .env }}
      env: {{ include "vfleet.env" . }}
      {{- end }}
      resources:
        {{- toYaml (.resources | default (dict "requests" (dict "cpu" "100m" "memory" "128Mi"))) | nindent 8 }}
      {{- if or (and .mountPvcStorage $hasVolume) .extraVolumeMounts }}
      volumeMounts:
        {{- if and .mountPvcStorage $hasVolume }}
        - {name: model, mountPath: /data}
        {{- end }}
        {{- with .extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
    {{- end }}
    {{- range $m.extraInitContainers }}
    {{- /* a request for containers that name none, so every container has one */}}
    {{- $c := deepCopy . }}
    {{- if not $c.resources }}{{- $_ := set $c "resources" (dict "requests" (dict "cpu" "100m" "memory" "128Mi")) }}{{- end }}
    - {{- toYaml $c | nindent 6 }}
    {{- end }}
  {{- end }}
  containers:
    - name: {{ ternary "vllm" "vllm-worker" $serving }}
      image: {{ $p.image | quote }}
      imagePullPolicy: {{ $m.imagePullPolicy | default $E.imagePullPolicy | default "IfNotPresent" }}
      {{- $ray := "/vllm-workspace/examples/online_serving/multi-node-serving.sh" }}
      {{- if eq $role "leader" }}
      command:
        - sh
        - -c
        - {{ printf "bash %s leader --ray_cluster_size=$LWS_GROUP_SIZE && exec \"$@\"" $ray | quote }}
        - sh
        {{- range concat $p.command (list "--distributed-executor-backend" "ray") }}
        - {{ . | quote }}
        {{- end }}
      {{- else if eq $role "worker" }}
      command: ["sh", "-c", {{ printf "bash %s worker --ray_address=$LWS_LEADER_ADDRESS" $ray | quote }}]
      {{- else }}
      command:
        {{- range $p.command }}
        - {{ . | quote }}
        {{- end }}
      {{- end }}
      {{- with $csc }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- $env := list }}
      {{- $mine := dict }}
      {{- range (concat ($E.env | default list) ($m.env | default list)) }}{{- $_ := set $mine (toString .name) true }}{{- end }}
      {{- if and $hasVolume (not (hasKey $mine "HF_HOME")) }}
      {{- $env = append $env (dict "name" "HF_HOME" "value" "/data") }}
      {{- end }}
      {{- if $scratch }}
      {{- /* USER: torch names its compile cache after the user, which a uid without a passwd
      entry does not have */}}
      {{- range $k, $v := dict "HOME" "/tmp" "XDG_CACHE_HOME" "/tmp/.cache" "USER" "vllm" }}
      {{- if not (hasKey $mine $k) }}{{- $env = append $env (dict "name" $k "value" $v) }}{{- end }}
      {{- end }}
      {{- end }}
      {{- if eq $p.mode "engine" }}
      {{- if and (eq $p.kind "hf") $p.source.endpoint (not (hasKey $mine "HF_ENDPOINT")) }}
      {{- $env = append $env (dict "name" "HF_ENDPOINT" "value" (toString $p.source.endpoint)) }}
      {{- end }}
      {{- if and (eq $p.kind "modelscope") (not (hasKey $mine "VLLM_USE_MODELSCOPE")) }}
      {{- $env = append $env (dict "name" "VLLM_USE_MODELSCOPE" "value" "True") }}
      {{- if $hasVolume }}
      {{- $env = append $env (dict "name" "MODELSCOPE_CACHE" "value" "/data/modelscope") }}
      {{- end }}
      {{- end }}
      {{- $tok := include "vfleet.tokenRef" (dict "root" $root "m" $m "p" $p) | fromJson }}
      {{- if and $tok.name (not (hasKey $mine "HF_TOKEN")) }}
      {{- $env = append $env (dict "name" "HF_TOKEN" "valueFrom" (dict "secretKeyRef" (dict "name" $tok.name "key" $tok.key))) }}
      {{- end }}
      {{- end }}
      {{- $env = concat $env (include "vfleet.env" (concat ($E.env | default list) ($m.env | default list)) | fromJsonArray) }}
      {{- with $env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if or $E.configs $m.envFromSecret }}
      envFrom:
        {{- if $E.configs }}
        - configMapRef: {name: {{ printf "%s-configs" $root.Release.Name | quote }}}
        {{- end }}
        {{- with $m.envFromSecret }}
        - secretRef: {name: {{ .name | quote }}}
        {{- end }}
      {{- end }}
      {{- if $serving }}
      ports:
        - name: http
          containerPort: {{ $p.port }}
          protocol: TCP
        {{- if $p.kvEventsPort }}
        - name: kv-events
          containerPort: {{ $p.kvEventsPort }}
          protocol: TCP
        - name: kv-replay
          containerPort: {{ add 100 $p.kvEventsPort }}
          protocol: TCP
        {{- range $r := untilStep 1 (int $p.kvRanks) 1 }}
        - name: kv-events-{{ $r }}
          containerPort: {{ add $r $p.kvEventsPort }}
          protocol: TCP
        - name: kv-replay-{{ $r }}
          containerPort: {{ add 100 $r $p.kvEventsPort }}
          protocol: TCP
        {{- end }}
        {{- end }}
      {{- with $E.startupProbe }}
      {{- $probe := deepCopy . }}
      {{- with $m.startupTimeoutS }}
      {{- $wait := sub (int64 .) (int64 ($probe.initialDelaySeconds | default 15)) }}
      {{- $_ := set $probe "failureThreshold" (max 1 (int64 (ceil (divf $wait (int64 ($probe.periodSeconds | default 10)))))) }}
      {{- end }}
      startupProbe:
        {{- include "vfleet.probe" $probe | nindent 8 }}
      {{- end }}
      {{- with $E.livenessProbe }}
      livenessProbe:
        {{- include "vfleet.probe" . | nindent 8 }}
      {{- end }}
      {{- with $E.readinessProbe }}
      readinessProbe:
        {{- include "vfleet.probe" . | nindent 8 }}
      {{- end }}
      {{- end }}
      resources:
        {{- toYaml $p.resources | nindent 8 }}
      {{- $shm := or $m.shmSize (gt (int $p.podGpus) 1) (gt (int $p.size) 1) }}
      {{- if or $hasVolume $shm $p.hostPath $m.extraVolumeMounts $m.chatTemplateConfigMap $scratch }}
      volumeMounts:
        {{- if $hasVolume }}
        - {name: model, mountPath: /data}
        {{- end }}
        {{- if $scratch }}
        - {name: tmp, mountPath: /tmp}
        {{- end }}
        {{- if $p.hostPath }}
        - {name: model-host, mountPath: {{ $p.source.id | quote }}, readOnly: true}
        {{- end }}
        {{- if $shm }}
        - {name: shm, mountPath: /dev/shm}
        {{- end }}
        {{- if $m.chatTemplateConfigMap }}
        - {name: chat-templates, mountPath: /templates}
        {{- end }}
        {{- with $m.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
  {{- if or $hasVolume $shm $p.hostPath $m.extraVolumes $m.chatTemplateConfigMap $scratch }}
  volumes:
    {{- if $p.claim }}
    - name: model
      persistentVolumeClaim: {claimName: {{ $p.claim | quote }}}
    {{- else if $p.emptyDir }}
    - name: model
      emptyDir: {{ toJson $p.emptyDirSpec }}
    {{- end }}
    {{- if $p.hostPath }}
    - name: model-host
      hostPath: {path: {{ $p.source.id | quote }}, type: Directory}
    {{- end }}
    {{- if $shm }}
    - name: shm
      emptyDir: {medium: Memory, sizeLimit: {{ $m.shmSize | default "20Gi" | quote }}}
    {{- end }}
    {{- if $m.chatTemplateConfigMap }}
    - name: chat-templates
      configMap: {name: {{ printf "%s-chat-templates" $p.full | quote }}}
    {{- end }}
    {{- if $scratch }}
    - name: tmp
      emptyDir: {}
    {{- end }}
    {{- with $m.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* The Secret holding a model's Hugging Face token: vllm-stack's hf_token, or the source's secret. */}}
{{- define "vfleet.tokenRef" -}}
{{- $m := .m -}}
{{- if and $m.hf_token (kindIs "string" $m.hf_token) -}}
{{- dict "name" (printf "%s-secrets" .root.Release.Name) "key" (printf "hf_token_%s" .p.name) | toJson -}}
{{- else if and $m.hf_token (kindIs "map" $m.hf_token) $m.hf_token.secretName -}}
{{- dict "name" $m.hf_token.secretName "key" ($m.hf_token.secretKey | default "token") | toJson -}}
{{- else if and .p.source.secret (has .p.kind (list "hf" "modelscope")) -}}
{{- dict "name" .p.source.secret "key" (.p.source.secretKey | default "token") | toJson -}}
{{- else -}}
{}
{{- end -}}
{{- end }}

{{/* env and envFrom of a download container: tokens and credentials for the source. */}}
{{- define "vfleet.downloadEnv" -}}
{{- $p := .p -}}
{{- $tok := include "vfleet.tokenRef" . | fromJson -}}
{{- $env := list -}}
{{- if $tok.name -}}
{{- $name := ternary "MODELSCOPE_API_TOKEN" "HF_TOKEN" (eq $p.kind "modelscope") -}}
{{- $env = append $env (dict "name" $name "valueFrom" (dict "secretKeyRef" (dict "name" $tok.name "key" $tok.key))) -}}
{{- end -}}
{{- $env = append $env (dict "name" "HOME" "value" "/tmp") -}}
{{- $env = concat $env (include "vfleet.env" (.m.downloadEnv | default list) | fromJsonArray) -}}
env:
  {{- toYaml $env | nindent 2 }}
{{- if and $p.source.secret (not (has $p.kind (list "hf" "modelscope"))) }}
envFrom:
  - secretRef: {name: {{ $p.source.secret | quote }}}
{{- end }}
{{- end }}

{{- define "vfleet.downloadContainerSecurity" -}}
{{- $sc := .securityContext | default dict -}}
allowPrivilegeEscalation: false
capabilities: {drop: [ALL]}
{{- with $sc.runAsNonRoot }}
runAsNonRoot: {{ . }}
{{- end }}
{{- if hasKey $sc "runAsUser" }}
runAsUser: {{ $sc.runAsUser | int64 }}
{{- end }}
{{- if hasKey $sc "runAsGroup" }}
runAsGroup: {{ $sc.runAsGroup | int64 }}
{{- end }}
{{- end }}
