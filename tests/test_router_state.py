"""The policy input types write their own __init__ (router.state says why): every field a
dataclass declares must be set by it, with the declared default, and the types stay frozen,
comparable and hashable like any frozen dataclass."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from vfleet.http.server import Request
from vfleet.router.state import Chain, EndpointState, RouteKey

DISTINCT: dict[type, Any] = {
    str: "x",
    bool: True,
    int: 7,
    float: 0.5,
}


def _value(f: dataclasses.Field[Any], i: int) -> Any:
    """A value for field `f` unlike its default (`i` keeps same-typed fields apart)."""
    if f.name == "session":  # optional types read as `type` in the mypyc build
        return f"s{i}"
    # A string under plain Python (postponed annotations), the type itself in the mypyc build.
    kind = str(f.type).removeprefix("<class '").removesuffix("'>")
    if kind.startswith("tuple"):
        return (i,)
    if "Chain" in kind or f.name == "chain":
        return Chain((i,), i, 16)
    if "dict" in kind:
        return {b"k": b"%d" % i}
    if "bytes" in kind:
        return b"b%d" % i
    for name, typ in (("str", str), ("bool", bool), ("int", int), ("float", float)):
        if kind.startswith(name):
            v = DISTINCT[typ]
            return v if typ is bool else typ(f"{v}{i}") if typ is str else v + i
    raise AssertionError(f"no test value for {f.name}: {kind}")


@pytest.mark.parametrize("cls", [EndpointState, RouteKey, Request])
def test_init_sets_every_field(cls: type) -> None:
    fields = dataclasses.fields(cls)
    required = [f for f in fields if f.default is dataclasses.MISSING]
    given = {f.name: _value(f, i) for i, f in enumerate(required)}
    minimal = cls(**given)
    for f in fields:
        want = given.get(f.name, f.default)
        assert getattr(minimal, f.name) == want, f.name
    every = {f.name: _value(f, i) for i, f in enumerate(fields)}
    full = cls(*every.values())  # positional, in declaration order
    assert {f.name: getattr(full, f.name) for f in fields} == every
    assert cls(**every) == full


@pytest.mark.parametrize("cls", [EndpointState, RouteKey])
def test_still_frozen_and_hashable(cls: type) -> None:
    required = [f for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    a = cls(*(_value(f, i) for i, f in enumerate(required)))
    b = cls(*(_value(f, i) for i, f in enumerate(required)))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(a, required[0].name, "changed")
    assert repr(a).startswith(cls.__name__ + "(")
