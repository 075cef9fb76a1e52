"""`vfleet up` of a fleet routed by `kv`: its generating engines publish KV-cache events on a
socket of their own in the run directory (a TCP port when its path is too long), the router's
endpoints file says where, and the router keeps a repeated prefix on one engine. Real supervisor,
simulated engines and router processes on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from conftest import start_router
from httpclient import Client, metric_value, wait_for
from test_local_up import Up, start_up
from vfleet.bench import promtext
from vfleet.engines.rulefile import load_rules
from vfleet.fleetspec.load import load
from vfleet.local.plan import Options, build, ports_needed

pytestmark = pytest.mark.timeout(120)

FLEET = """\
name: kvup
engine: sim
router: {policy: kv}
models:
  - name: chat
    servedNames: [kv-chat]
    source: hf://Qwen/Qwen3-0.6B
    task: generate
    replicas: 3
    sim: {profile: instant}
  - name: embed
    servedNames: [kv-embed]
    source: hf://BAAI/bge-m3
    task: embed
    replicas: 1
    sim: {profile: instant}
"""
TCP = re.compile(r"^tcp://127\.0\.0\.1:(\d+)$")
PREFIX = "the router keeps this long shared system prompt on one engine " * 40  # ~600 tokens


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kvspec") / "fleet.yaml"
    path.write_text(FLEET, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def up(fleet_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    fleet = start_up(tmp_path_factory.mktemp("kvrun"), "-f", str(fleet_file))
    try:
        yield fleet
    finally:
        fleet.stop()


def endpoints(up: Up) -> list[dict[str, Any]]:
    listed = json.loads((up.run_dir / "endpoints.json").read_text())
    assert isinstance(listed, list)
    return listed


def served(url: str) -> float:
    """Requests an engine has finished, from its own /metrics."""
    text = Client(url).get("/metrics").body.decode()
    return promtext.parse(text).get("vllm:request_success_total", 0.0)


def complete(url: str, prompt: str) -> None:
    body = {"model": "kv-chat", "prompt": prompt, "max_tokens": 4, "ignore_eos": True}
    resp = Client(url).post("/v1/completions", body)
    assert resp.status == 200, resp.body


def bound(argv: list[str]) -> tuple[str, str | None]:
    """Where an engine's command line binds its KV-event publisher and its replay socket."""
    config = json.loads(argv[argv.index("--kv-events-config") + 1])
    assert config["enable_kv_cache_events"] is True and config["publisher"] == "zmq"
    return str(config["endpoint"]), config.get("replay_endpoint")


@pytest.mark.parametrize("where", ["socket", "port", "long path"])
def test_the_plan_gives_each_generating_engine_a_publisher(fleet_file: Path, where: str) -> None:
    rules = load_rules()
    fleet = load([fleet_file]).fleet
    assert ports_needed(fleet, 8, rules) == 3 * 2 + 1  # enough for ports, whichever it is
    # ("long path": the publisher's socket path would fit, its replay socket's would not)
    folder = {"socket": "/run/x", "port": None, "long path": "/run/" + "x" * 80}[where]
    opts = Options(engine_rules=rules, kv_events_dir=folder)
    plan = build(fleet, opts, iter(range(20000, 20100)))
    chats = [e for e in plan.engines if e.model == "chat"]
    (embed,) = [e for e in plan.engines if e.model == "embed"]
    assert embed.kv_events is None and "--kv-events-config" not in embed.argv
    taken = {e.port for e in plan.engines}
    for e in chats:
        if where == "socket":
            assert e.kv_events == f"ipc:///run/x/{e.key}.sock"
            # the replay socket beside it, where the router's subscriber looks (kvwire)
            assert bound(e.argv) == (e.kv_events, f"ipc:///run/x/{e.key}.replay.sock")
            continue
        m = TCP.match(e.kv_events or "")
        assert m, e.kv_events
        port = int(m.group(1))
        assert port not in taken
        taken.add(port)
        assert bound(e.argv) == (f"tcp://*:{port}", None)  # no free neighbour port reserved


def test_the_endpoints_file_names_each_publisher(up: Up) -> None:
    """Each chat engine binds a socket in the (private) run directory, and its entry names it."""
    listed = endpoints(up)
    chats = [e for e in listed if e["models"] == ["kv-chat"]]
    (embed,) = [e for e in listed if e["models"] == ["kv-embed"]]
    assert len(chats) == 3 and "kv_events" not in embed
    assert up.run_dir.stat().st_mode & 0o077 == 0
    for row in up.state()["engines"]:
        if row["model"] != "chat":
            continue
        entry = next(e for e in chats if e["url"] == row["url"])
        path = up.run_dir.resolve() / f"{row['key']}.sock"
        assert entry["kv_events"] == f"ipc://{path}"
        assert path.is_socket()
        banner = (up.run_dir / "logs" / f"{row['key']}.log").read_text().splitlines()[0]
        assert f'"endpoint":"ipc://{path}"' in banner  # the spawn line


def test_an_engine_publishes_where_the_file_says(up: Up) -> None:
    entry = next(e for e in endpoints(up) if e["models"] == ["kv-chat"])
    publishes(entry)


def test_a_restarted_engine_binds_its_socket_again(up: Up) -> None:
    """kill -9 leaves the socket file behind; the restarted engine binds the same path."""
    row = next(r for r in up.state()["engines"] if r["key"] == "chat-2")
    os.killpg(row["pid"], signal.SIGKILL)

    def back() -> bool:
        now = up.engine("chat-2")
        return now["pid"] != row["pid"] and now["state"] == "healthy"

    assert wait_for(back, timeout_s=30)
    entry = next(e for e in endpoints(up) if e["url"] == row["url"])
    assert entry["kv_events"].endswith("/chat-2.sock")
    publishes(entry)


def publishes(entry: dict[str, Any]) -> None:
    """A subscriber at the entry's endpoint receives a batch with BlockStored once the engine
    serves a new prompt."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(entry["kv_events"])
        got: list[list[bytes]] = []
        sent = itertools.count()

        def stored() -> bool:
            # a subscriber joins a moment after connect: new prompts until a batch arrives
            complete(entry["url"], f"fresh prompt {next(sent)} " * 20)
            if sub.poll(200):
                got.append(sub.recv_multipart())
            return bool(got)

        assert wait_for(stored, timeout_s=20, interval_s=0.05)
        _topic, seq, payload = got[0]
        assert len(seq) == 8
        _ts, events, _rank = msgpack.unpackb(payload)
        assert "BlockStored" in {e["type"] for e in events}
    finally:
        sub.close()
        ctx.term()


def test_the_router_keeps_a_repeated_prefix_on_one_engine(up: Up) -> None:
    urls = [e["url"] for e in endpoints(up) if e["models"] == ["kv-chat"]]
    before = {u: served(u) for u in urls}
    for i in range(6):
        complete(up.url, f"{PREFIX} question number {i}?")
    after = {u: served(u) for u in urls}
    counts = sorted(after[u] - before[u] for u in urls)
    assert counts == [0, 0, 6], counts
    # ...and learned what that engine holds from its events, through the endpoints file
    busy = next(u for u in urls if after[u] > before[u])
    router = Client(up.url)

    def known() -> bool:
        text = router.get("/metrics").body.decode()
        try:
            return metric_value(text, "vfleet_router_kv_blocks", upstream=busy) > 0
        except AssertionError:  # no events from it yet: no sample
            return False

    # The router may have subscribed after the engine published the prefix's blocks: it then
    # catches up from the engine's replay socket as soon as it connects, with no new request.
    assert wait_for(known, timeout_s=30)
    # A router started now, beside engines that are idle, knows what they hold at once.
    late = start_router(
        "--endpoints-file", str(up.run_dir / "endpoints.json"), "--policy", "kv", timeout_s=30
    )
    try:
        late_client = Client(late.url)

        def late_knows() -> bool:
            text = late_client.get("/metrics").body.decode()
            try:
                return metric_value(text, "vfleet_router_kv_blocks", upstream=busy) > 0
            except AssertionError:
                return False

        assert wait_for(late_knows, timeout_s=30)
        assert served(busy) == after[busy]  # no request reached the engine meanwhile
    finally:
        late.stop()
