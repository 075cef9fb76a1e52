"""Limits at the client edge of an HTTP server, and the open-file limit they depend on.

`EdgeLimits` is plain data: the router's and the simulator's settings carry one and hand it to
`vfleet.http.server.protocol_factory`. Every limit is enforced while bytes arrive, before a request
reaches a handler, and every refusal is an OpenAI-shaped JSON error on a closed connection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("vfleet.http")

NOFILE_CAP = 1 << 20  # never ask for more descriptors than this, even if the hard limit is higher


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one client connection may cost the server before a handler sees its request.

    Sizes are bytes, times are seconds. Defaults follow common front-end servers (nginx, Apache).
    """

    max_request_line_bytes: int = 8 * 1024  # request target (URL) longer than this: 414
    max_header_line_bytes: int = 16 * 1024  # one header field line, name and value: 431
    max_header_bytes: int = 64 * 1024  # the whole request head, request line included: 431
    max_header_count: int = 100  # header field lines in one request: 431
    max_body_bytes: int = 64 * 1024 * 1024  # declared or received body above this: 413 at once
    header_timeout_s: float = 20.0  # from a request's first byte to the end of its head: 408
    body_timeout_s: float = 60.0  # longest silence while a request body is arriving: 408
    keepalive_timeout_s: float = 75.0  # an idle connection between requests is closed quietly
    max_connections: int = 10_000  # open connections per server (process); beyond: 503 + close
    pipeline_buffer_bytes: int = 64 * 1024  # unparsed bytes held while a response is in progress

    def __post_init__(self) -> None:
        sizes = (
            self.max_request_line_bytes,
            self.max_header_line_bytes,
            self.max_header_bytes,
            self.max_header_count,
            self.max_connections,
            self.pipeline_buffer_bytes,
        )
        if min(sizes) < 1 or self.max_body_bytes < 0:
            raise ValueError("edge limits must be positive")
        times = (self.header_timeout_s, self.body_timeout_s, self.keepalive_timeout_s)
        if min(times) <= 0:
            raise ValueError("edge timeouts must be > 0 seconds")


def raise_nofile_limit(cap: int = NOFILE_CAP) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (at most `cap`).

    Call once at start, before listening: the default soft limit (often 1024) lets a thousand idle
    connections lock everyone out. Returns the soft limit in force afterwards (0 where the platform
    has no such limit)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, want, exc)
            return int(soft)
        return want
    return int(soft) if soft != resource.RLIM_INFINITY else cap


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE now in force (`NOFILE_CAP` if unlimited or unknown)."""
    try:
        import resource
    except ImportError:
        return NOFILE_CAP
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return NOFILE_CAP if soft == resource.RLIM_INFINITY else int(soft)
