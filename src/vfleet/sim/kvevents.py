"""KV-cache events on the wire, as vLLM publishes them.

Each engine step's events go out as one ZMQ PUB multipart message
`[topic, seq (8-byte big-endian), msgpack([ts, [event, ...], dp_rank])]`, every event a map tagged
with `"type"`. A ROUTER socket at `replay_endpoint` answers `[b"", start_seq]` with the buffered
batches from `start_seq` on, then an end marker whose seq is eight 0xff bytes. Encoding is pure;
`ZmqPublisher` owns the sockets (replay served from its own thread, which alone touches the ROUTER).
Like vLLM's, the replay is one burst through a ROUTER with the default send queue (1,000
messages), which drops what overflows: subscribers must cope, and tests see that they do.

Data parallelism: the publisher of rank r binds both its endpoints r TCP ports up
(`offset_endpoint`, vLLM's rule) and stamps its batches with r.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

import msgpack
import zmq

from vfleet.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

END_SEQ = b"\xff" * 8


@dataclass(frozen=True, slots=True)
class KVEventsConfig:
    """vLLM's `--kv-events-config` JSON, same keys and defaults."""

    enable_kv_cache_events: bool = False
    publisher: str | None = None  # "zmq" or "null"; None picks zmq when events are enabled
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10000  # batches kept for replay
    hwm: int = 100000
    max_queue_size: int = 100000
    topic: str = ""

    def __post_init__(self) -> None:
        types = {
            "enable_kv_cache_events": bool,
            "buffer_steps": int,
            "hwm": int,
            "max_queue_size": int,
            "endpoint": str,
            "topic": str,
        }
        for key, kind in types.items():
            value = getattr(self, key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"--kv-events-config: {key} must be {kind.__name__}")
        for key in ("buffer_steps", "hwm", "max_queue_size"):
            if getattr(self, key) < 0:
                raise ValueError(f"--kv-events-config: {key} must be >= 0")
        if self.replay_endpoint is not None and not isinstance(self.replay_endpoint, str):
            raise ValueError("--kv-events-config: replay_endpoint must be str")

    @classmethod
    def parse(cls, text: str) -> KVEventsConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--kv-events-config is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("--kv-events-config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"--kv-events-config: unknown keys {unknown}")
        cfg = cls(**raw)
        if cfg.publisher not in (None, "zmq", "null"):
            raise ValueError(f"--kv-events-config: unknown publisher {cfg.publisher!r}")
        return cfg

    @property
    def active(self) -> bool:
        kind = self.publisher or ("zmq" if self.enable_kv_cache_events else "null")
        return self.enable_kv_cache_events and kind == "zmq"


def event_map(ev: KVEvent) -> dict[str, Any]:
    if isinstance(ev, BlockStored):
        return {
            "type": "BlockStored",
            "block_hashes": list(ev.block_hashes),
            "parent_block_hash": ev.parent_block_hash,
            "token_ids": list(ev.token_ids),
            "block_size": ev.block_size,
            "lora_id": None,
            "medium": "GPU",
            "lora_name": ev.lora_name,
            "extra_keys": [None] * len(ev.block_hashes),
            "group_idx": 0,
            "kv_cache_spec_kind": "full_attention",
        }
    if isinstance(ev, BlockRemoved):
        return {
            "type": "BlockRemoved",
            "block_hashes": list(ev.block_hashes),
            "medium": "GPU",
            "group_idx": 0,
        }
    assert isinstance(ev, AllBlocksCleared)
    return {"type": "AllBlocksCleared"}


def coalesce(events: list[KVEvent]) -> list[KVEvent]:
    """Merge runs of stored blocks that chain onto each other, as vLLM reports one request's
    newly cached blocks in a single BlockStored."""
    out: list[KVEvent] = []
    for ev in events:
        prev = out[-1] if out else None
        if (
            isinstance(ev, BlockStored)
            and isinstance(prev, BlockStored)
            and ev.parent_block_hash == prev.block_hashes[-1]
            and ev.lora_name == prev.lora_name
        ):
            out[-1] = BlockStored(
                prev.block_hashes + ev.block_hashes,
                prev.parent_block_hash,
                prev.token_ids + ev.token_ids,
                prev.block_size,
                prev.lora_name,
            )
        else:
            out.append(ev)
    return out


def encode_batch(ts: float, events: list[KVEvent], dp_rank: int = 0) -> bytes:
    payload = msgpack.packb([ts, [event_map(e) for e in coalesce(events)], dp_rank])
    assert isinstance(payload, bytes)
    return payload


def offset_endpoint(endpoint: str, dp_rank: int) -> str:
    """Where data-parallel rank `dp_rank` binds a socket configured at `endpoint`: the TCP port
    plus the rank, an inproc name with a `_dpN` suffix; vLLM refuses any other transport (ipc)
    on a rank above 0, and so does this."""
    if dp_rank == 0:
        return endpoint
    if endpoint.startswith("inproc://"):
        return f"{endpoint}_dp{dp_rank}"
    host, _, port = endpoint.rpartition(":")
    if not endpoint.startswith("tcp://") or not port.isdigit():
        raise ValueError(f"cannot offset {endpoint} by data-parallel rank {dp_rank}")
    return f"{host}:{int(port) + dp_rank}"


def binds(endpoint: str) -> bool:
    """vLLM binds endpoints with a wildcard host or IPC/in-process transports, else connects."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class ZmqPublisher:
    """Publishes event batches; call `close()` on shutdown."""

    def __init__(
        self,
        config: KVEventsConfig,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        dp_rank: int = 0,
    ):
        self._ctx = ctx or zmq.Context.instance()
        self._dp_rank = dp_rank
        endpoint = offset_endpoint(config.endpoint, dp_rank)
        replay = config.replay_endpoint and offset_endpoint(config.replay_endpoint, dp_rank)
        self._topic = config.topic.encode()
        self._seq = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._lock = threading.Lock()
        self._pub = self._ctx.socket(zmq.PUB)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        router = self._ctx.socket(zmq.ROUTER) if replay else None
        try:
            self._pub.setsockopt(zmq.SNDHWM, config.hwm)
            self._pub.setsockopt(zmq.LINGER, 0)
            if binds(endpoint):
                self._pub.bind(endpoint)
            else:
                self._pub.connect(endpoint)
            if router is not None and replay:
                router.setsockopt(zmq.LINGER, 0)
                router.bind(replay)
        except zmq.ZMQError:
            # a port taken: leave nothing bound behind (the caller may try other ports)
            self._pub.close(linger=0)
            if router is not None:
                router.close(linger=0)
            raise
        if router is not None:
            self._thread = threading.Thread(
                target=self._serve_replay, args=(router,), name="kv-replay", daemon=True
            )
            self._thread.start()

    @property
    def endpoint(self) -> str:
        """The PUB socket's address (with the real port when bound to port 0 or `*`)."""
        last = self._pub.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def publish(self, ts: float, events: list[KVEvent]) -> None:
        payload = encode_batch(ts, events, self._dp_rank)
        seq = self._seq
        self._seq += 1
        with self._lock:
            self._buffer.append((seq, payload))
        # Subscribers that fall behind the high-water mark lose batches, as in vLLM.
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart([self._topic, seq.to_bytes(8, "big"), payload], zmq.NOBLOCK)

    def _serve_replay(self, router: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not dict(poller.poll(100)):
                    continue
                frames = router.recv_multipart()
                if len(frames) != 3:
                    continue  # not [identity, b"", start_seq]
                ident, _, start = frames
                first = int.from_bytes(start, "big")
                with self._lock:
                    batches = [b for b in self._buffer if b[0] >= first]
                for seq, payload in batches:
                    router.send_multipart(
                        [ident, b"", self._topic, seq.to_bytes(8, "big"), payload]
                    )
                router.send_multipart([ident, b"", b"", END_SEQ, b""])
        finally:
            router.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._pub.close()
