"""The circuit breaker's state machine (vfleet.router.breaker) and its use on a registry
(vfleet.router.ejection): a reference model checks the window, hypothesis drives sequences of
outcomes and clock values, and the fail-open rule is checked on real registries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.router.breaker import (
    BUCKETS,
    CLOSED,
    HALF_OPEN,
    NOTHING,
    OPEN,
    RECOVERED,
    STATE_NAMES,
    TRIAL,
    TRIPPED,
    Breaker,
    BreakerPolicy,
)
from vfleet.router.ejection import HALF_OPENED, OPENED, SPARED, Ejector
from vfleet.router.endpoints import Endpoint, Registry

POLICY = BreakerPolicy(error_rate=0.5, min_requests=4, window_s=10.0, cooldown_s=1.0)

# (seconds since the last step, what happens: "ok", "fail", or "fold" (the caller's timer))
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=4.0, allow_nan=False),
        st.sampled_from(["ok", "ok", "fail", "fold"]),
    ),
    max_size=80,
)
policies = st.builds(
    BreakerPolicy,
    error_rate=st.floats(min_value=0.01, max_value=1.0),
    min_requests=st.integers(min_value=1, max_value=30),
    window_s=st.floats(min_value=0.5, max_value=60.0),
    cooldown_s=st.floats(min_value=0.1, max_value=5.0),
    max_cooldown_s=st.floats(min_value=5.0, max_value=120.0),
)


def window_counts(
    history: list[tuple[float, bool]], now: float, window_s: float
) -> tuple[int, int]:
    """(outcomes, failures) the ring should hold at `now`: those in the buckets not yet left."""
    newest = int(now * BUCKETS / window_s)
    kept = [ok for t, ok in history if int(t * BUCKETS / window_s) > newest - BUCKETS]
    return len(kept), kept.count(False)


@settings(max_examples=400, deadline=None)
@given(steps, policies, st.booleans())
def test_window_counts_match_a_reference_and_trip_exactly_at_the_threshold(
    seq: list[tuple[float, str]], policy: BreakerPolicy, cheap: bool
) -> None:
    """The reference: a success counts from the moment it is folded (the next failure or
    timer fold after it), a failure from its own moment."""
    b = Breaker()
    now = 1000.0
    history: list[tuple[float, bool]] = []  # folded outcomes since the last trip
    unfolded = 0  # successes counted but not folded yet
    for gap, op in seq:
        now += gap
        if op == "ok":
            if cheap:  # the request path's way; the same as record(True) while closed
                assert b.ok()
            else:
                assert b.record(True, now, policy) == NOTHING
            unfolded += 1
            assert b.passed == unfolded
            continue
        history += [(now, True)] * unfolded
        unfolded = 0
        if op == "fold":
            before = (b.total, b.failed, b.bucket)
            b.fold(now, policy)
            assert b.passed == 0
            if not any(t == now for t, _ in history):  # nothing to fold: the ring did not move
                assert (b.total, b.failed, b.bucket) == before
                continue
            assert (b.total, b.failed) == window_counts(history, now, policy.window_s)
            continue
        history.append((now, False))
        event = b.record(False, now, policy)
        assert b.passed == 0
        total, failed = window_counts(history, now, policy.window_s)
        if total >= policy.min_requests and failed >= policy.error_rate * total:
            assert event == TRIPPED
            b.open(now, policy)
            assert b.ejected and b.total == 0 and b.passed == 0
            assert not b.ok()  # while open, successes are not counted
            b.close(now)  # serve again, with an empty window
            history = []
        else:
            assert event == NOTHING
            assert (b.total, b.failed) == (total, failed)
        assert 0 <= b.failed <= b.total


def test_successes_counted_cheaply_dilute_the_rate_when_a_failure_folds_them() -> None:
    policy = BreakerPolicy(error_rate=0.6, min_requests=4, window_s=10.0, cooldown_s=1.0)
    b = Breaker()
    for _ in range(4):
        assert b.ok()
    assert (b.total, b.passed) == (0, 4)  # nothing reached the window yet
    # 4 successes folded by the first failure: 6 failures of 10 are the first to reach 0.6
    for _ in range(5):
        assert b.record(False, 0.0, policy) == NOTHING
    assert (b.total, b.failed, b.passed) == (9, 5, 0)
    assert b.record(False, 0.0, policy) == TRIPPED


def test_folded_successes_leave_the_window_with_their_bucket() -> None:
    b = Breaker()
    for _ in range(10):
        b.ok()
    b.fold(0.0, POLICY)  # the timer: they count from 0 s
    assert (b.total, b.passed) == (10, 0)
    for _ in range(3):
        assert b.record(False, 10.0, POLICY) == NOTHING  # a window later: only failures
    assert (b.total, b.failed) == (3, 3)
    assert b.record(False, 10.0, POLICY) == TRIPPED


def test_a_trial_is_decided_by_record_and_successes_while_open_are_ignored() -> None:
    b = Breaker()
    for _ in range(3):
        b.ok()
    b.open(0.0, POLICY)
    assert b.passed == 0  # ejecting clears the successes not yet folded too
    assert not b.ok() and b.passed == 0  # open: the caller records it; it is ignored
    assert b.record(True, 0.5, POLICY) == NOTHING and b.state == OPEN
    b.expire(1.0)
    b.take_trial(1.0, POLICY)
    assert not b.ok()  # a trial's success must go through record, which closes it
    assert b.record(True, 1.1, POLICY) == RECOVERED and b.state == CLOSED
    assert b.ok() and b.passed == 1


@settings(max_examples=200, deadline=None)
@given(policies, st.lists(st.booleans(), min_size=1, max_size=20))
def test_cooldown_doubles_per_trip_in_a_row_up_to_the_cap(
    policy: BreakerPolicy, trials: list[bool]
) -> None:
    b = Breaker()
    now = 0.0
    cooldown = b.open(now, policy)
    assert cooldown == policy.cooldown_s
    for ok in trials:
        assert b.state == OPEN and b.ejected
        assert not b.expire(b.until - 1e-6)
        now = b.until
        assert b.expire(now) and b.state == HALF_OPEN and not b.ejected
        b.take_trial(now, policy)
        assert b.state == TRIAL and b.ejected
        event = b.record(ok, now, policy)
        if ok:
            assert event == RECOVERED and b.state == CLOSED
            return
        assert event == TRIPPED
        before = cooldown
        cooldown = b.open(now, policy)
        assert cooldown == min(policy.max_cooldown_s, 2 * before)
        assert cooldown <= policy.max_cooldown_s


def test_a_trip_long_after_the_last_close_starts_the_cooldown_over() -> None:
    b = Breaker()
    assert b.open(0.0, POLICY) == 1.0
    b.expire(1.0)
    b.record(False, 1.0, POLICY)
    assert b.open(1.0, POLICY) == 2.0
    b.expire(3.0)
    assert b.record(True, 3.0, POLICY) == RECOVERED
    assert b.open(4.0, POLICY) == 4.0  # soon after: a flapping engine keeps doubling
    b.expire(8.0)
    b.record(True, 8.0, POLICY)
    assert b.open(8.0 + POLICY.max_cooldown_s, POLICY) == 1.0  # well for a whole cap: over


def test_outcomes_while_open_are_not_counted_and_a_lost_trial_is_given_up() -> None:
    b = Breaker()
    b.open(0.0, POLICY)
    assert b.record(False, 0.5, POLICY) == NOTHING
    assert b.record(True, 0.5, POLICY) == NOTHING
    assert b.state == OPEN and b.total == 0
    assert b.expire(1.0)
    b.take_trial(1.0, POLICY)
    b.take_trial(1.0, POLICY)  # one trial at a time
    assert b.state == TRIAL
    # its client left: no outcome comes; past the cool-down another request may be tried
    assert not b.expire(1.5)
    assert b.expire(2.0) and b.state == HALF_OPEN


def test_old_outcomes_leave_the_window() -> None:
    b = Breaker()
    for _ in range(3):
        assert b.record(False, 0.0, POLICY) == NOTHING  # under min_requests
    # a window later they are gone: three more failures are again under the minimum
    for _ in range(3):
        assert b.record(False, 10.0, POLICY) == NOTHING
    assert b.record(False, 10.0, POLICY) == TRIPPED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"error_rate": 0.0},
        {"error_rate": 1.5},
        {"min_requests": 0},
        {"window_s": 0.0},
        {"window_s": float("inf")},
        {"cooldown_s": 0.0},
        {"cooldown_s": 10.0, "max_cooldown_s": 5.0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


# -- on a registry (router.ejection) ----------------------------------------------------------


def _registry(*urls: str, model: str = "m") -> Registry:
    reg = Registry()
    reg.set_endpoints((u, (model,), False) for u in urls)
    for ep in reg.endpoints.values():
        ep.mark_up(0.0, 1.0)
    return reg


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.readmitted: list[str] = []
        self.states: dict[tuple[str, str], int] = {}  # what `shown` was told last

    def shown(self, url: str, state: str, on: int) -> None:
        assert self.states.get((url, state), 0) != on  # only changes are told
        self.states[(url, state)] = on

    def held_out(self, url: str) -> set[str]:
        return {s for (u, s), on in self.states.items() if u == url and on}

    def count(self, url: str, event: str) -> None:
        self.seen.append((url, event))

    def up(self, ep: Endpoint) -> None:
        self.readmitted.append(ep.url)


def _fail(ej: Ejector, ep: Endpoint, n: int, now: float) -> None:
    for _ in range(n):
        ej.judge(ep, False, now)


def test_an_ejected_endpoint_leaves_routing_then_takes_one_trial() -> None:
    reg = _registry("http://a", "http://b")
    ev = Events()
    ej = Ejector(reg, POLICY, ev.count, ev.up)
    a = reg.endpoints["http://a"]
    _fail(ej, a, 4, 0.0)
    assert a.ejected and ev.seen == [("http://a", OPENED)]
    assert [e.url for e in reg.ready("m")] == ["http://b"]
    assert not a.snapshot().healthy and a.healthy  # its probes still pass
    ej.tick(0.5)
    assert a.ejected
    ej.tick(1.0)
    assert not a.ejected and ev.readmitted == ["http://a"]
    assert ev.seen[-1] == ("http://a", HALF_OPENED)
    ej.chosen(a, 1.0)  # the trial
    assert a.ejected and a.breaker.state == TRIAL
    ej.judge(a, True, 1.2)
    assert not a.ejected and a.breaker.state == CLOSED


def test_the_timer_folds_every_endpoints_successes() -> None:
    reg = _registry("http://a", "http://b")
    ev = Events()
    ej = Ejector(reg, POLICY, ev.count, ev.up)
    a, b = reg.endpoints["http://a"], reg.endpoints["http://b"]
    for _ in range(5):
        ej.judge(a, True, 0.0)
        assert b.breaker.ok()
    assert (a.breaker.passed, a.breaker.total) == (5, 0)
    ej.tick(0.1)
    assert [(e.breaker.passed, e.breaker.total) for e in (a, b)] == [(0, 5), (0, 5)]
    # 4 failures of 9 in the window: under the rate, nothing is ejected
    _fail(ej, a, 4, 0.2)
    assert not a.ejected and ev.seen == []
    _fail(ej, a, 1, 0.2)
    assert a.ejected and ev.seen == [("http://a", OPENED)]


def test_state_changes_are_told_with_when_and_why() -> None:
    reg = _registry("http://a", "http://b")
    ev = Events()
    ej = Ejector(reg, POLICY, ev.count, ev.up, ev.shown)
    a = reg.endpoints["http://a"]
    ej.judge(a, True, 0.0)
    _fail(ej, a, 3, 0.5)  # 3 of 4 failed: tripped
    assert ev.states == {("http://a", "open"): 1}
    assert (a.breaker.since, a.breaker.trip_failed, a.breaker.trip_total) == (0.5, 3, 4)
    ej.tick(1.5)
    assert ev.held_out("http://a") == {"half_open"} and a.breaker.since == 1.5
    ej.chosen(a, 1.6)
    assert ev.held_out("http://a") == {"trial"}
    ej.judge(a, False, 1.7)  # the trial failed: open again, for a failed trial
    assert ev.held_out("http://a") == {"open"}
    assert (a.breaker.trip_failed, a.breaker.trip_total) == (1, 1)
    ej.tick(3.7)
    ej.chosen(a, 3.7)
    ej.judge(a, True, 3.8)
    assert ev.held_out("http://a") == set() and a.breaker.since == 3.8


def test_an_endpoint_that_leaves_while_ejected_is_told_closed() -> None:
    reg = _registry("http://a", "http://b", "http://c")
    ev = Events()
    ej = Ejector(reg, POLICY, ev.count, ev.up, ev.shown)
    _fail(ej, reg.endpoints["http://a"], 4, 0.0)
    assert ev.held_out("http://a") == {"open"}
    reg.set_endpoints([("http://b", ("m",), False), ("http://c", ("m",), False)])
    ej.tick(0.1)
    assert ev.held_out("http://a") == set() and not ej.told
    # back within a tick, with a new (closed) breaker: told closed too
    _fail(ej, reg.endpoints["http://b"], 4, 0.2)
    assert ev.held_out("http://b") == {"open"}
    reg.set_endpoints([("http://c", ("m",), False)])
    reg.set_endpoints([("http://b", ("m",), False), ("http://c", ("m",), False)])
    ej.tick(0.3)
    assert ev.held_out("http://b") == set() and not ej.told


def test_the_last_endpoint_of_a_model_is_never_ejected() -> None:
    reg = _registry("http://a", "http://b")
    ev = Events()
    ej = Ejector(reg, POLICY, ev.count, ev.up)
    a, b = reg.endpoints["http://a"], reg.endpoints["http://b"]
    _fail(ej, a, 4, 0.0)
    _fail(ej, b, 4, 0.0)  # b is now the model's last: spared, and served
    assert a.ejected and not b.ejected
    assert ("http://b", SPARED) in ev.seen
    assert [e.url for e in reg.ready("m")] == ["http://b"]


def test_an_ejected_endpoint_comes_back_when_its_model_has_no_other() -> None:
    reg = _registry("http://a", "http://b")
    ev = Events()
    ej = Ejector(reg, POLICY, ev.count, ev.up)
    a, b = reg.endpoints["http://a"], reg.endpoints["http://b"]
    _fail(ej, a, 4, 0.0)
    b.mark_down(0.1, 1.0)  # its probes fail: a is all the model has
    ej.tick(0.2)  # long before a's cool-down ends
    assert not a.ejected and ev.readmitted == ["http://a"]
    ej.chosen(a, 0.2)
    ej.judge(a, False, 0.3)  # a failed trial of the last endpoint: served anyway
    assert not a.ejected and a.breaker.state == CLOSED


def test_an_endpoint_serving_two_models_is_kept_for_the_one_it_serves_alone() -> None:
    reg = Registry()
    reg.set_endpoints([("http://a", ("m", "solo"), False), ("http://b", ("m",), False)])
    for ep in reg.endpoints.values():
        ep.mark_up(0.0, 1.0)
    ev = Events()
    ej = Ejector(reg, POLICY, ev.count, ev.up)
    a = reg.endpoints["http://a"]
    _fail(ej, a, 4, 0.0)
    assert not a.ejected and ev.seen == [("http://a", SPARED)]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2),  # which endpoint (of n)
            # failures weighted up, gaps short: every endpoint's breaker trips within a
            # cool-down of the others' (what the fail-open rule is for)
            st.sampled_from(["ok", "fail", "burst", "burst", "tick", "down", "up", "choose"]),
            st.floats(min_value=0.0, max_value=0.3, allow_nan=False),
        ),
        max_size=150,
    ),
    st.integers(min_value=2, max_value=3),
)
def test_a_model_always_keeps_a_routable_endpoint_while_any_passes_probes(
    ops: list[tuple[int, str, float]], n: int
) -> None:
    urls = ("http://a", "http://b", "http://c")[:n]
    reg = _registry(*urls)
    ev = Events()
    ej = Ejector(reg, POLICY, ev.count, ev.up, ev.shown)
    now = 0.0
    had_ready = True
    for i, op, gap in ops:
        now += gap
        ep = reg.endpoints[urls[i % n]]
        if op in ("ok", "fail"):
            ej.judge(ep, op == "ok", now)
        elif op == "burst":  # enough failures at once to trip it
            _fail(ej, ep, POLICY.min_requests, now)
        elif op == "down":
            ep.mark_down(now, 1.0)
        elif op == "up":
            ep.mark_up(now, 1.0)
        elif op == "choose":
            ej.chosen(ep, now)
        else:
            ej.tick(now)
        served = any(e.healthy for e in reg.endpoints.values())
        if op not in ("down", "tick") and served and reg.ready("m") == []:
            # only probes take a model's last endpoint away (the timer then readmits one):
            # outcomes and trials never do
            assert had_ready is False, [
                (e.healthy, e.breaker.state) for e in reg.endpoints.values()
            ]
        ej.tick(now)  # the timer runs between any two events
        assert all(e.breaker.passed == 0 for e in reg.endpoints.values())  # it folded them
        for e in reg.endpoints.values():  # what the shared table would sum agrees
            state = e.breaker.state
            assert ev.held_out(e.url) == (set() if state == CLOSED else {STATE_NAMES[state]})
        assert ep.ejected == ep.breaker.ejected
        if served:
            assert reg.ready("m"), [(e.healthy, e.breaker.state) for e in reg.endpoints.values()]
        had_ready = bool(reg.ready("m"))
        # what the policies see agrees with ready()
        routable = {e.url for e in reg.ready("m")}
        assert {s.url for s in (e.snapshot() for e in reg.endpoints.values()) if s.healthy} == (
            routable
        )
