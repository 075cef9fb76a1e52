"""The simulator's JSON-schema instances (tool arguments, structured output) validate, and are
the same every time."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from vfleet.sim.schema_instance import instance

SCHEMAS: list[tuple[str, Any]] = [
    ("empty", {}),
    ("true", True),
    ("bare object", {"type": "object"}),
    (
        "required only",
        {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "required": ["b"],
            "additionalProperties": False,
        },
    ),
    ("enum", {"enum": ["x", 2, None]}),
    ("const", {"const": {"k": [1, 2]}}),
    ("string bounds", {"type": "string", "minLength": 20, "maxLength": 21}),
    ("short string", {"type": "string", "maxLength": 2}),
    (
        "formats",
        {
            "type": "array",
            "prefixItems": [{"format": f} for f in ("date-time", "email", "uuid", "uri")],
            "items": False,
        },
    ),
    ("integer bounds", {"type": "integer", "exclusiveMinimum": 10, "maximum": 12}),
    ("negative integer", {"type": "integer", "maximum": -5}),
    ("multiple of", {"type": "integer", "minimum": 7, "multipleOf": 5}),
    ("number fraction", {"type": "number", "minimum": 0.3, "maximum": 0.4}),
    ("number exclusive", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
    ("nullable type list", {"type": ["null", "boolean"]}),
    (
        "unique array",
        {"type": "array", "items": {"type": "integer"}, "minItems": 3, "uniqueItems": True},
    ),
    ("empty array allowed", {"type": "array", "maxItems": 0}),
    ("min properties", {"type": "object", "minProperties": 2}),
    (
        "all of",
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]},
                {"properties": {"b": {"const": 3}}, "required": ["b"]},
            ]
        },
    ),
    ("one of", {"oneOf": [{"type": "string", "maxLength": 0}, {"type": "integer"}]}),
    (
        "recursive ref",
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "child": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}
                    },
                    "required": ["child"],
                }
            },
            "$ref": "#/$defs/node",
        },
    ),
    (
        "definitions ref",
        {
            "definitions": {
                "p": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
            },
            "type": "array",
            "items": {"$ref": "#/definitions/p"},
            "minItems": 2,
        },
    ),
]


@pytest.mark.parametrize("schema", [s for _, s in SCHEMAS], ids=[n for n, _ in SCHEMAS])
def test_instance_validates_and_is_deterministic(schema: Any) -> None:
    value = instance(schema)
    jsonschema.validate(value, schema if schema is not True else {})
    assert instance(schema) == value
