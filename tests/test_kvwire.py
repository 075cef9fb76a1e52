"""The replay-socket and data-parallel endpoint convention (router.kvwire), and the simulator's
publisher binding by the same rule as vLLM (ranks offset both ports)."""

from __future__ import annotations

import pytest

from vfleet.router.kvwire import (
    REPLAY_OFFSET,
    Publisher,
    rank_endpoint,
    rank_endpoints,
    replay_endpoint,
)
from vfleet.sim.kvevents import offset_endpoint


def test_a_tcp_publishers_replay_socket_is_100_ports_up() -> None:
    assert REPLAY_OFFSET == 100
    assert replay_endpoint("tcp://10.0.0.5:5557") == "tcp://10.0.0.5:5657"
    assert replay_endpoint("tcp://*:5557") == "tcp://*:5657"  # what the engine binds
    assert replay_endpoint("tcp://10.0.0.5:65500") is None  # no port 100 up
    assert replay_endpoint("tcp://10.0.0.5:x") is None
    assert replay_endpoint("inproc://x") is None


def test_a_local_publishers_replay_socket_is_beside_it() -> None:
    assert replay_endpoint("ipc:///run/vf/chat-0.sock") == "ipc:///run/vf/chat-0.replay.sock"
    assert replay_endpoint("ipc://") is None


def test_data_parallel_ranks_never_take_each_others_ports() -> None:
    """vLLM adds the rank to both ports: with replay sockets 100 up, rank r's publisher and
    every rank's replay socket stay apart for ranks below 100."""
    ranks = rank_endpoints(Publisher("tcp://127.0.0.1:5557", ranks=4))
    assert ranks == [
        (r, f"tcp://127.0.0.1:{5557 + r}", f"tcp://127.0.0.1:{5657 + r}") for r in range(4)
    ]
    ports = [e.rpartition(":")[2] for _, pub, rep in ranks for e in (pub, rep) if e]
    assert len(set(ports)) == 8
    # what each rank binds (vLLM's offset of the configured endpoints) is what the router dials
    for r, pub, rep in ranks:
        assert offset_endpoint("tcp://127.0.0.1:5557", r) == pub
        assert offset_endpoint("tcp://127.0.0.1:5657", r) == rep


def test_a_local_engine_publishes_on_rank_0_only() -> None:
    """vLLM refuses an ipc:// endpoint on a rank above 0: one socket, rank 0's."""
    endpoint = "ipc:///run/vf/chat-0.sock"
    assert rank_endpoint(endpoint, 0) == endpoint
    assert rank_endpoint(endpoint, 1) is None
    assert rank_endpoints(Publisher(endpoint, ranks=2)) == [
        (0, endpoint, "ipc:///run/vf/chat-0.replay.sock")
    ]
    with pytest.raises(ValueError):
        offset_endpoint(endpoint, 1)
    assert offset_endpoint("inproc://kv", 2) == "inproc://kv_dp2"


def test_ranks_are_bounded() -> None:
    assert Publisher("tcp://h:1").ranks == 1
    with pytest.raises(ValueError):
        Publisher("tcp://h:1", ranks=0)
    with pytest.raises(ValueError):
        Publisher("tcp://h:1", ranks=REPLAY_OFFSET + 1)
    assert rank_endpoint("tcp://h:5557", REPLAY_OFFSET) is None
