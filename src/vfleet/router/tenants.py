"""Tenancy at the router's edge: who a request's key belongs to, which models it may use, and its
request and token budgets, shared by every worker (router.sharedlimits).

Keys come from the plain key list (`--api-key-file`, VFLEET_API_KEYS: unnamed, called `key-N`,
every model, the default limits) and from a tenants file (`--tenants-file`), YAML or JSON:

    replicas: 1                  # router replicas sharing these limits (see below)
    defaults:                    # for keys that set none (else --rate-limit and --token-limit)
      requests_per_minute: 600
    keys:
      - name: team-a             # in metrics and logs; never the secret
        key: sk-...              # or key_sha256: <hex of sha256(key)>, so the file holds no secret
        models: [llama, qwen]    # optional allowlist (served names or aliases); absent: all
        requests_per_minute: 60  # absent: the default; 0: none for this key
        tokens_per_minute: 20000 # prompt + completion tokens, charged from the engines' usage
        tokens_per_day: 1000000  # a rolling 24 hours

`replicas`: without peers, each of that many router replicas enforces limit/replicas alone. With
peers (`--peer`, `--k8s-peer-selector`), the replicas tell each other their keys' usage every
second (router.peerpoll), and each enforces the whole limit against everyone's usage; a peer that
stops answering is assumed to use its share, so with none answering each replica is back to
limit/R, R being the larger of `replicas` and the number of routers listed (router.peerlimits).

The file is re-read when it changes (its stat, checked every FILE_CHECK_S); a file that does not
parse keeps the keys in force and logs why, naming lines, never their content (a YAML error's
excerpt could be a secret). Keys are held as SHA-256 digests only, and a request's key is found by
its digest in a dict: the lookup time does not depend on how much of any key matched.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from vfleet.router import auth, filestamp, peerlimits
from vfleet.router.peerlimits import Usage, WindowUsage, scaled, trimmed
from vfleet.router.ratelimit import (
    Window,
    requests_window,
    tokens_per_day,
    tokens_per_minute,
)
from vfleet.router.sharedlimits import (
    MAX_KEYS,
    REQUESTS,
    TOKENS_DAY,
    TOKENS_MINUTE,
    LimitRow,
    assign,
    tag_of,
)

log = logging.getLogger("vfleet.router.tenants")

FILE_CHECK_S: Final = 0.5
ANONYMOUS: Final = "anonymous"  # the one identity when no key is configured at all
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PLAIN_NAME: Final = re.compile(r"key-\d+")
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
_LIMITS: Final = ("requests_per_minute", "tokens_per_minute", "tokens_per_day")
_KEY_FIELDS: Final = frozenset({"name", "key", "key_sha256", "models", *_LIMITS})

# (key name, model, prompt tokens, completion tokens): what a settled request used.
Recorder = Callable[[str, str, int, int], None]
# (key name, model or "-", HTTP status the client got): one request of a key, counted.
Counter = Callable[[str, str, int], None]
NO_MODEL: Final = "-"  # the model label of a request refused before its body was read


@dataclass(frozen=True, slots=True)
class Tenant:
    """One key's identity and limits (`None`: no such limit)."""

    name: str
    models: frozenset[str] | None = None  # the allowlist; None: every model
    requests: Window | None = None
    tokens_minute: Window | None = None
    tokens_day: Window | None = None
    slot: int = 0
    tag: int = 0

    @property
    def metered(self) -> bool:
        """Whether its requests' token usage is charged against a budget."""
        return self.tokens_minute is not None or self.tokens_day is not None

    def windows(self) -> tuple[tuple[str, int, Window], ...]:
        """(wire name, region, window) of each limit it has."""
        out = []
        for name, region, window in (
            (peerlimits.REQUESTS, REQUESTS, self.requests),
            (peerlimits.TOKENS_MINUTE, TOKENS_MINUTE, self.tokens_minute),
            (peerlimits.TOKENS_DAY, TOKENS_DAY, self.tokens_day),
        ):
            if window is not None:
                out.append((name, region, window))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Defaults:
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    tokens_per_day: float = 0.0


@dataclass(frozen=True, slots=True)
class KeyEntry:
    name: str
    digest: bytes
    models: frozenset[str] | None
    limits: dict[str, float]  # only those the entry sets


@dataclass(frozen=True, slots=True)
class KeyFile:
    entries: tuple[KeyEntry, ...]
    replicas: int = 1
    defaults: dict[str, float] = field(default_factory=dict)


def digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def parse_key_file(raw: object, source: str) -> KeyFile:
    """A tenants file's content, checked (ValueError naming the entry and field, never a key)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping with `keys`")
    unknown = sorted(set(raw) - {"keys", "replicas", "defaults"})
    if unknown:
        raise ValueError(f"{source}: unknown fields {', '.join(map(str, unknown))}")
    replicas = raw.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise ValueError(f"{source}: replicas must be an integer >= 1")
    defaults = _limits(raw.get("defaults") or {}, f"{source}: defaults", strict=True)
    items = raw.get("keys")
    if not isinstance(items, list) or not items:
        raise ValueError(f"{source}: `keys` must be a non-empty list")
    if len(items) > MAX_KEYS:
        raise ValueError(f"{source}: {len(items)} keys; at most {MAX_KEYS}")
    entries: list[KeyEntry] = []
    names: set[str] = set()
    owners: dict[bytes, str] = {}
    for i, item in enumerate(items):
        where = f"{source}: keys[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a mapping")
        bad = sorted(set(map(str, item)) - _KEY_FIELDS)
        if bad:
            raise ValueError(f"{where}: unknown fields {', '.join(bad)}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{where}: name must be 1-64 of A-Z a-z 0-9 . _ - (first not . _ -)")
        if _PLAIN_NAME.fullmatch(name) or name == ANONYMOUS:
            raise ValueError(f"{where}: the name {name!r} is reserved")
        if name in names:
            raise ValueError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        d = _entry_digest(item, f"{where} ({name})")
        if d in owners:
            raise ValueError(f"{where}: {name!r} has the same key as {owners[d]!r}")
        owners[d] = name
        models = item.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
        ):
            raise ValueError(f"{where} ({name}): models must be a list of model names")
        allow = frozenset(models) if models is not None else None
        limits = _limits(item, f"{where} ({name})")
        entries.append(KeyEntry(name, d, allow, limits))
    return KeyFile(tuple(entries), replicas, defaults)


def _entry_digest(item: Mapping[str, Any], where: str) -> bytes:
    key, hashed = item.get("key"), item.get("key_sha256")
    if (key is None) == (hashed is None):
        raise ValueError(f"{where}: give exactly one of key, key_sha256")
    if key is not None:
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            raise ValueError(f"{where}: key must be a non-empty string without spaces around")
        return digest(key.encode())
    if not isinstance(hashed, str) or not _HEX64.fullmatch(hashed):
        raise ValueError(f"{where}: key_sha256 must be 64 hex digits")
    return bytes.fromhex(hashed)


def _limits(raw: object, where: str, strict: bool = False) -> dict[str, float]:
    """The limits a mapping sets; `strict`: nothing else may be in it."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping")
    if strict and set(raw) - set(_LIMITS):
        raise ValueError(
            f"{where}: unknown fields {', '.join(sorted(map(str, set(raw) - set(_LIMITS))))}"
        )
    out: dict[str, float] = {}
    for name in set(_LIMITS) & set(raw):
        value = raw[name]
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or value < 0
            or not math.isfinite(value)
        ):
            raise ValueError(f"{where}: {name} must be a number >= 0")
        out[name] = float(value)
    return out


def read_key_file(path: str) -> KeyFile:
    """Read and check a tenants file; ValueError says what is wrong without quoting it."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not YAML or JSON"
        raise ValueError(f"{path}: invalid YAML/JSON{line}: {problem}") from None
    return parse_key_file(raw, path)


def _window(limit: float, make: Callable[[float], Window], replicas: int) -> Window | None:
    return make(limit).per(replicas) if limit > 0 else None


def build_tenants(
    plain: tuple[bytes, ...],
    file: KeyFile | None,
    defaults: Defaults,
    slots: int,
    peered: bool = False,
) -> tuple[dict[bytes, Tenant], Tenant | None]:
    """(digest -> tenant for every key; the anonymous tenant when there is no key at all);
    `slots`: the limit table's, which the keys' slots index; `peered`: the replicas share
    usage, so each window holds the whole limit (scaled down at decision time when peers are
    missing) instead of limit/replicas."""
    merged = {
        "requests_per_minute": defaults.requests_per_minute,
        "tokens_per_minute": defaults.tokens_per_minute,
        "tokens_per_day": defaults.tokens_per_day,
    }
    replicas = 1
    rows: list[tuple[str, bytes, frozenset[str] | None, dict[str, float]]] = []
    if file is not None:
        merged.update(file.defaults)
        replicas = 1 if peered else file.replicas
        rows += [(e.name, e.digest, e.models, e.limits) for e in file.entries]
    for i, key in enumerate(plain):
        rows.append((f"key-{i}", digest(key), None, {}))
    names = [r[0] for r in rows] or [ANONYMOUS]
    slot_of = assign(names, slots)

    def tenant(name: str, models: frozenset[str] | None, own: dict[str, float]) -> Tenant:
        lim = {**merged, **own}
        return Tenant(
            name,
            models,
            _window(lim["requests_per_minute"], requests_window, replicas),
            _window(lim["tokens_per_minute"], tokens_per_minute, replicas),
            _window(lim["tokens_per_day"], tokens_per_day, replicas),
            slot_of[name],
            tag_of(name),
        )

    by_digest: dict[bytes, Tenant] = {}
    for name, d, models, own in rows:
        # A key both plain and in the file is the file's: its allowlist and limits hold.
        by_digest.setdefault(d, tenant(name, models, own))
    anonymous = None if rows else tenant(ANONYMOUS, None, {})
    return by_digest, anonymous


class Tenancy:
    """Identify, admit, charge: the router's per-key state, over this worker's limit row."""

    def __init__(
        self,
        row: LimitRow,
        plain: tuple[bytes, ...] = (),
        path: str | None = None,
        defaults: Defaults = Defaults(),
        record: Recorder | None = None,
        count: Counter | None = None,
        peered: bool = False,
    ) -> None:
        self.row = row
        self.table = row.table
        # With peers, limits are scaled by the share of replicas whose usage is known (the
        # table's header, written by the polling worker), one Window per limit and share.
        self.peered = peered and row.table.peers
        self.replicas = 1  # the tenants file's `replicas`
        self._share = (0, 0)
        self._scaled: dict[Window, Window] = {}
        self.plain = plain
        self.path = path
        self.defaults = defaults
        self.record = record
        self.count = count
        self.keyed = bool(plain) or path is not None
        self.stamp: tuple[int, int, int] | None = None
        file = None
        if path is not None:
            self.stamp = filestamp.stamp(path)
            file = read_key_file(path)  # at start a bad file is an error, not a warning
            self.replicas = file.replicas
        self.by_digest, self.anonymous = build_tenants(
            plain, file, defaults, row.table.slots, self.peered
        )

    # -- who -------------------------------------------------------------------------------

    def identify(self, headers: Mapping[bytes, bytes]) -> Tenant | None:
        """The tenant whose key the request carries (`Authorization: Bearer`, else
        `x-api-key`); the anonymous one with no keys configured; None: no valid key."""
        if self.anonymous is not None:
            return self.anonymous
        for token in auth.request_tokens(headers):
            found = self.by_digest.get(digest(token))
            if found is not None:
                return found
        return None

    # -- budgets ---------------------------------------------------------------------------

    def admit(self, tenant: Tenant, now: float) -> float:
        """Charge one request: 0.0 when it may go, else the seconds to wait (not charged)."""
        window = tenant.requests
        if window is None:
            return 0.0
        row = self.row
        limit = self._limit(window) if self.peered else window
        wait = row.wait(tenant.slot, tenant.tag, REQUESTS, limit, now, 1)
        if wait == 0.0:
            row.add(tenant.slot, tenant.tag, REQUESTS, window, now, 1)
        return wait

    def reserve(self, tenant: Tenant, cost: int, now: float) -> float:
        """Reserve a request's estimated tokens in its token windows: 0.0 when they fit (then
        charged, to be settled from the real usage), else the seconds until they would."""
        row = self.row
        wait = 0.0
        for region, window in (
            (TOKENS_MINUTE, tenant.tokens_minute),
            (TOKENS_DAY, tenant.tokens_day),
        ):
            if window is not None:
                limit = self._limit(window) if self.peered else window
                wait = max(wait, row.wait(tenant.slot, tenant.tag, region, limit, now, cost))
        if wait == 0.0:
            self._charge(tenant, cost, now)
        return wait

    def settle(
        self,
        tenant: Tenant,
        model: str,
        reserved: int,
        prompt: int,
        completion: int,
        now: float,
        code: int = 0,
    ) -> None:
        """A request is over: its reservation becomes what it used (the engine's usage), and
        it is counted with the status the client got (`code`; 0: not counted)."""
        used = prompt + completion
        if used != reserved and tenant.metered:
            self._charge(tenant, used - reserved, now)
        if self.record is not None and used:
            self.record(tenant.name, model, prompt, completion)
        if self.count is not None and code:
            self.count(tenant.name, model, code)

    def share(self) -> tuple[int, int]:
        """(replicas whose usage this router counts, replicas sharing each limit)."""
        if not self.peered:
            return 1, 1  # each window already holds limit/replicas
        known, expected = self.table.share()
        if expected == 0:  # the peers not polled yet: this replica's share alone
            return 1, self.replicas
        return known, expected

    def _limit(self, window: Window) -> Window:
        """`window` with the limit this replica enforces now against the usage it knows of."""
        share = self.table.share()
        if share != self._share:
            self._share = share
            self._scaled.clear()
        # (0, 0): the peers not polled yet (as in `share`)
        known, expected = share if share[1] else (1, self.replicas)
        if known >= expected:
            return window
        got = self._scaled.get(window)
        if got is None:
            got = self._scaled[window] = scaled(window, known, expected)
        return got

    # -- what the peers are told -----------------------------------------------------------

    def tenants(self) -> dict[str, Tenant]:
        """Every tenant in force, by name."""
        out = {t.name: t for t in self.by_digest.values()}
        if self.anonymous is not None:
            out[self.anonymous.name] = self.anonymous
        return out

    def usage(self, now: float) -> Usage:
        """This router's own usage (all workers, no peer's) of every key that has any."""
        table = self.table
        out: Usage = {}
        for name, tenant in self.tenants().items():
            for wname, region, window in tenant.windows():
                ages = trimmed(table.local_ages(tenant.slot, tenant.tag, region, window, now))
                if ages:
                    out.setdefault(name, {})[wname] = WindowUsage(window.width_us, ages)
        return out

    def refused(self, tenant: Tenant, model: str, code: int) -> None:
        """Count a request of `tenant` the router refused before it had a meter (a limit, a
        model off its allowlist); `model`: a served model, or NO_MODEL (never a name the client
        made up: the label set stays bounded by the models and the keys)."""
        if self.count is not None:
            self.count(tenant.name, model, code)

    def _charge(self, tenant: Tenant, n: int, now: float) -> None:
        row = self.row
        if tenant.tokens_minute is not None:
            row.add(tenant.slot, tenant.tag, TOKENS_MINUTE, tenant.tokens_minute, now, n)
        if tenant.tokens_day is not None:
            row.add(tenant.slot, tenant.tag, TOKENS_DAY, tenant.tokens_day, now, n)

    # -- the file --------------------------------------------------------------------------

    def check_file(self) -> bool:
        """Re-read the tenants file if it changed; whether the keys were replaced."""
        path = self.path
        if path is None:
            return False
        try:
            stamp = filestamp.stamp(path)
        except OSError as exc:
            if self.stamp is not None:
                log.warning("tenants file %s: %s; the keys in force stay", path, exc.strerror)
                self.stamp = None
            return False
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        try:
            file = read_key_file(path)
        except ValueError as exc:
            # Often a write caught half way: the rest of it changes the stat again.
            log.warning("%s; the keys in force stay", exc)
            return False
        self.replicas = file.replicas
        self._scaled.clear()  # windows of the previous file
        self.by_digest, self.anonymous = build_tenants(
            self.plain, file, self.defaults, self.row.table.slots, self.peered
        )
        log.info("tenants file %s: %d keys in force", path, len(self.by_digest))
        return True

    async def watch(self, every_s: float = FILE_CHECK_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.check_file()
