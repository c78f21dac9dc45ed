"""The cluster's Redis side (issue 18, docs/scaling.md): filter sets between brokers, and the inboxes
messages are forwarded through.

Filter sets (`RouteLink`). Each broker keeps its deduplicated entries (cluster/filters.py) in
`cluster:{routes}:filters:<broker>` and appends every change to the `cluster:{routes}` stream, both in
one script (PUBLISH_LUA), numbered by `cluster:{routes}:seq`: a full set at start-up and after any
doubt (a failed write, a reconnect, its own set found missing), deltas as filters come and go, at most
one write per event-loop iteration and one in flight. Every broker reads that stream (XREAD BLOCK from
the last id it saw) into its `FilterTable`: a change reaches the other brokers in one round trip, the
way ACL edits do. A reader that connects, reconnects or finds a gap in `seq` (the stream is capped, or
Redis restarted) resyncs whole: it notes the stream's position, reads every member's hash, then goes on
from that position. A publication carries only set operations, applying one twice or after a later
snapshot changes nothing, so the table converges to Redis' sets whatever the interleaving.

Liveness is the quota registry's (`<prefix>brokers`, quota/heartbeat.py): every `liveness_interval` the
reader looks at it; a broker whose heartbeat ran out is dropped from the table at once (no message is
forwarded to a dead broker), and when the registry loses it (reaped) its filter set and inbox are
deleted. A broker that comes back (it was only late, or re-registered after being fenced) is read
again; one that finds its own set gone (reaped, Redis restarted empty) publishes it whole.

Inboxes (`Outbox`/`Inbox`, below): see their docstrings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis

from ..cluster.filters import LocalFilters
from ..cluster.forward import PackError, RemoteMessage, Sequencer, pack, unpack
from ..cluster.table import FilterTable
from ..tasks import cancel_and_wait
from . import keys as k
from .connection import REDIS_ERRORS, make_async_client

log = logging.getLogger("mqtt_guard.store.cluster")

SEP = "\x00"  # joins entries in a stream field: no topic filter contains U+0000 [MQTT-1.5.4-2]
ROUTES_MAXLEN = 10_000  # publications kept in the routes stream (a reader further behind resyncs whole)
LIVENESS_INTERVAL = 1.0  # seconds between two looks at the broker registry
ABSENT_GRACE = 10.0  # seconds a broker with a filter set may be missing from the registry (see `_look`)
RETRY_MIN = 0.05
RETRY_MAX = 2.0

# KEYS: the broker's filters hash, members, routes stream, seq. ARGV: broker, kind (full/delta/leave),
# maxlen, number of added entries, the added entries, the removed entries. Returns the publication's seq.
# Entries go to HSET/HDEL 500 at a time: one call per 500 entries instead of one each (a whole set of
# 100,000 entries: 117-164 ms of Redis against 160-230 ms, interleaved, on a loaded machine).
PUBLISH_LUA = """
local b, kind, na = ARGV[1], ARGV[2], tonumber(ARGV[4])
local function each(cmd, from, to, value)
  local i = from
  while i <= to do
    local last = math.min(i + 499, to)
    local args = {}
    for x = i, last do
      args[#args + 1] = ARGV[x]
      if value then args[#args + 1] = value end
    end
    redis.call(cmd, KEYS[1], unpack(args))
    i = last + 1
  end
end
if kind ~= 'delta' then redis.call('DEL', KEYS[1]) end
each('HSET', 5, 4 + na, '1')
each('HDEL', 5 + na, #ARGV, nil)
if kind == 'leave' then redis.call('SREM', KEYS[2], b) else redis.call('SADD', KEYS[2], b) end
local seq = redis.call('INCR', KEYS[4])
local add, del = '', ''
if kind == 'delta' then
  add = table.concat(ARGV, '\\0', 5, 4 + na)
  del = table.concat(ARGV, '\\0', 5 + na, #ARGV)
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'b', b, 'kind', kind, 'add', add, 'del', del)
return seq
"""

# KEYS: brokers (registry), members, the broker's filters hash, its inbox. ARGV: broker. Forgets a broker
# the registry no longer has (reaped); does nothing if it registered again meanwhile.
FORGET_LUA = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
return 1
"""


def _split(field: str) -> list[str]:
    return field.split(SEP) if field else []


class RouteLink:
    """Keeps this broker's filter set in Redis and the other brokers' sets in `table`.

    `changed()` is called by the owner after `filters` changed (cluster/node.py does it when an entry
    comes or goes): the write happens once per event-loop iteration whatever the number of changes."""

    def __init__(
        self,
        url: str,
        keys: k.Keys,
        broker_id: str,
        filters: LocalFilters,
        table: FilterTable,
        *,
        routes_maxlen: int = ROUTES_MAXLEN,
        liveness_interval: float = LIVENESS_INTERVAL,
        absent_grace: float = ABSENT_GRACE,
        retry_interval: float = 0.5,
        client: Callable[..., aioredis.Redis] = make_async_client,
        on_gone: Callable[[str], None] | None = None,
    ) -> None:
        """`on_gone(broker)`: a broker left the table (dead, reaped, left): the owner drops what it
        holds for it (the messages waiting to be forwarded to it)."""
        self.url = url
        self.keys = keys
        self.broker_id = broker_id
        self.on_gone = on_gone
        self.filters = filters
        self.table = table
        self.routes_maxlen = routes_maxlen
        self.liveness_interval = liveness_interval
        self.absent_grace = absent_grace
        self.retry_interval = retry_interval
        self._client = client
        self._writer = client(url, pool_size=2)
        self._publish = self._writer.register_script(PUBLISH_LUA)
        self._forget = self._writer.register_script(FORGET_LUA)
        self._need_full = True  # the next publication is the whole set
        self._wake = asyncio.Event()
        self._scheduled = False
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()  # the table reflects Redis (set after each resync, cleared on loss)
        self.published = 0  # publications written (for tests and metrics)
        self.resyncs = 0
        self.last_seq = 0  # of the last publication applied to the table
        self._live: set[str] = set()  # brokers whose heartbeat is current
        self._seen: set[str] = set()  # brokers seen in the registry on this connection (vanishing: reaped)
        self._dead: set[str] = set()  # brokers in the registry whose heartbeat ran out
        self._absent: dict[str, float] = {}  # broker in the table -> since when (loop time) not in the registry
        self._pending_full: set[str] = set()  # brokers that published a full set: their hash is to be read

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publisher(), name="mqtt-guard-cluster-publish"),
            asyncio.create_task(self._reader(), name="mqtt-guard-cluster-routes"),
        ]  # (the reader's first resync asks for the whole set to be published)

    async def stop(self, *, leave: bool = True, timeout: float = 2.0) -> None:
        """Stop; with `leave`, remove this broker's set first (a clean shutdown: the others stop
        forwarding to it at once instead of when its heartbeat runs out)."""
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        if leave:
            try:
                await asyncio.wait_for(self._write("leave", (), ()), timeout)
            except REDIS_ERRORS + (TimeoutError,) as exc:
                log.warning("could not remove this broker's filter set from Redis (%s): its heartbeat will", exc)
        await self._writer.aclose()

    # -- publishing ------------------------------------------------------------------------------

    def changed(self) -> None:
        """The local set changed: publish at the end of this event-loop iteration."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._due)

    def _due(self) -> None:
        self._scheduled = False
        self._wake.set()

    def republish(self) -> None:
        """Publish the whole set (this broker's set may be missing or wrong in Redis)."""
        self._need_full = True
        self._wake.set()

    async def _publisher(self) -> None:
        delay = RETRY_MIN
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._need_full:
                    self._need_full = False
                    await self._write("full", self.filters.take_full(), ())
                elif self.filters.changed:
                    delta = self.filters.take_delta()
                    if delta:
                        await self._write("delta", delta.added, delta.removed)
                delay = RETRY_MIN
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever failed, the next write is the whole set
                self._need_full = True  # whether that write was applied is unknown: send everything
                if isinstance(exc, REDIS_ERRORS):
                    log.debug("filter set publication failed (%s); retrying whole", exc)
                else:
                    log.exception("filter set publication failed; retrying whole")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                self._wake.set()

    async def _write(self, kind: str, added: Any, removed: Any) -> None:
        added, removed = list(added), list(removed)
        await self._publish(
            keys=[
                self.keys.cluster_filters(self.broker_id),
                self.keys.cluster_members(),
                self.keys.cluster_routes(),
                self.keys.cluster_routes_seq(),
            ],
            args=[self.broker_id, kind, self.routes_maxlen, len(added), *added, *removed],
        )
        self.published += 1

    # -- reading ---------------------------------------------------------------------------------

    async def _reader(self) -> None:
        delay = self.retry_interval
        while True:
            redis = self._client(
                self.url,
                socket_timeout=self.liveness_interval + 5,
                pool_size=1,
                client_name=f"mqg-cluster-routes-{self.broker_id}",
                retry=None,  # a dropped connection surfaces here and leads to a resync
            )
            try:
                await self._follow(redis)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                if self.synced.is_set():
                    log.warning("cluster routes: Redis connection lost (%s); resync on reconnect", exc)
            except Exception:
                log.exception("cluster routes reader failed; restarting it")
            finally:
                self.synced.clear()
                await redis.aclose()
            await asyncio.sleep(delay)

    async def _follow(self, redis: aioredis.Redis) -> None:
        last_id = await self._resync(redis)
        loop = asyncio.get_running_loop()
        next_look = loop.time() + self.liveness_interval
        block = max(1, int(self.liveness_interval * 1000))
        routes = self.keys.cluster_routes()
        while True:
            reply = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]],
                await redis.xread({routes: last_id}, count=1000, block=block),
            )
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    if not self._apply(fields):
                        last_id = await self._resync(redis)
                        break
                    last_id = entry_id
                else:
                    continue
                break
            if self._pending_full:
                pending, self._pending_full = self._pending_full, set()
                for b, found in (await self._read_sets(redis, sorted(pending - self._dead))).items():
                    self.table.replace(b, found)
            if loop.time() >= next_look:
                await self._look(redis)
                next_look = loop.time() + self.liveness_interval

    def _apply(self, fields: dict[str, str]) -> bool:
        """One publication into the table; False when one was missed (a gap in `seq`): resync."""
        seq = int(fields.get("seq", 0))
        if seq != self.last_seq + 1:
            log.info("cluster routes: publication %d follows %d: resyncing the whole table", seq, self.last_seq)
            return False
        self.last_seq = seq
        b = fields.get("b", "")
        if b == self.broker_id or not b:
            return True
        kind = fields.get("kind")
        if kind == "leave":
            self._drop(b)
        elif b in self._dead:
            pass  # its heartbeat ran out: read whole if it comes back
        elif kind == "full":
            self._pending_full.add(b)  # its hash is read after this batch of publications (`_follow`)
        else:
            for entry in _split(fields.get("add", "")):
                self.table.add(b, entry)
            for entry in _split(fields.get("del", "")):
                self.table.remove(b, entry)
        return True

    async def _resync(self, redis: aioredis.Redis) -> str:
        """Rebuild the table from Redis; returns the stream position the reading goes on from."""
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xrevrange(self.keys.cluster_routes(), "+", "-", count=1)
            pipe.get(self.keys.cluster_routes_seq())
            pipe.smembers(self.keys.cluster_members())
            tail, seq, members = await pipe.execute()
        last_id = tail[0][0] if tail else "0-0"
        self.last_seq = int(seq or 0)
        self._seen = set()  # (what this connection sees from now on: see `_look`)
        await self._look(redis, members=set(members))
        others = {m for m in members if m != self.broker_id and m not in self._dead}
        sets = await self._read_sets(redis, sorted(others))
        # A broker in the table that is no longer a member is kept: either Redis lost its set (restarted
        # empty) and it publishes it again within a round trip or two (comparing 100,000 entries costs
        # ~20 ms, adding them again ~0.3-0.9 s of this event loop), or it left while this reader was
        # away, and the registry says so (`_look`: at once if seen there, else after `absent_grace`).
        for b, entries in sets.items():
            self.table.replace(b, entries)
        self.resyncs += 1
        self.synced.set()
        self.republish()  # after a reconnect Redis may have lost (or never got) this broker's set
        return str(last_id)

    async def _read_sets(self, redis: aioredis.Redis, brokers: list[str]) -> dict[str, list[str]]:
        if not brokers:
            return {}
        async with redis.pipeline(transaction=False) as pipe:
            for b in brokers:
                pipe.hkeys(self.keys.cluster_filters(b))
            sets = await pipe.execute()
        return dict(zip(brokers, cast(list[list[str]], sets), strict=True))

    async def _look(self, redis: aioredis.Redis, members: set[str] | None = None) -> None:
        """Apply the registry: drop brokers whose heartbeat ran out, forget reaped ones, read again
        those that came back; publish this broker's set whole if Redis lost it."""
        async with redis.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.zrange(self.keys.brokers(), 0, -1, withscores=True)
            pipe.sismember(self.keys.cluster_members(), self.broker_id)
            pipe.exists(self.keys.cluster_filters(self.broker_id))
            (sec, usec), registry, member, exists = await pipe.execute()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        present = {str(b): float(score) for b, score in registry}
        live = {b for b, score in present.items() if score > now_ms}
        dead = set(present) - live
        back = {b for b in self._dead if b in live}  # late, not reaped: its set is still in Redis
        # Gone from the registry: reaped, if this connection saw it there. One not seen since the
        # connection began (Redis restarted empty, the registry refills within a heartbeat) gets
        # `absent_grace` to appear before it counts as gone.
        reaped = {b for b in self._seen if b not in present}
        t = asyncio.get_running_loop().time()
        known = self.table.brokers()
        for b in list(self._absent):
            if b in present or b not in known:
                del self._absent[b]
        for b in known - set(present) - reaped:
            if t - self._absent.setdefault(b, t) >= self.absent_grace:
                reaped.add(b)
        self._live, self._dead = live, dead
        self._seen = (self._seen | set(present)) - reaped
        for b in (dead | reaped) & known:
            why = "dead" if b in dead else "gone"
            log.info("cluster: broker %s is %s: no more messages forwarded to it", b, why)
            self._drop(b)
        for b in reaped:
            if b != self.broker_id:
                await self._forget(
                    keys=[
                        self.keys.brokers(),
                        self.keys.cluster_members(),
                        self.keys.cluster_filters(b),
                        self.keys.cluster_inbox(b),
                    ],
                    args=[b],
                    client=redis,
                )
        reread = back - {self.broker_id}
        if members is None and reread:
            for b, entries in (await self._read_sets(redis, sorted(reread))).items():
                self.table.replace(b, entries)
        if members is None and (not member or (len(self.filters) and not exists)):
            self.republish()

    def _drop(self, broker: str) -> None:
        self.table.drop(broker)
        if self.on_gone is not None:
            self.on_gone(broker)

    @property
    def live(self) -> frozenset[str]:
        """Brokers whose heartbeat was current at the last look at the registry."""
        return frozenset(self._live)


# -- forwarding: the inboxes -------------------------------------------------------------------------

YIELD_EVERY = 1000  # messages the inbox hands on before it lets the event loop serve the connections
INBOX_MAXLEN = 20_000  # entries (one per sender and event-loop iteration) an inbox keeps, unread
BUFFER_LIMIT = 100_000  # messages held for Redis while it is away; past it new QoS 0 messages are dropped


class _Batch:
    __slots__ = ("seq", "records", "qos0")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.records: list[bytes] = []
        self.qos0 = 0


class Outbox:
    """The sending side: `send(message, destinations)` packs the message once and adds it to each
    destination's batch of this event-loop iteration; at the end of the iteration every batch goes out
    in one pipeline, one XADD per destination (MAXLEN ~ `inbox_maxlen`), one pipeline in flight.

    When Redis does not answer, the batches are kept with their sequence numbers and sent again (the
    receiver skips one it already has), with a backoff; messages that come meanwhile wait behind them, in
    order. At most `buffer_limit` messages wait: past it a new QoS 0 message is dropped (counted in
    `lost`); QoS 1/2 messages are kept (the engine's flow control is what bounds them).
    `forget(broker)` drops what waits for a broker that is gone."""

    def __init__(
        self,
        url: str,
        keys: k.Keys,
        broker_id: str,
        *,
        inbox_maxlen: int = INBOX_MAXLEN,
        buffer_limit: int = BUFFER_LIMIT,
        client: Callable[..., aioredis.Redis] = make_async_client,
    ) -> None:
        self.keys = keys
        self.broker_id = broker_id
        self.inbox_maxlen = inbox_maxlen
        self.buffer_limit = buffer_limit
        self.redis = client(url, pool_size=1, decode_responses=False, client_name=f"mqg-cluster-out-{broker_id}")
        self._open: dict[str, _Batch] = {}  # destination -> the batch of this iteration
        self._waiting: list[tuple[str, _Batch]] = []  # closed batches not yet in Redis, in order
        self._seq: dict[str, int] = {}
        self._inflight = 0  # the head of _waiting that is being written (never dropped by `forget`)
        self._held = 0  # messages in _open and _waiting
        self._scheduled = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.outage_since: float | None = None
        # counters
        self.sent = 0  # messages written
        self.entries = 0  # stream entries written
        self.round_trips = 0
        self.lost = 0  # QoS 0 messages dropped while Redis was away and the buffer full
        self.failed = 0  # messages in batches Redis refused with an error

    def send(self, record: bytes, qos: int, destinations: frozenset[str] | set[str] | list[str]) -> None:
        """Forward one packed message (cluster/forward.py `pack_one`) to each destination."""
        if qos == 0 and self._held >= self.buffer_limit:
            self.lost += 1
            if self.lost == 1 or self.lost % 10_000 == 0:
                log.warning("cluster: %d QoS 0 message(s) not forwarded: Redis is away and the buffer full", self.lost)
            return
        opened = self._open
        for dest in destinations:
            batch = opened.get(dest)
            if batch is None:
                seq = self._seq.get(dest, 0) + 1
                self._seq[dest] = seq
                batch = opened[dest] = _Batch(seq)
            batch.records.append(record)
            if qos == 0:
                batch.qos0 += 1
            self._held += 1
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._close_iteration)

    def _close_iteration(self) -> None:
        self._scheduled = False
        if self._open:
            self._waiting.extend(self._open.items())
            self._open = {}
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-guard-cluster-out")
        self._wake.set()

    def forget(self, broker_id: str) -> None:
        """Nothing more for `broker_id` (dead or gone): drop what waits for it."""
        head, tail = self._waiting[: self._inflight], self._waiting[self._inflight :]
        dropped = [b for d, b in tail if d == broker_id]
        self._waiting = head + [(d, b) for d, b in tail if d != broker_id]
        batch = self._open.pop(broker_id, None)
        if batch is not None:
            dropped.append(batch)
        self._held -= sum(len(b.records) for b in dropped)
        # (its sequence goes on: should it come back, the receiver's memory of this sender must see
        # new numbers, never ones it takes for re-sends)

    @property
    def pending(self) -> int:
        """Messages (counted once per destination) not yet in Redis."""
        return self._held

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything sent so far is in Redis (or `timeout`)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._held and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        return not self._held

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.redis.aclose()

    async def _run(self) -> None:
        delay = RETRY_MIN
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            batches = self._waiting[:1000]
            self._inflight = len(batches)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for dest, batch in batches:
                        pipe.xadd(
                            self.keys.cluster_inbox(dest),
                            {"o": self.broker_id, "s": batch.seq, "m": pack(batch.records)},
                            maxlen=self.inbox_maxlen,
                            approximate=True,
                        )
                    await pipe.execute()
            except REDIS_ERRORS as exc:
                self._inflight = 0
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning("cluster: Redis unreachable (%s): %d forwarded message(s) wait", exc, self._held)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception:  # a reply that is an error (a key of the wrong type): these batches are lost
                n = sum(len(b.records) for _d, b in batches)
                log.exception("cluster: %d forwarded message(s) in %d batch(es) refused by Redis", n, len(batches))
                del self._waiting[: len(batches)]
                self._inflight = 0
                self._held -= n
                self.failed += n
                continue
            if self.outage_since is not None:
                log.warning("cluster: forwarding resumed after %.1f s", time.monotonic() - self.outage_since)
                self.outage_since = None
            delay = RETRY_MIN
            del self._waiting[: len(batches)]
            self._inflight = 0
            n = sum(len(b.records) for _d, b in batches)
            self._held -= n
            self.sent += n
            self.entries += len(batches)
            self.round_trips += 1


class Inbox:
    """The receiving side: reads this broker's inbox stream from the last id it saw (XREAD BLOCK; the
    first read of a new broker's inbox starts at its beginning) and hands every message, in order, to
    `on_remote`. A dropped connection is reconnected after `retry_interval` and the reading goes on
    from the same id: what was sent meanwhile is read then, nothing twice. A batch seen already (the
    sender sent it again) is skipped; missing ones (trimmed while this broker was away longer than the
    inbox holds) are counted in `missed` and logged. What was read is trimmed away (XTRIM MINID) every
    `trim_interval`, so the inbox holds only what is unread."""

    def __init__(
        self,
        url: str,
        keys: k.Keys,
        broker_id: str,
        on_remote: Callable[[RemoteMessage], None],
        *,
        retry_interval: float = 0.5,
        block: float = 1.0,
        trim_interval: float = 1.0,
        count: int = 500,
        client: Callable[..., aioredis.Redis] = make_async_client,
    ) -> None:
        self.url = url
        self.keys = keys
        self.broker_id = broker_id
        self.on_remote = on_remote
        self.retry_interval = retry_interval
        self.block = block
        self.trim_interval = trim_interval
        self.count = count
        self._client = client
        self.name = f"mqg-cluster-in-{broker_id}"
        self.last_id = b"0-0"
        self.sequencer = Sequencer()
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # counters
        self.received = 0  # messages handed to on_remote
        self.duplicates = 0  # batches skipped (re-sent)
        self.missed = 0  # batches never read (trimmed away)
        self.unreadable = 0  # batches of a format this broker does not read
        self.reconnects = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-guard-cluster-in")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            redis = self._client(
                self.url,
                socket_timeout=self.block + 5,
                pool_size=1,
                decode_responses=False,
                client_name=self.name,
                retry=None,  # a dropped connection surfaces here (and is counted), not as a silent re-send
            )
            try:
                await self._read(redis)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                if self.connected.is_set():
                    log.warning("cluster inbox: Redis connection lost (%s); reading on from %s", exc, self.last_id)
            except Exception:
                log.exception("cluster inbox reader failed; restarting it")
            finally:
                self.connected.clear()
                await redis.aclose()
            self.reconnects += 1
            await asyncio.sleep(self.retry_interval)

    async def _read(self, redis: aioredis.Redis) -> None:
        inbox = self.keys.cluster_inbox(self.broker_id)
        block = max(1, int(self.block * 1000))
        loop = asyncio.get_running_loop()
        next_trim = loop.time() + self.trim_interval
        trimmed = self.last_id
        await redis.ping()
        self.connected.set()
        while True:
            reply = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                await redis.xread({inbox: self.last_id}, count=self.count, block=block),
            )
            mark = self.received
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._entry(fields)
                    self.last_id = entry_id
                    if self.received - mark >= YIELD_EVERY:  # a long backlog must not stall the broker's loop
                        await asyncio.sleep(0)
                        mark = self.received
            if loop.time() >= next_trim and self.last_id != trimmed:
                await redis.xtrim(inbox, minid=_after(self.last_id), approximate=False)
                trimmed = self.last_id
                next_trim = loop.time() + self.trim_interval

    def _entry(self, fields: dict[bytes, bytes]) -> None:
        origin = fields.get(b"o", b"").decode()
        try:
            seq = int(fields.get(b"s", b"0"))
        except ValueError:
            seq = 0
        missed = self.sequencer.check(origin, seq)
        if missed < 0:
            self.duplicates += 1
            return
        if missed:
            self.missed += missed
            log.warning(
                "cluster inbox: %d batch(es) from broker %s were lost (trimmed while this broker was away)",
                missed,
                origin,
            )
        try:
            messages = unpack(fields.get(b"m", b""), origin)
        except PackError as exc:
            self.unreadable += 1
            log.error("cluster inbox: a batch from broker %s skipped: %s", origin, exc)
            return
        deliver = self.on_remote
        for message in messages:
            self.received += 1
            try:
                deliver(message)
            except Exception:
                log.exception("cluster inbox: delivering a message from %s on %r failed", origin, message.topic)


def _after(entry_id: bytes) -> str:
    """The smallest stream id after `entry_id` (XTRIM MINID keeps ids >= it)."""
    ms, _, seq = entry_id.decode().partition("-")
    return f"{ms}-{int(seq or 0) + 1}"
