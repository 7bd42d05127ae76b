"""Value types for tests/test_typed_pools.py, importable by name in the processes a test starts."""

from __future__ import annotations

import dataclasses
from typing import TypedDict

import msgspec


class Job(msgspec.Struct):
    id: int
    name: str
    tags: list[str] = []


class JobV2(msgspec.Struct):
    id: str
    name: str
    priority: int = 0


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Order(TypedDict):
    sku: str
    qty: int
