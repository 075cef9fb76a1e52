"""The KV-event index (router.kvindex) and the kv policy (router.policies.KvAffinity), as pure
logic: random event streams against a plain model of what each engine holds, bounds, sequence
handling, and the decisions of the cost model."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.router.kvindex import (
    Applied,
    KvIndex,
    Predictions,
    chain_hash,
    chain_hashes,
    chain_run,
    lora_root,
)
from vfleet.router.policies import KvAffinity, KvDecision, PrefixAffinity, Reason
from vfleet.router.state import Chain, EndpointState, RouteKey
from vfleet.sim.kvcache import block_hash

BS = 4  # tokens per block in these tests


def stored(
    tokens: list[int], parent_tokens: list[int] | None = None, lora: str | None = None
) -> dict[str, Any]:
    """A BlockStored map (the simulator's shape) for `tokens`, chained after `parent_tokens`
    (engine hashes are the simulator's, which the router never sees the seed of), for LoRA
    adapter `lora` (None: the base model)."""
    parent = None
    for i in range(0, len(parent_tokens or []), BS):
        parent = block_hash(parent, (parent_tokens or [])[i : i + BS], lora)
    hashes = []
    h = parent
    for i in range(0, len(tokens), BS):
        h = block_hash(h, tokens[i : i + BS], lora)
        hashes.append(h)
    return {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": BS,
        "lora_id": None if lora is None else 1,
        "medium": "GPU",
        "lora_name": lora,
    }


def removed(all_tokens: list[int], blocks: list[int]) -> dict[str, Any]:
    """A BlockRemoved of the blocks at these positions of the chain `all_tokens`."""
    hashes, h = [], None
    for i in range(0, len(all_tokens), BS):
        h = block_hash(h, all_tokens[i : i + BS])
        hashes.append(h)
    return {"type": "BlockRemoved", "block_hashes": [hashes[b] for b in blocks], "medium": "GPU"}


def test_blocks_are_rehashed_from_their_tokens_so_the_request_side_meets_them() -> None:
    index = KvIndex()
    prompt = list(range(12))
    assert index.apply("a", 0, [stored(prompt)]) is Applied.APPLIED
    assert index.match(chain_hashes([*prompt, 99], BS), {"a", "b"}) == {"a": 3}
    assert index.block_size(["b", "a"]) == BS
    # Extending a chain names the parent by the engine's hash: mapped to the router's.
    assert index.apply("a", 1, [stored(list(range(12, 16)), prompt)]) is Applied.APPLIED
    assert index.match(chain_hashes(list(range(16)), BS), {"a"}) == {"a": 4}
    # vLLM's own shape: tagged arrays, hashes as bytes.
    arr = ["BlockStored", [b"\x01" * 32], None, [7, 7, 7, 7], BS, None, "GPU"]
    assert index.apply("b", 0, [arr]) is Applied.APPLIED
    assert index.holders(chain_hash(None, [7, 7, 7, 7])) == {"b"}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**32 - 1), max_size=70),
    st.integers(1, 8),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.booleans(),
)
def test_a_stored_run_hashes_as_its_blocks_one_by_one(
    tokens: list[int], size: int, parent: int | None, wide: bool
) -> None:
    """`chain_run` (how a BlockStored is applied) packs the tokens once: the same hashes as
    `chain_hash` block by block, a token id over 32 bits included."""
    if wide and tokens:
        tokens[len(tokens) // 2] = 2**40
    count = len(tokens) // size
    by_block, p = [], parent
    for i in range(count):
        p = chain_hash(p, tokens[i * size : (i + 1) * size])
        by_block.append(p)
    assert chain_run(parent, tokens, size, count) == by_block == chain_hashes(tokens, size, parent)


def test_engine_hashes_as_bytes_are_read_as_ints() -> None:
    """vLLM's sha256 block hashes arrive as bytes: stored and removed alike by their last 8."""
    tokens = list(range(8))
    event = stored(tokens)
    as_bytes = [h.to_bytes(32, "big") for h in event["block_hashes"]]
    index = KvIndex()
    index.apply("a", 0, [event | {"block_hashes": as_bytes}])
    assert index.blocks_of("a") == 2
    index.apply("a", 1, [{"type": "BlockRemoved", "block_hashes": as_bytes[1:], "medium": "GPU"}])
    assert index.blocks_of("a") == 1 and index.stats.removed == 1


def test_removed_and_cleared_blocks_leave_the_index() -> None:
    index = KvIndex()
    prompt = list(range(16))
    index.apply("a", 0, [stored(prompt)])
    index.apply("b", 0, [stored(prompt)])
    index.apply("a", 1, [removed(prompt, [2, 3])])
    chain = chain_hashes(prompt, BS)
    assert index.match(chain, {"a", "b"}) == {"a": 2, "b": 4}
    index.apply("b", 1, [{"type": "AllBlocksCleared"}])
    assert index.match(chain, {"a", "b"}) == {"a": 2}
    assert index.stats.cleared == 1


def test_lora_blocks_match_only_requests_for_their_adapter() -> None:
    index = KvIndex()
    prompt = list(range(12))
    index.apply("a", 0, [stored(prompt, lora="sql")])
    index.apply("b", 0, [stored(prompt)])
    index.apply("c", 0, [stored(prompt, lora="chat")])
    urls = {"a", "b", "c"}
    assert index.match(chain_hashes(prompt, BS, lora_root("sql")), urls) == {"a": 3}
    assert index.match(chain_hashes(prompt, BS), urls) == {"b": 3}
    assert index.match(chain_hashes(prompt, BS, lora_root("chat")), urls) == {"c": 3}
    # Extending an adapter's chain (its parent named by the engine's adapter hash)...
    index.apply("a", 1, [stored(list(range(12, 16)), prompt, lora="sql")])
    assert index.match(chain_hashes(list(range(16)), BS, lora_root("sql")), urls) == {"a": 4}
    # ...and vLLM's array shape: [tag, hashes, parent, tokens, size, lora_id, medium, lora_name]
    arr = ["BlockStored", [b"\x02" * 32], None, [5, 5, 5, 5], BS, 7, "GPU", "sql"]
    index.apply("b", 1, [arr])
    assert index.match(chain_hashes([5] * BS, BS, lora_root("sql")), urls) == {"b": 1}
    assert index.match(chain_hashes([5] * BS, BS), urls) == {}


def test_lora_multimodal_and_orphan_blocks_are_skipped() -> None:
    index = KvIndex()
    # an adapter known only by its id (no lora_name): its requests cannot be told apart
    lora = {**stored(list(range(8))), "lora_id": 3}
    extra = {**stored(list(range(8))), "extra_keys": [None, ["img"]]}
    orphan = stored(list(range(8, 12)), list(range(8)))  # its parent was never stored
    index.apply("a", 0, [lora, extra, orphan])
    assert index.size() == 0 and index.stats.skipped == 5


def test_sequence_numbers_gap_duplicate_and_restart() -> None:
    index = KvIndex()
    index.apply("a", 4, [stored(list(range(4)))])  # the first batch seen starts the stream
    assert index.apply("a", 6, [stored(list(range(4, 8)))]) is Applied.GAP
    assert index.blocks_of("a") == 1  # a gap applies nothing
    assert index.replayed("a", 4, []) is Applied.DUPLICATE
    assert index.replayed("a", 5, [stored(list(range(8, 12)))]) is Applied.APPLIED
    assert index.apply("a", 6, [stored(list(range(4, 8)))]) is Applied.APPLIED
    assert index.blocks_of("a") == 3
    # Going back: a new publisher (the engine restarted); what the old one held is gone.
    assert index.apply("a", 0, [stored(list(range(20, 24)))]) is Applied.RESTARTED
    assert index.blocks_of("a") == 1 and index.seq("a") == 0


def test_purge_and_retain_drop_engines() -> None:
    index = KvIndex()
    for url in ("a", "b", "c"):
        index.apply(url, 0, [stored(list(range(8)))])
    index.purge("a")
    index.retain({"b"})
    assert index.engines() == ["b"]
    assert index.holders(chain_hash(None, [0, 1, 2, 3])) == {"b"}


def test_data_parallel_ranks_are_separate_engines_of_one_url() -> None:
    index = KvIndex()
    prompt = list(range(16))
    # Each rank publishes its own stream (own sequence numbers) and caches on its own.
    assert index.apply("a", 0, [stored(prompt[:8])], rank=0) is Applied.APPLIED
    assert index.apply("a", 0, [stored(prompt)], rank=1) is Applied.APPLIED
    assert index.apply("a", 1, [], rank=1) is Applied.APPLIED  # not a restart of rank 0
    assert index.seq("a") == 0 and index.seq("a", 1) == 1
    assert index.ranks("a") == [0, 1] and index.rank_count("a") == 2
    assert index.engines() == ["a"] and index.blocks_of("a") == 6
    chain = chain_hashes(prompt, BS)
    assert index.match(chain, {"a"}) == {"a": 4}  # the url's deepest rank...
    assert index.rank_holding("a", chain, 4) == 1  # ...is rank 1
    assert index.rank_holding("a", chain, 2) == 0  # (both hold 2 blocks: the lowest)
    # One rank's publisher restarts: only that rank's blocks go.
    assert index.apply("a", 0, [], rank=1) is Applied.RESTARTED
    assert index.match(chain, {"a"}) == {"a": 2} and index.rank_holding("a", chain, 2) == 0
    index.purge("a", 0)
    assert index.ranks("a") == [1] and index.match(chain_hashes(prompt, BS), {"a"}) == {}
    index.purge("a")  # the engine leaves: every rank
    assert not index.tracks("a") and index.rank_count("a") == 0


# -- random streams against a model ------------------------------------------------------------

chains = st.lists(st.integers(0, 2), min_size=1, max_size=5)  # block "letters"
ops = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["store", "remove_tail", "remove_any", "clear"]),
        chains,
        st.integers(0, 4),
    ),
    max_size=40,
)


def tokens_of(letters: list[int]) -> list[int]:
    return [t for letter in letters for t in [letter] * BS]


@settings(max_examples=150, deadline=None)
@given(ops=ops, cap=st.integers(1, 8))
def test_random_streams_match_a_plain_model_and_stay_bounded(
    ops: list[tuple[str, str, list[int], int]], cap: int
) -> None:
    index = KvIndex(max_blocks=cap)
    model: dict[str, dict[tuple[int, ...], None]] = {}  # engine -> held prefixes, oldest first
    seq: dict[str, int] = {}
    for url, op, letters, k in ops:
        held = model.setdefault(url, {})
        prefixes = [tuple(letters[: i + 1]) for i in range(len(letters))]
        if op == "store":
            events: list[dict[str, Any]] = [stored(tokens_of(letters))]
            for p in prefixes:
                held.pop(p, None)
                held[p] = None
            while len(held) > cap:
                del held[next(iter(held))]
        elif op.startswith("remove"):
            victims = range(len(letters))[-k:] if op == "remove_tail" and k else [k % len(letters)]
            events = [removed(tokens_of(letters), list(victims))]
            for v in victims:
                held.pop(prefixes[v], None)
        else:
            events = [{"type": "AllBlocksCleared"}]
            held.clear()
        seq[url] = seq.get(url, -1) + 1
        index.apply(url, seq[url], events)
        assert index.blocks_of(url) <= cap
    for url, held in model.items():
        assert index.blocks_of(url) == len(held)
        for p in held:
            assert url in index.holders(chain_hashes(tokens_of(list(p)), BS)[-1])
    assert index.size() <= cap * len(model)


@settings(max_examples=150, deadline=None)
@given(
    depths=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 40)), n=st.integers(1, 40)
)
def test_match_finds_every_engines_depth_on_prefix_closed_holdings(
    depths: dict[str, int], n: int
) -> None:
    index = KvIndex()
    prompt = list(range(n * BS))
    for url, d in depths.items():
        if d:
            index.apply(url, 0, [stored(prompt[: d * BS])])
    got = index.match(chain_hashes(prompt, BS), set(depths))
    assert got == {u: min(d, n) for u, d in depths.items() if d}


def test_predictions_expire_and_stay_bounded() -> None:
    guesses = Predictions(ttl_s=2.0, max_entries=8)
    chain = chain_hashes(list(range(40 * BS)), BS)
    guesses.record(chain, "a", now=0.0)
    assert guesses.match(chain, {"a", "b"}, now=1.0) == {"a": 40}
    assert guesses.match(chain[:10], {"a"}, now=1.0) == {"a": 8}  # sampled depths: 1, 2, 4, 8
    assert guesses.match(chain, {"a"}, now=2.5) == {}
    for i in range(100):
        guesses.record(chain_hashes([i] * (9 * BS), BS), "b", now=float(i))
        assert len(guesses) <= 8


# -- the kv policy -----------------------------------------------------------------------------


def eps(*loads: int) -> list[EndpointState]:
    return [EndpointState(f"http://e{i}", True, inflight=n) for i, n in enumerate(loads)]


def key_of(prompt: list[int], now: float = 0.0) -> RouteKey:
    return RouteKey("m", chain=Chain(tuple(chain_hashes(prompt, BS)), len(prompt), BS), now=now)


def seeded(holder: str, prompt: list[int]) -> KvIndex:
    """An index where `holder` stored `prompt` and the other engines sent (empty) events."""
    index = KvIndex()
    for url in ("http://e0", "http://e1", "http://e2"):
        index.apply(url, 0, [stored(prompt)] if url == holder else [])
    return index


def silent_fleet() -> tuple[KvAffinity, list[KvDecision]]:
    """A kv policy over three engines whose events arrived empty, and its decisions."""
    index = KvIndex()
    for url in ("http://e0", "http://e1", "http://e2"):
        index.apply(url, 0, [])
    decisions: list[KvDecision] = []
    policy = KvAffinity(index)
    policy.observe = decisions.append
    return policy, decisions


PROMPT = list(range(3000 // BS * BS))  # a 3,000-token prefix


def test_the_engine_holding_the_prefix_wins_until_its_queue_costs_more() -> None:
    decisions: list[KvDecision] = []
    policy = KvAffinity(seeded("http://e1", PROMPT))
    policy.observe = decisions.append
    key = key_of([*PROMPT, 1, 2, 3])
    assert policy.choose(eps(0, 0, 0), key) == eps(0, 0, 0)[1]
    assert decisions[-1].reason is Reason.HIT
    assert len(PROMPT) * 63 / 64 <= decisions[-1].cached_tokens <= len(PROMPT)  # depth to 1/64
    # 3,000 tokens saved against 256 tokens per request ahead: a busier holder still wins...
    assert policy.choose(eps(2, 8, 2), key) == eps(2, 8, 2)[1]
    # ...until it is past the overload bound (max(least + 8, 2 x mean)): the next best.
    assert policy.choose(eps(2, 11, 2), key).url != "http://e1"  # type: ignore[union-attr]
    assert decisions[-1].reason is Reason.SHED


def test_the_routers_requests_and_the_engines_count_are_the_same_requests() -> None:
    """The engine's scraped running/waiting include this router's in-flight requests: counted
    once (the larger count), or a scrape taken during one long prefill (a burst of `waiting`)
    would push the engine's prefixes away until the next scrape."""
    decisions: list[KvDecision] = []
    policy = KvAffinity(seeded("http://e1", PROMPT))
    policy.observe = decisions.append
    key = key_of([*PROMPT, 1, 2, 3])
    busy = EndpointState("http://e1", True, inflight=6, running=3, waiting=3)
    idle = [EndpointState(f"http://e{i}", True) for i in (0, 2)]
    assert policy.choose([idle[0], busy, idle[1]], key) == busy
    assert decisions[-1].reason is Reason.HIT
    # Another router's requests show only in the engine's count: they count too.
    crowded = EndpointState("http://e1", True, inflight=0, running=9, waiting=2)
    assert policy.choose([idle[0], crowded, idle[1]], key) != crowded
    assert decisions[-1].reason is Reason.SHED


def test_a_hit_is_not_shed_when_every_engine_is_busy() -> None:
    """The overload bound is against the fleet's mean load: when all engines are busy (the
    prefills of a cold start), shedding would only add a whole prefill to a busy engine; one
    engine far ahead of idle ones is still shed from."""
    decisions: list[KvDecision] = []
    index = seeded("http://e1", PROMPT)
    index.apply("http://e3", 0, [])
    policy = KvAffinity(index)
    policy.observe = decisions.append
    busy = [EndpointState(f"http://e{i}", True, inflight=n) for i, n in enumerate((4, 14, 10, 10))]
    assert policy.choose(busy, key_of([*PROMPT, 1])) == busy[1]
    assert decisions[-1].reason is Reason.HIT
    alone = [EndpointState(f"http://e{i}", True, inflight=n) for i, n in enumerate((0, 9, 0, 0))]
    assert policy.choose(alone, key_of([*PROMPT, 2])) != alone[1]
    assert decisions[-1].reason is Reason.SHED


def test_a_prefill_costs_every_request_it_stalls() -> None:
    """A prefill runs in the engine's steps, so the requests decoding there wait for it too: a
    half-cached prompt on a busy engine loses to the whole prompt on an idle one."""
    decisions: list[KvDecision] = []
    half = PROMPT[: len(PROMPT) // 2]
    policy = KvAffinity(seeded("http://e1", half))
    policy.observe = decisions.append
    chosen = policy.choose(eps(1, 4, 0), key_of(PROMPT))
    assert chosen is not None and chosen.url == "http://e2"
    assert decisions[-1].reason is Reason.BALANCE
    # Idle, the engine holding half the prompt is the cheaper one (a fresh policy: this one
    # now guesses that e2 holds the whole prompt).
    fresh = KvAffinity(seeded("http://e1", half))
    assert fresh.choose(eps(1, 0, 0), key_of(PROMPT)) == eps(1, 0, 0)[1]


def test_a_short_shared_prefix_is_not_worth_a_long_queue() -> None:
    decisions: list[KvDecision] = []
    short = list(range(8 * BS))
    policy = KvAffinity(seeded("http://e1", short))
    policy.observe = decisions.append
    chosen = policy.choose(eps(0, 3, 0), key_of([*short, *range(500, 600)]))
    assert chosen is not None and chosen.url != "http://e1"
    assert decisions[-1].reason is Reason.BALANCE


def test_a_burst_of_a_new_prefix_sticks_before_events_arrive_then_the_guess_expires() -> None:
    policy, decisions = silent_fleet()
    first = policy.choose(eps(0, 0, 0), key_of(PROMPT, now=0.0))
    assert decisions[-1].reason is Reason.MISS
    loads = [0, 0, 0]
    loads[int(first.url[-1])] = 2  # type: ignore[union-attr]
    again = policy.choose(eps(*loads), key_of([*PROMPT, 7], now=0.5))
    assert again == EndpointState(first.url, True, inflight=2)  # type: ignore[union-attr]
    assert decisions[-1].reason is Reason.PREDICTED
    policy.choose(eps(*loads), key_of([*PROMPT, 7], now=10.0))
    assert decisions[-1].reason in (Reason.MISS, Reason.BALANCE)


def test_a_data_parallel_engine_is_pinned_to_the_rank_holding_the_prefix() -> None:
    decisions: list[KvDecision] = []
    index = KvIndex()
    index.apply("http://e0", 0, [])
    index.apply("http://e1", 0, [], rank=0)
    index.apply("http://e1", 0, [stored(PROMPT)], rank=1)
    policy = KvAffinity(index)
    policy.observe = decisions.append
    assert policy.choose(eps(0, 0), key_of([*PROMPT, 5])) == eps(0, 0)[1]
    assert decisions[-1].reason is Reason.HIT and decisions[-1].dp_rank == 1
    assert policy.dp_rank == 1  # for the caller's X-data-parallel-rank header
    # A new prefix on a data-parallel engine: a rank from its first block, the same one for
    # its burst and in every router process; a single-rank engine is not pinned.
    other = KvAffinity(index)
    other.observe = decisions.append
    for p in range(12):
        key = key_of([p] * (20 * BS))
        a = policy.choose(eps(3, 0), key)
        first = decisions[-1]
        b = other.choose(eps(3, 0), key)
        assert a == b and first.dp_rank == decisions[-1].dp_rank
        assert first.dp_rank in (0, 1)
    assert {d.dp_rank for d in decisions[-24:]} == {0, 1}  # new prefixes spread over ranks
    policy.choose(eps(0, 9), key_of([77] * (20 * BS)))
    assert decisions[-1].dp_rank is None and policy.dp_rank is None  # e0: one rank


def test_router_processes_fed_the_same_events_choose_alike() -> None:
    index_a, index_b = KvIndex(), KvIndex()
    for index in (index_a, index_b):
        for url in ("http://e0", "http://e1", "http://e2"):
            index.apply(url, 0, [])
    a, b = KvAffinity(index_a), KvAffinity(index_b)
    for p in range(50):
        key = key_of([p] * (20 * BS))
        assert a.choose(eps(1, 1, 1), key) == b.choose(eps(1, 1, 1), key)


def test_without_events_or_chain_it_routes_as_prefix() -> None:
    decisions: list[KvDecision] = []
    policy = KvAffinity(KvIndex())
    policy.observe = decisions.append
    assert policy.choose(eps(0, 0), key_of(PROMPT)) is not None
    assert policy.choose(eps(0, 0), RouteKey("m")) is not None
    assert [d.reason for d in decisions] == [Reason.FALLBACK, Reason.FALLBACK]
    assert KvAffinity().choose([], RouteKey("m")) is None


@pytest.mark.parametrize("cap", [1, 3])
def test_the_engine_map_keeps_its_newest_blocks(cap: int) -> None:
    index = KvIndex(max_blocks=cap)
    index.apply("a", 0, [stored(list(range(5 * BS)))])
    assert index.blocks_of("a") == cap
    assert index.size() == cap


@settings(max_examples=40, deadline=None)
@given(depths=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 400)))
def test_on_long_chains_depths_are_found_to_within_a_64th(depths: dict[str, int]) -> None:
    index = KvIndex()
    n = 400
    prompt = list(range(n * BS))
    for url, d in depths.items():
        index.apply(url, 0, [stored(prompt[: d * BS])])
    got = index.match(chain_hashes(prompt, BS), set(depths))
    assert set(got) == set(depths)
    for url, d in depths.items():
        assert d - n // 64 <= got[url] <= d


def test_a_new_prefixs_first_request_sent_without_a_chain_holds_its_burst_together() -> None:
    """A new prefix's first request goes at once as `prefix` while its full encode runs; the
    requests after it have chains but no engine has events for them yet: they follow the first
    one instead of paying its cold prefill again on the least loaded engine."""
    policy, decisions = silent_fleet()
    chunks = tuple(range(1000, 1016))  # the prompt's 16 leading chunk hashes
    first = policy.choose(eps(0, 0, 0), RouteKey("m", prefix=chunks, now=0.0))
    assert first is not None and decisions[-1].reason is Reason.FALLBACK
    loads = [0, 0, 0]
    loads[int(first.url[-1])] = 2
    chained = RouteKey("m", prefix=chunks, chain=key_of([*PROMPT, 7]).chain, now=0.5)
    assert policy.choose(eps(*loads), chained) == EndpointState(first.url, True, inflight=2)
    assert decisions[-1].reason is Reason.PREDICTED
    assert decisions[-1].cached_tokens == len(PROMPT) - BS  # all but the last block
    # A prompt sharing only some of the leading chunks is credited with what they cover (64
    # tokens a chunk): too little to be worth a busier engine's stalled batch.
    other = key_of([5] * len(PROMPT)).chain  # (no blocks in common with the chains before)
    partial = RouteKey("m", prefix=(*chunks[:4], 1), chain=other, now=0.6)
    assert policy.choose(eps(*loads), partial) != EndpointState(first.url, True, inflight=2)
    assert decisions[-1].reason is Reason.BALANCE and decisions[-1].cached_tokens == 0
    # Once the guess has expired (the engine's events have long arrived) it counts no more.
    later = RouteKey("m", prefix=chunks, chain=key_of([*PROMPT, 8]).chain, now=10.0)
    assert policy.choose(eps(*loads), later) != EndpointState(first.url, True, inflight=2)
    assert decisions[-1].reason is Reason.MISS


def test_a_prompt_without_a_chain_stays_with_its_prefix_within_the_overload_bound() -> None:
    """A request that found the chain pool busy goes without a chain: it stays on the engine its
    leading chunks went to up to the kv policy's overload bound (max(least + 8, 2 x mean)), not
    the prefix policy's tighter guard (least + 8 for 16 chunks), then moves. With no engine's
    events followed (a model whose engines publish none) the policy is `prefix` itself."""
    policy, decisions = silent_fleet()
    plain = KvAffinity(KvIndex())
    chunks = tuple(range(2000, 2016))
    for p in (policy, plain):
        first = p.choose(eps(0, 0, 0), RouteKey("m", prefix=chunks, now=0.0))
        assert first == eps(0, 0, 0)[0]  # all alike: the least loaded's turn starts at e0

    def loads(n: int) -> list[EndpointState]:
        return eps(n, 6, 6)

    # 16 > 6 + 8 (the prefix guard) but <= 2 x mean (18.7): it stays
    assert policy.choose(loads(16), RouteKey("m", prefix=chunks, now=0.1)) == loads(16)[0]
    assert policy.choose(loads(30), RouteKey("m", prefix=chunks, now=0.2)) != loads(30)[0]
    assert [d.reason for d in decisions] == [Reason.FALLBACK] * 3
    # Routing as plain prefix moves it at 16 already.
    assert plain.choose(loads(16), RouteKey("m", prefix=chunks, now=0.1)) != loads(16)[0]
    prefix = PrefixAffinity()
    prefix.learn(chunks, "http://e0")
    assert prefix.choose(loads(16), RouteKey("m", prefix=chunks)) != loads(16)[0]
