"""Callables recorded by import path, so that other processes can use them.

A pool's initializer, reset pair and custom growth function are given as
functions or as `"module:qualname"` strings. A function is recorded by its
import path when that path leads back to the same object; a lambda or a local
function is usable in its own process only, and another process that needs it
gets a ConfigError saying so.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .errors import ConfigError


def import_path(fn: Callable[..., Any] | str) -> str | None:
    """The `"module:qualname"` of `fn`, or None when it cannot be imported back."""
    if isinstance(fn, str):
        return fn
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    path = f"{module}:{qualname}"
    try:
        return path if resolve(path, "callable") is fn else None
    except ConfigError:
        return None


def resolve(path: str, field: str) -> Callable[..., Any]:
    """Import the callable named by `"module:qualname"`."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ConfigError(f"{field}: {path!r} is not of the form 'module:qualname'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{field}: cannot import {path!r} ({exc}); make it importable in every process") from exc
    if not callable(obj):
        raise ConfigError(f"{field}: {path!r} is not callable")
    return obj


def as_callable(fn: Callable[..., Any] | str, field: str) -> Callable[..., Any]:
    """A callable for `fn`, importing it when given as a string."""
    if isinstance(fn, str):
        return resolve(fn, field)
    if not callable(fn):
        raise ConfigError(f"{field}: {fn!r} is not callable")
    return fn
