"""A deterministic, small JSON value that validates against a JSON schema.

The simulator stands in for a model whose output vLLM constrains with a grammar (tool arguments,
`response_format: json_schema`): whatever the grammar allows, clients only rely on the output
validating. `instance(schema)` builds such a value from the schema alone: required properties
only, the first enum or const value, numbers inside their bounds, strings of an allowed length,
arrays of at least one item. The same schema always gives the same value. Pure; no I/O.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 24  # schemas that recurse through $ref stop here with the smallest value allowed
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "uri": "https://example.com/",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "duration": "P1D",
}
_WORDS = ("sample", "value", "text", "item", "entry", "data", "field", "token")


def instance(schema: Any) -> Any:
    """A value valid under `schema` (a JSON schema as decoded JSON; `True`/`{}` allow anything)."""
    return _Builder(schema if isinstance(schema, dict) else {}).build(schema, 0, 0)


class _Builder:
    __slots__ = ("root",)

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def resolve(self, ref: str) -> Any:
        """A local `$ref` (`#/$defs/Name`, `#/definitions/Name`, `#`); others allow anything."""
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node

    def build(self, schema: Any, depth: int, salt: int) -> Any:
        if schema is True or not isinstance(schema, dict):
            return _any(salt)
        if "$ref" in schema and isinstance(schema["$ref"], str):
            if depth >= MAX_DEPTH:
                return None
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            target = self.resolve(schema["$ref"])
            merged = _merge(target, rest) if isinstance(target, dict) else rest
            return self.build(merged, depth + 1, salt)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[salt % len(enum)]
        for key in ("allOf",):
            parts = schema.get(key)
            if isinstance(parts, list) and parts:
                merged = {k: v for k, v in schema.items() if k != key}
                for part in parts:
                    if isinstance(part, dict):
                        if "$ref" in part and isinstance(part["$ref"], str):
                            target = self.resolve(part["$ref"])
                            merged = _merge(merged, target if isinstance(target, dict) else {})
                        else:
                            merged = _merge(merged, part)
                return self.build(merged, depth + 1, salt)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != key}
                # Prefer an option that is not `null` (a value says more than an absent one),
                # unless the schema recurses: deep down, the least nested option ends it.
                if depth >= 8:
                    pick = next((o for o in options if _is_null(o)), options[-1])
                else:
                    pick = next((o for o in options if not _is_null(o)), options[0])
                merged = _merge(rest, pick) if isinstance(pick, dict) else pick
                return self.build(merged, depth + 1, salt)
        kind = _type(schema)
        if kind == "object":
            return self.build_object(schema, depth, salt)
        if kind == "array":
            return self.build_array(schema, depth, salt)
        if kind == "string":
            return _string(schema, salt)
        if kind == "integer":
            return _integer(schema, salt)
        if kind == "number":
            return _number(schema, salt)
        if kind == "boolean":
            return salt % 2 == 0
        if kind == "null":
            return None
        return _any(salt)

    def build_object(self, schema: dict[str, Any], depth: int, salt: int) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = [r for r in schema.get("required") or () if isinstance(r, str)]
        names = list(dict.fromkeys(required))
        want = schema.get("minProperties")
        if isinstance(want, int):
            for name in props:
                if len(names) >= want:
                    break
                if name not in names:
                    names.append(name)
        out: dict[str, Any] = {}
        if depth >= MAX_DEPTH:
            return out
        extra = schema.get("additionalProperties", True)
        for i, name in enumerate(names):
            sub = props.get(name, extra if isinstance(extra, dict) else {})
            out[name] = self.build(sub, depth + 1, salt + i)
        if isinstance(want, int):
            i = 0
            while len(out) < want and i < 64:
                key = f"key{i}"
                if key not in out:
                    out[key] = self.build(extra if isinstance(extra, dict) else {}, depth + 1, i)
                i += 1
        return out

    def build_array(self, schema: dict[str, Any], depth: int, salt: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        lo = schema.get("minItems")
        hi = schema.get("maxItems")
        count = max(lo if isinstance(lo, int) else 0, 1, len(prefix))
        if isinstance(hi, int):
            count = min(count, hi)
        if depth >= MAX_DEPTH:
            count = min(count, lo if isinstance(lo, int) else 0)
        out = []
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            # A different salt per item keeps items distinct for `uniqueItems`.
            out.append(self.build(sub, depth + 1, salt + i))
        return out


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if k == "properties" and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        elif k == "required" and isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = [*out[k], *v]
        else:
            out[k] = v
    return out


def _type(schema: dict[str, Any]) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), t[0] if t else None)
    if isinstance(t, str):
        return t
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if any(k in schema for k in ("minLength", "maxLength", "pattern", "format")):
        return "string"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return None


def _any(salt: int) -> Any:
    return _WORDS[salt % len(_WORDS)]


def _string(schema: dict[str, Any], salt: int) -> str:
    fmt = schema.get("format")
    base = _FORMATS.get(fmt, "") if isinstance(fmt, str) else ""
    if not base:
        base = _WORDS[salt % len(_WORDS)] + (
            str(salt // len(_WORDS)) if salt >= len(_WORDS) else ""
        )
    lo = schema.get("minLength")
    hi = schema.get("maxLength")
    if isinstance(lo, int) and len(base) < lo:
        base = (base + "x" * lo)[:lo]
    if isinstance(hi, int) and len(base) > hi:
        base = base[: max(hi, 0)]
    return base


def _bounds(schema: dict[str, Any], step: float) -> tuple[float, float]:
    lo, hi = -math.inf, math.inf
    if isinstance(schema.get("minimum"), (int, float)):
        lo = float(schema["minimum"])
    if isinstance(schema.get("maximum"), (int, float)):
        hi = float(schema["maximum"])
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(ex_lo, bool):  # draft 4: a flag on `minimum`
        lo = lo + step if ex_lo else lo
    elif isinstance(ex_lo, (int, float)):
        lo = max(lo, float(ex_lo) + step)
    if isinstance(ex_hi, bool):
        hi = hi - step if ex_hi else hi
    elif isinstance(ex_hi, (int, float)):
        hi = min(hi, float(ex_hi) - step)
    return lo, hi


def _integer(schema: dict[str, Any], salt: int) -> int:
    lo, hi = _bounds(schema, 1.0)
    value = float(salt)
    if value < lo:
        value = math.ceil(lo)
    if value > hi:
        value = math.floor(hi)
    mult = schema.get("multipleOf")
    if isinstance(mult, int) and mult > 0:
        value = math.ceil(value / mult) * mult
        if value > hi:
            value -= mult
    return int(value)


def _number(schema: dict[str, Any], salt: int) -> float | int:
    mult = schema.get("multipleOf")
    lo, hi = _bounds(schema, mult if isinstance(mult, (int, float)) and mult > 0 else 0.5)
    value = float(salt)
    if value < lo:
        value = lo
    if value > hi:
        value = hi
    if isinstance(mult, (int, float)) and mult > 0:
        value = math.ceil(value / mult) * mult
        if value > hi:
            value -= mult
    return int(value) if value.is_integer() else value
