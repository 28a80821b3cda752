"""Varied valid documents for the grammar tests and bench/grammar.py: JSON of every shape, and
instances of three JSON schemas, written in several whitespace styles. Deterministic (seeded)."""
from __future__ import annotations

import json
import random

WORDS = ["alpha", "Zürich", "naïve café", "東京", "emoji 🎉 ok", "tab\there", "line\nbreak", 'say "hi"', "back\\slash",
         "slash/ok", "", " ", "x" * 40, "ünïcödé", "Ελληνικά", "русский текст", "a,b:c{d}[e]", "null", "123", "\u00e9\u0301"]


def _string(r: random.Random) -> str:
    if r.random() < 0.6:
        return r.choice(WORDS)
    return "".join(r.choice("abcdefghij XYZ0123-_.,:;!?'\"\\/{}[]éß中") for _ in range(r.randint(0, 24)))


def _number(r: random.Random) -> float | int:
    k = r.random()
    if k < 0.4:
        return r.randint(-10**r.randint(1, 9), 10**r.randint(1, 9))
    if k < 0.8:
        return round(r.uniform(-1e4, 1e4), r.randint(0, 6))
    return r.choice([0, -0.0, 1e-7, 6.02e23, -3.5e-12, 1.5, 0.1])


def _value(r: random.Random, depth: int) -> object:
    k = r.random()
    if depth > 0 and k < 0.25:
        return {_string(r): _value(r, depth - 1) for _ in range(r.randint(0, 4))}
    if depth > 0 and k < 0.45:
        return [_value(r, depth - 1) for _ in range(r.randint(0, 5))]
    if k < 0.7:
        return _string(r)
    if k < 0.9:
        return _number(r)
    return r.choice([True, False, None])


STYLES = [
    dict(),
    dict(separators=(",", ":")),
    dict(indent=2),
    dict(indent=4, ensure_ascii=False),
    dict(ensure_ascii=False),
    dict(indent="\t", separators=(",", ": ")),
]


def dump(value: object, r: random.Random) -> str:
    text = json.dumps(value, **r.choice(STYLES))
    return text


def json_documents(n: int = 200, seed: int = 0) -> list[str]:
    """`n` JSON documents, objects or arrays at the top (what the JSON grammar allows)."""
    r = random.Random(seed)
    out = []
    while len(out) < n:
        v = _value(r, r.randint(1, 4))
        if isinstance(v, (dict, list)):
            out.append(dump(v, r))
    return out


# -- three schemas and instances of them (properties in schema order, as XGrammar requires) -------
SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "email": {"type": "string", "pattern": "^[a-z0-9.]+@[a-z]+\\.[a-z]{2,3}$"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            "active": {"type": "boolean"},
        },
        "required": ["name", "age"],
    },
    "order": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "status": {"enum": ["pending", "shipped", "delivered"]},
            "items": {
                "type": "array", "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "number"}},
                    "required": ["sku", "qty", "price"],
                },
            },
            "note": {"type": ["string", "null"]},
        },
        "required": ["id", "status", "items"],
    },
    "call": {
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer"},
                },
                "required": ["city"],
            },
        },
        "required": ["name", "arguments"],
    },
}


def _person(r: random.Random) -> dict:
    d: dict = {"name": _string(r), "age": r.randint(-5, 120)}
    if r.random() < 0.5:
        d["email"] = "".join(r.choice("abc.9") for _ in range(r.randint(1, 8))) + "@" + r.choice(["ex", "mail"]) + "." + r.choice(["com", "io", "de"])
    if r.random() < 0.6:
        d["tags"] = [_string(r) for _ in range(r.randint(0, 4))]
    if r.random() < 0.5:
        d["active"] = r.random() < 0.5
    return d


def _order(r: random.Random) -> dict:
    d: dict = {"id": r.randint(0, 10**9), "status": r.choice(["pending", "shipped", "delivered"]),
               "items": [{"sku": _string(r), "qty": r.randint(1, 99), "price": _number(r)} for _ in range(r.randint(1, 3))]}
    if r.random() < 0.6:
        d["note"] = r.choice([None, _string(r)])
    return d


def _call(r: random.Random) -> dict:
    args: dict = {"city": _string(r)}
    if r.random() < 0.5:
        args["unit"] = r.choice(["celsius", "fahrenheit"])
    if r.random() < 0.5:
        args["days"] = r.randint(1, 14)
    return {"name": "get_weather", "arguments": args}


_MAKERS = {"person": _person, "order": _order, "call": _call}


def schema_documents(name: str, n: int = 200, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    return [dump(_MAKERS[name](r), r) for _ in range(n)]
