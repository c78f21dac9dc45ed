"""Quota enforcement inside one broker process: the facade the Guard calls, and the CONNECT path.

- CONNECT (`attach`): refuse a blocked client or user, enforce `sessions` through the session registry
  (global across brokers), register the session, take the first lease. In the steady state it awaits
  no Redis round trip: blocks and limits are cached in process under client-side-caching
  invalidation (caches.py), a user's leases linger after its last client left (`quota.linger`), and a
  CONNECT that takes one of the broker's reserved session slots is registered in the background
  (registry.py). Otherwise it reads Redis as before.
- Every message (`book.admit_publish`, `book.admit_delivery`, `delivery_group`, and per read batch
  stretch.open_stretch / settle_stretch on `book`), synchronous: allowance.py and stretch.py, pure;
  token bucket for `rate`, local lease spending for `events`/`bytes`. No Redis round trip. The Guard
  calls the book (`Allowances`) itself: no call through this class per message.
- Background: lease sync (sync.py), the heartbeat (heartbeat.py), the kick queue (kicks.py), limit
  changes (reload.py).
- Disconnect (`detach`): unregister the session (batched, not awaited), return the user's lease
  `quota.linger` after its last client here left (at the heartbeat).

Collaborators are handed in by the Guard: the `quota` config section, the Redis client, the key
schema, the counters, a kick function and a queue-depth view (`ports`), and the invalidation
listener (`caches.Tracking`: whether cached limits and blocks can be trusted).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis

from ..config import QuotaConfig
from ..guard_client import GuardClient
from ..metrics.counters import Counters
from ..ports import Drop, Forget, Kick
from ..reasons import SESSIONS_EXCEEDED, TAKEN_OVER, blocked_reason
from ..store.connection import REDIS_ERRORS, make_async_client
from ..store.generation import Trust, gate
from ..store.keys import Keys
from ..store.meter import MeterStore
from ..store.quota import UNREGISTERED, Block, QuotaStore, RegistryOp, RegistryResult
from .allowance import Allowances, ClientQuota, UserQuota
from .apis import Apis
from .bucket import TokenBucket
from .caches import UNKNOWN, BlockCache, LimitsCache, Tracking, Unknown, cache_key
from .heartbeat import Heartbeat, QueueDepth
from .kicks import KickQueue
from .ledger import Entry, monotonic
from .limits import NO_LIMITS, Limits
from .registry import SessionRegistry
from .reload import LimitReloads
from .stretch import DeliveryGroup
from .sync import LeaseSync

log = logging.getLogger("mqtt_guard.quota")

LIMITS_CACHE = 10_000  # last known limits of users seen by this broker (used while Redis is down)
SHUTDOWN_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *REDIS_ERRORS)


class QuotaRefusal(Exception):
    """A CONNECT refused by quota rules (block, too many sessions): CONNACK 5, the message says why;
    `code` is the MQTT 5 CONNACK reason (mqtt_guard/reasons.py: 0x8A or 0x97)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ClientIdHeld(Exception):
    """A CONNECT refused because another broker holds its client id for another identity (`owned_ids`:
    auth/ownership.py's `owner` rule across brokers, decided by the registry in Redis). Nothing was
    registered; the engine answers as for an id held on this broker."""

    def __init__(self, holder: str | None, broker: str) -> None:
        super().__init__(holder, broker)
        self.holder = holder  # None: anonymous
        self.broker = broker


class QuotaEnforcer:
    """One per broker process: builds the pure book and the background services around it, and runs
    CONNECT and disconnect; `book` is what the Guard consults per message."""

    def __init__(
        self,
        config: QuotaConfig,
        *,
        redis: aioredis.Redis,
        redis_url: str,
        keys: Keys,
        counters: Counters,
        kick: Kick,
        queue_depth: QueueDepth,
        drop_session: Drop | None = None,
        forget_session: Forget | None = None,
        tracking: Tracking,
        kick_retry: float,
        trust: Trust | None = None,
        owned_ids: bool = False,
    ) -> None:
        """`redis_url`: the kick consumer and the liveness writes open connections of their own (BLPOP
        blocks one; the liveness must not wait behind the main pool); `kick_retry` (sidecar.kick_retry): an
        over-quota kick is not queued again within it; `trust`: whether Redis still holds this deployment's
        data (store/generation.py): those connections are gated by it like `redis`; `owned_ids`: a client id
        held on another broker is refused to another identity (ClientIdHeld; `auth.client_id_policy` other
        than `any`)."""
        self.config = config
        self.redis = redis
        self.keys = keys
        self.kick = kick
        self.owned_ids = owned_ids
        self.store = QuotaStore(redis, keys, audit_maxlen=config.audit_maxlen)
        self.store.epoch = UNREGISTERED  # until the heartbeat registered this broker
        self.broker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Connection ids: a random prefix per broker run and a counter (a uuid4 per CONNECT was a
        # getrandom() system call and ~2 % of a CONNECT's CPU).
        self._conn_prefix = uuid.uuid4().hex[:8]
        self._conn_seq = itertools.count(1)
        self._background: set[asyncio.Future[Any]] = set()
        self._ready: dict[UserQuota, asyncio.Future[Any]] = {}  # a user's first sync, awaited by its CONNECTs
        self.book = book = Allowances(config, keys, counters, self._wake, self._over_quota)
        self.clients = book.clients
        self.users = book.users
        self.entries = book.entries
        connected = tracking.connected.is_set
        # Limits and blocks as Redis has them, while the invalidation listener vouches for them.
        self.limits = LimitsCache(connected, LIMITS_CACHE)
        self.blocks = BlockCache(self.store, connected, keys.blocks_head() in tracking.prefixes)
        self.registry = SessionRegistry(self.store, self.broker_id, book.redis_lost)
        self.sync = LeaseSync(self.store, self.broker_id, book, config.sync_interval)
        self.trust = trust or Trust()
        live = make_async_client(redis_url, pool_size=2, socket_timeout=min(2.0, config.broker_dead_after / 2))
        gate(live, self.trust)
        self.heartbeat = Heartbeat(
            config,
            self.store,
            self.broker_id,
            book,
            self.registry,
            self.sync,
            queue_depth,
            self._release_user,
            live=QuotaStore(live, keys),
            held_elsewhere=self._held_elsewhere,
            meter=MeterStore(redis, keys),
        )
        self.kicks = KickQueue(
            self.store,
            self.broker_id,
            book,
            self.registry,
            self.blocks,
            kick,
            self._spawn,
            drop_session=drop_session,
            forget_session=forget_session,
            redis_url=redis_url,
            sync_interval=config.sync_interval,
            kick_retry=kick_retry,
            trust=self.trust,
        )
        self.reloads = LimitReloads(
            config,
            keys,
            self.store,
            book,
            self.limits,
            self.blocks,
            self.registry,
            self.sync,
            self.heartbeat.brokers_changed,
            self._apis_changed,
        )

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._load_apis()
        except REDIS_ERRORS as exc:
            self.book.redis_lost(exc)
        self.blocks.start()
        self.kicks.start()
        await self.heartbeat.start()

    async def close(self) -> None:
        await self.heartbeat.close()
        await self.kicks.stop()
        await self.blocks.stop()
        await self.reloads.close()
        if self._background:
            await asyncio.wait(self._background, timeout=2)
        try:
            await asyncio.wait_for(self._shutdown_sync(), 3)
        except SHUTDOWN_ERRORS as exc:
            log.warning(
                "could not hand back quota leases at shutdown (%s); they are reclaimed when this broker is found dead",
                exc or type(exc).__name__,
            )
        await self.sync.close()
        await self.kicks.close()

    async def halt(self) -> None:
        """Stop the background work without a goodbye to Redis (leases and sessions stay there until
        this broker is found dead): what a killed process leaves behind (tests)."""
        await self.heartbeat.close()
        await self.kicks.close()
        await self.sync.close()

    async def _shutdown_sync(self) -> None:
        """Report the last spending, return every lease and take this broker out of the registry (its
        sessions and session slots with it)."""
        await self.registry.drain()
        for entry in self.entries.values():
            entry.release = True
        await self.sync.sync(list(self.entries.values()))
        await self.heartbeat.write_meter()
        await self.redis.zadd(self.keys.brokers(), {self.broker_id: 0})
        await self.store.reap(self.broker_id)

    @property
    def redis_ok(self) -> bool:
        """The last attempt to reach Redis succeeded."""
        return self.book.redis_ok

    # -- per message and per read batch: the Guard calls the book and stretch.py itself --------------
    def delivery_group(self, clients: list[GuardClient], topic: str = "") -> DeliveryGroup:
        """`admit_delivery` for one message on `topic` to each of `clients`, as one call (DeliveryGroup.admit)."""
        return DeliveryGroup(self.book, clients, topic)

    # -- limits changed in Redis (reload.py) -----------------------------------------------------------
    def on_keys(self, keys: list[str]) -> None:
        self.reloads.on_keys(keys)

    def on_reset(self) -> None:
        self.reloads.on_reset()

    # -- APIs (quota/apis.py) -------------------------------------------------------------------------------
    def _apis_changed(self) -> None:
        self._spawn(self._load_apis())

    async def _load_apis(self) -> None:
        """Read the API definitions; delivery groups are rebuilt (their topic's APIs may differ)."""
        apis = Apis.parse(await self.store.apis())
        self.book.apis = apis if apis.filters else None
        self.book.version += 1

    # -- CONNECT -------------------------------------------------------------------------------------
    async def attach(self, client: GuardClient) -> ClientQuota:
        cq = ClientQuota(client, f"{self._conn_prefix}{next(self._conn_seq):x}", time.time())
        username = client.username
        limits = NO_LIMITS
        try:
            block = self.blocks.lookup(client.client_id, username)
            cached = self.limits.get(username, client.plan) if username is not None else NO_LIMITS
            if block is UNKNOWN or cached is None:
                block, cached = await self._read_connect_state(client, block, cached)
            if block is not None:
                raise QuotaRefusal(block.describe(), blocked_reason(block.reason))
            limits = cached
            await self._open(cq, limits)
        except REDIS_ERRORS as exc:
            self.book.redis_lost(exc)
            cq.registered = True
            self.heartbeat.register_later(cq)
            if username is not None:
                limits = self.limits.last.get(cache_key(username, client.plan), NO_LIMITS)
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
            ready = self._ready.get(user) if user is not None else None
            if ready is not None and not ready.done():
                await asyncio.shield(ready)
        except BaseException:
            self._forget(cq)
            if cq.registered:
                self._close_later(cq)
            raise
        return cq

    async def _read_connect_state(
        self,
        client: GuardClient,
        block: Block | Unknown | None,
        cached: Limits | None,
    ) -> tuple[Block | None, Limits]:
        """What the caches could not vouch for, from Redis in one round trip: the block, the limits
        (`block` UNKNOWN, `cached` None: not known here)."""
        username = client.username
        token = self.limits.begin()
        plans = {username: client.plan} if username is not None and client.plan else None
        # (the user's groups: its record, read at authentication, has them; no read of the set here)
        groups = {username: client.subject.groups} if username is not None else None
        if block is UNKNOWN:
            if cached is not None:
                return await self.store.blocks(username, client.client_id), cached
            assert username is not None  # (anonymous clients have NO_LIMITS)
            found, sources = await asyncio.gather(
                self.store.blocks(username, client.client_id), self.store.load_limits([username], plans, groups)
            )
        else:
            assert username is not None
            found = block
            sources = await self.store.load_limits([username], plans, groups)
        return found, self.limits.parse(username, sources[username], client.plan, token)

    async def _open(self, cq: ClientQuota, limits: Limits) -> None:
        """Register the connection. Awaits Redis only when `sessions` must be checked there (no slot of
        the user held here), or when another broker may hold the client id for another identity
        (`owned_ids` and this broker not `alone`); else the registration goes out with the next batch."""
        client = cq.client
        username = client.username
        sessions = limits.sessions if username is not None else None
        cq.registered = True  # from here on its close is due (a no-op in Redis if the open did not happen)
        owned_ids = self.owned_ids
        owned = owned_ids and not self.registry.alone  # (alone: no other broker can hold the id)

        def op(mode: str) -> RegistryOp:
            return RegistryOp(
                "o", client.client_id, cq.conn, username, cq.since, sessions, mode, owned_ids, client.plan or ""
            )

        if sessions is None:
            if not owned:
                self.registry.submit(op("c"), lambda res: self._opened(cq, res))
                return
            res = await self.registry.call(op("c"))
        else:
            assert username is not None
            now = monotonic()
            self.registry.state(username, sessions, self.config.lease_fraction, now)
            if self.registry.take_slot(username, sessions, now):
                if not owned:
                    self.registry.submit(op("s"), lambda res: self._opened(cq, res))
                    return
                res = await self.registry.call(op("s"))
            else:
                res = await self.registry.call(op("c"))
        if res.held_by is not None:
            cq.registered = False
            raise ClientIdHeld(res.held_by or None, res.prev_broker)
        if not res.ok:
            assert username is not None  # (only a user's `sessions` limit refuses here)
            cq.registered = False
            for holder in res.holders:
                # Their unused slots keep this user's clients out here: ask for them back now rather
                # than at their next heartbeat (the next CONNECT benefits).
                self._spawn(self.kicks.push_quietly(holder, {"slots": username, "by": self.broker_id}))
            reserved = f" and brokers reserve {res.reserved} slot(s)" if res.reserved else ""
            raise QuotaRefusal(
                f"too many sessions: user {username!r} has {res.sessions} connected{reserved} (sessions {sessions})",
                SESSIONS_EXCEEDED,
            )
        cq.confirmed = True
        self._took_over(cq, res)

    def _opened(self, cq: ClientQuota, res: RegistryResult | BaseException) -> None:
        """A registration that was not awaited was applied (or failed: Redis down, admitted as such)."""
        if isinstance(res, BaseException):
            self.heartbeat.register_later(cq)
            return
        if res.ok:
            cq.confirmed = True
            self._took_over(cq, res)
            return
        cq.registered = False
        client = cq.client
        if res.held_by is not None:
            # Admitted while this broker took itself for the only one (another broker had just joined and
            # the news had not arrived): the holder there keeps its id, this connection goes.
            log.warning(
                "client %r (user %r) admitted while broker %s holds the client id for user %r: refused by "
                "client_id_policy; disconnecting it",
                client.client_id,
                client.username,
                res.prev_broker,
                res.held_by or None,
            )
            if self.clients.get(client.client_id) is cq:
                self._spawn(self.kick(client.client_id, "client id held by another user", TAKEN_OVER))
            return
        # Only when Redis lost the slot this CONNECT was admitted on (Redis restarted empty, this broker
        # taken for dead) and the user is at its limit: the limit wins.
        log.warning(
            "client %r (user %r) admitted on a session slot that Redis no longer had: too many "
            "sessions (%d connected); disconnecting it",
            client.client_id,
            client.username,
            res.sessions,
        )
        if self.clients.get(client.client_id) is cq:
            self._spawn(self.kick(client.client_id, "too many sessions", SESSIONS_EXCEEDED))

    def _held_elsewhere(self, cq: ClientQuota, broker_id: str) -> None:
        """While this broker was fenced (declared dead) or Redis was away, another broker registered the
        client id: the client is served there. Closing it here is MQTT's session take-over; never do two
        brokers serve one client id."""
        client_id = cq.client.client_id
        if self.clients.get(client_id) is not cq:
            return
        log.warning(
            "client %r (user %r) is registered on broker %s now: disconnecting it here (taken over while this "
            "broker could not register it)",
            client_id,
            cq.client.username,
            broker_id,
        )
        self._spawn(self.kick(client_id, f"taken over by broker {broker_id}", TAKEN_OVER))

    def _took_over(self, cq: ClientQuota, res: RegistryResult) -> None:
        if res.prev_broker and res.prev_broker != self.broker_id:
            self._spawn(
                self.kicks.push_kick(
                    res.prev_broker,
                    cq.client.client_id,
                    res.prev_conn,
                    f"connected again on broker {self.broker_id}",
                    TAKEN_OVER,
                )
            )

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
        self.book.version += 1
        if limits.rate is not None:
            cq.bucket = TokenBucket(limits.rate.per_second, limits.rate.burst)
        if client.username is None:
            return
        user = self.users.get(client.username)
        if user is not None:
            user.idle_since = None  # came back while lingering: its leases are still here
            if client.plan != user.token_plan:  # a token with another plan claim: the latest CONNECT's applies
                user.token_plan = client.plan
                user.limits = limits
                self.book.set_entries(user, time.time())
        else:
            user = self.users[client.username] = UserQuota(client.username, limits, token_plan=client.plan)
            self.book.set_entries(user, time.time())
            if user.current:
                ready = self._ready[user] = self._spawn(self.sync.first_sync(user))
                ready.add_done_callback(functools.partial(self._synced, user))
        user.clients[client.client_id] = cq
        cq.user = user

    def _synced(self, user: UserQuota, _task: asyncio.Future[Any]) -> None:
        self._ready.pop(user, None)

    # -- disconnect ------------------------------------------------------------------------------------
    def detach(self, client: GuardClient) -> None:
        cq = self.clients.get(client.client_id)
        if cq is None or cq.client is not client:
            return
        self._forget(cq)
        if cq.registered:
            self._close_later(cq)

    def _forget(self, cq: ClientQuota) -> None:
        self.book.version += 1
        client_id = cq.client.client_id
        if self.clients.get(client_id) is cq:
            del self.clients[client_id]
        user = cq.user
        if user is not None and user.clients.get(client_id) is cq:
            self.book.meter.fold_client(user.username, cq)  # its last counts (it leaves the user's clients)
            del user.clients[client_id]
            if not user.clients:
                if self.config.linger > 0:
                    user.idle_since = monotonic()  # handed back at the heartbeat after quota.linger
                else:
                    self._release_user(user)

    def _release_user(self, user: UserQuota) -> None:
        """The user has had no client here for `quota.linger`: report and hand its leases back."""
        self.book.drop_user(user)
        self.registry.give_back(user.username)

    def _close_later(self, cq: ClientQuota) -> None:
        """Unregister the connection with the next registry batch (not awaited). While the user is far
        from its `sessions` limit the freed place may stay with this broker as a slot."""
        client = cq.client
        username = client.username
        keep, limit = self.registry.keep(username, monotonic()) if username is not None else (0, None)
        self.registry.submit(RegistryOp("c", client.client_id, cq.conn, username, limit=limit, extra=str(keep)))

    # -- callbacks of the allowance book --------------------------------------------------------------
    def _wake(self) -> None:
        self.sync.wake()

    def _over_quota(self, cq: ClientQuota, reason: str, block_until: float, code: int) -> None:
        self.kicks.over_quota(cq, reason, block_until, code)

    def tell(self, broker_id: str, message: dict[str, str]) -> None:
        """Push `message` to another broker's kick queue, in the background (failures are logged)."""
        self._spawn(self.kicks.push_quietly(broker_id, message))

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- introspection (tests, `quota show` of a live broker) ----------------------------------------------
    def usage_of(self, username: str, metric: str) -> Entry | None:
        user = self.users.get(username)
        return user.current.get(metric) if user is not None else None
