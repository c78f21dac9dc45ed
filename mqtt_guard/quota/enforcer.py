"""Quota enforcement inside one broker process (the Guard delegates to `QuotaEnforcer`).

- CONNECT (`attach`): refuse a blocked client or user, enforce `sessions` through the session registry
  (global across brokers), register the session, take the first lease. In the steady state it awaits
  no Redis round trip: blocks and limits are cached in process under client-side-caching
  invalidation (caches.py), a user's leases linger after its last client left (`quota.linger`), and a
  CONNECT that takes one of the broker's reserved session slots is registered in the background
  (registry.py). Otherwise it reads Redis as before.
- Every message (`admit_publish`, `admit_delivery`, synchronous): token bucket for `rate`, local
  lease spending for `events`/`bytes`. No Redis round trip.
- Background: the heartbeat (every `quota.sync_interval`) reports usage and refreshes leases in one
  pipelined batch, refreshes the broker's liveness and its sessions' queue depth and usage, and reaps
  brokers that stopped heartbeating; the kick consumer executes kicks queued for this broker.
- Disconnect (`detach`): unregister the session (batched, not awaited), return the user's lease
  `quota.linger` after its last client here left (at the heartbeat).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..logutil import RateLimitedLog
from ..metrics import counters as C
from ..store.connection import REDIS_ERRORS, make_async_client
from ..store.quota import Block, QuotaStore, RegistryOp, RegistryResult
from ..tasks import cancel_and_wait
from .bucket import TokenBucket
from .caches import UNKNOWN, BlockCache, LimitsCache
from .ledger import Entry, Verdict, lease_block, monotonic
from .limits import NO_LIMITS, Limits, parse_limits
from .registry import SessionRegistry
from .stretch import Reservation, Stretch, group_reserve, open_stretch, release, settle_stretch
from .windows import utc

if TYPE_CHECKING:
    from ..guard import Guard
    from ..guard_client import GuardClient

log = logging.getLogger("mqtt_guard.quota")
drop_log = RateLimitedLog(log)

METRICS = ("events", "bytes")
URGENT_GAP = 0.05  # an entry that ran short is synced at most this often outside the heartbeat
FULL_SYNC_EVERY = 5  # heartbeats between syncs of entries that did not change
REAP_EVERY = 5  # heartbeats between looks for dead brokers
REPORT_SLICE = 200  # connections per step of the heartbeat report (the loop is given back between steps)
LIMITS_CACHE = 10_000  # last known limits of users seen by this broker (used while Redis is down)


class QuotaRefusal(Exception):
    """A CONNECT refused by quota rules (block, too many sessions): CONNACK 5, the message says why."""


@dataclass(eq=False, slots=True)
class ClientQuota:
    client: GuardClient
    conn: str
    since: float
    user: UserQuota | None = None
    bucket: TokenBucket | None = None
    registered: bool = False  # an open was sent (so a close is due)
    confirmed: bool = False  # Redis applied the open: its session hash exists
    kicking: bool = False
    usage: dict[str, int] = field(
        default_factory=lambda: {"events_in": 0, "events_out": 0, "bytes_in": 0, "bytes_out": 0}
    )
    reported: dict[str, Any] = field(default_factory=dict)
    queue_over_since: float | None = None


@dataclass(eq=False, slots=True)
class UserQuota:
    username: str
    limits: Limits
    clients: dict[str, ClientQuota] = field(default_factory=dict)
    current: dict[str, Entry] = field(default_factory=dict)  # metric -> entry of the current window
    upcoming: dict[str, Entry] = field(default_factory=dict)  # metric -> prefetched entry of the next window
    ready: asyncio.Future[None] | None = None  # the first sync
    idle_since: float | None = None  # monotonic: its last client here left (lingering until quota.linger)


class DeliveryGroup:
    """Delivery accounting for one message to a fixed set of clients (the engine keeps one per cached
    topic route): the same decisions and counts as calling `admit_delivery` for each client in turn,
    but the allowance of a user is spent once for all of its clients when it covers them all, which
    is what makes a fan-out to many clients of one user cheap. Valid while `version` equals the
    enforcer's (clients attached, detached, taken over: rebuild)."""

    __slots__ = ("enforcer", "version", "groups", "stretch", "ok", "n", "b", "reserved")

    def __init__(self, enforcer: QuotaEnforcer, clients: list[GuardClient]) -> None:
        self.enforcer = enforcer
        self.version = enforcer.version
        # Per read batch (quota/stretch.py): the Stretch this group last reserved for, whether it could,
        # and the deliveries counted since (n messages, b payload bytes, to every client).
        self.stretch: Stretch | None = None
        self.ok = False
        self.n = 0
        self.b = 0
        self.reserved: list[tuple[Reservation, int]] = []
        by_user: dict[UserQuota | None, list[ClientQuota]] = {}
        get = enforcer.clients.get
        for client in clients:
            cq = get(client.client_id)
            if cq is None or cq.client is not client:
                continue  # not tracked by the quota: admitted, not counted (as admit_delivery)
            by_user.setdefault(cq.user, []).append(cq)
        self.groups = [(user, cqs, [cq.usage for cq in cqs]) for user, cqs in by_user.items()]

    def current(self) -> bool:
        return self.version == self.enforcer.version

    def reserve(self, st: Stretch) -> bool:
        """Reserve the allowance of every delivery `st` can make through this group (then the engine
        only counts them: `n += 1; b += payload_len`); False: use `admit` for each message of `st`."""
        self.stretch = st
        taken = group_reserve(self.enforcer, self.groups, st.events, st.nbytes)
        if taken is None:
            self.ok = False
            return False
        self.ok = True
        self.n = self.b = 0
        self.reserved = taken
        st.groups.append(self)
        return True

    def settle(self) -> None:
        """Spend the deliveries counted since `reserve` (exactly what `admit` would have), give back the rest."""
        n, b = self.n, self.b
        enforcer = self.enforcer
        for reservation, k in self.reserved:
            release(enforcer, reservation, n * k, b * k)
        self.reserved = []
        self.stretch = None
        self.ok = False
        if n:
            for _, _, usages in self.groups:
                for usage in usages:
                    usage["events_out"] += n
                    usage["bytes_out"] += b
        self.n = self.b = 0

    def admit(self, topic: str, payload_len: int) -> set[str] | None:
        """None when every client may have the delivery; else the ids of those it is withheld from."""
        refused = None
        for user, cqs, usages in self.groups:
            if user is not None and user.current and user.limits.counts_out:
                if not self.enforcer._spend_n(user, len(cqs), payload_len):  # noqa: SLF001 - exact per client
                    for cq in cqs:
                        if self.enforcer._spend(cq, user, topic, payload_len):  # noqa: SLF001
                            usage = cq.usage
                            usage["events_out"] += 1
                            usage["bytes_out"] += payload_len
                        else:
                            if refused is None:
                                refused = set()
                            refused.add(cq.client.client_id)
                    continue
            for usage in usages:
                usage["events_out"] += 1
                usage["bytes_out"] += payload_len
        return refused


class QuotaEnforcer:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.config = guard.config.quota
        self.keys = guard.keys
        self.store = QuotaStore(guard.redis, guard.keys, audit_maxlen=self.config.audit_maxlen)
        self.broker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Connection ids: a random prefix per broker run and a counter (a uuid4 per CONNECT was a
        # getrandom() system call and ~2 % of a CONNECT's CPU).
        self._conn_prefix = uuid.uuid4().hex[:8]
        self._conn_seq = itertools.count(1)
        self.started = time.time()
        self.clients: dict[str, ClientQuota] = {}
        self.users: dict[str, UserQuota] = {}
        self.entries: dict[str, Entry] = {}  # usage key -> entry (also released ones until synced)
        listener = guard.listener
        connected = listener.connected.is_set
        # Limits and blocks as Redis has them, while the invalidation listener vouches for them.
        self.limits = LimitsCache(connected, LIMITS_CACHE)
        self.blocks = BlockCache(self.store, connected, self.keys.blocks_head() in listener.prefixes)
        self.registry = SessionRegistry(self.store, self.broker_id, self._redis_lost)
        self._unregistered: list[ClientQuota] = []  # admitted while Redis was unreachable: registered later
        self.redis_ok = True
        self._urgent: set[str] = set()
        self._urgent_task: asyncio.Task[None] | None = None
        self._reload: set[str] = set()
        self._reload_task: asyncio.Task[None] | None = None
        self._alone_checks = 0  # bumped when the brokers key changes (registry.alone is then re-checked)
        self._alone_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._kick_redis: Any = None
        self._ticks = 0
        self.heartbeats = 0
        # Bumped when a client's ClientQuota or UserQuota binding changes (attach, detach, take-over):
        # a DeliveryGroup built before is rebuilt.
        self.version = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._kick_redis = make_async_client(self.guard.config.redis.url, socket_timeout=5.0)
        self.blocks.start()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="mqtt-guard-quota-heartbeat"),
            asyncio.create_task(self._kick_loop(), name="mqtt-guard-kicks"),
        ]

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        await self.blocks.stop()
        if self._background:
            await asyncio.wait(self._background, timeout=2)
        try:
            await asyncio.wait_for(self._shutdown_sync(), 3)
        except (TimeoutError, *REDIS_ERRORS) as exc:
            log.warning(
                "could not hand back quota leases at shutdown (%s); they are reclaimed when this broker is found dead",
                exc or type(exc).__name__,
            )
        if self._kick_redis is not None:
            await self._kick_redis.aclose()

    async def _shutdown_sync(self) -> None:
        """Report the last spending, return every lease and take this broker out of the registry (its
        sessions and session slots with it)."""
        await self.registry.drain()
        for entry in self.entries.values():
            entry.release = True
        await self._sync(list(self.entries.values()))
        await self.guard.redis.zadd(self.keys.brokers(), {self.broker_id: 0})
        await self.store.reap(self.broker_id)

    # -- CONNECT -------------------------------------------------------------------------------------
    async def attach(self, client: GuardClient) -> ClientQuota:
        cq = ClientQuota(client, f"{self._conn_prefix}{next(self._conn_seq):x}", time.time())
        username = client.username
        limits = NO_LIMITS
        try:
            block = self.blocks.lookup(client.client_id, username)
            cached = self.limits.get(username) if username is not None else NO_LIMITS
            if block is UNKNOWN or cached is None:
                block, cached = await self._read_connect_state(client, block, cached)
            if block is not None:
                raise QuotaRefusal(block.describe())
            limits = cached
            await self._open(cq, limits)
        except REDIS_ERRORS as exc:
            self._redis_lost(exc)
            cq.registered = True
            self._unregistered.append(cq)
            if username is not None:
                limits = self.limits.last.get(username, NO_LIMITS)
            log.warning(
                "client %r admitted while Redis is unreachable: quota limits known so far apply (%s)",
                client.client_id,
                "none known" if limits.empty else "cached",
            )
        except BaseException:
            if cq.registered:  # e.g. the connection went away while its open was awaited: undo it
                self._close_later(cq)
            raise
        try:
            self._bind(cq, limits)
            user = cq.user
            if user is not None and user.ready is not None and not user.ready.done():
                await asyncio.shield(user.ready)
        except BaseException:
            self._forget(cq)
            if cq.registered:
                self._close_later(cq)
            raise
        return cq

    async def _read_connect_state(
        self,
        client: GuardClient,
        block: Any,
        cached: Limits | None,
    ) -> tuple[Any, Limits]:
        """What the caches could not vouch for, from Redis in one round trip: the block, the limits."""
        username = client.username
        token = self.limits.begin()
        if block is UNKNOWN and cached is None:
            block, (raw_users, raw_default) = await asyncio.gather(
                self.store.blocks(username, client.client_id), self.store.load_limits([username])
            )  # type: ignore[list-item]
        elif block is UNKNOWN:
            return await self.store.blocks(username, client.client_id), cached  # type: ignore[return-value]
        else:
            raw_users, raw_default = await self.store.load_limits([username])  # type: ignore[list-item]
        assert username is not None
        return block, self._parsed(username, raw_users.get(username), raw_default, token)

    async def _open(self, cq: ClientQuota, limits: Limits) -> None:
        """Register the connection. Awaits Redis only when `sessions` must be checked there (no slot of
        the user held here); else the registration goes out with the next batch."""
        client = cq.client
        username = client.username
        sessions = limits.sessions if username is not None else None
        cq.registered = True  # from here on its close is due (a no-op in Redis if the open did not happen)

        def op(mode: str) -> RegistryOp:
            return RegistryOp("o", client.client_id, cq.conn, username, cq.since, sessions, mode)

        if sessions is None:
            self.registry.submit(op("c"), lambda res: self._opened(cq, res))
            return
        assert username is not None
        now = monotonic()
        self.registry.state(username, sessions, self.config.lease_fraction, now)
        if self.registry.take_slot(username, sessions, now):
            self.registry.submit(op("s"), lambda res: self._opened(cq, res))
            return
        res = await self.registry.call(op("c"))
        if not res.ok:
            cq.registered = False
            for holder in res.holders:
                # Their unused slots keep this user's clients out here: ask for them back now rather
                # than at their next heartbeat (the next CONNECT benefits).
                self._spawn(self._push_quietly(holder, {"slots": username, "by": self.broker_id}))
            reserved = f" and brokers reserve {res.reserved} slot(s)" if res.reserved else ""
            raise QuotaRefusal(
                f"too many sessions: user {username!r} has {res.sessions} connected{reserved} (sessions {sessions})"
            )
        cq.confirmed = True
        self._took_over(cq, res)

    def _opened(self, cq: ClientQuota, res: RegistryResult | BaseException) -> None:
        """A registration that was not awaited was applied (or failed: Redis down, admitted as such)."""
        if isinstance(res, BaseException):
            self._unregistered.append(cq)
            return
        if res.ok:
            cq.confirmed = True
            self._took_over(cq, res)
            return
        # Only when Redis lost the slot this CONNECT was admitted on (Redis restarted empty, this broker
        # taken for dead) and the user is at its limit: the limit wins.
        cq.registered = False
        client = cq.client
        log.warning(
            "client %r (user %r) admitted on a session slot that Redis no longer had: too many "
            "sessions (%d connected); disconnecting it",
            client.client_id,
            client.username,
            res.sessions,
        )
        if self.clients.get(client.client_id) is cq:
            self._spawn(self.guard.kick(client.client_id, "too many sessions"))

    def _took_over(self, cq: ClientQuota, res: RegistryResult) -> None:
        if res.prev_broker and res.prev_broker != self.broker_id:
            self._spawn(
                self._push_kick(
                    res.prev_broker, cq.client.client_id, res.prev_conn, f"connected again on broker {self.broker_id}"
                )
            )

    def _parsed(self, username: str, raw: dict[str, str] | None, default: dict[str, str], token: int = -1) -> Limits:
        """Parse (logging malformed values) and cache; `token` from `limits.begin()` before the read."""
        limits = parse_limits(raw, default)
        for problem in limits.problems:
            drop_log.log(
                logging.ERROR,
                ("limits", username, problem),
                "quota limits of user %r: ignoring malformed value: %s",
                username,
                problem,
            )
        self.limits.put(username, limits, token)
        return limits

    def _bind(self, cq: ClientQuota, limits: Limits) -> None:
        """Make the client known locally: its rate bucket and its user's entries."""
        client = cq.client
        old = self.clients.get(client.client_id)
        if old is not None:
            # A take-over on this broker: the old connection's detach will find nothing here, so its
            # registry entry is closed now (a no-op where the new registration replaced it).
            self._forget(old)
            if old.registered:
                self._close_later(old)
        self.clients[client.client_id] = cq
        self.version += 1
        if limits.rate is not None:
            cq.bucket = TokenBucket(limits.rate.per_second, limits.rate.burst)
        if client.username is None:
            return
        user = self.users.get(client.username)
        if user is not None:
            user.idle_since = None  # came back while lingering: its leases are still here
        else:
            user = self.users[client.username] = UserQuota(client.username, limits)
            self._set_entries(user, time.time())
            if user.current:
                user.ready = self._spawn(self._first_sync(user))
        user.clients[client.client_id] = cq
        cq.user = user

    async def _first_sync(self, user: UserQuota) -> None:
        try:
            await self._sync(list(user.current.values()))
        except REDIS_ERRORS as exc:
            self._redis_lost(exc)

    def _set_entries(self, user: UserQuota, now: float) -> None:
        """Point the user at the entries of the current windows of its limits (reusing live ones)."""
        for metric in METRICS:
            allowance = user.limits.allowance(metric)
            old = user.current.get(metric)
            if allowance is None:
                if old is not None:
                    self._retire(old)
                    del user.current[metric]
                user.upcoming.pop(metric, None)
                continue
            entry = self._entry(
                user.username, metric, allowance.limit, allowance.window.start(now), allowance.window.seconds
            )
            if old is not None and old is not entry:
                self._retire(old)
            user.current[metric] = entry
            nxt = user.upcoming.get(metric)
            if nxt is not None and (nxt.start != entry.end or nxt.limit != allowance.limit):
                self._retire(nxt)
                del user.upcoming[metric]

    def _entry(self, username: str, metric: str, limit: int, start: int, length: int) -> Entry:
        key = self.keys.quota_usage(username, metric, start)
        minimum = self.config.lease_min_events if metric == "events" else self.config.lease_min_bytes
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(
                key=key, username=username, metric=metric, limit=limit, start=start, end=start + length, block=0
            )
        entry.release = False
        if entry.limit != limit or entry.block == 0:
            entry.limit = limit
            entry.block = lease_block(limit, self.config.lease_fraction, minimum)
        return entry

    def _retire(self, entry: Entry) -> None:
        entry.release = True

    # -- disconnect ------------------------------------------------------------------------------------
    def detach(self, client: GuardClient) -> None:
        cq = self.clients.get(client.client_id)
        if cq is None or cq.client is not client:
            return
        self._forget(cq)
        if cq.registered:
            self._close_later(cq)

    def _forget(self, cq: ClientQuota) -> None:
        self.version += 1
        client_id = cq.client.client_id
        if self.clients.get(client_id) is cq:
            del self.clients[client_id]
        user = cq.user
        if user is not None and user.clients.get(client_id) is cq:
            del user.clients[client_id]
            if not user.clients:
                if self.config.linger > 0:
                    user.idle_since = monotonic()  # handed back at the heartbeat after quota.linger
                else:
                    self._release_user(user)

    def _release_user(self, user: UserQuota) -> None:
        """The user has had no client here for `quota.linger`: report and hand its leases back."""
        for entry in (*user.current.values(), *user.upcoming.values()):
            self._retire(entry)
            self._urgent.add(entry.key)
        if self.users.get(user.username) is user:
            del self.users[user.username]
        self.registry.give_back(user.username)
        self._kick_urgent()

    def _close_later(self, cq: ClientQuota) -> None:
        """Unregister the connection with the next registry batch (not awaited). While the user is far
        from its `sessions` limit the freed place may stay with this broker as a slot."""
        client = cq.client
        username = client.username
        keep, limit = self.registry.keep(username, monotonic()) if username is not None else (0, None)
        self.registry.submit(RegistryOp("c", client.client_id, cq.conn, username, limit=limit, extra=str(keep)))

    # -- hot path ---------------------------------------------------------------------------------------
    def admit_publish(self, client: GuardClient, topic: str, payload_len: int, qos: int) -> bool:
        cq = self.clients.get(client.client_id)
        if cq is None or cq.client is not client:
            return True
        bucket = cq.bucket
        if bucket is not None and not bucket.take():
            return self._refuse(cq, topic, "rate", f"rate {cq.user.limits.rate if cq.user else ''} exceeded", None)
        user = cq.user
        if user is not None and user.current and user.limits.counts_in:
            if not self._spend(cq, user, topic, payload_len):
                if bucket is not None:
                    bucket.give_back()
                return False
        usage = cq.usage
        usage["events_in"] += 1
        usage["bytes_in"] += payload_len
        return True

    def admit_delivery(self, client: GuardClient, topic: str, payload_len: int) -> bool:
        cq = self.clients.get(client.client_id)
        if cq is None or cq.client is not client:
            return True
        user = cq.user
        if user is not None and user.current and user.limits.counts_out:
            if not self._spend(cq, user, topic, payload_len):
                return False
        usage = cq.usage
        usage["events_out"] += 1
        usage["bytes_out"] += payload_len
        return True

    def delivery_group(self, clients: list[GuardClient]) -> DeliveryGroup:
        """`admit_delivery` for one message to each of `clients`, as one call (DeliveryGroup.admit)."""
        return DeliveryGroup(self, clients)

    def open_stretch(self, client: GuardClient | None, events: int, nbytes: int) -> Stretch:
        """Quota accounting for a read batch of at most `events` PUBLISHes (quota/stretch.py)."""
        return open_stretch(self, client, events, nbytes)

    def settle_stretch(self, st: Stretch) -> None:
        settle_stretch(self, st)

    def _spend_n(self, user: UserQuota, n: int, payload_len: int) -> bool:
        """`_spend` of n deliveries of `payload_len` bytes at once, only when the allowance held here
        covers all of them (then the outcome is exactly n successful `_spend` calls); False, with
        nothing spent, otherwise."""
        now = time.time()
        events = user.current.get("events")
        if events is not None and now >= events.end:
            events = self._roll(user, "events", now)
        nbytes = user.current.get("bytes")
        if nbytes is not None and now >= nbytes.end:
            nbytes = self._roll(user, "bytes", now)
        total_bytes = n * payload_len
        ev_left = events.held - events.total + events.reported if events is not None else n
        by_left = nbytes.held - nbytes.total + nbytes.reported if nbytes is not None else total_bytes
        if ev_left < n or by_left < total_bytes:
            return False
        if events is not None:
            events.total += n
            if ev_left - n <= (events.block >> 2) and events.low():
                self._want_sync(events)
        if nbytes is not None:
            nbytes.total += total_bytes
            if by_left - total_bytes <= (nbytes.block >> 2) and nbytes.low():
                self._want_sync(nbytes)
        return True

    def _spend(self, cq: ClientQuota, user: UserQuota, topic: str, payload_len: int) -> bool:
        now = time.time()
        events = user.current.get("events")
        if events is not None and now >= events.end:
            events = self._roll(user, "events", now)
        nbytes = user.current.get("bytes")
        if nbytes is not None and now >= nbytes.end:
            nbytes = self._roll(user, "bytes", now)
        ev_left = events.held - events.total + events.reported if events is not None else 1
        by_left = nbytes.held - nbytes.total + nbytes.reported if nbytes is not None else payload_len
        ev_ok = ev_left >= 1
        by_ok = by_left >= payload_len
        if ev_ok and by_ok:
            if events is not None:
                events.total += 1
                if ev_left <= (events.block >> 2) + 1 and events.low():
                    self._want_sync(events)
            if nbytes is not None:
                nbytes.total += payload_len
                if by_left - payload_len <= (nbytes.block >> 2) and nbytes.low():
                    self._want_sync(nbytes)
            return True
        for entry, n, ok in ((events, 1, ev_ok), (nbytes, payload_len, by_ok)):
            if ok or entry is None:
                continue
            verdict = entry.refuse(n)  # not enough held here: used up, or held elsewhere (SHORT)
            if verdict is Verdict.EXHAUSTED:
                window = user.limits.allowance(entry.metric)
                return self._refuse(
                    cq, topic, entry.metric, f"{entry.metric} quota {window} used up until {utc(entry.end)}", entry
                )
            if not self.redis_ok and self.config.on_redis_down == "allow":
                continue
            self._want_sync(entry)
            return self._refuse(
                cq, topic, entry.metric, f"{entry.metric} allowance not held here yet", None, short=True
            )
        # Redis is down and on_redis_down: allow: spend on credit, reported once Redis is back.
        if events is not None:
            events.total += 1
        if nbytes is not None:
            nbytes.total += payload_len
        return True

    def _roll(self, user: UserQuota, metric: str, now: float) -> Entry:
        """The window ended: switch to the prefetched entry of the next window (or a fresh one)."""
        old = user.current[metric]
        allowance = user.limits.allowance(metric)
        assert allowance is not None
        entry = user.upcoming.pop(metric, None)
        if entry is None or not entry.start <= now < entry.end:
            entry = self._entry(
                user.username, metric, allowance.limit, allowance.window.start(now), allowance.window.seconds
            )
        user.current[metric] = entry
        if old is not entry:
            self._retire(old)
            self._urgent.add(old.key)
        if not entry.synced:
            self._want_sync(entry)
        return entry

    def _refuse(
        self, cq: ClientQuota, topic: str, what: str, reason: str, entry: Entry | None, *, short: bool = False
    ) -> bool:
        client = cq.client
        self.guard.counters.incr(client.client_id, C.OVER_QUOTA)
        drop_log.log(
            logging.INFO,
            (client.client_id, what),
            "over quota: message of client %r (user %r) on %r not passed: %s",
            client.client_id,
            client.username,
            topic,
            reason,
        )
        user = cq.user
        if short or user is None or user.limits.on_exceed != "disconnect" or cq.kicking:
            return False
        cq.kicking = True
        block_until = float(entry.end) if entry is not None else 0.0
        self._spawn(self._disconnect(cq, reason, block_until))
        return False

    async def _disconnect(self, cq: ClientQuota, reason: str, block_until: float) -> None:
        """on_exceed: disconnect. The kick goes through this broker's own kick queue (audited, and
        recorded on the session so the sidecar does not kick it again); with Redis down, directly."""
        client = cq.client
        user = client.username
        try:
            await self.registry.drain()  # its registration may still be queued: the kick needs it
            if block_until and user is not None:
                key = self.keys.block_user(user)
                if await self.store.set_block(
                    key, reason, block_until, self.broker_id, username=user, client_id=client.client_id
                ):
                    self.blocks.note(Block(reason, block_until, self.broker_id, key))
            queued, _ = await self.store.kick(
                client.client_id,
                reason,
                self.broker_id,
                broker_id=self.broker_id,
                conn=cq.conn,
                dedupe=self.guard.config.sidecar.kick_retry,
            )
            if queued:
                return
        except REDIS_ERRORS as exc:
            self._redis_lost(exc)
        if self.clients.get(client.client_id) is cq:
            await self.guard.kick(client.client_id, reason)

    # -- syncing -----------------------------------------------------------------------------------------
    def _want_sync(self, entry: Entry) -> None:
        if entry.in_flight or monotonic() - entry.last_sync < URGENT_GAP:
            return
        self._urgent.add(entry.key)
        self._kick_urgent()

    def _kick_urgent(self) -> None:
        if self._urgent and (self._urgent_task is None or self._urgent_task.done()):
            try:
                self._urgent_task = asyncio.get_running_loop().create_task(self._urgent_loop())
            except RuntimeError:  # no loop (closing): the heartbeat or shutdown will sync
                pass

    async def _urgent_loop(self) -> None:
        while self._urgent:
            batch, self._urgent = self._urgent, set()
            entries = [self.entries[k] for k in batch if k in self.entries]
            try:
                await self._sync(entries)
            except REDIS_ERRORS as exc:
                self._redis_lost(exc)
                return  # the heartbeat retries
            except Exception:
                log.exception("quota sync failed")
                return
            await asyncio.sleep(URGENT_GAP)

    async def _sync(self, entries: list[Entry]) -> None:
        entries = [e for e in entries if not e.in_flight]
        if not entries:
            return
        mono = monotonic()
        requests = []
        for e in entries:
            e.in_flight = True
            requests.append(e.request(mono))
        try:
            results = await self.store.sync(self.broker_id, requests)
        finally:
            for e in entries:
                e.in_flight = False
        window = 3 * self.config.sync_interval
        holders: dict[str, set[str]] = {}
        for entry, req, res in zip(entries, requests, results, strict=True):
            entry.apply(req, res, self.broker_id, mono, window)
            if entry.release and res.mine == 0 and entry.total == entry.reported:
                if self.entries.get(entry.key) is entry:
                    del self.entries[entry.key]
            for broker_id in res.holders:
                holders.setdefault(broker_id, set()).add(entry.key)
        self._redis_back()
        for broker_id, keys in holders.items():
            # We are short while another broker holds allowance of the same user: ask it to resync now
            # (it then keeps only about what it spends, see Entry.want) instead of at its next full sync.
            for key in sorted(keys):
                await self.store.push(broker_id, {"resync": key, "by": self.broker_id})

    # -- heartbeat ----------------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        interval = self.config.sync_interval
        while True:
            started = monotonic()
            try:
                await self._tick()
                self._redis_back()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self._redis_lost(exc)
            except Exception:
                log.exception("quota heartbeat failed")
            await asyncio.sleep(max(0.01, interval - (monotonic() - started)))

    async def _tick(self) -> None:
        self._ticks += 1
        now = time.time()
        checked = self._alone_checks
        existed, _, brokers = await self.store.heartbeat(
            self.broker_id,
            self.config.broker_dead_after,
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": f"{self.started:.0f}",
                "sessions": len(self.clients),
            },
        )
        if checked == self._alone_checks:  # (the brokers key did not change meanwhile)
            self.registry.alone = brokers <= 1 and existed
        self.heartbeats += 1
        if not existed:
            await self._reregister()
        failed, self.registry.failed_closes = self.registry.failed_closes, []
        for op in failed:
            self.registry.submit(op)
        self._register_late()
        self._end_lingering(monotonic())
        self._maintain_slots(monotonic(), self._ticks % FULL_SYNC_EVERY == 0)
        await self._report_sessions(now)
        self._prefetch(now)
        full = self._ticks % FULL_SYNC_EVERY == 0
        mono = monotonic()
        due = [
            e for e in self.entries.values() if full or e.dirty() or not e.synced or e.low() or mono < e.contended_until
        ]
        await self._sync(due)
        if self._ticks % REAP_EVERY == 0:
            reaped = await self.store.reap_dead()
            for broker_id, sessions in reaped.items():
                if sessions >= 0:  # -1: alive again, -2: somebody else reaped it first
                    log.warning(
                        "broker %s stopped heartbeating: removed its %d session(s) and its quota leases",
                        broker_id,
                        sessions,
                    )

    async def _reregister(self) -> None:
        """This broker's record is gone (first heartbeat, Redis lost data, or we were taken for dead)."""
        if self.heartbeats > 1:
            log.warning(
                "broker %s was missing from Redis (Redis restarted empty, or this broker was taken "
                "for dead): registering its %d session(s) again",
                self.broker_id,
                len(self.clients),
            )
        self.registry.forget_all()  # its session slots are gone with it
        for cq in list(self.clients.values()):
            client = cq.client
            cq.reported = {}

            def done(res: RegistryResult | BaseException, cq: ClientQuota = cq) -> None:
                if isinstance(res, BaseException):
                    return
                cq.registered = cq.confirmed = res.ok
                if not res.ok:
                    log.warning(
                        "client %r is registered on broker %s now; not registering it here",
                        cq.client.client_id,
                        res.prev_broker,
                    )

            self.registry.submit(RegistryOp("o", client.client_id, cq.conn, client.username, cq.since, None, "r"), done)
        await self.registry.drain()

    def _register_late(self) -> None:
        """Register the connections admitted while Redis was unreachable (unless the client id went to
        another broker meanwhile), so they count for `sessions` and the sidecar sees them."""
        pending, self._unregistered = self._unregistered, []
        for cq in pending:
            client = cq.client
            if self.clients.get(client.client_id) is not cq or cq.confirmed:
                continue

            def done(res: RegistryResult | BaseException, cq: ClientQuota = cq) -> None:
                if isinstance(res, BaseException):
                    self._unregistered.append(cq)
                elif res.ok:
                    cq.confirmed = True

            self.registry.submit(RegistryOp("o", client.client_id, cq.conn, client.username, cq.since, None, "r"), done)

    def _end_lingering(self, mono: float) -> None:
        linger = self.config.linger
        for user in list(self.users.values()):
            if user.idle_since is not None and not user.clients and mono - user.idle_since >= linger:
                self._release_user(user)

    def _maintain_slots(self, mono: float, full: bool) -> None:
        """Session slots: top up for users that connected or disconnected here within `quota.linger` and
        are far from their limit; hand back the others'."""
        linger = self.config.linger
        for username, st in list(self.registry.slots.items()):
            self.registry.maintain(username, mono - st.last_used < linger, full)

    def _queue_depth(self, client_id: str) -> tuple[int, int] | None:
        if self.guard.engine is None:
            return None
        try:
            return self.guard.engine.queue_depth(client_id)
        except Exception:  # noqa: BLE001 - the engine's view is optional here
            return None

    async def _report_sessions(self, now: float) -> None:
        updates = []
        for i, cq in enumerate(list(self.clients.values())):
            if i and i % REPORT_SLICE == 0:
                await asyncio.sleep(0)  # deliveries go on (one pass over 1,000 clients takes ms)
            if not cq.confirmed or self.clients.get(cq.client.client_id) is not cq:
                continue  # its registration is still queued (reported once it exists), or it has left
            fields: dict[str, Any] = dict(cq.usage)
            depth = self._queue_depth(cq.client.client_id)
            if depth is not None:
                fields["queue_messages"], fields["queue_bytes"] = depth
                max_queue = cq.user.limits.max_queue if cq.user is not None else None
                if max_queue is not None and depth[0] > max_queue:
                    if cq.queue_over_since is None:
                        cq.queue_over_since = now
                else:
                    cq.queue_over_since = None
                fields["queue_over_since"] = f"{cq.queue_over_since:.3f}" if cq.queue_over_since else ""
            changed = {k: v for k, v in fields.items() if cq.reported.get(k) != v}
            if changed:
                updates.append((cq.client.client_id, cq.conn, changed, cq))
        if updates:
            await self.store.update_sessions([(cid, conn, changed) for cid, conn, changed, _ in updates])
            for _, _, changed, cq in updates:
                cq.reported.update(changed)

    def _prefetch(self, now: float) -> None:
        """Take the next window's lease shortly before the window ends, so the first messages of the
        new window do not wait for Redis."""
        horizon = now + 3 * self.config.sync_interval + 1.0
        for user in list(self.users.values()):
            for metric in list(user.current):
                entry = user.current[metric]
                if now >= entry.end:  # a window passed without a message: move on here, not on the hot path
                    entry = self._roll(user, metric, now)
                if entry.end > horizon or metric in user.upcoming:
                    continue
                allowance = user.limits.allowance(metric)
                if allowance is None:
                    continue
                user.upcoming[metric] = self._entry(
                    user.username, metric, allowance.limit, entry.end, allowance.window.seconds
                )

    # -- kicks for this broker ------------------------------------------------------------------------------
    async def _kick_loop(self) -> None:
        while True:
            try:
                item = await self.store.pop_kick(self._kick_redis, self.broker_id, timeout=1)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS + (Exception,) as exc:  # any failure: wait and retry
                if isinstance(exc, REDIS_ERRORS):
                    self._redis_lost(exc)
                else:
                    log.exception("kick consumer failed")
                await asyncio.sleep(0.5)
                continue
            if item is not None:
                await self._execute_kick(item)

    async def _execute_kick(self, item: dict[str, str]) -> None:
        slots = item.get("slots")
        if slots:
            # Another broker refused a CONNECT of this user while we hold unused session slots of it.
            self.registry.give_back(str(slots))
            return
        resync = item.get("resync")
        if resync:
            entry = self.entries.get(str(resync))
            if entry is not None:
                entry.contended_until = monotonic() + 3 * self.config.sync_interval
                self._urgent.add(entry.key)
                self._kick_urgent()
            return
        client_id = str(item.get("client_id") or "")
        conn = str(item.get("conn") or "")
        reason = str(item.get("reason") or "kicked")
        cq = self.clients.get(client_id)
        if cq is None or (conn and cq.conn != conn):
            log.info("kick for client %r (%s) ignored: not connected here any more", client_id, reason)
            return
        if self.guard.engine is None:
            log.warning("kick for client %r (%s) ignored: no broker bound", client_id, reason)
            return
        log.warning(
            "kicking client %r (user %r) on request of %s: %s",
            client_id,
            cq.client.username,
            item.get("by") or "?",
            reason,
        )
        try:
            await self.guard.kick(client_id, reason)
        except Exception:
            log.exception("kicking client %r failed", client_id)

    async def _push_quietly(self, broker_id: str, message: dict[str, str]) -> None:
        try:
            await self.store.push(broker_id, message)
        except REDIS_ERRORS as exc:
            self._redis_lost(exc)

    async def _push_kick(self, broker_id: str, client_id: str, conn: str, reason: str) -> None:
        await self.store.push(broker_id, {"client_id": client_id, "conn": conn, "reason": reason, "by": self.broker_id})

    # -- limits changed in Redis ----------------------------------------------------------------------------
    def on_keys(self, keys: list[str]) -> None:
        users: set[str] = set()
        changed: set[str] = set()
        default = self.keys.quota_default()
        brokers = self.keys.brokers()
        everybody = False
        for key in keys:
            if key == brokers:
                self._brokers_changed()
                continue
            if key == default:
                everybody = True
                users |= set(self.users)
                continue
            username = self.keys.quota_user_of(key)
            if username is not None:
                changed.add(username)
                if username in self.users:
                    users.add(username)
        if everybody or changed:
            self.limits.invalidate(None if everybody else changed)
        self.blocks.on_keys(keys)
        if users:
            self._schedule_reload(users)

    def _brokers_changed(self) -> None:
        """A broker joined, heartbeated or left: until Redis says again that this one is alone, it is not."""
        self.registry.alone = False
        self._alone_checks += 1
        if self._alone_task is None or self._alone_task.done():
            self._alone_task = self._spawn(self._check_alone())

    async def _check_alone(self) -> None:
        checked = -1
        while checked != self._alone_checks:
            checked = self._alone_checks
            try:
                alone = await self.store.alone(self.broker_id)
            except REDIS_ERRORS:
                return  # the next heartbeat tells
            if checked == self._alone_checks:
                self.registry.alone = alone

    def on_reset(self) -> None:
        """The invalidation listener reconnected (changes may have been missed): trust nothing cached."""
        self._brokers_changed()
        self.limits.invalidate(None)
        self.blocks.on_reset()
        self._schedule_reload(set(self.users))

    def _schedule_reload(self, users: set[str]) -> None:
        self._reload |= users
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.get_running_loop().create_task(self._reload_limits())

    async def _reload_limits(self) -> None:
        while self._reload:
            batch, self._reload = sorted(self._reload), set()
            token = self.limits.begin()
            try:
                raw_users, raw_default = await self.store.load_limits(batch)
            except REDIS_ERRORS as exc:
                self._redis_lost(exc)
                self._reload |= set(batch)
                await asyncio.sleep(0.5)
                continue
            now = time.time()
            touched: list[Entry] = []
            for username in batch:
                user = self.users.get(username)
                limits = self._parsed(username, raw_users.get(username), raw_default, token)
                self.registry.limit_changed(username, limits.sessions, self.config.lease_fraction)
                if user is None:
                    continue
                user.limits = limits
                self._set_entries(user, now)
                touched += user.current.values()
                for cq in user.clients.values():
                    cq.kicking = False
                    if limits.rate is None:
                        cq.bucket = None
                    elif cq.bucket is None:
                        cq.bucket = TokenBucket(limits.rate.per_second, limits.rate.burst)
                    else:
                        cq.bucket.reconfigure(limits.rate.per_second, limits.rate.burst)
            touched += [e for e in self.entries.values() if e.release]
            try:
                await self._sync(touched)
            except REDIS_ERRORS as exc:
                self._redis_lost(exc)

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _redis_lost(self, exc: BaseException) -> None:
        if self.redis_ok:
            log.warning(
                "quota: Redis unreachable (%s); spending local leases only (on_redis_down=%s)",
                exc or type(exc).__name__,
                self.config.on_redis_down,
            )
        self.redis_ok = False

    def _redis_back(self) -> None:
        if not self.redis_ok:
            log.info("quota: Redis reachable again; usage reported")
        self.redis_ok = True

    # -- introspection (tests, `quota show` of a live broker) ----------------------------------------------
    def usage_of(self, username: str, metric: str) -> Entry | None:
        user = self.users.get(username)
        return user.current.get(metric) if user is not None else None
