"""The one place a test may be skipped: for what the machine lacks, never in CI.

Outside CI a test may skip when the machine cannot run it (no root to drop to
another uid, no systemd-analyze, an optional module not installed). With
CI=true nothing here skips: a mark does nothing (the test runs and fails on the
missing piece) and a missing module is an error at collection, so a green CI
never hides an untested feature. Every skip goes through this module (a test
that calls pytest.skip/importorskip or marks skipif/xfail elsewhere is wrong;
tests/test_requirements_routing.py checks that).

Skips for want of a second uid are loud: the reason says what went untested and
how to run it, and a warning in the run's summary repeats it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import warnings
from types import ModuleType

import pytest

IN_CI = os.environ.get("CI") == "true"


class MissingInCI(RuntimeError):
    """A requirement is missing on a CI machine, where every test must run."""


def unless(available: bool, reason: str) -> pytest.MarkDecorator:
    """Skip with `reason` when `available` is false, except in CI (there the test runs and fails)."""
    return pytest.mark.skipif(not available and not IN_CI, reason=reason)


def needs_root(why: str) -> pytest.MarkDecorator:
    """For tests that need a second uid (root drops a process to 65534): run in CI (root), loud when skipped."""
    available = os.geteuid() == 0
    reason = (f"NOT TESTED: needs root {why} - a second uid is what it checks; run as root "
              f"(CI does, with CI=true, and there it never skips)")
    if not available and not IN_CI:
        warnings.warn(f"tests skipped on this machine: {reason}", UserWarning, stacklevel=2)
    return unless(available, reason)


def needs_tool(name: str) -> pytest.MarkDecorator:
    return unless(shutil.which(name) is not None, f"{name} is not installed (CI installs it and never skips)")


def modules(*names: str, reason: str) -> list[ModuleType]:
    """Import optional modules for a test module (call at its top, before importing what needs them).

    A missing one skips the whole test module outside CI, with `reason` and the missing names;
    in CI it raises MissingInCI, so collection fails."""
    found, missing = [], []
    for name in names:
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    if missing:
        message = f"{reason}; missing: {', '.join(missing)}"
        if IN_CI:
            raise MissingInCI(message)
        pytest.skip(message, allow_module_level=True)
    return found
