"""Typed pools: a `value_type`'s schema as the pool's config records it, and how two schemas differ.

A typed pool records its value_type's schema (msgspec's JSON schema of the type,
compact with sorted keys; its sha256 when longer than MAX_RECORDED) so that an
attacher that names a type can be refused when the pool holds another shape:
a producer and a consumer that disagree would otherwise read each other's
values wrong. Only the schema is recorded, never the type's import path:
attaching never imports anything a segment names.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import ConfigError

# The type of a pool's values: its value_type for a typed pool (`FixedPool[Job]`), else Any. The
# default (PEP 696) makes a plain `FixedPool.create(...)` a FixedPool[Any] under mypy --strict; only
# type checkers read it (they bring typing_extensions), so the package does not depend on it.
if TYPE_CHECKING:
    from typing_extensions import TypeVar

    V = TypeVar("V", default=Any)
else:
    from typing import TypeVar

    V = TypeVar("V")

MAX_RECORDED = 1024  # bytes of schema kept readable in the config record (which has 3.5 KiB in all)
DIGEST_PREFIX = "sha256:"


def schema_of(value_type: Any) -> str:
    """What a typed pool's config records for `value_type`."""
    try:
        schema = msgspec.json.schema(value_type)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"value_type: {value_type!r} is not a type msgspec can decode into ({exc})") from None
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    if len(text) <= MAX_RECORDED:
        return text
    return DIGEST_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def difference(recorded: str | None, wanted: str | None) -> str:
    """How the pool's recorded schema differs from the one asked for, in words (they do differ)."""
    if recorded is None:
        return "it records no value_type (attach it without one, or create a typed pool under another name)"
    if wanted is None:
        return f"it records the value_type {_title(recorded)} (pass that value_type, or attach without one)"
    mine, theirs = _fields(recorded), _fields(wanted)
    if mine is None or theirs is None:
        return f"its value_type is {_title(recorded)}, not {_title(wanted)} (another schema)"
    parts = [f"field {name!r} only in the pool's" for name in mine.keys() - theirs.keys()]
    parts += [f"field {name!r} only in value_type's" for name in theirs.keys() - mine.keys()]
    parts += [f"field {name!r} is {mine[name]} in the pool, {theirs[name]} in value_type"
              for name in mine.keys() & theirs.keys() if mine[name] != theirs[name]]
    if not parts:
        return f"its value_type is {_title(recorded)}, not {_title(wanted)} (another schema)"
    return f"its value_type {_title(recorded)} differs: " + "; ".join(sorted(parts))


def _resolved(text: str) -> dict | None:
    """The schema's top object, its $ref followed; None for a digest."""
    if text.startswith(DIGEST_PREFIX):
        return None
    schema = json.loads(text)
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return schema.get("$defs", {}).get(ref.removeprefix("#/$defs/"), schema)
    return schema


def _fields(text: str) -> dict[str, str] | None:
    top = _resolved(text)
    if top is None or "properties" not in top:
        return None
    return {name: _type_words(spec) for name, spec in top["properties"].items()}


def _type_words(spec: dict) -> str:
    if "$ref" in spec:
        return spec["$ref"].rsplit("/", 1)[-1]
    if "type" in spec:
        return str(spec["type"])
    return json.dumps(spec, sort_keys=True)


def _title(text: str) -> str:
    top = _resolved(text)
    if top is None:
        return f"of schema {text[:len(DIGEST_PREFIX) + 12]}…"
    return str(top.get("title") or top.get("type") or "(untitled)")
