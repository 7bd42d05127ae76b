"""Skips that name what the machine lacks, which CI never accepts.

Outside CI a test may skip when the machine cannot run it (no root to drop to
another uid, no systemd-analyze). With CI=true the mark does nothing: the test
runs and fails on the missing piece, so a green CI never hides an untested feature.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"


def unless(available: bool, reason: str) -> pytest.MarkDecorator:
    """Skip with `reason` when `available` is false, except in CI."""
    return pytest.mark.skipif(not available and not IN_CI, reason=reason)


def needs_root(why: str) -> pytest.MarkDecorator:
    return unless(os.geteuid() == 0, f"needs root {why}")


def needs_tool(name: str) -> pytest.MarkDecorator:
    return unless(shutil.which(name) is not None, f"{name} is not installed")
