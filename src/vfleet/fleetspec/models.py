"""The fleet spec: the typed models every input format is normalised into.

One module owns them. The native YAML format is these models written out (camelCase keys, as in
Helm values); the importers for vllm-stack, TKE and T9k values and manifests produce the same
models, so the local supervisor and the Kubernetes renderer only ever see a `Fleet`. What a
format means is decided by its importer and stored in typed fields (Kubernetes settings too, in
`ModelKubernetes`), so nothing after the importers needs to know which format a file was.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic.alias_generators import to_camel

# How a served name hints at a pooling model when no task is given. vLLM itself decides from the
# model's architecture (--runner auto); the simulator and reports only have the name.
_POOLING_HINTS = (
    ("rerank", "score"),
    ("embed", "embed"),
    ("bge-", "embed"),
    ("e5-", "embed"),
    ("gte-", "embed"),
    ("m3e", "embed"),
    ("bce-", "embed"),
)
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")  # usable as a Kubernetes name part


class Spec(BaseModel):
    """camelCase in files, snake_case in code; unknown keys are errors, never ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Source(Spec):
    """Where the weights come from."""

    kind: Literal["hf", "modelscope", "local", "pvc", "s3", "git", "https"]
    # hf/modelscope: org/name; local: a path; pvc: the claim name; s3: bucket/prefix;
    # git: the repository URL; https: the URL of a file list.
    id: str
    path: str = ""  # pvc: the sub-path of the model inside the claim
    revision: str | None = None  # branch, tag or commit
    endpoint: str | None = None  # a mirror (HF_ENDPOINT) or an S3-compatible endpoint
    include: tuple[str, ...] = ()  # only these files (globs)
    secret: str | None = None  # Kubernetes Secret holding the token or credentials
    # A relative local path as its file wrote it, once the loader has joined it to the file's
    # directory: this machine reads the joined path, a node or an image reads the written one.
    # Private, so no spec can set it and no dump shows it.
    _written: str | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _from_uri(cls, value: Any) -> Any:
        return parse_source_uri(value) if isinstance(value, str) else value

    @property
    def relative(self) -> bool:
        """A local path that names nothing until it is joined to a directory (`~` is the
        user's home, absolute enough)."""
        return self.kind == "local" and not self.id.startswith(("/", "~"))

    def joined_to(self, directory: str) -> Source:
        """This source with a relative local path joined to `directory` (absolute: the spec
        file's, as Helm and compose read paths in a file); any other source as it is."""
        if not self.relative:
            return self
        out = self.model_copy(update={"id": posixpath.normpath(posixpath.join(directory, self.id))})
        out._written = self.id
        return out

    @property
    def written(self) -> str:
        """The id as the spec file wrote it."""
        return self.id if self._written is None else self._written

    def as_written(self) -> Source:
        """This source with the path its file wrote (for Kubernetes, where a local path is on
        a node or in an image and the spec's directory means nothing)."""
        if self._written is None:
            return self
        out = self.model_copy(update={"id": self._written})
        out._written = None
        return out

    @field_validator("id")
    @classmethod
    def _nonempty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the model source is empty")
        return value

    @property
    def uri(self) -> str:
        """The source as one string, the form `vfleet download` takes."""
        if self.kind == "local":
            return self.id
        if self.kind == "pvc":
            return f"pvc://{self.id}/{self.path}".rstrip("/")
        if self.kind in ("git", "https"):
            return self.id if self.kind == "https" else f"git+{self.id}"
        return f"{self.kind}://{self.id}"


def parse_source_uri(text: str) -> dict[str, Any]:
    """`hf://org/name@rev`, `modelscope://…`, `s3://…`, `git+https://…`, `pvc://claim/sub/path`,
    `https://…`, a path (`/…`, `./…`, `~/…`) or a bare `org/name` (Hugging Face)."""
    text = text.strip()
    for scheme in ("hf", "modelscope", "s3"):
        if text.startswith(f"{scheme}://"):
            ident, _, rev = text.removeprefix(f"{scheme}://").partition("@")
            out: dict[str, Any] = {"kind": scheme, "id": ident}
            if rev:
                out["revision"] = rev
            return out
    if text.startswith("git+"):
        return {"kind": "git", "id": text.removeprefix("git+")}
    if text.startswith("pvc://"):
        claim, _, path = text.removeprefix("pvc://").partition("/")
        return {"kind": "pvc", "id": claim, "path": path}
    if text.startswith(("https://", "http://")):
        return {"kind": "https", "id": text}
    if text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        return {"kind": "local", "id": text}
    return {"kind": "hf", "id": text}


class Storage(Spec):
    """The volume that holds the weights on Kubernetes (downloads land here)."""

    size: str | None = None  # e.g. 50Gi
    storage_class: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    match_labels: dict[str, str] = Field(default_factory=dict)  # bind to a labelled PV
    existing_claim: str | None = None


class Autoscaling(Spec):
    """T9k's bounds (min 0 scales to zero; max None, or 0 in imported files, is unbounded) and
    Knative KPA's behaviour; durations in seconds. docs/fleet.md says what each field means."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    metric: Literal["concurrency", "rps", "waiting", "kv_cache"] = "concurrency"
    target: float = Field(32.0, gt=0)  # per replica, in the metric's unit (kv_cache: 0..1 or %)
    stable_window_s: float = Field(60.0, gt=0)  # the metric is averaged over this
    panic_window_s: float = Field(6.0, gt=0)  # bursts are judged over this
    panic_threshold: float = Field(2.0, gt=1)  # panic when bursts want this many x ready
    scale_down_delay_s: float = Field(0.0, ge=0)  # want fewer for this long before scaling down
    scale_to_zero_grace_s: float = Field(30.0, ge=0)  # no demand for this long before zero
    max_scale_up_rate: float = Field(1000.0, gt=1)  # one step grows to at most current x this
    max_scale_down_rate: float = Field(2.0, gt=1)  # one step shrinks to at least current / this
    ttft_p90_s: float | None = Field(None, gt=0)  # add replicas while p90 TTFT is above this
    kv_usage_target: float | None = Field(None, gt=0, le=1)  # mean KV cache use per replica

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"maxReplicas ({self.max_replicas}) is below minReplicas ({self.min_replicas})"
            )
        if self.panic_window_s > self.stable_window_s:
            raise ValueError(
                f"panicWindowS ({self.panic_window_s:g}) is longer than stableWindowS "
                f"({self.stable_window_s:g}); the panic window is the short one"
            )
        if self.metric == "kv_cache" and self.target > 100:
            raise ValueError(
                f"a kv_cache target is a fraction of one replica's KV cache (0.8) or a percent "
                f"(80), not {self.target:g}"
            )
        return self


class Hold(Spec):
    """Requests the router holds while the model has no ready replica (at zero, starting)."""

    timeout_s: float = Field(300.0, gt=0)  # a held request gets 503 after this many seconds
    max_queued: int = Field(1000, ge=1)  # requests held at most; more get 429


def adapter_is_path(value: str) -> bool:
    """Whether a LoRA adapter is named by a local path rather than a hub id: written as a
    path is (`/…`, `./…`, `../…`, `~…`), as a model source is; a bare `org/name` is a hub id."""
    return value.startswith(("/", "./", "../", "~")) or value in (".", "..")


def _relative_path(value: str) -> bool:
    return adapter_is_path(value) and not value.startswith(("/", "~"))


def _joined(directory: str, path: str) -> str:
    return posixpath.normpath(posixpath.join(directory, path))


class Lora(Spec):
    enabled: bool = False
    max_loras: int | None = Field(None, ge=1)
    max_lora_rank: int | None = Field(None, ge=1)
    # name -> adapter path or HF id (`adapter_is_path`); a relative path is read from the
    # spec file's directory by `vfleet up`, as a local source is
    modules: dict[str, str] = Field(default_factory=dict)
    # the relative adapter paths as their file wrote them, by name, once joined (see Source)
    _written: dict[str, str] = PrivateAttr(default_factory=dict)

    def joined_to(self, directory: str) -> Lora:
        """These settings with each relative adapter path joined to `directory`."""
        written = {n: p for n, p in self.modules.items() if _relative_path(p)}
        if not written:
            return self
        joined = {n: _joined(directory, written[n]) for n in written}
        out = self.model_copy(update={"modules": {**self.modules, **joined}})
        out._written = written
        return out

    def as_written(self) -> Lora:
        """These settings with the adapter paths their file wrote (for Kubernetes)."""
        if not self._written:
            return self
        out = self.model_copy(update={"modules": {**self.modules, **self._written}})
        out._written = {}
        return out


# vLLM's --chat-template takes either a file or the template itself: it opens the value as a
# file and, when that fails, uses it as a template only if it holds a `{`, `}` or a newline (any
# Jinja template does, a usable path does not), else stops saying it looks like a path. The same
# characters decide here, so an inline template is passed on untouched, never taken for a path.
_TEMPLATE_CHARS = ("{", "}", "\n")


def chat_template_is_path(value: str) -> bool:
    """Whether `vllm.chatTemplate` names a file rather than holding the template itself."""
    return bool(value.strip()) and not any(c in value for c in _TEMPLATE_CHARS)


def chat_template_is_local(value: str) -> bool:
    """Whether `vllm.chatTemplate` is a file vfleet resolves and checks: one written as a path
    (`/…`, `./…`, `../…`, `~…`), as a LoRA adapter is. A bare name (`chat.jinja`, or T9k's
    `examples/tool_chat_template_mistral.jinja`, a file in vLLM's image) is vLLM's to open from
    its own working directory, as written."""
    return chat_template_is_path(value) and adapter_is_path(value)


class ToolCalling(Spec):
    enabled: bool = False
    parser: str | None = None  # --tool-call-parser, e.g. hermes, mistral, llama3_json


class EngineSettings(Spec):
    """vLLM settings with a typed field; anything else goes in extraArgs as vLLM flags."""

    max_model_len: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    quantization: str | None = None
    dtype: str | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    enforce_eager: bool = False
    trust_remote_code: bool = False
    # a file or the template itself (`chat_template_is_path`); a file written as a relative
    # path is read from the spec file's directory by `vfleet up`, as a local source is
    # (`chat_template_is_local`)
    chat_template: str | None = None
    lora: Lora = Field(default_factory=Lora)
    tool_calling: ToolCalling = Field(default_factory=ToolCalling)
    extra_args: tuple[str, ...] = ()
    _template_written: str | None = PrivateAttr(None)  # a joined chat template file as written

    def joined_to(self, directory: str) -> EngineSettings:
        """These settings with the relative local paths they name joined to `directory`: the
        LoRA adapters and a chat template file. A `~` template is expanded too (unlike the
        adapters, where vLLM is left to read it): vLLM opens the file with a plain open(),
        which would look for a directory named `~`."""
        lora = self.lora.joined_to(directory)
        template = self.chat_template
        if template is None or not chat_template_is_local(template) or template.startswith("/"):
            return self if lora is self.lora else self.model_copy(update={"lora": lora})
        path = _joined(directory, posixpath.expanduser(template))
        out = self.model_copy(update={"chat_template": path, "lora": lora})
        out._template_written = template
        return out

    def as_written(self) -> EngineSettings:
        """These settings with the paths their file wrote (for Kubernetes, where the template
        is in the image or a mounted ConfigMap)."""
        template = self.chat_template if self._template_written is None else self._template_written
        lora = self.lora.as_written()
        if template == self.chat_template and lora is self.lora:
            return self
        out = self.model_copy(update={"chat_template": template, "lora": lora})
        out._template_written = None
        return out


class SimSettings(Spec):
    """Knobs of the vfleet simulator when a model runs with `engine: sim`."""

    profile: str = "small"
    time_scale: float = Field(1.0, gt=0)
    extra_args: tuple[str, ...] = ()  # more `vfleet sim` flags


class EnvVar(Spec):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None  # Kubernetes only (secret and field refs)

    @field_validator("value", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        # YAML turns `value: 0` into an int; an environment only holds strings.
        return value if value is None or isinstance(value, str) else str(value)


class HealthCheck(Spec):
    """Liveness of a running engine: `failures` failed /health probes in a row restart it (a hung
    engine keeps its port open, so exiting is not the only way to die)."""

    interval_s: float = Field(10.0, gt=0)  # seconds between probes once healthy
    timeout_s: float = Field(10.0, gt=0)  # a probe slower than this fails
    failures: int = Field(6, ge=1)  # consecutive failures before the engine is restarted


# Kubernetes objects inside a pod spec (a volume, a toleration, a container) stay mappings:
# Kubernetes' own schema checks them when the chart is applied, and copying it here would only
# fall behind.
KubeObject = dict[str, Any]


class Download(Spec):
    """How the weights reach the model's volume on Kubernetes (the chart's `download`)."""

    mode: Literal["auto", "job", "init", "engine", "none"] | None = Field(
        None,
        description="job: a download Job fills the volume before the engines start; init: each "
        "pod fetches them in an init container; engine: vLLM fetches them; none: already there",
    )
    dir: str | None = Field(None, description="directory under the volume (default models/NAME)")
    shards: int | None = Field(None, ge=1, description="pods of the download Job")
    anti_affinity: Literal["preferred", "required"] | None = Field(
        None, description="spread the download Job's pods over nodes"
    )


class ModelKubernetes(Spec):
    """What only Kubernetes uses about one model, whatever file it was read from. Importers fill
    the typed fields; `chartValues` carries chart keys with no field here, as written."""

    namespace: str | None = Field(None, description="the namespace the input files name")
    labels: dict[str, str] = Field(default_factory=dict, description="on the model's objects")
    pod_labels: dict[str, str] = Field(default_factory=dict, description="on its pods")
    annotations: dict[str, str] = Field(default_factory=dict, description="on its workload")
    pod_annotations: dict[str, str] = Field(default_factory=dict, description="on its pods")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[KubeObject, ...] = ()
    affinity: KubeObject | None = None
    volumes: tuple[KubeObject, ...] = Field((), description="more pod volumes")
    volume_mounts: tuple[KubeObject, ...] = Field((), description="more engine volume mounts")
    init_containers: tuple[KubeObject, ...] = Field(
        (), description="run before the engine (after the chart's own)"
    )
    security_context: KubeObject | None = Field(None, description="of the engine container")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secret: str | None = None
    lws_group_size: int = Field(
        1, ge=1, description="pods per replica, one per node (more than 1: a LeaderWorkerSet)"
    )
    host_path: bool = Field(
        True,
        description="a local source is a directory on the node (a hostPath volume); false: a "
        "path the container already has (its image, or a volume from other values)",
    )
    download: Download | None = None
    chart_values: dict[str, Any] = Field(
        default_factory=dict,
        description="more keys of this model's chart modelSpec entry, merged as written",
    )


class FleetKubernetes(Spec):
    """What only Kubernetes uses about the whole fleet."""

    extra_objects: tuple[KubeObject, ...] = Field(
        (), description="objects applied with the fleet as they are (PVs, Services, Ingresses)"
    )
    chart_values: dict[str, Any] = Field(
        default_factory=dict,
        description="more chart values, merged as written; servingEngineSpec keys never "
        "replace the models or the API key",
    )


GpuRequest = Annotated[float, Field(ge=0)]


class Model(Spec):
    name: str
    served_names: tuple[str, ...] = ()  # names clients use; default: (name,)
    source: Source
    task: Literal["auto", "generate", "embed", "classify", "score", "reward"] = "auto"
    engine: Literal["vllm", "sim"] | None = None  # default: the fleet's engine
    image: str | None = None  # container image on Kubernetes
    replicas: int = Field(1, ge=0)
    autoscaling: Autoscaling | None = None
    hold: Hold = Field(default_factory=Hold)
    gpu: GpuRequest = 1.0  # whole GPUs (1, 2, 8) or a share of one (0.2)
    cpu: str | None = None  # Kubernetes quantity, e.g. "6" or "500m"
    memory: str | None = None  # e.g. "16Gi"
    vllm: EngineSettings = Field(default_factory=EngineSettings)
    sim: SimSettings = Field(default_factory=SimSettings)
    env: tuple[EnvVar, ...] = ()
    storage: Storage | None = None
    startup_timeout_s: float = Field(900.0, gt=0)  # vLLM cold starts take minutes
    health: HealthCheck = Field(default_factory=HealthCheck)
    kubernetes: ModelKubernetes = Field(default_factory=ModelKubernetes)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid model name: use lower-case letters, digits and '-' "
                "(it names processes, logs and Kubernetes objects); put the name clients use "
                "in servedNames"
            )
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_mapping(cls, value: Any) -> Any:
        # docs/fleet.md: `env` is a list of {name, value} or a mapping NAME: value
        if isinstance(value, dict):
            return [{"name": str(k), "value": "" if v is None else v} for k, v in value.items()]
        return value

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu_text(cls, value: Any) -> Any:
        return float(value) if isinstance(value, str) and value.strip() else value

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(
                f"a GPU request above 1 must be a whole number of GPUs (got {value:g}); "
                "shares are for one GPU, e.g. 0.25"
            )
        if 0 < value < 1 and abs(value * 100 - round(value * 100)) > 1e-9:
            raise ValueError(f"a GPU share must be a multiple of 0.01 (got {value:g})")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> Model:
        if not self.served_names:
            object.__setattr__(self, "served_names", (self.name,))
        return self

    @property
    def gpus_needed(self) -> int:
        """Devices one replica spans: tensor x pipeline parallel, at least its request."""
        parallel = self.vllm.tensor_parallel_size * self.vllm.pipeline_parallel_size
        return max(parallel, int(self.gpu)) if self.gpu >= 1 or parallel > 1 else 0

    @property
    def gpu_share_pct(self) -> int:
        """A fractional request as whole percent of one device (0 when whole GPUs)."""
        return round(self.gpu * 100) if 0 < self.gpu < 1 and self.gpus_needed <= 1 else 0

    @property
    def effective_task(self) -> str:
        """The task, or for `auto` a guess from the names (vLLM decides from the weights)."""
        if self.task != "auto":
            return self.task
        # the written path: the directories above a spec file say nothing about its models
        text = " ".join((*self.served_names, self.source.written, self.source.path)).lower()
        return next((task for hint, task in _POOLING_HINTS if hint in text), "generate")

    @property
    def pooling(self) -> bool:
        return self.effective_task != "generate"


Policy = Literal["round_robin", "least_load", "session", "prefix", "kv"]


class RouterSpec(Spec):
    host: str = "127.0.0.1"  # where `vfleet up` listens; the chart listens on all addresses
    port: int = Field(8000, ge=0, le=65535)
    # kv: by the engines' own KV-cache events (their engines publish them, see engine rules)
    policy: Policy = "least_load"
    model_policies: dict[str, Policy] = Field(default_factory=dict)
    api_keys: tuple[str, ...] = ()
    rate_limit_per_minute: float = Field(0.0, ge=0)  # requests per key; 0: no limit
    token_limit_per_minute: float = Field(0.0, ge=0)  # tokens per key (usage); 0: no limit
    # Named keys with model allowlists and budgets (docs/router.md, Tenancy), a relative path
    # read from the spec file's directory; read by `vfleet up`. The chart reads one from a
    # Secret (kubernetes.tenants.secretName): k8s render warns when the spec names none.
    tenants_file: str | None = None
    replicas: int = Field(1, ge=0)  # Kubernetes
    workers: int = Field(1, ge=1, le=64)  # router processes sharing the port (SO_REUSEPORT)
    kubernetes: dict[str, Any] = Field(default_factory=dict)  # routerSpec chart values, as written
    _tenants_written: str | None = PrivateAttr(None)  # a relative tenants_file as written

    def joined_to(self, directory: str) -> RouterSpec:
        """These settings with a relative tenants file joined to `directory` (`~` is absolute
        enough, as for a source)."""
        path = self.tenants_file
        if not path or path.startswith(("/", "~")):
            return self
        out = self.model_copy(update={"tenants_file": _joined(directory, path)})
        out._tenants_written = path
        return out

    def as_written(self) -> RouterSpec:
        if self._tenants_written is None:
            return self
        out = self.model_copy(update={"tenants_file": self._tenants_written})
        out._tenants_written = None
        return out


class Fleet(Spec):
    name: str = "fleet"
    engine: Literal["vllm", "sim"] = "vllm"  # default for models that do not name one
    models: tuple[Model, ...] = Field(min_length=1)
    router: RouterSpec = Field(default_factory=RouterSpec)
    kubernetes: FleetKubernetes = Field(default_factory=FleetKubernetes)
    imported_from: str | None = None  # the detected input format, for reports only

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r} is not a valid fleet name (lower-case, digits, '-')")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Fleet:
        seen: dict[str, str] = {}
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique: {', '.join(dup)} repeats")
        for m in self.models:
            for served in m.served_names:
                if served in seen and seen[served] != m.name:
                    raise ValueError(
                        f"served name {served!r} is used by both {seen[served]} and {m.name}"
                    )
                seen[served] = m.name
        unknown = sorted(set(self.router.model_policies) - set(seen) - set(names))
        if unknown:
            raise ValueError(f"router.modelPolicies names unknown models: {', '.join(unknown)}")
        return self

    def engine_of(self, model: Model) -> str:
        return model.engine or self.engine

    def paths_as_written(self) -> Fleet:
        """The fleet with each local path as its file wrote it: the sources
        (`Source.as_written`), LoRA adapters, chat template files and the router's tenants
        file."""
        models = tuple(
            m.model_copy(update={"source": m.source.as_written(), "vllm": m.vllm.as_written()})
            for m in self.models
        )
        return self.model_copy(update={"models": models, "router": self.router.as_written()})
