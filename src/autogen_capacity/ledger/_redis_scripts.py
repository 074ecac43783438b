"""The Lua scripts behind :class:`~autogen_capacity.ledger.redis.RedisLedger`.

Each script runs atomically on the server and reads time from Redis' own clock (``TIME``), so hosts with
skewed clocks agree. Scripts that call ``TIME`` and then write rely on effect replication, the default since
Redis 5. Every script touches the keys of one ledger key only, and those share one hash tag, so a Redis
Cluster keeps them on one slot.

Data per ledger key ``k`` (``{ns}:{{k}}:<part>``):

* ``slots``: sorted set of lease ids scored by expiry (server seconds); expired members are removed
  before counting, so a crashed holder's slots come back on their own.
* ``released``: sorted set of recently released lease ids (scored by expiry), so that a renewal already
  on its way cannot bring a released lease back.
* ``waiters``: sorted set of waiter ids scored by expiry, counted against ``max_queue``.
* ``tokens``: sorted set of ``<id>:<tokens>`` scored by the time they were recorded (the 60 s window).
* ``meta``: hash with ``ex`` (exhausted until), ``cd`` (cooling down until), ``rl``/``rt`` (rpm bucket
  level and when it was last leaked), ``acq`` (leases granted) and ``svc`` (the mean seconds a lease is held);
  for an adaptive key, ``lv`` (its live limit, which every script enforces), ``lceil`` (the ceiling it was
  learned under), ``lc`` (when it last moved, or was first used), ``or`` (the overload rate) and ``ls``/``lver``
  (the learning state, :meth:`~autogen_capacity.adaptive.LiveLimit.to_state`, and its version: written only by
  ``ledger/_redis_live.py``'s compare-and-set script).
* ``epoch``: hash with ``id``, ``created`` and ``fence``, never expired. It is created when missing: on the
  key's first use, or after Redis lost the key's data. A caller that knew an older epoch proves the data was
  lost and arms the fence: until ``created + fence_s``, a key with ``max_concurrent`` admits nobody, so that
  every live holder can put its leases back first (reported as a cooldown).

Limits arrive as ``ARGV`` strings (:func:`limit_args`: max_concurrent, rpm, tpm and an adaptive key's start); an
empty string means unbounded (or not adaptive). Floats go back as strings (Redis would
truncate Lua numbers to integers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..contracts import AgentCapacity
from ._redis_wakeups import text
from .base import BlockReason, KeyStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["Scripts", "register"]

PRELUDE = """
local TOKEN_WINDOW = 60
local KEEP_META = 86400

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function opt(v)
  if v == nil or v == false or v == '' then return nil end
  return tonumber(v)
end

local function fmt(x)
  if x == nil then return '' end
  return string.format('%.17g', x)
end

-- Expire a sorted set scored by expiry once its last member has expired.
local function keep_zset(key, now)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIRE', key, math.max(math.ceil((tonumber(top[2]) - now) * 1000), 0) + 1000)
  end
end

local function keep_meta(meta, now, at_least)
  local ex = opt(redis.call('HGET', meta, 'ex')) or 0
  local cd = opt(redis.call('HGET', meta, 'cd')) or 0
  local keep = math.max(KEEP_META, ex - now, cd - now, at_least or 0)
  redis.call('PEXPIRE', meta, math.ceil(keep * 1000))
end

-- The rpm bucket's level now: it leaks rpm / 60 a second (ledger/_limits.py: leaked).
local function bucket_level(meta, now, rpm)
  local level = opt(redis.call('HGET', meta, 'rl')) or 0
  local at = opt(redis.call('HGET', meta, 'rt')) or now
  if level > 0 and now > at then
    level = math.max(level - (now - at) * rpm / 60, 0)
  end
  return level
end

-- The key's limits from ARGV[i..i+3] (limit_args): max_concurrent (an adaptive key's live limit under it, set
-- to its start at first use), rpm, tpm, and the adaptive key's overload rate (its headroom is discounted by it).
local function limits(meta, now, argv, i)
  local mc, start, rate = opt(argv[i]), opt(argv[i + 3]), nil
  if mc and start then
    local live = opt(redis.call('HGET', meta, 'lv'))
    if not live then
      live = start
      redis.call('HSET', meta, 'lv', live, 'lceil', mc, 'lc', fmt(now))
      redis.call('HSETNX', meta, 'acq', 0)
      keep_meta(meta, now, 0)
    end
    mc = math.min(mc, live)
    rate = opt(redis.call('HGET', meta, 'or'))
  end
  return mc, opt(argv[i + 1]), opt(argv[i + 2]), rate
end

local function in_flight(slots, now)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  return redis.call('ZCARD', slots)
end

-- Tokens in the sliding window, and seconds until the sum drops below tpm (oldest entries leave first).
local function window(tokens, now, tpm)
  redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now - TOKEN_WINDOW)
  local entries = redis.call('ZRANGE', tokens, 0, -1, 'WITHSCORES')
  local used = 0
  for i = 1, #entries, 2 do
    used = used + tonumber(string.match(entries[i], ':(%d+)$'))
  end
  if tpm == nil or used < tpm then return used, nil end
  local remaining = used
  for i = 1, #entries, 2 do
    remaining = remaining - tonumber(string.match(entries[i], ':(%d+)$'))
    if remaining < tpm then return used, tonumber(entries[i + 1]) + TOKEN_WINDOW - now end
  end
  return used, 0
end

-- The key's epoch id and fence. A missing epoch is created; a caller that knew another one arms its fence.
local function epoch(key, known, now, fence_s)
  local e = redis.call('HMGET', key, 'id', 'created', 'fence')
  local id, created, fence = e[1], opt(e[2]), opt(e[3]) or 0
  if not id then
    local t = redis.call('TIME')
    id, created = t[1] .. '.' .. t[2], now
    redis.call('HSET', key, 'id', id, 'created', fmt(now), 'fence', '0')
  end
  if known ~= '' and known ~= id and fence == 0 then
    fence = created + tonumber(fence_s)
    redis.call('HSET', key, 'fence', fmt(fence))
  end
  return id, fence
end

-- Drop the waiters whose process stopped renewing them from the key's line and its ranking.
local function prune(waiters, rank, now)
  local gone = redis.call('ZRANGEBYSCORE', waiters, '-inf', now)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now)
    redis.call('ZREM', rank, unpack(gone))
    redis.call('HDEL', rank .. ':class', unpack(gone))
  end
end

-- How many waiters a free slot is kept for before this caller: those ranked ahead of `waiter` (none for a
-- caller not in the line, which races for it as before).
local function ahead(rank, waiter)
  local mine = waiter ~= '' and redis.call('ZSCORE', rank, waiter)
  if mine then return redis.call('ZCOUNT', rank, '-inf', '(' .. mine) end
  return 0
end

-- Same order and arithmetic as InMemoryLedger._status: headroom, reason (nil: admits), ready_in. A fenced
-- key with slots (Redis lost its data a moment ago) is cooling down until its holders have put their leases
-- back.
local function status(slots, meta, tokens, now, mc, rpm, tpm, fence, kept, rate)
  local ex = opt(redis.call('HGET', meta, 'ex')) or 0
  if ex > now then return 0, 'exhausted', ex - now end
  local cd = opt(redis.call('HGET', meta, 'cd')) or 0
  if mc and fence > cd then cd = fence end
  if cd > now then return 0, 'cooldown', cd - now end
  local headroom = 1
  if mc then
    local free = mc - in_flight(slots, now) - (kept or 0)
    if free <= 0 then return 0, 'slots', nil end
    headroom = free / mc
  end
  if rpm then
    local burst = math.max(rpm, 1)
    local level = bucket_level(meta, now, rpm)
    if level + 1 > burst then return 0, 'rate', (level + 1 - burst) / (rpm / 60) end
    headroom = math.min(headroom, 1 - level / burst)
  end
  if tpm then
    local used, ready_in = window(tokens, now, tpm)
    if used >= tpm then return 0, 'tpm', ready_in end
    headroom = math.min(headroom, 1 - used / tpm)
  end
  if rate then headroom = headroom * (1 - rate) end
  return headroom, nil, nil
end
"""

STATUS = (
    PRELUDE
    + """
-- KEYS: slots, meta, tokens, epoch, waiters, rank. ARGV: limits (4), known epoch, fence_s, waiter id ('' when
-- the caller is not in the line).
-- Returns {headroom, reason, ready_in, epoch}: as the caller sees it (slots kept for waiters ranked ahead).
local now = clock()
local id, fence = epoch(KEYS[4], ARGV[5], now, ARGV[6])
prune(KEYS[5], KEYS[6], now)
local mc, rpm, tpm, rate = limits(KEYS[2], now, ARGV, 1)
local headroom, reason, ready_in = status(KEYS[1], KEYS[2], KEYS[3], now, mc, rpm, tpm, fence,
  ahead(KEYS[6], ARGV[7]), rate)
return {fmt(headroom), reason or '', fmt(ready_in), id}
"""
)

ACQUIRE = (
    PRELUDE
    + """
-- KEYS: slots, meta, tokens, epoch, waiters, rank. ARGV: lease id, ttl, limits (4), known epoch, fence_s, holding
-- ('1' when the caller holds leases on the key), waiter id ('' when not in the line).
-- A free slot is kept for the waiters ranked ahead of a caller in the line.
-- Returns {1, leases in flight on the key, now, epoch} when admitted, {-1, epoch} when the caller holds leases
-- under another epoch (it must put them back first), else {0, headroom, reason, ready_in, epoch}. Idempotent
-- for one lease id: a retried call whose first attempt was granted is granted again, without taking a second
-- slot.
local now = clock()
local id, fence = epoch(KEYS[4], ARGV[7], now, ARGV[8])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {1, redis.call('ZCARD', KEYS[1]), fmt(now), id} end
if ARGV[9] == '1' and ARGV[7] ~= id then return {-1, id} end
prune(KEYS[5], KEYS[6], now)
local mc, rpm, tpm, rate = limits(KEYS[2], now, ARGV, 3)
local headroom, reason, ready_in = status(KEYS[1], KEYS[2], KEYS[3], now, mc, rpm, tpm, fence,
  ahead(KEYS[6], ARGV[10]), rate)
if reason then return {0, fmt(headroom), reason, fmt(ready_in), id} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
keep_zset(KEYS[1], now)
local drain = 0
if rpm then
  local level = bucket_level(KEYS[2], now, rpm) + 1
  redis.call('HSET', KEYS[2], 'rl', level, 'rt', now)
  drain = level / (rpm / 60)
end
redis.call('HINCRBY', KEYS[2], 'acq', 1)
keep_meta(KEYS[2], now, drain)
return {1, redis.call('ZCARD', KEYS[1]), fmt(now), id}
"""
)

RELEASE = (
    PRELUDE
    + """
-- KEYS: slots, released, meta. ARGV: lease id, ttl, channel, ledger key, seconds held ('' when the lease did no
-- work), alpha. Returns {1 when the lease was held, the key's mean seconds a lease is held ('' when unknown)}:
-- an exponentially weighted mean over every process' releases (deadlines.ServiceTimes).
local now = clock()
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
keep_zset(KEYS[2], now)
redis.call('PUBLISH', ARGV[3], ARGV[4])
local mean = opt(redis.call('HGET', KEYS[3], 'svc'))
local held = opt(ARGV[5])
if removed == 1 and held then
  local alpha = tonumber(ARGV[6])
  if mean then mean = mean + alpha * (held - mean) else mean = held end
  redis.call('HSET', KEYS[3], 'svc', fmt(mean))
  redis.call('HSETNX', KEYS[3], 'acq', 0)
  keep_meta(KEYS[3], now, 0)
end
return {removed, fmt(mean)}
"""
)

RENEW = (
    PRELUDE
    + """
-- KEYS: slots, released, waiters, epoch, rank. ARGV: ttl, number of lease ids, known epoch, fence_s, lease ids...,
-- waiter ids...
-- Pushes every held lease's and waiter's expiry to now + ttl. A held lease missing from the slots (Redis
-- lost its data, or this process stalled past the ttl) is put back unless it was released meanwhile: the
-- work is still in flight. Returns {epoch, ids put back...}.
local now = clock()
local id = epoch(KEYS[4], ARGV[3], now, ARGV[4])
local expiry = now + tonumber(ARGV[1])
local leases = tonumber(ARGV[2])
local first = 5
local restored = {id}
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
for i = first, first - 1 + leases do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], expiry, id)
  elseif not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZADD', KEYS[1], expiry, id)
    table.insert(restored, id)
  end
end
if leases > 0 then keep_zset(KEYS[1], now) end
for i = first + leases, #ARGV do
  redis.call('ZADD', KEYS[3], 'XX', expiry, ARGV[i])
end
if #ARGV >= first + leases then
  keep_zset(KEYS[3], now)
  redis.call('PEXPIRE', KEYS[5], math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
  redis.call('PEXPIRE', KEYS[5] .. ':class', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return restored
"""
)

ENTER_QUEUE = (
    PRELUDE
    + """
-- KEYS: slots, meta, tokens, waiters, epoch, rank. ARGV: waiter id, ttl, limits (4), max_queue, known epoch,
-- fence_s, class lift (0 critical, 1 default, 2 sheddable), aging_s, channel, class, ledger key.
-- The rank is now + lift * aging_s: a waiter has the top rank from lift * aging_s after it came (priority.py's
-- aging bound), and is served before every waiter ranked after it, in any process. At max_queue, the youngest
-- waiter of the lowest class below the newcomer's is shed (told on the channel: 'shed <waiter id> <class> <key>').
-- Returns {queued, headroom, reason, ready_in, epoch, waiters ahead, mean seconds a lease is held ('' when
-- unknown), shed waiter id ('' when none), max_concurrent now ('' when unbounded)}; reason '' means the key
-- admits now. The waiter is queued whatever the status (its place is kept
-- until it leaves), unless max_queue waiters are queued already.
local now = clock()
local svc = redis.call('HGET', KEYS[2], 'svc') or ''
local id, fence = epoch(KEYS[5], ARGV[8], now, ARGV[9])
local classes = KEYS[6] .. ':class'
prune(KEYS[4], KEYS[6], now)
local lift = tonumber(ARGV[10])
local mc, rpm, tpm, rate = limits(KEYS[2], now, ARGV, 3)
local function answer(queued, shed)
  local before = ahead(KEYS[6], ARGV[1])
  local headroom, reason, ready_in = status(KEYS[1], KEYS[2], KEYS[3], now, mc, rpm, tpm, fence, before, rate)
  return {queued, fmt(headroom), reason or '', fmt(ready_in), id, before, svc, shed or '', fmt(mc)}
end
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then return answer(1) end
local max_queue = opt(ARGV[7])
local shed = nil
if max_queue and redis.call('ZCARD', KEYS[4]) >= max_queue then
  local worst, worst_lift, worst_rank = nil, lift, nil
  local entries = redis.call('HGETALL', classes)
  for i = 1, #entries, 2 do
    local l = tonumber(entries[i + 1])
    local r = tonumber(redis.call('ZSCORE', KEYS[6], entries[i]))
    if r and (l > worst_lift or (l == worst_lift and worst and r > worst_rank)) then
      worst, worst_lift, worst_rank = entries[i], l, r
    end
  end
  if not worst then return answer(0) end
  redis.call('ZREM', KEYS[4], worst)
  redis.call('ZREM', KEYS[6], worst)
  redis.call('HDEL', classes, worst)
  redis.call('PUBLISH', ARGV[12], 'shed ' .. worst .. ' ' .. ARGV[13] .. ' ' .. ARGV[14])
  shed = worst
end
local expiry = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[4], expiry, ARGV[1])
redis.call('ZADD', KEYS[6], now + lift * tonumber(ARGV[11]), ARGV[1])
redis.call('HSET', classes, ARGV[1], lift)
keep_zset(KEYS[4], now)
redis.call('PEXPIRE', KEYS[6], math.ceil(tonumber(ARGV[2]) * 1000) + 1000)
redis.call('PEXPIRE', classes, math.ceil(tonumber(ARGV[2]) * 1000) + 1000)
return answer(1, shed)
"""
)

LEAVE_QUEUE = """
-- KEYS: waiters, rank. ARGV: waiter id, channel ('' when nothing is to be passed on), ledger key. Returns 1 when
-- the waiter was queued. A wake-up the waiter did not use (a slot kept for it) is passed on to every process
-- by publishing the key again, when others still wait.
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2] .. ':class', ARGV[1])
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 and ARGV[2] ~= '' and redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return removed
"""

RECORD_TOKENS = (
    PRELUDE
    + """
-- KEYS: tokens, meta. ARGV: entry id, tokens.
local now = clock()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - TOKEN_WINDOW)
redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], (TOKEN_WINDOW + 1) * 1000)
redis.call('HSETNX', KEYS[2], 'acq', 0)
keep_meta(KEYS[2], now, 0)
return 1
"""
)

SET_UNTIL = (
    PRELUDE
    + """
-- KEYS: meta. ARGV: field ('cd' or 'ex'), seconds. Extends, never shortens.
local now = clock()
local until_ = now + tonumber(ARGV[2])
if until_ > (opt(redis.call('HGET', KEYS[1], ARGV[1])) or 0) then
  redis.call('HSET', KEYS[1], ARGV[1], until_)
end
redis.call('HSETNX', KEYS[1], 'acq', 0)
keep_meta(KEYS[1], now, 0)
return 1
"""
)

USAGE = (
    PRELUDE
    + """
-- KEYS: slots, meta, tokens, waiters. Returns {in_flight, waiting, acquired, tokens, cooldown, exhausted, live
-- limit, ceiling, seconds it has been steady, overload rate}: the last four '' for a key that is not adaptive.
local now = clock()
local held = in_flight(KEYS[1], now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local used = window(KEYS[3], now, nil)
local cd = opt(redis.call('HGET', KEYS[2], 'cd')) or 0
local ex = opt(redis.call('HGET', KEYS[2], 'ex')) or 0
local live = redis.call('HMGET', KEYS[2], 'lv', 'lceil', 'lc', 'or')
local steady = opt(live[3]) and math.max(now - opt(live[3]), 0)
return {held, redis.call('ZCARD', KEYS[4]), tonumber(redis.call('HGET', KEYS[2], 'acq') or 0), used,
  fmt(math.max(cd - now, 0)), fmt(math.max(ex - now, 0)), live[1] or '', live[2] or '', fmt(steady),
  live[4] or ''}
"""
)


class Scripts(NamedTuple):
    """The scripts, registered on one client (``EVALSHA``, loading a script again if the server lost it)."""

    acquire: AsyncScript
    release: AsyncScript
    renew: AsyncScript
    status: AsyncScript
    enter_queue: AsyncScript
    leave_queue: AsyncScript
    record_tokens: AsyncScript
    set_until: AsyncScript
    usage: AsyncScript


def register(client: Redis) -> Scripts:
    """Register every script on ``client``."""
    sources = (ACQUIRE, RELEASE, RENEW, STATUS, ENTER_QUEUE, LEAVE_QUEUE, RECORD_TOKENS, SET_UNTIL, USAGE)
    return Scripts(*(client.register_script(source) for source in sources))


REASONS: dict[str, BlockReason] = {r: r for r in ("slots", "rate", "tpm", "cooldown", "exhausted")}
"""A status script's reason, as the ledger protocol names it."""


def limit_args(capacity: AgentCapacity) -> list[str]:
    """A contract's limits as the scripts read them: max_concurrent, rpm, tpm, and where an adaptive key's live
    limit starts ('' when the key is not adaptive)."""
    start = None
    if capacity.adaptive and capacity.max_concurrent is not None:
        start = capacity.initial_concurrent or capacity.max_concurrent
    return [opt_arg(capacity.max_concurrent), opt_arg(capacity.rpm), opt_arg(capacity.tpm), opt_arg(start)]


def opt_arg(value: float | None) -> str:
    return "" if value is None else repr(value)


def key_status_of(reply: Sequence[object]) -> KeyStatus:
    headroom, reason, ready_in = (text(v) for v in reply)
    return KeyStatus(float(headroom), REASONS.get(reason), float(ready_in) if ready_in else None)
