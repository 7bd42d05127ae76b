"""Mutation testing (`make mutants`): does the suite notice when a promised mechanism is broken?

    python tools/mutants.py c [--ref HEAD] [--only ID ...] [--no-control]   # (a) the C core's list
    python tools/mutants.py mutmut [MODULE ...]                             # (b) mutmut on the deciding modules
    python tools/mutants.py list                                            # the list, patterns checked

(a) The mutants are listed in tools/mutants.toml: a file, a pattern that must occur there exactly
once, its replacement, and the promise it breaks; plus one mutant per fault point of the core's
FAULT_POINTS table (that point never fires). A pattern that does not match exactly once stops the
run before anything is built: the list is broken, which is never a pass. Each mutant is applied to
a copy of the package and its tests in build/mutants/<id> (as `make test-asan` copies them), the
core is rebuilt there (tools/build_core.py --out) and the suite runs from there (-x, the files
most likely to fail first). A mutant is killed (a test failed: named), survived (the whole suite
passed) or broken (it did not build). The table goes to build/mutants/results.md; the exit status
is 1 unless every mutant was killed.

(b) mutmut (the `mutants` extra) on each module of [mutmut] in tools/mutants.toml, one at a time,
each in its own copy (build/mutmut/<module>) with the tests that exercise that module; scores go
to build/mutmut/scores.md. Survivors are killed in tests/test_mutant_kills.py or explained in
tests/MUTANTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tools" / "mutants.toml"
# What the suite reads: the package, its tests, and what they import or check (benchmarks, clients, deploy, README).
COPIED = ["fastalloc_shm", "tests", "tools", "benchmarks", "clients", "daemon", "deploy", "pyproject.toml", "setup.py",
          "README.md", "MANIFEST.in"]
FAULT_TABLE = re.compile(r'X\((F_[A-Z_]+), "([a-z.]+)"\)')


@dataclass
class Mutant:
    id: str
    file: str
    pattern: str
    replacement: str
    promise: str
    kind: str = "c"


def load(source: Path) -> tuple[list[Mutant], dict]:
    """The mutants of tools/mutants.toml, and one per fault point found in `source`'s fault.c."""
    data = tomllib.loads(DATA.read_text())
    mutants = [Mutant(**m) for m in data["mutant"]]
    fault = data["fault"]
    table = (source / fault["file"]).read_text()
    points = FAULT_TABLE.findall(table)
    if not points:
        raise SystemExit(f"mutants: no fault points found in {fault['file']} (has FAULT_POINTS changed shape?)")
    for enum, name in points:
        mutants.append(Mutant(id=f"fault-{name}", file=fault["file"], pattern=fault["pattern"],
                              replacement=fault["replacement"].replace("{enum}", enum),
                              promise=f"the crash matrix notices when fault point {name} never fires"))
    ids = [m.id for m in mutants]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"mutants: duplicate ids in {DATA}")
    return mutants, data


def check_patterns(mutants: list[Mutant], source: Path) -> list[str]:
    """Every pattern must occur exactly once: a list of what is wrong (empty: all good)."""
    wrong = []
    for m in mutants:
        path = source / m.file
        if not path.exists():
            wrong.append(f"{m.id}: {m.file} does not exist")
            continue
        n = path.read_text().count(m.pattern)
        if n != 1:
            wrong.append(f"{m.id}: its pattern occurs {n} times in {m.file} (must be exactly once): {m.pattern!r}")
    return wrong


def snapshot(dest: Path, ref: str | None) -> None:
    """The package, tests and tools into `dest`: from the work tree, or from commit `ref`."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if ref:
        tracked = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", ref], check=True, capture_output=True,
                                 text=True).stdout.split()
        names = [n for n in COPIED if n in tracked]
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, *names], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        for name in COPIED:
            src = ROOT / name
            if not src.exists():
                continue
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
            else:
                shutil.copy2(src, dest / name)
    for so in (dest / "fastalloc_shm").glob("_core*.so"):
        so.unlink()
    # The daemon's import name is fastalloc_shmd (daemon/ in the repo, an editable install's mapping):
    # under that name in the copy, so its tests run the copy's daemon, not the work tree's.
    (dest / "fastalloc_shmd").symlink_to("daemon")


def build_core(tree: Path, log: Path) -> bool:
    with log.open("w") as out:
        rc = subprocess.call([sys.executable, str(tree / "tools" / "build_core.py"), "--out", str(tree / "fastalloc_shm")],
                             stdout=out, stderr=subprocess.STDOUT)
    return rc == 0


def test_files(tree: Path, first: list[str]) -> list[str]:
    """The suite's files, the most sensitive first (each once)."""
    rest = sorted(str(p.relative_to(tree)) for p in (tree / "tests").glob("test_*.py"))
    head = [f for f in first if (tree / f).exists()]
    return head + [f for f in rest if f not in head]


def run_suite(tree: Path, files: list[str], timeout: float, log: Path,
              deselect: list[str] = ()) -> tuple[int | None, list[str], float]:
    """(pytest's exit code or None on timeout, the failed tests, seconds)."""
    env = dict(os.environ, FASTALLOC_EXPECT_CORE=str(tree / "fastalloc_shm"), PYTHONPATH=str(tree))
    env.pop("FASTALLOC_FAULT", None)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               *[f"--deselect={d}" for d in deselect], *files]
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", log.read_text(errors="replace"), re.M)
    return rc, failed, time.monotonic() - started


def run_c(args: argparse.Namespace) -> int:
    work = ROOT / "build" / "mutants"
    base = work / "_source"
    started = time.monotonic()
    snapshot(base, args.ref)
    for path in args.with_ or []:
        shutil.copy2(ROOT / path, base / path)
    mutants, data = load(base)
    wrong = check_patterns(mutants, base)
    if wrong:
        print("mutants: the list is broken (fix tools/mutants.toml):", *wrong, sep="\n  ", file=sys.stderr)
        return 2
    if args.only:
        unknown = set(args.only) - {m.id for m in mutants}
        if unknown:
            print(f"mutants: no mutant named {sorted(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in args.only]
    timeout = float(data["run"]["timeout"])
    files = test_files(base, data["run"]["first"])
    if not build_core(base, work / "_source.build.log"):
        print(f"mutants: the unmutated core does not build: see {work / '_source.build.log'}", file=sys.stderr)
        return 2
    if not args.no_control:
        print("control: the whole suite on the unmutated copy ...", flush=True)
        rc, failed, secs = run_suite(base, files, timeout, work / "_source.test.log", args.deselect)
        print(f"control: exit {rc} in {secs:.0f} s", flush=True)
        if rc != 0:
            print(f"mutants: the unmutated suite fails ({failed}); its verdicts would mean nothing: see "
                  f"{work / '_source.test.log'}", file=sys.stderr)
            return 2
    results = []
    for i, m in enumerate(mutants, 1):
        tree = work / m.id
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(base, tree, symlinks=True)
        target = tree / m.file
        target.write_text(target.read_text().replace(m.pattern, m.replacement, 1))
        t0 = time.monotonic()
        if m.kind == "c" and not build_core(tree, tree / "build.log"):
            verdict, by = "broken", f"does not build: {tree / 'build.log'}"
        else:
            rc, failed, _ = run_suite(tree, files, timeout, tree / "test.log", args.deselect)
            if rc is None:
                verdict, by = "killed", f"timeout after {timeout:.0f} s ({tree / 'test.log'})"
            elif rc == 0:
                verdict, by = "survived", "the whole suite passed"
            elif rc == 1 and failed:
                verdict, by = "killed", ", ".join(failed[:2])
            else:
                verdict, by = "error", f"pytest exit {rc}: {tree / 'test.log'}"
        secs = time.monotonic() - t0
        results.append({"id": m.id, "kind": m.kind, "verdict": verdict, "by": by, "seconds": round(secs), "promise": m.promise})
        print(f"[{i}/{len(mutants)}] {m.id}: {verdict} ({by}) {secs:.0f} s", flush=True)
        if verdict == "killed" and not args.keep:
            shutil.rmtree(tree, ignore_errors=True)
    total = time.monotonic() - started
    write_results(work, results, total)
    bad = [r for r in results if r["verdict"] != "killed"]
    print(f"{len(results) - len(bad)}/{len(results)} killed in {total / 60:.1f} min; table: {work / 'results.md'}")
    for r in bad:
        print(f"  NOT KILLED: {r['id']}: {r['verdict']} ({r['by']})")
    return 1 if bad else 0


def write_results(work: Path, results: list[dict], total: float) -> None:
    lines = [f"# C-core mutants: {sum(r['verdict'] == 'killed' for r in results)}/{len(results)} killed "
             f"({total / 60:.1f} min)", "", "| mutant | verdict | by | s | promise |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['id']} | {r['verdict']} | {r['by']} | {r['seconds']} | {r['promise']} |" for r in results]
    (work / "results.md").write_text("\n".join(lines) + "\n")
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")


# ---- (b) mutmut ----

def run_mutmut(args: argparse.Namespace) -> int:
    data = tomllib.loads(DATA.read_text())
    modules = data["mutmut"]["modules"]
    chosen = args.modules or list(modules)
    unknown = [m for m in chosen if m not in modules]
    if unknown:
        print(f"mutants: no module {unknown} in [mutmut.modules] of {DATA}", file=sys.stderr)
        return 2
    work = ROOT / "build" / "mutmut"
    work.mkdir(parents=True, exist_ok=True)
    scores = {}
    scores_file = work / "scores.json"
    if scores_file.exists():
        scores = json.loads(scores_file.read_text())
    for module in chosen:
        spec = modules[module]
        tree = work / module.replace("/", "_").removesuffix(".py")
        t0 = time.monotonic()
        selection = [*spec["tests"], *[f"--deselect={d}" for d in spec.get("deselect", [])]]
        score = mutmut_module(tree, module, selection, args.max_children, args.ref, args.with_ or [])
        score["minutes"] = round((time.monotonic() - t0) / 60, 1)
        scores[module] = score
        scores_file.write_text(json.dumps(scores, indent=1) + "\n")
        print(f"{module}: {score['killed']}/{score['total']} killed ({score['percent']} %), "
              f"survivors {score['survived']}, {score['minutes']} min", flush=True)
    lines = ["| module | mutants | killed | % | survivors (mutmut names) |", "| --- | --- | --- | --- | --- |"]
    for module, s in scores.items():
        lines.append(f"| {module} | {s['total']} | {s['killed']} | {s['percent']} | {' '.join(s['survived_names']) or '-'} |")
    (work / "scores.md").write_text("\n".join(lines) + "\n")
    print((work / "scores.md").read_text())
    return 0


def mutmut_module(tree: Path, module: str, tests: list[str], max_children: int, ref: str | None, with_: list[str]) -> dict:
    """mutmut on one module, in its own copy, with its own tests. Returns its counts."""
    snapshot(tree, ref)  # the daemon's package under its import name, fastalloc_shmd, so the copy shadows it
    for path in with_:
        shutil.copy2(ROOT / path, tree / path)
    if not build_core(tree, tree / "build.log"):
        raise SystemExit(f"mutants: the core does not build in {tree}: see {tree / 'build.log'}")
    # mutmut's stats pass marks itself in the environment, which the tests' child processes inherit: a
    # child that runs as another uid (the trust tests) then fails inside mutmut's recording. Children
    # record nothing mutmut reads, so the stats pass keeps its mark in-process only.
    (tree / "mutmut_children.py").write_text(
        "import os\n\n\ndef pytest_configure(config):\n"
        "    if os.environ.get('MUTANT_UNDER_TEST') == 'stats':\n        del os.environ['MUTANT_UNDER_TEST']\n")
    target = module.replace("daemon/", "fastalloc_shmd/", 1)
    pyproject = (tree / "pyproject.toml").read_text()
    extra = ["mutmut_children.py", *[n for n in COPIED if n not in ("fastalloc_shm", "tests", "pyproject.toml")
                                      and (tree / n).exists()]]
    config = "\n".join([
        "", "[tool.mutmut]",
        'source_paths = ["fastalloc_shm", "fastalloc_shmd"]',
        f"only_mutate = [{json.dumps(target)}]",
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-p", "mutmut_children"]',
        f"also_copy = {json.dumps(extra)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        "use_git_change_detection = false", ""])
    pyproject = re.sub(r"\n\[tool\.mutmut\]\n(?:[^\[].*\n|\n)*", "\n", pyproject) + config
    (tree / "pyproject.toml").write_text(pyproject)
    env = dict(os.environ)
    env.pop("FASTALLOC_FAULT", None)
    env.pop("PYTHONPATH", None)  # a path that does not exist yet (mutants/) would be cached as empty
    mutmut = [sys.executable, "-m", "mutmut"]
    with (tree / "mutmut.log").open("w") as out:
        subprocess.call([*mutmut, "run", "--max-children", str(max_children)], cwd=tree, env=env, stdout=out,
                        stderr=subprocess.STDOUT)
    listing = subprocess.run([*mutmut, "results", "--all", "true"], cwd=tree, env=env, capture_output=True, text=True).stdout
    (tree / "results.txt").write_text(listing)
    verdicts = re.findall(r"^\s*(\S+): (\w[\w ]*?)\s*$", listing, re.M)
    counts: dict[str, int] = {}
    for _, v in verdicts:
        counts[v] = counts.get(v, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("segfault", 0)
    total = sum(n for v, n in counts.items() if v not in ("skipped", "not checked"))
    survived = [name for name, v in verdicts if v in ("survived", "no tests")]
    return {"total": total, "killed": killed, "percent": round(100 * killed / total, 1) if total else 0.0,
            "survived": len(survived), "survived_names": survived, "counts": counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("c", help="(a) the C core's mutants of tools/mutants.toml")
    c.add_argument("--ref", help="mutate this commit (git archive) instead of the work tree")
    c.add_argument("--with", dest="with_", nargs="+", metavar="PATH", help="with --ref: these files from the work tree")
    c.add_argument("--only", nargs="+", metavar="ID", help="only these mutants")
    c.add_argument("--no-control", action="store_true", help="skip the run of the suite on the unmutated copy")
    c.add_argument("--deselect", nargs="+", default=[], metavar="NODEID",
                   help="leave out these tests (one that fails on this machine without any mutant, say so in the report)")
    c.add_argument("--keep", action="store_true", help="keep the copies of killed mutants too")
    m = sub.add_parser("mutmut", help="(b) mutmut on the modules of [mutmut.modules]")
    m.add_argument("modules", nargs="*", help="default: all, in the listed order")
    m.add_argument("--max-children", type=int, default=1,
                   help="mutants at once (default 1: the tests' pool names are unique per process, not per fork)")
    m.add_argument("--ref", help="mutate this commit (git archive) instead of the work tree")
    m.add_argument("--with", dest="with_", nargs="+", metavar="PATH", help="with --ref: these files from the work tree")
    ls = sub.add_parser("list", help="the mutants, their patterns checked against the work tree")
    ls.add_argument("--ref")
    args = parser.parse_args()
    if args.command == "c":
        return run_c(args)
    if args.command == "mutmut":
        return run_mutmut(args)
    base = ROOT / "build" / "mutants" / "_source"
    snapshot(base, args.ref)
    mutants, _ = load(base)
    for mt in mutants:
        print(f"{mt.id:36} {mt.file:36} {mt.promise}")
    wrong = check_patterns(mutants, base)
    print(*wrong, sep="\n", file=sys.stderr)
    return 2 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
