"""Tenants files, key identities and usage metering (router.tenants, router.usage), without a
server: the file's checks, who a request is, budgets reserved then settled from real usage, and
the usage event a stream carries only because the router asked for it."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from vfleet.router.ratelimit import requests_window, tokens_per_minute
from vfleet.router.sharedlimits import LimitTable
from vfleet.router.tenants import Defaults, Tenancy, parse_key_file, read_key_file
from vfleet.router.usage import Meter, ask_usage, read_usage

Recorded = list[tuple[str, str, int, int]]


def tenancy(tmp_path: Path, text: str, plain: tuple[bytes, ...] = ()) -> tuple[Tenancy, Recorded]:
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    seen: Recorded = []
    t = Tenancy(
        LimitTable.create(1, slots=64).row(0),
        plain,
        str(path),
        Defaults(requests_per_minute=60),
        lambda *a: seen.append(a),
    )
    return t, seen


SHA_B = hashlib.sha256(b"sk-b").hexdigest()
FILE = f"""
replicas: 2
defaults: {{tokens_per_day: 1000}}
keys:
  - name: team-a
    key: sk-a
    models: [alpha]
    tokens_per_minute: 100
  - {{name: team-b, key_sha256: {SHA_B}, requests_per_minute: 0}}
"""


def test_keys_limits_and_allowlists_from_the_file(tmp_path: Path) -> None:
    t, _ = tenancy(tmp_path, FILE, plain=(b"sk-plain",))
    a = t.identify({b"authorization": b"Bearer sk-a"})
    assert a is not None and a.name == "team-a" and a.models == frozenset({"alpha"})
    assert a.tokens_minute == tokens_per_minute(100).per(2)  # two replicas: half each
    assert a.requests == requests_window(60).per(2)  # the flag's default
    assert a.tokens_day is not None and a.tokens_day.limit == 500  # the file's default, halved
    b = t.identify({b"x-api-key": b"sk-b"})  # Anthropic's header; a key known by its hash
    assert b is not None and b.name == "team-b" and b.models is None
    assert b.requests is None  # 0: no request limit for this key
    plain = t.identify({b"authorization": b"bearer  sk-plain"})
    assert plain is not None and plain.name == "key-0"
    assert t.identify({b"authorization": b"Bearer sk-nope"}) is None
    assert t.identify({}) is None
    both, _ = tenancy(tmp_path, FILE, plain=(b"sk-a",))  # also a plain key: the file's rules
    named = both.identify({b"authorization": b"Bearer sk-a"})
    assert named is not None and named.name == "team-a" and named.models == frozenset({"alpha"})


def test_without_any_key_everyone_is_the_one_anonymous_tenant() -> None:
    t = Tenancy(LimitTable.create(1, slots=8).row(0), defaults=Defaults(requests_per_minute=6))
    who = t.identify({})
    assert who is not None and who.name == "anonymous" and not t.keyed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keys: []", "`keys` must be a non-empty list"),
        ("keys: [{name: a, key: sk-1, colour: red}]", "unknown fields colour"),
        ("keys: [{name: a, key: sk-1, key_sha256: " + "0" * 64 + "}]", "exactly one of key"),
        ("keys: [{name: 'a b', key: sk-1}]", "name must be"),
        ("keys: [{name: key-3, key: sk-1}]", "reserved"),
        ("keys: [{name: a, key: sk-1}, {name: a, key: sk-2}]", "used twice"),
        ("keys: [{name: a, key: sk-1}, {name: b, key: sk-1}]", "'b' has the same key as 'a'"),
        ("keys: [{name: a, key: sk-1, models: alpha}]", "models must be a list"),
        ("keys: [{name: a, key: sk-1, tokens_per_day: -1}]", "tokens_per_day must be a number"),
        ("replicas: 0\nkeys: [{name: a, key: sk-1}]", "replicas must be an integer"),
        ("defaults: {burst: 3}\nkeys: [{name: a, key: sk-1}]", "unknown fields burst"),
    ],
)
def test_a_bad_file_is_refused_naming_what_and_never_the_key(text: str, message: str) -> None:
    import yaml

    with pytest.raises(ValueError) as err:
        parse_key_file(yaml.safe_load(text), "t.yaml")
    assert message in str(err.value)
    assert "sk-1" not in str(err.value)


def test_a_yaml_error_names_the_line_not_its_content(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("keys:\n  - {name: a, key: sk-very-secret\n")
    with pytest.raises(ValueError) as err:
        read_key_file(str(path))
    assert "line" in str(err.value) and "sk-very-secret" not in str(err.value)


def test_a_reservation_is_settled_to_the_real_usage(tmp_path: Path) -> None:
    t, seen = tenancy(tmp_path, "keys: [{name: a, key: sk-a, tokens_per_minute: 100}]")
    a = t.identify({b"authorization": b"Bearer sk-a"})
    assert a is not None
    assert t.reserve(a, 80, 10.0) == 0.0
    assert t.reserve(a, 30, 10.0) > 0  # 80 + 30 reserved would pass 100
    t.settle(a, "alpha", 80, 12, 8, 10.5)  # it used 20
    assert seen == [("a", "alpha", 12, 8)]
    assert t.reserve(a, 80, 11.0) == 0.0  # 20 + 80
    assert t.reserve(a, 1, 11.0) > 0


def test_the_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_keys(
    tmp_path: Path,
) -> None:
    t, _ = tenancy(tmp_path, "keys: [{name: a, key: sk-a}]")
    path = tmp_path / "tenants.yaml"
    assert not t.check_file()  # unchanged
    path.write_text("keys: [{name: b, key: sk-b}]\n")
    assert t.check_file()
    assert t.identify({b"authorization": b"Bearer sk-a"}) is None
    assert t.identify({b"authorization": b"Bearer sk-b"}) is not None
    path.write_text("keys: [{name: c, key: sk-c\n")
    assert not t.check_file()
    assert t.identify({b"authorization": b"Bearer sk-b"}) is not None


def kubelet_write(mount: Path, generation: int, text: str) -> None:
    """What the kubelet does to a Secret volume: the files go into a fresh timestamped
    directory, `..data` is swapped to it by renaming a new link over it, the old one removed;
    each key is a link `KEY -> ..data/KEY`, made once."""
    fresh = mount / f"..2026_12_04_00_00_0{generation}.000"
    fresh.mkdir()
    (fresh / "tenants.yaml").write_text(text)
    old = (mount / "..data").resolve() if (mount / "..data").exists() else None
    (mount / "..data_tmp").symlink_to(fresh.name)
    (mount / "..data_tmp").rename(mount / "..data")
    if not (mount / "tenants.yaml").is_symlink():
        (mount / "tenants.yaml").symlink_to("..data/tenants.yaml")
    if old is not None:
        (old / "tenants.yaml").unlink()
        old.rmdir()


def test_a_secret_volume_update_by_link_swap_is_seen(tmp_path: Path) -> None:
    mount = tmp_path / "tenants"
    mount.mkdir()
    kubelet_write(mount, 1, "keys: [{name: a, key: sk-a}]\n")
    path = mount / "tenants.yaml"
    t = Tenancy(LimitTable.create(1, slots=64).row(0), (), str(path))
    assert t.identify({b"authorization": b"Bearer sk-a"}) is not None
    before = path.stat()
    # the same size and modification time: only the file behind the link is another one
    kubelet_write(mount, 2, "keys: [{name: b, key: sk-b}]\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert t.check_file()
    assert t.identify({b"authorization": b"Bearer sk-a"}) is None
    assert t.identify({b"authorization": b"Bearer sk-b"}) is not None
    assert not t.check_file()


CHAT = orjson.dumps(
    {
        "id": "x",
        "choices": [{"message": {"content": "hi"}}],
        "usage": {
            "prompt_tokens": 13,
            "total_tokens": 18,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
        "prompt_logprobs": None,
    }
)


def test_usage_is_read_from_openai_and_anthropic_answers() -> None:
    assert read_usage(CHAT) == (13, 5)
    delta = b'event: message_delta\ndata: {"usage":{"input_tokens":7,"output_tokens":3}}\n\n'
    assert read_usage(b"event: message_start\n..." + delta) == (7, 3)
    assert read_usage(b'{"usage":{"output_tokens":3}}') == (None, 3)
    assert read_usage(b'{"usage":null}') is None


def test_usage_is_asked_for_only_where_a_stream_would_not_report_it() -> None:
    body: dict[str, Any] = {"model": "m", "stream": True}
    assert ask_usage("/v1/chat/completions", body) == {
        **body,
        "stream_options": {"include_usage": True},
    }
    mine = {**body, "stream_options": {"include_usage": True}}
    assert ask_usage("/v1/completions", mine) is None
    kept = {**body, "stream_options": {"continuous_usage_stats": False}}
    assert ask_usage("/v1/chat/completions", kept) == {
        **body,
        "stream_options": {"continuous_usage_stats": False, "include_usage": True},
    }
    assert ask_usage("/v1/chat/completions", {"model": "m"}) is None  # not a stream
    assert ask_usage("/v1/messages", body) is None  # reports usage anyway


def _events(n: int) -> list[bytes]:
    out = [b'data: {"id":"c","choices":[{"delta":{"content":"t%d"}}]}\n\n' % i for i in range(n)]
    usage = b'{"prompt_tokens":9,"completion_tokens":%d,"total_tokens":%d}' % (n, n + 9)
    out.append(b'data: {"id":"c","choices":[],"usage":' + usage + b"}\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


@pytest.mark.parametrize("split", [0, 1, 7, 33])
def test_the_usage_event_the_router_asked_for_is_removed_and_charged(
    tmp_path: Path, split: int
) -> None:
    t, seen = tenancy(tmp_path, "keys: [{name: a, key: sk-a}]")
    a = t.identify({b"authorization": b"Bearer sk-a"})
    assert a is not None
    meter = Meter(t, a, "alpha", 0, 4, strip=True)
    stream = b"".join(_events(5))
    pieces = (
        [stream] if not split else [stream[i : i + split] for i in range(0, len(stream), split)]
    )
    relayed = b"".join(meter.feed(p) for p in pieces) + meter.release()
    assert relayed == b"".join(e for e in _events(5) if b'"usage"' not in e)
    meter.settle(200, True)
    meter.settle(200, True)  # once only
    assert seen == [("a", "alpha", 9, 5)]


def test_a_stream_without_usage_is_charged_an_estimate_and_errors_nothing(tmp_path: Path) -> None:
    t, seen = tenancy(tmp_path, "keys: [{name: a, key: sk-a, tokens_per_minute: 50}]")
    a = t.identify({b"authorization": b"Bearer sk-a"})
    assert a is not None
    broken = Meter(t, a, "alpha", 40, 4)
    for event in _events(6)[:4]:  # the client left after four content events
        broken.feed(event)
    broken.settle(200, True)
    assert seen == [("a", "alpha", 4, 3)]  # prompt estimate, one token an event less one
    refused = Meter(t, a, "alpha", 40, 4)
    refused.feed(b'{"error": {"message": "bad"}}')
    refused.settle(400, True)
    assert len(seen) == 1  # nothing used, the reservation given back
    assert t.reserve(a, 43, time.monotonic()) == 0.0  # 7 used of 50
