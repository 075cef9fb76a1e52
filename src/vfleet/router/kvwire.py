"""Where a KV-event publisher's replay socket is, by the convention vfleet's deployments follow.

vLLM binds the replay socket wherever `replay_endpoint` says; a subscriber only knows the
publisher's endpoint, so the two sides agree on a rule: a TCP publisher's replay socket listens
on the next port (the chart's `kv-replay` port), a local (ipc://) one on a socket beside it named
`NAME.replay.sock`. Pure: `vfleet up` uses it to bind, the router's subscriber to connect.
"""

from __future__ import annotations


def replay_endpoint(endpoint: str) -> str | None:
    """The replay socket of the publisher at `endpoint`; None when the rule gives none."""
    if endpoint.startswith("ipc://"):
        path = endpoint.removeprefix("ipc://")
        if not path:
            return None
        return f"ipc://{path.removesuffix('.sock')}.replay.sock"
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65535:
        return None
    return f"{host}:{int(port) + 1}"
