"""Quotas, sessions, kicks, blocks and the audit stream in Redis.

Every multi-key change is one Lua script, so a broker, the sidecar and the CLI can act at the same
time without locks. Key names come from `keys.Keys` (passed to the scripts as KEYS, or, for the batched
registry and heartbeat reports, inside their one length-prefixed argument); the layout is documented in
docs/redis-schema.md and docs/quotas.md. Time inside scripts is Redis' own (`TIME`), so broker liveness
does not depend on the clocks of the hosts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from ..quota.limits import SLOT
from ..quota.plans import Sources
from ..reasons import KICKED
from . import keys as k
from .lease import SyncRequest, SyncResult

Hash = dict[str, str]  # a hash as the decode_responses client returns it (redis-py's types allow bytes too)

# -- the lease ledger ---------------------------------------------------------------------------------
# KEYS[1] usage hash, KEYS[2] the broker's lease set, KEYS[3] the broker's hash (its fencing epoch)
# ARGV: broker, gen, total_spent, total_refused, want, limit, expire_at (unix s), epoch ('' = not fenced)
# A broker whose epoch is not the one in its hash (it was declared dead and reaped, or Redis lost its
# record) writes nothing and gets {-1} (`Fenced`): a lease granted to it would never be reaped.
# A broker reports cumulative totals (idempotent: a retry never counts twice) and asks to hold `want`
# units of allowance after the report. total_spent -1 = "joining": report nothing, tell me what I
# reported earlier in this window. Returns {mine, used, others, free, gen, demand, now_ms, spent:<b>,
# refused:<b>, holders}; holders (brokers holding a lease) only when this broker got less than it wanted.
SYNC_LUA = """
if ARGV[8] ~= '' and redis.call('HGET', KEYS[3], 'epoch') ~= ARGV[8] then return {-1} end
local key, b, gen = KEYS[1], ARGV[1], ARGV[2]
local total, refused = tonumber(ARGV[3]), tonumber(ARGV[4])
local want, limit, expire_at = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local sf, lf, rf = 'spent:' .. b, 'lease:' .. b, 'refused:' .. b
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HGET', key, 'gen')
local rebased = false
if not cur then
  if gen ~= '' then cur = gen else cur = t[1] .. '.' .. t[2] end
  redis.call('HSET', key, 'gen', cur)
elseif gen ~= '' and gen ~= cur then
  redis.call('HSET', key, sf, total, rf, refused, lf, 0)
  rebased = true
end
if not rebased and total >= 0 then
  local prev = tonumber(redis.call('HGET', key, sf) or '0')
  if total > prev then
    local d = total - prev
    redis.call('HINCRBY', key, 'used', d)
    redis.call('HSET', key, sf, total)
    local l = tonumber(redis.call('HGET', key, lf) or '0') - d
    if l < 0 then l = 0 end
    redis.call('HSET', key, lf, l)
  end
  local rprev = tonumber(redis.call('HGET', key, rf) or '0')
  if refused > rprev then
    redis.call('HINCRBY', key, 'refused', refused - rprev)
    redis.call('HSET', key, rf, refused)
  end
end
local used = tonumber(redis.call('HGET', key, 'used') or '0')
local mine, others = 0, 0
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 6) == 'lease:' then
    if all[i] == lf then mine = tonumber(all[i + 1]) else others = others + tonumber(all[i + 1]) end
  end
end
local free = limit - used - others - mine
local holders = ''
if want > mine then
  local g = want - mine
  if g > free then g = free end
  if g > 0 then
    mine = mine + g
    free = free - g
  end
  if mine < want then
    redis.call('HSET', key, 'demand', b .. '|' .. now_ms)
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 6) == 'lease:' and all[i] ~= lf and tonumber(all[i + 1]) > 0 then
        holders = holders .. string.sub(all[i], 7) .. ','
      end
    end
  end
elseif want < mine then
  free = free + (mine - want)
  mine = want
end
if free < 0 and mine > 0 then
  local back = math.min(mine, -free)
  mine = mine - back
  free = free + back
end
redis.call('HSET', key, lf, mine)
if mine > 0 then redis.call('SADD', KEYS[2], key) else redis.call('SREM', KEYS[2], key) end
redis.call('EXPIREAT', key, expire_at)
return {mine, used, others, free, cur, redis.call('HGET', key, 'demand') or '', now_ms,
        tonumber(redis.call('HGET', key, sf) or '0'), tonumber(redis.call('HGET', key, rf) or '0'), holders}
"""

# KEYS: usage hashes..., then the reset marker, then the user's block. ARGV: marker ttl (s).
RESET_LUA = """
local t = redis.call('TIME')
local gen = 'r' .. t[1] .. '.' .. t[2]
local n = #KEYS - 2
for i = 1, n do
  local ttl = redis.call('TTL', KEYS[i])
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], 'gen', gen, 'used', 0)
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) else redis.call('EXPIRE', KEYS[i], 86400) end
end
redis.call('SET', KEYS[n + 1], gen, 'EX', tonumber(ARGV[1]))
return redis.call('DEL', KEYS[n + 2])
"""

# -- sessions -------------------------------------------------------------------------------------------
# Many records in one script argument: each field as `<byte length>:<bytes>` (`length_prefixed`), so any
# client id, username or value fits, and redis-py packs one argument instead of one per field. A script
# that sets `local blob` to that argument, then includes this, reads the fields in order with field().
LP_FIELD_LUA = """
local pos = 1
local function field()
  local c = string.find(blob, ':', pos, true)
  local n = tonumber(string.sub(blob, pos, c - 1))
  pos = c + n + 1
  return string.sub(blob, c + 1, c + n)
end
"""


# Batched session registry (the broker's only registry write path; docs/quotas.md "Sessions"): many
# opens, closes and slot changes of one broker, applied in order in one call.
# KEYS[1] the broker's sessions, KEYS[2] the broker's lease set. ARGV[1] broker, ARGV[2] number of ops,
# ARGV[3] the ops, one string (`registry_blob`: each field as `<byte length>:<bytes>`, so any client id or
# username fits; one argument instead of ten per op, which made redis-py's packing the biggest part of a
# CONNECT's registry cost), 11 fields per op: the 7 below, then the keys it writes: session, user's
# sessions, user's session slots; then the owner flag ('1': `auth.client_id_policy` owns ids, below).
# KEYS[4] the sidecar's deadlines (`sidecar:due`): an open is due at once (the sidecar times it), a close
# removes it.
# Fencing: KEYS[3] the broker's hash, ARGV[4] the broker's epoch ('' = not fenced): a batch of a broker
# whose epoch is gone (declared dead and reaped, or Redis lost its record) writes nothing and returns -1
# (`Fenced`), so no session or slot is ever registered outside a live registration.
#   kind 'o' (open):  client_id, conn, username, since, limit (0 = none), mode: 'c' check the limit,
#                     's' take one of this broker's slots (else check), 'r' reopen (only if no other
#                     broker registered the client meanwhile, no limit)
#                     -> {admitted, sessions of the user, slots reserved by all brokers, previous broker,
#                         previous conn, this broker's slots (-1 = not looked at), when refused: the
#                         brokers holding slots ("b1,b2,")}
#                     owner flag '1' (modes 'c'/'s'): refused, nothing written, when another broker holds the
#                     client id for another identity (auth/ownership.py's `owner` rule across brokers; the
#                     username '' is the anonymous identity) -> {0, 0, 0, that broker, its conn, -1, '', its
#                     username}
#                     plan (12th field, else ''): the plan claim of the client's token, kept as the session's
#                     `plan` field, so that the sidecar applies the same limits as the broker
#   kind 'c' (close): client_id, conn, username, '', limit, keep (at most this many slots: turn the
#                     closed session into a slot while the user stays far from its limit)
#                     -> {removed, 0, 0, '', '', this broker's slots or -1}
#   kind 'l' (slots): '', '', username, '', limit, want: 0 = hand all back; more than held = top up to
#                     want, only if 2 x want stay free after it (never lowers: the broker may be using them)
#                     -> {1, sessions of the user, slots of other brokers, '', '', this broker's slots}
# Invariant (with `sessions` = limit): sessions registered + slots reserved <= limit, every change atomic.
# What a user's limits are made of (quota/plans.py), in one round trip: its quota hash, the default,
# the plan of each of its groups, and every plan named (by the user, its token or its groups). The
# group and plan keys are built here from their prefixes (ARGV) since the names are only known inside.
# ARGV: group hash prefix, plan hash prefix, token plan, then '1' and the user's groups when the caller
# knows them (a CONNECT: from the user record just read), else '0' (read the groups set here).
SOURCES_LUA = """
local user = redis.call('HGETALL', KEYS[1])
local default = redis.call('HGETALL', KEYS[2])
local groups
if ARGV[4] == '1' then
  groups = {}
  for i = 5, #ARGV do groups[#groups + 1] = ARGV[i] end
else
  groups = redis.call('SMEMBERS', KEYS[3])
end
local names, group_plans, plans = {}, {}, {}
local own = redis.call('HGET', KEYS[1], 'plan')
if own and own ~= '' then names[own] = true end
if ARGV[3] ~= '' then names[ARGV[3]] = true end
for _, g in ipairs(groups) do
  local p = redis.call('HGET', ARGV[1] .. g, 'plan')
  if p and p ~= '' then
    table.insert(group_plans, g)
    table.insert(group_plans, p)
    names[p] = true
  end
end
for n, _ in pairs(names) do
  table.insert(plans, n)
  table.insert(plans, redis.call('HGETALL', ARGV[2] .. n))
end
return {user, default, group_plans, plans}
"""


def _pairs(flat: list[Any]) -> dict[str, Any]:
    return {str(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _sources(raw: list[Any]) -> Sources:
    user, default, group_plans, plans = raw
    return Sources(_pairs(user), _pairs(default), {n: _pairs(h) for n, h in _pairs(plans).items()}, _pairs(group_plans))


REGISTRY_LUA = (
    "local blob = ARGV[3]"
    + LP_FIELD_LUA
    + """
if ARGV[4] ~= '' and redis.call('HGET', KEYS[3], 'epoch') ~= ARGV[4] then return -1 end
local bs, bl, b = KEYS[1], KEYS[2], ARGV[1]
local lf = 'lease:' .. b
local out = {}
local function slots(k)
  local all = redis.call('HGETALL', k)
  local mine, others, holders = 0, 0, ''
  for i = 1, #all, 2 do
    if all[i] == lf then
      mine = tonumber(all[i + 1])
    else
      others = others + tonumber(all[i + 1])
      if tonumber(all[i + 1]) > 0 then holders = holders .. string.sub(all[i], 7) .. ',' end
    end
  end
  return mine, others, holders
end
local function set_slots(k, n)
  if n > 0 then
    redis.call('HSET', k, lf, n)
    redis.call('SADD', bl, k)
  else
    redis.call('HDEL', k, lf)
    redis.call('SREM', bl, k)
  end
end
for i = 0, tonumber(ARGV[2]) - 1 do
  local kind = field()
  local cid = field()
  local conn = field()
  local user = field()
  local since = field()
  local limit = tonumber(field())
  local extra = field()
  local s = field()
  local us = field()
  local ss = field()
  local own = field()
  local plan = field()
  if kind == 'o' then
    local prev_b = redis.call('HGET', s, 'broker') or ''
    local prev_conn = redis.call('HGET', s, 'conn') or ''
    local prev_u = own == '1' and prev_b ~= '' and prev_b ~= b and redis.call('HGET', s, 'username')
    if extra == 'r' and prev_b ~= '' and prev_b ~= b then
      out[i + 1] = {0, 0, 0, prev_b, prev_conn, -1, ''}
    elseif prev_u and prev_u ~= user then
      out[i + 1] = {0, 0, 0, prev_b, prev_conn, -1, '', prev_u}
    else
      local ok, n, reserved, mine, holders = 1, 0, 0, -1, ''
      if user ~= '' then
        n = redis.call('HLEN', us)
        if limit > 0 and extra ~= 'r' and redis.call('HEXISTS', us, cid) == 0 then
          local m, o, h = slots(ss)
          mine, reserved = m, m + o
          if m > 0 and (extra == 's' or n + m + o >= limit) then
            mine = m - 1
            set_slots(ss, mine)
          elseif n + m + o >= limit then
            ok = 0
            holders = h
          end
        end
      end
      if ok == 1 then
        redis.call('DEL', s)
        redis.call('HSET', s, 'client_id', cid, 'broker', b, 'conn', conn, 'username', user, 'since', since,
                   'queue_messages', 0, 'queue_bytes', 0)
        if plan ~= '' then redis.call('HSET', s, 'plan', plan) end
        if user ~= '' then redis.call('HSET', us, cid, b .. '/' .. conn) end
        redis.call('SADD', bs, cid)
        redis.call('ZADD', KEYS[4], since, cid)
      end
      out[i + 1] = {ok, n, reserved, prev_b, prev_conn, mine, holders}
    end
  elseif kind == 't' then
    -- opened and closed before its registration was sent: only who held the client id (take-over; none
    -- of an id the owner flag refuses)
    local prev_b = redis.call('HGET', s, 'broker') or ''
    if own == '1' and prev_b ~= '' and prev_b ~= b and redis.call('HGET', s, 'username') ~= user then prev_b = '' end
    out[i + 1] = {1, 0, 0, prev_b, redis.call('HGET', s, 'conn') or '', -1, ''}
  elseif kind == 'c' then
    local removed, mine = 0, -1
    if redis.call('HGET', s, 'conn') == conn then
      removed = redis.call('DEL', s)
      redis.call('ZREM', KEYS[4], cid)
    end
    if redis.call('HGET', us, cid) == b .. '/' .. conn then
      redis.call('HDEL', us, cid)
      local keep = tonumber(extra)
      if keep > 0 and limit > 0 then
        local m, o = slots(ss)
        mine = m
        if m < keep and limit - redis.call('HLEN', us) - m - o - 1 >= 2 * keep then
          mine = m + 1
          set_slots(ss, mine)
        end
      end
    end
    if redis.call('HGET', s, 'broker') ~= b then redis.call('SREM', bs, cid) end
    out[i + 1] = {removed, 0, 0, '', '', mine, ''}
  else
    local want = tonumber(extra)
    local m, o = slots(ss)
    local n = redis.call('HLEN', us)
    if want == 0 then
      if m > 0 then set_slots(ss, 0) end
      m = 0
    elseif want > m and limit > 0 and limit - n - o - want >= 2 * want then
      set_slots(ss, want)
      m = want
    end
    out[i + 1] = {1, n, o, '', '', m, ''}
  end
end
return out
"""
)

# Per-connection state reported at the heartbeat (usage, queue depth), many connections per call.
# ARGV[1]: the updates as one length-prefixed string (`length_prefixed`): per update the session key,
# conn, n, then n field/value pairs. Only the connection that owns an entry writes it. Returns how many
# entries were written. A `queue_over_since` written (a queue crossed `max_queue`) makes the session due
# for the sidecar (KEYS[1], `sidecar:due`): the event that starts its `queue_grace`. (One call per part
# instead of a pipeline of one script call per connection: redis-py packed those in Python, ~25 µs each,
# stalling the broker ~25 ms per 1,000 clients each second.)
UPDATES_LUA = (
    "local blob = ARGV[1]"
    + LP_FIELD_LUA
    + """
local written = 0
while pos <= #blob do
  local key = field()
  local conn = field()
  local n = tonumber(field())
  local args = {}
  for j = 1, 2 * n do args[j] = field() end
  if n > 0 and redis.call('HGET', key, 'conn') == conn then
    redis.call('HSET', key, unpack(args))
    written = written + 1
    for j = 1, 2 * n, 2 do
      if args[j] == 'queue_over_since' and args[j + 1] ~= '' then
        redis.call('ZADD', KEYS[1], 'LT', args[j + 1], redis.call('HGET', key, 'client_id'))
      end
    end
  end
end
return written
"""
)

# The sidecar's reschedule of sessions it evaluated (KEYS[1] `sidecar:due`). ARGV: triples client id,
# expected score ('' = not read from the set), next score ('' = no deadline). An entry still at the
# expected score takes the next one (or goes); one changed or removed since it was read (an event, a
# connect or a close meanwhile) is left as it is; with no expected score an entry only moves earlier.
# So an event is never overwritten by a later deadline.
DUE_LUA = """
for i = 1, #ARGV, 3 do
  local cid, expected, nxt = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local cur = redis.call('ZSCORE', KEYS[1], cid)
  if cur and expected ~= '' and tonumber(cur) == tonumber(expected) then
    if nxt == '' then redis.call('ZREM', KEYS[1], cid) else redis.call('ZADD', KEYS[1], nxt, cid) end
  elseif nxt ~= '' and expected == '' and (not cur or tonumber(nxt) < tonumber(cur)) then
    redis.call('ZADD', KEYS[1], nxt, cid)
  end
end
return 1
"""

# The sidecar's bulk re-timing when limits change for many sessions at once (the default limits, a user
# with many sessions): KEYS[1] `sidecar:due`, then session keys. ARGV: session_time ('' = none), max_queue
# ('' = none), queue_grace. Each session's entry moves to the earliest deadline those limits can give it
# (the rule of sidecar/evaluate.py `next_check`, for the fields a session hash holds), never later. A
# session whose own, longer limits apply is evaluated once early and rescheduled (DUE_LUA), so the bound is
# safe without knowing whose limits are whose; a shorter limit is due at once, not after a sweep.
RETIME_LUA = """
local st, mq, grace = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n = 0
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'client_id', 'since', 'queue_messages', 'queue_over_since')
  if f[1] then
    local due = nil
    if st and f[2] then due = tonumber(f[2]) + st end
    if mq and f[4] and f[4] ~= '' and tonumber(f[3] or '0') > mq then
      local q = tonumber(f[4]) + grace
      if not due or q < due then due = q end
    end
    if due then
      redis.call('ZADD', KEYS[1], 'LT', due, f[1])
      n = n + 1
    end
  end
end
return n
"""

# KEYS: brokers zset, broker hash, epoch counter, the broker's `reaped` note. ARGV: broker, dead_after_ms,
# epoch ('' = register: a new epoch from the counter), then field/value pairs for the hash.
# -> {status, now_ms, brokers, epoch, reaped}: status 1 = heartbeat of the registration `epoch`, 0 = a
# new registration (`epoch` is its epoch), -1 = fenced: the broker's hash is gone or holds another epoch
# (it was declared dead and reaped, or Redis lost its record); nothing is written, so a broker taken for
# dead never revives its old registration (`reaped`: who reaped it, "<by>|<unix ms>", if known).
HEARTBEAT_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local status = 1
if ARGV[3] == '' then
  epoch = tostring(redis.call('INCR', KEYS[3]))
  status = 0
  redis.call('DEL', KEYS[4])
elseif epoch ~= ARGV[3] then
  return {-1, now_ms, redis.call('ZCARD', KEYS[1]), epoch or '', redis.call('GET', KEYS[4]) or ''}
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], 'heartbeat', now_ms, 'epoch', epoch, unpack(ARGV, 4))
return {status, now_ms, redis.call('ZCARD', KEYS[1]), epoch, ''}
"""

# KEYS: brokers, broker hash, broker sessions, broker leases, kick queue, the broker's `reaped` note, the
# sidecar's due set, then (session, user sessions) pairs, then usage hashes. A reaped session's sidecar
# deadline goes with it (the sidecar would only find the session gone). ARGV: broker, number of sessions,
# who reaps ('' = the broker itself, at shutdown: no note). Only reaps a broker that is still dead.
# Deleting the broker's hash deletes its fencing epoch: whatever it still sends under that epoch is refused (`Fenced`).
REAP_LUA = """
local b, n = ARGV[1], tonumber(ARGV[2])
local score = redis.call('ZSCORE', KEYS[1], b)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not score then return -2 end
if tonumber(score) > now_ms then return -1 end
local sessions = 0
for i = 0, n - 1 do
  local s, us = KEYS[8 + 2 * i], KEYS[9 + 2 * i]
  local conn = redis.call('HGET', s, 'conn')
  local cid = redis.call('HGET', s, 'client_id')
  if redis.call('HGET', s, 'broker') == b then
    redis.call('DEL', s)
    if cid then redis.call('ZREM', KEYS[7], cid) end
    sessions = sessions + 1
    if cid and redis.call('HGET', us, cid) == b .. '/' .. conn then redis.call('HDEL', us, cid) end
  end
end
for i = 8 + 2 * n, #KEYS do
  redis.call('HDEL', KEYS[i], 'lease:' .. b)
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[1], b)
if ARGV[3] ~= '' then redis.call('SET', KEYS[6], ARGV[3] .. '|' .. now_ms, 'EX', 86400) end
return sessions
"""

# -- kicks, blocks, audit -------------------------------------------------------------------------------
MAX_BLOCK_SECONDS = 10 * 365 * 86400
"""The longest block (ten years; ops checks durations against it first). The scripts refuse a later end
before writing anything: Redis cannot PEXPIREAT an absurd time, and a block written without its expiry
would last forever, unaudited."""

# KEYS: session, kick queue of the session's broker, audit, block (or '' slot: any key, unused when
# block_until is 0). ARGV: broker, conn ('' = any), reason, by, dedupe_ms, block_until_ms, audit_maxlen,
# queue_ttl_s, code (the MQTT 5 DISCONNECT reason, mqtt_guard/reasons.py; a record without one is 0x98).
# Kicks a connection at most once per dedupe_ms, atomically with its audit entry. A block end past
# MAX_BLOCK_SECONDS is cut to it (PEXPIREAT could not take an absurd one; ops refuses such admin input).
KICK_LUA = """
local s = KEYS[1]
local b, conn, reason, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local dedupe, block_until = tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not block_until or block_until ~= math.floor(block_until) then return {0, 'bad block end'} end
-- a quota window's end may lie past the longest block: the kick still happens, the block stops there
if block_until > now_ms + MAX_BLOCK_MS then block_until = now_ms + MAX_BLOCK_MS end
local cur_b = redis.call('HGET', s, 'broker')
if not cur_b then return {0, 'not connected'} end
local cur_conn = redis.call('HGET', s, 'conn')
if (b ~= '' and cur_b ~= b) or (conn ~= '' and cur_conn ~= conn) then return {0, 'reconnected'} end
if dedupe > 0 then
  local last = tonumber(redis.call('HGET', s, 'kicked_at') or '0')
  if now_ms - last < dedupe then return {0, 'already kicked'} end
end
local cid = redis.call('HGET', s, 'client_id')
local user = redis.call('HGET', s, 'username') or ''
redis.call('HSET', s, 'kicked_at', now_ms, 'kicked_reason', reason)
redis.call('RPUSH', KEYS[2], cjson.encode({client_id = cid, conn = cur_conn, reason = reason, by = by,
                                           code = tonumber(ARGV[9])}))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[8]))
local fields = {'action', 'kick', 'client_id', cid, 'username', user, 'broker', cur_b, 'reason', reason, 'by', by}
if block_until > now_ms then
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[4], 'reason', reason, 'until', math.floor(block_until / 1000), 'by', by, 'at', t[1])
  redis.call('PEXPIREAT', KEYS[4], block_until)
  table.insert(fields, 'blocked_until')
  table.insert(fields, math.floor(block_until / 1000))
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', unpack(fields))
return {1, cur_b}
""".replace("MAX_BLOCK_MS", str(MAX_BLOCK_SECONDS * 1000))

# KEYS: block, audit. ARGV: reason, until_ms, by, audit_maxlen, then audit field/value pairs.
# Returns 1 (set), 0 (the end is past), -1 (not a whole ms within MAX_BLOCK_SECONDS: nothing written).
BLOCK_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(ARGV[2])
if not until_ms or until_ms ~= math.floor(until_ms) or until_ms > now_ms + MAX_BLOCK_MS then return -1 end
if until_ms <= now_ms then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'until', math.floor(until_ms / 1000), 'by', ARGV[3], 'at', t[1])
redis.call('PEXPIREAT', KEYS[1], until_ms)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'action', 'block', 'reason', ARGV[1],
           'blocked_until', math.floor(until_ms / 1000), 'by', ARGV[3], unpack(ARGV, 5))
return 1
""".replace("MAX_BLOCK_MS", str(MAX_BLOCK_SECONDS * 1000))

# -- the sidecar's leader lease -------------------------------------------------------------------------
LEADER_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
RESIGN_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def ceil_ms(t: float) -> float:
    """`t` (seconds) rounded up to the millisecond."""
    return math.ceil(t * 1000) / 1000


RETIME_PART = 2000  # sessions per RETIME_LUA call (~2 ms of Redis each)
UPDATES_PART = 500  # connections per UPDATES_LUA call (~1-2 µs each to encode: ~1 ms of loop per call)


@dataclass(slots=True)  # not frozen: two per CONNECT, and a frozen dataclass takes 6x as long to build
class RegistryOp:
    """One operation of `QuotaStore.registry` (see REGISTRY_LUA): kind 'o' open, 'c' close, 'l' slots,
    't' an open whose close came before it was sent (nothing registered; reports the previous holder)."""

    kind: str
    client_id: str
    conn: str
    username: str | None
    since: float = 0.0
    limit: int | None = None
    extra: str = ""  # open: mode 'c'/'s'/'r'; close: slots to keep at most; slots: slots wanted
    owner: bool = False  # open: refused if another broker holds the id for another identity (client_id_policy)
    plan: str = ""  # open: the plan claim of the client's token, written as the session's `plan` (the sidecar's)


def length_prefixed(fields: list[str]) -> bytes:
    """Fields as LP_FIELD_LUA reads them."""
    rec = "".join([f"{len(f)}:{f}" for f in fields])
    if rec.isascii():  # (then lengths in characters are lengths in bytes)
        return rec.encode()
    return b"".join([b"%d:%s" % (len(b), b) for b in (f.encode() for f in fields)])


def redis_text(value: Any) -> str:
    """A value as redis-py sends it (numbers as their repr)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"cannot send {type(value).__name__} {value!r} to Redis")
    return value if isinstance(value, str) else repr(value)


def registry_blob(keys: k.Keys, ops: list[RegistryOp]) -> bytes:
    """The ops of one registry batch as REGISTRY_LUA reads them: 12 length-prefixed fields per op."""
    out = []
    for op in ops:
        user = op.username or ""
        out.append(
            length_prefixed(
                [
                    op.kind,
                    op.client_id,
                    op.conn,
                    user,
                    f"{op.since:.3f}" if op.kind == "o" else "",
                    str(op.limit or 0),
                    op.extra,
                    keys.session(op.client_id),
                    keys.user_sessions(user),
                    keys.user_session_slots(user),
                    "1" if op.owner else "",
                    op.plan if op.kind == "o" else "",
                ]
            )
        )
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class RegistryResult:
    ok: bool  # open: admitted; close: the session hash was removed
    sessions: int  # open, slots: the user's registered sessions (before the open)
    reserved: int  # open: slots reserved by all brokers; slots: by the other brokers
    prev_broker: str  # open: who held the client id before
    prev_conn: str
    mine: int  # this broker's slots for the user after the op; -1: not looked at
    holders: tuple[str, ...] = ()  # open refused: the other brokers holding slots of the user
    # open refused by the owner flag: the identity `prev_broker` holds the client id for ('' anonymous)
    held_by: str | None = None


UNREGISTERED = "-"
"""The epoch a broker's store carries before its first registration: no registration has it, so the
broker writes no session, slot or lease before it is registered (and can be reaped)."""


class Fenced(aioredis.ConnectionError):
    """A write of a broker whose fencing epoch is no longer the one Redis has for it (it was declared
    dead and reaped, or Redis lost its record): nothing was written. A ConnectionError, so each caller
    runs the Redis-down path it has (the registration is retried, the lease spent locally) until the
    liveness task registered the broker again under a new epoch (quota/heartbeat.py)."""


@dataclass(frozen=True, slots=True)
class Beat:
    """HEARTBEAT_LUA's answer."""

    status: int  # 1: heartbeat of the registration `epoch`; 0: registered anew; -1: fenced (nothing written)
    now_ms: int  # Redis time
    brokers: int  # brokers the registry knows (dead ones not yet reaped included)
    epoch: str  # the registration's epoch (fenced: the one Redis has, '' when the record is gone)
    reaped: str  # fenced: "<by>|<unix ms>" of whoever declared the broker dead, if known

    @property
    def fenced(self) -> bool:
        return self.status < 0


@dataclass(frozen=True, slots=True)
class Block:
    reason: str
    until: float  # unix seconds
    by: str
    key: str

    def describe(self, now: float | None = None) -> str:
        left = max(0.0, self.until - (now if now is not None else time.time()))
        return f"blocked for {left:.0f} s more ({self.reason})"


class QuotaStore:
    def __init__(self, redis: aioredis.Redis, keys: k.Keys, *, audit_maxlen: int = 100_000) -> None:
        self.redis = redis
        self.keys = keys
        self.audit_maxlen = audit_maxlen
        # The fencing epoch of this broker's registration, carried by its registry and lease writes ('' =
        # not fenced: the sidecar, the CLI and tests, which write as no registered broker). Set by the
        # broker's liveness task (quota/heartbeat.py) from each registration.
        self.epoch = ""
        self._sync = redis.register_script(SYNC_LUA)
        self._sources = redis.register_script(SOURCES_LUA)
        self._reset = redis.register_script(RESET_LUA)
        self._updates = redis.register_script(UPDATES_LUA)
        self._registry = redis.register_script(REGISTRY_LUA)
        self._heartbeat = redis.register_script(HEARTBEAT_LUA)
        self._reap = redis.register_script(REAP_LUA)
        self._kick = redis.register_script(KICK_LUA)
        self._block = redis.register_script(BLOCK_LUA)
        self._leader = redis.register_script(LEADER_LUA)
        self._resign = redis.register_script(RESIGN_LUA)
        self._due = redis.register_script(DUE_LUA)
        self._retime = redis.register_script(RETIME_LUA)

    # -- limits ------------------------------------------------------------------------------------
    def limits_key(self, username: str | None) -> str:
        return self.keys.quota_default() if username is None else self.keys.quota_user(username)

    async def load_limits(
        self,
        usernames: list[str],
        token_plans: dict[str, str] | None = None,
        groups: Mapping[str, Collection[str]] | None = None,
    ) -> dict[str, Sources]:
        """What each user's limits are made of (its hash, the default, its groups' plans, every plan
        named: quota/plans.py), one script per user, in one round trip. `token_plans`: user -> the
        plan claim of its token, read too; `groups`: user -> its groups when known (else read)."""
        plans = token_plans or {}
        found = await self.load_plan_limits([(u, plans.get(u, "")) for u in usernames], groups)
        return {u: found[(u, plans.get(u, ""))] for u in usernames}

    async def load_plan_limits(
        self, pairs: list[tuple[str, str]], groups: Mapping[str, Collection[str]] | None = None
    ) -> dict[tuple[str, str], Sources]:
        """`load_limits` for (user, token plan claim) pairs: the sidecar's, whose sessions of one user may
        carry tokens with different plan claims (the session's `plan` field)."""
        k = self.keys
        known = groups or {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for u, plan in pairs:
                mine = known.get(u)
                given = ["0"] if mine is None else ["1", *mine]
                await self._sources(
                    keys=[k.quota_user(u), k.quota_default(), k.user_groups(u)],
                    args=[k.quota_group(""), k.quota_plan(""), plan, *given],
                    client=pipe,
                )
            out = await pipe.execute() if pairs else []
        return {pair: _sources(raw) for pair, raw in zip(pairs, out, strict=True)}

    async def apis(self) -> dict[str, str]:
        """The API definitions: name -> JSON list of topic filters (quota/apis.py)."""
        return cast(dict[str, str], await self.redis.hgetall(self.keys.quota_apis()))

    async def load_default(self) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(self.keys.quota_default()))

    # -- ledger --------------------------------------------------------------------------------------
    async def sync(self, broker_id: str, requests: list[SyncRequest]) -> list[SyncResult]:
        if not requests:
            return []
        leases, record, epoch = self.keys.broker_leases(broker_id), self.keys.broker(broker_id), self.epoch
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in requests:
                await self._sync(
                    keys=[r.key, leases, record],
                    args=[broker_id, r.gen, r.total, r.refused, r.want, r.limit, r.expire_at, epoch],
                    client=pipe,
                )
            raw = await pipe.execute()
        if any(len(x) == 1 for x in raw):
            raise Fenced(f"broker {broker_id} is not registered under epoch {epoch!r}: lease sync refused")
        return [SyncResult.of(x) for x in raw]

    async def usage(self, key: str) -> dict[str, str]:
        return cast(Hash, await self.redis.hgetall(key))

    async def usage_keys(self, username: str) -> list[str]:
        """Every usage hash of exactly this user (not of users whose name merely starts the same)."""
        head = self.keys.quota_usage(username, "", 0).rsplit(":", 2)[0] + ":"
        found = []
        async for key in self.redis.scan_iter(match=k.glob_escape(head) + "*", count=500):
            slot, _, start = key[len(head) :].rpartition(":")
            if SLOT.fullmatch(slot) and start.isdigit():
                found.append(key)
        return sorted(found)

    async def reset(self, username: str) -> list[str]:
        """Zero the user's usage in every stored window, lift the user's block, tell the brokers."""
        usage = await self.usage_keys(username)
        await self._reset(
            keys=[*usage, self.keys.quota_reset(username), self.keys.block_user(username)], args=[8 * 86400]
        )
        return usage

    # -- blocks ----------------------------------------------------------------------------------------
    async def blocks(self, username: str | None, client_id: str) -> Block | None:
        """The block that applies to a CONNECT (client block first), or None."""
        names = [self.keys.block_client(client_id)]
        if username:
            names.append(self.keys.block_user(username))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in names:
                pipe.hgetall(key)
                pipe.pttl(key)
            out = await pipe.execute()
        for i, key in enumerate(names):
            h, pttl = out[2 * i], out[2 * i + 1]
            if h and pttl != -2:
                until = time.time() + pttl / 1000 if pttl > 0 else float("inf")
                return Block(h.get("reason", "blocked"), until, h.get("by", ""), key)
        return None

    async def all_blocks(self) -> dict[str, Block]:
        """Every block key in force (SCAN of `block:*`), for a broker's in-process copy."""
        found = [
            key async for key in self.redis.scan_iter(match=k.glob_escape(self.keys.blocks_head()) + "*", count=1000)
        ]
        return {key: block for key, block in (await self.read_blocks(found)).items() if block is not None}

    async def read_blocks(self, keys: list[str]) -> dict[str, Block | None]:
        """The block each key holds now (None: none), in one round trip."""
        if not keys:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
                pipe.pttl(key)
            out = await pipe.execute()
        now = time.time()
        blocks: dict[str, Block | None] = {}
        for i, key in enumerate(keys):
            h, pttl = out[2 * i], out[2 * i + 1]
            blocks[key] = None
            if h and pttl != -2:
                blocks[key] = Block(
                    h.get("reason", "blocked"), now + pttl / 1000 if pttl > 0 else float("inf"), h.get("by", ""), key
                )
        return blocks

    async def set_block(self, key: str, reason: str, until: float, by: str, **audit: str) -> bool:
        fields: list[str] = []
        for name, value in audit.items():
            fields += [name, str(value)]
        if not math.isfinite(until):
            raise ValueError(f"a block's end must be a finite time, got {until}")
        done = int(
            await self._block(
                keys=[key, self.keys.audit()], args=[reason, int(until * 1000), by, self.audit_maxlen, *fields]
            )
        )
        if done < 0:
            raise ValueError(f"a block may last at most {MAX_BLOCK_SECONDS} s: end {until} refused, nothing written")
        return bool(done)

    # -- sessions ----------------------------------------------------------------------------------------
    async def registry(self, broker_id: str, ops: list[RegistryOp]) -> list[RegistryResult]:
        """Apply a batch of session registry operations of one broker, in order, in one call."""
        if not ops:
            return []
        keys = [
            self.keys.broker_sessions(broker_id),
            self.keys.broker_leases(broker_id),
            self.keys.broker(broker_id),
            self.keys.sidecar_due(),
        ]
        raw = await self._registry(keys=keys, args=[broker_id, len(ops), registry_blob(self.keys, ops), self.epoch])
        if raw == -1:
            raise Fenced(f"broker {broker_id} is not registered under epoch {self.epoch!r}: registry batch refused")
        return [
            RegistryResult(
                bool(int(r[0])),
                int(r[1]),
                int(r[2]),
                str(r[3]),
                str(r[4]),
                int(r[5]),
                tuple(h for h in str(r[6]).split(",") if h),
                str(r[7]) if len(r) > 7 else None,
            )
            for r in raw
        ]

    async def update_sessions(self, updates: list[tuple[str, str, dict[str, Any]]]) -> None:
        """(client id, conn, fields) for each connection whose reported state changed; one script call
        per UPDATES_PART connections, the event loop free between them."""
        for start in range(0, len(updates), UPDATES_PART):
            blob = []
            for client_id, conn, fields in updates[start : start + UPDATES_PART]:
                flat = [self.keys.session(client_id), conn, str(len(fields))]
                for name, value in fields.items():
                    flat.append(name)
                    flat.append(redis_text(value))
                blob.append(length_prefixed(flat))
            await self._updates(keys=[self.keys.sidecar_due()], args=[b"".join(blob)])

    async def session(self, client_id: str) -> dict[str, str]:
        return cast(Hash, await self.redis.hgetall(self.keys.session(client_id)))

    async def sessions_of_user(self, username: str) -> list[dict[str, str]]:
        ids = sorted(cast(list[str], await self.redis.hkeys(self.keys.user_sessions(username))))
        return [s for s in await self.sessions(ids) if s.get("username") == username]

    async def sessions(self, client_ids: list[str]) -> list[dict[str, str]]:
        if not client_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in client_ids:
                pipe.hgetall(self.keys.session(cid))
            return [h for h in await pipe.execute() if h]

    async def all_sessions(self) -> dict[str, list[dict[str, str]]]:
        """Live brokers -> the sessions they hold (entries that moved elsewhere are left out)."""
        brokers = await self.live_brokers()
        out: dict[str, list[dict[str, str]]] = {}
        if not brokers:
            return out
        async with self.redis.pipeline(transaction=False) as pipe:
            for b in brokers:
                pipe.smembers(self.keys.broker_sessions(b))
            members = await pipe.execute()
        for b, ids in zip(brokers, members, strict=True):
            out[b] = [s for s in await self.sessions(sorted(ids)) if s.get("broker") == b]
        return out

    async def session_ids(self) -> list[str]:
        """The client ids the live brokers registered (the sidecar's reconciliation sweep)."""
        brokers = await self.live_brokers()
        if not brokers:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for b in brokers:
                pipe.smembers(self.keys.broker_sessions(b))
            members = await pipe.execute()
        return sorted({cid for ids in members for cid in ids})

    # -- the sidecar's deadlines (`sidecar:due`) ----------------------------------------------------------
    async def due(self, now: float, count: int) -> list[tuple[str, float]]:
        """Up to `count` sessions due by `now` (client id, score), earliest first: one range query."""
        raw = await self.redis.zrangebyscore(self.keys.sidecar_due(), "-inf", now, start=0, num=count, withscores=True)
        return [(str(cid), float(score)) for cid, score in cast(list[tuple[str, float]], raw)]

    async def reschedule(self, items: list[tuple[str, float | None, float | None]]) -> None:
        """(client id, score read from the set or None, next deadline or None) for evaluated sessions
        (DUE_LUA: an entry changed meanwhile only moves earlier)."""
        for start in range(0, len(items), UPDATES_PART):
            args: list[str] = []
            for cid, expected, nxt in items[start : start + UPDATES_PART]:
                # (rounded up to the millisecond: a deadline written early would find nothing to do at its
                # tick and wait one more)
                args += [cid, "" if expected is None else repr(expected), "" if nxt is None else f"{ceil_ms(nxt):.3f}"]
            await self._due(keys=[self.keys.sidecar_due()], args=args)

    async def retime_earlier(
        self, ids: list[str], session_time: float | None, max_queue: int | None, queue_grace: float
    ) -> int:
        """Move these sessions' deadlines to the earliest the given limits allow, never later (RETIME_LUA):
        limits that changed for many sessions re-time them in Redis at a few microseconds each, instead of
        an evaluation each. Returns how many sessions got a deadline."""
        if session_time is None and max_queue is None:
            return 0
        args = ["" if session_time is None else repr(session_time), "" if max_queue is None else str(max_queue)]
        args.append(repr(queue_grace))
        n = 0
        for start in range(0, len(ids), RETIME_PART):
            keys = [self.keys.sidecar_due()] + [self.keys.session(cid) for cid in ids[start : start + RETIME_PART]]
            n += int(await self._retime(keys=keys, args=args))
        return n

    # -- brokers -------------------------------------------------------------------------------------------
    async def heartbeat(self, broker_id: str, dead_after: float, info: dict[str, Any], epoch: str = "") -> Beat:
        """Refresh the liveness of the broker's registration `epoch`, or register it anew ('': a new
        epoch); a registration that is gone is not revived (HEARTBEAT_LUA, `Beat.fenced`)."""
        flat: list[Any] = []
        for name, value in info.items():
            flat += [name, value]
        raw = await self._heartbeat(
            keys=[
                self.keys.brokers(),
                self.keys.broker(broker_id),
                self.keys.broker_epochs(),
                self.keys.broker_reaped(broker_id),
            ],
            args=[broker_id, int(dead_after * 1000), epoch, *flat],
        )
        return Beat(int(raw[0]), int(raw[1]), int(raw[2]), str(raw[3]), str(raw[4]))

    async def alone(self, broker_id: str) -> bool:
        """Whether the registry knows no broker but this one (dead ones not yet reaped count as others)."""
        return set(await self.redis.zrange(self.keys.brokers(), 0, 1)) <= {broker_id}

    async def now_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def live_brokers(self) -> list[str]:
        return sorted(cast(list[str], await self.redis.zrangebyscore(self.keys.brokers(), await self.now_ms(), "+inf")))

    async def dead_brokers(self) -> list[str]:
        return sorted(
            cast(list[str], await self.redis.zrangebyscore(self.keys.brokers(), "-inf", f"({await self.now_ms()}"))
        )

    async def broker_alive(self, broker_id: str) -> bool:
        score = await self.redis.zscore(self.keys.brokers(), broker_id)
        return score is not None and score > await self.now_ms()

    async def reap(self, broker_id: str, by: str = "") -> int:
        """Clean up after a broker that stopped heartbeating: its sessions and leases go, what it
        reported as spent stays counted, its fencing epoch goes (noting `by`, the reaper, for it).
        -1 if the broker turned out to be alive, -2 if it was reaped meanwhile by somebody else."""
        ids = sorted(cast(set[str], await self.redis.smembers(self.keys.broker_sessions(broker_id))))
        leases = sorted(cast(set[str], await self.redis.smembers(self.keys.broker_leases(broker_id))))
        sessions = await self.sessions(ids)
        by_id = {s.get("client_id"): s for s in sessions}
        keys = [
            self.keys.brokers(),
            self.keys.broker(broker_id),
            self.keys.broker_sessions(broker_id),
            self.keys.broker_leases(broker_id),
            self.keys.kick_queue(broker_id),
            self.keys.broker_reaped(broker_id),
            self.keys.sidecar_due(),
        ]
        for cid in ids:
            keys += [self.keys.session(cid), self.keys.user_sessions(by_id.get(cid, {}).get("username", ""))]
        keys += leases
        return int(await self._reap(keys=keys, args=[broker_id, len(ids), by]))

    async def reap_dead(self, by: str) -> dict[str, int]:
        """Reap every broker whose liveness ran out (`by`: who declares them dead)."""
        out = {}
        for b in await self.dead_brokers():
            out[b] = await self.reap(b, by)
        return out

    # -- kicks -----------------------------------------------------------------------------------------------
    async def kick(
        self,
        client_id: str,
        reason: str,
        by: str,
        *,
        broker_id: str = "",
        conn: str = "",
        dedupe: float = 0.0,
        block_key: str | None = None,
        block_until: float = 0.0,
        queue_ttl: float = 60.0,
        code: int = KICKED,
    ) -> tuple[bool, str]:
        """Ask the broker holding `client_id` to disconnect it (audited, at most once per `dedupe` s);
        `code`: the MQTT 5 DISCONNECT reason its client is told (mqtt_guard/reasons.py; 0x98 Administrative
        action). (True, broker) when the request was queued, else (False, why not)."""
        if block_key and not math.isfinite(block_until):
            raise ValueError(f"a block's end must be a finite time, got {block_until}")
        session = cast(str | None, await self.redis.hget(self.keys.session(client_id), "broker"))
        if session is None:
            return False, "not connected"
        raw = await self._kick(
            keys=[
                self.keys.session(client_id),
                self.keys.kick_queue(session),
                self.keys.audit(),
                block_key or self.keys.block_client(client_id),
            ],
            args=[
                broker_id or session,
                conn,
                reason,
                by,
                int(dedupe * 1000),
                int(block_until * 1000) if block_key else 0,
                self.audit_maxlen,
                int(queue_ttl),
                int(code),
            ],
        )
        return bool(raw[0]), str(raw[1])

    async def push(self, broker_id: str, message: dict[str, Any], ttl: float = 60.0) -> None:
        """Queue a message (a kick without the session checks, or a resync request) for one broker."""
        key = self.keys.kick_queue(broker_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(message))
            pipe.expire(key, int(ttl))
            await pipe.execute()

    async def pop_kick(self, client: aioredis.Redis, broker_id: str, timeout: float) -> dict[str, str] | None:
        item = await client.blpop([self.keys.kick_queue(broker_id)], timeout=timeout)
        if item is None:
            return None
        try:
            data = json.loads(item[1])
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def audit(self, **fields: Any) -> None:
        await self.redis.xadd(
            self.keys.audit(), {n: str(v) for n, v in fields.items()}, maxlen=self.audit_maxlen, approximate=True
        )

    async def audit_entries(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        return list(reversed(cast(list[tuple[str, Hash]], await self.redis.xrevrange(self.keys.audit(), count=count))))

    # -- sidecar leader --------------------------------------------------------------------------------------
    async def lead(self, sidecar_id: str, ttl: float) -> bool:
        return bool(await self._leader(keys=[self.keys.sidecar_leader()], args=[sidecar_id, int(ttl * 1000)]))

    async def resign(self, sidecar_id: str) -> None:
        await self._resign(keys=[self.keys.sidecar_leader()], args=[sidecar_id])
