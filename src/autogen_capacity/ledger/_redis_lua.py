"""The Lua functions every :class:`~autogen_capacity.RedisLedger` script starts with: Redis' clock, the key's
limits and status (the same rules in the same order as ``ledger/_limits.py``), its epoch and fence, and the
waiting line's ranking. The data they read is described in ``_redis_scripts``."""

from __future__ import annotations

__all__ = ["PRELUDE"]

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

-- Add member to a sorted set scored by expiry, until now + seconds (the set then expires with its last member).
local function keep_until(key, member, now, seconds)
  redis.call('ZADD', key, now + tonumber(seconds), member)
  keep_zset(key, now)
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
