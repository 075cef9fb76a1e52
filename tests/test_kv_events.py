"""KV-cache events from `vfleet sim` over ZMQ, compared with batches captured from vLLM 0.26.

As in vLLM, an endpoint without `*` is connected to, so each test binds its own SUB socket on
127.0.0.1 and hands its address to the simulator; the replay ROUTER is bound by the simulator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from conftest import DATA, SimProcess, start_sim
from httpclient import free_port, request

SAMPLE = json.loads((DATA / "kv_events_sample.json").read_text())
END_SEQ = b"\xff" * 8
BLOCK = 16
TOPIC = "kv-test"


def sample_events() -> list[dict[str, Any]]:
    """Every (untruncated) event in the capture; truncated batches end in '...N more' strings."""
    out = []
    for run in SAMPLE.values():
        if not isinstance(run, dict):
            continue
        for key in ("first_batches", "first_removed_batches"):
            for b in run.get(key, []):
                out += [e for e in b["batch"][1] if isinstance(e, dict)]
    return out


def type_names(v: object) -> set[str]:
    """The JSON-ish types of a value; lists also name their element types."""
    if isinstance(v, list):
        elems = {type(e).__name__ for e in v if not (isinstance(e, str) and e.startswith("..."))}
        return {"list"} | {f"list[{t}]" for t in elems}
    return {type(v).__name__}


def schema(events: list[dict[str, Any]], kind: str) -> tuple[set[str], dict[str, set[str]]]:
    chosen = [e for e in events if e["type"] == kind]
    assert chosen, kind
    keys = set(chosen[0])
    allowed: dict[str, set[str]] = {}
    for e in chosen:
        assert set(e) == keys
        for k, v in e.items():
            allowed.setdefault(k, set()).update(type_names(v))
    return keys, allowed


STORED_KEYS, STORED_TYPES = schema(sample_events(), "BlockStored")
REMOVED_KEYS, REMOVED_TYPES = schema(sample_events(), "BlockRemoved")


def test_sample_schema_is_what_vllm_documents() -> None:
    stored_keys = {
        "type",
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
        "extra_keys",
        "group_idx",
        "kv_cache_spec_kind",
    }
    assert stored_keys == STORED_KEYS
    assert {"type", "block_hashes", "medium", "group_idx"} == REMOVED_KEYS
    assert STORED_TYPES["parent_block_hash"] == {"NoneType", "int"}


# -- plumbing --------------------------------------------------------------------------------


def complete(url: str, prompt: str, max_tokens: int = 3) -> dict[str, Any]:
    status, body = request(
        url,
        "POST",
        "/v1/completions",
        {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True},
    )
    assert status == 200, body
    out: dict[str, Any] = json.loads(body)
    return out


def tokens(url: str, text: str) -> list[int]:
    status, body = request(url, "POST", "/tokenize", {"prompt": text})
    assert status == 200, body
    out: list[int] = json.loads(body)["tokens"]
    return out


@dataclass
class Batch:
    topic: bytes
    seq: int
    payload: bytes

    @property
    def decoded(self) -> Any:
        return msgpack.unpackb(self.payload, raw=False)

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.decoded[1]
        return events


class Subscriber:
    """A SUB socket bound on 127.0.0.1 that the simulator's PUB connects to."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def wait_connected(self, timeout_ms: int = 5000) -> None:
        """PUB drops what it sends before our subscription reaches it: wait for the handshake."""
        assert self.monitor.poll(timeout_ms), "the simulator's PUB socket never connected"
        assert recv_monitor_message(self.monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
        # A bound SUB attaches an accepted connection, and only then sends its subscription,
        # when its own thread next enters libzmq: poll once (nothing is published yet).
        assert not self.sock.poll(200)

    def drain(self, quiet_ms: int = 300, limit_s: float = 10.0) -> list[Batch]:
        """Batches until none arrives for `quiet_ms` (or `limit_s` passes)."""
        out: list[Batch] = []
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and self.sock.poll(quiet_ms):
            frames = self.sock.recv_multipart()
            assert len(frames) == 3, frames
            topic, seq, payload = frames
            assert len(seq) == 8
            out.append(Batch(topic, int.from_bytes(seq, "big"), payload))
        return out

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@dataclass
class Publisher:
    sim: SimProcess
    sub: Subscriber
    replay: str


def start_publisher(
    ctx: zmq.Context[zmq.Socket[bytes]], *args: str, replay: bool = False
) -> Publisher:
    sub = Subscriber(ctx)
    cfg: dict[str, object] = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": sub.endpoint,
        "topic": TOPIC,
    }
    replay_ep = f"tcp://127.0.0.1:{free_port()}" if replay else ""
    if replay:
        cfg["replay_endpoint"] = replay_ep
    sim = start_sim(
        "--model", "m", "--profile", "instant", "--kv-events-config", json.dumps(cfg), *args
    )
    sub.wait_connected()
    return Publisher(sim, sub, replay_ep)


@pytest.fixture
def publishers(zctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[list[Publisher]]:
    started: list[Publisher] = []
    yield started
    for p in started:
        p.sim.stop()
        p.sub.close()


def launch(
    publishers: list[Publisher], ctx: zmq.Context[zmq.Socket[bytes]], *args: str, **kw: bool
) -> Publisher:
    p = start_publisher(ctx, *args, **kw)
    publishers.append(p)
    return p


def prompt(i: int, blocks: int) -> str:
    """Distinct text of exactly `blocks` blocks plus 8 tokens (4 bytes a token)."""
    unit = f"prompt {i:04d} says hello. "  # 24 bytes
    text = (unit * (blocks * BLOCK * 4 // len(unit) + 1))[: blocks * BLOCK * 4]
    return text + "tail of it, ok. " * 2


def stored(batches: list[Batch]) -> list[dict[str, Any]]:
    return [e for b in batches for e in b.events if e["type"] == "BlockStored"]


def check_stored(ev: dict[str, Any]) -> None:
    assert set(ev) == STORED_KEYS
    for k, v in ev.items():
        assert type_names(v) <= STORED_TYPES[k], (k, v)
    n = len(ev["block_hashes"])
    assert n >= 1
    assert all(0 <= h < 2**64 for h in ev["block_hashes"])
    assert ev["parent_block_hash"] is None or 0 <= ev["parent_block_hash"] < 2**64
    assert ev["block_size"] == BLOCK
    assert len(ev["token_ids"]) == n * BLOCK
    assert ev["extra_keys"] == [None] * n
    assert ev["medium"] == "GPU"
    assert ev["lora_id"] is None and ev["lora_name"] is None
    assert ev["group_idx"] == 0
    assert ev["kv_cache_spec_kind"] == "full_attention"


# -- the live stream -------------------------------------------------------------------------


def test_live_batches_have_vllms_layout(
    publishers: list[Publisher], zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    p = launch(publishers, zctx)
    t0 = time.time()
    for i in range(3):
        complete(p.sim.url, prompt(i, 3 + i))
    batches = p.sub.drain()
    assert batches
    assert [b.seq for b in batches] == list(range(len(batches)))
    assert {b.topic for b in batches} == {TOPIC.encode()}
    for b in batches:
        ts, events, dp_rank = b.decoded
        assert isinstance(ts, float) and t0 - 5 < ts < time.time() + 5
        assert isinstance(events, list) and events
        assert dp_rank == 0
        for ev in events:
            assert ev["type"] == "BlockStored"
            check_stored(ev)
    # Each prompt's full blocks appear, first under no parent.
    firsts = [e for e in stored(batches) if e["parent_block_hash"] is None]
    assert [len(e["block_hashes"]) for e in firsts] == [3, 4, 5]


def test_token_ids_and_parent_chaining(
    publishers: list[Publisher], zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    p = launch(publishers, zctx)
    base = prompt(7, 6)  # 6 blocks + 8 tokens
    complete(p.sim.url, base)
    (first,) = stored(p.sub.drain())
    assert first["parent_block_hash"] is None
    assert len(first["block_hashes"]) == 6
    assert first["token_ids"] == tokens(p.sim.url, base)[: 6 * BLOCK]
    assert len(set(first["block_hashes"])) == 6

    longer = base + "and a continuation that fills more blocks. " * 3
    complete(p.sim.url, longer)
    (ext,) = stored(p.sub.drain())
    # The six cached blocks are reused; the new ones chain onto the last of them.
    assert ext["parent_block_hash"] == first["block_hashes"][-1]
    n = len(ext["block_hashes"])
    assert ext["token_ids"] == tokens(p.sim.url, longer)[6 * BLOCK : (6 + n) * BLOCK]
    assert not set(ext["block_hashes"]) & set(first["block_hashes"])


def test_generated_tokens_fill_blocks_that_chain_on_the_prompt(
    publishers: list[Publisher], zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    p = launch(publishers, zctx)
    text = prompt(3, 2)  # 2 blocks + 8 tokens
    out = complete(p.sim.url, text, max_tokens=25)
    assert out["usage"]["completion_tokens"] == 25
    events = stored(p.sub.drain())
    hashes: list[int] = []
    for ev in events:
        check_stored(ev)
        assert ev["parent_block_hash"] == (hashes[-1] if hashes else None)
        hashes += ev["block_hashes"]
    # The KV of the last sampled token is never computed, so 40 + 24 tokens fill four blocks.
    assert len(hashes) == 4


def test_hashes_are_identical_across_processes(
    publishers: list[Publisher], zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    a = launch(publishers, zctx)
    b = launch(publishers, zctx)
    text = prompt(11, 4)
    complete(a.sim.url, text)
    complete(b.sim.url, text)
    (ea,) = stored(a.sub.drain())
    (eb,) = stored(b.sub.drain())
    assert ea["block_hashes"] == eb["block_hashes"]
    assert ea["token_ids"] == eb["token_ids"]
    complete(a.sim.url, prompt(12, 4))
    (other,) = stored(a.sub.drain())
    assert not set(other["block_hashes"]) & set(ea["block_hashes"])


def test_evictions_publish_block_removed(
    publishers: list[Publisher], zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    p = launch(publishers, zctx, "--num-gpu-blocks", "64", "--max-model-len", "512")
    for i in range(12):  # 12 x 12 blocks through a 64-block cache
        complete(p.sim.url, prompt(100 + i, 12))
    batches = p.sub.drain()
    assert [b.seq for b in batches] == list(range(len(batches)))
    live: set[int] = set()
    removed = 0
    for b in batches:
        for ev in b.events:
            if ev["type"] == "BlockStored":
                check_stored(ev)
                assert ev["parent_block_hash"] is None or ev["parent_block_hash"] in live
                assert not set(ev["block_hashes"]) & live
                live.update(ev["block_hashes"])
            else:
                assert ev["type"] == "BlockRemoved"
                assert set(ev) == REMOVED_KEYS
                for k, v in ev.items():
                    assert type_names(v) <= REMOVED_TYPES[k], (k, v)
                assert ev["medium"] == "GPU" and ev["group_idx"] == 0
                for h in ev["block_hashes"]:
                    assert h in live, "removed a block that was never stored"
                    live.remove(h)
                removed += len(ev["block_hashes"])
    assert removed >= 12 * 12 - 64
    assert len(live) <= 64


def test_sleep_level_1_publishes_all_blocks_cleared(
    publishers: list[Publisher], zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    p = launch(publishers, zctx)
    text = prompt(21, 3)
    complete(p.sim.url, text)
    (before,) = stored(p.sub.drain())

    assert request(p.sim.url, "POST", "/sleep?level=0")[0] == 200
    assert request(p.sim.url, "POST", "/wake_up")[0] == 200
    assert p.sub.drain() == [], "level 0 only pauses scheduling; the cache stays"

    assert request(p.sim.url, "POST", "/sleep?level=1")[0] == 200
    batches = p.sub.drain()
    assert [b.events for b in batches] == [[{"type": "AllBlocksCleared"}]]
    assert batches[0].seq == 1
    assert request(p.sim.url, "POST", "/wake_up")[0] == 200

    # The cache really was dropped: the same prompt stores the same blocks again.
    complete(p.sim.url, text)
    (again,) = stored(p.sub.drain())
    assert again["block_hashes"] == before["block_hashes"]
    assert again["parent_block_hash"] is None


# -- replay ----------------------------------------------------------------------------------


def replay(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, start: int) -> list[list[bytes]]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(endpoint)
        dealer.send_multipart([b"", start.to_bytes(8, "big")])
        out: list[list[bytes]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert dealer.poll(5000), "no replay answer"
            frames = dealer.recv_multipart()
            out.append(frames)
            if frames[2] == END_SEQ:
                return out
        raise AssertionError("replay never sent its end marker")
    finally:
        dealer.close(linger=0)


def test_replay_returns_buffered_batches_then_an_end_marker(
    publishers: list[Publisher], zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    p = launch(publishers, zctx, replay=True)
    for i in range(4):
        complete(p.sim.url, prompt(30 + i, 2))
    live = p.sub.drain()
    assert len(live) >= 4

    frames = replay(zctx, p.replay, 0)
    assert frames[-1] == [b"", b"", END_SEQ, b""]
    body = frames[:-1]
    assert all(len(f) == 4 and f[0] == b"" for f in body)
    got = [(f[1], int.from_bytes(f[2], "big"), f[3]) for f in body]
    assert got == [(b.topic, b.seq, b.payload) for b in live]

    later = replay(zctx, p.replay, 2)
    assert [int.from_bytes(f[2], "big") for f in later[:-1]] == [b.seq for b in live[2:]]
    assert later[-1] == [b"", b"", END_SEQ, b""]

    beyond = replay(zctx, p.replay, 10_000)
    assert beyond == [[b"", b"", END_SEQ, b""]]
