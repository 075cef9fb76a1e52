"""The router's settings: flags and an optional YAML file, read once into one typed object."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from vfleet.http.limits import EdgeLimits
from vfleet.router.breaker import BreakerPolicy
from vfleet.router.kvwire import MAX_RANKS
from vfleet.router.policies import POLICY_NAMES
from vfleet.router.sharedmetrics import ENDPOINT_GRACE_S
from vfleet.router.tracing import traces_url


class KubeSettingsError(ValueError):
    """Kubernetes discovery is asked for but its connection settings cannot be found or used."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    url: str  # http://host:port
    models: tuple[str, ...] = ()  # empty: learn them from the engine's /v1/models
    starting: bool = False  # registered but not served until its /health answers 200
    # The engine's KV-cache event publisher (ZMQ PUB, vLLM's wire format), e.g.
    # tcp://127.0.0.1:5557: the `kv` policy subscribes to it. None: the engine publishes none.
    kv_events: str | None = None
    # Its data-parallel ranks (vLLM `--data-parallel-size`): rank r publishes at kv_events' port
    # + r (`router.kvwire`), and the kv policy pins a request to the rank holding its prefix.
    kv_ranks: int = 1


@dataclass(frozen=True, slots=True)
class RouterConfig:
    backends: tuple[BackendSpec, ...] = ()
    endpoints_file: str | None = None  # JSON/YAML list re-read when it changes (supervisor feed)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    policy: str = "least_load"
    model_policies: dict[str, str] = field(default_factory=dict)
    # KV-event publishers of engines by URL, for engines from any source (endpoints file, feed,
    # discovery) that do not name their own; a static backend's own `kv_events` wins.
    kv_events: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    api_keys: tuple[str, ...] = ()
    # Keys for what describes the fleet (/metrics: engine URLs, models, load; /ui): when set,
    # only these open it. Unset: open while client keys are off, else closed to all (401).
    admin_keys: tuple[str, ...] = ()
    backend_api_key: str | None = None
    # TLS on the listening port: PEM certificate chain and private key, re-read when either
    # file changes (checked every tls_reload_s; connections made after a reload get the new
    # certificate, open ones keep theirs).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_reload_s: float = 10.0
    rate_limit_per_minute: float = 0.0  # requests per API key per minute; 0 = no limit
    # tokens per API key per minute, reserved by estimate, charged from engines' usage; 0 = none
    token_limit_per_minute: float = 0.0
    # Named keys with model allowlists and budgets (router.tenants), re-read when it changes.
    tenants_file: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 600.0
    idle_timeout_s: float = 300.0
    attempts: int = 3
    # Per-model overrides of connect_timeout_s, first_byte_timeout_s, idle_timeout_s, attempts.
    model_timeouts: dict[str, dict[str, float]] = field(default_factory=dict)
    retry_5xx: bool = False  # retry any 5xx before a byte is relayed, not only 502/503/504
    # The circuit breaker on engine errors (router.breaker): an engine whose failures reach
    # breaker_error_rate of at least breaker_min_requests requests in the last breaker_window_s
    # seconds is ejected for breaker_cooldown_s, doubled per trip in a row up to
    # breaker_max_cooldown_s, then gets one trial request. breaker False: off.
    breaker: bool = True
    breaker_error_rate: float = 0.5
    breaker_min_requests: int = 20
    breaker_window_s: float = 10.0
    breaker_cooldown_s: float = 5.0
    breaker_max_cooldown_s: float = 60.0
    endpoints_url: str | None = None  # an HTTP feed of endpoints (JSON list), polled
    health_interval_s: float = 2.0
    drain_timeout_s: float = 30.0  # on SIGTERM: stop accepting, wait this long for in-flight
    # Served names the router answers for even while no engine serves them (scaled to zero or
    # starting): their requests are held until an engine is ready, and /v1/models lists them.
    models: tuple[str, ...] = ()
    health_timeout_s: float = 2.0
    # Kubernetes discovery, on when k8s_selector is set: pods matching it are the engines.
    k8s_selector: str | None = None  # label selector, e.g. app.kubernetes.io/component=engine
    k8s_namespace: str | None = None  # default: the kubeconfig context's, or the router pod's own
    k8s_port: int = 8000  # engine port of pods that name none (vfleet.router.kubepods)
    k8s_model_label: str = "vfleet.io/model"  # label naming the one model a pod serves
    k8s_resync_s: float = 30.0  # seconds between full relists, however healthy the watch looks
    k8s_api_url: str | None = None  # API server URL instead of kubeconfig (kubectl proxy, tests)
    # The activator: requests for a model with no ready engine wait (FIFO per model) this long at
    # most (then 503 + Retry-After), this many per model at most (beyond: 429 + Retry-After).
    # Either at 0 turns holding off: such requests get 503 + Retry-After at once.
    hold_timeout_s: float = 300.0
    hold_max_queued: int = 1000  # per model and router process
    # Per-model overrides of the two, by served name: {"timeout_s": S, "max_queued": N}.
    model_hold: dict[str, dict[str, float]] = field(default_factory=dict)
    # Held requests are released while an engine has fewer than this many requests in flight
    # from this router process (the rest wait their turn); 0: all are released at once.
    hold_release_max_inflight: int = 0
    # KEDA external scaler (vfleet.router.keda), on when keda_port is set: demand for a
    # ScaledObject's models summed over this router's workers and its peer routers.
    keda_port: int | None = None  # gRPC port (0: any free one)
    peers: tuple[str, ...] = ()  # other router replicas, http(s)://host:port, asked for demand
    k8s_peer_selector: str | None = None  # label selector of the router pods (peers)
    # HTTPS peers (keda.peertls): verified against this CA bundle and name; without a bundle, a
    # router with tls_cert trusts exactly its own certificate (its replicas share it).
    peer_ca: str | None = None
    peer_tls_name: str | None = None  # the name the peers' certificate must hold (and SNI)
    # The client edge (vfleet.http.limits.EdgeLimits): what a connection may cost before its
    # request reaches the router. Sizes in bytes, times in seconds.
    client_header_timeout_s: float = 20.0  # first byte to end of the request head: 408
    client_body_timeout_s: float = 60.0  # longest silence while a body arrives: 408
    keepalive_timeout_s: float = 75.0  # idle client connections are closed after this
    max_connections: int = 10_000  # per router process; beyond: 503 and close
    max_request_line_bytes: int = 8 * 1024  # 414 above
    max_header_bytes: int = 64 * 1024  # the whole request head: 431 above
    # OpenTelemetry (vfleet.router.tracing): an OTLP/HTTP collector, http://HOST:PORT (spans go
    # to /v1/traces) or a full URL; None: no tracing, no cost.
    otlp_endpoint: str | None = None
    # Seconds the metric series of an endpoint that left outlive it (a replica that flaps keeps
    # its counts; one gone for good stops costing series): router.sharedmetrics.
    metrics_grace_s: float = ENDPOINT_GRACE_S  # 60 s
    # `vfleet up`'s autoscaler decisions ({"models": {name: {"desired": N}}}), re-read when it
    # changes and re-exported as metrics (router.autoscaled); None: none.
    autoscale_file: str | None = None

    @property
    def tenancy(self) -> bool:
        """Whether requests are checked per key (router.tenants)."""
        return bool(self.tenants_file or self.rate_limit_per_minute or self.token_limit_per_minute)

    @property
    def shares_limits(self) -> bool:
        """Whether key budgets are shared with peer replicas (router.peerpoll)."""
        return self.tenancy and bool(self.peers or self.k8s_peer_selector)

    def edge_limits(self) -> EdgeLimits:
        return EdgeLimits(
            max_request_line_bytes=self.max_request_line_bytes,
            max_header_bytes=self.max_header_bytes,
            max_body_bytes=self.max_body_bytes,
            header_timeout_s=self.client_header_timeout_s,
            body_timeout_s=self.client_body_timeout_s,
            keepalive_timeout_s=self.keepalive_timeout_s,
            max_connections=self.max_connections,
        )

    def breaker_policy(self) -> BreakerPolicy | None:
        """The circuit breaker's settings; None when it is off."""
        if not self.breaker:
            return None
        return BreakerPolicy(
            self.breaker_error_rate,
            self.breaker_min_requests,
            self.breaker_window_s,
            self.breaker_cooldown_s,
            self.breaker_max_cooldown_s,
        )

    def __post_init__(self) -> None:
        self.edge_limits()  # its own checks: positive sizes and timeouts
        self.breaker_policy()  # its own checks: a rate in (0, 1], positive counts and times
        for name in (self.policy, *self.model_policies.values()):
            if name not in POLICY_NAMES:
                raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
        for b in self.backends:
            host, _, port = b.url.removeprefix("http://").partition(":")
            if not b.url.startswith("http://") or not host or not port.isdigit():
                raise ValueError(f"backend {b.url!r} must look like http://HOST:PORT")
            if b.kv_events is not None:
                check_kv_endpoint(b.kv_events)
        for endpoint in self.kv_events.values():
            check_kv_endpoint(endpoint)
        if self.workers < 1 or self.attempts < 1:
            raise ValueError("workers and attempts must be >= 1")
        if self.k8s_selector is not None and not self.k8s_selector.strip():
            raise ValueError("k8s_selector is empty; it would match every pod in the namespace")
        if self.k8s_selector is None and (self.k8s_namespace or self.k8s_api_url):
            raise ValueError("Kubernetes discovery needs a label selector (--k8s-selector)")
        if not 0 < self.k8s_port < 65536 or self.k8s_resync_s <= 0:
            raise ValueError("k8s_port must be 1-65535 and k8s_resync_s above 0")
        allowed = {"connect_timeout_s", "first_byte_timeout_s", "idle_timeout_s", "attempts"}
        for model, over in self.model_timeouts.items():
            bad = sorted(set(over) - allowed)
            if bad:
                raise ValueError(f"model_timeouts.{model}: unknown keys {', '.join(bad)}")
        if min(self.hold_timeout_s, self.hold_max_queued, self.hold_release_max_inflight) < 0:
            raise ValueError("hold_timeout_s, hold_max_queued, hold_release_max_inflight: >= 0")
        for model, over in self.model_hold.items():
            bad = sorted(set(over) - {"timeout_s", "max_queued"})
            if bad:
                raise ValueError(f"model_hold.{model}: unknown keys {', '.join(bad)}")
            if any(v < 0 for v in over.values()):
                raise ValueError(f"model_hold.{model}: values must be >= 0")
        if self.keda_port is not None and not 0 <= self.keda_port < 65536:
            raise ValueError("keda_port must be 0-65535")
        for peer in self.peers:
            rest = peer.removeprefix("https://").removeprefix("http://")
            if rest == peer or not rest.strip("/"):
                raise ValueError(f"peer {peer!r} must look like https://HOST:PORT or http://…")
            if self.tls_cert is not None and peer.startswith("http://"):
                # its replicas serve TLS as it does: plain HTTP to them fails, or, where it
                # does not, sends the admin key in the clear
                raise ValueError(
                    f"peer {peer!r}: this router serves TLS, so ask its peers over HTTPS "
                    f"(https://{rest})"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and its key (--tls-cert, --tls-key)")
        if self.tls_reload_s <= 0:
            raise ValueError("tls_reload_s must be above 0")
        if self.keda_port is None and (self.peers or self.k8s_peer_selector) and not self.tenancy:
            # peers are asked for demand (the scaler) or key usage (tenancy): neither is on
            raise ValueError(
                "peers are asked for demand by the KEDA scaler or for key usage by tenancy, "
                "and neither is on: set --keda-port or --tenants-file"
            )
        if not 0 <= self.metrics_grace_s < float("inf"):
            raise ValueError("metrics_grace_s must be a number of seconds >= 0")
        if self.otlp_endpoint is not None:
            traces_url(self.otlp_endpoint)  # ValueError: not an http:// URL with a host


def check_kv_endpoint(endpoint: str) -> str:
    """`endpoint` when it is a ZMQ endpoint the router can connect to (tcp://HOST:PORT or
    ipc://PATH); ValueError otherwise. A wildcard host is the engine's bind address, not one to
    connect to."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not endpoint.startswith("tcp://") or not host or "*" in host or not port.isdigit():
        raise ValueError(
            f"KV events endpoint {endpoint!r} must look like tcp://HOST:PORT (or ipc://PATH)"
        )
    return endpoint


def parse_kv_events(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--kv-events URL=ZMQ_ENDPOINT` flags as {engine url: endpoint}; ValueError when one is
    malformed."""
    out: dict[str, str] = {}
    for text in pairs:
        url, sep, endpoint = text.partition("=")
        if not sep or not url or not endpoint:
            raise ValueError(f"--kv-events {text!r}: expected URL=ZMQ_ENDPOINT")
        out[url.rstrip("/")] = check_kv_endpoint(endpoint)
    return out


def with_kv_events(
    backends: tuple[BackendSpec, ...], kv_events: dict[str, str]
) -> tuple[BackendSpec, ...]:
    """`backends` with the publishers `kv_events` names for their URLs (their own win)."""
    return tuple(
        b if b.kv_events or b.url not in kv_events else replace(b, kv_events=kv_events[b.url])
        for b in backends
    )


def _kv_field(item: dict[str, Any], where: str) -> str | None:
    value = item.get("kv_events")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: kv_events must be a string like tcp://HOST:PORT")
    return check_kv_endpoint(value)


def _ranks_field(item: dict[str, Any], where: str) -> int:
    value = item.get("kv_ranks", 1)
    if type(value) is not int or not 1 <= value <= MAX_RANKS:
        raise ValueError(f"{where}: kv_ranks must be a whole number from 1 to {MAX_RANKS}")
    return value


def parse_backend(text: str) -> BackendSpec:
    """`http://host:port` or `http://host:port=model1,model2`."""
    url, _, models = text.partition("=")
    return BackendSpec(url.rstrip("/"), tuple(m for m in models.split(",") if m))


def load_endpoints_file(path: str) -> list[BackendSpec]:
    return parse_endpoints(yaml.safe_load(Path(path).read_text()), path)


def parse_endpoints(raw: Any, path: str) -> list[BackendSpec]:
    """A list of URLs or {url, models, state} maps (optionally under `endpoints`).

    `"state": "starting"` marks an engine that is still loading: probed fast, served once its
    /health answers 200. Any other state (or none) is a plain endpoint, probed as usual."""
    items = raw.get("endpoints", []) if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of endpoints")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(parse_backend(item))
        elif isinstance(item, dict) and isinstance(item.get("url"), str):
            starting = item.get("state") == "starting"
            models = tuple(item.get("models") or ())
            where = f"{path}: endpoint {i}"
            kv, ranks = _kv_field(item, where), _ranks_field(item, where)
            out.append(BackendSpec(item["url"].rstrip("/"), models, starting, kv, ranks))
        else:
            raise ValueError(f"{path}: endpoint {i} needs a url")
    return out


def load_config_file(path: str) -> dict[str, Any]:
    """Keys of a router YAML file, checked against RouterConfig's fields."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    known = set(RouterConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(unknown)}")
    if "backends" in raw:
        raw["backends"] = tuple(
            parse_backend(b)
            if isinstance(b, str)
            else BackendSpec(
                b["url"],
                tuple(b.get("models", ())),
                b.get("state") == "starting",
                _kv_field(b, f"{path}: backends"),
                _ranks_field(b, f"{path}: backends"),
            )
            for b in raw["backends"]
        )
    if "kv_events" in raw:
        kv = raw["kv_events"]
        if not isinstance(kv, dict):
            raise ValueError(f"{path}: kv_events must map engine URLs to ZMQ endpoints")
        raw["kv_events"] = {str(u).rstrip("/"): check_kv_endpoint(str(e)) for u, e in kv.items()}
    for key in ("api_keys", "admin_keys", "models", "peers"):
        if key in raw:
            raw[key] = tuple(raw[key])
    return raw


def read_key_file(path: str) -> tuple[str, ...]:
    """API keys, one per line; blank lines and # comments ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from exc
    keys = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    if not keys:
        raise ValueError(f"{path}: no API keys in the file")
    return keys


def env_api_keys() -> tuple[str, ...]:
    return _env_keys("VFLEET_API_KEYS")


def env_admin_keys() -> tuple[str, ...]:
    """VFLEET_ADMIN_KEY: one admin key, or several separated by commas (a rotation)."""
    return _env_keys("VFLEET_ADMIN_KEY")


def env_backend_api_key() -> str | None:
    return os.environ.get("VFLEET_BACKEND_API_KEY") or None


def _env_keys(name: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in os.environ.get(name, "").split(",") if k.strip())
