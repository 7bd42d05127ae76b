"""A child process for the crash tests: attach a pool, do one operation, print its result.

Run as `python -m tests.crash_child NAME OP [HANDLE]` with FASTALLOC_FAULT set, so
the process stops (or dies) inside the operation's critical section.
"""

import sys

import fastalloc_shm


def main() -> None:
    name, op = sys.argv[1], sys.argv[2]
    handle = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    pool = fastalloc_shm.attach(name)
    if op == "allocate":
        print(pool.allocate({"by": "child"}))
    elif op == "allocate_many":
        print(pool.allocate_many([{"by": "child"}] * 3))
    elif op == "release":
        pool.release(handle)
    elif op == "set":
        pool.set(handle, {"by": "child", "pad": "x" * 100})
    elif op == "recover":
        print(pool.recover())
    elif op == "hold_magazine":
        print(pool.allocate({"by": "child"}))
        sys.stdout.flush()
        import time

        time.sleep(3600)
    pool.close()


if __name__ == "__main__":
    main()
