"""The router's settings: flags and an optional YAML file, read once into one typed object."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vfleet.router.policies import POLICY_NAMES


class KubeSettingsError(ValueError):
    """Kubernetes discovery is asked for but its connection settings cannot be found or used."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    url: str  # http://host:port
    models: tuple[str, ...] = ()  # empty: learn them from the engine's /v1/models


@dataclass(frozen=True, slots=True)
class RouterConfig:
    backends: tuple[BackendSpec, ...] = ()
    endpoints_file: str | None = None  # JSON/YAML list re-read when it changes (supervisor feed)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    policy: str = "least_load"
    model_policies: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    api_keys: tuple[str, ...] = ()
    backend_api_key: str | None = None
    rate_limit_per_minute: float = 0.0  # requests per API key per minute; 0 = no limit
    token_limit_per_minute: float = 0.0  # estimated tokens per API key per minute; 0 = none
    max_body_bytes: int = 32 * 1024 * 1024
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 600.0
    idle_timeout_s: float = 300.0
    attempts: int = 3
    # Per-model overrides of connect_timeout_s, first_byte_timeout_s, idle_timeout_s, attempts.
    model_timeouts: dict[str, dict[str, float]] = field(default_factory=dict)
    endpoints_url: str | None = None  # an HTTP feed of endpoints (JSON list), polled
    health_interval_s: float = 2.0
    drain_timeout_s: float = 30.0  # on SIGTERM: stop accepting, wait this long for in-flight
    models: tuple[str, ...] = ()  # served names answered 503 (not 404) while no engine serves them
    health_timeout_s: float = 2.0
    # Kubernetes discovery, on when k8s_selector is set: pods matching it are the engines.
    k8s_selector: str | None = None  # label selector, e.g. app.kubernetes.io/component=engine
    k8s_namespace: str | None = None  # default: the kubeconfig context's, or the router pod's own
    k8s_port: int = 8000  # engine port of pods that name none (vfleet.router.kubepods)
    k8s_model_label: str = "vfleet.io/model"  # label naming the one model a pod serves
    k8s_resync_s: float = 30.0  # seconds between full relists, however healthy the watch looks
    k8s_api_url: str | None = None  # API server URL instead of kubeconfig (kubectl proxy, tests)

    def __post_init__(self) -> None:
        for name in (self.policy, *self.model_policies.values()):
            if name not in POLICY_NAMES:
                raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
        for b in self.backends:
            host, _, port = b.url.removeprefix("http://").partition(":")
            if not b.url.startswith("http://") or not host or not port.isdigit():
                raise ValueError(f"backend {b.url!r} must look like http://HOST:PORT")
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


def parse_backend(text: str) -> BackendSpec:
    """`http://host:port` or `http://host:port=model1,model2`."""
    url, _, models = text.partition("=")
    return BackendSpec(url.rstrip("/"), tuple(m for m in models.split(",") if m))


def load_endpoints_file(path: str) -> list[BackendSpec]:
    return parse_endpoints(yaml.safe_load(Path(path).read_text()), path)


def parse_endpoints(raw: Any, path: str) -> list[BackendSpec]:
    """A list of URLs or {url, models} maps (optionally under `endpoints`)."""
    items = raw.get("endpoints", []) if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of endpoints")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(parse_backend(item))
        elif isinstance(item, dict) and isinstance(item.get("url"), str):
            out.append(BackendSpec(item["url"].rstrip("/"), tuple(item.get("models") or ())))
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
            else BackendSpec(b["url"], tuple(b.get("models", ())))
            for b in raw["backends"]
        )
    for key in ("api_keys", "models"):
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
    keys = os.environ.get("VFLEET_API_KEYS", "")
    return tuple(k for k in keys.split(",") if k)
