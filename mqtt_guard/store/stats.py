"""Analytics in Redis: every Redis call for counters, rate history, heartbeats and the `stats`/`top` reads.

Key names come from `Keys` (mqtt_guard/store/keys.py); docs/redis-schema.md documents them. Writes are
batched: `StatsWriter.split()` cuts one `Batch` (what one flush carries) into parts and `StatsWriter.write()`
writes each part with one call of a Lua script (`_WRITE_LUA`), so a part is applied entirely or not at all
and a failed one can be retried without counting twice, at a broker CPU cost of a few µs per client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from ..metrics import counters as C
from ..metrics.rates import DIR_IN, DIR_OUT, RESOLUTIONS, bucket_range, bucket_start
from .keys import Keys

log = logging.getLogger("mqtt_guard.metrics")

KIND_CLIENT = "client"
KIND_USER = "user"
KIND_BROKER = "broker"  # rate history only: the sum of one broker's clients (one member per bucket)
# Publish errors by reason (the counter -> its label), the ones `stats` and the API show; dropped deliveries
# count for the receiver. Each also has a rate history per client: kind ERROR_KIND_PREFIX + label,
# direction "in", member the client id (the client page's errors over time; issue 20 item 4).
ERROR_FIELDS = {**C.PUBLISH_ERROR_REASONS, C.DROPPED_QUEUE_FULL: "queue_full"}
ERROR_KIND_PREFIX = "error_"
_ERROR_KINDS = [(f, ERROR_KIND_PREFIX + label) for f, label in ERROR_FIELDS.items()]
_ERROR_NAMES = frozenset(ERROR_FIELDS)
# Kinds of the refused-CONNECT rankings (`Keys.stats_failed`).
FAILED_ADDR = "addr"
FAILED_USER = "user"
FAILED_DAY = 86400  # one ranking per UTC day...
FAILED_KEEP = 7 * 86400  # ...kept a week after the day ends

# Fields of the broker heartbeat hash (`stats:broker:<id>`; the counters share the hash).
HB_HEARTBEAT = "heartbeat_at"
HB_STARTED = "started_at"
HB_HOST = "host"
HB_PID = "pid"
HB_VERSION = "version"
HB_CLIENTS = "clients_connected"
# backend health (issue 20 item 4; the dashboard's broker table): the broker's event-loop lag (latest and
# largest since start, ms), its last PING round trip to Redis (ms), and its failed stats flushes
HB_LOOP_LAG = "loop_lag_ms"
HB_LOOP_LAG_MAX = "loop_lag_max_ms"
HB_REDIS_RTT = "redis_rtt_ms"
HB_FLUSH_FAILURES = "flush_failures"

# Field names the script writes, from counters.py (the one place they are defined).
_LUA_FIELDS = {
    "F_LAST_SEEN": C.G_LAST_SEEN,
    "F_USERNAME": C.G_USERNAME,
    "F_CONNECTED": C.G_CONNECTED,
    "F_SINCE": C.G_CONNECTED_SINCE,
    "F_BROKER": C.G_BROKER,
    "F_DISCONNECTED": C.G_DISCONNECTED_AT,
}

# One part of a flush, written by one script call (see `StatsWriter.write` and `_Encoder`).
# KEYS: every key the part writes. ARGV[1] TTL of client/user hashes, ARGV[2] last_seen (unix seconds),
# ARGV[3] this broker's id, ARGV[4] the records (space-separated tokens), ARGV[5..] the strings the
# records refer to by ARGV index (counter and gauge names, client ids, usernames, string values), so a
# client id or username can hold any character. Records, `k` a KEYS index, `s` an ARGV index:
#   1 k s_user n (s_name value)*n   HINCRBY each; HSET last_seen [username] (s_user 0: none); TTL
#   2 k expire_at n (s_member score)*n   ZINCRBY each; EXPIREAT           (rate history)
#   3 k n (s_name value)*n          HINCRBY each                          (stats:total, stats:broker)
#   4 k n (s_name value)*n          HSET the gauges (value `@s`: ARGV[s]); TTL
#   5 k since s_user                connect: HSET connected 1, connected_since, broker [username];
#                                   HDEL disconnected_at; TTL
#   6 k at                          disconnect: HSET connected 0, disconnected_at only if the client is
#                                   still attributed to this broker (else another broker's "connected"
#                                   must stand); TTL
#   7 k since at s_user             a connection that came and went within the part: 5 then 6 in one
#                                   HSET (connected 0, connected_since, broker, [username], disconnected_at)
#   8 k s_user n (s_name value)*n since at s_user2
#                                   1 then 7 of the same client: the HINCRBYs, then one HSET of both
#   9 k expire_at keep n (s_member value)*n
#                                   ZINCRBY each, a ranking of at most `keep` members (refused
#                                   CONNECTs per address / username of one day): a new member of a
#                                   full ranking takes the place of the smallest one and starts at its
#                                   count ("space-saving": a heavy hitter always gets in; a count may
#                                   over-state by at most the count it took over); EXPIREAT
# "TTL" is one EXPIRE per key at the end. Every write goes through redis.pcall: a write Redis refuses (a
# key of the wrong type, edited by hand) is skipped and reported, never aborting the rest, because the
# writes before it cannot be undone and a retry would count them twice. The exception: Redis refuses
# writes for the server's state (out of memory, read-only replica, failed save, too few replicas) only
# before a script's first write, so the script then returns that error having written nothing, and the
# caller retries the whole part later. Returns {refused writes, up to 10 messages}.
_WRITE_LUA = """
local ttl, now, me = ARGV[1], ARGV[2], ARGV[3]
local t, n = {}, 0
for tok in string.gmatch(ARGV[4], '%S+') do n = n + 1; t[n] = tok end
local refused, msgs, abort, wrote = 0, {}, nil, false
local live, order = {}, {}
local function refuse(cmd, k, e)
  if not wrote and (e:sub(1, 4) == 'OOM ' or e:sub(1, 9) == 'READONLY ' or e:sub(1, 8) == 'MISCONF '
      or e:sub(1, 11) == 'NOREPLICAS ') then
    abort = e
    return
  end
  refused = refused + 1
  if refused <= 10 then msgs[refused] = cmd .. ' ' .. k .. ': ' .. e end
end
local function w(cmd, k, ...)
  if abort then return end
  local r = redis.pcall(cmd, k, ...)
  if type(r) == 'table' and r.err then refuse(cmd, k, r.err) else wrote = true end
end
local function keep(k)
  if not live[k] then live[k] = true; order[#order + 1] = k end
end
local i = 1
while i <= n do
  local op, k = t[i], KEYS[tonumber(t[i + 1])]
  if op == '1' then
    local u, c = tonumber(t[i + 2]), tonumber(t[i + 3])
    i = i + 4
    for _ = 1, c do w('HINCRBY', k, ARGV[tonumber(t[i])], t[i + 1]); i = i + 2 end
    if u > 0 then w('HSET', k, 'F_LAST_SEEN', now, 'F_USERNAME', ARGV[u]) else w('HSET', k, 'F_LAST_SEEN', now) end
    keep(k)
  elseif op == '2' then
    local at, c = t[i + 2], tonumber(t[i + 3])
    i = i + 4
    for _ = 1, c do w('ZINCRBY', k, t[i + 1], ARGV[tonumber(t[i])]); i = i + 2 end
    w('EXPIREAT', k, at)
  elseif op == '9' then
    local at, top, c = t[i + 2], tonumber(t[i + 3]), tonumber(t[i + 4])
    i = i + 5
    for _ = 1, c do
      local m, v = ARGV[tonumber(t[i])], tonumber(t[i + 1])
      i = i + 2
      local s = not abort and redis.pcall('ZSCORE', k, m)
      if type(s) == 'table' and s.err then
        refuse('ZSCORE', k, s.err)
      elseif not abort then  -- the key is a sorted set or absent: plain calls below
        if not s and redis.call('ZCARD', k) >= top then
          local low = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
          w('ZREM', k, low[1])
          v = v + tonumber(low[2])
        end
        w('ZINCRBY', k, v, m)
      end
    end
    w('ZREMRANGEBYRANK', k, 0, -top - 1)  -- a ranking left larger by a larger setting before
    w('EXPIREAT', k, at)
  elseif op == '3' then
    local c = tonumber(t[i + 2])
    i = i + 3
    for _ = 1, c do w('HINCRBY', k, ARGV[tonumber(t[i])], t[i + 1]); i = i + 2 end
  elseif op == '4' then
    local c = tonumber(t[i + 2])
    i = i + 3
    local f = {}
    for j = 1, c do
      local v = t[i + 1]
      if v:sub(1, 1) == '@' then v = ARGV[tonumber(v:sub(2))] end
      f[2 * j - 1], f[2 * j] = ARGV[tonumber(t[i])], v
      i = i + 2
    end
    w('HSET', k, unpack(f))
    keep(k)
  elseif op == '5' then
    local since, u = t[i + 2], tonumber(t[i + 3])
    i = i + 4
    if u > 0 then
      w('HSET', k, 'F_CONNECTED', '1', 'F_SINCE', since, 'F_BROKER', me, 'F_USERNAME', ARGV[u])
    else
      w('HSET', k, 'F_CONNECTED', '1', 'F_SINCE', since, 'F_BROKER', me)
    end
    w('HDEL', k, 'F_DISCONNECTED')
    keep(k)
  elseif op == '8' then
    local u, c = tonumber(t[i + 2]), tonumber(t[i + 3])
    i = i + 4
    for _ = 1, c do w('HINCRBY', k, ARGV[tonumber(t[i])], t[i + 1]); i = i + 2 end
    local since, at, u2 = t[i], t[i + 1], tonumber(t[i + 2])
    i = i + 3
    local f = {'F_LAST_SEEN', now, 'F_CONNECTED', '0', 'F_SINCE', since, 'F_BROKER', me, 'F_DISCONNECTED', at}
    if u2 > 0 then
      f[11], f[12] = 'F_USERNAME', ARGV[u2]
    elseif u > 0 then
      f[11], f[12] = 'F_USERNAME', ARGV[u]
    end
    w('HSET', k, unpack(f))
    keep(k)
  elseif op == '7' then
    local since, at, u = t[i + 2], t[i + 3], tonumber(t[i + 4])
    i = i + 5
    if u > 0 then
      w('HSET', k, 'F_CONNECTED', '0', 'F_SINCE', since, 'F_BROKER', me, 'F_USERNAME', ARGV[u], 'F_DISCONNECTED', at)
    else
      w('HSET', k, 'F_CONNECTED', '0', 'F_SINCE', since, 'F_BROKER', me, 'F_DISCONNECTED', at)
    end
    keep(k)
  elseif op == '6' then
    local at = t[i + 2]
    i = i + 3
    if not abort then
      local b = redis.pcall('HGET', k, 'F_BROKER')
      if type(b) == 'table' and b.err then
        refuse('HGET', k, b.err)
      elseif b == false or b == me then
        w('HSET', k, 'F_CONNECTED', '0', 'F_DISCONNECTED', at)
      end
    end
    keep(k)
  else
    return redis.error_reply('ERR stats script: unknown record ' .. tostring(op))
  end
  if abort then return redis.error_reply(abort) end
end
for _, key in ipairs(order) do w('EXPIRE', key, ttl) end
if abort then return redis.error_reply(abort) end
table.insert(msgs, 1, refused)
return msgs
"""
for _name, _field in _LUA_FIELDS.items():
    _WRITE_LUA = _WRITE_LUA.replace(f"'{_name}'", f"'{_field}'")
assert "'F_" not in _WRITE_LUA


@dataclass
class Batch:
    """What the flusher writes. Mergeable: two batches added together write the same end result."""

    clients: dict[tuple[str, str | None], dict[str, int]] = field(default_factory=dict)
    users: dict[str, dict[str, int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str, str | None, float]] = field(default_factory=list)
    # rates[bucket10][(kind, id)] = [in, out]; the 1 min buckets are derived when writing.
    rates: dict[int, dict[tuple[str, str], list[int]]] = field(default_factory=dict)
    # refused CONNECTs per (FAILED_ADDR or FAILED_USER, address or username), added to the day's ranking
    failed: dict[tuple[str, str], int] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (
            self.clients or self.users or self.totals or self.gauges or self.events or self.rates or self.failed
        )

    def size(self) -> int:
        """Entries held, the unit of the backlog bound."""
        return (
            len(self.clients)
            + len(self.users)
            + len(self.gauges)
            + len(self.events)
            + sum(len(b) for b in self.rates.values())
            + len(self.failed)
        )

    def merge(self, other: Batch) -> None:
        for entry, counts in other.clients.items():
            _add(self.clients.setdefault(entry, {}), counts)
        for user, counts in other.users.items():
            _add(self.users.setdefault(user, {}), counts)
        _add(self.totals, other.totals)
        for cid, g in other.gauges.items():
            self.gauges.setdefault(cid, {}).update(g)
        self.events.extend(other.events)
        failed = self.failed
        for entry, n in other.failed.items():
            failed[entry] = failed.get(entry, 0) + n
        for bucket, entries in other.rates.items():
            mine = self.rates.setdefault(bucket, {})
            for key, (i, o) in entries.items():
                cur = mine.get(key)
                if cur is None:
                    mine[key] = [i, o]
                else:
                    cur[0] += i
                    cur[1] += o


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, v in counts.items():
        into[name] = into.get(name, 0) + v


def batch_from_drain(drain: C.Drain) -> Batch:
    """A drained window as a Batch; its message rates go to the 10 s bucket the window started in."""
    b = Batch(clients=drain.clients, users=drain.users, totals=drain.totals, gauges=drain.gauges, events=drain.events)
    rates: dict[tuple[str, str], list[int]] = {}
    # publish errors by reason over time: looked for per client only in a window that had any (rare), so a
    # flush of 10,000 clients without errors costs four lookups, not 40,000
    totals = drain.totals
    errors = any(totals.get(name) for name, _ in _ERROR_KINDS)
    for (cid, user), counts in drain.clients.items():
        i, o = counts.get(C.MSGS_IN, 0), counts.get(C.MSGS_OUT, 0)
        if errors and not _ERROR_NAMES.isdisjoint(counts):
            for name, kind in _ERROR_KINDS:
                n = counts.get(name)
                if n:
                    _rate_add(rates, (kind, cid), n, 0)
        if not (i or o):
            continue
        _rate_add(rates, (KIND_CLIENT, cid), i, o)
        if user is not None:
            _rate_add(rates, (KIND_USER, user), i, o)
    if rates:
        b.rates[bucket_start(drain.started, RESOLUTIONS[0][1])] = rates
    for addr, n in drain.failed_addresses.items():
        b.failed[(FAILED_ADDR, addr)] = n
    for user, n in drain.failed_users.items():
        b.failed[(FAILED_USER, user)] = n
    return b


def _rate_add(rates: dict[tuple[str, str], list[int]], key: tuple[str, str], i: int, o: int) -> None:
    cur = rates.get(key)
    if cur is None:
        rates[key] = [i, o]
    else:
        cur[0] += i
        cur[1] += o


def _seconds(at: float) -> str:
    """`repr(round(at, 3))`, the form redis-py always wrote `connected_since`/`disconnected_at` in, at half
    the cost (two per new client): fixed-point with trailing zeros dropped is the same string for unix
    timestamps (tests/metrics/test_stats_script.py checks it)."""
    if type(at) is not float or not 0 <= at < 1e15:
        return repr(round(at, 3))
    text = f"{at:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


class _Encoder:
    """A part as the arguments of `_WRITE_LUA`: keys, strings and numbers each once, records as tokens.

    Why this shape: redis-py packs every command argument in Python (~0.5 µs each) and parses every reply
    (as much again), and one new client used to bring 6-10 commands of 3-4 arguments each. Here a client
    costs one argument (its key) plus, in the rate history, one for its id; its counters, events and
    timestamps are tokens of one string built with str.join. Names and usernames repeat across
    clients, so each is sent once per part."""

    __slots__ = ("keys", "strings", "ops", "_key_index", "str_index")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.strings: list[str] = []
        self.ops: list[str] = []
        self._key_index: dict[str, str] = {}
        self.str_index: dict[str, str] = {}

    def key(self, k: str) -> str:
        """The token of a key (its KEYS index, 1-based)."""
        t = self._key_index.get(k)
        if t is None:
            self.keys.append(k)
            t = self._key_index[k] = str(len(self.keys))
        return t

    def string(self, v: str) -> str:
        """The token of a string (its ARGV index: ARGV[1..4] are the fixed arguments)."""
        t = self.str_index.get(v)
        if t is None:
            self.strings.append(v)
            t = self.str_index[v] = str(len(self.strings) + 4)
        return t

    def value(self, v: Any) -> str:
        """A gauge value as redis-py would have sent it: an int or float inline, anything else (whose text
        might hold a space: an IntEnum's repr, any str) as `@<ARGV index>`."""
        if type(v) is int or type(v) is float:
            return repr(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return "@" + self.string(repr(v))
        return "@" + self.string(v if isinstance(v, str) else str(v))

    def counters(self, op: str, k: str, counts: dict[str, int], *extra: str) -> None:
        ops, string = self.ops, self.string
        ops.append(op)
        ops.append(self.key(k))
        ops.extend(extra)
        ops.append(str(len(counts)))
        for name, v in counts.items():
            ops.append(string(name))
            ops.append(str(v))


class StatsWriter:
    """The flusher's side: write batches, heartbeat, read the fleet's heartbeats."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        broker_id: str,
        *,
        ttl: float,
        chunk: int = 500,
        max_failed: int = C.MAX_FAILED_DEFAULT,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.broker_id = broker_id
        self.ttl = int(ttl)
        self.chunk = chunk
        self.max_failed = max_failed  # entries each refused-CONNECT ranking keeps (the largest)
        # EVALSHA; on NOSCRIPT (a restarted or different Redis) redis-py loads the script and retries.
        self._script = redis.register_script(_WRITE_LUA)

    async def ping(self) -> float:
        """One PING; its round trip in seconds."""
        t0 = time.perf_counter()
        await self.redis.ping()
        return time.perf_counter() - t0

    async def write(self, part: Batch, now: float | None = None) -> None:
        """Write one part (see `split`) with one script call: all of it or, when Redis fails (the exception
        propagates), none of it, so the caller can retry the part without counting anything twice. A
        write Redis refuses inside the script (a key of the wrong type, edited by hand) is logged and
        skipped: retrying would count the rest of the part twice."""
        now = time.time() if now is None else now
        enc = self._encode(part, now)
        if not enc.ops:
            return
        args = [str(self.ttl), str(int(now)), self.broker_id, " ".join(enc.ops)]
        args.extend(enc.strings)
        res = await self._script(keys=enc.keys, args=args)
        if res and int(res[0]):
            log.warning(
                "Redis refused %d stats writes (a key edited by hand?); the rest were applied: %s",
                int(res[0]),
                "; ".join(str(m) for m in res[1:]),
            )

    def split(self, batch: Batch) -> list[Batch]:
        """Parts of at most `chunk` entries (a client, a user, a rate entry, a client's gauges or a
        connection event each), filled in the order clients (each with its connection events), users,
        rates, gauges, the events of clients without counters, each written by its own script call. A
        client's events keep their order (parts are written one after the other); the broker totals go
        with the last part. Parts bound how long the event loop is busy encoding one
        (FLUSH_CHUNK in mqtt_guard/metrics/service.py says how its size was chosen)."""
        n = max(1, self.chunk)
        parts = [Batch()]
        free = n

        def fill(items: list[Any], put: Callable[[Batch, list[Any]], None]) -> None:
            # slices, not an entry at a time: splitting 10,000 entries must not stall the loop either
            nonlocal free
            pos = 0
            while pos < len(items):
                if not free:
                    parts.append(Batch())
                    free = n
                take = items[pos : pos + free]
                put(parts[-1], take)
                pos += len(take)
                free -= len(take)

        # A client's connection events go into the part of its (last) counters entry, so that one script
        # call writes the client's hash once (and `_encode` can fold the two records of a connection that
        # came and went into one). Per key the order stays: counters, then events; the gauges written
        # after them in a later part have fields of their own.
        clients = list(batch.clients.items())
        last_entry = {cid: i for i, ((cid, _), _) in enumerate(clients)}
        events_at: dict[int, list[Any]] = {}
        loose: list[Any] = []  # events of clients without counters in the batch: written last, as before
        for ev in batch.events:
            i = last_entry.get(ev[1])
            if i is None:
                loose.append(ev)
            else:
                events_at.setdefault(i, []).append(ev)
        if not events_at:
            fill(clients, lambda p, xs: p.clients.update(xs))
        else:
            for i, entry in enumerate(clients):
                evs = events_at.get(i, ())
                if free < 1 + len(evs) and free < n:
                    parts.append(Batch())
                    free = n
                parts[-1].clients[entry[0]] = entry[1]
                parts[-1].events.extend(evs)
                free = max(0, free - 1 - len(evs))  # (a client with more events than a part holds: alone)
        fill(list(batch.users.items()), lambda p, xs: p.users.update(xs))
        for bucket, entries in batch.rates.items():

            def put_rates(p: Batch, xs: list[Any], b: int = bucket) -> None:
                p.rates.setdefault(b, {}).update(xs)

            fill(list(entries.items()), put_rates)
        fill(list(batch.gauges.items()), lambda p, xs: p.gauges.update(xs))
        fill(loose, lambda p, xs: p.events.extend(xs))
        fill(list(batch.failed.items()), lambda p, xs: p.failed.update(xs))
        parts[-1].totals = dict(batch.totals)
        return parts

    def _encode(self, b: Batch, now: float) -> _Encoder:
        """The part as `_WRITE_LUA` records, in the order the writes were always made: client counters,
        user counters, rate history, totals, gauges, connection events."""
        enc = _Encoder()
        keys, ops, key, string = self.keys, enc.ops, enc.key, enc.string
        names = enc.str_index  # counter names repeat in every entry: look them up inline
        client_key = keys.stats_client
        # Connection events; a connection that came and went within the part (its connect not followed by
        # another event of that client before its disconnect) is one record '7' instead of '5' + '6': the
        # '6' check would find this broker's own '5' anyway. Same end result, fewer Redis calls.
        events: list[tuple[str, str, str | None, float, float] | None] = []
        open_at: dict[str, int] = {}  # client id -> index in `events` of its connect not yet followed
        seen: dict[str, int] = {}  # client id -> its records in `events`
        for kind, cid, user, at in b.events:
            if kind == "connect":
                open_at[cid] = len(events)
                events.append(("5", cid, user, at, 0.0))
                seen[cid] = seen.get(cid, 0) + 1
                continue
            j = open_at.pop(cid, None)
            if j is None:
                events.append(("6", cid, user, at, 0.0))
                seen[cid] = seen.get(cid, 0) + 1
            else:
                _, _, user, since, _ = events[j]  # type: ignore[misc]  # only the loop below sets None
                events[j] = ("7", cid, user, since, at)
        # ...and a client whose only record is a '7' gets it folded into its (last) counters record: '8',
        # one HSET of the client's hash instead of two.
        fold: dict[str, int] = {}
        if events:
            last_entry = {cid: user for cid, user in b.clients}
            for j, rec in enumerate(events):
                if rec is not None and rec[0] == "7" and seen[rec[1]] == 1 and rec[1] in last_entry:
                    fold[rec[1]] = j
        for (cid, user), counts in b.clients.items():
            j = fold.get(cid)
            if j is not None and last_entry[cid] == user:
                _, _, ev_user, since, until = events[j]  # type: ignore[misc]  # None only after this read
                events[j] = None
                ops += ("8", key(client_key(cid)), "0" if user is None else string(user), str(len(counts)))
                for name, v in counts.items():
                    ops += (names.get(name) or string(name), str(v))
                ops += (_seconds(since), _seconds(until), "0" if ev_user is None else string(ev_user))
                continue
            ops += ("1", key(client_key(cid)), "0" if user is None else string(user), str(len(counts)))
            for name, v in counts.items():
                ops += (names.get(name) or string(name), str(v))
        for user, counts in b.users.items():
            enc.counters("1", keys.stats_user(user), counts, "0")
        for bucket, entries in b.rates.items():
            # (kind, direction) -> tokens of its members and scores, shared by both resolutions
            members: dict[tuple[str, str], list[str]] = {}
            sum_in = sum_out = 0  # this broker's clients added up: one more member, the broker (KIND_BROKER)
            for (kind, ident), (i, o) in entries.items():
                s = string(ident)
                if kind == KIND_CLIENT:
                    sum_in += i
                    sum_out += o
                if i:
                    members.setdefault((kind, DIR_IN), []).extend((s, str(i)))
                if o:
                    members.setdefault((kind, DIR_OUT), []).extend((s, str(o)))
            if sum_in:
                members[(KIND_BROKER, DIR_IN)] = [string(self.broker_id), str(sum_in)]
            if sum_out:
                members[(KIND_BROKER, DIR_OUT)] = [string(self.broker_id), str(sum_out)]
            for res_name, seconds, keep in RESOLUTIONS:
                start = bucket_start(bucket, seconds)
                expire_at = start + seconds + keep
                if expire_at <= now:
                    continue  # older than that resolution keeps (a long Redis outage): skip
                expires = str(int(expire_at))
                for (kind, direction), toks in members.items():
                    rate_key = key(keys.stats_rate(res_name, kind, direction, start))
                    ops.extend(("2", rate_key, expires, str(len(toks) // 2)))
                    ops.extend(toks)
        if b.totals:
            enc.counters("3", keys.stats_total(), b.totals)
            enc.counters("3", keys.stats_broker(self.broker_id), b.totals)
        if b.failed:
            day = int(now // FAILED_DAY * FAILED_DAY)
            expires, top = str(day + FAILED_DAY + FAILED_KEEP), str(self.max_failed)
            by_kind: dict[str, list[str]] = {}
            for (kind, ident), n in b.failed.items():
                by_kind.setdefault(kind, []).extend((string(ident), str(n)))
            for kind, toks in by_kind.items():
                ops.extend(("9", key(keys.stats_failed(kind, day)), expires, top, str(len(toks) // 2)))
                ops.extend(toks)
        value = enc.value
        for cid, g in b.gauges.items():
            if g:
                ops.extend(("4", key(keys.stats_client(cid)), str(len(g))))
                for name, v in g.items():
                    ops.append(string(name))
                    ops.append(value(v))
        for rec in events:
            if rec is None:
                continue
            op, cid, user, at, until = rec
            if op == "5":
                ops += ("5", key(client_key(cid)), _seconds(at), "0" if user is None else string(user))
            elif op == "6":
                ops += ("6", key(client_key(cid)), _seconds(at))
            else:
                ops += ("7", key(client_key(cid)), _seconds(at), _seconds(until), "0" if user is None else string(user))
        return enc

    async def heartbeat(
        self, fields: Mapping[FieldT, EncodableT], now: float | None = None, keep: float = 7 * 86400
    ) -> dict[str, float]:
        """Record this broker's heartbeat; return every broker's last heartbeat (unix seconds)."""
        now = time.time() if now is None else now
        k = self.keys.stats_broker(self.broker_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(k, mapping={**fields, HB_HEARTBEAT: round(now, 3)})
            pipe.expire(k, int(keep))
            pipe.zadd(self.keys.stats_brokers(), {self.broker_id: round(now, 3)})
            pipe.zremrangebyscore(self.keys.stats_brokers(), "-inf", now - keep)
            pipe.zrange(self.keys.stats_brokers(), 0, -1, withscores=True)
            res = await pipe.execute()
        return {m: float(s) for m, s in res[-1]}


# -- reading (CLI, sidecar) -----------------------------------------------------------------------
@dataclass
class EntityStats:
    kind: str  # "client" or "user"
    ident: str
    fields: dict[str, str]


class StatsReader:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def entity(self, ident: str, kind: str | None = None) -> EntityStats | None:
        """The stats hash of a client id or username (client first when `kind` is not given)."""
        kinds = [kind] if kind else [KIND_CLIENT, KIND_USER]
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in kinds:
                pipe.hgetall(self._key(k, ident))
            found = await pipe.execute()
        for k, h in zip(kinds, found, strict=True):
            if h:
                return EntityStats(k, ident, h)
        return None

    def _key(self, kind: str, ident: str) -> str:
        return self.keys.stats_client(ident) if kind == KIND_CLIENT else self.keys.stats_user(ident)

    async def history(
        self,
        kind: str,
        ident: str,
        *,
        resolution: tuple[str, int, int],
        span: int | None = None,
        now: float | None = None,
    ) -> tuple[list[int], list[int], list[int]]:
        """(bucket starts, messages in, messages out) over `span` seconds (default: all the resolution keeps)."""
        now = time.time() if now is None else now
        res_name, seconds, keep = resolution
        starts = bucket_range(now, seconds, span or keep)
        async with self.redis.pipeline(transaction=False) as pipe:
            for s in starts:
                pipe.zscore(self.keys.stats_rate(res_name, kind, DIR_IN, s), ident)
                pipe.zscore(self.keys.stats_rate(res_name, kind, DIR_OUT, s), ident)
            res = await pipe.execute()
        ins = [int(res[2 * i] or 0) for i in range(len(starts))]
        outs = [int(res[2 * i + 1] or 0) for i in range(len(starts))]
        return starts, ins, outs

    async def top(
        self, kind: str = KIND_CLIENT, *, limit: int = 20, now: float | None = None, window: int = 10
    ) -> tuple[float, list[tuple[str, float, float]]]:
        """The busiest clients (or users) by messages in+out over the last `window` seconds of 10 s
        buckets, across all brokers: (seconds covered, [(id, in per s, out per s)])."""
        now = time.time() if now is None else now
        covered, in_keys, out_keys = self._keys_of(kind, now, window)
        tmp = self.keys.stats_tmp(f"top:{time.monotonic_ns()}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zunionstore(tmp, in_keys + out_keys)
            pipe.zrevrange(tmp, 0, max(0, limit - 1), withscores=True)
            pipe.delete(tmp)
            res = await pipe.execute()
        ids = [m for m, _ in res[1]]
        if not ids:
            return covered, []
        _, rates = await self.recent(kind, ids, now=now, window=window)
        return covered, [(ident, i, o) for ident, (i, o) in zip(ids, rates, strict=True)]

    def _keys_of(self, kind: str, now: float, window: int) -> tuple[float, list[str], list[str]]:
        """(seconds covered, in keys, out keys) of the 10 s buckets of the last `window` seconds of `kind`,
        the current partial bucket included."""
        res_name, seconds, _ = RESOLUTIONS[0]
        cur = bucket_start(now, seconds)
        starts = [cur - seconds * i for i in range(max(1, window // seconds) + 1)]  # + the current partial one
        covered = (now - cur) + seconds * (len(starts) - 1)
        in_keys = [self.keys.stats_rate(res_name, kind, DIR_IN, s) for s in starts]
        out_keys = [self.keys.stats_rate(res_name, kind, DIR_OUT, s) for s in starts]
        return covered, in_keys, out_keys

    async def recent(
        self, kind: str, idents: list[str], *, now: float | None = None, window: int = 10
    ) -> tuple[float, list[tuple[float, float]]]:
        """The message rates (in per s, out per s) of these clients (or users) over the last `window`
        seconds, across all brokers: (seconds covered, one pair per ident, in order)."""
        now = time.time() if now is None else now
        covered, in_keys, out_keys = self._keys_of(kind, now, window)
        if not idents:
            return covered, []
        async with self.redis.pipeline(transaction=False) as pipe:  # ZSCOREs, not ZMSCORE: Redis 6.0 too
            for ident in idents:
                for k in in_keys + out_keys:
                    pipe.zscore(k, ident)
            scores = await pipe.execute()
        n = len(in_keys)
        rows = []
        for j in range(len(idents)):
            mine = scores[j * 2 * n : (j + 1) * 2 * n]
            i = sum(int(v or 0) for v in mine[:n])
            o = sum(int(v or 0) for v in mine[n:])
            rows.append((i / covered if covered else 0.0, o / covered if covered else 0.0))
        return covered, rows

    async def all_rates(
        self, kind: str = KIND_CLIENT, direction: str = "both", *, now: float | None = None, window: int = 10
    ) -> dict[str, float]:
        """The message rate (per s: in, out, or both added up) over the last `window` seconds of every client
        (or user) that had traffic in it, across all brokers, as `recent` computes it: one ZUNIONSTORE of
        the buckets into a scratch key, read whole and deleted in one transaction (one round trip; the sort
        of the whole fleet by rate, GET /api/sessions?sort=rate). Clients without traffic are absent (0)."""
        now = time.time() if now is None else now
        covered, in_keys, out_keys = self._keys_of(kind, now, window)
        sources = {"in": in_keys, "out": out_keys}.get(direction, in_keys + out_keys)
        tmp = self.keys.stats_tmp(f"rates:{time.monotonic_ns()}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zunionstore(tmp, sources)
            pipe.zrange(tmp, 0, -1, withscores=True)
            pipe.delete(tmp)
            res = await pipe.execute()
        if not covered:
            return {}
        return {m: n / covered for m, n in cast("list[tuple[str, float]]", res[1])}

    async def failures(
        self, kind: str, *, limit: int = 20, days: int = 1, now: float | None = None
    ) -> list[tuple[str, int]]:
        """The source addresses (FAILED_ADDR) or usernames (FAILED_USER) with the most refused CONNECTs
        over the last `days` UTC days (today included), across all brokers: [(address or name, count)]."""
        now = time.time() if now is None else now
        today = int(now // FAILED_DAY * FAILED_DAY)
        day_keys = [self.keys.stats_failed(kind, today - FAILED_DAY * i) for i in range(max(1, days))]
        res: list[tuple[str, float]]  # decode_responses=True: members are str
        if len(day_keys) == 1:
            res = cast(
                "list[tuple[str, float]]",
                await self.redis.zrevrange(day_keys[0], 0, max(0, limit - 1), withscores=True),
            )
        else:
            tmp = self.keys.stats_tmp(f"failures:{time.monotonic_ns()}")
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zunionstore(tmp, day_keys)
                pipe.zrevrange(tmp, 0, max(0, limit - 1), withscores=True)
                pipe.delete(tmp)
                res = (await pipe.execute())[1]
        return [(m, int(s)) for m, s in res]

    async def many(self, kind: str, idents: list[str]) -> list[dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for ident in idents:
                pipe.hgetall(self._key(kind, ident))
            return list(await pipe.execute())

    async def brokers(self) -> list[tuple[str, float, dict[str, str]]]:
        """Every broker that sent a heartbeat in the last week: (id, last heartbeat, its hash)."""
        # decode_responses=True: the members are str (redis-py types them bytes | str)
        members = cast(
            "list[tuple[str, float]]", await self.redis.zrange(self.keys.stats_brokers(), 0, -1, withscores=True)
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            for m, _ in members:
                pipe.hgetall(self.keys.stats_broker(m))
            hashes = await pipe.execute()
        return [(m, float(s), h) for (m, s), h in zip(members, hashes, strict=True)]

    async def totals(self) -> dict[str, str]:
        return cast("dict[str, str]", await self.redis.hgetall(self.keys.stats_total()))  # decode_responses=True
