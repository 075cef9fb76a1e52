"""`vllm serve` command lines from a model, for the vLLM version that will run them.

Pure. Flags users still copy from older guides are rewritten for the installed version, each
with a notice: `--task embed` became `--runner pooling --convert embed` (0.10.1),
`--disable-log-requests` became the default (0.10.2), `--cuda-graph-sizes` became
`--cudagraph-capture-sizes` / `--max-cudagraph-capture-size` (0.11.1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from vfleet.fleetspec.models import Model

Version = tuple[int, ...]
RUNNER_SINCE: Version = (0, 10, 1)
QUIET_LOGS_SINCE: Version = (0, 10, 2)
CAPTURE_SIZES_SINCE: Version = (0, 11, 1)
_CONVERT = {"embed": "embed", "classify": "classify", "score": "classify", "reward": "embed"}


@dataclass(frozen=True)
class Command:
    argv: list[str]
    notices: list[str] = field(default_factory=list)


def parse_version(text: str | None) -> Version | None:
    """'0.26.0' -> (0, 26, 0); local or dev suffixes are ignored; None when unknown."""
    if not text:
        return None
    parts = []
    for piece in text.strip().split("+")[0].split(".")[:3]:
        digits = re.match(r"\d+", piece)  # '1rc2' -> 1: a pre-release of 0.11.1 is 0.11.1
        if not digits:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(piece):
            break
    return tuple(parts) or None


def _since(version: Version | None, first: Version) -> bool:
    return version is None or version >= first  # unknown: assume a current vLLM


def serve_command(
    model: Model,
    model_ref: str,
    host: str,
    port: int,
    version: Version | None = None,
    gpu_memory_utilization: float | None = None,
    executable: Sequence[str] = ("vllm",),
) -> Command:
    """`executable serve MODEL ...`; `gpu_memory_utilization` is the packer's derived value,
    used only when the model does not set one."""
    s = model.vllm
    argv = [*executable, "serve", model_ref, "--host", host, "--port", str(port)]
    argv += ["--served-model-name", *model.served_names]
    notices: list[str] = []
    if model.source.revision and model.source.kind in ("hf", "modelscope"):
        argv += ["--revision", model.source.revision]
    gmu = s.gpu_memory_utilization or gpu_memory_utilization
    for flag, value in (
        ("--max-model-len", s.max_model_len),
        ("--gpu-memory-utilization", gmu),
        ("--max-num-seqs", s.max_num_seqs),
        ("--max-num-batched-tokens", s.max_num_batched_tokens),
        ("--quantization", s.quantization),
        ("--dtype", s.dtype),
        ("--chat-template", s.chat_template),
    ):
        if value is not None:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if s.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    if s.pipeline_parallel_size > 1:
        argv += ["--pipeline-parallel-size", str(s.pipeline_parallel_size)]
    for flag, value in (
        ("enable-prefix-caching", s.enable_prefix_caching),
        ("enable-chunked-prefill", s.enable_chunked_prefill),
    ):
        if value is not None:
            argv.append(f"--{flag}" if value else f"--no-{flag}")
    if s.enforce_eager:
        argv.append("--enforce-eager")
    if s.trust_remote_code:
        argv.append("--trust-remote-code")
    argv += _task(model.task, version)
    argv += _lora(model)
    if s.tool_calling.enabled:
        argv.append("--enable-auto-tool-choice")
    if s.tool_calling.parser:
        argv += ["--tool-call-parser", s.tool_calling.parser]
    argv += translate(list(s.extra_args), version, notices)
    return Command(argv, notices)


def _task(task: str, version: Version | None) -> list[str]:
    if task in ("auto", "generate"):
        return (
            []
            if task == "auto"
            else (["--runner", "generate"] if _since(version, RUNNER_SINCE) else [])
        )
    if not _since(version, RUNNER_SINCE):
        return ["--task", "embed" if task == "embed" else task]
    return ["--runner", "pooling", "--convert", _CONVERT[task]]


def _lora(model: Model) -> list[str]:
    lora = model.vllm.lora
    if not (lora.enabled or lora.modules):
        return []
    out = ["--enable-lora"]
    if lora.max_loras:
        out += ["--max-loras", str(lora.max_loras)]
    if lora.max_lora_rank:
        out += ["--max-lora-rank", str(lora.max_lora_rank)]
    if lora.modules:
        out += ["--lora-modules", *(f"{k}={v}" for k, v in lora.modules.items())]
    return out


def translate(args: list[str], version: Version | None, notices: list[str]) -> list[str]:
    """Rewrite flags the target vLLM no longer takes; everything else passes unchanged."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        flag = word.split("=", 1)[0].replace("_", "-")
        if flag == "--disable-log-requests" and _since(version, QUIET_LOGS_SINCE):
            notices.append(
                "--disable-log-requests dropped: vLLM >= 0.10.2 logs no requests "
                "unless --enable-log-requests is given"
            )
            i += 1
            continue
        if flag == "--cuda-graph-sizes" and _since(version, CAPTURE_SIZES_SINCE):
            sizes, i = _values(args, i)
            if len(sizes) == 1:
                out += ["--max-cudagraph-capture-size", sizes[0]]
                new = f"--max-cudagraph-capture-size {sizes[0]}"
            else:
                out += ["--cudagraph-capture-sizes", *sizes]
                new = "--cudagraph-capture-sizes " + " ".join(sizes)
            notices.append(f"--cuda-graph-sizes {' '.join(sizes)} is now {new} (vLLM >= 0.11.1)")
            continue
        out.append(word)
        i += 1
    return out


def _values(args: list[str], i: int) -> tuple[list[str], int]:
    """The values of a multi-value flag at args[i] and the index after them."""
    word = args[i]
    if "=" in word:
        return word.split("=", 1)[1].replace(",", " ").split(), i + 1
    j = i + 1
    while j < len(args) and not args[j].startswith("-"):
        j += 1
    return args[i + 1 : j], j
