"""The `vfleet` command: a group whose subcommands are imported only when they run.

`vfleet router` is defined here (its imports are inside it); every other command lives with
the package it drives and is named in `LAZY`.
"""

from __future__ import annotations

import importlib

import click

from vfleet import __version__

# Commands owned by other packages, imported only when run: `vfleet router` and `vfleet sim`
# must not pay for pydantic, rich, the Hub and S3 clients or the Helm SDK (memory, start-up),
# and the router must not load the simulator or ZeroMQ (tests/test_layering.py checks).
LAZY = {
    "sim": "vfleet.sim.command:sim",
    "up": "vfleet.local.commands:up",
    "down": "vfleet.local.control:down",
    "status": "vfleet.local.control:status",
    "logs": "vfleet.local.control:logs",
    "spec": "vfleet.fleetspec.commands:spec",
    "k8s": "vfleet.kube.commands:k8s",
    "download": "vfleet.download.command:download",
    "bench": "vfleet.bench.command:bench",
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
            raise click.BadParameter(
                f"{model}={value}: expected SECONDS[,MAX_QUEUED]", param_hint="--model-hold"
            ) from exc
        out[model] = over
    return out


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML file with any of the settings below (flags win).",
)
@click.option("--backend", multiple=True, help="Engine URL, optionally =MODEL[,MODEL].")
@click.option("--endpoints-file", default=None, help="Endpoint list, re-read when it changes.")
@click.option("--endpoints-url", default=None, help="HTTP feed of endpoints (JSON), polled.")
@click.option("--policy", default=None, help="round_robin, least_load, session, prefix or kv.")
@click.option("--model-policy", multiple=True, help="MODEL=POLICY for one model.")
@click.option(
    "--kv-events",
    multiple=True,
    help="URL=ZMQ_ENDPOINT: the KV-event publisher of the engine at URL (the kv policy).",
)
@click.option("--alias", multiple=True, help="ALIAS=MODEL: another name for a served model.")
@click.option(
    "--model",
    "models",
    multiple=True,
    help="A served name to answer for even with no engine up: its requests are held "
    "until one is ready (demand: what wakes a model scaled to zero).",
)
@click.option(
    "--hold-timeout",
    type=float,
    default=None,
    help="Seconds a request waits for an engine, then 503 (300; 0: off).",
)
@click.option(
    "--hold-max-queued",
    type=int,
    default=None,
    help="Requests held per model and worker; more get 429 (1000).",
)
@click.option(
    "--model-hold", multiple=True, help="MODEL=SECONDS[,MAX_QUEUED]: hold limits for one model."
)
@click.option(
    "--api-key",
    multiple=True,
    help="Key clients must send; shows in ps: prefer --api-key-file or env VFLEET_API_KEYS.",
)
@click.option("--api-key-file", default=None, help="File of client keys, one per line.")
@click.option(
    "--tenants-file",
    default=None,
    help="YAML/JSON of named keys: model allowlists, request/token budgets (re-read on change).",
)
@click.option(
    "--admin-key-file", default=None, help="File of admin keys for /metrics (env VFLEET_ADMIN_KEY)."
)
@click.option(
    "--backend-api-key",
    default=None,
    help="Key the router sends to engines (env VFLEET_BACKEND_API_KEY).",
)
@click.option("--tls-cert", default=None, help="PEM certificate chain: serve HTTPS.")
@click.option("--tls-key", default=None, help="PEM private key of --tls-cert.")
@click.option("--rate-limit", type=float, default=None, help="Requests per key per minute.")
@click.option(
    "--token-limit", type=float, default=None, help="Tokens (engines' usage) per key per minute."
)
@click.option("--host", default=None, help="Default 127.0.0.1.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Default 8000.")
@click.option("--workers", type=int, default=None, help="Processes on one port (SO_REUSEPORT).")
@click.option("--max-body-mb", type=float, default=None, help="Larger bodies get 413 (32).")
@click.option("--connect-timeout", type=float, default=None, help="Seconds (5).")
@click.option("--first-byte-timeout", type=float, default=None, help="Seconds (600).")
@click.option("--idle-timeout", type=float, default=None, help="Seconds between chunks (300).")
@click.option("--attempts", type=int, default=None, help="Endpoints tried per request (3).")
@click.option(
    "--retry-5xx/--no-retry-5xx",
    "retry_5xx",
    default=None,
    help="Retry a 500 (any 5xx) before a byte is relayed, not only 502/503/504 (off).",
)
@click.option(
    "--breaker/--no-breaker",
    default=None,
    help="Eject engines whose requests fail too often (circuit breaker; on).",
)
@click.option(
    "--breaker-error-rate", type=float, default=None, help="Failed fraction that ejects (0.5)."
)
@click.option(
    "--breaker-min-requests", type=int, default=None, help="Requests judged at least (20)."
)
@click.option("--breaker-window", type=float, default=None, help="Seconds of requests judged (10).")
@click.option(
    "--breaker-cooldown",
    type=float,
    default=None,
    help="Seconds ejected, doubled per trip in a row (5).",
)
@click.option("--breaker-max-cooldown", type=float, default=None, help="Cap on the cool-down (60).")
@click.option("--health-interval", type=float, default=None, help="Seconds between probes (2).")
@click.option("--k8s-selector", default=None, help="Kubernetes discovery: engine pods' labels.")
@click.option("--k8s-namespace", default=None, help="Their namespace (default: kubeconfig's).")
@click.option(
    "--k8s-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of pods naming none (8000).",
)
@click.option("--k8s-model-label", default=None, help="Label naming a pod's model.")
@click.option("--k8s-resync", type=float, default=None, help="Seconds between pod relists (30).")
@click.option("--k8s-api-url", default=None, help="API server URL instead of kubeconfig.")
@click.option(
    "--keda-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve KEDA's external scaler (gRPC) on this port.",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    help="Another router replica (https://HOST:PORT or http://…): demand and key usage are shared.",
)
@click.option(
    "--k8s-peer-selector",
    default=None,
    help="Label selector of the router pods (peers: demand and key usage are shared).",
)
@click.option(
    "--peer-ca",
    default=None,
    help="CA bundle HTTPS peers are verified against (default: exactly --tls-cert's certificate).",
)
@click.option(
    "--peer-tls-name",
    default=None,
    help="Name HTTPS peers' certificates must hold with --peer-ca (default: the peer's host).",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    help="OTLP/HTTP collector (http://HOST:4318): one trace span per proxied request.",
)
@click.option(
    "--metrics-grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds a departed endpoint's metric series are kept (60).",
)
@click.option(
    "--client-header-timeout",
    type=float,
    default=None,
    help="Seconds a client may take to send a request head (20); then 408.",
)
@click.option(
    "--client-body-timeout",
    type=float,
    default=None,
    help="Seconds of silence allowed while a body arrives (60); then 408.",
)
@click.option(
    "--keepalive-timeout",
    type=float,
    default=None,
    help="Idle client connections are closed after this many seconds (75).",
)
@click.option(
    "--max-connections",
    type=int,
    default=None,
    help="Client connections per router process (10000); beyond: 503.",
)
def router(
    config_file: str | None,
    backend: tuple[str, ...],
    endpoints_file: str | None,
    endpoints_url: str | None,
    policy: str | None,
    model_policy: tuple[str, ...],
    kv_events: tuple[str, ...],
    alias: tuple[str, ...],
    models: tuple[str, ...],
    hold_timeout: float | None,
    hold_max_queued: int | None,
    model_hold: tuple[str, ...],
    api_key: tuple[str, ...],
    api_key_file: str | None,
    tenants_file: str | None,
    admin_key_file: str | None,
    backend_api_key: str | None,
    tls_cert: str | None,
    tls_key: str | None,
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
    retry_5xx: bool | None,
    breaker: bool | None,
    breaker_error_rate: float | None,
    breaker_min_requests: int | None,
    breaker_window: float | None,
    breaker_cooldown: float | None,
    breaker_max_cooldown: float | None,
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
    peer_ca: str | None,
    peer_tls_name: str | None,
    otlp_endpoint: str | None,
    metrics_grace: float | None,
    client_header_timeout: float | None,
    client_body_timeout: float | None,
    keepalive_timeout: float | None,
    max_connections: int | None,
) -> None:
    """Run the OpenAI-compatible router in front of engines."""
    from vfleet.router.app import run, uses_kv
    from vfleet.router.config import (
        KubeSettingsError,
        RouterConfig,
        env_admin_keys,
        env_api_keys,
        env_backend_api_key,
        load_config_file,
        parse_backend,
        parse_kv_events,
        read_key_file,
        with_kv_events,
    )
    from vfleet.router.tls import load_context

    if api_key or backend_api_key:
        # Any local user can read a process's arguments (ps, /proc/PID/cmdline).
        click.echo(
            "vfleet router: warning: a key given as a flag is visible to every local "
            "user (ps); use --api-key-file, VFLEET_API_KEYS or VFLEET_BACKEND_API_KEY",
            err=True,
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
            "admin_keys": (read_key_file(admin_key_file) if admin_key_file else ())
            or env_admin_keys()
            or None,
            "backend_api_key": backend_api_key or env_backend_api_key(),
            "tenants_file": tenants_file,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
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
            "retry_5xx": retry_5xx,
            "breaker": breaker,
            "breaker_error_rate": breaker_error_rate,
            "breaker_min_requests": breaker_min_requests,
            "breaker_window_s": breaker_window,
            "breaker_cooldown_s": breaker_cooldown,
            "breaker_max_cooldown_s": breaker_max_cooldown,
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
            "peer_ca": peer_ca,
            "peer_tls_name": peer_tls_name,
            "otlp_endpoint": otlp_endpoint,
            "metrics_grace_s": metrics_grace,
            "client_header_timeout_s": client_header_timeout,
            "client_body_timeout_s": client_body_timeout,
            "keepalive_timeout_s": keepalive_timeout,
            "max_connections": max_connections,
        }
        settings.update({k: v for k, v in flags.items() if v is not None})
        if kv_events:
            publishers = {**settings.get("kv_events", {}), **parse_kv_events(kv_events)}
            settings["kv_events"] = publishers
            settings["backends"] = with_kv_events(settings.get("backends", ()), publishers)
        cfg = RouterConfig(**settings)
        if not (cfg.backends or cfg.endpoints_file or cfg.endpoints_url or cfg.k8s_selector):
            raise ValueError(
                "no engines: give --backend URL, --endpoints-file, --endpoints-url,"
                " --k8s-selector or a --config"
            )
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            load_context(cfg.tls_cert, cfg.tls_key)  # unreadable or mismatched: say so now
        if (cfg.keda_port is not None or cfg.shares_limits) and (cfg.peer_ca or cfg.tls_cert):
            from vfleet.router.keda.peertls import PeerTls

            PeerTls(cfg.peer_ca, cfg.tls_cert).context()  # what peers are verified against
        if cfg.tenants_file is not None:
            from vfleet.router.tenants import read_key_file as read_tenants

            read_tenants(cfg.tenants_file)  # unreadable or invalid: say so now, in one line
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    kv_feed = None
    if uses_kv(cfg):  # only then is ZeroMQ loaded: the subscriber is the one module using it
        from vfleet.kvsub import KvFeed

        kv_feed = KvFeed
    try:
        run(cfg, kv_feed)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
        ) from exc
    except KubeSettingsError as exc:  # found before serving
        raise click.ClickException(str(exc)) from exc
