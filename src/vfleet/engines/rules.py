"""The engine rules vfleet shares with its Helm chart, as typed values. Pure.

`charts/vfleet/files/engine-rules.yaml` holds the vLLM flag table (spec field, chart key, flag),
the task flags and the version they changed in, the model's own flags (served names, revision
and the sources it is written for), the LoRA and tool-calling flags and when they are written,
the rewrites of flags older guides use, the GPU-share-to-memory rule, and the KV-event
publisher's flag and the policies that turn it on. The chart's
templates read the same file through `.Files.Get`, so `vfleet up` and `helm install` cannot
drift apart. `vfleet.engines.rulefile` finds and reads the
file; the command lines, the flag reader and the GPU packer get the parsed `EngineRules` passed in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

# A TCP publisher's replay socket listens REPLAY_OFFSET ports above it (the chart's kv-replay
# port): vLLM offsets both sockets by the data-parallel rank, so rank r publishes on port + r
# and replays on port + REPLAY_OFFSET + r, and up to 100 ranks never collide (kvwire.MAX_RANKS).
from vfleet.router.kvwire import REPLAY_OFFSET

Version = tuple[int, ...]
SettingType = Literal["int", "float", "str", "switch", "flag"]
Place = Literal["vllmConfig", "modelSpec"]
_TYPES = ("int", "float", "str", "switch", "flag")
_PLACES = ("vllmConfig", "modelSpec")


# vLLM's data-parallel size flag and its short spelling (`vllm serve --help`)
DP_FLAGS: Final = ("--data-parallel-size", "-dp")


class RulesError(ValueError):
    """The rules file is missing or malformed; one line for the user."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One typed vLLM setting: fleet-spec field, chart key and the flag it becomes."""

    field: str
    key: str
    flag: str
    type: SettingType
    aliases: tuple[str, ...] = ()
    negated: str | None = None  # switch only: the flag for false
    default: int | float | None = None  # a value equal to it is left out
    place: Place = "vllmConfig"  # the chart key's mapping: vllmConfig or the modelSpec entry


@dataclass(frozen=True, slots=True)
class KeyedFlag:
    """A flag and the chart key that asks for it."""

    key: str
    flag: str


@dataclass(frozen=True, slots=True)
class LoraRules:
    """LoRA flags, written only when LoRA is on (enabled, or modules listed)."""

    enable: KeyedFlag  # key on the modelSpec entry
    settings: tuple[Setting, ...]  # fields of the spec's vllm.lora, keys under vllmConfig
    modules: KeyedFlag  # NAME=PATH values; key under vllmConfig


@dataclass(frozen=True, slots=True)
class ToolRules:
    enable: KeyedFlag  # bare flag; key on the modelSpec entry
    parser: KeyedFlag  # flag and parser name; key on the modelSpec entry


@dataclass(frozen=True, slots=True)
class KvEventsRules:
    """vLLM's KV-event publisher, on for the models whose router policy is in `policies`."""

    flag: str  # takes the JSON config
    policies: frozenset[str]
    port: int  # the chart's container port for the publisher

    @staticmethod
    def tcp(port: int) -> str:
        """The publisher's endpoint on `port`: all addresses, as vLLM binds only an endpoint with
        a `*` host (any other TCP endpoint it connects to)."""
        return f"tcp://*:{port}"

    @staticmethod
    def replay_port(port: int) -> int:
        """The replay socket's port of the (rank 0) publisher on `port`."""
        return port + REPLAY_OFFSET

    @staticmethod
    def ports(port: int, ranks: int = 1) -> tuple[range, range]:
        """(publisher ports, replay ports) of an engine of `ranks` data-parallel ranks whose
        rank 0 publishes on `port`: vLLM binds rank r's sockets at these + r."""
        replay = port + REPLAY_OFFSET
        return range(port, port + ranks), range(replay, replay + ranks)

    @staticmethod
    def config(endpoint: str, replay: str | None = None) -> str:
        """The flag's JSON for a publisher bound at `endpoint` (`tcp` or an ipc:// path), with
        its replay socket at `replay` (the router asks there for batches it missed, where
        `router.kvwire` says). Keys sorted, no spaces: as the chart's toJson."""
        doc: dict[str, object] = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": endpoint,
        }
        if replay is not None:
            doc["replay_endpoint"] = replay
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A flag older guides use, rewritten from vLLM `since` on."""

    flag: str
    since: Version
    drop: bool = False
    to: str | None = None
    one: str | None = None  # the new flag when exactly one value is given
    why: str = ""


@dataclass(frozen=True, slots=True)
class EngineRules:
    settings: tuple[Setting, ...]
    runner_since: Version
    task_flag: str  # --task X, before runner_since
    runner_flag: str  # --runner generate|pooling, from runner_since on
    convert_flag: str  # --convert Y, with --runner pooling
    convert: Mapping[str, str]  # vfleet task -> --convert value
    from_task: Mapping[str, str]  # --task value -> vfleet task
    from_convert: Mapping[str, str]  # --convert value -> vfleet task
    served_flag: str  # --served-model-name NAME...
    revision_flag: str  # --revision REV
    revision_sources: frozenset[str]  # source kinds vLLM fetches itself: --revision for these
    lora: LoraRules
    tools: ToolRules
    host_flag: str  # --host H, vfleet's
    port_flag: str  # --port P, vfleet's
    rewrites: tuple[Rewrite, ...]
    headroom_pct: int
    kv_events: KvEventsRules

    @property
    def owned(self) -> frozenset[str]:
        """Flags vfleet assigns itself: dropped from hand-written ones."""
        return frozenset((self.host_flag, self.port_flag))

    def share_memory(self, share_pct: int, sliced: bool = False) -> float:
        """--gpu-memory-utilization for a `share_pct`% GPU share: of the whole device, or of
        the slice when the device shows only the slice (HAMi). Integer percent arithmetic, as
        the chart's templates do it, so both give the same number."""
        if sliced:
            return self.headroom_pct / 100
        return share_pct * self.headroom_pct // 100 / 100


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


def since(version: Version | None, first: Version) -> bool:
    return version is None or version >= first  # unknown: assume a current vLLM


def parse(raw: Any, where: str = "engine rules") -> EngineRules:
    """The rules from the file's YAML; RulesError names what is wrong."""
    try:
        task, model, lora, tools = raw["task"], raw["model"], raw["lora"], raw["toolCalling"]
        return EngineRules(
            settings=tuple(_setting(s) for s in raw["settings"]),
            runner_since=_version(task["runnerSince"]),
            task_flag=str(task["flags"]["task"]),
            runner_flag=str(task["flags"]["runner"]),
            convert_flag=str(task["flags"]["convert"]),
            convert=_names(task["convert"]),
            from_task=_names(task["fromTask"]),
            from_convert=_names(task["fromConvert"]),
            served_flag=str(model["served"]),
            revision_flag=str(model["revision"]["flag"]),
            revision_sources=frozenset(str(k) for k in model["revision"]["sources"]),
            lora=LoraRules(
                enable=_keyed(lora["enable"]),
                settings=tuple(_setting(s) for s in lora["settings"]),
                modules=_keyed(lora["modules"]),
            ),
            tools=ToolRules(enable=_keyed(tools["enable"]), parser=_keyed(tools["parser"])),
            host_flag=str(raw["owned"]["host"]),
            port_flag=str(raw["owned"]["port"]),
            rewrites=tuple(_rewrite(r) for r in raw["rewrites"]),
            headroom_pct=_percent(raw["gpuShare"]["headroomPercent"]),
            kv_events=_kv_events(raw["kvEvents"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise RulesError(f"{where}: {detail}") from None


def _setting(raw: Mapping[str, Any]) -> Setting:
    kind = raw["type"]
    if kind not in _TYPES:
        raise ValueError(f"setting {raw.get('field')}: type {kind!r} is not one of {_TYPES}")
    if kind == "switch" and not raw.get("negated"):
        raise ValueError(f"setting {raw['field']}: a switch needs `negated`")
    place = raw.get("place", "vllmConfig")
    if place not in _PLACES:
        raise ValueError(f"setting {raw['field']}: place {place!r} is not one of {_PLACES}")
    return Setting(
        field=str(raw["field"]),
        key=str(raw["key"]),
        flag=str(raw["flag"]),
        type=kind,
        aliases=tuple(str(a) for a in raw.get("aliases") or ()),
        negated=raw.get("negated"),
        default=raw.get("default"),
        place=place,
    )


def _keyed(raw: Mapping[str, Any]) -> KeyedFlag:
    return KeyedFlag(key=str(raw["key"]), flag=str(raw["flag"]))


def _rewrite(raw: Mapping[str, Any]) -> Rewrite:
    drop, to = bool(raw.get("drop")), raw.get("to")
    if drop == bool(to):
        raise ValueError(f"rewrite {raw.get('flag')}: give either `drop: true` or `to`")
    return Rewrite(
        flag=str(raw["flag"]),
        since=_version(raw["since"]),
        drop=drop,
        to=str(to) if to else None,
        one=str(raw["one"]) if raw.get("one") else None,
        why=str(raw.get("why") or ""),
    )


def data_parallel_size(args: Sequence[str]) -> int:
    """The data-parallel size vLLM flags `args` ask for (`--data-parallel-size N`, `-dp N`,
    `--data-parallel-size=N`; the last one wins, as in vLLM's parser); 1 when none or not a
    positive int (vLLM then refuses the line itself)."""
    size = 1
    for i, word in enumerate(args):
        name, eq, value = word.partition("=")
        if name.replace("_", "-") not in DP_FLAGS:
            continue
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        size = int(value) if value.isdigit() and int(value) > 0 else 1
    return size


def _kv_events(raw: Mapping[str, Any]) -> KvEventsRules:
    port = raw["port"]
    top = 65535 - REPLAY_OFFSET
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= top:
        raise ValueError(
            f"kvEvents.port {port!r}: 1-{top} (its replay socket takes port + {REPLAY_OFFSET})"
        )
    return KvEventsRules(
        flag=str(raw["flag"]),
        policies=frozenset(str(p) for p in raw["policies"]),
        port=port,
    )


def _version(text: Any) -> Version:
    version = parse_version(str(text))
    if version is None:
        raise ValueError(f"{text!r} is not a version")
    return version


def _names(raw: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw.items()}


def _percent(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ValueError(f"gpuShare.headroomPercent {value!r}: a whole percent, 1-100")
    return value
