"""The simulator's settings, read once from the command line into one typed object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from vfleet.http.limits import EdgeLimits
from vfleet.sim.faults import FaultConfig
from vfleet.sim.kvevents import KVEventsConfig
from vfleet.sim.profiles import LatencyProfile
from vfleet.sim.scheduler import SchedulerConfig

TASKS = ("generate", "embed", "classify")
MAX_N_SEQUENCES = 16384  # vLLM's default VLLM_MAX_N_SEQUENCES: the largest `n` it accepts


@dataclass(frozen=True, slots=True)
class SimConfig:
    served_names: tuple[str, ...]  # the first is the primary name, as with --served-model-name
    model_path: str  # reported as `root` in /v1/models
    profile: LatencyProfile
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    task: str = "generate"  # generate | embed | classify (cross-encoder scores)
    time_scale: float = 1.0  # wall seconds per modelled second
    output_len_mean: int = 128  # mean natural generation length when EOS is not ignored
    embedding_dim: int = 384
    api_keys: tuple[str, ...] = ()
    enable_server_load_tracking: bool = False
    kv_events: KVEventsConfig = field(default_factory=KVEventsConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, path) loaded at start
    enable_lora: bool = False  # as vLLM's --enable-lora: exports vllm:lora_requests_info
    max_loras: int = 8
    gpu_memory_utilization: float = 0.9  # reported in cache_config_info only
    seed: int = 0
    max_n_sequences: int = MAX_N_SEQUENCES  # as vLLM's VLLM_MAX_N_SEQUENCES
    edge: EdgeLimits = field(default_factory=EdgeLimits)  # HTTP limits at the client edge
    # as vLLM's --enable-auto-tool-choice: without it, tool_choice "auto" is refused
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    responses_store_size: int = 1024  # stored /v1/responses answers kept (least recent go)
    shared_gpu: str | None = None  # file naming the GPU this engine time-slices (sim.gpushare)
    # a model directory whose tokenizer encodes prompts (sim.hftok; None: sim.tokenizer's pieces)
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if not self.served_names or not all(self.served_names):
            raise ValueError("a served model name is required")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        if self.output_len_mean < 1 or self.embedding_dim < 1:
            raise ValueError("output_len_mean and embedding_dim must be >= 1")
        if self.max_n_sequences < 1:
            raise ValueError("max_n_sequences must be >= 1")
        if self.responses_store_size < 0:
            raise ValueError("responses_store_size must be >= 0")

    @property
    def name(self) -> str:
        return self.served_names[0]

    @property
    def generates(self) -> bool:
        return self.task == "generate"

    def cache_info(self) -> dict[str, str]:
        """Labels of vllm:cache_config_info, with the values vLLM would report."""
        s = self.scheduler
        tokens = s.num_gpu_blocks * s.block_size
        return {
            "block_size": str(s.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": str(s.enable_prefix_caching),
            "gpu_memory_utilization": str(self.gpu_memory_utilization),
            "is_attention_free": "False",
            "kv_cache_max_concurrency": str(tokens / s.max_model_len),
            "kv_cache_size_tokens": str(tokens),
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(s.num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "sha256",
            "sliding_window": "None",
        }


def with_environment(cfg: SimConfig, environ: Mapping[str, str]) -> SimConfig:
    """`cfg` with the settings vLLM reads from its environment (VLLM_MAX_N_SEQUENCES)."""
    raw = environ.get("VLLM_MAX_N_SEQUENCES")
    if raw is None or not raw.strip():
        return cfg
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"VLLM_MAX_N_SEQUENCES must be an integer, got {raw!r}") from None
    return replace(cfg, max_n_sequences=value)
