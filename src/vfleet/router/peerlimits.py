"""Key budgets shared by router replicas, the pure part: what a replica tells its peers about its
keys' usage, how the peers' answers are merged, and how much of a limit a replica may hand out.
No I/O, no clock: router.peerpoll asks the peers and writes the result into the limit table's
peer row (router.sharedlimits).

A replica answers `GET /vfleet/usage` with its own usage only (every worker's, none of its
peers'), per key and window, as units per bucket *age* (0: the bucket now): the replicas' clocks
are CLOCK_MONOTONIC, one per host, so an epoch means nothing elsewhere, but an age does. The
receiver turns ages back into epochs of its own clock at the moment it got the answer, so a
peer's charges then leave the window on this host's clock; being cut at another host's bucket
edges, they may leave up to one bucket width early or late.

The decision: with `expected` replicas sharing a limit and the usage of `known` of them at hand
(this one and the peers that answered recently), a replica enforces `limit * known / expected`
against that usage: all peers answering, the whole limit against everyone's usage; none, its
`limit / expected` share against its own usage, as replicas that do not talk at all would. Peers
answer at most a poll interval late, so the replicas together may let through what they admit
in one interval more than the limit (at most, per replica, its own rate for that interval).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from vfleet.router.ratelimit import Window

# Wire names of the three windows a key may have (router.sharedlimits' regions).
REQUESTS: Final = "requests"
TOKENS_MINUTE: Final = "tokens_minute"
TOKENS_DAY: Final = "tokens_day"
WINDOWS: Final = (REQUESTS, TOKENS_MINUTE, TOKENS_DAY)
MAX_AGES: Final = 64  # ages one window may list (the longest has 25); more is a broken answer
MAX_COUNT: Final = 1 << 40  # units one bucket may hold in an answer; more is a broken answer


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """One key's usage in one of its windows, as a replica reports it."""

    width_us: int  # the window's bucket width: a peer on another limit is not mixed in
    ages: tuple[int, ...]  # units per bucket age, 0 the bucket now


Usage = dict[str, dict[str, WindowUsage]]  # key name -> window name -> usage
Want = Mapping[tuple[str, str], Window]  # (key name, window name) -> this router's window
Merged = dict[tuple[str, str], dict[int, int]]  # (key name, window name) -> epoch -> units


def encode(usage: Usage, instance: int, known: int, expected: int, polls: int) -> bytes:
    """The `/vfleet/usage` answer: the keys' usage, which router answers (`instance`: a router
    listed among its own peers knows itself), and (for people) how many replicas this router
    counts now and how many polls of its peers it has written."""
    keys = {
        name: {w: {"width_us": u.width_us, "ages": list(u.ages)} for w, u in windows.items()}
        for name, windows in usage.items()
    }
    replicas = {"known": known, "expected": expected, "polls": polls}
    return orjson.dumps({"keys": keys, "instance": instance, "replicas": replicas})


def decode(body: bytes, max_keys: int) -> tuple[int, Usage]:
    """A peer's answer: (its instance, 0 if it gave none; its usage); ValueError when it is not
    one (or lists more than `max_keys` keys). Entries of an unknown window or a malformed shape
    are skipped: a newer peer may say more."""
    raw: Any = orjson.loads(body)
    keys = raw.get("keys") if isinstance(raw, dict) else None
    if not isinstance(keys, dict):
        raise ValueError("no `keys` mapping in the usage answer")
    if len(keys) > max_keys:
        raise ValueError(f"{len(keys)} keys in the usage answer; at most {max_keys}")
    out: Usage = {}
    for name, windows in keys.items():
        if not isinstance(name, str) or not isinstance(windows, dict):
            continue
        got = {w: u for w in WINDOWS if (u := _window_usage(windows.get(w))) is not None}
        if got:
            out[name] = got
    instance = raw.get("instance")
    return (instance if isinstance(instance, int) and _count(instance) else 0), out


def _window_usage(raw: object) -> WindowUsage | None:
    if not isinstance(raw, dict):
        return None
    width, counts = raw.get("width_us"), raw.get("ages")
    if not isinstance(width, int) or not _count(width) or width < 1:
        return None
    if not isinstance(counts, list):
        return None
    if len(counts) > MAX_AGES or not all(_count(c) and abs(c) <= MAX_COUNT for c in counts):
        return None
    return WindowUsage(width, tuple(counts))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def merge(readings: Iterable[tuple[float, Usage]], want: Want) -> Merged:
    """The peers' usage summed per key and window, by epoch of this host's clock: each reading
    is (when it arrived, on this host's clock; what it said). Only windows this router enforces
    with the same bucket width count, and only the ages its window holds."""
    out: Merged = {}
    for at, usage in readings:
        for name, windows in usage.items():
            for wname, u in windows.items():
                window = want.get((name, wname))
                if window is None or window.width_us != u.width_us:
                    continue
                now = window.epoch(at)
                counts = out.setdefault((name, wname), {})
                for age, units in enumerate(u.ages[: window.words]):
                    if units:
                        counts[now - age] = counts.get(now - age, 0) + units
    return out


def expected_replicas(declared: int, peers: int) -> int:
    """Replicas sharing each limit: the tenants file's `replicas`, or this one and its peers,
    whichever is more (a peer listed but not answering still holds its share)."""
    return max(declared, 1 + peers)


def known_replicas(arrived: Iterable[float], now: float, stale_s: float) -> int:
    """This replica and the peers whose last answer is at most `stale_s` old."""
    return 1 + sum(1 for at in arrived if now - at <= stale_s)


def scaled(window: Window, known: int, expected: int) -> Window:
    """The part of `window`'s limit the `known` replicas (whose usage is counted) may use
    together: the whole limit when all are known, one share per known replica otherwise."""
    if expected <= 0 or known >= expected:
        return window
    share = max(1, known) / expected
    return Window(window.limit * share, window.window_s, window.buckets)


def trimmed(counts: Sequence[int]) -> tuple[int, ...]:
    """Ages without the trailing zeros (an answer lists only what is there)."""
    end = len(counts)
    while end and counts[end - 1] == 0:
        end -= 1
    return tuple(counts[:end])
