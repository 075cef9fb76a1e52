"""SIGTERM drains the router, alone and under `vfleet up`: new connections are refused at once
while the process lives on, requests in flight (a long stream) finish complete, and then it exits
with 0. A request arriving on a keep-alive connection opened before the signal still gets a
complete answer."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from conftest import SimProcess
from httpclient import metric_value, request, wait_for
from test_local_up import alive, read_state, start_up

# ~3 s of decoding: 600 tokens at the small profile's ~1.1 ms per step, slowed 5x. Long enough
# that the checks after SIGTERM happen while the stream is still running.
SLOW_SIM = ("--profile", "small", "--time-scale", "5")
STREAM = {"model": "m", "prompt": "x", "max_tokens": 600, "ignore_eos": True, "stream": True}


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _refused(url: str) -> bool:
    """Whether a new TCP connection to `url` is refused (nothing listens there any more)."""
    try:
        sock = socket.create_connection(_address(url), timeout=2)
    except (ConnectionRefusedError, ConnectionResetError):
        # reset: the connection reached the backlog just as the listener closed
        return True
    sock.close()
    return False


class Stream:
    """A streaming completion, its first event read; `rest()` reads it to the end."""

    def __init__(self, url: str) -> None:
        self.http = http.client.HTTPConnection(*_address(url), timeout=30)
        self.http.request(
            "POST", "/v1/completions", json.dumps(STREAM), {"Content-Type": "application/json"}
        )
        self.resp = self.http.getresponse()
        assert self.resp.status == 200
        self.first = self.resp.readline()
        assert self.first.startswith(b"data: {"), self.first

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rest(self) -> tuple[int, bool]:
        """(tokens streamed, whether `data: [DONE]` ended it), the first event included."""
        body = (self.first + self.resp.read()).decode()
        self.http.close()
        events = [ln[len("data: ") :] for ln in body.split("\n") if ln.startswith("data: ")]
        tokens = sum(1 for e in events if e != "[DONE]" and json.loads(e)["choices"][0]["text"])
        return tokens, events[-1:] == ["[DONE]"]


def test_sigterm_lets_in_flight_requests_finish(
    sim_factory: Callable[..., SimProcess], router_factory: Callable[..., SimProcess]
) -> None:
    # ~1 s of decoding: 200 tokens at the small profile's ~1 ms per step, slowed 5x.
    sim = sim_factory("--model", "m", *SLOW_SIM)
    router = router_factory("--backend", sim.url)
    result: dict[str, object] = {}

    def long_request() -> None:
        body = {"model": "m", "prompt": "x", "max_tokens": 200, "ignore_eos": True}
        status, raw = request(router.url, "POST", "/v1/completions", body, timeout=30)
        result["status"] = status
        result["tokens"] = json.loads(raw)["usage"]["completion_tokens"]

    t = threading.Thread(target=long_request)
    t.start()

    # Wait until the router has the request in flight, then ask it to stop.
    def in_flight() -> bool:
        text = request(router.url, "GET", "/metrics")[1].decode()
        return metric_value(text, "vfleet_router_endpoint_inflight", upstream=sim.url) >= 1

    assert wait_for(in_flight, timeout_s=10)
    router.proc.send_signal(signal.SIGTERM)
    t.join(timeout=30)
    assert result == {"status": 200, "tokens": 200}
    assert router.wait_exit(timeout_s=10) == 0


def test_after_sigterm_new_and_idle_connections_end_while_a_stream_finishes(
    sim_factory: Callable[..., SimProcess], router_factory: Callable[..., SimProcess]
) -> None:
    sim = sim_factory("--model", "m", *SLOW_SIM)
    router = router_factory("--backend", sim.url)
    # A keep-alive connection opened before the signal, idle when it comes.
    with (
        socket.create_connection(_address(router.url), timeout=10) as idle,
        contextlib.ExitStack() as cleanup,
    ):
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        stream = cleanup.enter_context(Stream(router.url))
        router.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: _refused(router.url), timeout_s=10)
        assert router.proc.poll() is None  # refused because it drains, not because it exited
        # The idle connection is closed (EOF), so its client reconnects elsewhere rather than
        # sending more requests to a router about to exit.
        try:
            rest = idle.recv(4096)
        except ConnectionResetError:  # closed with a reset rather than a FIN: closed all the same
            rest = b""
        assert rest == b""
        assert stream.rest() == (600, True)
    assert router.wait_exit(timeout_s=30) == 0


def test_vfleet_up_sigterm_refuses_new_connections_and_finishes_the_stream(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        "name: drain\nengine: sim\nmodels:\n  - name: m\n    source: org/m\n    gpu: 0\n"
        "    sim: {profile: small, extraArgs: [--time-scale, '5']}\n"
    )
    run_dir = tmp_path / "run"
    up = start_up(run_dir, "-f", str(spec))
    try:
        engine_pid = read_state(run_dir)["engines"][0]["pid"]
        with Stream(up.url) as stream:
            up.proc.send_signal(signal.SIGTERM)
            assert wait_for(lambda: _refused(up.url), timeout_s=10)
            assert up.proc.poll() is None  # still stopping: the router drains before engines stop
            assert stream.rest() == (600, True)  # the engine outlived the stream it was serving
        assert up.proc.wait(timeout=30) == 0
        assert not alive(engine_pid)
    finally:
        up.stop()
