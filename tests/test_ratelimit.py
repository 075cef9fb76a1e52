"""Sliding-window limits (router.ratelimit) and the table that shares them between worker
processes (router.sharedlimits), with a clock the test controls."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.router.ratelimit import (
    Window,
    ages,
    pack,
    requests_window,
    tokens_per_day,
    tokens_per_minute,
    unpack,
    wait_s,
)
from vfleet.router.sharedlimits import (
    REQUESTS,
    TOKENS_MINUTE,
    LimitTable,
    assign,
    tag_of,
)


@given(st.integers(0, 2**30), st.integers(-(2**31), 2**31 - 1))
def test_a_bucket_word_holds_its_epoch_and_a_signed_count(epoch: int, count: int) -> None:
    assert unpack(pack(epoch, count)) == (epoch, count)


def test_requests_per_minute_keep_a_burst_of_a_tenth_of_a_minute() -> None:
    assert requests_window(600) == Window(60, 6.0, 12)
    assert requests_window(60) == Window(6, 6.0, 12)
    assert requests_window(1) == Window(1, 60.0, 12)  # one at a time, one a minute
    assert tokens_per_minute(100).window_s == 60.0
    assert tokens_per_day(1000) == Window(1000, 86_400.0, 24)
    with pytest.raises(ValueError):
        requests_window(0)
    assert tokens_per_minute(90).per(3).limit == 30  # three replicas, a third each


def test_full_window_then_the_wait_until_its_oldest_bucket_leaves() -> None:
    w = Window(3, 6.0, 12)  # buckets of 0.5 s
    words: list[int] = [0] * w.words

    def take(now: float, cost: int = 1) -> float:
        wait = wait_s(w, ages(w, [words], now), now, cost)
        if wait == 0.0:
            e = w.epoch(now)
            old, count = unpack(words[e % w.words])
            words[e % w.words] = pack(e, count + cost if old == e else cost)
        return wait

    assert [take(10.0), take(10.2), take(11.0)] == [0.0, 0.0, 0.0]
    # the two of the bucket 10.0-10.5 leave the window with it, at 16.5 (6 s after its end)
    assert take(11.2) == pytest.approx(5.3)
    assert take(16.4) == pytest.approx(0.1)
    assert take(16.5) == 0.0


def test_a_cost_above_the_limit_passes_only_into_an_empty_window() -> None:
    w = Window(100, 60.0, 12)
    assert wait_s(w, [0] * w.words, 0.0, 10_000) == 0.0
    assert wait_s(w, [1] + [0] * 12, 0.0, 10_000) > 0


@settings(max_examples=100, deadline=None)
@given(st.floats(1, 600), st.lists(st.floats(0, 3), min_size=1, max_size=200))
def test_never_more_than_the_limit_in_any_window(per_minute: float, gaps: list[float]) -> None:
    w = requests_window(per_minute)
    words = [0] * w.words
    now = 100.0
    admitted: list[float] = []
    for gap in gaps:
        now += gap
        if wait_s(w, ages(w, [words], now), now, 1) == 0.0:
            e = w.epoch(now)
            old, count = unpack(words[e % w.words])
            words[e % w.words] = pack(e, count + 1 if old == e else 1)
            admitted.append(now)
    for t in admitted:  # any window ending at an admission holds at most the limit
        assert sum(t - w.window_s < u <= t for u in admitted) <= w.limit


def test_slots_are_the_same_for_the_same_names_in_any_order() -> None:
    names = [f"team-{i}" for i in range(300)]
    a = assign(names, slots=512)
    assert a == assign(list(reversed(names)), slots=512)
    assert len(set(a.values())) == 300  # collisions moved to free slots
    with pytest.raises(ValueError):
        assign(names, slots=100)


def test_every_worker_row_is_summed_even_from_another_process() -> None:
    table = LimitTable.create(2, slots=16)
    w = tokens_per_minute(100)
    tag = tag_of("team-a")
    table.row(0).add(3, tag, TOKENS_MINUTE, w, 30.0, 40)
    pid = os.fork()
    if pid == 0:  # worker 1, a separate process writing its row of the shared map
        table.row(1).add(3, tag, TOKENS_MINUTE, w, 31.0, 50)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    by_age = table.row(0).by_age(3, tag, TOKENS_MINUTE, w, 31.0)
    assert sum(by_age) == 90
    assert wait_s(w, by_age, 31.0, 11) > 0 and wait_s(w, by_age, 31.0, 10) == 0.0


def test_a_slot_of_another_key_or_another_width_is_not_counted() -> None:
    table = LimitTable.create(1, slots=4)
    row = table.row(0)
    w = requests_window(60)
    row.add(1, tag_of("old"), REQUESTS, w, 0.0, 5)
    assert sum(row.by_age(1, tag_of("new"), REQUESTS, w, 0.0)) == 0
    row.add(1, tag_of("new"), REQUESTS, w, 0.0, 1)  # claims the slot: the old counts go
    assert sum(row.by_age(1, tag_of("new"), REQUESTS, w, 0.0)) == 1
    changed = requests_window(6)  # the key's limit was edited: its window starts afresh
    assert sum(row.by_age(1, tag_of("new"), REQUESTS, changed, 0.0)) == 0
    row.add(1, tag_of("new"), REQUESTS, changed, 0.0, 1)
    assert sum(row.by_age(1, tag_of("new"), REQUESTS, changed, 0.0)) == 1
