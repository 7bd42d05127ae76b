"""The server side of RedisPool: its keys and the Lua scripts that change them.

Every pool operation is one script, so Redis runs it atomically: a client
killed at any instruction leaves either the state before the call or the one
after it, never half of it (the same guarantee the shared-memory kinds build
with their lock and ordered writes). All keys of pool NAME carry the hash tag
`{fastalloc.NAME}`, so a pool lives on one cluster slot and its scripts may
touch all its keys, while many pools spread over a cluster.

Keys (the tag is written T):

    T:meta      hash  layout, incarnation, config (msgpack), capacity, slot_size,
                      max_capacity, growth, growth_value, hwm, counters, next_client
    T:free      list  released slot indices (RPUSH on release, RPOP on allocation)
    T:gen       hash  index -> generation, written on first release (absent = 1)
    T:owner     hash  index -> client id; a slot is allocated iff it has an owner
    T:data      hash  index -> msgpack payload (kept after release, for reset())
    T:owned     hash  client id -> number of slots it owns
    T:clients   set   ids of clients that registered and may own slots
    T:lease:ID  string, expiring after the client's lease_ttl unless refreshed
    T:chan      hash  the channels (`_redis_channel`): =NAME -> number, #count, and per number N:
                      N:name, N:puts, N:gets, N:requeued, N:epoch
    T:chan:N    list  channel N's queued items' payloads, head first. A queued item counts as a slot
                      in use (in_use) but holds no index: a put is one RPUSH of the payloads and a
                      get one LPOP, as fast per item as a plain Redis list; get_handle gives the
                      item an index as it hands it to its consumer, put_handle and a requeue free
                      the slot's index (under its next generation) as they queue its payload.
    T:chan:N:wake     list  tokens a put leaves for consumers waiting (BLPOP) on channel N
    T:chan:N:waiters  zset  waiting consumers -> when their wait ends (ms, server clock)
    T:taken     hash  index -> "client generation N": who took the slot from channel N (get_handle);
                      valid while that client owns the slot at that generation (stale entries are
                      overwritten by the slot's next taking, or dropped by a requeue walk)

`incarnation` is a random number written at creation and passed by clients
as ARGV[1] of every script: a client still attached to a pool that was
unlinked and created again gets PoolNotFound, instead of handles that happen
to match slots of the new pool.

Slots are handed out lazily: `hwm` ("high-water mark") is the first index
never used, so creating or growing a pool writes no per-slot data. Indices
and generations travel as separate integers because Lua numbers are doubles
and cannot hold a 64-bit handle; the client packs them.

Errors come back as `FASTALLOC <CODE> <args...>` error replies, which the
client turns into the library's exceptions; a script that refuses changes
nothing but counters (and, asking for a custom growth amount, the growth it
already applied). Needs Redis >= 7.0 (script flags, RPOP with a count).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .handle import INDEX_MASK, MAX_GENERATION

LAYOUT = "fastalloc-redis/1"
TAG_PREFIX = "{fastalloc."
META_SUFFIX = "}:meta"
# The SCAN pattern of every pool's meta key (braces are literal in Redis globs).
META_PATTERN = TAG_PREFIX + "*" + META_SUFFIX
# Generations a new epoch leaves between the highest recorded and its first (see NEW_EPOCH):
# as many releases of one slot as the lost writes may have held. About 2**31 / (2 * margin)
# epochs fit before generations wrap around.
EPOCH_MARGIN = 1 << 20
# Slot indices are unsigned 32-bit (see handle.py): a pool holds at most 2**32 slots.
INDEX_LIMIT = INDEX_MASK + 1
# Most slots one script call may take, free or move (allocate_many, release_many, a channel's
# put_many and get_many): Redis runs one script at a time, so a call's work must stay small for
# other clients' commands to wait little behind it (a batch of 1,000: 0.3-0.5 ms of server time for a
# channel's put_many or get_many, 2-2.5 ms for allocate_many or release_many; benchmarks/redis_script_cost.py).
# Longer walks (recover, requeue) go by cursor instead, STEP slots per script.
MAX_BATCH = 1000


def pool_keys(name: str) -> list[str]:
    """The keys every script receives, in the order the scripts read them."""
    tag = TAG_PREFIX + name + "}"
    return [f"{tag}:{part}" for part in ("meta", "free", "gen", "owner", "data", "owned", "clients")]


def record_prefix(name: str) -> str:
    """The start of the request-record keys of pool `name` (one per client thread, see _ONCE)."""
    return f"{TAG_PREFIX}{name}}}:req:"


def channel_keys(name: str) -> list[str]:
    """The keys every channel script receives after the pool's: the channel table, the taken slots."""
    tag = TAG_PREFIX + name + "}"
    return [f"{tag}:chan", f"{tag}:taken"]


def queue_keys(name: str, number: int) -> list[str]:
    """Channel `number`'s own keys: its items, its wake-up tokens, its waiting consumers."""
    tag = TAG_PREFIX + name + "}"
    return [f"{tag}:chan:{number}", f"{tag}:chan:{number}:wake", f"{tag}:chan:{number}:waiters"]


def lease_key(name: str, client: int | str) -> str:
    """The key whose presence says client `client` of pool `name` is alive."""
    return f"{TAG_PREFIX}{name}}}:lease:{client}"


def pool_of_meta_key(key: str) -> str | None:
    """The pool name in a meta key found by SCAN, or None for anything else."""
    if key.startswith(TAG_PREFIX) and key.endswith(META_SUFFIX):
        return key[len(TAG_PREFIX):-len(META_SUFFIX)] or None
    return None


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1, the name EVALSHA calls it by."""

    name: str
    source: str
    # Takes a record key (last of KEYS) and a request id (last of ARGV): see _ONCE.
    once: bool = False
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# The "#!lua" line (Redis >= 7.0) makes Redis refuse a script up front when it is
# out of memory, instead of failing at a write halfway through the script. Its flags
# say more: `no-writes` (a read: runs at maxmemory, and on a replica) and
# `allow-oom` (a lease refresh, a delete, a release or recover: each frees about
# what it writes, and must not be refused at maxmemory: a live client's lease
# would expire, and releasing is how a full server gets room again).
READ, ALLOW_OOM = "no-writes", "allow-oom"


def _lua(flags: str = "") -> str:
    return f"#!lua flags={flags}\n" if flags else "#!lua\n"


_PRELUDE = """local META, FREE, GEN, OWNER, DATA, OWNED, CLIENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local LAYOUT = '@LAYOUT@'
local INCARNATION = ARGV[1]
local MAX_GENERATION = @MAX_GENERATION@
local INDEX_LIMIT = @INDEX_LIMIT@
-- Values per multi-argument command: Lua's unpack() fails near 8000.
local CHUNK = 1000
-- Slots one step of a long walk (recover's reclaim) visits: the server is never held for long
-- (about 1 ms a step; another client's PING p99 stays under 10 ms during recover() of 1M slots,
-- benchmarks/redis_latency.py).
local STEP = 250

local function fail(code, ...)
  local parts = {'FASTALLOC', code}
  for _, v in ipairs({...}) do parts[#parts + 1] = tostring(v) end
  return redis.error_reply(table.concat(parts, ' '))
end

-- The error for a pool whose meta hash is missing: NOPOOL if nothing of it is left, else
-- DAMAGED naming what is (the meta key was evicted or deleted, the rest of the pool was not).
local function missing_meta()
  local left = {}
  for _, key in ipairs({FREE, GEN, OWNER, DATA, OWNED, CLIENTS}) do
    if redis.call('EXISTS', key) == 1 then left[#left + 1] = key end
  end
  if #left == 0 then return fail('NOPOOL') end
  return fail('DAMAGED', META, unpack(left))
end

-- The FOREIGN error for the first key of the pool (but the meta hash) whose type is not the
-- one fastalloc-shm gives it, or nil.
local KIND_OF = {[FREE] = 'list', [GEN] = 'hash', [OWNER] = 'hash', [DATA] = 'hash', [OWNED] = 'hash',
  [CLIENTS] = 'set'}
local function foreign_leftover()
  for _, key in ipairs({FREE, GEN, OWNER, DATA, OWNED, CLIENTS}) do
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'none' and kind ~= KIND_OF[key] then return fail('FOREIGN', key, kind) end
  end
  return nil
end

-- nil when the meta hash read is this client's pool, else the error to return
local function not_a_pool(layout, incarnation)
  if not layout then return missing_meta() end
  if layout ~= LAYOUT then return fail('LAYOUT', layout) end
  if incarnation ~= INCARNATION then return fail('GONE') end
  return nil
end

-- Run cmd on key with `args` split into calls of `step` arguments; the replies joined.
local function batched(cmd, key, args, step)
  local out = {}
  for first = 1, #args, step do
    local reply = redis.call(cmd, key, unpack(args, first, math.min(first + step - 1, #args)))
    if type(reply) == 'table' then
      for _, v in ipairs(reply) do out[#out + 1] = v end
    end
  end
  return out
end

-- The generation every slot starts at in the pool's current epoch (see NEW_EPOCH): a slot absent
-- from GEN has it. 1 until the server first lost writes.
local function floor_of()
  return tonumber(redis.call('HGET', META, 'floor')) or 1
end

local function next_generation(g, floor)
  if g < MAX_GENERATION then return g + 1 end
  return floor
end

-- Free `idx` (validated, allocated) whose current generations are `gens`. `floor`, `top`: META's
-- floor and max_gen as the caller read them (nil: read here); `counters`: more META fields and
-- values to write with max_gen (the caller's counters), or nil.
local function free_slots(idx, gens, floor, top, counters)
  local gen_args = {}
  floor = floor or floor_of()
  top = top or tonumber(redis.call('HGET', META, 'max_gen')) or 1
  for k = 1, #idx do
    local g = next_generation(tonumber(gens[k]) or floor, floor)
    gen_args[2 * k - 1], gen_args[2 * k] = idx[k], g
    if g > top then top = g end
  end
  -- The highest generation ever given: a new epoch starts above it.
  redis.call('HSET', META, 'max_gen', top, unpack(counters or {}))
  batched('HSET', GEN, gen_args, 2 * CHUNK)
  batched('HDEL', OWNER, idx, CHUNK)
  batched('RPUSH', FREE, idx, CHUNK)
end

-- nil when (i, g) names an allocated slot of this pool, else the error to return; then META's
-- {layout, incarnation, capacity, floor (a number), epoch, max_gen} and the slot's owner.
local function check_handle(i, g)
  local m = redis.call('HMGET', META, 'layout', 'incarnation', 'capacity', 'floor', 'epoch', 'max_gen')
  local bad = not_a_pool(m[1], m[2])
  if bad then return bad end
  if tonumber(i) >= tonumber(m[3]) then return fail('INVALID', i, g, m[3]) end
  local floor = tonumber(m[4]) or 1
  m[4] = floor
  if tonumber(g) < floor then return fail('LOST', i, g, floor) end
  local cur = tonumber(redis.call('HGET', GEN, i)) or floor
  local owner = cur == tonumber(g) and redis.call('HGET', OWNER, i)
  if not owner then return fail('STALE', i, g, cur) end
  return nil, m, owner
end
""".replace("@LAYOUT@", LAYOUT).replace("@MAX_GENERATION@", str(MAX_GENERATION)).replace(
    "@INDEX_LIMIT@", str(INDEX_LIMIT)
)

_CLAIM = """
-- Make room for n more slots in use, growing the pool as its config says. Returns META's fields
-- {layout, incarnation, capacity (after growth, a number), hwm, max_capacity, growth, growth_value,
-- in_use, peak, total_allocations, epoch, floor}, or nil and the error reply when the room is not
-- there; a refused request changes nothing but counters. Room is counted in slots in use (held by
-- clients, or queued in channels, where an item holds no index): there are always at least as many
-- free indices (the free list, and those from hwm up to the capacity) as that leaves room.
-- grow_from/grow_by: a custom growth amount the client computed, and from which capacity (-1: none).
local function room(n, grow_from, grow_by)
  local m = redis.call('HMGET', META, 'layout', 'incarnation', 'capacity', 'hwm', 'max_capacity', 'growth',
    'growth_value', 'in_use', 'peak', 'total_allocations', 'epoch', 'floor')
  local bad = not_a_pool(m[1], m[2])
  if bad then return nil, bad end
  local cap, limit = tonumber(m[3]), tonumber(m[5])
  if limit < 0 or limit > INDEX_LIMIT then limit = INDEX_LIMIT end
  local short = n - (cap - tonumber(m[8]))
  if short > 0 then
    -- Grow only when the whole request fits at max_capacity: a refused batch changes nothing.
    if limit - cap < short then
      redis.call('HINCRBY', META, 'allocation_failures', n)
      return nil, fail('EXHAUSTED', cap, m[8], n, limit)
    end
    local kind, value, grown, need_amount = m[6], tonumber(m[7]), 0, false
    while short > 0 do
      local add = 0
      if kind == 'linear' then
        add = value
      elseif kind == 'exponential' then
        add = math.max(1, math.floor(cap * value) - cap)
      elseif kind == 'custom' then
        -- The client computed fn(grow_from); it applies only if nobody grew the pool since.
        if grow_from ~= cap then
          need_amount = true
          break
        end
        add, grow_from = grow_by, -1
      end
      add = math.min(add, limit - cap)
      if add <= 0 then break end
      cap, short, grown = cap + add, short - add, grown + 1
    end
    if grown > 0 then
      redis.call('HSET', META, 'capacity', cap)
      redis.call('HINCRBY', META, 'growth_count', grown)
    end
    if need_amount then return nil, fail('GROW', cap) end
    if short > 0 then
      redis.call('HINCRBY', META, 'allocation_failures', n)
      return nil, fail('EXHAUSTED', cap, m[8], n, limit)
    end
  end
  m[3] = cap
  return m
end

-- Count n more slots in use in META (room(n) read m and made room for them), with `...`: more
-- META fields and values to write.
local function count_in(m, n, ...)
  local in_use = tonumber(m[8]) + n
  redis.call('HSET', META, 'in_use', in_use, 'peak', math.max(tonumber(m[9]), in_use),
    'total_allocations', tonumber(m[10]) + n, ...)
end

-- n free indices: from the free list first, then never used ones from `hwm` on (the caller made
-- sure they exist, and writes the new hwm). Returns them and the new hwm.
local function take_indices(n, hwm)
  local idx = redis.call('RPOP', FREE, n) or {}
  for k = #idx + 1, n do
    idx[k] = hwm
    hwm = hwm + 1
  end
  return idx, hwm
end

-- Take n slots (room, indices, counted in use): returns their indices and META's fields as room()
-- gives them, or the error reply (and nil). The caller gives them an owner and their data.
local function claim(n, grow_from, grow_by)
  local m, bad = room(n, grow_from, grow_by)
  if not m then return bad end
  local idx, hwm = take_indices(n, tonumber(m[4]))
  count_in(m, n, 'hwm', hwm)
  return idx, m
end
"""


# A mutating script's last key is its caller's record key (a "lane": one per client thread) and
# its last argument the request id, "<record ttl ms>/<sequence>". Before acting, the script looks
# for a record of that request: if the call already ran (its reply was lost to a timeout, a dropped
# connection, a failover of the client's socket), it returns the recorded reply and changes
# nothing. Otherwise it acts and records its reply for the ttl, so a retry with the same id is
# answered from the record: every call takes effect once however often it is sent.
# Refusals (error replies) are not recorded: they change nothing a retry could repeat.
_ONCE = """
local RECORD, REQUEST = KEYS[#KEYS], ARGV[#ARGV]
local record = redis.call('GET', RECORD)
if record then
  local r = cmsgpack.unpack(record)
  if r[1] == REQUEST then return r[2] end
end
local reply = body()
if type(reply) == 'table' and reply['err'] then return reply end
redis.call('SET', RECORD, cmsgpack.pack({REQUEST, reply, '@KIND@'}), 'PX', tonumber(string.match(REQUEST, '^(%d+)/')))
return reply
"""


def _once(name: str, flags: str, body: str, helpers: str = "") -> Script:
    """A mutating script that runs once per request id (see _ONCE); `helpers`: Lua functions it uses
    beyond the prelude's."""
    return Script(name, _lua(flags) + _PRELUDE + helpers + "local function body()\n" + body + "end\n"
                  + _ONCE.replace("@KIND@", name), once=True)


# ARGV: new incarnation, config (msgpack), capacity, slot_size, max_capacity (-1: none), growth kind,
# growth value.
CREATE = _once("create", "", """
local kind = redis.call('TYPE', META)['ok']
if kind ~= 'none' then
  if kind ~= 'hash' then return fail('FOREIGN', META, kind) end
  local layout = redis.call('HGET', META, 'layout')
  if layout == LAYOUT then return 'EXISTS' end
  if layout then return fail('LAYOUT', layout) end
  return fail('FOREIGN', META, 'hash')
end
local bad = foreign_leftover()
if bad then return bad end
bad = missing_meta()
if bad['err'] ~= 'FASTALLOC NOPOOL' then return bad end
redis.call('HSET', META, 'layout', LAYOUT, 'incarnation', INCARNATION, 'config', ARGV[2], 'capacity', ARGV[3],
  'slot_size', ARGV[4], 'max_capacity', ARGV[5], 'growth', ARGV[6], 'growth_value', ARGV[7], 'hwm', 0,
  'in_use', 0, 'peak', 0,
  'total_allocations', 0, 'total_deallocations', 0, 'allocation_failures', 0, 'growth_count', 0,
  'recoveries', 0, 'next_client', 0)
return 'CREATED'
""")

# ARGV[1] is unused. Returns {incarnation, config record (msgpack)}.
DESCRIBE = Script("describe", _lua(READ) + _PRELUDE + """
local kind = redis.call('TYPE', META)['ok']
if kind == 'none' then return missing_meta() end
if kind ~= 'hash' then return fail('FOREIGN', META, kind) end
local m = redis.call('HMGET', META, 'layout', 'incarnation', 'config')
if not m[1] then return fail('FOREIGN', META, 'hash') end
if m[1] ~= LAYOUT then return fail('LAYOUT', m[1]) end
return {m[2], m[3]}
""")

# Returns a new client id.
NEW_CLIENT = Script("new_client", _lua() + _PRELUDE + """
local m = redis.call('HMGET', META, 'layout', 'incarnation')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
return redis.call('HINCRBY', META, 'next_client', 1)
""")

# KEYS[8]: the client's lease. ARGV[2...]: client id, lease ttl in ms. Returns 0 once the pool is gone.
TOUCH = Script("touch", _lua(ALLOW_OOM) + _PRELUDE + """
local m = redis.call('HMGET', META, 'layout', 'incarnation')
if not_a_pool(m[1], m[2]) then return 0 end
redis.call('SET', KEYS[8], 1, 'PX', ARGV[3])
redis.call('SADD', CLIENTS, ARGV[2])
return 1
""")

# KEYS[8]: the client's lease. ARGV[2]: client id. A client that owns slots stays
# registered so that recover() finds them once its lease is gone.
GOODBYE = Script("goodbye", _lua(ALLOW_OOM) + _PRELUDE + """
local m = redis.call('HMGET', META, 'layout', 'incarnation')
if not_a_pool(m[1], m[2]) then return 0 end
redis.call('UNLINK', KEYS[8])
if redis.call('HEXISTS', OWNED, ARGV[2]) == 0 then redis.call('SREM', CLIENTS, ARGV[2]) end
return 1
""")

# ARGV[2...]: client id, count n, capacity the custom growth amount was computed from
# (-1: none), that amount, then n payloads (none: acquire, which returns the
# slots' previous payloads instead of writing new ones).
# Returns {capacity, index1, generation1, ...[, previous payloads...]}.
ALLOCATE = _once("allocate", "", """
local client, n = ARGV[2], tonumber(ARGV[3])
local idx, m = claim(n, tonumber(ARGV[4]), tonumber(ARGV[5]))
if not m then return idx end
local gens, floor = batched('HMGET', GEN, idx, CHUNK), tonumber(m[12]) or 1
local owner_args, reply = {}, {m[3]}
for k = 1, n do
  owner_args[2 * k - 1], owner_args[2 * k] = idx[k], client
  reply[2 * k], reply[2 * k + 1] = tonumber(idx[k]), tonumber(gens[k]) or floor
end
batched('HSET', OWNER, owner_args, 2 * CHUNK)
redis.call('HINCRBY', OWNED, client, n)
if #ARGV > 6 then
  local data_args = {}
  for k = 1, n do data_args[2 * k - 1], data_args[2 * k] = idx[k], ARGV[5 + k] end
  batched('HSET', DATA, data_args, 2 * CHUNK)
else
  local previous = batched('HMGET', DATA, idx, CHUNK)
  for k = 1, n do reply[#reply + 1] = previous[k] end
end
return reply
""", _CLAIM)

# ARGV[2...]: index1, generation1, index2, generation2, ... All are checked before
# any is freed: one bad handle releases nothing. Returns the count released.
RELEASE = _once("release", ALLOW_OOM, """
local m = redis.call('HMGET', META, 'layout', 'incarnation', 'capacity', 'in_use', 'total_deallocations', 'floor',
  'max_gen')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
local cap, n, idx = tonumber(m[3]), (#ARGV - 2) / 2, {}
for k = 1, n do
  idx[k] = ARGV[2 * k]
  if tonumber(idx[k]) >= cap then return fail('INVALID', idx[k], ARGV[2 * k + 1], cap) end
end
local gens = batched('HMGET', GEN, idx, CHUNK)
local owners = batched('HMGET', OWNER, idx, CHUNK)
local seen, per_owner, floor = {}, {}, tonumber(m[6]) or 1
for k = 1, n do
  local i, g, cur = idx[k], tonumber(ARGV[2 * k + 1]), tonumber(gens[k]) or floor
  if g < floor then return fail('LOST', i, g, floor) end
  if g ~= cur or not owners[k] or seen[i] then return fail('STALE', i, g, cur) end
  seen[i] = true
  per_owner[owners[k]] = (per_owner[owners[k]] or 0) + 1
end
free_slots(idx, gens, floor, tonumber(m[7]) or 1,
  {'in_use', tonumber(m[4]) - n, 'total_deallocations', tonumber(m[5]) + n})
for owner, count in pairs(per_owner) do
  if redis.call('HINCRBY', OWNED, owner, -count) <= 0 then redis.call('HDEL', OWNED, owner) end
end
return n
""")

# ARGV[2...]: index, generation. Returns the payload.
GET = Script("get", _lua(READ) + _PRELUDE + """
local bad = check_handle(ARGV[2], ARGV[3])
if bad then return bad end
local payload = redis.call('HGET', DATA, ARGV[2])
if not payload then return fail('EMPTY', ARGV[2]) end
return payload
""")

# ARGV[2...]: index, generation, payload.
SET = _once("set", "", """
local bad = check_handle(ARGV[2], ARGV[3])
if bad then return bad end
redis.call('HSET', DATA, ARGV[2], ARGV[4])
return 1
""")

STATISTICS_FIELDS = (
    "capacity", "in_use", "peak", "total_allocations", "total_deallocations",
    "allocation_failures", "growth_count", "recoveries",
)

# Returns the counters named by STATISTICS_FIELDS, in that order.
STATISTICS = Script("statistics", _lua(READ) + _PRELUDE + """
local m = redis.call('HMGET', META, 'layout', 'incarnation', @FIELDS@)
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
local out = {}
for k = 3, #m do out[k - 2] = tonumber(m[k]) or 0 end
return out
""".replace("@FIELDS@", ", ".join(f"'{f}'" for f in STATISTICS_FIELDS)))

RESET_STATISTICS = Script("reset_statistics", _lua() + _PRELUDE + """
local m = redis.call('HMGET', META, 'layout', 'incarnation', 'in_use')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
redis.call('HSET', META, 'peak', m[3], 'total_allocations', 0, 'total_deallocations', 0,
  'allocation_failures', 0, 'growth_count', 0, 'recoveries', 0)
return 1
""")

# ARGV[2]: 'keep' or 'reclaim'. KEYS[8...]: the leases of the clients in ARGV[3...].
# Returns {orphans kept, 0, dead client ids...}. Dead clients that own nothing leave the
# registry; under 'reclaim' the client then frees the dead ones' slots by RECLAIM steps.
RECOVER = Script("recover", _lua(ALLOW_OOM) + _PRELUDE + """
local m = redis.call('HMGET', META, 'layout', 'incarnation')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
local reclaim, dead = ARGV[2] == 'reclaim', {}
for k = 3, #ARGV do
  if redis.call('EXISTS', KEYS[5 + k]) == 0 then dead[#dead + 1] = ARGV[k] end
end
local kept = 0
for _, c in ipairs(dead) do
  local owned = tonumber(redis.call('HGET', OWNED, c)) or 0
  -- A dead client that owns slots stays registered, so a later reclaim (or this one's steps) finds them.
  if owned == 0 then redis.call('SREM', CLIENTS, c) end
  if not reclaim then kept = kept + owned end
end
local reply = {kept, 0}
for _, c in ipairs(dead) do reply[#reply + 1] = c end
return reply
""")

# One step of a reclaim: frees the slots of dead clients among the next ~STEP entries of the owner
# hash (HSCAN from cursor ARGV[2]), so no call holds the server for long however big the pool.
# ARGV[3]: slots freed by the earlier steps; ARGV[4...]: the dead clients, KEYS[8...] their leases
# (a client whose lease is back, alive after all, is left alone). The last step (next cursor 0)
# unregisters the dead and counts the recovery. Returns {next cursor, slots freed}.
RECLAIM = _once("reclaim", ALLOW_OOM, """
local m = redis.call('HMGET', META, 'layout', 'incarnation')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
local dead, any = {}, false
for k = 4, #ARGV - 1 do
  if redis.call('EXISTS', KEYS[4 + k]) == 0 then
    dead[ARGV[k]] = true
    any = true
  end
end
if not any then return {'0', 0} end
local scan = redis.call('HSCAN', OWNER, ARGV[2], 'COUNT', STEP)
local flat, idx, per_owner = scan[2], {}, {}
for k = 1, #flat, 2 do
  local owner = flat[k + 1]
  if dead[owner] then
    idx[#idx + 1] = flat[k]
    per_owner[owner] = (per_owner[owner] or 0) + 1
  end
end
if #idx > 0 then
  free_slots(idx, batched('HMGET', GEN, idx, CHUNK))
  redis.call('HINCRBY', META, 'in_use', -#idx)
  redis.call('HINCRBY', META, 'total_deallocations', #idx)
  for owner, count in pairs(per_owner) do redis.call('HINCRBY', OWNED, owner, -count) end
end
if scan[1] == '0' then
  for c in pairs(dead) do
    redis.call('HDEL', OWNED, c)
    redis.call('SREM', CLIENTS, c)
  end
  if tonumber(ARGV[3]) + #idx > 0 then redis.call('HINCRBY', META, 'recoveries', 1) end
end
return {scan[1], #idx}
""")

# KEYS[8...]: the leases of registered clients and the request records (see _ONCE). ARGV[1]: the incarnation to delete, or ''
# for whichever exists. Returns 1 if the pool was deleted.
UNLINK = Script("unlink", _lua(ALLOW_OOM) + _PRELUDE + """
local kind = redis.call('TYPE', META)['ok']
if kind == 'none' then
  -- A damaged pool (its meta hash evicted or deleted) is removed by name (INCARNATION ''),
  -- when what is left of it is of the types fastalloc-shm gives its keys.
  if INCARNATION ~= '' then return 0 end
  local bad = foreign_leftover()
  if bad then return bad end
  if redis.call('EXISTS', FREE, GEN, OWNER, DATA, OWNED, CLIENTS) == 0 then return 0 end
else
  if kind ~= 'hash' then return fail('FOREIGN', META, kind) end
  local m = redis.call('HMGET', META, 'layout', 'incarnation')
  if not m[1] then return fail('FOREIGN', META, 'hash') end
  if m[1] ~= LAYOUT then return fail('LAYOUT', m[1]) end
  if INCARNATION ~= '' and m[2] ~= INCARNATION then return 0 end
end
-- UNLINK, not DEL: the server frees big hashes in a background thread instead of blocking.
for first = 1, #KEYS, CHUNK do
  redis.call('UNLINK', unpack(KEYS, first, math.min(first + CHUNK - 1, #KEYS)))
end
return 1
""")

# KEYS[8]: the record key of an abandoned request; ARGV[2]: its id. A call whose reply never
# came gave up (RedisUnavailable): if the script ran, it recorded its reply under the request
# id; an allocation's slots, still owned by this live client whose caller holds no handle, are
# freed here. Deletes the record. Returns the count freed.
ABANDON = Script("abandon", _lua(ALLOW_OOM) + _PRELUDE + """
local m = redis.call('HMGET', META, 'layout', 'incarnation')
if not_a_pool(m[1], m[2]) then return 0 end
local record = redis.call('GET', KEYS[8])
if not record then return 0 end
local r = cmsgpack.unpack(record)
if r[1] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[8])
if r[3] ~= 'allocate' then return 0 end
local reply, idx, gens, per_owner, floor = r[2], {}, {}, {}, floor_of()
-- {capacity, index, generation, ...}, then (acquire) the previous payloads: strings, not numbers.
local k = 2
while type(reply[k]) == 'number' and type(reply[k + 1]) == 'number' do
  local i, g = reply[k], reply[k + 1]
  k = k + 2
  local owner = redis.call('HGET', OWNER, i)
  if owner and (tonumber(redis.call('HGET', GEN, i)) or floor) == g then
    idx[#idx + 1], gens[#gens + 1] = i, g
    per_owner[owner] = (per_owner[owner] or 0) + 1
  end
end
if #idx == 0 then return 0 end
free_slots(idx, gens)
redis.call('HINCRBY', META, 'in_use', -#idx)
redis.call('HINCRBY', META, 'total_deallocations', #idx)
for owner, count in pairs(per_owner) do
  if redis.call('HINCRBY', OWNED, owner, -count) <= 0 then redis.call('HDEL', OWNED, owner) end
end
return #idx
""")

# Run on every new connection of a client before anything else (and on attach): has this
# server lost writes the pool's last server acknowledged? META records the server (run id,
# replication id) that last served the pool and when it was seen. A different server means the
# process restarted (it started after that: its data came from a snapshot or an AOF that may
# miss acknowledged writes), or a replica took over (its previous replication id is the old
# server's: it may have missed writes), or the pool's slot moved to another cluster node (which
# loses nothing: adopted as is). On a loss the pool moves to a new epoch: every slot is free and
# starts at a generation above any given before (the highest recorded, plus a margin for
# those the lost writes gave, plus a little randomness against a second loss of the same
# moment), so each handle from before is stale (LOST) and none from after equals one of them.
# Returns {epoch, 1 if it began now}.
NEW_EPOCH = Script("new_epoch", _lua(ALLOW_OOM) + _PRELUDE + """
local m = redis.call('HMGET', META, 'layout', 'incarnation', 'run', 'replid', 'seen', 'max_gen', 'epoch')
if not m[1] or m[1] ~= LAYOUT then return {0, 0} end
local server = redis.call('INFO', 'server')
local run = string.match(server, 'run_id:(%x+)')
local epoch = tonumber(m[7]) or 0
if m[3] == run then return {epoch, 0} end
local replication = redis.call('INFO', 'replication')
if string.match(replication, 'role:(%a+)') ~= 'master' then return {epoch, 0} end
local replid = string.match(replication, 'master_replid:(%x+)')
local replid2 = string.match(replication, 'master_replid2:(%x+)')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- uptime is whole seconds and read off a cached clock: off by up to a second either way, so a
-- server started up to 2 s before the pool was last seen counts as restarted (the safe side).
local started = now - tonumber(string.match(server, 'uptime_in_seconds:(%d+)')) * 1000
local lost = m[3] ~= false and (started + 2000 > (tonumber(m[5]) or 0) or m[4] == replid2)
if lost then
  local margin = @MARGIN@
  local floor = math.max(floor_of(), tonumber(m[6]) or 1) + margin + tonumber(t[2]) % margin
  if floor > MAX_GENERATION - 4 * margin then floor = 1 + tonumber(t[2]) % margin end
  redis.call('UNLINK', FREE, GEN, OWNER, DATA, OWNED)
  epoch = epoch + 1
  redis.call('HSET', META, 'floor', floor, 'max_gen', floor, 'epoch', epoch, 'hwm', 0, 'in_use', 0,
    'lost_at', now)
end
redis.call('HSET', META, 'run', run, 'replid', replid, 'seen', now)
return {epoch, lost and 1 or 0}
""".replace("@MARGIN@", str(EPOCH_MARGIN)))


# -- channels (see _redis_channel) ----------------------------------------------------------------

# Channels a pool can have, as in shared memory.
MAX_CHANNELS = 64

# Every channel script gets the pool's keys, then KEYS[8] the channel table and KEYS[9] the taken
# slots, then (but CHANNEL_OPEN) the keys of one or more channels, three each (queue_keys).
# A script's work grows with its batch: a put of n items is one RPUSH of n payloads and a get one
# LPOP of up to n, besides a fixed handful of calls (request record, META, counters, wake-ups);
# nothing per item but in get_handle, put_handle and a requeue, which move one slot each.
_CHANNELS = """
local CHANNELS, TAKEN = KEYS[8], KEYS[9]
local MAX_CHANNELS = @MAX_CHANNELS@
-- Wake tokens nobody took vanish after this long (ms): they only cost a waiter a spurious wake-up.
local WAKE_TTL = 10000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Is channel ch's content of the pool's current epoch (`epoch`: META's, false before the first
-- loss)? After the server lost writes (NEW_EPOCH freed every slot and counted none in use), what
-- a channel still lists is not counted in the pool.
local function is_current(ch, epoch)
  return (redis.call('HGET', CHANNELS, ch .. ':epoch') or '0') == (epoch or '0')
end

-- Empty channel ch if the server lost writes since it was last used (see is_current).
local function make_current(ch, epoch, list, wake, waiters)
  if not is_current(ch, epoch) then
    redis.call('UNLINK', list, wake, waiters)
    redis.call('HSET', CHANNELS, ch .. ':epoch', epoch or '0')
  end
end

-- After `count` items arrived: leave a token for each consumer waiting (up to count), minus the
-- tokens already there. A consumer registers as waiting in the same script that found the
-- channel empty, so no put falls between its look and its wait: no wake-up is lost.
local function wake_waiters(count, wake, waiters)
  if redis.call('ZCARD', waiters) == 0 then return end
  local want = math.min(count, redis.call('ZCOUNT', waiters, now_ms(), '+inf')) - redis.call('LLEN', wake)
  if want <= 0 then return end
  local tokens = {}
  for k = 1, want do tokens[k] = 1 end
  batched('RPUSH', wake, tokens, CHUNK)
  redis.call('PEXPIRE', wake, WAKE_TTL)
end

-- Slot i, held by `owner` at generation g, becomes a queued item: its index goes back to the free
-- list under the next generation (every handle to it turns stale), its owner owns one fewer. It
-- stays counted in use: the item the caller queues is that slot now. `floor`, `top`: META's floor
-- and max_gen (as numbers); returns the new max_gen.
local function queue_slot(i, g, owner, floor, top)
  local next_g = next_generation(g, floor)
  redis.call('HSET', GEN, i, next_g)
  if next_g > top then
    top = next_g
    redis.call('HSET', META, 'max_gen', top)
  end
  redis.call('HDEL', OWNER, i)
  if redis.call('HINCRBY', OWNED, owner, -1) <= 0 then redis.call('HDEL', OWNED, owner) end
  redis.call('RPUSH', FREE, i)
  return top
end
""".replace("@MAX_CHANNELS@", str(MAX_CHANNELS))


def _channel_once(name: str, flags: str, body: str, helpers: str = "") -> Script:
    return _once(name, flags, body, _CHANNELS + helpers)


# ARGV[2]: the channel's name. Returns its number (a new one if the pool had none of that name).
CHANNEL_OPEN = _channel_once("channel_open", "", """
local m = redis.call('HMGET', META, 'layout', 'incarnation', 'epoch')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
local found = redis.call('HGET', CHANNELS, '=' .. ARGV[2])
if found then return tonumber(found) end
local count = tonumber(redis.call('HGET', CHANNELS, '#count')) or 0
if count >= MAX_CHANNELS then return fail('CHANNELS', count) end
redis.call('HSET', CHANNELS, '=' .. ARGV[2], count, '#count', count + 1, count .. ':name', ARGV[2],
  count .. ':puts', 0, count .. ':gets', 0, count .. ':requeued', 0, count .. ':epoch', m[3] or '0')
return count
""")

# KEYS[10..12]: the channel's. ARGV[2...]: channel number, count n, capacity the custom growth
# amount was computed from (-1: none), that amount, then n payloads. Makes room for n slots (all
# or none, growing as allocate does), counts them in use and queues the payloads at the tail.
# Returns n.
CHANNEL_PUT = _channel_once("channel_put", "", """
local LIST, WAKE, WAITERS = KEYS[10], KEYS[11], KEYS[12]
local ch, n = ARGV[2], tonumber(ARGV[3])
local m, bad = room(n, tonumber(ARGV[4]), tonumber(ARGV[5]))
if not m then return bad end
count_in(m, n)
make_current(ch, m[11], LIST, WAKE, WAITERS)
for first = 6, 5 + n, CHUNK do
  redis.call('RPUSH', LIST, unpack(ARGV, first, math.min(first + CHUNK - 1, 5 + n)))
end
redis.call('HINCRBY', CHANNELS, ch .. ':puts', n)
wake_waiters(n, WAKE, WAITERS)
return n
""", _CLAIM)

# KEYS[10..12]: the channel's. ARGV[2...]: channel number, index, generation. Queues an allocated
# slot's payload at the tail (the client sends no data) and frees its index under its next
# generation: the handle given is stale from now on.
CHANNEL_PUT_HANDLE = _channel_once("channel_put_handle", "", """
local LIST, WAKE, WAITERS = KEYS[10], KEYS[11], KEYS[12]
local ch, i = ARGV[2], ARGV[3]
local bad, m, owner = check_handle(i, ARGV[4])
if bad then return bad end
local payload = redis.call('HGET', DATA, i)
if not payload then return fail('EMPTY', i) end
make_current(ch, m[5], LIST, WAKE, WAITERS)
queue_slot(i, tonumber(ARGV[4]), owner, m[4], tonumber(m[6]) or 1)
redis.call('RPUSH', LIST, payload)
redis.call('HINCRBY', CHANNELS, ch .. ':puts', 1)
wake_waiters(1, WAKE, WAITERS)
return 1
""")

# KEYS[10..12]: the channel's. ARGV[2...]: channel number, most items to take, 'value' or 'handle',
# client id, waiter ('' none), its wait in ms. Takes up to that many items from the head:
# 'value' counts them out of the slots in use and returns their payloads; 'handle' gives each a
# free index (its put made room for it), stores its payload there and hands the slot to the client
# (recorded in TAKEN, for a requeue if its lease expires), and returns {index, generation, ...}.
# Finding none, returns {} and registers the waiter, if any, as waiting that long.
CHANNEL_GET = _channel_once("channel_get", ALLOW_OOM, """
local LIST, WAKE, WAITERS = KEYS[10], KEYS[11], KEYS[12]
local ch, most, client, waiter = ARGV[2], tonumber(ARGV[3]), ARGV[5], ARGV[6]
local m = redis.call('HMGET', META, 'layout', 'incarnation', 'in_use', 'total_deallocations', 'epoch', 'hwm',
  'floor')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
make_current(ch, m[5], LIST, WAKE, WAITERS)
local items = redis.call('LPOP', LIST, most)
if not items then
  if waiter ~= '' then
    local now = now_ms()
    redis.call('ZREMRANGEBYSCORE', WAITERS, '-inf', now)
    redis.call('ZADD', WAITERS, now + tonumber(ARGV[7]), waiter)
  end
  return {}
end
if waiter ~= '' then redis.call('ZREM', WAITERS, waiter) end
local n = #items
redis.call('HINCRBY', CHANNELS, ch .. ':gets', n)
if ARGV[4] == 'value' then
  redis.call('HSET', META, 'in_use', tonumber(m[3]) - n, 'total_deallocations', tonumber(m[4]) + n)
  return items
end
local idx, hwm = take_indices(n, tonumber(m[6]))
if hwm ~= tonumber(m[6]) then redis.call('HSET', META, 'hwm', hwm) end
local gens = batched('HMGET', GEN, idx, CHUNK)
local floor, reply, owner_args, data_args, taken_args = tonumber(m[7]) or 1, {}, {}, {}, {}
for k = 1, n do
  local g = tonumber(gens[k]) or floor
  reply[2 * k - 1], reply[2 * k] = tonumber(idx[k]), g
  owner_args[2 * k - 1], owner_args[2 * k] = idx[k], client
  data_args[2 * k - 1], data_args[2 * k] = idx[k], items[k]
  taken_args[2 * k - 1], taken_args[2 * k] = idx[k], client .. ' ' .. g .. ' ' .. ch
end
batched('HSET', OWNER, owner_args, 2 * CHUNK)
batched('HSET', DATA, data_args, 2 * CHUNK)
batched('HSET', TAKEN, taken_args, 2 * CHUNK)
redis.call('HINCRBY', OWNED, client, n)
return reply
""", _CLAIM)

# KEYS[10..12]: the channel's. ARGV[2...]: channel number, waiter, its wait in ms. For a waiter
# that takes nothing itself (an asyncio loop's helper): the channel's length if it has items,
# else 0, registering the waiter. Safe to send again as it is.
CHANNEL_WAIT = Script("channel_wait", _lua() + _PRELUDE + _CHANNELS + """
local LIST, WAKE, WAITERS = KEYS[10], KEYS[11], KEYS[12]
local m = redis.call('HMGET', META, 'layout', 'incarnation', 'epoch')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
make_current(ARGV[2], m[3], LIST, WAKE, WAITERS)
local length = redis.call('LLEN', LIST)
if length > 0 then return length end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', WAITERS, '-inf', now)
redis.call('ZADD', WAITERS, now + tonumber(ARGV[4]), ARGV[3])
return 0
""")

# KEYS[10...]: three per channel of ARGV[2...] (channel numbers). Returns per channel
# {length, puts, gets, requeued, waiting}, flattened.
CHANNEL_STATISTICS = Script("channel_statistics", _lua(READ) + _PRELUDE + _CHANNELS + """
local m = redis.call('HMGET', META, 'layout', 'incarnation', 'epoch')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
local out, now = {}, now_ms()
for k = 2, #ARGV do
  local ch, base = ARGV[k], 10 + 3 * (k - 2)
  local c = redis.call('HMGET', CHANNELS, ch .. ':puts', ch .. ':gets', ch .. ':requeued')
  local length = 0
  if is_current(ch, m[3]) then length = redis.call('LLEN', KEYS[base]) end
  for _, v in ipairs({length, tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0,
                      redis.call('ZCOUNT', KEYS[base + 2], now, '+inf')}) do out[#out + 1] = v end
end
return out
""")

# ARGV[2...]: channel numbers (KEYS[10...]: three per channel). Zeroes their counters.
CHANNEL_RESET_STATISTICS = Script("channel_reset_statistics", _lua() + _PRELUDE + _CHANNELS + """
local m = redis.call('HMGET', META, 'layout', 'incarnation')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
for k = 2, #ARGV do
  redis.call('HSET', CHANNELS, ARGV[k] .. ':puts', 0, ARGV[k] .. ':gets', 0, ARGV[k] .. ':requeued', 0)
end
return 1
""")

# One step of a requeue: puts the slots that clients whose lease expired took from a channel
# (get_handle) and still own back at the head of that channel (their payloads; their indices
# freed under the next generation), among the next ~STEP entries of TAKEN (HSCAN from cursor
# ARGV[2]); drops the entries that no longer hold (released, put on). ARGV[3]: the number of
# channels (KEYS[10...]: three per channel, in number order, then the leases of the clients in
# ARGV[4...]). Returns {next cursor, slots requeued}.
CHANNEL_REQUEUE = _channel_once("channel_requeue", ALLOW_OOM, """
local m = redis.call('HMGET', META, 'layout', 'incarnation', 'epoch', 'floor', 'max_gen')
local bad = not_a_pool(m[1], m[2])
if bad then return bad end
local channels, dead = tonumber(ARGV[3]), {}
for k = 4, #ARGV - 1 do
  if redis.call('EXISTS', KEYS[10 + 3 * channels + k - 4]) == 0 then dead[ARGV[k]] = true end
end
local scan = redis.call('HSCAN', TAKEN, ARGV[2], 'COUNT', STEP)
local flat, floor, top, requeued, gone = scan[2], tonumber(m[4]) or 1, tonumber(m[5]) or 1, 0, {}
for k = 1, #flat, 2 do
  local i = flat[k]
  local client, g, ch = string.match(flat[k + 1], '^(%S+) (%d+) (%d+)$')
  g, ch = tonumber(g), tonumber(ch)
  local holds = client and g >= floor and redis.call('HGET', OWNER, i) == client
    and (tonumber(redis.call('HGET', GEN, i)) or floor) == g
  local payload = holds and dead[client] and ch < channels and redis.call('HGET', DATA, i)
  if not holds then
    gone[#gone + 1] = i
  elseif payload then  -- (a channel opened since the caller counted: next walk)
    local base = 10 + 3 * ch
    make_current(ch, m[3], KEYS[base], KEYS[base + 1], KEYS[base + 2])
    top = queue_slot(i, g, client, floor, top)
    redis.call('LPUSH', KEYS[base], payload)
    redis.call('HINCRBY', CHANNELS, ch .. ':requeued', 1)
    wake_waiters(1, KEYS[base + 1], KEYS[base + 2])
    gone[#gone + 1] = i
    requeued = requeued + 1
  end
end
if #gone > 0 then batched('HDEL', TAKEN, gone, CHUNK) end
return {scan[1], requeued}
""")
