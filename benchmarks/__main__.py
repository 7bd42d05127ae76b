"""``python -m benchmarks [--quick] [--out DIR] [--systems A,B] [--redis-url URL]``.

Starts a private redis-server (unless given --redis-url), runs every system's workloads
(runner.py), then writes results.md, results.json and scaling.png into --out and prints the
target lines. Exit status 0 whether targets pass or not (they are reported, not asserted);
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path

from . import compiled, headtohead, job, plot, report, runner
from .progress import Progress
from .redis_server import RedisServer
from .settings import Settings
from .systems import BY_NAME, SYSTEMS
from .workloads import plan

DEFAULT_OUT = Path(__file__).resolve().parent
GROUPS = {s.group for s in SYSTEMS}
PACKAGES = ("fastalloc-shm", "msgpack", "posix_ipc", "psutil", "lmdb", "UltraDict", "shared-memory-dict", "redis",
            "iceoryx2", "matplotlib")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="fewer repetitions and shorter runs (under a minute)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for results.md/.json and scaling.png")
    p.add_argument("--systems", default="",
                   help="comma-separated systems or groups (library, floor, peer, reference); default: all")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of starting a private redis-server")
    args = p.parse_args(argv)
    args.names = select(p, args.systems)
    return args


def select(parser: argparse.ArgumentParser, spec: str) -> list[str]:
    """System names in table order, from names and/or group names."""
    if not spec.strip():
        return [s.name for s in SYSTEMS]
    wanted = {w.strip() for w in spec.split(",") if w.strip()}
    unknown = wanted - GROUPS - {s.name for s in SYSTEMS}
    if unknown:
        names = [s.name for s in SYSTEMS]
        parser.error(f"unknown system(s) {sorted(unknown)}; choose from {names} or {sorted(GROUPS)}")
    return [s.name for s in SYSTEMS if s.name in wanted or s.group in wanted]


def metadata_of_run(settings: Settings, redis: RedisServer | None) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "run_tag": settings.run_tag,
        "versions": versions,
        "git_commit": _git_commit(),
        "redis": {"url": settings.redis_url, "pid": redis.pid if redis else None,
                  "status": "private redis-server" if redis and redis.url else
                            ("--redis-url" if settings.redis_url else (redis.reason if redis else ""))},
    }
    if redis and redis.executable:
        meta["redis"]["server_version"] = _run([redis.executable, "--version"])
    return meta


def _git_commit() -> str | None:
    return _run(["git", "-C", str(DEFAULT_OUT.parent), "rev-parse", "--short", "HEAD"])


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _build_floor() -> str:
    """Build the compiled floor once, before any child needs it; a failure makes floor-c "not measured"."""
    try:
        return f"floor-c: {compiled.build().relative_to(DEFAULT_OUT.parent)}"
    except compiled.BuildError as exc:
        return f"floor-c: not measured: {exc}"


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # so the finally blocks stop redis-server and the children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args.out.mkdir(parents=True, exist_ok=True)
    run_tag = f"bench-{os.getpid()}"
    with (RedisServer() if args.redis_url is None else nullcontext()) as redis:
        redis_url = args.redis_url or (redis.url if redis else None)
        settings = Settings.make(args.quick, run_tag, redis_url)
        total = sum(len(plan(BY_NAME[n], settings)) for n in args.names) + 1 + headtohead.steps(settings, args.names)
        total += job.steps(settings.quick, redis_url) if runner.JOB_SYSTEM in args.names else 0
        progress = Progress(total)
        if redis is not None:
            progress.note(f"redis: private redis-server at {redis.url}" if redis.url else f"redis: {redis.reason}")
        if "floor-c" in args.names:
            progress.note(_build_floor())
        results = runner.run_all(settings, args.names, progress)
        progress.close()
        meta = metadata_of_run(settings, redis)
    targets = report.check_targets(report.Table(results.rows), args.names)
    (args.out / "results.md").write_text(report.markdown(results, settings, meta, targets, args.names))
    (args.out / "results.json").write_text(report.as_json(results, settings, meta, targets))
    plot.scaling_png(results.rows, settings.mp_procs, str(args.out / "scaling.png"),
                     f"fastalloc-shm vs floor and peers ({'quick' if settings.quick else 'full'} run, "
                     f"{os.cpu_count()} CPUs)")
    if args.out.resolve() == DEFAULT_OUT:  # the committed run: its README table follows it
        print(report.update_readme(DEFAULT_OUT.parent / "README.md", report.readme_table(report.Table(results.rows),
                                                                                         args.names)))
    for target in targets:
        print(target.line())
    if results.swept:
        print(f"warning: swept {len(results.swept)} leftover object(s) of this run from /dev/shm", file=sys.stderr)
    print(f"wrote {args.out / 'results.md'}, results.json, scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
