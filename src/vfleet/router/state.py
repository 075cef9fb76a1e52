"""What routing policies see: immutable snapshots of endpoints and the request's routing key."""

from __future__ import annotations

from dataclasses import dataclass

# EndpointState and RouteKey are made on every request (one per endpoint, one per request). They
# write their own __init__ (init=False): the one `dataclass` generates stays interpreted code even
# in the mypyc build, and for a frozen class costs ~1.5 us per object (this one: ~0.06 us).
# object.__setattr__ because the class is frozen, called by that name (mypyc compiles it to a
# direct store; through an alias it is a dynamic call, 10x slower). tests/test_policies.py
# checks that every field is set, so a field added without its line here fails there.


@dataclass(frozen=True, slots=True, init=False)
class EndpointState:
    """One engine replica as the router knows it at the moment of the decision."""

    url: str  # base URL, e.g. http://127.0.0.1:8100
    healthy: bool
    inflight: int = 0  # requests this router process has in flight to it
    running: int = 0  # scraped vllm:num_requests_running
    waiting: int = 0  # scraped vllm:num_requests_waiting
    kv_usage: float = 0.0  # scraped vllm:kv_cache_usage_perc, 0..1

    def __init__(
        self,
        url: str,
        healthy: bool,
        inflight: int = 0,
        running: int = 0,
        waiting: int = 0,
        kv_usage: float = 0.0,
    ) -> None:
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "healthy", healthy)
        object.__setattr__(self, "inflight", inflight)
        object.__setattr__(self, "running", running)
        object.__setattr__(self, "waiting", waiting)
        object.__setattr__(self, "kv_usage", kv_usage)


@dataclass(frozen=True, slots=True)
class Chain:
    """A prompt as the engine caches it: the router's hashes of its full KV blocks."""

    blocks: tuple[int, ...]  # router.kvindex.chain_hash of each full block, chained
    tokens: int  # prompt length in tokens (the last, partial block included)
    block_size: int  # tokens per block


@dataclass(frozen=True, slots=True, init=False)
class RouteKey:
    """The routing-relevant facts of one request."""

    model: str
    session: str | None = None  # session header or the body's `user`
    prefix: tuple[int, ...] = ()  # chained hashes of the prompt's leading chunks
    chain: Chain | None = None  # the prompt's KV blocks (the kv policy), when known
    now: float = 0.0  # the caller's clock (seconds), for decisions that expire

    def __init__(
        self,
        model: str,
        session: str | None = None,
        prefix: tuple[int, ...] = (),
        chain: Chain | None = None,
        now: float = 0.0,
    ) -> None:
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "session", session)
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "chain", chain)
        object.__setattr__(self, "now", now)
