"""Where the router learns engines' KV-event publishers: `--kv-events URL=ENDPOINT`, the
endpoints file's `kv_events`, a router YAML file, and the `vfleet.io/kv-events-port` pod
annotation; and the one-line errors for malformed ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import run_vfleet
from vfleet.router.config import (
    BackendSpec,
    RouterConfig,
    load_config_file,
    parse_endpoints,
    parse_kv_events,
    with_kv_events,
)
from vfleet.router.kubepods import (
    KV_EVENTS_ANNOTATION,
    KV_RANKS_ANNOTATION,
    PodRules,
    pod_endpoint,
)


def test_flags_name_publishers_by_engine_url() -> None:
    publishers = parse_kv_events(("http://a:8000/=tcp://10.0.0.1:5557", "http://b:8000=ipc:///x"))
    assert publishers == {"http://a:8000": "tcp://10.0.0.1:5557", "http://b:8000": "ipc:///x"}
    backends = (BackendSpec("http://a:8000"), BackendSpec("http://c:8000", kv_events="tcp://c:1"))
    assert with_kv_events(backends, publishers) == (
        BackendSpec("http://a:8000", kv_events="tcp://10.0.0.1:5557"),
        BackendSpec("http://c:8000", kv_events="tcp://c:1"),
    )


@pytest.mark.parametrize(
    "flag",
    ["http://a:8000", "http://a:8000=tcp://*:5557", "http://a:8000=http://a:1", "=tcp://a:1"],
)
def test_malformed_flags_are_refused(flag: str) -> None:
    with pytest.raises(ValueError, match=r"kv-events|KV events endpoint"):
        parse_kv_events((flag,))


def test_the_endpoints_file_and_the_yaml_file_carry_publishers(tmp_path: Path) -> None:
    listed = parse_endpoints(
        [{"url": "http://a:8000", "kv_events": "tcp://127.0.0.1:5557"}, "http://b:8000"], "f"
    )
    assert [b.kv_events for b in listed] == ["tcp://127.0.0.1:5557", None]
    with pytest.raises(ValueError, match="f: endpoint 0: kv_events"):
        parse_endpoints([{"url": "http://a:8000", "kv_events": 5557}], "f")
    cfg = tmp_path / "router.yaml"
    cfg.write_text(
        "policy: kv\n"
        "backends: [{url: 'http://a:8000', kv_events: 'tcp://a:5557'}]\n"
        "kv_events: {'http://b:8000/': 'tcp://b:5557'}\n"
    )
    settings: dict[str, Any] = load_config_file(str(cfg))
    router = RouterConfig(**settings)
    assert router.backends[0].kv_events == "tcp://a:5557"
    assert router.kv_events == {"http://b:8000": "tcp://b:5557"}


def test_a_pod_annotation_names_its_publisher_port() -> None:
    pod = {
        "metadata": {"name": "e", "namespace": "n", "annotations": {KV_EVENTS_ANNOTATION: "5557"}},
        "status": {
            "phase": "Running",
            "podIP": "10.1.2.3",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    ep = pod_endpoint(pod, PodRules())
    assert ep is not None and ep.kv_events == "tcp://10.1.2.3:5557"
    pod["metadata"]["annotations"] = {KV_EVENTS_ANNOTATION: "not a port"}
    ep = pod_endpoint(pod, PodRules())
    assert ep is not None and ep.kv_events is None


def test_data_parallel_ranks_come_from_the_endpoints_file_and_the_pod(tmp_path: Path) -> None:
    listed = parse_endpoints(
        [
            {"url": "http://a:8000", "kv_events": "tcp://127.0.0.1:5557", "kv_ranks": 2},
            {"url": "http://b:8000", "kv_events": "tcp://127.0.0.1:5567"},
        ],
        "f",
    )
    assert [b.kv_ranks for b in listed] == [2, 1]
    for bad in (0, 101, "2", 1.5):
        with pytest.raises(ValueError, match="f: endpoint 0: kv_ranks must be a whole number"):
            parse_endpoints([{"url": "http://a:8000", "kv_ranks": bad}], "f")
    cfg = tmp_path / "router.yaml"
    cfg.write_text("backends: [{url: 'http://a:8000', kv_events: 'tcp://a:5557', kv_ranks: 4}]\n")
    assert RouterConfig(**load_config_file(str(cfg))).backends[0].kv_ranks == 4

    pod = {
        "metadata": {
            "name": "e",
            "namespace": "n",
            "annotations": {KV_EVENTS_ANNOTATION: "5557", KV_RANKS_ANNOTATION: "2"},
        },
        "status": {
            "phase": "Running",
            "podIP": "10.1.2.3",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    ep = pod_endpoint(pod, PodRules())
    assert ep is not None and (ep.kv_events, ep.kv_ranks) == ("tcp://10.1.2.3:5557", 2)
    for text in ("0", "x", "101", ""):
        pod["metadata"]["annotations"][KV_RANKS_ANNOTATION] = text
        ep = pod_endpoint(pod, PodRules())
        assert ep is not None and ep.kv_ranks == 1


def test_the_command_refuses_a_bad_flag_in_one_line() -> None:
    res = run_vfleet(
        "router", "--policy", "kv", "--backend", "http://127.0.0.1:9", "--kv-events", "nonsense"
    )
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "--kv-events 'nonsense': expected URL=ZMQ_ENDPOINT" in res.stderr
