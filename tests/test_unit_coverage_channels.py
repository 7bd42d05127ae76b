"""Unit coverage: channels.c's refusals and error paths (issue 22, item 7).

The happy paths and the crash cases live in test_channels.py; here every way
to call a channel wrongly, and every damaged list the core can meet, is called
and its exact answer pinned: which exception, with which words, and that the
channel and the pool are left as they were (no item lost, none queued twice,
no slot leaked). The core is called directly (`pool._core.channel_*`), as the
Channel class passes its arguments through unchanged.
"""

from __future__ import annotations

import signal
import struct
import threading
import time

import pytest

from fastalloc_shm import (
    ChannelEmpty,
    FastallocError,
    FixedPool,
    InvalidHandle,
    PoolExhausted,
    SerializationError,
    StaleHandle,
    ThreadLocalPool,
    ValueTooLarge,
)
from fastalloc_shm import _layout as L

from .invariants import assert_sound

SLOT = 64


def meta_at(index: int) -> int:
    """Byte offset of slot `index`'s metadata (extent 0, in the main segment)."""
    return L.HEADER_SIZE + L.EXT_HEADER_BYTES + index * L.META_BYTES


def channel_word(pool, ch: int, word: int) -> int:
    return struct.unpack_from("<Q", pool._segment.mm, L.CHANNEL_TABLE_OFFSET + ch * L.CHANNEL_BYTES + 8 * word)[0]


def put_channel_word(pool, ch: int, word: int, value: int) -> None:
    struct.pack_into("<Q", pool._segment.mm, L.CHANNEL_TABLE_OFFSET + ch * L.CHANNEL_BYTES + 8 * word, value)


def meta(pool, index: int) -> list[int]:
    return list(struct.unpack_from("<4I", pool._segment.mm, meta_at(index)))


def put_meta(pool, index: int, words: list[int]) -> None:
    struct.pack_into("<4I", pool._segment.mm, meta_at(index), *words)


@pytest.fixture
def pool(pool_name):
    with FixedPool.create(pool_name, capacity=8, slot_size=SLOT) as p:
        yield p


def test_channel_open_refuses_what_is_not_a_name(pool):
    """channel_open: a non-str is a TypeError; an empty name, one of CHANNEL_NAME_BYTES or more,
    or one with a NUL byte is a ValueError naming the limit; no entry is taken by a refusal."""
    core = pool._core
    with pytest.raises(TypeError):
        core.channel_open(b"bytes")
    for bad in ("", "x" * L.CHANNEL_NAME_BYTES, "a\0b"):
        with pytest.raises(ValueError, match=f"1 to {L.CHANNEL_NAME_BYTES - 1} bytes"):
            core.channel_open(bad)
    assert core.channels() == [None] * L.MAX_CHANNELS
    longest = "y" * (L.CHANNEL_NAME_BYTES - 1)
    assert core.channel_open(longest) == 0 and core.channels()[0] == longest
    assert core.channel_open(longest) == 0, "the same name opens the same entry"


CALLS = {
    "put": lambda core, ch: core.channel_put(ch, "v"),
    "put_many": lambda core, ch: core.channel_put_many(ch, ["v"]),
    "put_handle": lambda core, ch: core.channel_put_handle(ch, 1 << 32),
    "get": lambda core, ch: core.channel_get(ch, 0),
    "get_handle": lambda core, ch: core.channel_get_handle(ch, 0),
    "get_many": lambda core, ch: core.channel_get_many(ch, 1, 0),
    "wait": lambda core, ch: core.channel_wait(ch, 0.0),
    "stats": lambda core, ch: core.channel_stats(ch),
}


@pytest.mark.parametrize("call", CALLS, ids=str)
def test_every_channel_call_refuses_a_number_that_is_no_channel(pool, call):
    """A channel number below 0, at MAX_CHANNELS or of a free entry is a ValueError naming it,
    for every channel call, and the pool is untouched (no slot taken, no channel made)."""
    used = pool._core.channel_open("used")
    for ch in (-1, L.MAX_CHANNELS, used + 1):
        with pytest.raises(ValueError, match=f"no channel number {ch} in this pool"):
            CALLS[call](pool._core, ch)
    assert len(pool) == 0 and pool._core.channels()[1:] == [None] * (L.MAX_CHANNELS - 1)
    assert pool._core.channel_stats(used)["puts"] == 0


@pytest.mark.parametrize("call", CALLS, ids=str)
def test_every_channel_call_on_a_closed_core_raises_closed(pool_name, call):
    """After close() every channel call raises FastallocError('... closed ...') and touches no
    mapping (the number is a real channel's: only the closed core refuses)."""
    pool = FixedPool.create(pool_name, capacity=4)
    core = pool._core
    ch = core.channel_open("todo")
    pool.unlink()
    assert core.closed
    with pytest.raises(FastallocError, match="is closed in this process"):
        CALLS[call](core, ch)
    for other in (lambda: core.channel_open("todo"), core.channels):
        with pytest.raises(FastallocError, match="is closed in this process"):
            other()


def test_channel_arguments_are_type_checked(pool):
    """The channel number must be an int and timeouts a number or None: a TypeError before
    anything is touched; a missing argument is a TypeError too."""
    core = pool._core
    ch = core.channel_open("todo")
    for call in (lambda: core.channel_put("0", "v"), lambda: core.channel_get(0.5), lambda: core.channel_put(ch),
                 lambda: core.channel_put(ch, "v", "soon"), lambda: core.channel_get(ch, "soon"),
                 lambda: core.channel_get_many(ch, "3"), lambda: core.channel_put_handle(ch),
                 lambda: core.channel_wait(ch, "1"), lambda: core.channel_stats("0"),
                 lambda: core.channel_get_handle(ch, []), lambda: core.channel_put_many(ch, [], b"1")):
        with pytest.raises(TypeError):
            call()
    assert core.channel_stats(ch) == {"name": "todo", "length": 0, "puts": 0, "gets": 0, "requeued": 0, "waiting": 0}
    assert len(pool) == 0


@pytest.mark.parametrize("timeout", [-1, -0.001, float("nan"), float("inf"), 1e9 + 1])
def test_channel_timeouts_must_be_finite_and_not_negative(pool, timeout):
    """put, put_many, get, get_handle and get_many refuse a negative, NaN, infinite or
    > 1e9 s timeout with ValueError('timeout: seconds, ...'), before taking a slot."""
    core = pool._core
    ch = core.channel_open("todo")
    core.channel_put(ch, "kept")
    for call in (lambda: core.channel_put(ch, "v", timeout), lambda: core.channel_put_many(ch, ["v"], timeout),
                 lambda: core.channel_get(ch, timeout), lambda: core.channel_get_handle(ch, timeout),
                 lambda: core.channel_get_many(ch, 1, timeout)):
        with pytest.raises(ValueError, match="timeout: seconds, finite and >= 0"):
            call()
    assert core.channel_stats(ch)["length"] == 1 and len(pool) == 1


@pytest.mark.parametrize("max_items", [0, -1, -(2**40)])
def test_get_many_refuses_fewer_than_one_item_and_takes_nothing(pool, max_items):
    """get_many(max_items < 1) is a ValueError naming the number, and the queued items stay."""
    todo = pool.channel("todo")
    todo.put_many(["a", "b"])
    with pytest.raises(ValueError, match=f"max_items must be at least 1, not {max_items}"):
        todo.get_many(max_items, timeout=0)
    assert len(todo) == 2 and todo.statistics()["gets"] == 0


def test_get_many_takes_at_most_max_items_in_order(pool):
    """get_many(n) returns the first n items in FIFO order and leaves the rest queued."""
    todo = pool.channel("todo")
    todo.put_many(["a", {"b": 1}, b"c", 4])
    assert todo.get_many(3, timeout=0) == ["a", {"b": 1}, b"c"]
    assert len(todo) == 1 and len(pool) == 1
    assert todo.get_many(10, timeout=0) == [4]
    with pytest.raises(ChannelEmpty, match="has no item now"):
        todo.get_many(1, timeout=0)
    assert len(pool) == 0
    assert_sound(pool, {})


def test_put_many_refuses_a_non_iterable_and_a_value_too_large_all_or_nothing(pool):
    """put_many(non-iterable) is TypeError('put_many() takes an iterable of values'); a batch
    with one value too large for a slot is ValueTooLarge and queues none of the others; an empty
    batch queues nothing and succeeds; a value that cannot be packed is SerializationError."""
    todo = pool.channel("todo")
    with pytest.raises(TypeError, match=r"put_many\(\) takes an iterable of values"):
        todo.put_many(5)
    with pytest.raises(ValueTooLarge):
        todo.put_many(["small", b"x" * SLOT])
    with pytest.raises(SerializationError):
        todo.put_many(["small", object()])
    todo.put_many([])
    st = todo.statistics()
    assert (len(todo), len(pool), st["puts"]) == (0, 0, 0)
    with pytest.raises(ValueTooLarge):
        todo.put(b"x" * SLOT)
    with pytest.raises(SerializationError):
        todo.put(object())
    assert len(pool) == 0


def test_put_many_into_a_full_pool_with_timeout_zero_is_exhausted_and_queues_nothing(pool):
    """A batch larger than the free slots with timeout=0 raises PoolExhausted at once, counts
    the failure, and queues nothing (all or nothing)."""
    todo = pool.channel("todo")
    held = [pool.allocate(i) for i in range(6)]
    with pytest.raises(PoolExhausted):
        todo.put_many(["a", "b", "c"], timeout=0)
    assert len(todo) == 0 and len(pool) == 6
    assert pool.statistics().allocation_failures == 3
    pool.release_many(held)


def test_put_many_into_a_full_pool_waits_for_releases_then_queues_the_batch(pool):
    """put_many with a timeout into a pool with no free slot waits (the GIL released) until a
    release frees enough slots, then queues the whole batch in order; with a short timeout and
    no release it is PoolExhausted after about that long."""
    todo = pool.channel("todo")
    held = [pool.allocate(i) for i in range(8)]
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        todo.put_many(["a", "b"], timeout=0.1)
    assert 0.09 <= time.monotonic() - started < 5
    timer = threading.Timer(0.1, lambda: pool.release_many(held[:3]))
    timer.start()
    try:
        todo.put_many(["a", "b", "c"], timeout=10)
    finally:
        timer.join()
    assert todo.get_many(5, timeout=0) == ["a", "b", "c"]
    pool.release_many(held[3:])
    assert len(pool) == 0


def test_put_many_into_a_nearly_full_pool_waits_without_spinning(pool):
    """put_many(n, timeout) with fewer than n but at least one slot free waits like the full
    case: another thread's release lets the batch in, and the wait does not burn the CPU."""
    todo = pool.channel("todo")
    held = [pool.allocate(i) for i in range(7)]
    timer = threading.Timer(0.2, lambda: pool.release_many(held[:3]))
    timer.start()
    cpu = time.process_time()
    try:
        todo.put_many(["a", "b", "c"], timeout=1)
    finally:
        timer.join()
        pool.release_many(held[3:])
    assert time.process_time() - cpu < 0.15
    assert todo.get_many(5, timeout=0) == ["a", "b", "c"]


def test_put_waits_for_a_slot_with_timeout_none(pool):
    """put(timeout=None) waits as long as it takes: a release from another thread lets it in."""
    todo = pool.channel("todo")
    held = [pool.allocate(i) for i in range(8)]
    timer = threading.Timer(0.1, pool.release, (held[0],))
    timer.start()
    try:
        todo.put("late", None)
    finally:
        timer.join()
    assert todo.get(timeout=0) == "late"
    pool.release_many(held[1:])


def test_put_handle_refuses_stale_foreign_and_non_handles(pool, make_name):
    """put_handle of a released handle or of the handle a put_handle already queued is
    StaleHandle; of another pool's index beyond this capacity or a non-int, InvalidHandle; in
    each case the channel is unchanged and the live slot stays its holder's."""
    todo = pool.channel("todo")
    h = pool.allocate("mine")
    gone = pool.allocate("gone")
    pool.release(gone)
    with pytest.raises(StaleHandle):
        todo.put_handle(gone)
    with FixedPool.create(make_name(), capacity=32) as other:
        foreign = [other.allocate(i) for i in range(20)][-1]  # index 19 > this pool's 8
        with pytest.raises(InvalidHandle, match="beyond capacity 8"):
            todo.put_handle(foreign)
    for bad in ("1", 1.5, None, -1, 0):
        with pytest.raises(InvalidHandle):
            todo.put_handle(bad)
    assert len(todo) == 0 and todo.statistics()["puts"] == 0 and pool.get(h) == "mine"
    todo.put_handle(h)
    with pytest.raises(StaleHandle):
        todo.put_handle(h)
    with pytest.raises(StaleHandle):
        pool.get(h)
    assert len(todo) == 1 and todo.get(timeout=0) == "mine"
    assert len(pool) == 0
    assert_sound(pool, {})


def test_put_handle_of_an_exported_slot_is_a_buffer_error(pool):
    """A slot with a memoryview from buffer() exported cannot move into a channel (the view
    would outlive the holder's claim): BufferError; once released, it can."""
    todo = pool.channel("todo")
    h = pool.allocate(b"bytes")
    view = pool.buffer(h)
    with pytest.raises(BufferError, match="memoryview"):
        todo.put_handle(h)
    assert len(todo) == 0 and pool.get(h) == b"bytes"
    view.release()
    todo.put_handle(h)
    assert todo.get(timeout=0) == b"bytes"


def test_a_taken_handle_can_be_put_on_and_set_in_between(pool):
    """get_handle hands a TAKEN slot to its consumer: it can be read, set (staying taken) and
    put on into another channel, after which the taken handle is stale."""
    first, second = pool.channel("first"), pool.channel("second")
    first.put({"n": 1})
    h = first.get_handle(timeout=0)
    assert pool.get(h) == {"n": 1}
    pool.set(h, {"n": 2})
    assert pool.get(h) == {"n": 2}
    second.put_handle(h)
    with pytest.raises(StaleHandle):
        pool.release(h)
    assert (len(first), len(second)) == (0, 1)
    assert second.get(timeout=0) == {"n": 2} and len(pool) == 0


def test_get_handle_of_an_empty_channel_waits_then_raises_channel_empty(pool):
    """get_handle(timeout) on an empty channel waits about that long and raises ChannelEmpty
    naming the channel and the time; nothing is counted as a get and no waiter is left."""
    todo = pool.channel("todo")
    started = time.monotonic()
    with pytest.raises(ChannelEmpty, match=r"channel 'todo' has no item within 0\.05 s"):
        todo.get_handle(timeout=0.05)
    assert time.monotonic() - started >= 0.045
    st = todo.statistics()
    assert (st["gets"], st["waiting"]) == (0, 0)


def test_channel_wait_says_whether_an_item_is_there(pool):
    """channel_wait(ch, s): True at once when the channel has an item (taking nothing), else
    False after about s seconds, or sooner after a put from another thread."""
    core = pool._core
    ch = core.channel_open("todo")
    started = time.monotonic()
    assert core.channel_wait(ch, 0.05) is False
    assert time.monotonic() - started >= 0.045
    assert core.channel_wait(ch, 0.0) is False
    timer = threading.Timer(0.05, core.channel_put, (ch, "x"))
    timer.start()
    try:
        assert core.channel_wait(ch, 5.0) is False  # woken by the put, it says: look again
    finally:
        timer.join()
    assert core.channel_wait(ch, 5.0) is True and core.channel_stats(ch)["length"] == 1
    assert core.channel_stats(ch)["waiting"] == 0


def test_a_signal_handler_that_raises_ends_a_channel_wait(pool):
    """A consumer blocked in get (and one in channel_wait) returns the handler's exception at the
    next slice; it is uncounted from the waiting consumers."""
    todo = pool.channel("todo")
    core = pool._core

    def boom(signum, frame):
        raise KeyboardInterrupt("stop waiting")

    previous = signal.signal(signal.SIGALRM, boom)
    try:
        # channel_wait sleeps one slice (0.05 s) at most: its alarm comes sooner
        for call, alarm in ((lambda: todo.get(timeout=30), 0.1), (lambda: core.channel_wait(0, 30.0), 0.01)):
            signal.setitimer(signal.ITIMER_REAL, alarm)
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt, match="stop waiting"):
                call()
            assert time.monotonic() - started < 10
            assert todo.statistics()["waiting"] == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_queued_length_past_the_slot_is_damage_and_the_item_stays_at_the_head(pool):
    """A queued slot whose length word is past slot_size (forged metadata) is not read: get
    raises 'longer than its slot; run recover()', the item stays at the head, gets and requeued
    are as before and the slot is not freed; with the length restored, get returns the value."""
    todo = pool.channel("todo")
    todo.put_many(["first", "second"])
    head = channel_word(pool, 0, L.CH_HEAD) - 1
    words = meta(pool, head)
    good_len = words[L.META_LEN]
    put_meta(pool, head, words[:L.META_LEN] + [SLOT + 1] + words[L.META_LEN + 1:])
    before = todo.statistics()
    for call in (lambda: todo.get(timeout=0), lambda: todo.get_many(2, timeout=0)):
        with pytest.raises(FastallocError, match="a queued value is longer than its slot; run recover"):
            call()
        assert todo.statistics() == before and len(pool) == 2
        assert channel_word(pool, 0, L.CH_HEAD) - 1 == head
    words = meta(pool, head)
    put_meta(pool, head, words[:L.META_LEN] + [good_len] + words[L.META_LEN + 1:])
    assert todo.get_many(2, timeout=0) == ["first", "second"] and len(pool) == 0


def test_get_many_stops_before_a_damaged_item_and_returns_what_it_took(pool):
    """A damaged item behind a sound one: get_many returns the sound one (read, freed, counted as
    a get), the damaged item stays queued at the head, and the next get raises for it."""
    todo = pool.channel("todo")
    todo.put_many(["a", "b"])
    second = meta(pool, channel_word(pool, 0, L.CH_HEAD) - 1)[L.META_SEQ] - 1
    words = meta(pool, second)
    put_meta(pool, second, words[:L.META_LEN] + [SLOT + 1] + words[L.META_LEN + 1:])
    assert todo.get_many(2, timeout=0) == ["a"]
    assert len(todo) == 1 and len(pool) == 1 and todo.statistics()["gets"] == 1
    with pytest.raises(FastallocError, match="longer than its slot"):
        todo.get_many(2, timeout=0)
    assert len(todo) == 1 and len(pool) == 1 and todo.statistics()["gets"] == 1


def test_a_head_outside_the_pool_is_damage(pool):
    """A channel head past the pool's capacity: get raises "a channel's head is outside the
    pool; run recover()"; recover() rebuilds the list from the slots, and the item comes out."""
    todo = pool.channel("todo")
    todo.put("kept")
    head = channel_word(pool, 0, L.CH_HEAD)
    put_channel_word(pool, 0, L.CH_HEAD, 1000)
    with pytest.raises(FastallocError, match="a channel's head is outside the pool; run recover"):
        todo.get(timeout=0)
    put_channel_word(pool, 0, L.CH_HEAD, head)
    assert todo.get(timeout=0) == "kept"


@pytest.mark.parametrize("damage", ["state", "channel", "readable"])
def test_a_head_that_is_not_this_channels_queued_slot_is_damage(pool, damage):
    """The head slot must be QUEUED, owned by this channel and UNREADABLE; any other is
    "a channel's list is damaged; run recover()", and the slot is left as it is; recover()
    puts the item back in the channel."""
    todo = pool.channel("todo")
    pool.channel("other")
    todo.put("kept")
    head = channel_word(pool, 0, L.CH_HEAD) - 1
    good = meta(pool, head)
    forged = list(good)
    if damage == "state":
        forged[L.META_WORD] = (L.ALLOCATED << L.STATE_SHIFT)
    elif damage == "channel":
        forged[L.META_WORD] = (L.QUEUED << L.STATE_SHIFT) | 1
    else:
        forged[L.META_GEN] &= ~L.UNREADABLE & 0xFFFFFFFF
    put_meta(pool, head, forged)
    with pytest.raises(FastallocError, match="a channel's list is damaged; run recover"):
        todo.get_handle(timeout=0)
    assert meta(pool, head) == forged and len(todo) == 1
    put_meta(pool, head, good)
    pool.recover()
    assert todo.get(timeout=0) == "kept"


def test_a_damaged_channel_name_is_shown_replaced_not_hidden(pool):
    """A name whose bytes are not UTF-8 (forged) still shows its counters, decoded with
    replacement characters, in channel_stats and in the pool's statistics."""
    ch = pool._core.channel_open("ok")
    pool._core.channel_put(ch, 1)
    at = L.CHANNEL_TABLE_OFFSET + ch * L.CHANNEL_BYTES
    pool._segment.mm[at:at + 2] = b"\xff\xfe"
    stats = pool._core.channel_stats(ch)
    assert stats["name"] == "\ufffd\ufffd" and stats["length"] == 1 and stats["puts"] == 1
    assert pool.statistics().channels["\ufffd\ufffd"].length == 1


def test_reset_statistics_zeroes_channel_events_but_not_length(pool):
    """reset_statistics zeroes puts, gets and requeued of every channel; length stays true."""
    todo = pool.channel("todo")
    todo.put_many([1, 2, 3])
    todo.get(timeout=0)
    pool.reset_statistics()
    st = todo.statistics()
    assert (st["length"], st["puts"], st["gets"], st["requeued"]) == (2, 0, 0, 0)


def test_channels_of_a_threadlocal_pool_take_from_and_give_back_to_the_free_lists(pool_name):
    """In a ThreadLocalPool a get frees the slot to the shared free lists (not the magazine) and
    a put takes from them: a second attachment sees the values and the counts stay true."""
    with ThreadLocalPool.create(pool_name, capacity=8, batch_size=2) as pool:
        todo = pool.channel("todo")
        todo.put_many(list(range(5)))
        assert len(pool) == 5
        assert todo.get_many(5, timeout=0) == list(range(5))
        assert len(pool) == 0 and pool.statistics().current_usage == 0
        assert_sound(pool, {})
