"""The simulator's answers to bad requests equal real vLLM 0.26's: the same status, and the same
JSON body compared parsed (key order and whitespace are not compared), or both bodies empty.

tests/data/vllm_0.26_errors.json holds what `vllm serve` answered to these requests on a GPU
(scripts/gpu/conformance.sh); the simulator, configured the same way, must answer alike.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import DATA, SimProcess, start_sim

CAPTURE = json.loads((DATA / "vllm_0.26_errors.json").read_text())["responses"]


@pytest.fixture(scope="module")
def twin() -> Iterator[SimProcess]:
    sp = start_sim(
        *("--model", "/tmp/qwen", "--served-model-name", "qwen3-rand", "--max-model-len", "512"),
        *("--api-key", "sk-test", "--profile", "instant"),
    )
    yield sp
    sp.stop()


@pytest.mark.parametrize("case", CAPTURE, ids=[c["probe"] for c in CAPTURE])
def test_same_status_and_body_as_vllm(twin: SimProcess, case: dict[str, Any]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", twin.port, timeout=10)
    if case["raw"] is not None:
        data: bytes | None = case["raw"].encode()
    elif case["body"] is not None:
        data = json.dumps(case["body"]).encode()
    else:
        data = None
    headers = {"Content-Type": "application/json", **case["headers"]}
    try:
        conn.request(case["method"], case["path"], body=data, headers=headers)
        resp = conn.getresponse()
        status, body = resp.status, resp.read().decode()
    finally:
        conn.close()
    assert status == case["vllm_status"]
    if body and case["vllm_body"]:
        assert json.loads(body) == json.loads(case["vllm_body"])
    else:
        assert body == case["vllm_body"]
