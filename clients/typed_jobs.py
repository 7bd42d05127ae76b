"""A typed pool: jobs as a msgspec Struct, checked on the way in, returned as Jobs on the way out.

The parent creates `FixedPool[Job]` with `value_type=Job`: a value of the wrong
shape is refused at `put` (a SerializationError naming the field), and every
`get` returns a `Job`, which a type checker knows too (`mypy --strict` on this
file sees `todo.get()` as a `Job`). The workers attach with the same type; a
worker built with another version of `Job` would be refused at attach
(IncompatiblePool naming the fields that differ), not misread values later.

    python clients/typed_jobs.py --workers 2 --jobs 500
"""

from __future__ import annotations

import argparse
import multiprocessing
import os

import msgspec

from fastalloc_shm import FixedPool, SerializationError, attach


class Job(msgspec.Struct):
    """A work item: resize an image to a size."""

    id: int
    path: str
    size: tuple[int, int]
    last: bool = False  # the stop mark: a worker that gets it ends


class Done(msgspec.Struct):
    id: int
    pixels: int
    pid: int


def worker(name: str) -> None:
    todo = attach(name, value_type=Job).channel("todo")  # refused if the pool holds another Job
    done = FixedPool[Done].attach(name + "-done", value_type=Done).channel("done")
    while not (job := todo.get()).last:
        width, height = job.size
        done.put(Done(job.id, width * height, os.getpid()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=f"typed-jobs-{os.getpid()}", help="pool name (default: unique)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()

    with (FixedPool[Job].create(args.name, capacity=128, slot_size=128, value_type=Job) as jobs,
          FixedPool[Done].create(args.name + "-done", capacity=128, slot_size=64, value_type=Done) as results):
        todo, done = jobs.channel("todo"), results.channel("done")
        try:
            todo.put({"id": "one"})  # type: ignore[arg-type]  # what a type checker flags, the pool refuses too
        except SerializationError as exc:
            print(f"refused: {exc}")
        workers = [multiprocessing.Process(target=worker, args=(args.name,)) for _ in range(args.workers)]
        for w in workers:
            w.start()
        pixels, by_pid = 0, dict[int, int]()
        for i in range(args.jobs):
            todo.put(Job(i, f"img/{i}.png", (640 + i % 3, 480)))
            if i >= 64:  # keep the result pool from filling: read as we go
                result = done.get()
                pixels += result.pixels
                by_pid[result.pid] = by_pid.get(result.pid, 0) + 1
        todo.put_many([Job(-1, "", (0, 0), last=True)] * args.workers)
        while sum(by_pid.values()) < args.jobs:
            result = done.get()
            pixels += result.pixels
            by_pid[result.pid] = by_pid.get(result.pid, 0) + 1
        for w in workers:
            w.join()
        print(f"{args.jobs} jobs done by {len(by_pid)} workers, {pixels:,} pixels")
        jobs.unlink()
        results.unlink()


if __name__ == "__main__":
    main()
