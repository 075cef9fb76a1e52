"""What `vfleet up` will start: one entry per engine replica, with its GPU, port and command
(and, for a model whose router policy reads KV-cache events, where the engine publishes them:
a socket in the run directory or a second port, which the router's endpoints file names; an
engine of N data-parallel ranks: ports PORT..PORT+N-1, replayed at PORT+100..PORT+100+N-1).

An autoscaled model gets a slot (GPU share, port, command) for each replica it may reach, as
many as fit; the first minReplicas start with the fleet, the rest wait for the autoscaler.

Pure: the fleet, the devices, the free ports and what the caller found on disk (`Options`:
downloaded weights, local and PVC paths that exist, see `local.weights`) come in; nothing is
read or started here, so a bad spec fails before any process exists.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from vfleet.engines.router import kv_event_models
from vfleet.engines.rules import EngineRules, data_parallel_size
from vfleet.engines.sim import sim_command
from vfleet.engines.vllm import Version, serve_command
from vfleet.fleetspec.models import Fleet, HealthCheck, Model
from vfleet.local.packer import Placement, Request, fewest_devices, pack_optional
from vfleet.router.kvwire import MAX_RANKS, replay_endpoint

MAX_IPC_PATH = 100  # bytes of a Unix socket's path: the kernel's limit is 107


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class EngineSpec:
    key: str  # "<model>-<replica>", names the log file
    model: str
    replica: int
    engine: str  # vllm | sim
    served: tuple[str, ...]
    devices: tuple[int, ...]
    share_pct: int
    port: int
    argv: list[str]
    env: dict[str, str]
    startup_timeout_s: float
    health: HealthCheck = field(default_factory=HealthCheck)
    initial: bool = True  # started by `up`; False: a standby slot only autoscaling starts
    # Where the router subscribes to the engine's KV-cache events (tcp://HOST:PORT), for the
    # models whose policy reads them; None: the engine publishes none.
    kv_events: str | None = None
    # Its data-parallel ranks (`--data-parallel-size`): rank r publishes at kv_events' port + r
    # (vLLM offsets each rank's sockets), where the router follows each rank.
    kv_ranks: int = 1

    @property
    def gpu_label(self) -> str:
        if not self.devices:
            return "-"
        ids = ",".join(map(str, self.devices))
        return ids if self.share_pct >= 100 else f"{ids} ({self.share_pct}%)"


@dataclass(frozen=True)
class Plan:
    engines: list[EngineSpec]
    devices: tuple[int, ...]
    simulated_gpus: bool
    notices: list[str] = field(default_factory=list)
    slots: dict[str, int] = field(default_factory=dict)  # autoscaled model -> slots placed


@dataclass(frozen=True)
class Options:
    engine: str | None = None  # overrides every model's engine
    devices: tuple[int, ...] | None = None  # --gpus; None: detected (vllm) or as needed (sim)
    host: str = "127.0.0.1"
    pvc_root: str | None = None  # where PVC claims live on this machine (claim/sub/path)
    vllm_version: Version | None = None
    vllm_executable: tuple[str, ...] = ("vllm",)
    fetched: dict[str, str] = field(default_factory=dict)  # model name -> downloaded weights
    # model name -> its local or PVC weights (`disk_path`), where they exist on this machine
    on_disk: dict[str, str] = field(default_factory=dict)
    max_replicas_cap: int = 8  # bound on an autoscaled model's replicas on one machine
    # the chart's engine rules (vfleet.engines.rulefile.load_rules): flags, share memory
    engine_rules: EngineRules | None = None
    # A private directory (the run directory's, mode 0700) for the engines' KV-event sockets:
    # ipc:// endpoints only this user reaches. None, or a path too long for a Unix socket: a
    # TCP port, which vLLM binds on every address (it binds only endpoints with a `*` host).
    kv_events_dir: str | None = None


def ports_needed(fleet: Fleet, cap: int, rules: EngineRules) -> int:
    """Ports `build` may draw for the engines: one per slot, two for an engine that publishes
    KV events (its HTTP port and, unless it gets a socket path, its publisher's)."""
    kv = kv_event_models(fleet, rules.kv_events.policies)
    return sum(planned_slots(m, cap) * (2 if m.name in kv else 1) for m in fleet.models)


def planned_slots(model: Model, cap: int) -> int:
    """Engine slots `up` plans for a model: its replicas, or for autoscaling its max replicas
    (an unbounded max, and any max above it, is capped at `cap` on one machine)."""
    if model.autoscaling is None:
        return model.replicas
    return max(slot_cap(model, cap), model.autoscaling.min_replicas, 1)


def slot_cap(model: Model, cap: int) -> int:
    auto = model.autoscaling
    assert auto is not None
    return min(auto.max_replicas or cap, cap)


def requests_of(fleet: Fleet, cap: int, notices: list[str]) -> tuple[list[Request], list[Request]]:
    """(required, optional) replicas: every fixed replica and each autoscaled model's minimum
    (at least one, so a model that scales to zero can wake) must fit; the rest of an autoscaled
    model's slots are placed while they fit, replica 1 of every model before replica 2."""
    required: list[Request] = []
    optional: list[Request] = []
    for m in fleet.models:
        n = planned_slots(m, cap)
        if n == 0:
            notices.append(f"{m.name}: 0 replicas; not started")
        must = n if m.autoscaling is None else max(m.autoscaling.min_replicas, 1)
        for i in range(n):
            req = Request(m.name, i, m.gpus_needed, m.gpu_share_pct, m.vllm.gpu_memory_utilization)
            (required if i < must else optional).append(req)
        auto = m.autoscaling
        if auto is not None and (auto.max_replicas is None or auto.max_replicas > cap):
            notices.append(
                f"{m.name}: autoscaling to {auto.max_replicas or 'unbounded'} replicas; at most "
                f"{n} here (--max-replicas-cap {cap})"
            )
    optional.sort(key=lambda r: r.replica)  # stable: fleet order within one replica index
    return required, optional


def build(fleet: Fleet, opts: Options, ports: Iterator[int], gpus: Sequence[int] = ()) -> Plan:
    """`gpus`: the devices found on this machine, used when --gpus is not given."""
    notices: list[str] = []
    rules = _rules(opts)
    required, optional = requests_of(fleet, opts.max_replicas_cap, notices)
    reqs = required + optional
    engines = {m.name: opts.engine or fleet.engine_of(m) for m in fleet.models}
    needs_gpu = [r for r in reqs if r.devices or r.share_pct]
    simulated = False
    if opts.devices is not None:
        devices = tuple(opts.devices)
    elif needs_gpu and all(engines[r.model] == "sim" for r in needs_gpu):
        devices, simulated = tuple(range(fewest_devices(needs_gpu, rules))), True
    else:
        devices = tuple(gpus)
        if needs_gpu and not devices:
            names = ", ".join(sorted({r.model for r in needs_gpu if engines[r.model] == "vllm"}))
            raise PlanError(f"no GPUs found for {names}: give --gpus 0,1 or run with --engine sim")
    placements = pack_optional(required, optional, devices, rules)
    order = {m.name: i for i, m in enumerate(fleet.models)}
    placements.sort(key=lambda p: (order[p.model], p.replica))
    by_name = {m.name: m for m in fleet.models}
    kv = kv_event_models(fleet, rules.kv_events.policies)
    out = []
    slots: dict[str, int] = {}
    for p in placements:
        model = by_name[p.model]
        port = next(ports)
        key = f"{model.name}-{p.replica}"
        kv_at = None
        if model.name in kv:
            ranks = data_parallel_size(model.vllm.extra_args) if engines[p.model] == "vllm" else 1
            kv_at = _kv_endpoints(key, opts, rules, ports, ranks)
            if ranks > 1 and p.replica == 0:
                pub, replay = rules.kv_events.ports(_port_of(kv_at.bind), ranks)
                notices.append(
                    f"{model.name}: {ranks} data-parallel ranks publish KV events on ports "
                    f"{pub[0]}-{pub[-1]} and replay on {replay[0]}-{replay[-1]} (per replica, "
                    "from its first port); only the first is checked free"
                )
        spec = _engine(model, p, engines[p.model], port, opts, notices, kv_at)
        auto = model.autoscaling
        if auto is not None:
            slots[model.name] = slots.get(model.name, 0) + 1
            spec = replace(spec, initial=p.replica < auto.min_replicas)
        out.append(spec)
    for m in fleet.models:
        if m.autoscaling is not None and slots[m.name] < planned_slots(m, opts.max_replicas_cap):
            notices.append(f"model {m.name}: at most {slots[m.name]} replicas fit")
        if m.autoscaling is not None and m.autoscaling.min_replicas == 0:
            notices.append(f"{m.name}: scaled to zero; it starts on its first request")
    return Plan(out, devices, simulated, notices, slots)


def _rules(opts: Options) -> EngineRules:
    if opts.engine_rules is None:  # the caller's job: this module reads no files
        raise PlanError("no engine rules given (Options.engine_rules)")
    return opts.engine_rules


def _engine(
    model: Model,
    p: Placement,
    engine: str,
    port: int,
    opts: Options,
    notices: list[str],
    kv_at: KvAt | None = None,
) -> EngineSpec:
    """One slot's engine; with `kv_at` it publishes its KV-cache events for the router."""
    ref = opts.fetched.get(model.name) or model_ref(model, engine, opts)
    env = _env(model, notices if p.replica == 0 else [])
    if p.devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, p.devices))
    if model.source.kind == "modelscope":
        env["VLLM_USE_MODELSCOPE"] = "True"
    if model.source.endpoint and model.source.kind == "hf":
        env["HF_ENDPOINT"] = model.source.endpoint
    shared = p.share_pct < 100 and p.devices
    memory = p.memory if shared and model.vllm.gpu_memory_utilization is None else None
    config = None if kv_at is None else _rules(opts).kv_events.config(kv_at.bind, kv_at.replay)
    if engine == "vllm":
        cmd = serve_command(
            model,
            ref,
            opts.host,
            port,
            opts.vllm_version,
            memory,
            opts.vllm_executable,
            engine_rules=_rules(opts),
            kv_events_config=config,
        )
        if p.replica == 0:
            notices.extend(f"{model.name}: {n}" for n in cmd.notices)
        argv = cmd.argv
    else:
        argv = sim_command(model, ref, opts.host, port, memory, kv_events_config=config)
    if memory is not None and p.replica == 0:
        notices.append(
            f"{model.name}: --gpu-memory-utilization {memory:g} derived from its "
            f"{p.share_pct}% GPU share"
        )
    return EngineSpec(
        key=f"{model.name}-{p.replica}",
        model=model.name,
        replica=p.replica,
        engine=engine,
        served=model.served_names,
        devices=p.devices,
        share_pct=p.share_pct,
        port=port,
        argv=argv,
        env=env,
        startup_timeout_s=model.startup_timeout_s if engine == "vllm" else 60.0,
        health=model.health,
        kv_events=None if kv_at is None else kv_at.connect,
        kv_ranks=1 if kv_at is None else kv_at.ranks,
    )


@dataclass(frozen=True, slots=True)
class KvAt:
    """Where an engine binds its KV-event publisher and its replay socket (None: none), and
    where the router connects to the publisher."""

    bind: str
    replay: str | None
    connect: str
    ranks: int = 1  # data-parallel ranks: each binds its own sockets, the port + its rank


def _kv_endpoints(
    key: str, opts: Options, rules: EngineRules, ports: Iterator[int], ranks: int = 1
) -> KvAt:
    """Engine `key`'s publisher: a socket in `opts.kv_events_dir` when its path and its replay
    socket's (by the router's convention, `kvwire`) fit, else the next port. A port chosen here
    has no free neighbour reserved, so that fallback has no replay socket.

    An engine of several data-parallel ranks publishes on TCP (vLLM offsets a rank's sockets by
    port; it refuses an ipc:// endpoint for a rank above 0): ranks on the port drawn and the
    next ones, replay sockets 100 above (`rules.REPLAY_OFFSET`, where the router looks). The
    ports above the first are not reserved: taken as they come."""
    if ranks > MAX_RANKS:
        raise PlanError(f"{key}: at most {MAX_RANKS} data-parallel ranks publish KV events")
    if ranks > 1:
        port = next(ports)
        if rules.kv_events.ports(port, ranks)[1][-1] > 65535:
            raise PlanError(f"{key}: no room above port {port} for {ranks} ranks' KV events")
        tcp = rules.kv_events.tcp
        connect = f"tcp://{_reachable(opts.host)}:{port}"
        return KvAt(tcp(port), tcp(rules.kv_events.replay_port(port)), connect, ranks)
    if opts.kv_events_dir is not None:
        endpoint = "ipc://" + posixpath.join(opts.kv_events_dir, f"{key}.sock")
        replay = replay_endpoint(endpoint)
        if replay is not None and len(replay.encode()) - len("ipc://") <= MAX_IPC_PATH:
            return KvAt(endpoint, replay, endpoint)
    port = next(ports)
    return KvAt(rules.kv_events.tcp(port), None, f"tcp://{_reachable(opts.host)}:{port}")


def _port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def _reachable(host: str) -> str:
    """Where this machine reaches a server listening on `host` (a wildcard is no destination)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def disk_path(model: Model, pvc_root: str | None) -> str | None:
    """Where a local or PVC model's weights are on this machine, as the spec and --pvc-root
    name them (unchecked, `~` unexpanded); None for other sources and a PVC without a root."""
    src = model.source
    if src.kind == "local":
        return src.id
    if src.kind == "pvc" and pvc_root:
        return posixpath.join(pvc_root, src.id, src.path).rstrip("/")
    return None


def model_ref(model: Model, engine: str, opts: Options) -> str:
    """What the engine is told to load: a path on this machine or a hub id."""
    src = model.source
    found = opts.on_disk.get(model.name)
    if src.kind == "local":
        if found is None:
            raise PlanError(f"{model.name}: model path {src.id} does not exist")
        return found
    if src.kind == "pvc":
        if found is not None:
            return found
        if engine == "vllm" and opts.pvc_root:
            raise PlanError(
                f"{model.name}: {disk_path(model, opts.pvc_root)} does not exist (PVC "
                f"{src.id!r} under --pvc-root {opts.pvc_root})"
            )
        if engine == "vllm":
            raise PlanError(
                f"{model.name} reads its weights from PVC {src.id!r}; give "
                "--pvc-root DIR (holding DIR/<claim>/<path>) or use --engine sim"
            )
        return src.path.rstrip("/") or src.id
    if src.kind in ("hf", "modelscope"):
        return src.id
    if engine == "vllm":
        raise PlanError(f"{model.name}: {src.uri} has not been downloaded")
    return src.uri


def needs_download(model: Model, engine: str) -> bool:
    """Sources vLLM cannot load by itself: `vfleet up` fetches them before the engine starts.
    (Hugging Face and ModelScope ids go to vLLM as they are; it has its own cache.)"""
    return engine == "vllm" and model.source.kind in ("s3", "git", "https")


def _env(model: Model, notices: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in model.env:
        if var.value_from is not None:
            notices.append(
                f"{model.name}: env {var.name} comes from Kubernetes (valueFrom); not set locally"
            )
        elif var.name == "CUDA_VISIBLE_DEVICES":
            notices.append(
                f"{model.name}: env CUDA_VISIBLE_DEVICES={var.value} replaced by the "
                "GPU vfleet assigns"
            )
        else:
            env[var.name] = var.value or ""
    return env
