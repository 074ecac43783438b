"""The Lua scripts behind :class:`~autogen_capacity.ledger.redis.RedisLedger`.

Each script runs atomically on the server and reads time from Redis' own clock (``TIME``), so hosts with
skewed clocks agree. Scripts that call ``TIME`` and then write rely on effect replication, the default since
Redis 5. Every script touches the keys of one ledger key only, and those share one hash tag, so a Redis
Cluster keeps them on one slot.

Data per ledger key ``k`` (``{ns}:{{k}}:<part>``):

* ``slots``: sorted set of lease ids scored by expiry (server seconds); expired members are removed
  before counting, so a crashed holder's slots come back on their own.
* ``released``: sorted set of recently released lease ids and departed (or shed) waiter ids, scored by expiry, so
  that a renewal already on its way cannot bring a released lease or a departed waiter back.
* ``waiters``: sorted set of waiter ids scored by expiry, counted against ``max_queue``.
* ``tokens``: sorted set of ``<id>:<tokens>`` scored by the time they were recorded (the 60 s window).
* ``meta``: hash with ``ex`` (exhausted until), ``cd`` (cooling down until), ``rl``/``rt`` (rpm bucket
  level and when it was last leaked), ``acq`` (leases granted) and ``svc`` (the mean seconds a lease is held);
  for an adaptive key, ``lv`` (its live limit, which every script enforces), ``lceil`` (the ceiling it was
  learned under), ``lc`` (when it last moved, or was first used), ``or`` (the overload rate) and ``ls``/``lver``
  (the learning state, :meth:`~autogen_capacity.adaptive.LiveLimit.to_state`, and its version: written only by
  ``LEARN``, the compare-and-set script ``ledger/_redis_live.py`` runs).
* ``answers``: for an adaptive key, the answers filed by a process that lost a race to write the learning state,
  not learned yet (``LEARN``).
* ``learned``: for an adaptive key, sorted set of recent ``LEARN`` request ids (with what each did) scored by
  expiry, so that a call sent again after its reply was lost does not learn its answer twice.
* ``epoch``: hash with ``id``, ``created`` and ``fence``, never expired. It is created when missing: on the
  key's first use, or after Redis lost the key's data. A caller that knew an older epoch proves the data was
  lost and arms the fence: until ``created + fence_s``, a key with ``max_concurrent`` admits nobody, so that
  every live holder can put its leases back first (reported as a cooldown).

Limits arrive as ``ARGV`` strings (:func:`limit_args`: max_concurrent, rpm, tpm and an adaptive key's start); an
empty string means unbounded (or not adaptive). Floats go back as strings (Redis would truncate Lua numbers to
integers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..contracts import AgentCapacity
from ._redis_lua import PRELUDE
from ._redis_wakeups import text
from .base import BlockReason, KeyStatus, KeyUsage

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["Scripts", "register"]


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
-- ('1' when the caller holds leases on the key), waiter id ('' when not in the line), idle only ('1': admit only
-- when the key has room for anything, headroom 1; else its status, with reason '').
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
if reason or (ARGV[11] == '1' and headroom < 1) then return {0, fmt(headroom), reason or '', fmt(ready_in), id} end
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
keep_until(KEYS[2], ARGV[1], now, ARGV[2])
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
-- then for each waiter: its id, its rank less now (seconds), its class lift.
-- Pushes every held lease's and waiter's expiry to now + ttl. A held lease missing from the slots (Redis
-- lost its data, or this process stalled past the ttl) is put back unless it was released meanwhile: the
-- work is still in flight. So is a waiter missing from the line, with its rank and class, unless it left or was
-- shed meanwhile: it still waits. Returns {epoch, ids put back...}.
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
for i = first + leases, #ARGV, 3 do
  local waiter = ARGV[i]
  if redis.call('ZSCORE', KEYS[3], waiter) then
    redis.call('ZADD', KEYS[3], expiry, waiter)
  elseif not redis.call('ZSCORE', KEYS[2], waiter) then
    redis.call('ZADD', KEYS[3], expiry, waiter)
    redis.call('ZADD', KEYS[5], now + tonumber(ARGV[i + 1]), waiter)
    redis.call('HSET', KEYS[5] .. ':class', waiter, ARGV[i + 2])
  end
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
-- KEYS: slots, meta, tokens, waiters, epoch, rank, released. ARGV: waiter id, ttl, limits (4), max_queue, known
-- epoch, fence_s, class lift (0 critical, 1 default, 2 sheddable), aging_s, channel, class, ledger key.
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
  keep_until(KEYS[7], worst, now, ARGV[2])
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

LEAVE_QUEUE = (
    PRELUDE
    + """
-- KEYS: waiters, rank, slots, meta, released. ARGV: waiter id, channel, ledger key, how it leaves ('pass': with a
-- wake-up of the key unused; 'take': to take the key's slot itself; ''), limits (4), ttl. Returns 1 when the
-- waiter was queued. It is remembered as gone for a ttl, so that a renewal on its way does not put it back.
-- The key is published again, so that every process wakes its next waiter, when others still wait and the waiter
-- leaves a wake-up unused, or a free slot was kept for it that it does not take (it was ranked ahead of a waiter
-- that such a slot now admits: that one may have been woken by the release and refused because of it, and nothing
-- else would wake it).
local now = clock()
local mine = redis.call('ZSCORE', KEYS[2], ARGV[1])
local before = mine and redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. mine) or 0
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2] .. ':class', ARGV[1])
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
keep_until(KEYS[5], ARGV[1], now, ARGV[9])
local others = redis.call('ZCARD', KEYS[2])
local pass = removed == 1 and ARGV[4] == 'pass'
if mine and ARGV[4] == '' then
  local mc = limits(KEYS[4], now, ARGV, 5)
  if mc then
    local free = mc - in_flight(KEYS[3], now)
    pass = before < free and others >= free
  end
end
if pass and others > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return removed
"""
)

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

LEARN = (
    PRELUDE
    + """
-- KEYS: meta, answers, learned. ARGV: the state's version the caller learned on ('' when none), the new state, live
-- limit, ceiling, overload rate, '1' when the limit moved, answers the caller learned from the list, its own answer
-- ('' when it is in the list already), channel, ledger key, slots the move added (each wakes a waiter in every
-- process), request id, seconds to remember it. Commits when the version is the caller's and it learned every
-- answer in the list: returns {1, new version}. Else files the caller's answer in the list and returns
-- {0, version, state, answers...}. Idempotent for one request id (``learned`` remembers what each request did): a
-- retried call whose first run committed returns {1, ''} (the version is not the caller's to keep any more), one
-- whose first run filed the answer does not file it twice.
local now = clock()
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZSCORE', KEYS[3], ARGV[12] .. ':c') then return {1, ''} end
local function remember(what) keep_until(KEYS[3], ARGV[12] .. what, now, ARGV[13]) end
local cur = redis.call('HMGET', KEYS[1], 'lver', 'ls')
local version = cur[1] or ''
if version ~= ARGV[1] or redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[7]) then
  if ARGV[8] ~= '' and not redis.call('ZSCORE', KEYS[3], ARGV[12] .. ':f') then
    redis.call('RPUSH', KEYS[2], ARGV[8])
    redis.call('PEXPIRE', KEYS[2], KEEP_META * 1000)
    remember(':f')
  end
  local found = {0, version, cur[2] or ''}
  for _, answer in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do table.insert(found, answer) end
  return found
end
version = tostring((tonumber(version) or 0) + 1)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'lver', version, 'ls', ARGV[2], 'lv', ARGV[3], 'lceil', ARGV[4], 'or', ARGV[5])
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'lc', fmt(now)) end
redis.call('HSETNX', KEYS[1], 'lc', fmt(now))
redis.call('HSETNX', KEYS[1], 'acq', 0)
keep_meta(KEYS[1], now, 0)
remember(':c')
for _ = 1, tonumber(ARGV[11]) do redis.call('PUBLISH', ARGV[9], ARGV[10]) end
return {1, version}
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
    learn: AsyncScript


def register(client: Redis) -> Scripts:
    """Register every script on ``client``."""
    sources = (ACQUIRE, RELEASE, RENEW, STATUS, ENTER_QUEUE, LEAVE_QUEUE, RECORD_TOKENS, SET_UNTIL, USAGE, LEARN)
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


def key_usage_of(reply: Sequence[object]) -> KeyUsage:
    """A key's usage from the usage script's reply."""
    live, ceiling, steady, rate = (text(v) for v in reply[6:10])
    return KeyUsage(
        int(text(reply[0])),
        int(text(reply[1])),
        int(text(reply[2])),
        int(text(reply[3])),
        float(text(reply[4])),
        float(text(reply[5])),
        live_limit=int(live) if live else None,
        ceiling=int(ceiling) if ceiling else None,
        limit_steady_for=float(steady) if steady else None,
        overload_rate=float(rate) if rate else 0.0,
    )
