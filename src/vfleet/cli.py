"""The `vfleet` command."""

from __future__ import annotations

import importlib
import os

import click
import zmq

from vfleet import __version__
from vfleet.sim.config import TASKS, SimConfig
from vfleet.sim.faults import FaultConfig
from vfleet.sim.kvevents import KVEventsConfig
from vfleet.sim.profiles import PROFILES, LatencyProfile, custom_profile
from vfleet.sim.scheduler import SchedulerConfig

# Commands owned by other packages, imported only when run: `vfleet router` and `vfleet sim`
# must not pay for pydantic, rich, the Hub and S3 clients or the Helm SDK (memory, start-up).
LAZY = {
    "up": "vfleet.local.commands:up",
    "down": "vfleet.local.commands:down",
    "status": "vfleet.local.commands:status",
    "logs": "vfleet.local.commands:logs",
    "spec": "vfleet.fleetspec.commands:spec",
    "k8s": "vfleet.kube.commands:k8s",
    "download": "vfleet.download.command:download",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY:
            module, _, attr = LAZY[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="vfleet")
def main() -> None:
    """vfleet: serve a fleet of vLLM engines behind one OpenAI-compatible endpoint."""


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


@main.command()
@click.option("--model", required=True, help="Model name or path (reported as the model root).")
@click.option("--served-model-name", multiple=True, help="Name(s) clients use; default --model.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--task", type=click.Choice(TASKS), default=None, help="Default: generate.")
@click.option("--runner", type=click.Choice(["generate", "pooling"]), default=None,
              help="vLLM-style: pooling means --task embed.")  # fmt: skip
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
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="Wall seconds per modelled second (0.1 runs 10x faster).")  # fmt: skip
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
@click.option("--output-len-mean", type=int, default=128, show_default=True,
              help="Mean generation length when EOS is not ignored.")  # fmt: skip
@click.option("--embedding-dim", type=int, default=384, show_default=True)
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
    embedding_dim: int,
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
            embedding_dim=embedding_dim,
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
        )
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        run(cfg)
    except OSError as exc:  # port in use, bad host
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    except zmq.ZMQError as exc:  # KV-event endpoints: taken, or an unknown transport
        raise click.ClickException(f"cannot open KV-event endpoints: {exc}") from exc


def _pairs(items: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=flag)
        out[key] = value
    return out


def _model_holds(items: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """--model-hold MODEL=SECONDS[,MAX_QUEUED] values as RouterConfig.model_hold."""
    out: dict[str, dict[str, float]] = {}
    for model, value in _pairs(items, "--model-hold").items():
        timeout, _, queued = value.partition(",")
        try:
            over = {"timeout_s": float(timeout)}
            if queued:
                over["max_queued"] = int(queued)
        except ValueError as exc:
            raise click.BadParameter(f"{model}={value}: expected SECONDS[,MAX_QUEUED]",
                                     param_hint="--model-hold") from exc  # fmt: skip
        out[model] = over
    return out


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file with any of the settings below (flags win).")  # fmt: skip
@click.option("--backend", multiple=True, help="Engine URL, optionally =MODEL[,MODEL].")
@click.option("--endpoints-file", default=None, help="Endpoint list, re-read when it changes.")
@click.option("--endpoints-url", default=None, help="HTTP feed of endpoints (JSON), polled.")
@click.option("--policy", default=None, help="round_robin, least_load, session or prefix.")
@click.option("--model-policy", multiple=True, help="MODEL=POLICY for one model.")
@click.option("--alias", multiple=True, help="ALIAS=MODEL: another name for a served model.")
@click.option("--model", "models", multiple=True,
              help="A served name to answer for even with no engine up: its requests are held "
              "until one is ready (demand: what wakes a model scaled to zero).")  # fmt: skip
@click.option("--hold-timeout", type=float, default=None,
              help="Seconds a request waits for an engine, then 503 (300; 0: off).")  # fmt: skip
@click.option("--hold-max-queued", type=int, default=None,
              help="Requests held per model and worker; more get 429 (1000).")  # fmt: skip
@click.option("--model-hold", multiple=True,
              help="MODEL=SECONDS[,MAX_QUEUED]: hold limits for one model.")  # fmt: skip
@click.option("--api-key", multiple=True, help="Key clients must send (env VFLEET_API_KEYS).")
@click.option("--api-key-file", default=None, help="File of client keys, one per line.")
@click.option("--backend-api-key", default=None, help="Key the router sends to engines.")
@click.option("--rate-limit", type=float, default=None, help="Requests per key per minute.")
@click.option("--token-limit", type=float, default=None,
              help="Estimated tokens per key per minute.")  # fmt: skip
@click.option("--host", default=None, help="Default 127.0.0.1.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Default 8000.")
@click.option("--workers", type=int, default=None, help="Processes on one port (SO_REUSEPORT).")
@click.option("--max-body-mb", type=float, default=None, help="Larger bodies get 413 (32).")
@click.option("--connect-timeout", type=float, default=None, help="Seconds (5).")
@click.option("--first-byte-timeout", type=float, default=None, help="Seconds (600).")
@click.option("--idle-timeout", type=float, default=None, help="Seconds between chunks (300).")
@click.option("--attempts", type=int, default=None, help="Endpoints tried per request (3).")
@click.option("--health-interval", type=float, default=None, help="Seconds between probes (2).")
@click.option("--k8s-selector", default=None, help="Kubernetes discovery: engine pods' labels.")
@click.option("--k8s-namespace", default=None, help="Their namespace (default: kubeconfig's).")
@click.option("--k8s-port", type=click.IntRange(1, 65535), default=None,
              help="Port of pods naming none (8000).")  # fmt: skip
@click.option("--k8s-model-label", default=None, help="Label naming a pod's model.")
@click.option("--k8s-resync", type=float, default=None, help="Seconds between pod relists (30).")
@click.option("--k8s-api-url", default=None, help="API server URL instead of kubeconfig.")
@click.option("--keda-port", type=click.IntRange(0, 65535), default=None,
              help="Serve KEDA's external scaler (gRPC) on this port.")  # fmt: skip
@click.option("--peer", "peers", multiple=True,
              help="Another router replica (http://HOST:PORT) to add demand from.")  # fmt: skip
@click.option("--k8s-peer-selector", default=None,
              help="Label selector of the router pods whose demand the scaler adds.")  # fmt: skip
@click.option("--client-header-timeout", type=float, default=None,
              help="Seconds a client may take to send a request head (20); then 408.")  # fmt: skip
@click.option("--client-body-timeout", type=float, default=None,
              help="Seconds of silence allowed while a body arrives (60); then 408.")  # fmt: skip
@click.option("--keepalive-timeout", type=float, default=None,
              help="Idle client connections are closed after this many seconds (75).")  # fmt: skip
@click.option("--max-connections", type=int, default=None,
              help="Client connections per router process (10000); beyond: 503.")  # fmt: skip
def router(
    config_file: str | None,
    backend: tuple[str, ...],
    endpoints_file: str | None,
    endpoints_url: str | None,
    policy: str | None,
    model_policy: tuple[str, ...],
    alias: tuple[str, ...],
    models: tuple[str, ...],
    hold_timeout: float | None,
    hold_max_queued: int | None,
    model_hold: tuple[str, ...],
    api_key: tuple[str, ...],
    api_key_file: str | None,
    backend_api_key: str | None,
    rate_limit: float | None,
    token_limit: float | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    max_body_mb: float | None,
    connect_timeout: float | None,
    first_byte_timeout: float | None,
    idle_timeout: float | None,
    attempts: int | None,
    health_interval: float | None,
    k8s_selector: str | None,
    k8s_namespace: str | None,
    k8s_port: int | None,
    k8s_model_label: str | None,
    k8s_resync: float | None,
    k8s_api_url: str | None,
    keda_port: int | None,
    peers: tuple[str, ...],
    k8s_peer_selector: str | None,
    client_header_timeout: float | None,
    client_body_timeout: float | None,
    keepalive_timeout: float | None,
    max_connections: int | None,
) -> None:
    """Run the OpenAI-compatible router in front of engines."""
    from vfleet.router.app import run
    from vfleet.router.config import (
        KubeSettingsError,
        RouterConfig,
        env_api_keys,
        load_config_file,
        parse_backend,
        read_key_file,
    )

    try:
        settings = load_config_file(config_file) if config_file else {}
        flags: dict[str, object] = {
            "backends": tuple(parse_backend(b) for b in backend) or None,
            "endpoints_file": endpoints_file,
            "endpoints_url": endpoints_url,
            "policy": policy,
            "model_policies": _pairs(model_policy, "--model-policy") or None,
            "aliases": _pairs(alias, "--alias") or None,
            "models": models or None,
            "hold_timeout_s": hold_timeout,
            "hold_max_queued": hold_max_queued,
            "model_hold": _model_holds(model_hold) or None,
            "api_keys": (api_key + (read_key_file(api_key_file) if api_key_file else ()))
            or env_api_keys()
            or None,
            "backend_api_key": backend_api_key,
            "rate_limit_per_minute": rate_limit,
            "token_limit_per_minute": token_limit,
            "host": host,
            "port": port,
            "workers": workers,
            "max_body_bytes": None if max_body_mb is None else int(max_body_mb * 2**20),
            "connect_timeout_s": connect_timeout,
            "first_byte_timeout_s": first_byte_timeout,
            "idle_timeout_s": idle_timeout,
            "attempts": attempts,
            "health_interval_s": health_interval,
            "k8s_selector": k8s_selector,
            "k8s_namespace": k8s_namespace,
            "k8s_port": k8s_port,
            "k8s_model_label": k8s_model_label,
            "k8s_resync_s": k8s_resync,
            "k8s_api_url": k8s_api_url,
            "keda_port": keda_port,
            "peers": tuple(p.rstrip("/") for p in peers) or None,
            "k8s_peer_selector": k8s_peer_selector,
            "client_header_timeout_s": client_header_timeout,
            "client_body_timeout_s": client_body_timeout,
            "keepalive_timeout_s": keepalive_timeout,
            "max_connections": max_connections,
        }
        settings.update({k: v for k, v in flags.items() if v is not None})
        cfg = RouterConfig(**settings)
        if not (cfg.backends or cfg.endpoints_file or cfg.endpoints_url or cfg.k8s_selector):
            raise ValueError("no engines: give --backend URL, --endpoints-file, --endpoints-url,"
                             " --k8s-selector or a --config")  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        run(cfg)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
        ) from exc
    except KubeSettingsError as exc:  # found before serving
        raise click.ClickException(str(exc)) from exc
