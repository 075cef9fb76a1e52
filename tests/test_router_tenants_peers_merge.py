"""Key budgets shared by router replicas, without a network: the pure part (router.peerlimits:
the wire form, merging peers' answers, the share of a limit a replica may use), the peer row of
the shared limit table (router.sharedlimits) that carries the merge to every worker's decision,
and the poller's write step (router.peerpoll) fed answers directly."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfleet.router.keda.peers import Peers
from vfleet.router.peerlimits import (
    REQUESTS,
    TOKENS_DAY,
    Usage,
    WindowUsage,
    decode,
    encode,
    expected_replicas,
    known_replicas,
    merge,
    scaled,
    trimmed,
)
from vfleet.router.peerpoll import PeerPoller
from vfleet.router.ratelimit import Window, requests_window, tokens_per_day
from vfleet.router.sharedlimits import TOKENS_DAY as DAY_REGION
from vfleet.router.sharedlimits import LimitTable, tag_of
from vfleet.router.tenants import Tenancy

DAY = tokens_per_day(1000)
counts = st.lists(st.integers(-50, 10_000), max_size=30)
usages = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.dictionaries(
        st.sampled_from([REQUESTS, TOKENS_DAY]),
        st.builds(WindowUsage, st.sampled_from([DAY.width_us, 7]), counts.map(tuple)),
        min_size=1,
    ),
)


@given(usages)
def test_an_answer_reads_back_as_it_was_written(usage: Usage) -> None:
    assert decode(encode(usage, 9, 1, 2, 3), max_keys=10) == (9, usage)


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"keys": []}', b"not json", orjson.dumps({"keys": {f"k{i}": {} for i in range(5)}})],
)
def test_what_is_not_an_answer_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        decode(body, max_keys=4)


def test_malformed_entries_are_skipped_and_the_rest_kept() -> None:
    good = {"width_us": 10, "ages": [1, 2]}
    body = orjson.dumps(
        {
            "keys": {
                "ok": {REQUESTS: good, "future_window": good},
                "bools": {REQUESTS: {"width_us": 10, "ages": [True]}},
                "huge": {REQUESTS: {"width_us": 10, "ages": [1 << 50]}},
                "long": {REQUESTS: {"width_us": 10, "ages": [1] * 100}},
                "zero-width": {REQUESTS: {"width_us": 0, "ages": [1]}},
                "not-a-map": [1],
            }
        }
    )
    assert decode(body, max_keys=10) == (0, {"ok": {REQUESTS: WindowUsage(10, (1, 2))}})


@given(st.lists(st.tuples(st.floats(0, 1e6), usages), max_size=4))
def test_merging_keeps_every_unit_the_window_holds_and_nothing_else(
    readings: list[tuple[float, Usage]],
) -> None:
    want = {(name, TOKENS_DAY): DAY for name in ("a", "b")}  # "c" and requests: not enforced
    merged = merge(readings, want)
    for name in ("a", "b"):
        expect = sum(
            sum(u[name][TOKENS_DAY].ages[: DAY.words])
            for _, u in readings
            if name in u and TOKENS_DAY in u[name] and u[name][TOKENS_DAY].width_us == DAY.width_us
        )
        assert sum(merged.get((name, TOKENS_DAY), {}).values()) == expect
    assert all(key in want for key in merged)


def test_ages_become_epochs_of_this_host_at_arrival() -> None:
    hour = 3600.0
    at = 100 * hour + 5  # epoch 100 of the day window
    usage: Usage = {"a": {TOKENS_DAY: WindowUsage(DAY.width_us, (3, 0, 7))}}
    late: Usage = {"a": {TOKENS_DAY: WindowUsage(DAY.width_us, (1,))}}
    merged = merge([(at, usage), (at + hour, late)], {("a", TOKENS_DAY): DAY})
    assert merged == {("a", TOKENS_DAY): {100: 3, 98: 7, 101: 1}}


@given(st.floats(1, 1e6), st.integers(0, 8), st.integers(1, 8))
def test_a_replica_may_use_one_share_per_replica_whose_usage_it_knows(
    limit: float, known: int, expected: int
) -> None:
    window = Window(limit, 60.0, 12)
    got = scaled(window, known, expected)
    assert got.width_us == window.width_us  # the same buckets: only the limit changes
    if known >= expected:
        assert got is window
    else:
        assert got.limit == pytest.approx(limit * max(1, known) / expected)
        assert got.limit <= scaled(window, known + 1, expected).limit


def test_replica_counts() -> None:
    assert expected_replicas(1, 2) == 3  # three routers listed
    assert expected_replicas(4, 1) == 4  # the file says more (a peer not found yet)
    assert known_replicas([10.0, 7.5, 6.0], now=10.0, stale_s=3.0) == 3  # 6.0 is too old
    assert trimmed([0, 3, 0, 0]) == (0, 3)


def test_peer_usage_counts_in_every_workers_decision_and_a_rewrite_is_seen() -> None:
    table = LimitTable.create(2, slots=8, peers=True)
    w0, w1 = table.row(0), table.row(1)
    tag = tag_of("a")
    window = Window(10, 6.0, 12)  # 10 per 6 s, buckets of 0.5 s
    now = 1000.0
    w0.add(3, tag, 1, window, now, 4)
    assert w1.wait(3, tag, 1, window, now, 6) == 0.0  # 4 + 6 fit
    peer = table.peer_row()
    epoch = window.epoch(now)
    peer.write(3, tag, 1, window, now, {epoch - 2: 5})  # a past bucket of a peer's
    peer.publish(2, 2)
    assert w1.wait(3, tag, 1, window, now, 1) == 0.0  # 4 + 5 + 1
    assert w1.wait(3, tag, 1, window, now, 2) > 0.0  # 4 + 5 + 2
    # the next poll rewrites that past bucket: the sum a worker kept is not used any more
    peer.write(3, tag, 1, window, now, {epoch - 2: 1})
    peer.publish(2, 2)
    assert w1.wait(3, tag, 1, window, now, 5) == 0.0
    assert table.local_ages(3, tag, 1, window, now)[0] == 4  # what peers are told: own only
    peer.clear(3, 1)
    peer.publish(2, 2)
    assert w0.wait(3, tag, 1, window, now, 6) == 0.0
    assert table.share() == (2, 2) and table.generation() == 3


def _tenancy(tmp_path: Path, text: str, table: LimitTable) -> Tenancy:
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    return Tenancy(table.row(0), (), str(path), peered=True)


FILE = "replicas: 2\nkeys: [{name: a, key: sk-a, tokens_per_day: 1000}]\n"
HEADERS = {b"authorization": b"Bearer sk-a"}


def test_a_peered_key_holds_the_whole_limit_while_every_peer_answers(tmp_path: Path) -> None:
    table = LimitTable.create(1, slots=16, peers=True)
    t = _tenancy(tmp_path, FILE, table)
    a = t.identify(HEADERS)
    assert a is not None and a.tokens_day == tokens_per_day(1000)  # not halved: shared
    assert t.share() == (1, 2)  # before the first poll: its share only
    assert t.reserve(a, 400, 10.0) == 0.0
    assert t.reserve(a, 200, 10.0) > 0  # 600 > 1000 / 2
    table.peer_row().publish(2, 2)
    assert t.reserve(a, 200, 10.0) == 0.0  # the whole limit
    table.peer_row().publish(1, 2)  # the peer stopped answering
    assert t.reserve(a, 1, 10.0) > 0  # 600 used, 500 its share


def test_the_poller_writes_fresh_answers_and_drops_stale_ones(tmp_path: Path) -> None:
    table = LimitTable.create(1, slots=16, peers=True)
    t = _tenancy(tmp_path, FILE, table)
    a = t.identify(HEADERS)
    assert a is not None
    poller = PeerPoller(t, Peers(static=("http://127.0.0.1:9",)), clock=lambda: 50.0)
    answer: Usage = {"a": {TOKENS_DAY: WindowUsage(DAY.width_us, (700,))}}
    poller.answers["http://127.0.0.1:9"] = (50.0, answer)
    poller.write(50.0, peers=1)
    assert table.share() == (2, 2)
    assert t.reserve(a, 300, 50.0) == 0.0  # 700 + 300
    assert t.reserve(a, 1, 50.0) > 0
    assert t.usage(50.0) == {"a": {TOKENS_DAY: WindowUsage(DAY.width_us, (300,))}}  # its own
    poller.write(54.0, peers=1)  # the answer is 4 s old: the peer holds its share again
    assert table.share() == (1, 2)
    assert t.reserve(a, 200, 54.0) == 0.0  # 300 + 200 of its 500
    assert t.reserve(a, 1, 54.0) > 0
    assert table.local_ages(a.slot, a.tag, DAY_REGION, DAY, 54.0)[0] == 500


def test_without_a_peer_row_each_window_is_the_files_share(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(FILE + "defaults: {requests_per_minute: 60}\n")
    t = Tenancy(LimitTable.create(1, slots=16).row(0), (), str(path), peered=True)
    a = t.identify(HEADERS)
    assert a is not None and a.tokens_day == tokens_per_day(1000).per(2)  # as without peers
    assert a.requests == requests_window(60).per(2)
    assert t.share() == (1, 1)


@given(
    st.lists(st.integers(0, 20), max_size=6),
    st.integers(0, 60),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 30),
)
def test_a_decision_weighs_local_and_peer_usage_against_the_known_share(
    local: list[int], peer: int, known: int, expected: int, cost: int
) -> None:
    table = LimitTable.create(2, slots=8, peers=True)
    window, now, tag = Window(50, 6.0, 12), 1000.0, tag_of("a")
    for i, n in enumerate(local):  # two workers, charges spread over the window's buckets
        table.row(i % 2).add(3, tag, 1, window, now - 0.5 * i, n)
    table.peer_row().write(3, tag, 1, window, now, {window.epoch(now) - 1: peer})
    table.peer_row().publish(known, expected)
    limit = scaled(window, known, expected)
    fits = sum(local) + peer + min(cost, limit.limit) <= limit.limit
    assert (table.row(0).wait(3, tag, 1, limit, now, cost) == 0.0) == fits
