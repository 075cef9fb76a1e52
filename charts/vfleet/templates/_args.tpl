{{/*
`vllm serve` arguments of one model. The flag table, the task flags, the served-name,
revision, LoRA and tool-calling flags (and their chart keys), the rewrites of flags older guides
use and the version each applies from are files/engine-rules.yaml, the file
src/vfleet/engines/vllm.py builds the same line from (tests/test_chart_agree.py compares the
two); no vLLM flag is named here. The vLLM version is the image tag's or
servingEngineSpec.vllmVersion, never a cluster's. --host and --port are the chart's; the
served-name, task and GPU-memory flags in extraArgs are read (they decide the router's model
list and the GPU share's memory default) and written once, in their place.

Input: dict m (modelSpec entry), rules (engine-rules.yaml), ver (vLLM version), ref (model path
or id), port, revision (for vLLM to fetch, or ""), gmuDefault ("" for none), defaultServed.
Output: JSON {"args": [...], "served": [...], "gmu": "...", "gmuExplicit": bool, "task": "..."}.
*/}}
{{- define "vfleet.vllmArgs" -}}
{{- $m := .m -}}
{{- $R := .rules -}}
{{- $cfg := $m.vllmConfig | default dict -}}
{{- $ver := .ver -}}
{{- $runnerEra := semverCompare (printf ">=%s-0" $R.task.runnerSince) $ver -}}
{{- $convertOf := $R.task.fromConvert -}}
{{- $taskOf := $R.task.fromTask -}}
{{- $F := $R.task.flags -}}
{{- $servedFlag := $R.model.served -}}
{{- /* the GPU-memory setting's spellings: a hand-written one is the share's memory */ -}}
{{- $gmuFlags := list -}}
{{- range $R.settings -}}{{- if eq .key "gpuMemoryUtilization" -}}{{- $gmuFlags = concat $gmuFlags (list .flag) (.aliases | default list) -}}{{- end -}}{{- end -}}
{{- /* the rewrites this version needs, by old flag */ -}}
{{- $due := dict -}}
{{- range $R.rewrites -}}{{- if semverCompare (printf ">=%s-0" (toString .since)) $ver -}}{{- $_ := set $due (toString .flag) . -}}{{- end -}}{{- end -}}
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
{{- /* renamed flags: a placeholder in $rest, the new flag and its values in $renamed */ -}}
{{- $renamed := list -}}
{{- $cur := dict -}}
{{- range $words -}}
{{- $isFlag := and (hasPrefix "-" .) (gt (len .) 1) -}}
{{- if and $collect (not $isFlag) -}}
  {{- if eq $collect "served" -}}{{- $argServed = append $argServed . -}}
  {{- else if eq $collect "renamed" -}}{{- $_ := set $cur "values" (append $cur.values .) -}}
  {{- else if eq $collect "task" -}}{{- if hasKey $taskOf . -}}{{- $task = get $taskOf . -}}{{- else -}}{{- $rest = append $rest $F.task . -}}{{- end -}}{{- $collect = "" -}}
  {{- else if eq $collect "runner" -}}{{- if eq . "pooling" -}}{{- if not $task -}}{{- $task = "embed" -}}{{- end -}}{{- else if not (has . (list "generate" "auto")) -}}{{- $rest = append $rest $F.runner . -}}{{- end -}}{{- $collect = "" -}}
  {{- else if eq $collect "convert" -}}{{- if hasKey $convertOf . -}}{{- $task = get $convertOf . -}}{{- else if ne . "auto" -}}{{- $rest = append $rest $F.convert . -}}{{- end -}}{{- $collect = "" -}}
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
  {{- $rewrite := dict -}}
  {{- if hasKey $due $flag -}}{{- $rewrite = get $due $flag -}}{{- end -}}
  {{- if eq $flag $servedFlag -}}
    {{- $haveArgServed = true -}}
    {{- if $hasInline -}}{{- $argServed = list $inline -}}{{- else -}}{{- $argServed = list -}}{{- $collect = "served" -}}{{- end -}}
  {{- else if eq $flag $F.task -}}
    {{- if $hasInline -}}{{- if hasKey $taskOf $inline -}}{{- $task = get $taskOf $inline -}}{{- else -}}{{- $rest = append $rest . -}}{{- end -}}{{- else -}}{{- $collect = "task" -}}{{- end -}}
  {{- else if eq $flag $F.runner -}}
    {{- if $hasInline -}}{{- if eq $inline "pooling" -}}{{- if not $task -}}{{- $task = "embed" -}}{{- end -}}{{- else if not (has $inline (list "generate" "auto")) -}}{{- $rest = append $rest . -}}{{- end -}}{{- else -}}{{- $collect = "runner" -}}{{- end -}}
  {{- else if eq $flag $F.convert -}}
    {{- if $hasInline -}}{{- if hasKey $convertOf $inline -}}{{- $task = get $convertOf $inline -}}{{- else if ne $inline "auto" -}}{{- $rest = append $rest . -}}{{- end -}}{{- else -}}{{- $collect = "convert" -}}{{- end -}}
  {{- else if has $flag $gmuFlags -}}
    {{- if $hasInline -}}{{- $gmu = $inline -}}{{- else -}}{{- $collect = "gmu" -}}{{- end -}}
  {{- else if has $flag (values $R.owned) -}}
    {{- if not $hasInline -}}{{- $collect = "drop" -}}{{- end -}}
  {{- else if $rewrite.drop -}}
  {{- else if $rewrite -}}
    {{- $cur = dict "rule" $rewrite "values" list -}}
    {{- $rest = append $rest (printf "__vfleet_renamed_%d__" (len $renamed)) -}}
    {{- $renamed = append $renamed $cur -}}
    {{- if $hasInline -}}{{- $_ := set $cur "values" (regexSplit "[,\\s]+" (trim $inline) -1) -}}{{- else -}}{{- $collect = "renamed" -}}{{- end -}}
  {{- else -}}
    {{- $rest = append $rest . -}}
  {{- end -}}
{{- end -}}
{{- end -}}
{{- if $haveArgServed -}}{{- $served = $argServed -}}{{- end -}}
{{- if not $served -}}{{- $served = list (toString (.defaultServed)) -}}{{- end -}}
{{- $gmuExplicit := ne $gmu "" -}}
{{- if not $gmuExplicit -}}{{- $gmu = .gmuDefault -}}{{- end -}}
{{- $a := list "serve" .ref $R.owned.host "0.0.0.0" $R.owned.port (toString .port) $servedFlag -}}
{{- $a = concat $a $served -}}
{{- with .revision -}}{{- $a = concat $a (list $R.model.revision.flag (toString .)) -}}{{- end -}}
{{- /* the typed settings, in the rules' order: vllmConfig's keys, those the rules place on the
modelSpec entry (vllm-stack's chatTemplate) from there first, and the GPU memory as read above */ -}}
{{- $vals := deepCopy $cfg -}}
{{- range $s := $R.settings -}}
{{- if eq (toString $s.place) "modelSpec" -}}{{- with get $m $s.key -}}{{- $_ := set $vals $s.key . -}}{{- end -}}{{- end -}}
{{- end -}}
{{- $_ := set $vals "gpuMemoryUtilization" $gmu -}}
{{- /* a template from chatTemplateConfigMap is mounted at /templates */ -}}
{{- if and $vals.chatTemplate $m.chatTemplateConfigMap -}}{{- $_ := set $vals "chatTemplate" (printf "/templates/%s" (base (toString $vals.chatTemplate))) -}}{{- end -}}
{{- range $s := $R.settings -}}
{{- $a = concat $a (include "vfleet.settingFlags" (dict "s" $s "v" (get $vals $s.key)) | fromJsonArray) -}}
{{- end -}}
{{- if eq $task "generate" -}}
{{- if $runnerEra -}}{{- $a = concat $a (list $F.runner "generate") -}}{{- end -}}
{{- else if $task -}}
{{- if $runnerEra -}}
{{- $a = concat $a (list $F.runner "pooling" $F.convert (get $R.task.convert $task)) -}}
{{- else -}}
{{- $a = concat $a (list $F.task $task) -}}
{{- end -}}
{{- end -}}
{{- /* LoRA: on by the rules' enable key or any module listed */ -}}
{{- $L := $R.lora -}}
{{- $loraModules := get $cfg $L.modules.key | default dict -}}
{{- if or (get $m $L.enable.key) $loraModules -}}
{{- $a = append $a $L.enable.flag -}}
{{- range $s := $L.settings -}}
{{- $a = concat $a (include "vfleet.settingFlags" (dict "s" $s "v" (get $cfg $s.key)) | fromJsonArray) -}}
{{- end -}}
{{- if $loraModules -}}
{{- $a = append $a $L.modules.flag -}}
{{- range $k, $v := $loraModules -}}{{- $a = append $a (printf "%s=%s" $k $v) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- $T := $R.toolCalling -}}
{{- if get $m $T.enable.key -}}{{- $a = append $a $T.enable.flag -}}{{- end -}}
{{- with get $m $T.parser.key -}}{{- $a = concat $a (list $T.parser.flag (toString .)) -}}{{- end -}}
{{- range $rest -}}
{{- if and (hasPrefix "__vfleet_renamed_" .) (hasSuffix "__" .) -}}
{{- $r := index $renamed (atoi (trimSuffix "__" (trimPrefix "__vfleet_renamed_" .))) -}}
{{- $new := ternary $r.rule.one $r.rule.to (and (hasKey $r.rule "one") (eq (len $r.values) 1)) -}}
{{- $a = concat $a (list $new) $r.values -}}
{{- else -}}
{{- $a = append $a . -}}
{{- end -}}
{{- end -}}
{{- dict "args" $a "served" $served "gmu" $gmu "gmuExplicit" $gmuExplicit "task" $task | toJson -}}
{{- end }}

{{/*
The words one typed setting of engine-rules.yaml adds, as a JSON list: none when the value is
unset, empty or the row's `default`. Input: dict s (the row), v (the value).
*/}}
{{- define "vfleet.settingFlags" -}}
{{- $s := .s -}}
{{- $v := .v -}}
{{- $a := list -}}
{{- if not (or (kindIs "invalid" $v) (eq (toString $v) "")) -}}
{{- if eq $s.type "switch" -}}
{{- $a = append $a (ternary $s.flag $s.negated (eq (toString $v) "true")) -}}
{{- else if eq $s.type "flag" -}}
{{- if $v -}}{{- $a = append $a $s.flag -}}{{- end -}}
{{- else -}}
{{- $atDefault := false -}}
{{- if hasKey $s "default" -}}{{- $atDefault = eq (include "vfleet.scalar" $v) (include "vfleet.scalar" $s.default) -}}{{- end -}}
{{- if not $atDefault -}}{{- $a = concat $a (list $s.flag (include "vfleet.scalar" $v)) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $a -}}
{{- end }}
