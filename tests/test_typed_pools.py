"""Typed pools (issue 20, item 2): `value_type=` validates on the way in, returns the type on the way out,
records its schema, refuses another schema by name of the difference, and pickles with its type."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from fastalloc_shm import (
    ConfigError,
    FixedPool,
    GrowingPool,
    IncompatiblePool,
    SerializationError,
    ThreadLocalPool,
    attach,
)

from .typed_values import Job, JobV2, Order, Point

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value_type, good, wrong, field", [
    (Job, Job(1, "a", ["x"]), Job("one", "a"), "$.id"),
    (Point, Point(1.5, 2.0), Point("left", 2.0), "$.x"),
    (Order, {"sku": "A-1", "qty": 3}, {"sku": "A-1", "qty": "three"}, "$.qty"),
    (list[int], [1, 2, 3], [1, "2"], "$[1]"),
], ids=["Struct", "dataclass", "TypedDict", "list[int]"])
@pytest.mark.parametrize("kind", [FixedPool, GrowingPool, ThreadLocalPool], ids=lambda k: k.__name__)
def test_a_typed_pool_validates_in_and_returns_its_type_out(kind, value_type, good, wrong, field, pool_name):
    with kind.create(pool_name, capacity=8, slot_size=128, value_type=value_type) as pool:
        h = pool.allocate(good)
        got = pool.get(h)
        assert got == good and type(got) is type(good) and pool.value_type is value_type
        for write in (pool.allocate, lambda v: pool.set(h, v), lambda v: pool.allocate_many([good, v]),
                      lambda v: pool.channel("todo").put(v)):
            with pytest.raises(SerializationError, match=field.replace("$", r"\$").replace("[", r"\[")):
                write(wrong)
        assert pool.get(h) == good and len(pool) == 1  # nothing refused was stored
        [a, b] = pool.allocate_many([good, good])
        assert type(pool.get(b)) is type(good)
        todo = pool.channel("todo")
        todo.put(good)
        assert type(todo.get(0)) is type(good)
        pool.release_many([a, b, h])


def test_attaching_with_another_schema_names_the_difference(pool_name):
    with FixedPool.create(pool_name, capacity=4, value_type=Job) as pool:
        with pytest.raises(IncompatiblePool, match=r"field 'id' is integer in the pool, string in value_type") as e:
            attach(pool_name, value_type=JobV2)
        assert "'priority' only in value_type's" in str(e.value) and "'tags' only in the pool's" in str(e.value)
        with pytest.raises(IncompatiblePool, match="value_type Job differs: field 'id'"):
            FixedPool.create(pool_name, capacity=4, exist_ok=True, value_type=JobV2)
        with pytest.raises(IncompatiblePool, match="records the value_type Job"):
            FixedPool.create(pool_name, capacity=4, exist_ok=True)
        same = FixedPool.create(pool_name, capacity=4, exist_ok=True, value_type=Job)
        assert same.value_type is Job
        same.close()
        assert pool.config.value_schema and "Job" in pool.config.value_schema


def test_an_untyped_pool_refuses_an_attacher_with_a_type(pool_name):
    with FixedPool.create(pool_name, capacity=4):
        with pytest.raises(IncompatiblePool, match="records no value_type"):
            attach(pool_name, value_type=Job)


def test_a_value_type_msgspec_cannot_decode_into_is_a_config_error(pool_name):
    with pytest.raises(ConfigError, match="value_type"):
        FixedPool.create(pool_name, capacity=4, value_type=object())


def test_attach_without_a_type_reads_plain_values_and_imports_nothing(pool_name):
    """Another process attaches by name only: it gets dicts, and the module defining Job is never imported."""
    with FixedPool.create(pool_name, capacity=4, value_type=Job) as pool:
        h = pool.allocate(Job(7, "seven", ["t"]))
        code = (f"import sys; from fastalloc_shm import attach; p = attach({pool_name!r}); "
                f"print(p.get({h}), p.value_type, 'tests.typed_values' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["{'id':", "7,", "'name':", "'seven',", "'tags':", "['t']}", "None", "False"]


def _typed_get(pool, handle, out):
    out.put((type(pool.get(handle)).__name__, pool.value_type.__name__))


def test_a_typed_pool_pickles_with_its_type_into_a_spawned_process(pool_name):
    with FixedPool.create(pool_name, capacity=4, value_type=Job) as pool:
        h = pool.allocate(Job(1, "x"))
        assert pickle.loads(pickle.dumps(pool)).value_type is Job
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        child = ctx.Process(target=_typed_get, args=(pool, h, out))
        child.start()
        assert out.get(timeout=60) == ("Job", "Job")
        child.join(30)
        assert child.exitcode == 0


def test_a_value_written_untyped_is_refused_by_a_typed_reader_naming_the_field(pool_name):
    with FixedPool.create(pool_name, capacity=4, value_type=Job) as pool:
        untyped = attach(pool_name)
        h = untyped.allocate({"id": "not an int", "name": "x"})
        with pytest.raises(SerializationError, match=r"value_type.*\$\.id"):
            pool.get(h)
        assert untyped.get(h) == {"id": "not an int", "name": "x"}
        untyped.close()


def test_the_slot_bytes_of_a_typed_value_are_plain_msgpack(pool_name):
    import msgpack

    with FixedPool.create(pool_name, capacity=4, value_type=Job) as pool:
        h = pool.allocate(Job(3, "c"))
        data = msgspec.msgpack.encode(Job(3, "c"))
        assert msgpack.unpackb(bytes(pool.buffer(h))[:len(data)]) == {"id": 3, "name": "c", "tags": []}


def test_a_typed_redis_pool_validates_returns_its_type_and_refuses_another_schema(redis_url, pool_name):
    """RedisPool takes value_type= too, through the same codec module."""
    from fastalloc_shm import RedisPool

    with RedisPool.create(pool_name, url=redis_url, capacity=4, value_type=Job) as pool:
        h = pool.allocate(Job(1, "a"))
        assert pool.get(h) == Job(1, "a") and type(pool.get(h)) is Job
        with pytest.raises(SerializationError, match=r"\$\.id"):
            pool.set(h, Job("x", "a"))
        with pytest.raises(IncompatiblePool, match="field 'id' is integer in the pool, string in value_type"):
            RedisPool.attach(pool_name, url=redis_url, value_type=JobV2)
        plain = RedisPool.attach(pool_name, url=redis_url)
        assert plain.get(h) == {"id": 1, "name": "a", "tags": []}
        plain.close()
        assert pickle.loads(pickle.dumps(pool)).value_type is Job
