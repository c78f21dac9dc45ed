"""Analytics in Redis: every Redis call for counters, rate history, heartbeats and the `stats`/`top` reads.

Key names come from `Keys` (mqtt_guard/store/keys.py); docs/redis-schema.md documents them. Writes are
batched: `StatsWriter.write()` turns one `Batch` (what one flush carries) into MULTI/EXEC transactions, so a
batch is applied entirely or not at all and a failed one can be retried without counting twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from ..metrics import counters as C
from ..metrics.rates import DIR_IN, DIR_OUT, RESOLUTIONS, bucket_range, bucket_start
from .keys import Keys

log = logging.getLogger("mqtt_guard.metrics")

KIND_CLIENT = "client"
KIND_USER = "user"

# Fields of the broker heartbeat hash (`stats:broker:<id>`; the counters share the hash).
HB_HEARTBEAT = "heartbeat_at"
HB_STARTED = "started_at"
HB_HOST = "host"
HB_PID = "pid"
HB_VERSION = "version"
HB_CLIENTS = "clients_connected"

# Set the client's disconnected state only when it is still attributed to this broker: when it moved to
# another broker in between, that broker's "connected" must stand.
_DISCONNECT_LUA = """
local b = redis.call('HGET', KEYS[1], ARGV[1])
if b == false or b == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[3], '0', ARGV[4], ARGV[5])
end
return 0
"""


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

    def empty(self) -> bool:
        return not (self.clients or self.users or self.totals or self.gauges or self.events or self.rates)

    def size(self) -> int:
        """Entries held, the unit of the backlog bound."""
        return (len(self.clients) + len(self.users) + len(self.gauges) + len(self.events)
                + sum(len(b) for b in self.rates.values()))

    def merge(self, other: Batch) -> None:
        for key, counts in other.clients.items():
            _add(self.clients.setdefault(key, {}), counts)
        for key, counts in other.users.items():
            _add(self.users.setdefault(key, {}), counts)
        _add(self.totals, other.totals)
        for cid, g in other.gauges.items():
            self.gauges.setdefault(cid, {}).update(g)
        self.events.extend(other.events)
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
    b = Batch(clients=drain.clients, users=drain.users, totals=drain.totals, gauges=drain.gauges,
              events=drain.events)
    rates: dict[tuple[str, str], list[int]] = {}
    for (cid, user), counts in drain.clients.items():
        i, o = counts.get(C.MSGS_IN, 0), counts.get(C.MSGS_OUT, 0)
        if not (i or o):
            continue
        _rate_add(rates, (KIND_CLIENT, cid), i, o)
        if user is not None:
            _rate_add(rates, (KIND_USER, user), i, o)
    if rates:
        b.rates[bucket_start(drain.started, RESOLUTIONS[0][1])] = rates
    return b


def _rate_add(rates: dict[tuple[str, str], list[int]], key: tuple[str, str], i: int, o: int) -> None:
    cur = rates.get(key)
    if cur is None:
        rates[key] = [i, o]
    else:
        cur[0] += i
        cur[1] += o


class StatsWriter:
    """The flusher's side: write batches, heartbeat, read the fleet's heartbeats."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, broker_id: str, *, ttl: float,
                 chunk: int = 2000) -> None:
        self.redis = redis
        self.keys = keys
        self.broker_id = broker_id
        self.ttl = int(ttl)
        self.chunk = chunk

    async def ping(self) -> float:
        """One PING; its round trip in seconds."""
        t0 = time.perf_counter()
        await self.redis.ping()
        return time.perf_counter() - t0

    async def write(self, part: Batch, now: float | None = None) -> None:
        """Write one part (see `split`) in one MULTI/EXEC transaction: all of it or, when Redis fails
        (the exception propagates), none of it. A command Redis refuses inside the transaction (a key of
        the wrong type, edited by hand) is logged and skipped: retrying would count the rest twice."""
        now = time.time() if now is None else now
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue(pipe, part, now)
            results = await pipe.execute(raise_on_error=False)
        for r in results:
            if isinstance(r, Exception):
                log.warning("Redis refused a stats command (a key edited by hand?): %s", r)
                break

    def split(self, batch: Batch) -> list[Batch]:
        """Parts of about `chunk` entries, each written in its own transaction: client entries, then user entries, then rates; totals, gauges and events go with the
        last chunk (they are small and their order matters less than the counters')."""
        n = self.chunk
        clients = list(batch.clients.items())
        users = list(batch.users.items())
        rate_items = [(b, k, v) for b, entries in batch.rates.items() for k, v in entries.items()]
        parts: list[Batch] = []
        for i in range(0, len(clients), n):
            parts.append(Batch(clients=dict(clients[i:i + n])))
        for i in range(0, len(users), n):
            parts.append(Batch(users=dict(users[i:i + n])))
        for i in range(0, len(rate_items), n):
            p = Batch()
            for b, k, v in rate_items[i:i + n]:
                p.rates.setdefault(b, {})[k] = list(v)
            parts.append(p)
        last = Batch(totals=dict(batch.totals), gauges=dict(batch.gauges), events=list(batch.events))
        if not last.empty() or not parts:
            parts.append(last)
        return parts

    def _queue(self, pipe: Any, b: Batch, now: float) -> None:
        keys, ttl, me = self.keys, self.ttl, self.broker_id
        now_i = int(now)
        for (cid, user), counts in b.clients.items():
            k = keys.stats_client(cid)
            for name, v in counts.items():
                pipe.hincrby(k, name, v)
            fields: dict[str, Any] = {C.G_LAST_SEEN: now_i}
            if user is not None:
                fields[C.G_USERNAME] = user
            pipe.hset(k, mapping=fields)
            pipe.expire(k, ttl)
        for user, counts in b.users.items():
            k = keys.stats_user(user)
            for name, v in counts.items():
                pipe.hincrby(k, name, v)
            pipe.hset(k, C.G_LAST_SEEN, now_i)
            pipe.expire(k, ttl)
        for bucket, entries in b.rates.items():
            for res_name, seconds, keep in RESOLUTIONS:
                start = bucket_start(bucket, seconds)
                expire_at = start + seconds + keep
                if expire_at <= now:
                    continue  # older than that resolution keeps (a long Redis outage): skip
                touched: set[str] = set()
                for (kind, ident), (i, o) in entries.items():
                    for direction, v in ((DIR_IN, i), (DIR_OUT, o)):
                        if v:
                            rk = keys.stats_rate(res_name, kind, direction, start)
                            pipe.zincrby(rk, v, ident)
                            touched.add(rk)
                for rk in touched:
                    pipe.expireat(rk, int(expire_at))
        if b.totals:
            total_key, broker_key = keys.stats_total(), keys.stats_broker(me)
            for name, v in b.totals.items():
                pipe.hincrby(total_key, name, v)
                pipe.hincrby(broker_key, name, v)
        for cid, g in b.gauges.items():
            k = keys.stats_client(cid)
            pipe.hset(k, mapping=g)
            pipe.expire(k, ttl)
        for kind, cid, user, at in b.events:
            k = keys.stats_client(cid)
            if kind == "connect":
                fields = {C.G_CONNECTED: 1, C.G_CONNECTED_SINCE: round(at, 3), C.G_BROKER: me}
                if user is not None:
                    fields[C.G_USERNAME] = user
                pipe.hset(k, mapping=fields)
                pipe.hdel(k, C.G_DISCONNECTED_AT)
            else:
                pipe.eval(_DISCONNECT_LUA, 1, k, C.G_BROKER, me, C.G_CONNECTED, C.G_DISCONNECTED_AT, round(at, 3))
            pipe.expire(k, ttl)

    async def heartbeat(self, fields: dict[str, Any], now: float | None = None, keep: float = 7 * 86400) -> \
            dict[str, float]:
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

    async def history(self, kind: str, ident: str, *, resolution: tuple[str, int, int],
                      span: int | None = None, now: float | None = None) -> tuple[list[int], list[int], list[int]]:
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

    async def top(self, kind: str = KIND_CLIENT, *, limit: int = 20, now: float | None = None,
                  window: int = 10) -> tuple[float, list[tuple[str, float, float]]]:
        """The busiest clients (or users) by messages in+out over the last `window` seconds of 10 s
        buckets, across all brokers: (seconds covered, [(id, in per s, out per s)])."""
        now = time.time() if now is None else now
        res_name, seconds, _ = RESOLUTIONS[0]
        cur = bucket_start(now, seconds)
        starts = [cur - seconds * i for i in range(max(1, window // seconds) + 1)]  # + the current partial one
        covered = (now - cur) + seconds * (len(starts) - 1)
        in_keys = [self.keys.stats_rate(res_name, kind, DIR_IN, s) for s in starts]
        out_keys = [self.keys.stats_rate(res_name, kind, DIR_OUT, s) for s in starts]
        tmp = self.keys.stats_tmp(f"top:{time.monotonic_ns()}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zunionstore(tmp, in_keys + out_keys)
            pipe.zrevrange(tmp, 0, max(0, limit - 1), withscores=True)
            pipe.delete(tmp)
            res = await pipe.execute()
        ids = [m for m, _ in res[1]]
        if not ids:
            return covered, []
        async with self.redis.pipeline(transaction=False) as pipe:  # ZSCOREs, not ZMSCORE: Redis 6.0 too
            for ident in ids:
                for k in in_keys + out_keys:
                    pipe.zscore(k, ident)
            scores = await pipe.execute()
        n = len(starts)
        rows = []
        for j, ident in enumerate(ids):
            mine = scores[j * 2 * n:(j + 1) * 2 * n]
            i = sum(int(v or 0) for v in mine[:n])
            o = sum(int(v or 0) for v in mine[n:])
            rows.append((ident, i / covered if covered else 0.0, o / covered if covered else 0.0))
        return covered, rows

    async def many(self, kind: str, idents: list[str]) -> list[dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for ident in idents:
                pipe.hgetall(self._key(kind, ident))
            return list(await pipe.execute())

    async def brokers(self) -> list[tuple[str, float, dict[str, str]]]:
        """Every broker that sent a heartbeat in the last week: (id, last heartbeat, its hash)."""
        members = await self.redis.zrange(self.keys.stats_brokers(), 0, -1, withscores=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            for m, _ in members:
                pipe.hgetall(self.keys.stats_broker(m))
            hashes = await pipe.execute()
        return [(m, float(s), h) for (m, s), h in zip(members, hashes, strict=True)]

    async def totals(self) -> dict[str, str]:
        return await self.redis.hgetall(self.keys.stats_total())
