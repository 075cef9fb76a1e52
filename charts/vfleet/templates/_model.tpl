{{/*
Everything the templates need to know about one modelSpec entry, decided in one place and
returned as JSON: names, image, source, volume, download, GPU resources, the engine command,
replicas and scaling. Input: dict "root" $ "m" <modelSpec entry>.
*/}}
{{- define "vfleet.model" -}}
{{- $root := .root -}}
{{- $m := .m -}}
{{- $E := $root.Values.servingEngineSpec -}}
{{- $rel := $root.Release.Name -}}
{{- $name := required "every servingEngineSpec.modelSpec entry needs a name" $m.name | toString -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "modelSpec name %q: use lower-case letters, digits and '-' (it names Kubernetes objects)" $name) -}}
{{- end -}}
{{- $full := printf "%s-%s" $rel $name -}}
{{- if gt (len (printf "%s-engine-service" $full)) 63 -}}
{{- fail (printf "release %q + model %q make the Service name %s-engine-service longer than 63 characters; shorten one" $rel $name $full) -}}
{{- end -}}
{{- $cfg := $m.vllmConfig | default dict -}}
{{- /* the rules vfleet's Python applies too: flag table, rewrites, share-to-memory */ -}}
{{- $rules := $root.Files.Get "files/engine-rules.yaml" | fromYaml -}}
{{- if or (not $rules) (hasKey $rules "Error") -}}
{{- fail (printf "files/engine-rules.yaml is missing or not YAML: %v" ($rules.Error | default "empty")) -}}
{{- end -}}
{{- $headroom := int64 $rules.gpuShare.headroomPercent -}}
{{- /* the sources vLLM downloads itself (and is given --revision for) */ -}}
{{- $vllmFetches := $rules.model.revision.sources -}}
{{- $engine := toString ($m.engine | default "vllm") -}}
{{- $port := int64 ($E.containerPort | default 8000) -}}

{{- /* image and the vLLM version it holds */ -}}
{{- $ver := toString ($m.vllmVersion | default $E.vllmVersion | default "0.26.0") -}}
{{- $repo := toString ($m.repository | default $E.defaultRepository | default "vllm/vllm-openai") -}}
{{- $tag := "" -}}
{{- if $m.tag -}}{{- $tag = include "vfleet.scalar" $m.tag -}}
{{- else if $m.repository -}}{{- $tag = "latest" -}}
{{- else -}}{{- $tag = printf "v%s" $ver -}}
{{- end -}}
{{- $tagVer := regexFind "^v?[0-9]+\\.[0-9]+(\\.[0-9]+)?" $tag | trimPrefix "v" -}}
{{- if and $tagVer (not $m.vllmVersion) -}}{{- $ver = $tagVer -}}{{- end -}}
{{- $image := printf "%s:%s" (include "vfleet.withRegistry" (list $root $repo "")) $tag -}}
{{- if eq $engine "sim" -}}{{- $image = include "vfleet.routerImage" $root -}}{{- end -}}

{{- /* the weights' source: vfleet's source mapping, or vllm-stack's modelURL */ -}}
{{- $src := dict -}}
{{- if kindIs "map" $m.source -}}
{{- $src = deepCopy $m.source -}}
{{- else -}}
{{- $url := toString (required (printf "modelSpec %s needs modelURL (or source)" $name) $m.modelURL) | trim -}}
{{- $hit := false -}}
{{- range $scheme := list "hf" "modelscope" "s3" -}}
{{- if and (not $hit) (hasPrefix (printf "%s://" $scheme) $url) -}}
{{- $hit = true -}}
{{- $body := splitn "@" 2 (trimPrefix (printf "%s://" $scheme) $url) -}}
{{- $src = dict "kind" $scheme "id" $body._0 -}}
{{- with $body._1 -}}{{- $_ := set $src "revision" . -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $hit -}}
{{- if hasPrefix "git+" $url -}}{{- $src = dict "kind" "git" "id" (trimPrefix "git+" $url) -}}
{{- else if hasPrefix "pvc://" $url -}}
{{- $body := splitn "/" 2 (trimPrefix "pvc://" $url) -}}
{{- $src = dict "kind" "pvc" "id" $body._0 "path" ($body._1 | default "") -}}
{{- else if or (hasPrefix "https://" $url) (hasPrefix "http://" $url) -}}{{- $src = dict "kind" "https" "id" $url -}}
{{- else if or (hasPrefix "/" $url) (hasPrefix "./" $url) (hasPrefix "../" $url) (hasPrefix "~" $url) -}}{{- $src = dict "kind" "local" "id" $url -}}
{{- else -}}{{- $src = dict "kind" "hf" "id" $url -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $kind := toString $src.kind -}}
{{- $srcId := toString $src.id -}}
{{- $revision := toString ($src.revision | default $m.modelRevision | default "") -}}
{{- $uri := $srcId -}}
{{- if has $kind (list "hf" "modelscope" "s3") -}}{{- $uri = printf "%s://%s" $kind $srcId -}}
{{- else if eq $kind "git" -}}{{- $uri = printf "git+%s" $srcId -}}
{{- else if eq $kind "pvc" -}}{{- $uri = printf "pvc://%s/%s" $srcId ($src.path | default "") | trimSuffix "/" -}}
{{- end -}}

{{- /* the volume mounted at /data */ -}}
{{- $claim := "" -}}
{{- $createClaim := false -}}
{{- $emptyDir := dict -}}
{{- $hasEmptyDir := false -}}
{{- if $m.pvcExistingClaimName -}}{{- $claim = toString $m.pvcExistingClaimName -}}
{{- else if eq $kind "pvc" -}}{{- $claim = $srcId -}}
{{- else if and $m.pvcStorage (kindIs "string" $m.pvcStorage) -}}{{- $claim = printf "%s-storage-claim" $full -}}{{- $createClaim = true -}}
{{- else if and (kindIs "map" $m.pvcStorage) (hasKey ($m.pvcStorage | default dict) "emptyDir") -}}{{- $hasEmptyDir = true -}}{{- $emptyDir = $m.pvcStorage.emptyDir | default dict -}}
{{- end -}}
{{- $accessModes := list "ReadWriteOnce" -}}
{{- with $m.pvcAccessMode -}}{{- $accessModes = ternary (list .) . (kindIs "string" .) -}}{{- end -}}

{{- /* download: who puts the weights where vLLM reads them */ -}}
{{- $dl := $m.download | default dict -}}
{{- $EDl := $E.download | default dict -}}
{{- $mode := toString ($dl.mode | default $EDl.mode | default "auto") -}}
{{- if eq $mode "auto" -}}
{{- if has $kind (list "pvc" "local") -}}{{- $mode = "none" -}}
{{- else if has $kind $vllmFetches -}}{{- $mode = "engine" -}}
{{- else -}}{{- $mode = ternary "job" "init" (ne $claim "") -}}
{{- end -}}
{{- end -}}
{{- if not (has $mode (list "job" "init" "engine" "none")) -}}
{{- fail (printf "modelSpec %s: download.mode %q: use auto, job, init, engine or none" $name $mode) -}}
{{- end -}}
{{- if and (has $mode (list "job" "init")) (has $kind (list "pvc" "local")) -}}
{{- fail (printf "modelSpec %s: download.mode %s, but the weights are already at %s" $name $mode $uri) -}}
{{- end -}}
{{- if and (eq $mode "engine") (not (has $kind $vllmFetches)) -}}
{{- fail (printf "modelSpec %s: vLLM cannot fetch %s itself; use download.mode job or init" $name $uri) -}}
{{- end -}}
{{- if and (eq $mode "job") (not $claim) -}}
{{- fail (printf "modelSpec %s: download.mode job needs a shared volume: set pvcStorage or pvcExistingClaimName (or use mode init)" $name) -}}
{{- end -}}
{{- if and (eq $mode "init") (not $claim) (not $hasEmptyDir) -}}{{- $hasEmptyDir = true -}}{{- end -}}
{{- $shards := int64 ($dl.shards | default $EDl.shards | default 1) -}}
{{- if and (eq $mode "job") (gt $shards 1) (not (has "ReadWriteMany" $accessModes)) (not (eq $kind "pvc")) (not $m.pvcExistingClaimName) -}}
{{- fail (printf "modelSpec %s: %d download shards run on different nodes and need a ReadWriteMany volume (pvcAccessMode)" $name $shards) -}}
{{- end -}}
{{- $dir := printf "/data/%s" (trimAll "/" (toString ($dl.dir | default (printf "models/%s" $name)))) -}}
{{- $downloadArgs := list "download" $uri "--to" $dir -}}
{{- with $revision -}}{{- $downloadArgs = concat $downloadArgs (list "--revision" .) -}}{{- end -}}
{{- range ($src.include | default list) -}}{{- $downloadArgs = concat $downloadArgs (list "--include" (toString .)) -}}{{- end -}}
{{- with $src.endpoint -}}{{- $downloadArgs = concat $downloadArgs (list "--endpoint" (toString .)) -}}{{- end -}}
{{- $jobHash := dict "args" $downloadArgs "shards" $shards | toJson | sha256sum | trunc 8 -}}

{{- /* the model path or id vLLM opens */ -}}
{{- $ref := $srcId -}}
{{- $hostPath := false -}}
{{- if has $mode (list "job" "init") -}}{{- $ref = $dir -}}
{{- else if eq $kind "pvc" -}}{{- $ref = printf "/data/%s" (trimAll "/" (toString ($src.path | default ""))) | trimSuffix "/" -}}
{{- else if eq $kind "local" -}}{{- $hostPath = eq (toString $src.hostPath) "true" -}}
{{- end -}}

{{- /* GPUs */ -}}
{{- $g := float64 ($m.requestGPU | default 0) -}}
{{- if eq $engine "sim" -}}{{- $g = 0.0 -}}{{- end -}}
{{- $pct := 0 -}}
{{- $whole := 0 -}}
{{- if and (gt $g 0.0) (lt $g 1.0) -}}
{{- $pct = int (round (mulf $g 100) 0) -}}
{{- else if ge $g 1.0 -}}
{{- if ne $g (float64 (int64 $g)) -}}
{{- fail (printf "modelSpec %s: requestGPU %v: a request above 1 must be a whole number of GPUs; shares are for one GPU, e.g. 0.25" $name $g) -}}
{{- end -}}
{{- $whole = int $g -}}
{{- end -}}
{{- $perNode := int ($E.gpusPerNode | default 8) -}}
{{- $size := int ($m.lwsGroupSize | default 1) -}}
{{- if and (eq $size 1) (gt $whole $perNode) -}}{{- $size = int (ceil (divf $whole $perNode)) -}}{{- end -}}
{{- $podGpus := $whole -}}
{{- if gt $size 1 -}}
{{- if ne (mod $whole $size) 0 -}}
{{- fail (printf "modelSpec %s: %d GPUs do not split evenly over %d nodes" $name $whole $size) -}}
{{- end -}}
{{- $podGpus = div $whole $size -}}
{{- end -}}
{{- $sharing := toString (($m.gpuSharing | default dict).mode | default ($E.gpuSharing | default dict).mode | default "hami") -}}
{{- if not (has $sharing (list "hami" "timeslicing" "none")) -}}
{{- fail (printf "gpuSharing.mode %q: use hami, timeslicing or none" $sharing) -}}
{{- end -}}
{{- $gpuType := toString ($m.requestGPUType | default "nvidia.com/gpu") -}}
{{- $gpu := dict -}}
{{- $gmuDefault := "" -}}
{{- if gt $podGpus 0 -}}
{{- $_ := set $gpu $gpuType $podGpus -}}
{{- else if gt $pct 0 -}}
{{- if eq $sharing "hami" -}}
{{- $_ := set $gpu "nvidia.com/gpu" 1 -}}
{{- if hasKey $m "requestGPUMem" -}}{{- $_ := set $gpu "nvidia.com/gpumem" (include "vfleet.scalar" $m.requestGPUMem) -}}
{{- else -}}{{- $_ := set $gpu "nvidia.com/gpumem-percentage" (int (($m.requestGPUMemPercentage | default $pct))) -}}
{{- end -}}
{{- $_ := set $gpu "nvidia.com/gpucores" (int ($m.requestGPUCores | default $pct)) -}}
{{- /* HAMi shows the container only its slice of device memory: headroom of what it sees */ -}}
{{- $gmuDefault = divf $headroom 100 | toString -}}
{{- else -}}
{{- if eq $sharing "timeslicing" -}}
{{- $_ := set $gpu (toString (($E.gpuSharing | default dict).timeSlicingResource | default "nvidia.com/gpu.shared")) 1 -}}
{{- /* every container sees the whole device: headroom of its share, in whole percent */ -}}
{{- $gmuDefault = divf (div (mul $pct $headroom) 100) 100 | toString -}}
{{- else -}}
{{- $_ := set $gpu $gpuType 1 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* resources */ -}}
{{- $cpu := $E.defaultRequestCPU | default "2" -}}
{{- $mem := $E.defaultRequestMemory | default "8Gi" -}}
{{- if eq $engine "sim" -}}{{- $cpu = "250m" -}}{{- $mem = "512Mi" -}}{{- end -}}
{{- $requests := dict "cpu" (include "vfleet.scalar" ($m.requestCPU | default $cpu)) "memory" (include "vfleet.scalar" ($m.requestMemory | default $mem)) -}}
{{- $limits := dict -}}
{{- with $m.limitCPU -}}{{- $_ := set $limits "cpu" (include "vfleet.scalar" .) -}}{{- end -}}
{{- with $m.limitMemory -}}{{- $_ := set $limits "memory" (include "vfleet.scalar" .) -}}{{- end -}}
{{- range $k, $v := $gpu -}}{{- $_ := set $requests $k $v -}}{{- $_ := set $limits $k $v -}}{{- end -}}
{{- $resources := dict "requests" $requests "limits" $limits -}}
{{- if $m.resources -}}{{- $resources = $m.resources -}}{{- end -}}

{{- /* engine command */ -}}
{{- $vrev := ternary $revision "" (eq $mode "engine") -}}
{{- /* vllm-stack serves a model under its modelURL; a URL with a scheme under the id in it */ -}}
{{- $defaultServed := $srcId -}}
{{- if and $m.modelURL (not (kindIs "map" $m.source)) (not (contains "://" (toString $m.modelURL))) (not (hasPrefix "git+" (toString $m.modelURL))) -}}{{- $defaultServed = toString $m.modelURL -}}{{- end -}}
{{- $va := include "vfleet.vllmArgs" (dict "m" $m "rules" $rules "ver" $ver "ref" $ref "port" $port "revision" $vrev "gmuDefault" $gmuDefault "defaultServed" $defaultServed) | fromJson -}}
{{- /* KV-cache events, for a generating model whose router policy (by served name, else the
router's) reads them: the publisher binds on all addresses at kvEvents.port and its replay
socket 100 ports above (vfleet.router.kvwire's rule; vLLM offsets both by the data-parallel
rank, so an engine of `--data-parallel-size N` binds port..port+N-1 and port+100..port+100+N-1,
all declared on the pod, and the pod says N for the router), the flag goes last (a hand-written one is dropped: the router must
know where events are), and the pod carries the port for the router's discovery. A command of
one's own (vfleet writes one for the simulator) publishes what its own flag says: the port is
read from its tcp://*:PORT. */ -}}
{{- $K := $rules.kvEvents -}}
{{- $kvPort := 0 -}}
{{- $policies := ($root.Values.routerSpec | default dict).modelPolicies | default dict -}}
{{- $routerPolicy := include "vfleet.routerPolicy" $root -}}
{{- if has $va.task (list "" "generate") -}}
{{- range $va.served -}}{{- if has (toString (get $policies . | default $routerPolicy)) $K.policies -}}{{- $kvPort = int64 $K.port -}}{{- end -}}{{- end -}}
{{- end -}}
{{- if and $kvPort $m.command -}}
{{- $kvPort = 0 -}}
{{- $own := $m.command | toStrings -}}
{{- range $i, $w := $own -}}
{{- if and (eq $w $K.flag) (lt (add1 $i) (len $own)) -}}
{{- $endpoint := toString ((index $own (add1 $i)) | fromJson).endpoint -}}
{{- if hasPrefix "tcp://*:" $endpoint -}}{{- $kvPort = int64 (trimPrefix "tcp://*:" $endpoint) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $args := $va.args -}}
{{- if and $kvPort (not $m.command) -}}
{{- $args = list -}}
{{- $skip := false -}}
{{- range $va.args -}}
{{- $word := (splitn "=" 2 .)._0 -}}
{{- if hasPrefix "--" $word -}}{{- $word = printf "--%s" (trimPrefix "--" $word | replace "_" "-") -}}{{- end -}}
{{- if $skip -}}{{- $skip = false -}}
{{- else if eq $word $K.flag -}}{{- $skip = not (contains "=" .) -}}
{{- else -}}{{- $args = append $args . -}}
{{- end -}}
{{- end -}}
{{- $config := dict "enable_kv_cache_events" true "publisher" "zmq" "endpoint" (printf "tcp://*:%d" $kvPort) "replay_endpoint" (printf "tcp://*:%d" (add 100 $kvPort)) -}}
{{- $args = concat $args (list $K.flag ($config | toJson)) -}}
{{- end -}}
{{- $command := concat (list "vllm") $args -}}
{{- if eq $engine "sim" -}}
{{- $command = list "vfleet" "sim" "--model" $ref "--host" "0.0.0.0" "--port" (toString $port) -}}
{{- range $va.served -}}{{- $command = concat $command (list "--served-model-name" .) -}}{{- end -}}
{{- if $kvPort -}}{{- $command = concat $command (slice $args (sub (len $args) 2)) -}}{{- end -}}
{{- end -}}
{{- with $m.command -}}{{- $command = . -}}{{- end -}}
{{- /* the data-parallel ranks of a publishing engine (the last --data-parallel-size, -dp, as
vLLM's parser; vfleet.engines.rules.data_parallel_size): one publisher each */ -}}
{{- $kvRanks := 0 -}}
{{- if $kvPort -}}
{{- $kvRanks = 1 -}}
{{- $words := $command | toStrings -}}
{{- range $i, $w := $words -}}
{{- $kv := splitn "=" 2 $w -}}
{{- if has (replace "_" "-" $kv._0) (list "--data-parallel-size" "-dp") -}}
{{- $n := ternary $kv._1 "" (contains "=" $w) -}}
{{- if and (not (contains "=" $w)) (lt (add1 $i) (len $words)) -}}{{- $n = index $words (add1 $i) -}}{{- end -}}
{{- $kvRanks = ternary (int64 $n) 1 (and (regexMatch "^[0-9]+$" (toString $n)) (gt (int64 $n) 0)) -}}
{{- end -}}
{{- end -}}
{{- if gt $kvRanks 100 -}}{{- fail (printf "model %s: --data-parallel-size %d publishes KV events on more than 100 ports, where its replay ports begin" $m.name $kvRanks) -}}{{- end -}}
{{- end -}}
{{- $models := $va.served -}}
{{- $loraModules := get $cfg $rules.lora.modules.key -}}
{{- range $k, $v := ($loraModules | default dict) -}}{{- $models = append $models $k -}}{{- end -}}
{{- /* dynamically loaded adapters only show in /v1/models: let the router ask there */ -}}
{{- $annotateModels := not (and (get $m $rules.lora.enable.key) (not $loraModules)) -}}

{{- /* scaling */ -}}
{{- $keda := $m.keda | default dict -}}
{{- $auto := $m.autoscaling | default dict -}}
{{- $replicas := int64 ($m.replicaCount | default 1) -}}
{{- if and (hasKey $m "replicaCount") (kindIs "invalid" $m.replicaCount | not) -}}{{- $replicas = int64 $m.replicaCount -}}{{- end -}}
{{- $autoMin := int64 ($auto.minReplicas | default 0) -}}
{{- if or (not (hasKey $auto "minReplicas")) (kindIs "invalid" $auto.minReplicas) (eq (toString $auto.minReplicas) "") -}}{{- $autoMin = 1 -}}{{- end -}}
{{- $autoMax := int64 ($auto.maxReplicas | default 0) -}}
{{- if and $auto (gt $autoMax 0) (eq $autoMax $autoMin) -}}
{{- /* T9k: min = max > 0 is a fixed size */ -}}
{{- $replicas = $autoMin -}}{{- $auto = dict -}}
{{- end -}}
{{- $scaled := or $keda.enabled (ne (len $auto) 0) -}}
{{- $kindName := ternary "LeaderWorkerSet" "Deployment" (gt $size 1) -}}
{{- $workload := ternary (printf "%s-lws-vllm" $full) (printf "%s-deployment-vllm" $full) (gt $size 1) -}}

{{- dict
  "name" $name "full" $full "engine" $engine "image" $image "version" $ver "port" $port
  "source" $src "kind" $kind "uri" $uri "revision" $revision
  "claim" $claim "createClaim" $createClaim "emptyDir" $hasEmptyDir "emptyDirSpec" $emptyDir
  "accessModes" $accessModes "hostPath" $hostPath
  "mode" $mode "dir" $dir "shards" $shards "downloadArgs" $downloadArgs
  "jobName" (printf "%s-download-%s" $full $jobHash)
  "ref" $ref "gpuPct" $pct "gpus" $whole "podGpus" $podGpus "size" $size "sharing" $sharing
  "resources" $resources "command" $command "served" $va.served "models" $models
  "annotateModels" $annotateModels "kvEventsPort" $kvPort "kvRanks" $kvRanks "gmu" $va.gmu "gmuExplicit" $va.gmuExplicit "task" $va.task
  "scaled" $scaled "replicas" $replicas "auto" $auto "autoMin" $autoMin "autoMax" $autoMax "workloadKind" $kindName "workload" $workload
  "service" (printf "%s-engine-service" $full)
  | toJson -}}
{{- end }}

{{/* Labels of one model's objects; input: dict root, p (the plan) */}}
{{- define "vfleet.engineSelector" -}}
app.kubernetes.io/name: vfleet
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: engine
model: {{ .p.name }}
{{- end }}

{{- /* Labels of a model's objects (pod: true adds podLabels); ours win over the user's, no key twice. */}}
{{- define "vfleet.engineLabels" -}}
{{- $l := dict -}}
{{- range $src := list .root.Values.servingEngineSpec.labels .m.labels (ternary .m.podLabels dict (eq (toString .pod) "true")) (include "vfleet.labels" .root | fromYaml) -}}
{{- range $k, $v := ($src | default dict) -}}{{- $_ := set $l $k (toString $v) -}}{{- end -}}
{{- end -}}
{{- $_ := set $l "app.kubernetes.io/component" (.component | default "engine") -}}
{{- $_ := set $l "model" .p.name -}}
{{- toYaml $l -}}
{{- end }}

{{/* The router's policy for served names modelPolicies does not name: routerSpec.policy, else
vllm-stack's routingLogic as vfleet's policy, else least_load. Input: the root context. */}}
{{- define "vfleet.routerPolicy" -}}
{{- $R := .Values.routerSpec | default dict -}}
{{- $logic := dict "roundrobin" "round_robin" "session" "session" "prefixaware" "prefix" "kvaware" "kv" "least_load" "least_load" "leastload" "least_load" -}}
{{- toString ($R.policy | default (get $logic (toString ($R.routingLogic | default ""))) | default "least_load") -}}
{{- end }}
