"""`vfleet sim`: the simulated engine's command line, vLLM's flags plus the simulator's own.

Imported only when `vfleet sim` runs (`vfleet.cli` loads each command lazily), so that the
router and the other commands do not load the simulator or ZeroMQ.
"""

from __future__ import annotations

import os

import click
import zmq

from vfleet.sim.config import TASKS, SimConfig
from vfleet.sim.faults import FaultConfig
from vfleet.sim.gpushare import GpuShareError
from vfleet.sim.kvevents import KVEventsConfig
from vfleet.sim.profiles import PROFILES, LatencyProfile, custom_profile
from vfleet.sim.scheduler import SchedulerConfig


def _profile(name: str, costs: tuple[float | None, ...]) -> LatencyProfile:
    if all(c is None for c in costs):
        return PROFILES[name]
    base = PROFILES[name]
    defaults = (
        base.step_base_s,
        base.per_seq_s,
        base.prefill_token_s,
        base.context_token_s,
        base.request_overhead_s,
    )
    vals = [d if c is None else c for c, d in zip(costs, defaults, strict=True)]
    return custom_profile(*vals)


def _lora_modules(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r} is not NAME=PATH", param_hint="--lora-modules")
        out.append((name, path))
    return tuple(out)


@click.command()
@click.option("--model", required=True, help="Model name or path (reported as the model root).")
@click.option("--served-model-name", multiple=True, help="Name(s) clients use; default --model.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--task", type=click.Choice(TASKS), default=None, help="Default: generate.")
@click.option(
    "--runner",
    type=click.Choice(["generate", "pooling"]),
    default=None,
    help="vLLM-style: pooling means --task embed.",
)
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="small", show_default=True)
@click.option("--step-base-ms", type=float, default=None, help="Override: ms per step.")
@click.option("--per-seq-ms", type=float, default=None, help="Override: ms per sequence in a step.")
@click.option("--prefill-token-us", type=float, default=None, help="Override: us per prompt token.")
@click.option(
    "--context-token-ns", type=float, default=None, help="Override: ns per context token."
)
@click.option(
    "--request-overhead-ms",
    type=float,
    default=None,
    help="Override: ms from arrival until a request can be scheduled.",
)
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Wall seconds per modelled second (0.1 runs 10x faster).",
)
@click.option("--max-model-len", type=int, default=4096, show_default=True)
@click.option("--max-num-seqs", type=int, default=256, show_default=True)
@click.option("--max-num-batched-tokens", type=int, default=8192, show_default=True)
@click.option("--num-gpu-blocks", type=int, default=8192, show_default=True)
@click.option("--block-size", type=int, default=16, show_default=True)
@click.option("--enable-prefix-caching/--no-enable-prefix-caching", default=True, show_default=True)
@click.option("--gpu-memory-utilization", type=float, default=0.9, show_default=True)
@click.option("--api-key", multiple=True, help="Required bearer key for /v1 (env VLLM_API_KEY).")
@click.option("--enable-server-load-tracking", is_flag=True)
@click.option("--kv-events-config", default=None, help="JSON, as vLLM's --kv-events-config.")
@click.option("--lora-modules", multiple=True, help="NAME=PATH adapters loaded at start.")
@click.option(
    "--enable-lora", is_flag=True, help="Export LoRA metrics (implied by --lora-modules)."
)
@click.option("--max-loras", type=int, default=8, show_default=True)
@click.option(
    "--output-len-mean",
    type=int,
    default=128,
    show_default=True,
    help="Mean generation length when EOS is not ignored.",
)
@click.option(
    "--embedding-dim",
    type=int,
    default=None,
    help="Vector size; default: the model's own when known (e.g. BAAI/bge-m3: 1024), else 384.",
)
@click.option(
    "--enable-auto-tool-choice",
    is_flag=True,
    help='As vLLM: allow tool_choice "auto" (the simulated model then answers with text).',
)
@click.option("--tool-call-parser", default=None, help="As vLLM (accepted; the sim needs none).")
@click.option(
    "--responses-store-size",
    type=int,
    default=1024,
    show_default=True,
    help="Stored /v1/responses answers kept for previous_response_id (least recent dropped).",
)
@click.option(
    "--shared-gpu",
    type=click.Path(dir_okay=False),
    default=None,
    help="File naming the (simulated) GPU this engine shares: engines given the same file "
    "time-slice it, each step taking as many times longer as they are busy.",
)
@click.option(
    "--tokenizer",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Model directory (tokenizer.json, tokenizer_config.json with a chat_template) whose "
    "tokenizer encodes prompts, reported as the model's root. Default: the sim's 4-byte pieces.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--error-rate", type=float, default=0.0, help="Fault: fraction answered with 500.")
@click.option("--hang-rate", type=float, default=0.0, help="Fault: fraction never answered.")
@click.option("--crash-after-requests", type=int, default=0, help="Fault: exit at the Nth request.")
@click.option("--crash-after-seconds", type=float, default=0.0, help="Fault: exit after T s.")
@click.option("--drop-stream-after-chunks", type=int, default=0, help="Fault: cut streams.")
@click.option("--health-failing", is_flag=True, help="Fault: /health answers 503.")
@click.option("--startup-delay", type=float, default=0.0, help="Seconds before the port opens.")
def sim(
    model: str,
    served_model_name: tuple[str, ...],
    host: str,
    port: int,
    task: str | None,
    runner: str | None,
    profile: str,
    step_base_ms: float | None,
    per_seq_ms: float | None,
    prefill_token_us: float | None,
    context_token_ns: float | None,
    request_overhead_ms: float | None,
    time_scale: float,
    max_model_len: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    num_gpu_blocks: int,
    block_size: int,
    enable_prefix_caching: bool,
    gpu_memory_utilization: float,
    api_key: tuple[str, ...],
    enable_server_load_tracking: bool,
    kv_events_config: str | None,
    lora_modules: tuple[str, ...],
    enable_lora: bool,
    max_loras: int,
    output_len_mean: int,
    embedding_dim: int | None,
    enable_auto_tool_choice: bool,
    tool_call_parser: str | None,
    responses_store_size: int,
    shared_gpu: str | None,
    tokenizer: str | None,
    seed: int,
    error_rate: float,
    hang_rate: float,
    crash_after_requests: int,
    crash_after_seconds: float,
    drop_stream_after_chunks: int,
    health_failing: bool,
    startup_delay: float,
) -> None:
    """Run a vLLM-compatible simulated engine (no GPU needed)."""
    from vfleet.sim.app import run
    from vfleet.sim.embed import dim_for

    costs = (
        None if step_base_ms is None else step_base_ms * 1e-3,
        None if per_seq_ms is None else per_seq_ms * 1e-3,
        None if prefill_token_us is None else prefill_token_us * 1e-6,
        None if context_token_ns is None else context_token_ns * 1e-9,
        None if request_overhead_ms is None else request_overhead_ms * 1e-3,
    )
    keys = api_key or ((os.environ["VLLM_API_KEY"],) if os.environ.get("VLLM_API_KEY") else ())
    try:
        cfg = SimConfig(
            served_names=served_model_name or (model,),
            model_path=model,
            profile=_profile(profile, costs),
            scheduler=SchedulerConfig(
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                num_gpu_blocks=num_gpu_blocks,
                block_size=block_size,
                max_model_len=max_model_len,
                enable_prefix_caching=enable_prefix_caching,
            ),
            host=host,
            port=port,
            task=task or ("embed" if runner == "pooling" else "generate"),
            time_scale=time_scale,
            output_len_mean=output_len_mean,
            embedding_dim=dim_for(model) if embedding_dim is None else embedding_dim,
            enable_auto_tool_choice=enable_auto_tool_choice,
            tool_call_parser=tool_call_parser,
            responses_store_size=responses_store_size,
            api_keys=keys,
            enable_server_load_tracking=enable_server_load_tracking,
            kv_events=KVEventsConfig.parse(kv_events_config)
            if kv_events_config
            else KVEventsConfig(),
            faults=FaultConfig(
                error_rate=error_rate,
                hang_rate=hang_rate,
                crash_after_requests=crash_after_requests,
                crash_after_s=crash_after_seconds,
                drop_stream_after_chunks=drop_stream_after_chunks,
                health_failing=health_failing,
                startup_delay_s=startup_delay,
            ),
            lora_modules=_lora_modules(lora_modules),
            enable_lora=enable_lora or bool(lora_modules),
            max_loras=max_loras,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            shared_gpu=shared_gpu,
            tokenizer=tokenizer,
        )
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        run(cfg)
    except GpuShareError as exc:  # unreadable file, or a GPU of more engines than it holds
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # port in use, bad host
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    except zmq.ZMQError as exc:  # KV-event endpoints: taken, or an unknown transport
        raise click.ClickException(f"cannot open KV-event endpoints: {exc}") from exc
