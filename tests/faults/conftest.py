"""Fixtures of the fault tests: sims with short edge timeouts, a router in front of a sim."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import SimProcess, start_router, start_sim
from faults.edgekit import start_edge_sim


@pytest.fixture
def edge_sim_factory() -> Iterator[Callable[..., SimProcess]]:
    """Start sims with chosen `EdgeLimits` (keyword arguments); all stopped afterwards."""
    started: list[SimProcess] = []

    def make(profile: str = "instant", **limits: Any) -> SimProcess:
        sp = start_edge_sim(limits, profile)
        started.append(sp)
        return sp

    yield make
    for sp in started:
        sp.stop()


@pytest.fixture(scope="module")
def slow_engine() -> Iterator[SimProcess]:
    """A sim with 8B-model step times, so a stream of 40 tokens lasts a few hundred ms."""
    sp = start_sim("--model", "demo", "--profile", "llama-8b-h100", "--max-model-len", "512")
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def router(slow_engine: SimProcess) -> Iterator[SimProcess]:
    """A router with the default edge limits (its command line sets none yet)."""
    rp = start_router("--backend", slow_engine.url, "--health-interval", "0.5")
    yield rp
    rp.stop()
