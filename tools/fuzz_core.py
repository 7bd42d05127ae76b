"""Coverage-guided fuzzing of the compiled core on its AddressSanitizer + UBSan build (atheris, libFuzzer).

    python tools/fuzz_core.py -atheris_runs=20000      # a fixed number of executions (make test-asan)
    python tools/fuzz_core.py -max_total_time=600      # ten minutes (make fuzz)

Any other libFuzzer flag passes through (-jobs is not supported: one process). Each input is a
pool segment: the header's words, the extent table, the config record, the client table, extent
0's header, slot metadata and slot bytes, growth extent 1's, each region in that order taken
from the input's bytes (what the input lacks keeps the seed's bytes); what follows them is a
script: the kind, the batch size, the orphan policy, the semaphore's count, and a list of
operations with their handles and values. The harness writes the segment into a real pool's
files, builds a Core on it (the attach path; or the whole Python attach(), with its header and
config checks), and runs the script: allocate, get, set, release, allocate_many, release_many,
recover, counters, len, clients, slot_states, reset_statistics, buffer (read, write, release
while exported), commit_extent, take/publish/unwind_slot, pre_initialize, close and the
operations after it. The seeds are made at start from a real pool (so the fuzzer starts past the
magic, version and geometry checks): a GrowingPool of 8 + 4 slots, some allocated, some free.

Only typed errors may come out: the FastallocError family, ValueError/TypeError (bad
arguments), BufferError (a view is exported). Anything else, a crash or a sanitizer report is a
finding: libFuzzer writes the input to build/fuzz/crash-<sha1>; replay it with
`python tools/fuzz_core.py build/fuzz/crash-<sha1>`.

How it is built: the same sanitizer flags as tools/build_core.py --sanitize, plus gcc's
-fsanitize-coverage=trace-pc,trace-cmp. libFuzzer (inside atheris) counts 8-bit counters and
clang's PC tables, which gcc does not emit, so a small shim (SHIM below) turns gcc's per-block
__sanitizer_cov_trace_pc calls into a counter per code address of the core and registers them
with libFuzzer, and forwards the comparison hooks (tail calls: libFuzzer sees the core's own
caller PCs). atheris warns at start that libasan provides the coverage symbols: that concerns its
Python coverage, which this target does not use (the harness is not instrumented). So "cov" in
libFuzzer's lines counts the core's basic blocks reached, "ft" its features (blocks x hit-count
buckets, comparisons).

Figures (2026-12-03, 2 shared cores, nice -n 10, the core at the review's fixes): a long run of
721 s made 578,554 executions (802/s; ~4,000/s unloaded on a fresh corpus), reached 1,156 of the
core's 1,844 instrumented basic blocks (the rest: fault points, module init, paths no segment
reaches) and 5,222 features, and kept a corpus of 544 inputs (1.0 MB); no crash, no sanitizer
report, no untyped exception. An earlier run found one hang, in this harness's use of the internal
commit_extent(number, capacity): a capacity near 2**32 posts that many semaphore tokens one by one
(minutes) and records an extent no process can map; the grower never passes one it did not
create, so the harness now passes a grower's capacities.

The process that is started builds the core into build/fuzz/ (a copy of the package beside it)
if any unit changed, then runs itself again under the sanitizer runtimes (LD_PRELOAD), and
removes the fuzzed pool when that one ends however it ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "fuzz"
PACKAGE = OUT / "fastalloc_shm"
CORPUS = OUT / "corpus"
CHILD_ENV = "FASTALLOC_FUZZ_POOL"

SHIM = r"""
/* gcc's sanitizer coverage, told to atheris's libFuzzer (see tools/fuzz_core.py). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdlib.h>

static uint8_t *counters;
static uintptr_t text_lo, text_hi;

/* One counter per 4 bytes of code: gcc calls this at the start of every basic block, and two
 * call sites are at least 5 bytes apart, so each block has its own counter. */
void __sanitizer_cov_trace_pc(void)
{
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    if (counters && pc - text_lo < text_hi - text_lo) {
        uint8_t *p = &counters[(pc - text_lo) >> 2];
        *p = (uint8_t)(*p + 1);
    }
}

#define FORWARD(name, T)                       \
    static void (*name##_p)(T, T);             \
    void name(T a, T b) { if (name##_p) name##_p(a, b); }
FORWARD(__sanitizer_cov_trace_cmp1, uint8_t)
FORWARD(__sanitizer_cov_trace_cmp2, uint16_t)
FORWARD(__sanitizer_cov_trace_cmp4, uint32_t)
FORWARD(__sanitizer_cov_trace_cmp8, uint64_t)
FORWARD(__sanitizer_cov_trace_const_cmp1, uint8_t)
FORWARD(__sanitizer_cov_trace_const_cmp2, uint16_t)
FORWARD(__sanitizer_cov_trace_const_cmp4, uint32_t)
FORWARD(__sanitizer_cov_trace_const_cmp8, uint64_t)
static void (*__sanitizer_cov_trace_switch_p)(uint64_t, uint64_t *);
void __sanitizer_cov_trace_switch(uint64_t v, uint64_t *cases)
{
    if (__sanitizer_cov_trace_switch_p)
        __sanitizer_cov_trace_switch_p(v, cases);
}
void __sanitizer_cov_trace_cmpf(float a, float b) {}
void __sanitizer_cov_trace_cmpd(double a, double b) {}

static int find_text(struct dl_phdr_info *info, size_t size, void *base)
{
    if (info->dlpi_addr != (uintptr_t)base)
        return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            text_lo = info->dlpi_addr + ph->p_vaddr;
            text_hi = text_lo + ph->p_memsz;
            return 1;
        }
    }
    return 0;
}

/* Called once through ctypes with libFuzzer's entry points: the counters and the PC table
 * (one fake PC per counter) become a module of libFuzzer's, the comparisons its hooks.
 * Returns the number of counters, 0 if the core's code was not found. */
__attribute__((visibility("default"))) long fastalloc_fuzz_register(void **fn)
{
    Dl_info self;
    if (counters || !dladdr((void *)fastalloc_fuzz_register, &self) || !dl_iterate_phdr(find_text, self.dli_fbase))
        return 0;
    size_t n = (text_hi - text_lo + 3) >> 2;
    uint8_t *c = calloc(n, 1);
    uintptr_t *pcs = calloc(2 * n, sizeof *pcs);
    if (!c || !pcs)
        return 0;
    for (size_t i = 0; i < n; i++)
        pcs[2 * i] = text_lo + 4 * i;
    ((void (*)(uint8_t *, uint8_t *))fn[0])(c, c + n);
    ((void (*)(const uintptr_t *, const uintptr_t *))fn[1])(pcs, pcs + 2 * n);
    __sanitizer_cov_trace_cmp1_p = fn[2];
    __sanitizer_cov_trace_cmp2_p = fn[3];
    __sanitizer_cov_trace_cmp4_p = fn[4];
    __sanitizer_cov_trace_cmp8_p = fn[5];
    __sanitizer_cov_trace_const_cmp1_p = fn[6];
    __sanitizer_cov_trace_const_cmp2_p = fn[7];
    __sanitizer_cov_trace_const_cmp4_p = fn[8];
    __sanitizer_cov_trace_const_cmp8_p = fn[9];
    __sanitizer_cov_trace_switch_p = fn[10];
    counters = c;
    return (long)n;
}
"""
LIBFUZZER_ENTRIES = ["__sanitizer_cov_8bit_counters_init", "__sanitizer_cov_pcs_init"] + [
    f"__sanitizer_cov_trace_{kind}cmp{n}" for kind in ("", "const_") for n in (1, 2, 4, 8)] + [
    "__sanitizer_cov_trace_switch"]


# ---- the parent: build, run the fuzzing child under the sanitizers, clean up -------------------

def build() -> Path:
    """The instrumented core in build/fuzz/fastalloc_shm (rebuilt when a unit or this file changed)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from build_core import SANITIZE

    target = PACKAGE / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    sources = sorted((ROOT / "fastalloc_shm" / "_core").iterdir())
    newest = max(p.stat().st_mtime for p in [*sources, Path(__file__)])
    if target.exists() and target.stat().st_mtime >= newest:
        return target
    if PACKAGE.exists():
        shutil.rmtree(PACKAGE)
    shutil.copytree(ROOT / "fastalloc_shm", PACKAGE, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shim = OUT / "sancov_shim.c"
    shim.write_text(SHIM)
    base = ["cc", "-std=gnu11", "-fPIC", "-pthread"]
    # The shim is not instrumented (it would count itself) and is optimised: its forwarders are tail calls.
    subprocess.run([*base, "-O2", "-c", str(shim), "-o", str(OUT / "sancov_shim.o")], check=True)
    command = [*base, "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-shared",
               f"-I{sysconfig.get_paths()['include']}", *SANITIZE, "-fsanitize-coverage=trace-pc,trace-cmp",
               str(PACKAGE / "_core" / "unity.c"), str(OUT / "sancov_shim.o"), "-o", str(target), "-lrt", "-ldl"]
    print("building:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return target


def parent(argv: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    build()
    runtimes = [subprocess.run(["cc", f"-print-file-name={lib}"], capture_output=True, text=True, check=True).stdout.strip()
                for lib in ("libasan.so", "libubsan.so")]
    name = f"fuzz{os.getpid()}"
    env = dict(os.environ, **{
        CHILD_ENV: name,
        "LD_PRELOAD": " ".join(runtimes),
        # libFuzzer installs its own handlers; ASan must abort so that libFuzzer saves the input.
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:handle_abort=1:allocator_may_return_null=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    })
    args = list(argv)
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=20")
    if not any(a.startswith("-max_len=") for a in args):
        args.append("-max_len=4096")
    if not any(a.startswith("-artifact_prefix=") for a in args):
        args.append(f"-artifact_prefix={OUT}/")
    if not [a for a in args if not a.startswith("-")]:  # no corpus or input named: ours
        CORPUS.mkdir(exist_ok=True)
        args.append(str(CORPUS))
    # A SIGTERM (a CI timeout, `timeout`) still removes the pool: the child gets it too (one group).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return subprocess.call([sys.executable, __file__, *args], env=env)
    finally:
        sys.path.insert(0, str(ROOT))
        import logging

        from fastalloc_shm import unlink

        logging.disable(logging.WARNING)  # the last input's header names no semaphore: said, and expected
        try:
            unlink(name)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's status
            print(f"fuzz: could not remove pool {name!r}: {exc}", file=sys.stderr)


# ---- the child: the harness -----------------------------------------------------------------

def child(name: str, argv: list[str]) -> None:  # noqa: C901 - one harness, read top to bottom
    import ctypes
    import mmap
    import struct

    sys.path.insert(0, str(OUT))
    import atheris
    import posix_ipc

    import fastalloc_shm
    from fastalloc_shm import FastallocError, GrowingPool, GrowthStrategy, _codec, _core, _names
    from fastalloc_shm import _layout as L
    from fastalloc_shm._messages import PoolErrors

    assert Path(_core.__file__).parent == PACKAGE, f"not the instrumented core: {_core.__file__}"
    # attach() waits up to 5 s for a creator that is alive (this process, as the header may say) to
    # mark the pool ready; a fuzzed header says "not ready" often: refuse at once instead.
    fastalloc_shm._header.READY_TIMEOUT = 0
    TYPED = (FastallocError, ValueError, TypeError, BufferError)

    # The seed: a real pool whose files the harness rewrites for every input.
    pool = GrowingPool.create(name, capacity=8, slot_size=64, max_capacity=12, growth_strategy=GrowthStrategy.linear(4),
                              lock_timeout=0.01)
    held = [pool.allocate({"i": i, "pad": "p" * (i * 5)}) for i in range(10)]  # 8 in extent 0, 2 in extent 1
    pool.set(held[1], ("tuple", 1, b"bytes"))
    for h in (held[2], held[5], held[9]):
        pool.release(h)
    seed_handles = held
    cfg, sem_name, stride = pool.config, pool._sem_name, L.stride_for(64, pool.config.alignment)
    pool.close()
    seg_path = f"{_names.SHM_DIR}/{_names.segment(name).lstrip('/')}"
    ext_path = f"{_names.SHM_DIR}/{_names.extent(name, 1).lstrip('/')}"

    def mapped(path: str) -> mmap.mmap:
        fd = os.open(path, os.O_RDWR)
        try:
            return mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    main, ext = mapped(seg_path), mapped(ext_path)
    seed_main, seed_ext = bytes(main), bytes(ext)
    sem = posix_ipc.Semaphore(sem_name)

    ext0, data0 = L.HEADER_SIZE, L.HEADER_SIZE + L.data_offset(8, cfg.alignment)
    data1 = L.data_offset(4, cfg.alignment)
    # (mapping, start, end): the bytes of the input, in this order. The mutex is left out: whoever
    # can write a segment can wedge its lock (the README's security model), which is not memory safety.
    regions = [
        ("main", 0, L.MUTEX_OFFSET),
        ("main", L.EXTENT_TABLE_OFFSET, L.EXTENT_TABLE_OFFSET + 16 * 4),
        ("main", L.CLIENT_TABLE_OFFSET, L.CLIENT_TABLE_OFFSET + 4 * L.CLIENT_BYTES),
        ("main", ext0, data0),                  # extent 0's header and slot metadata
        ("main", data0, data0 + 8 * stride),    # its slots' bytes
        ("ext", 0, data1),                      # extent 1's header and metadata
        ("ext", data1, data1 + 4 * stride),
        ("main", L.CONFIG_OFFSET, L.CONFIG_OFFSET + 160),  # the config record (Python's attach reads it)
    ]
    image_len = sum(end - start for _m, start, end in regions)
    maps = {"main": main, "ext": ext}
    seed_image = b"".join((seed_main if m == "main" else seed_ext)[start:end] for m, start, end in regions)

    def load(image: bytes) -> None:
        main[:] = seed_main
        ext[:] = seed_ext
        at = 0
        for m, start, end in regions:
            piece = image[at:at + end - start]
            at += end - start
            if piece:
                maps[m][start:start + len(piece)] = piece

    class Described:  # what PoolErrors asks a pool for its messages
        def __init__(self) -> None:
            self.core = None

        def __len__(self) -> int:
            return self.core.len() if self.core is not None else 0

        @property
        def capacity(self) -> int:
            return struct.unpack_from("<Q", main, 8 * L.HDR_CAPACITY)[0]

    ticks = fastalloc_shm.pool.start_ticks(os.getpid())
    uid = os.getuid()
    codec = _codec.Codec()  # both codecs: msgspec's for plain values, msgpack-python's for the rest
    prefix = _names.extent_prefix(name)
    WEIRD = [-1, 0, 1 << 63, (1 << 64) - 1, 1 << 64, 1 << 100, "h", None, 1.5, True, b"\x00" * 8]

    class Grow:
        """The growth policy: says yes at most once per input (a yes with nothing grown would loop)."""

        def __init__(self, answers: int) -> None:
            self.answers = answers

        def __call__(self, wanted: int) -> bool:
            answer, self.answers = self.answers & 3, self.answers >> 2
            if answer == 1:
                self.answers = 0
                return True
            if answer == 2:
                raise FastallocError("growth refused by the fuzz policy")
            return False

    def value(fdp) -> object:
        choice = fdp.ConsumeIntInRange(0, 7)
        if choice == 0:
            return fdp.ConsumeInt(8)
        if choice == 1:
            return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 90))
        if choice == 2:
            return {"k": fdp.ConsumeUnicodeNoSurrogates(8), "n": fdp.ConsumeIntInRange(0, 1000)}
        if choice == 3:
            return (1, 2, "x")  # the fallback packer: Python code mid-operation
        if choice == 4:
            return object()  # unpackable
        if choice == 5:
            return [None] * fdp.ConsumeIntInRange(0, 40)
        if choice == 6:
            return {(1, 2): "x"}  # packs but could not read back
        return "v" * fdp.ConsumeIntInRange(0, 70)

    def slot_handle(index: int) -> int:
        """The handle a slot's metadata names now (read from the mapping, as an attacker would)."""
        if index < 8:
            gen = struct.unpack_from("<I", main, ext0 + L.EXT_HEADER_BYTES + index * L.META_BYTES)[0]
        else:
            gen = struct.unpack_from("<I", ext, L.EXT_HEADER_BYTES + (index - 8) * L.META_BYTES)[0]
        return (gen & L.GENERATION_MASK) << 32 | index

    def handle(fdp, mine: list[int]) -> object:
        source = fdp.ConsumeIntInRange(0, 4)
        if source == 0 and mine:
            return mine[fdp.ConsumeIntInRange(0, len(mine) - 1)]
        if source == 1:
            return seed_handles[fdp.ConsumeIntInRange(0, len(seed_handles) - 1)]
        if source == 2:
            return fdp.ConsumeIntInRange(0, (1 << 64) - 1)
        if source == 3:
            return slot_handle(fdp.ConsumeIntInRange(0, 11))
        return WEIRD[fdp.ConsumeIntInRange(0, len(WEIRD) - 1)]

    def run_ops(core, fdp, mine: list[int], views: list) -> None:
        for _ in range(fdp.ConsumeIntInRange(0, 24)):
            op = fdp.ConsumeIntInRange(0, 21)
            try:
                if op == 0:
                    mine.append(core.allocate(value(fdp)))
                elif op == 1:
                    mine.append(core.allocate(value(fdp), timeout=fdp.ConsumeIntInRange(0, 2) / 1000))
                elif op == 2:
                    core.get(handle(fdp, mine))
                elif op == 3:
                    core.set(handle(fdp, mine), value(fdp))
                elif op == 4:
                    core.release(handle(fdp, mine))
                elif op == 5:
                    mine.extend(core.allocate_many([value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))]))
                elif op == 6:
                    handles = [handle(fdp, mine) for _ in range(fdp.ConsumeIntInRange(0, 5))]
                    core.release_many(handles if fdp.ConsumeBool() else tuple(handles))
                elif op == 7:
                    core.recover(fdp.ConsumeBool(), fdp.ConsumeIntInRange(0, 2) / 1000)
                elif op == 8:
                    core.counters()
                elif op == 9:
                    core.len()
                elif op == 10:
                    core.clients()
                elif op == 11:
                    core.slot_states()
                elif op == 12:
                    core.reset_statistics()
                elif op == 13:
                    view = core.buffer(handle(fdp, mine))
                    views.append(view)
                    if len(view):
                        view[fdp.ConsumeIntInRange(0, len(view) - 1)] = fdp.ConsumeIntInRange(0, 255)
                        bytes(view[:16])
                elif op == 14 and views:
                    views.pop(fdp.ConsumeIntInRange(0, len(views) - 1)).release()
                elif op == 15:
                    # A grower's capacity (it created the extent first); a huge one posts that many
                    # tokens, one sem_post each (up to 2**31: minutes), by contract of this internal call.
                    core.commit_extent(fdp.ConsumeIntInRange(-1, 17), fdp.ConsumeIntInRange(0, 64))
                elif op == 16:
                    index, _previous = core.take_slot()
                    if fdp.ConsumeBool():
                        mine.append(core.publish_slot(index, codec.pack(value(fdp))))
                    else:
                        core.unwind_slot(index)
                elif op == 17:
                    core.publish_slot(fdp.ConsumeIntInRange(0, 20), codec.pack("x"))
                elif op == 18:
                    core.unwind_slot(fdp.ConsumeIntInRange(0, 20))
                elif op == 19:
                    core.pre_initialize(codec.pack(value(fdp)))
                elif op == 20:
                    for view in views:
                        view.release()
                    views.clear()
                    core.close()
                else:
                    _ = (core.semaphore_value, core.operations, core.exports, core.cached, core.extents, core.entry)
            except TYPED:
                pass

    def test_one_input(data: bytes) -> None:
        load(data[:image_len])
        _core.init_mutex(main)
        fdp = atheris.FuzzedDataProvider(data[image_len:])
        kind = list(L.KIND_NAMES)[fdp.ConsumeIntInRange(0, len(L.KIND_NAMES) - 1)]
        batch = fdp.ConsumeIntInRange(0, 9)
        tokens = fdp.ConsumeIntInRange(0, 14)
        if fdp.ConsumeIntInRange(0, 3) == 0:
            # The lock's holder died: glibc's robust lock word with FUTEX_OWNER_DIED (what the kernel
            # leaves), so the next locker gets EOWNERDEAD and repairs the fuzzed slot states.
            main[L.MUTEX_OFFSET:L.MUTEX_OFFSET + 4] = (0x40000000).to_bytes(4, "little")
        while sem.value > tokens:
            sem.acquire(0)
        while sem.value < tokens:
            sem.release()
        if fdp.ConsumeIntInRange(0, 15) == 0:
            # The whole attach of the library: Python's header and config checks, then the core's.
            try:
                attached = fastalloc_shm.attach(name)
            except TYPED:
                return
            views: list = []
            try:
                run_ops(attached._core, fdp, [], views)
            finally:
                for view in views:
                    view.release()
                attached.close()
            return
        described = Described()
        try:
            core = _core.Core(
                main, sem_name, seg_path, prefix, main_uid=uid, kind=kind, lock_timeout=0.01, batch=batch,
                errors=PoolErrors(name, cfg, described), **codec.core_arguments(), grow=Grow(fdp.ConsumeInt(2)),
                start_ticks=ticks, creating=False, trusted=(), reclaim=fdp.ConsumeBool())
        except TYPED:
            return
        described.core = core
        views = []
        try:
            run_ops(core, fdp, [], views)
        finally:
            for view in views:
                view.release()
            described.core = None
            core.close()

    # Seeds: the real pool's image with a script per kind and per family of operations.
    CORPUS.mkdir(parents=True, exist_ok=True)
    scripts = [bytes([k, 3, 6, 1, 0, 0]) + bytes(b % 251 for b in range(s, s + 120)) for k in range(4) for s in (0, 40, 90, 140)]
    scripts.append(bytes([0, 1, 6, 0, 0, 0, 20] + [0, 3, 2, 0, 5, 9, 13, 1, 4, 0, 7, 1, 11, 20]))
    for n, script in enumerate(scripts):
        (CORPUS / f"seed-{n:02d}").write_bytes(seed_image + script)

    def start(data: bytes) -> None:
        """The first input: hand libFuzzer the core's counters (it is loaded by now), then fuzz."""
        nonlocal entry
        lib = next(line.split()[-1] for line in open("/proc/self/maps") if "core_with_libfuzzer" in line)
        fuzzer = ctypes.CDLL(lib)
        fns = (ctypes.c_void_p * len(LIBFUZZER_ENTRIES))(*[ctypes.cast(getattr(fuzzer, n), ctypes.c_void_p)
                                                           for n in LIBFUZZER_ENTRIES])
        counters = ctypes.CDLL(_core.__file__).fastalloc_fuzz_register(fns)
        print(f"fuzz: the core's {counters} counters registered with libFuzzer", file=sys.stderr, flush=True)
        entry = test_one_input
        test_one_input(data)

    entry = start
    atheris.Setup([sys.argv[0], *argv], lambda data: entry(data))
    atheris.Fuzz()


if __name__ == "__main__":
    if os.environ.get(CHILD_ENV):
        child(os.environ[CHILD_ENV], sys.argv[1:])
    else:
        sys.exit(parent(sys.argv[1:]))
