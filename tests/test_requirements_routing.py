"""Skips go through tests/requirements.py: skipped outside CI with a reason, a failure in CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SKIPPING = re.compile(r"pytest\.(skip\(|importorskip|mark\.skip|mark\.xfail|xfail\()|\bskipif\b")
# Files that still skip by themselves: none (listed by name, so that no new one slips in).
NOT_YET_ROUTED: dict[str, str] = {}


def test_no_test_skips_except_through_requirements():
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name in ("requirements.py", Path(__file__).name) or path.name in NOT_YET_ROUTED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SKIPPING.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "skip through tests/requirements.py instead:\n" + "\n".join(offenders)


PROBE = '''
from tests import requirements

requirements.modules("fastalloc_no_such_module", reason="needs a module no machine has")

@requirements.needs_tool("fastalloc-no-such-tool")
def test_tool():
    raise AssertionError("ran without its tool")

def test_after():
    pass
'''

TOOL_PROBE = '''
from tests import requirements

@requirements.needs_tool("fastalloc-no-such-tool")
def test_tool():
    raise AssertionError("ran without its tool")
'''


def _pytest(tmp_path: Path, name: str, source: str, ci: bool) -> subprocess.CompletedProcess:
    probe = TESTS / f"_probe_{name}_{tmp_path.name}.py"  # inside tests/ so that `from tests import` works
    probe.write_text(source)
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CI": "true" if ci else "false"}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:randomly",
                               str(probe)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()


def test_a_missing_module_skips_on_a_developer_machine_and_fails_in_ci(tmp_path):
    here = _pytest(tmp_path, "module", PROBE, ci=False)
    assert here.returncode == 5 and "1 skipped" in here.stdout and "needs a module no machine has" in here.stdout, (
        here.stdout[-2000:])  # 5: the module skipped, nothing else collected
    ci = _pytest(tmp_path, "module", PROBE, ci=True)
    assert ci.returncode != 0 and "MissingInCI" in ci.stdout, ci.stdout[-2000:]


def test_a_missing_tool_skips_on_a_developer_machine_and_fails_in_ci(tmp_path):
    here = _pytest(tmp_path, "tool", TOOL_PROBE, ci=False)
    assert here.returncode == 0 and "1 skipped" in here.stdout, here.stdout[-2000:]
    ci = _pytest(tmp_path, "tool", TOOL_PROBE, ci=True)
    assert ci.returncode == 1 and "ran without its tool" in ci.stdout, ci.stdout[-2000:]
