"""Where a KV-event publisher's replay socket is, and each data-parallel rank's publisher, by the
convention vfleet's deployments follow.

vLLM binds the replay socket wherever `replay_endpoint` says; a subscriber only knows the
publisher's endpoint, so the two sides agree on a rule: a TCP publisher's replay socket listens
`REPLAY_OFFSET` ports above it (the chart's `kv-replay` port), a local (ipc://) one on a socket
beside it named `NAME.replay.sock`. Pure: `vfleet up` and the chart use it to bind, the router's
subscriber to connect.

Data parallelism: an engine with `--data-parallel-size N` runs one publisher per rank, and vLLM
adds the rank to BOTH the publisher's and the replay socket's TCP port. With the replay socket at
the next port, rank 1's publisher would take rank 0's replay port; 100 ports apart, ranks below
100 never collide (publishers at P..P+N-1, replay sockets at P+100..P+100+N-1). vLLM refuses an
ipc:// endpoint on a rank above 0 (its port offset knows only tcp and inproc), so a local engine
publishes on one socket, rank 0's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

REPLAY_OFFSET: Final = 100  # replay port - publisher port (TCP); above any data-parallel rank
MAX_RANKS: Final = REPLAY_OFFSET  # ranks at or above it would collide with replay ports


@dataclass(frozen=True, slots=True)
class Publisher:
    """One engine's KV-event publisher as the router is told of it: rank 0's endpoint and how
    many data-parallel ranks publish beside it (rank r at `rank_endpoint(endpoint, r)`)."""

    endpoint: str
    ranks: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.ranks <= MAX_RANKS:
            raise ValueError(f"ranks must be 1..{MAX_RANKS}, not {self.ranks}")


def _tcp_port(endpoint: str) -> tuple[str, int] | None:
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def replay_endpoint(endpoint: str) -> str | None:
    """The replay socket of the publisher at `endpoint`; None when the rule gives none."""
    if endpoint.startswith("ipc://"):
        path = endpoint.removeprefix("ipc://")
        if not path:
            return None
        return f"ipc://{path.removesuffix('.sock')}.replay.sock"
    tcp = _tcp_port(endpoint)
    if tcp is None or tcp[1] + REPLAY_OFFSET > 65535:
        return None
    return f"{tcp[0]}:{tcp[1] + REPLAY_OFFSET}"


def rank_endpoint(endpoint: str, rank: int) -> str | None:
    """Where data-parallel rank `rank` publishes when rank 0 publishes at `endpoint` (vLLM adds
    the rank to the port); None when it cannot (an ipc:// socket, a port out of range)."""
    if rank == 0:
        return endpoint
    tcp = _tcp_port(endpoint)
    if tcp is None or not 0 < rank < MAX_RANKS or tcp[1] + rank + REPLAY_OFFSET > 65535:
        return None
    return f"{tcp[0]}:{tcp[1] + rank}"


def rank_endpoints(publisher: Publisher) -> list[tuple[int, str, str | None]]:
    """(rank, publisher endpoint, replay endpoint or None) of each rank of `publisher` that the
    convention places (all of them over TCP; rank 0 only over ipc://)."""
    out: list[tuple[int, str, str | None]] = []
    for rank in range(publisher.ranks):
        endpoint = rank_endpoint(publisher.endpoint, rank)
        if endpoint is not None:
            out.append((rank, endpoint, replay_endpoint(endpoint)))
    return out
