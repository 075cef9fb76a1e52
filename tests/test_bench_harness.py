"""The router benchmark harness's pure parts and its fake engine (benchmarks/harness/).

The benchmarks judge a run by these: wrk's report parser decides whether a run had errors, the
report computes the added latencies, and the fake engine must send exactly the events asked for.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "harness"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_harness_{name}", HARNESS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building a class
    spec.loader.exec_module(module)
    return module


WRK_CLEAN = """Running 3s test @ http://127.0.0.1:8000/v1/chat/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms  410.00us   9.80ms   90.12%
    Req/Sec    27.80k     1.10k   29.00k    70.00%
  Latency Distribution
     50%    2.20ms
     75%    2.45ms
     90%    2.80ms
     99%  850.00us
  83412 requests in 3.00s, 26.10MB read
Requests/sec:  27790.55
Transfer/sec:      8.70MB
"""

WRK_FAILED = """Running 3s test @ http://127.0.0.1:8000/v1/chat/completions
  1 threads and 64 connections
  1200 requests in 3.00s, 0.40MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 17
Requests/sec:    400.00
"""


def test_wrk_report_numbers_and_units() -> None:
    wrk = load("wrk")
    res = wrk.parse(WRK_CLEAN)
    assert res.req_per_s == 27790.55
    assert res.requests == 83412
    assert res.latency_ms == {"p50": 2.2, "p75": 2.45, "p90": 2.8, "p99": 0.85}
    assert res.clean


def test_wrk_report_with_errors_is_not_clean() -> None:
    wrk = load("wrk")
    res = wrk.parse(WRK_FAILED)
    assert res.non_2xx == 17
    assert res.socket_errors == {"connect": 0, "read": 3, "write": 0, "timeout": 2}
    assert not res.clean
    assert not wrk.parse("wrk: command failed").clean


def _rec(system: str, rep: int, rps: float, p50: float) -> list[dict[str, object]]:
    return [
        {"system": system, "rep": rep, "phase": "start", "ready": True, "version": "v"},
        {"system": system, "rep": rep, "phase": "wrk", "wrk": {"req_per_s": rps}},
        {"system": system, "rep": rep, "phase": "rate300", "result": {"latency_ms": {"p50": p50}}},
    ]


def test_report_added_latency_is_paired_by_repetition() -> None:
    report = load("report")
    records = [
        *_rec("direct", 1, 40000, 0.5),
        *_rec("vfleet", 1, 20000, 0.7),
        *_rec("direct", 2, 30000, 1.5),
        *_rec("vfleet", 2, 15000, 1.6),
        *_rec("direct", 3, 50000, 0.4),
        *_rec("vfleet", 3, 25000, 0.9),
    ]
    rows = {line.split(" | ")[0].strip("| "): line for line in report.summary(records).splitlines()}
    # per repetition: +0.2, +0.1, +0.5 -> median 0.2 (the difference of medians would be 0.4)
    assert "| 0.20 / - |" in rows["vfleet"]
    assert "20,000 (15,000-25,000) (0.50x)" in rows["vfleet"]
    assert "(abs 0.50 / -)" in rows["direct"]


@pytest.fixture
def engine() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, str(HARNESS / "fakeengine.py"), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith("ready on http://127.0.0.1:"), line
    yield int(line.rsplit(":", 1)[1])
    proc.terminate()
    proc.wait(10)
    proc.stderr.close()


def _post(port: int, body: dict[str, object]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "x"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_fake_engine_streams_max_tokens_events(engine: int) -> None:
    hello = [{"role": "user", "content": "hi bench-gap-ms=1"}]
    status, data = _post(engine, {"messages": hello, "max_tokens": 5, "stream": True})
    assert status == 200
    events = [e for e in data.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    assert len(events) == 6  # five token events, then [DONE]
    status, data = _post(engine, {"messages": hello, "max_tokens": 5})
    assert status == 200
    assert json.loads(data)["choices"][0]["finish_reason"] == "stop"
    conn = http.client.HTTPConnection("127.0.0.1", engine, timeout=10)
    conn.request("GET", "/bench/stats")
    assert json.loads(conn.getresponse().read())["counts"]["/v1/chat/completions"] == 2
    conn.close()
