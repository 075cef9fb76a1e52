"""The kv policy pins a data-parallel rank: a real router in front of a recording HTTP server
(which passes everything on to a simulator engine) sends vLLM's `X-data-parallel-rank` header
when the engine's KV events say its rank 1 holds the prompt's prefix, and never for an engine
whose events come from one rank.

The simulator publishes as rank 0; a relay on 127.0.0.1 re-publishes its batches as rank 1, so
the block hashes are the engine's own and only the rank is made up."""

from __future__ import annotations

import http.client
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import msgpack
import pytest
import zmq

from conftest import SimProcess
from httpclient import Client, wait_for
from test_router_kv import SYSTEM, chat, kv_sim, series, warm

Factory = Callable[..., SimProcess]
HEADER = "x-data-parallel-rank"
# Response headers the recorder sets itself (it answers with the whole body and its length).
HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class Recorder:
    """An HTTP server on 127.0.0.1 that records each request's rank headers and passes the
    request on to `target` (the engine), answering with the engine's answer."""

    def __init__(self, target: str) -> None:
        self.target = urlsplit(target).netloc
        # (path, every value of the rank header, in order); bounded
        self.seen: deque[tuple[str, list[str]]] = deque(maxlen=1000)
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the router's pool expects

            def do_GET(self) -> None:
                self._pass_on()

            def do_POST(self) -> None:
                self._pass_on()

            def _pass_on(self) -> None:
                recorder.seen.append((self.path, self.headers.get_all(HEADER) or []))
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                conn = http.client.HTTPConnection(recorder.target, timeout=10)
                try:
                    conn.request(self.command, self.path, body, headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP:
                            self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def ranks(self, path: str) -> list[list[str]]:
        """The rank headers of each request to `path`, oldest first."""
        return [values for p, values in list(self.seen) if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class Relay:
    """Re-publishes the batches of the publisher at `source` as data-parallel rank `rank`."""

    def __init__(self, source: str, rank: int, bind: str = "tcp://127.0.0.1:*") -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(source)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(bind)
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.rank = rank
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.sub.poll(50):
                continue
            topic, seq, payload = self.sub.recv_multipart()
            batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            batch = [*batch[:2], self.rank]  # [ts, events, dp_rank]
            self.pub.send_multipart([topic, seq, msgpack.packb(batch)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sub.close()
        self.pub.close()
        self.ctx.term()


@pytest.fixture
def recorders() -> Iterator[Callable[[str], Recorder]]:
    made: list[Recorder] = []

    def make(target: str) -> Recorder:
        made.append(Recorder(target))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def relays() -> Iterator[Callable[[str, int], Relay]]:
    made: list[Relay] = []

    def make(source: str, rank: int) -> Relay:
        made.append(Relay(source, rank))
        return made[-1]

    yield make
    for r in made:
        r.close()


CHAT = "/v1/chat/completions"


def hit(client: Client, question: str) -> bool:
    """Send one request of SYSTEM's prefix; whether the kv policy decided it as a hit (the
    events of the engine's prefix have arrived)."""
    before = series(client, "vfleet_router_kv_decisions_total", "reason").get("hit", 0.0)
    chat(client, SYSTEM, question)
    return series(client, "vfleet_router_kv_decisions_total", "reason").get("hit", 0.0) > before


@pytest.mark.timeout(90)
def test_a_prefix_held_by_rank_1_is_pinned_there(
    sim_factory: Factory,
    router_factory: Factory,
    recorders: Callable[[str], Recorder],
    relays: Callable[[str, int], Relay],
) -> None:
    sim, endpoint = kv_sim(sim_factory)
    front = recorders(sim.url)
    relay = relays(endpoint, 1)
    router = router_factory(
        "--policy", "kv", "--backend", front.url, "--kv-events", f"{front.url}={relay.endpoint}"
    )
    client = Client(router.url)
    warm(client, "a warm-up prompt long enough to fill blocks " * 20)
    # The engine caches the prefix; its events, as rank 1's, reach the router: a hit.
    assert wait_for(lambda: hit(client, "first question"), timeout_s=20, interval_s=0.05)
    sent = len(front.ranks(CHAT))
    for i in range(3):
        chat(client, SYSTEM, f"question {i}")
    assert front.ranks(CHAT)[sent:] == [["1"]] * 3
    # A client's own rank header stays, after the router's: vLLM reads the first.
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "mine"}]
    body = {"model": "demo", "messages": messages, "max_tokens": 2}
    resp = client.post(CHAT, body, headers={"X-Data-Parallel-Rank": "0"})
    assert resp.status == 200, resp.body
    assert front.ranks(CHAT)[-1] == ["1", "0"]
    # Metadata routes are not routed by the policy: no pin.
    assert all(values == [] for p, values in list(front.seen) if p != CHAT)


@pytest.mark.timeout(90)
def test_an_engine_of_one_rank_gets_no_rank_header(
    sim_factory: Factory, router_factory: Factory, recorders: Callable[[str], Recorder]
) -> None:
    sim, endpoint = kv_sim(sim_factory)
    front = recorders(sim.url)
    router = router_factory(
        "--policy", "kv", "--backend", front.url, "--kv-events", f"{front.url}={endpoint}"
    )
    client = Client(router.url)
    warm(client, "a warm-up prompt long enough to fill blocks " * 20)
    assert wait_for(lambda: hit(client, "first question"), timeout_s=20, interval_s=0.05)
    for i in range(3):
        chat(client, SYSTEM, f"question {i}")
    assert front.ranks(CHAT) and all(values == [] for values in front.ranks(CHAT))


def _port_pair(ctx: zmq.Context[zmq.Socket[bytes]]) -> tuple[zmq.Socket[bytes], int]:
    """A PUB socket bound on 127.0.0.1 at a port whose next port was free a moment ago (rank 0's
    publisher, which publishes nothing here; rank 1's relay binds the next)."""
    for _ in range(50):
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:*")
        port = int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rpartition(":")[2])
        probe = ctx.socket(zmq.PUB)
        probe.setsockopt(zmq.LINGER, 0)
        try:
            probe.bind(f"tcp://127.0.0.1:{port + 1}")
        except zmq.ZMQError:
            sock.close()
            continue
        finally:
            probe.close()
        return sock, port
    raise AssertionError("no two free consecutive ports")


@pytest.mark.timeout(90)
def test_the_endpoints_file_rank_count_subscribes_to_every_rank(
    sim_factory: Factory,
    router_factory: Factory,
    recorders: Callable[[str], Recorder],
    relays: Callable[[str, int], Relay],
    tmp_path: Path,
) -> None:
    """An endpoints-file entry with `kv_ranks: 2` names rank 0's publisher only; rank 1's events
    (at that port + 1, as vLLM offsets it) reach the router, and the prefix is pinned there."""
    sim, endpoint = kv_sim(sim_factory)
    front = recorders(sim.url)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    rank0, port = _port_pair(ctx)
    try:
        relays(endpoint, 1).close()  # the fixture's relays bind anywhere: this one must not
        relay = Relay(endpoint, 1, bind=f"tcp://127.0.0.1:{port + 1}")
        try:
            feed = tmp_path / "endpoints.json"
            entry = {"url": front.url, "kv_events": f"tcp://127.0.0.1:{port}", "kv_ranks": 2}
            feed.write_text(json.dumps([entry]))
            router = router_factory("--endpoints-file", str(feed), "--policy", "kv")
            client = Client(router.url)
            assert wait_for(lambda: client.get("/v1/models").status == 200, timeout_s=20)
            warm(client, "a warm-up prompt long enough to fill blocks " * 20)
            assert wait_for(lambda: hit(client, "first question"), timeout_s=20, interval_s=0.05)
            sent = len(front.ranks(CHAT))
            chat(client, SYSTEM, "pinned")
            assert front.ranks(CHAT)[sent:] == [["1"]]
        finally:
            relay.close()
    finally:
        rank0.close()
        ctx.term()
