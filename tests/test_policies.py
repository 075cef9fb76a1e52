"""Routing policies: health filtering, round robin, least load, bounded-load sessions, prefixes.

Property tests drive each policy with random endpoint snapshots and feed the chosen endpoint's
inflight count back into the next snapshot, as the router does; example tests pin the individual
behaviours and the stable hash values.
"""

from __future__ import annotations

import math
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.router.policies import (
    POLICY_NAMES,
    LeastLoad,
    Policy,
    PrefixAffinity,
    RoundRobin,
    SessionAffinity,
    load_score,
    make_policy,
    prefix_hashes,
)
from vfleet.router.state import EndpointState, RouteKey

KEY = RouteKey("m")


def url(i: int) -> str:
    return f"http://10.0.0.{i}:8000"


def fleet(inflight: list[int], healthy: list[bool] | None = None) -> list[EndpointState]:
    """Endpoints url(0).. with the given inflight counts, all healthy unless told."""
    ok = healthy if healthy is not None else [True] * len(inflight)
    return [EndpointState(url(i), ok[i], inflight=n) for i, n in enumerate(inflight)]


def index_of(endpoint: EndpointState | None) -> int:
    assert endpoint is not None
    return int(endpoint.url.rsplit(".", 1)[1].split(":")[0])


def drive(policy: Policy, keys: list[RouteKey], n: int) -> list[int]:
    """Route `keys` in turn over n endpoints whose inflight is what was routed so far."""
    inflight = [0] * n
    for key in keys:
        inflight[index_of(policy.choose(fleet(inflight), key))] += 1
    return inflight


endpoint_st = st.builds(
    EndpointState,
    url=st.sampled_from([url(i) for i in range(12)]),
    healthy=st.booleans(),
    inflight=st.integers(0, 50),
    running=st.integers(0, 50),
    waiting=st.integers(0, 50),
    kv_usage=st.floats(0.0, 1.0),
)
endpoints_st = st.lists(endpoint_st, max_size=8, unique_by=lambda e: e.url)
key_st = st.builds(
    RouteKey,
    model=st.just("m"),
    session=st.none() | st.text(max_size=8),
    prefix=st.lists(st.integers(0, 2**64 - 1), max_size=4).map(tuple),
)


# -- make_policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_make_policy_gives_a_fresh_policy_of_that_name(name: str) -> None:
    policy = make_policy(name)
    assert policy.name == name
    assert make_policy(name) is not policy


def test_make_policy_rejects_unknown_names_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'random'") as err:
        make_policy("random")
    for name in POLICY_NAMES:
        assert name in str(err.value)


# -- every policy -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(snapshots=st.lists(st.tuples(endpoints_st, key_st), min_size=1, max_size=6))
@pytest.mark.parametrize("name", POLICY_NAMES)
def test_choose_returns_a_healthy_endpoint_or_none_when_none_is(
    name: str, snapshots: list[tuple[list[EndpointState], RouteKey]]
) -> None:
    policy = make_policy(name)
    for endpoints, key in snapshots:
        chosen = policy.choose(endpoints, key)
        if any(e.healthy for e in endpoints):
            assert chosen is not None
            assert chosen.healthy
            assert chosen in endpoints
        else:
            assert chosen is None


@settings(max_examples=30, deadline=None)
@given(snapshots=st.lists(st.tuples(endpoints_st, key_st), min_size=1, max_size=8))
@pytest.mark.parametrize("name", POLICY_NAMES)
def test_choices_depend_only_on_inputs_not_on_snapshot_order(
    name: str, snapshots: list[tuple[list[EndpointState], RouteKey]]
) -> None:
    a, b = make_policy(name), make_policy(name)
    for endpoints, key in snapshots:
        assert a.choose(endpoints, key) == b.choose(endpoints[::-1], key)


# -- round_robin --------------------------------------------------------------------------------


def test_round_robin_cycles_in_url_order_whatever_the_snapshot_order() -> None:
    policy = RoundRobin()
    endpoints = fleet([0] * 5)
    picks = [index_of(policy.choose(endpoints[::-1], KEY)) for _ in range(10)]
    assert picks == [0, 1, 2, 3, 4] * 2


def test_round_robin_spreads_evenly_ignoring_load_and_skipping_unhealthy() -> None:
    policy = RoundRobin()
    endpoints = [*fleet([9, 0, 3, 0]), EndpointState(url(4), False)]
    picks = Counter(index_of(policy.choose(endpoints, KEY)) for _ in range(100))
    assert picks == {0: 25, 1: 25, 2: 25, 3: 25}


def test_round_robin_continues_after_the_last_pick_when_endpoints_change() -> None:
    policy = RoundRobin()
    assert index_of(policy.choose(fleet([0] * 4), KEY)) == 0
    assert index_of(policy.choose(fleet([0] * 4), KEY)) == 1
    # 1 and 2 go away: the cycle goes on with 3 rather than starting over at 0.
    down = fleet([0] * 4, [True, False, False, True])
    assert index_of(policy.choose(down, KEY)) == 3
    assert index_of(policy.choose(down, KEY)) == 0


# -- least_load ---------------------------------------------------------------------------------


def test_load_score_formula() -> None:
    e = EndpointState(url(0), True, inflight=1, running=2, waiting=3, kv_usage=0.5)
    assert load_score(e) == 1 + 2 + 2 * 3 + 4 * 0.5


def test_kv_usage_breaks_ties_between_equal_request_counts() -> None:
    endpoints = [
        EndpointState(url(0), True, running=4, kv_usage=0.9),
        EndpointState(url(1), True, running=4, kv_usage=0.2),
    ]
    assert index_of(LeastLoad().choose(endpoints, KEY)) == 1


@settings(max_examples=100, deadline=None)
@given(endpoints=endpoints_st)
def test_least_load_picks_the_minimum_score(endpoints: list[EndpointState]) -> None:
    chosen = LeastLoad().choose(endpoints, KEY)
    healthy = [e for e in endpoints if e.healthy]
    if healthy:
        assert chosen is not None
        assert load_score(chosen) == min(load_score(e) for e in healthy)


def test_least_load_spreads_equal_endpoints_in_turn() -> None:
    policy = LeastLoad()
    endpoints = [*fleet([2, 2, 2]), EndpointState(url(3), True, inflight=3)]
    picks = Counter(index_of(policy.choose(endpoints, KEY)) for _ in range(30))
    assert picks == {0: 10, 1: 10, 2: 10}


def test_least_load_with_feedback_keeps_endpoints_level() -> None:
    assert drive(LeastLoad(), [KEY] * 103, 4) == [26, 26, 26, 25]


# -- session ------------------------------------------------------------------------------------


def sessions(n: int) -> list[RouteKey]:
    return [RouteKey("m", session=f"user-{i}") for i in range(n)]


def placement(policy: SessionAffinity, endpoints: list[EndpointState]) -> dict[str, str]:
    """Where each of 300 sessions goes with no load anywhere."""
    out: dict[str, str] = {}
    for key in sessions(300):
        chosen = policy.choose(endpoints, key)
        assert chosen is not None and key.session is not None
        out[key.session] = chosen.url
    return out


def test_a_session_sticks_to_its_endpoint_while_under_the_bound() -> None:
    policy = SessionAffinity()
    key = RouteKey("m", session="alice")
    first = policy.choose(fleet([3, 3, 3, 3]), key)
    for _ in range(10):
        assert policy.choose(fleet([3, 3, 3, 3]), key) == first
    # A fresh policy object (another router replica) agrees: the ring is a stable hash.
    assert SessionAffinity().choose(fleet([3, 3, 3, 3]), key) == first


def test_sessions_spread_over_the_ring() -> None:
    counts = Counter(placement(SessionAffinity(), fleet([0] * 4)).values())
    assert len(counts) == 4
    assert min(counts.values()) >= 40  # 75 each on average; 64 vnodes keep it near that


def test_a_session_leaves_an_endpoint_that_is_over_the_bound() -> None:
    policy = SessionAffinity()
    key = RouteKey("m", session="alice")
    home = index_of(policy.choose(fleet([0, 0, 0, 0]), key))
    inflight = [0, 0, 0, 0]
    inflight[home] = 2  # capacity is ceil(1.25 * 3 / 4) = 1: home is full
    moved = policy.choose(fleet(inflight), key)
    assert index_of(moved) != home


def test_removing_an_endpoint_moves_only_its_sessions() -> None:
    policy = SessionAffinity()
    before = placement(policy, fleet([0] * 5))
    for gone in range(5):
        down = [i != gone for i in range(5)]
        after = placement(policy, fleet([0] * 5, down))
        moved = {s for s in before if before[s] != after[s]}
        assert moved == {s for s in before if before[s] == url(gone)}
        assert moved  # the removed endpoint held some sessions
    # It coming back restores the original placement.
    assert placement(policy, fleet([0] * 5)) == before


def test_requests_without_a_session_go_to_the_least_loaded() -> None:
    assert index_of(SessionAffinity().choose(fleet([4, 1, 3]), KEY)) == 1


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 8),
    picks=st.lists(st.integers(0, 19), min_size=1, max_size=200),
    hot=st.integers(0, 19),
    hot_share=st.floats(0.0, 1.0),
)
def test_session_load_never_exceeds_the_bound_without_completions(
    n: int, picks: list[int], hot: int, hot_share: float
) -> None:
    # Skew: the first `hot_share` of the requests all belong to one session.
    cut = int(len(picks) * hot_share)
    keys = [RouteKey("m", session=f"s{hot if i < cut else p}") for i, p in enumerate(picks)]
    policy = SessionAffinity()
    inflight = [0] * n
    for key in keys:
        inflight[index_of(policy.choose(fleet(inflight), key))] += 1
        assert max(inflight) <= math.ceil(1.25 * sum(inflight) / n)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    ops=st.lists(st.integers(-3, 9), min_size=1, max_size=200),
)
def test_the_chosen_endpoint_is_within_the_bound_as_requests_come_and_go(
    n: int, ops: list[int]
) -> None:
    """op >= 0: a request for session s{op}; op < 0: the oldest request in flight finishes."""
    policy = SessionAffinity()
    inflight = [0] * n
    live: deque[int] = deque()
    for op in ops:
        if op < 0:
            if live:
                inflight[live.popleft()] -= 1
            continue
        i = index_of(policy.choose(fleet(inflight), RouteKey("m", session=f"s{op}")))
        inflight[i] += 1
        live.append(i)
        assert inflight[i] <= math.ceil(1.25 * sum(inflight) / n)


def test_session_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="balance"):
        SessionAffinity(balance=0.9)
    with pytest.raises(ValueError, match="vnodes"):
        SessionAffinity(vnodes=0)


# -- prefix -------------------------------------------------------------------------------------


SYSTEM = "You are a helpful assistant. " * 40  # ~1160 characters: 4 full chunks of 256


def prompt_key(text: str) -> RouteKey:
    return RouteKey("m", prefix=prefix_hashes(text))


def test_the_same_prefix_goes_to_the_same_endpoint() -> None:
    policy = PrefixAffinity()
    endpoints = fleet([1, 1, 1, 1])
    first = policy.choose(endpoints, prompt_key(SYSTEM + "question one"))
    assert first is not None
    # Same leading chunks, different tail: the least-loaded rotation would pick another one.
    for tail in ("question two", "question three", "x" * 300):
        assert policy.choose(endpoints, prompt_key(SYSTEM + tail)) == first


def test_new_prefixes_and_no_prefix_are_placed_by_least_load() -> None:
    policy = PrefixAffinity()
    assert index_of(policy.choose(fleet([3, 0, 2]), prompt_key("a" * 512))) == 1
    assert index_of(policy.choose(fleet([3, 5, 2]), KEY)) == 2
    assert policy.index_size == 2  # the keyless request recorded nothing


AB, AC = "a" * 256 + "b" * 256, "a" * 256 + "c" * 256


def two_branches() -> PrefixAffinity:
    """A prefix index where chunk a was last served by 1, a+b by 0 and a+c by 1."""
    policy = PrefixAffinity()
    assert index_of(policy.choose(fleet([0, 5, 5]), prompt_key(AB))) == 0
    # Chunk a is known on 0, but 0 is too far above 1: a+c goes to 1, and so does chunk a.
    assert index_of(policy.choose(fleet([5, 0, 5]), prompt_key(AC))) == 1
    return policy


def test_the_longest_matching_prefix_wins() -> None:
    policy = two_branches()
    assert index_of(policy.choose(fleet([0, 0, 0]), prompt_key(AB + "tail"))) == 0
    assert index_of(policy.choose(fleet([0, 0, 0]), prompt_key(AC + "tail"))) == 1
    assert index_of(policy.choose(fleet([0, 0, 0]), prompt_key("a" * 256 + "d" * 256))) == 1


def test_an_unhealthy_holder_falls_back_to_a_shorter_match_then_to_least_load() -> None:
    policy = two_branches()
    zero_down = fleet([0, 2, 0], [False, True, True])
    assert index_of(policy.choose(zero_down, prompt_key(AB))) == 1  # chunk a, not least load
    policy = two_branches()
    only_two = fleet([0, 0, 3], [False, False, True])
    assert index_of(policy.choose(only_two, prompt_key(AB))) == 2


def test_an_overloaded_holder_gives_way_to_the_least_loaded() -> None:
    policy = PrefixAffinity()
    key = prompt_key(SYSTEM)
    assert index_of(policy.choose(fleet([0, 0]), key)) == 0
    assert index_of(policy.choose(fleet([4, 0]), key)) == 0  # 4 <= 0 + max(4, 0)
    assert index_of(policy.choose(fleet([5, 0]), key)) == 1  # 5 > 4: moves, and is recorded
    assert index_of(policy.choose(fleet([5, 1]), key)) == 1
    assert index_of(policy.choose(fleet([20, 30]), key)) == 1  # 30 <= 20 + max(4, 10)
    assert index_of(policy.choose(fleet([20, 31]), key)) == 0


@pytest.mark.parametrize("n", [2, 4, 8])
def test_a_shared_system_prompt_does_not_hot_spot_one_endpoint(n: int) -> None:
    counts = drive(PrefixAffinity(), [prompt_key(SYSTEM + f"q{i}") for i in range(1000)], n)
    assert sum(counts) == 1000
    # Each pick is at most max(4, 0.5*least) above the least loaded, so the busiest endpoint
    # ends at most 1.5*least + 1: with n endpoints that caps its share at 1.5 / (n + 0.5).
    assert max(counts) <= 1000 * 1.5 / (n + 0.5) + 1


@pytest.mark.parametrize("concurrency", [8, 64])
def test_a_shared_system_prompt_spreads_as_requests_come_and_go(concurrency: int) -> None:
    policy = PrefixAffinity()
    inflight, served = [0] * 4, [0] * 4
    live: deque[int] = deque()
    for i in range(1000):
        if len(live) == concurrency:
            inflight[live.popleft()] -= 1
        pick = index_of(policy.choose(fleet(inflight), prompt_key(SYSTEM + f"q{i}")))
        inflight[pick] += 1
        served[pick] += 1
        live.append(pick)
    assert max(served) <= 1000 * 0.3  # a fair share is 0.25


@settings(max_examples=60, deadline=None)
@given(
    snapshots=st.lists(
        st.tuples(st.lists(st.integers(0, 60), min_size=1, max_size=6), st.integers(0, 3)),
        min_size=1,
        max_size=40,
    )
)
def test_prefix_choice_is_never_far_above_the_least_loaded(
    snapshots: list[tuple[list[int], int]],
) -> None:
    policy = PrefixAffinity()
    prompts = [prefix_hashes(c * 512) for c in "abcd"]
    for inflight, p in snapshots:
        endpoints = fleet(inflight)
        chosen = policy.choose(endpoints, RouteKey("m", prefix=prompts[p]))
        assert chosen is not None
        least = min(inflight)
        assert load_score(chosen) <= least + max(4, 0.5 * least)


def test_the_prefix_index_is_a_bounded_lru() -> None:
    policy = PrefixAffinity(max_entries=100)
    endpoints = fleet([0, 0, 0])
    last = -1
    for i in range(1000):
        last = index_of(policy.choose(endpoints, RouteKey("m", prefix=(i, 10_000 + i))))
        assert policy.index_size <= 100
    assert policy.index_size == 100
    # The most recent prefix is still known; the oldest is forgotten and goes by load.
    busy = [2 if i == last else 0 for i in range(3)]
    assert index_of(policy.choose(fleet(busy), RouteKey("m", prefix=(999,)))) == last
    assert index_of(policy.choose(fleet([5, 0, 5]), RouteKey("m", prefix=(0,)))) == 1


def test_serving_a_prefix_again_makes_it_recent() -> None:
    policy = PrefixAffinity(max_entries=3)
    one, two, three, four = (RouteKey("m", prefix=(h,)) for h in (1, 2, 3, 4))
    assert index_of(policy.choose(fleet([0, 5]), one)) == 0
    assert index_of(policy.choose(fleet([5, 0]), two)) == 1
    policy.choose(fleet([0, 0]), three)
    assert index_of(policy.choose(fleet([0, 0]), one)) == 0  # by affinity; now the most recent
    policy.choose(fleet([0, 0]), four)  # evicts the least recent: two, not one
    assert index_of(policy.choose(fleet([0, 2]), two)) == 0  # forgotten: least load
    assert index_of(policy.choose(fleet([2, 0]), one)) == 0  # remembered


def test_the_default_prefix_index_cap() -> None:
    policy = PrefixAffinity()
    assert policy.max_entries == 65536
    for i in range(4200):  # 16 hashes a request: 67200 recorded, capped
        policy.choose(fleet([0, 0]), RouteKey("m", prefix=tuple(range(16 * i, 16 * i + 16))))
    assert policy.index_size == 65536


def test_prefix_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        PrefixAffinity(max_entries=0)


# -- prefix_hashes ------------------------------------------------------------------------------


def test_prefix_hashes_are_stable_across_processes() -> None:
    # Computed once; blake2b is unsalted, so every process and every router replica agrees.
    assert prefix_hashes("a" * 256 + "b" * 256 + "c" * 10) == (
        9572908987247133376,
        2210022296346914222,
    )
    assert prefix_hashes("abcd" * 3, chunk_chars=4) == (
        7707372117716394056,
        6535824964030059880,
        11565720494553662355,
    )


def test_prefix_hashes_count_only_full_chunks_up_to_the_cap() -> None:
    assert prefix_hashes("") == ()
    assert prefix_hashes("x" * 255) == ()
    assert len(prefix_hashes("x" * 256)) == 1
    assert len(prefix_hashes("x" * 767)) == 2
    assert len(prefix_hashes("x" * 100_000)) == 16
    assert len(prefix_hashes("x" * 100, chunk_chars=10, max_chunks=3)) == 3
    assert prefix_hashes("x" * 100, max_chunks=0) == ()


def test_the_same_text_asked_of_two_models_is_two_prefixes() -> None:
    # vLLM hashes a LoRA adapter into its blocks: the same text under another adapter (or the
    # base model) is not cached, so the prefix policy must not send it where the text went.
    text = "shared system prompt " * 40
    base, one, two = (prefix_hashes(text, model=m) for m in ("", "sql-lora", "chat-lora"))
    assert len(base) == len(one) == len(two) == 3
    assert not set(base) & set(one) and not set(one) & set(two) and not set(base) & set(two)
    assert prefix_hashes(text, model="sql-lora") == one  # and stable for one model
    policy = PrefixAffinity()
    idle = [EndpointState(url(i), True) for i in (1, 2)]
    first = policy.choose(idle, RouteKey("sql-lora", prefix=one))
    assert first is not None
    # its engine a request busier (within the prefix slack): the adapter's text still goes
    # there, the other adapter's same text goes to the idle engine
    busier = [EndpointState(e.url, True, inflight=1 if e.url == first.url else 0) for e in idle]
    again = policy.choose(busier, RouteKey("sql-lora", prefix=one))
    other = policy.choose(busier, RouteKey("chat-lora", prefix=two))
    assert again is not None and again.url == first.url
    assert other is not None and other.url != first.url


def test_prefix_hashes_are_chained() -> None:
    base = prefix_hashes("a" * 256 + "b" * 256 + "c" * 256)
    changed = prefix_hashes("A" + "a" * 255 + "b" * 256 + "c" * 256)
    assert all(x != y for x, y in zip(base, changed, strict=True))
    # Equal chunks at different depths hash differently.
    same = prefix_hashes("a" * 768)
    assert len(set(same)) == 3
    # A change in chunk 2 leaves chunks 0-1 alone.
    late = prefix_hashes("a" * 256 + "b" * 256 + "C" + "c" * 255)
    assert late[:2] == base[:2] and late[2] != base[2]


@settings(max_examples=100, deadline=None)
@given(head=st.text(min_size=0, max_size=40), tail=st.text(max_size=40), size=st.integers(1, 8))
def test_prefix_hashes_of_a_longer_text_extend_those_of_its_full_chunks(
    head: str, tail: str, size: int
) -> None:
    full = head[: len(head) - len(head) % size]
    short = prefix_hashes(full, chunk_chars=size, max_chunks=100)
    assert prefix_hashes(full + tail, chunk_chars=size, max_chunks=100)[: len(short)] == short


def test_prefix_hashes_accept_any_text() -> None:
    assert len(prefix_hashes("\ud800" * 4 + "é" * 4, chunk_chars=4)) == 2


def test_prefix_hashes_reject_bad_parameters() -> None:
    with pytest.raises(ValueError, match="chunk_chars"):
        prefix_hashes("abc", chunk_chars=0)
    with pytest.raises(ValueError, match="max_chunks"):
        prefix_hashes("abc", max_chunks=-1)


def test_a_long_shared_prefix_is_kept_for_a_larger_imbalance() -> None:
    """The cost model: 16 matched chunks (~1,024 tokens of prefill) are worth 8 units of load
    at 128 tokens each, more than the fixed slack of 4; short matches keep the fixed slack."""
    policy = PrefixAffinity()
    key = prompt_key("You are a helpful assistant. " * 200)  # > 16 chunks: all 16 hashed
    assert index_of(policy.choose(fleet([0, 0]), key)) == 0
    assert index_of(policy.choose(fleet([8, 0]), key)) == 0  # 8 <= 0 + max(4, 1024/128, 0)
    assert index_of(policy.choose(fleet([9, 0]), key)) == 1  # past it: moves, and is recorded
    assert index_of(policy.choose(fleet([9, 1]), key)) == 1
