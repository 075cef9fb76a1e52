"""The API-server delay of a profile, end to end: slower first tokens, clean aborts."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

from conftest import SimProcess
from httpclient import Client, wait_for


def test_overhead_delays_answers_and_aborts_before_admission_are_counted(
    sim_factory: Callable[..., SimProcess],
) -> None:
    sp = sim_factory("--model", "m", "--profile", "instant", "--request-overhead-ms", "400")
    c = Client(sp.url)
    start = time.monotonic()
    resp = c.post("/v1/completions", {"prompt": "hi", "max_tokens": 2, "ignore_eos": True})
    assert resp.status == 200
    assert time.monotonic() - start >= 0.35
    aborted = c.metric("vllm:request_success_total", finished_reason="abort")
    body = json.dumps({"prompt": "bye", "max_tokens": 2, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", sp.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # headers, before any token
    # Closed while still in the API-server stage: counted as aborted, never scheduled.
    assert wait_for(
        lambda: c.metric("vllm:request_success_total", finished_reason="abort") == aborted + 1,
        timeout_s=3,
    )
    time.sleep(0.5)  # past the overhead: the aborted request must not reach the scheduler
    assert c.metric("vllm:num_requests_waiting") == 0
    assert c.metric("vllm:num_requests_running") == 0
    assert c.metric("vllm:request_success_total", finished_reason="length") == 1
