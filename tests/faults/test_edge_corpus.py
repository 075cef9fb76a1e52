"""Replays the corpus of malformed requests in tests/data/malformed against a real sim and a
real router: each file's name says the status expected before the connection closes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DATA, SimProcess
from faults.edgekit import CLOSED, connect, error_of, read_all, status_of

CORPUS = sorted((DATA / "malformed").glob("*.http"))


@pytest.fixture(params=["gen_sim", "router"])
def server(request: pytest.FixtureRequest) -> SimProcess:
    sp: SimProcess = request.getfixturevalue(request.param)
    return sp


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 30
    assert {p.name[:3] for p in CORPUS} >= {"200", "400", "413", "414", "417", "431"}


@pytest.mark.parametrize("case", CORPUS, ids=[p.stem for p in CORPUS])
def test_malformed_request(server: SimProcess, case: Path) -> None:
    want = int(case.name[:3])
    with connect(server.url) as sock:
        sock.sendall(case.read_bytes())
        reply = read_all(sock)
    assert status_of(reply) == want, reply[:200]
    assert reply.endswith(CLOSED), "the connection stays open"
    assert reply.count(b"HTTP/1.1 ") == 1, "more than one response"
    if want != 200:
        error_of(reply)
