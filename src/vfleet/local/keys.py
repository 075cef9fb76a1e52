"""The API keys of a local fleet: which keys the router checks and which key it sends to the
engines, from everything `vfleet up` can read, with a line saying where each came from.

Clients' keys: env VFLEET_API_KEYS (the router prefers it over its config, so it replaces the
others), else the spec's (`router.apiKeys`: vllm-stack's `vllmApiKey` string, TKE's `apiKey`)
and `--api-key-file`. Engines' key: a model whose `vllm serve` wants one (env VLLM_API_KEY, or
`--api-key` in its args) gets it from the router, which then also accepts it from clients, as
the engine itself would. Keys in a Kubernetes Secret cannot be read here: vfleet.fleetspec.caveats
says so. Named keys with allowlists and budgets: the spec's `router.tenantsFile`, checked here and
given to the router by its absolute path (the router re-reads it when it changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vfleet.fleetspec.models import Fleet, Model
from vfleet.router.config import env_api_keys, read_key_file
from vfleet.router.tenants import read_key_file as read_tenants


@dataclass(frozen=True)
class Keys:
    client: tuple[str, ...] = ()
    backend: str | None = None
    said: tuple[str, ...] = ()
    tenants: str | None = None  # the tenants file, absolute


def tenants_file(fleet: Fleet) -> tuple[str | None, str | None]:
    """(the spec's tenants file as an absolute path, a line saying so); ValueError when it
    cannot be read or is invalid (the message names no key)."""
    path = fleet.router.tenants_file
    if not path:
        return None, None
    full = str(Path(path).expanduser().resolve())
    names = read_tenants(full)
    return full, (
        f"the router checks {len(names.entries)} named key(s) from {path} (model allowlists, "
        "budgets; re-read when it changes)"
    )


def engine_key(model: Model) -> str | None:
    """The key a model's engine requires: `--api-key K` in its args, else env VLLM_API_KEY."""
    args = list(model.vllm.extra_args)
    for i, arg in enumerate(args):
        if arg == "--api-key" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--api-key="):
            return arg.partition("=")[2]
    return next((v.value for v in model.env if v.name == "VLLM_API_KEY" and v.value), None)


def api_keys(fleet: Fleet, key_file: str | None) -> Keys:
    """Raises ValueError when the key file cannot be read, or engines want different keys (the
    router sends one key to every engine)."""
    said: list[str] = []
    wanted = {m.name: k for m in fleet.models if (k := engine_key(m))}
    if len(set(wanted.values())) > 1:
        raise ValueError(
            f"models {', '.join(sorted(wanted))} require different API keys (env VLLM_API_KEY "
            "or --api-key); the router sends one key to every engine: give them the same one"
        )
    backend = next(iter(wanted.values()), None)
    if backend:
        said.append(
            f"{', '.join(sorted(wanted))} require(s) an API key (VLLM_API_KEY or --api-key): "
            "the router sends it to the engines and accepts it from clients"
        )
    tenants, line = tenants_file(fleet)
    if line:
        said.append(line)
    env = env_api_keys()
    if env:
        own = fleet.router.api_keys
        over = f", replacing the {len(own)} of the spec" if own else ""
        said.append(f"the router checks {len(env)} API key(s) from env VFLEET_API_KEYS{over}")
        return Keys(env, backend, tuple(said), tenants)
    own = fleet.router.api_keys
    from_file = read_key_file(key_file) if key_file else ()
    keys = tuple(dict.fromkeys((*own, *from_file, *([backend] if backend else []))))
    where = [f"{len(own)} from the spec"] if own else []
    where += [f"{len(from_file)} from {key_file}"] if from_file else []
    where += ["the engines' own"] if backend else []
    if keys:
        said.append(f"the router checks {len(keys)} API key(s) ({', '.join(where)})")
    return Keys(keys, backend, tuple(said), tenants)
