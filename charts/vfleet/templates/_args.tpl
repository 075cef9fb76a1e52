{{/*
`vllm serve` arguments of one model, in the order src/vfleet/engines/vllm.py builds them (the
tests compare the two). Flags that older guides use are rewritten for the image's vLLM version,
which is known from the image tag or servingEngineSpec.vllmVersion, never from a cluster:
  --task X                -> --runner pooling --convert X      (vLLM >= 0.10.1)
  --disable-log-requests  -> dropped                           (vLLM >= 0.10.2)
  --cuda-graph-sizes ...  -> --cudagraph-capture-sizes ... or --max-cudagraph-capture-size N
                                                               (vLLM >= 0.11.1)
--host and --port are the chart's; --served-model-name, --task/--runner/--convert and
--gpu-memory-utilization in extraArgs are read (they decide the router's model list and the
GPU share's memory default) and written once, in their place.

Input: dict m (modelSpec entry), ver (vLLM version), ref (model path or id), port,
revision (for vLLM to fetch, or ""), gmuDefault ("" for none).
Output: JSON {"args": [...], "served": [...], "gmu": "...", "gmuExplicit": bool, "task": "..."}.
*/}}
{{- define "vfleet.vllmArgs" -}}
{{- $m := .m -}}
{{- $cfg := $m.vllmConfig | default dict -}}
{{- $ver := .ver -}}
{{- $runnerEra := semverCompare ">=0.10.1-0" $ver -}}
{{- $quietLogs := semverCompare ">=0.10.2-0" $ver -}}
{{- $captureSizes := semverCompare ">=0.11.1-0" $ver -}}
{{- $convertOf := dict "embed" "embed" "classify" "classify" "score" "score" "reward" "reward" "token_embed" "embed" "token_classify" "classify" -}}
{{- $taskOf := dict "embed" "embed" "embedding" "embed" "classify" "classify" "score" "score" "reward" "reward" "generate" "generate" -}}
{{- /* the task: vfleet's vllmConfig.task, vllm-stack's runner/convert, then extraArgs */ -}}
{{- $task := toString ($cfg.task | default "") -}}
{{- if eq (toString ($cfg.runner | default "")) "pooling" -}}{{- if not $task -}}{{- $task = "embed" -}}{{- end -}}{{- end -}}
{{- with $cfg.convert -}}{{- if hasKey $convertOf (toString .) -}}{{- $task = get $convertOf (toString .) -}}{{- end -}}{{- end -}}
{{- $served := list -}}
{{- range $m.servedModelNames -}}{{- $served = append $served (toString .) -}}{{- end -}}
{{- $gmu := "" -}}
{{- with $cfg.gpuMemoryUtilization -}}{{- $gmu = include "vfleet.scalar" . -}}{{- end -}}
{{- /* split items like "--cuda-graph-sizes 1 2 4" (TKE renders extraArgs into a shell line) */ -}}
{{- $words := list -}}
{{- range ($cfg.extraArgs | default list) -}}
{{- $w := include "vfleet.scalar" . -}}
{{- if kindIs "bool" . -}}{{- $w = toString . | lower -}}{{- end -}}
{{- if and (hasPrefix "-" $w) (regexMatch "\\s" $w) -}}
{{- range regexSplit "\\s+" (trim $w) -1 -}}{{- $words = append $words . -}}{{- end -}}
{{- else -}}
{{- $words = append $words $w -}}
{{- end -}}
{{- end -}}
{{- $rest := list -}}
{{- $collect := "" -}}
{{- $argServed := list -}}
{{- $haveArgServed := false -}}
{{- $sizes := list -}}
{{- range $words -}}
{{- $isFlag := and (hasPrefix "-" .) (gt (len .) 1) -}}
{{- if and $collect (not $isFlag) -}}
  {{- if eq $collect "served" -}}{{- $argServed = append $argServed . -}}
  {{- else if eq $collect "sizes" -}}{{- $sizes = append $sizes . -}}
  {{- else if eq $collect "task" -}}{{- if hasKey $taskOf . -}}{{- $task = get $taskOf . -}}{{- else -}}{{- $rest = append $rest "--task" . -}}{{- end -}}{{- $collect = "" -}}
  {{- else if eq $collect "runner" -}}{{- if eq . "pooling" -}}{{- if not $task -}}{{- $task = "embed" -}}{{- end -}}{{- else if not (has . (list "generate" "auto")) -}}{{- $rest = append $rest "--runner" . -}}{{- end -}}{{- $collect = "" -}}
  {{- else if eq $collect "convert" -}}{{- if hasKey $convertOf . -}}{{- $task = get $convertOf . -}}{{- else if ne . "auto" -}}{{- $rest = append $rest "--convert" . -}}{{- end -}}{{- $collect = "" -}}
  {{- else if eq $collect "gmu" -}}{{- $gmu = . -}}{{- $collect = "" -}}
  {{- else -}}{{- $collect = "" -}}
  {{- end -}}
{{- else -}}
  {{- $collect = "" -}}
  {{- $parts := splitn "=" 2 . -}}
  {{- $flag := $parts._0 -}}
  {{- if hasPrefix "--" $flag -}}{{- $flag = printf "--%s" (trimPrefix "--" $flag | replace "_" "-") -}}{{- end -}}
  {{- $inline := $parts._1 -}}
  {{- $hasInline := contains "=" . -}}
  {{- if eq $flag "--served-model-name" -}}
    {{- $haveArgServed = true -}}
    {{- if $hasInline -}}{{- $argServed = list $inline -}}{{- else -}}{{- $argServed = list -}}{{- $collect = "served" -}}{{- end -}}
  {{- else if eq $flag "--task" -}}
    {{- if $hasInline -}}{{- if hasKey $taskOf $inline -}}{{- $task = get $taskOf $inline -}}{{- else -}}{{- $rest = append $rest . -}}{{- end -}}{{- else -}}{{- $collect = "task" -}}{{- end -}}
  {{- else if eq $flag "--runner" -}}
    {{- if $hasInline -}}{{- if eq $inline "pooling" -}}{{- if not $task -}}{{- $task = "embed" -}}{{- end -}}{{- else if not (has $inline (list "generate" "auto")) -}}{{- $rest = append $rest . -}}{{- end -}}{{- else -}}{{- $collect = "runner" -}}{{- end -}}
  {{- else if eq $flag "--convert" -}}
    {{- if $hasInline -}}{{- if hasKey $convertOf $inline -}}{{- $task = get $convertOf $inline -}}{{- else if ne $inline "auto" -}}{{- $rest = append $rest . -}}{{- end -}}{{- else -}}{{- $collect = "convert" -}}{{- end -}}
  {{- else if eq $flag "--gpu-memory-utilization" -}}
    {{- if $hasInline -}}{{- $gmu = $inline -}}{{- else -}}{{- $collect = "gmu" -}}{{- end -}}
  {{- else if has $flag (list "--host" "--port") -}}
    {{- if not $hasInline -}}{{- $collect = "drop" -}}{{- end -}}
  {{- else if and (eq $flag "--disable-log-requests") $quietLogs -}}
  {{- else if and (eq $flag "--cuda-graph-sizes") $captureSizes -}}
    {{- $rest = append $rest "__vfleet_sizes__" -}}
    {{- if $hasInline -}}{{- range regexSplit "[,\\s]+" (trim $inline) -1 -}}{{- $sizes = append $sizes . -}}{{- end -}}{{- else -}}{{- $collect = "sizes" -}}{{- end -}}
  {{- else -}}
    {{- $rest = append $rest . -}}
  {{- end -}}
{{- end -}}
{{- end -}}
{{- if $haveArgServed -}}{{- $served = $argServed -}}{{- end -}}
{{- if not $served -}}{{- $served = list (toString (.defaultServed)) -}}{{- end -}}
{{- $gmuExplicit := ne $gmu "" -}}
{{- if not $gmuExplicit -}}{{- $gmu = .gmuDefault -}}{{- end -}}
{{- $chatTemplate := $m.chatTemplate | default $cfg.chatTemplate -}}
{{- if and $chatTemplate $m.chatTemplateConfigMap -}}{{- $chatTemplate = printf "/templates/%s" (base (toString $chatTemplate)) -}}{{- end -}}
{{- /* typed settings, in vfleet.engines.vllm.serve_command's order */ -}}
{{- $a := list "serve" .ref "--host" "0.0.0.0" "--port" (toString .port) "--served-model-name" -}}
{{- $a = concat $a $served -}}
{{- with .revision -}}{{- $a = concat $a (list "--revision" (toString .)) -}}{{- end -}}
{{- range $pair := list (list "--max-model-len" $cfg.maxModelLen) (list "--gpu-memory-utilization" $gmu) (list "--max-num-seqs" $cfg.maxNumSeqs) (list "--max-num-batched-tokens" $cfg.maxNumBatchedTokens) (list "--quantization" $cfg.quantization) (list "--dtype" $cfg.dtype) (list "--chat-template" $chatTemplate) -}}
{{- $v := index $pair 1 -}}
{{- if not (or (kindIs "invalid" $v) (eq (toString $v) "")) -}}
{{- $a = concat $a (list (index $pair 0) (include "vfleet.scalar" $v)) -}}
{{- end -}}
{{- end -}}
{{- $tp := int64 ($cfg.tensorParallelSize | default 1) -}}
{{- if gt $tp 1 -}}{{- $a = concat $a (list "--tensor-parallel-size" (toString $tp)) -}}{{- end -}}
{{- $pp := int64 ($cfg.pipelineParallelSize | default 1) -}}
{{- if gt $pp 1 -}}{{- $a = concat $a (list "--pipeline-parallel-size" (toString $pp)) -}}{{- end -}}
{{- range $flag := list "enablePrefixCaching" "enableChunkedPrefill" -}}
{{- if hasKey $cfg $flag -}}{{- $v := get $cfg $flag -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $name := $flag | snakecase | replace "_" "-" -}}
{{- $a = append $a (ternary (printf "--%s" $name) (printf "--no-%s" $name) (eq (toString $v) "true")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $cfg.enforceEager -}}{{- $a = append $a "--enforce-eager" -}}{{- end -}}
{{- if $cfg.trustRemoteCode -}}{{- $a = append $a "--trust-remote-code" -}}{{- end -}}
{{- if eq $task "generate" -}}
{{- if $runnerEra -}}{{- $a = concat $a (list "--runner" "generate") -}}{{- end -}}
{{- else if $task -}}
{{- if $runnerEra -}}
{{- $a = concat $a (list "--runner" "pooling" "--convert" (get (dict "embed" "embed" "classify" "classify" "score" "classify" "reward" "embed") $task)) -}}
{{- else -}}
{{- $a = concat $a (list "--task" $task) -}}
{{- end -}}
{{- end -}}
{{- $loraModules := $cfg.loraModules | default dict -}}
{{- if or $m.enableLoRA $loraModules -}}
{{- $a = append $a "--enable-lora" -}}
{{- with $cfg.maxLoras -}}{{- $a = concat $a (list "--max-loras" (include "vfleet.scalar" .)) -}}{{- end -}}
{{- with $cfg.maxLoraRank -}}{{- $a = concat $a (list "--max-lora-rank" (include "vfleet.scalar" .)) -}}{{- end -}}
{{- if $loraModules -}}
{{- $a = append $a "--lora-modules" -}}
{{- range $k, $v := $loraModules -}}{{- $a = append $a (printf "%s=%s" $k $v) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if $m.enableTool -}}{{- $a = append $a "--enable-auto-tool-choice" -}}{{- end -}}
{{- with $m.toolCallParser -}}{{- $a = concat $a (list "--tool-call-parser" (toString .)) -}}{{- end -}}
{{- range $rest -}}
{{- if eq . "__vfleet_sizes__" -}}
{{- if eq (len $sizes) 1 -}}
{{- $a = concat $a (list "--max-cudagraph-capture-size" (first $sizes)) -}}
{{- else -}}
{{- $a = concat $a (list "--cudagraph-capture-sizes") $sizes -}}
{{- end -}}
{{- else -}}
{{- $a = append $a . -}}
{{- end -}}
{{- end -}}
{{- dict "args" $a "served" $served "gmu" $gmu "gmuExplicit" $gmuExplicit "task" $task | toJson -}}
{{- end }}
