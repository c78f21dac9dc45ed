"""The broker's liveness and the quota heartbeat.

Liveness (`beat`, its own task and its own Redis connection): only the write that keeps this broker's
registration alive in `brokers`, every `beat_interval` (`quota.sync_interval`, and at least
`LIVENESS_RATIO` times per `quota.broker_dead_after`). It waits behind nothing: not behind the periodic
work below (whose session reports, slot upkeep and lease syncs take long with ~10,000 clients), nor
behind the main Redis pool (a CONNECT storm can keep its connections busy for seconds). A broker slowed
by load was declared dead three times that way while it served ~9,800 clients. Only a loop that stops
turning for `broker_dead_after` (SIGSTOP, a hung host) makes it miss enough beats to be declared dead.

Fencing: each registration gets an epoch from Redis (HEARTBEAT_LUA); every registry and lease write
carries it and Redis refuses it once the epoch is gone (`store.quota.Fenced`), i.e. once another broker
or the sidecar declared this one dead and reaped it. A beat that finds its registration gone logs an
ERROR and registers anew; the periodic work then registers every connection again ('r': only where no
other broker took the client id meanwhile), closes the connections whose client id another broker holds
now, and syncs every lease at once (what it reported as spent stayed counted, so nothing counts twice).

The quota heartbeat (every `quota.sync_interval`): its sessions' usage and queue depth, the leases of
every entry that changed, lingering users handed back, session slots topped up or returned, and brokers
that stopped heartbeating reaped.

Also whether this broker is `alone` in the registry (registry.py answers some operations locally
then): the heartbeat learns it from Redis, and a change of the brokers key (an invalidation) makes it
doubtful until Redis is asked again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ..config import QuotaConfig
from ..store.connection import REDIS_ERRORS
from ..store.meter import MeterStore
from ..store.quota import Beat, QuotaStore, RegistryOp, RegistryResult
from ..tasks import Coalescer, cancel_and_wait
from .allowance import Allowances, ClientQuota, UserQuota
from .ledger import monotonic
from .registry import SessionRegistry
from .sync import LeaseSync

log = logging.getLogger("mqtt_guard.quota")

FULL_SYNC_EVERY = 5  # heartbeats between syncs of entries that did not change
REAP_EVERY = 5  # heartbeats between looks for dead brokers
REPORT_SLICE = 200  # connections per step of the heartbeat report (the loop is given back between steps)

LIVENESS_RATIO = 5  # liveness writes per broker_dead_after, at least
"""A broker is declared dead after missing this many beats in a row (10 with the defaults, 1 s and 10 s):
one late write (a GC pause, a slow Redis reply, a busy loop for a moment) never does it; a stopped
process or a loop blocked for `broker_dead_after` does."""

QueueDepth = Callable[[str], tuple[int, int]]
"""(messages, bytes) the engine holds for a client id (`ports.QueueDepths.queue_depth`)."""

HeldElsewhere = Callable[[ClientQuota, str], None]
"""Close a connection whose client id another broker (the str) registered while this one was fenced."""


def beat_interval(config: QuotaConfig) -> float:
    """Seconds between two liveness writes (see LIVENESS_RATIO)."""
    return min(config.sync_interval, config.broker_dead_after / LIVENESS_RATIO)


class Heartbeat:
    def __init__(
        self,
        config: QuotaConfig,
        store: QuotaStore,
        broker_id: str,
        book: Allowances,
        registry: SessionRegistry,
        sync: LeaseSync,
        queue_depth: QueueDepth,
        release_user: Callable[[UserQuota], None],
        *,
        live: QuotaStore,
        held_elsewhere: HeldElsewhere,
        meter: MeterStore | None = None,
    ) -> None:
        """`live`: a store on a Redis client of its own, for the liveness writes only (closed here);
        `store.epoch` is set to each new registration's epoch (the writes of `store` carry it)."""
        self.config = config
        self.store = store
        self.live = live
        self.held_elsewhere = held_elsewhere
        self.meter = meter  # metering for billing (quota/meter.py): written at every tick
        self.broker_id = broker_id
        self.book = book
        self.registry = registry
        self.sync = sync
        self.queue_depth = queue_depth
        self.release_user = release_user
        self.started = time.time()
        self.heartbeats = 0
        self._ticks = 0
        self._late: list[ClientQuota] = []  # admitted while Redis was unreachable: registered later
        self._alone_checks = 0  # bumped when the brokers key changes (registry.alone is then re-checked)
        self._alone: Coalescer[int] = Coalescer(self._check_alone, "mqtt-guard-quota-alone")
        self._task: asyncio.Task[None] | None = None
        self._live_task: asyncio.Task[None] | None = None
        self.epoch = ""  # of this broker's registration ('' = not registered yet)
        self._last_beat = monotonic()  # of the last liveness write that Redis applied
        self._reregister_due = False  # registered anew: register every connection again, sync every lease
        self._due = asyncio.Event()  # wakes the periodic work early for that

    async def start(self) -> None:
        """Register (before the first CONNECT: its registry write needs the epoch), then run both loops.
        A Redis that is down now: the liveness task registers when it is back."""
        try:
            await self.beat()
        except REDIS_ERRORS as exc:
            self.book.redis_lost(exc)
        self._live_task = asyncio.create_task(self._live_loop(), name="mqtt-guard-liveness")
        self._task = asyncio.create_task(self._loop(), name="mqtt-guard-quota-heartbeat")

    async def close(self) -> None:
        await cancel_and_wait(self._live_task)
        await cancel_and_wait(self._task)
        await self._alone.stop()
        await self.live.redis.aclose()

    def register_later(self, cq: ClientQuota) -> None:
        """`cq` was admitted without a registration (Redis unreachable): register it at a heartbeat."""
        self._late.append(cq)

    # -- the brokers key ------------------------------------------------------------------------------
    def brokers_changed(self) -> None:
        """A broker joined, heartbeated or left: until Redis says again that this one is alone, it is not."""
        self.registry.alone = False
        self._alone_checks += 1
        self._alone.add((self._alone_checks,))

    async def _check_alone(self, _changes: set[int]) -> set[int] | None:
        checked = self._alone_checks
        try:
            alone = await self.store.alone(self.broker_id)
        except REDIS_ERRORS:
            return None  # the next heartbeat tells
        if checked == self._alone_checks:  # (no change arrived meanwhile: else the next round asks again)
            self.registry.alone = alone
        return None

    # -- liveness ---------------------------------------------------------------------------------------
    async def _live_loop(self) -> None:
        interval = beat_interval(self.config)
        while True:
            started = monotonic()
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS:
                pass  # the periodic work reports Redis unreachable (book.redis_lost); retried next beat
            except Exception:
                log.exception("broker liveness write failed")
            await asyncio.sleep(max(0.01, interval - (monotonic() - started)))

    async def beat(self) -> None:
        """One liveness write of the current registration; a registration found gone (fenced) is
        reported and replaced by a new one."""
        checked = self._alone_checks
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": f"{self.started:.0f}",
            "sessions": len(self.book.clients),
        }
        dead_after = self.config.broker_dead_after
        beat = await self.live.heartbeat(self.broker_id, dead_after, info, self.epoch)
        if beat.fenced:
            self._fenced(beat)
            beat = await self.live.heartbeat(self.broker_id, dead_after, info, "")
        self._last_beat = monotonic()
        if beat.status == 0:
            self.epoch = self.store.epoch = beat.epoch
            self._reregister_due = True
            self._due.set()
        if checked == self._alone_checks:  # (the brokers key did not change meanwhile)
            self.registry.alone = beat.brokers <= 1 and beat.status == 1
        self.heartbeats += 1

    def _fenced(self, beat: Beat) -> None:
        by, _, at_ms = beat.reaped.partition("|")
        if by:
            when = time.strftime("%H:%M:%S", time.gmtime(int(at_ms or 0) / 1000))
            what = (
                f"was declared dead by {by} at {when} UTC (its last heartbeat was written "
                f"{monotonic() - self._last_beat:.1f} s ago, broker_dead_after {self.config.broker_dead_after:g} s: "
                "the process was stopped or its event loop blocked)"
            )
        else:
            what = "is no longer registered in Redis (Redis lost its data, or it was declared dead)"
        log.error(
            "broker %s %s: its sessions and quota leases were removed from Redis while it still served %d "
            "client(s). Fenced: its writes under epoch %s are refused. Registering it again under a new epoch: "
            "clients whose id another broker holds now are disconnected, the others registered again, its quota "
            "leases synced",
            self.broker_id,
            what,
            len(self.book.clients),
            self.epoch,
        )

    # -- the loop -----------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        interval = self.config.sync_interval
        while True:
            started = monotonic()
            try:
                await self._tick()
                self.book.redis_back()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self.book.redis_lost(exc)
            except Exception:
                log.exception("quota heartbeat failed")
            try:  # (woken early when the broker registered anew)
                await asyncio.wait_for(self._due.wait(), max(0.01, interval - (monotonic() - started)))
            except TimeoutError:
                pass

    async def _tick(self) -> None:
        self._ticks += 1
        now = time.time()
        full = self._ticks % FULL_SYNC_EVERY == 0
        if self._reregister_due:
            self._reregister_due = False
            self._due.clear()
            await self._reregister()
            full = True  # every lease: Redis forgot what this broker held
        failed, self.registry.failed_closes = self.registry.failed_closes, []
        for op in failed:
            self.registry.submit(op)
        self._register_late()
        self._end_lingering(monotonic())
        self._maintain_slots(monotonic(), full)
        await self._report_sessions(now)
        self.book.prefetch(now)
        mono = monotonic()
        due = [
            e
            for e in self.book.entries.values()
            if full or e.dirty() or not e.synced or e.low() or mono < e.contended_until
        ]
        await self.sync.sync(due)
        await self.write_meter()
        if self._ticks % REAP_EVERY == 0:
            reaped = await self.store.reap_dead(self.broker_id)
            for broker_id, sessions in reaped.items():
                if sessions >= 0:  # -1: alive again, -2: somebody else reaped it first
                    log.warning(
                        "broker %s stopped heartbeating: removed its %d session(s) and its quota leases",
                        broker_id,
                        sessions,
                    )

    async def write_meter(self) -> None:
        """Fold the usage counted since the last tick and write it (quota/meter.py); a failed write is
        retried under the same batch id at the next tick."""
        if self.meter is None:
            return
        self.book.fold_meter()
        batch = self.book.meter.take()
        if batch is not None:
            await self.meter.write(self.broker_id, *batch)
            self.book.meter.done()

    async def _reregister(self) -> None:
        """This broker registered anew (at start, or after its registration was found gone: Redis lost
        data, or it was declared dead): register every connection again, unless another broker took
        its client id meanwhile; then that connection is closed here."""
        if self.book.clients:
            log.warning(
                "broker %s registered under epoch %s: registering its %d session(s) again",
                self.broker_id,
                self.store.epoch,
                len(self.book.clients),
            )
        self.registry.forget_all()  # its session slots are gone with it
        for cq in list(self.book.clients.values()):
            client = cq.client
            cq.reported = {}

            def done(res: RegistryResult | BaseException, cq: ClientQuota = cq) -> None:
                if isinstance(res, BaseException):  # (Redis away again, or fenced again): at a heartbeat
                    cq.confirmed = False
                    self._late.append(cq)
                    return
                cq.registered = cq.confirmed = res.ok
                if not res.ok:
                    self.held_elsewhere(cq, res.prev_broker)

            op = RegistryOp(
                "o", client.client_id, cq.conn, client.username, cq.since, None, "r", plan=client.plan or ""
            )
            self.registry.submit(op, done)
        await self.registry.drain()

    def _register_late(self) -> None:
        """Register the connections admitted while Redis was unreachable or this broker was fenced, so they
        count for `sessions` and the sidecar sees them; one whose client id another broker registered
        meanwhile is closed here (the other broker serves it)."""
        pending, self._late = self._late, []
        clients = self.book.clients
        for cq in pending:
            client = cq.client
            if clients.get(client.client_id) is not cq or cq.confirmed:
                continue

            def done(res: RegistryResult | BaseException, cq: ClientQuota = cq) -> None:
                if isinstance(res, BaseException):
                    self._late.append(cq)
                elif res.ok:
                    cq.confirmed = True
                else:  # another broker serves the client id now: never two brokers serving one
                    cq.registered = False
                    self.held_elsewhere(cq, res.prev_broker)

            op = RegistryOp(
                "o", client.client_id, cq.conn, client.username, cq.since, None, "r", plan=client.plan or ""
            )
            self.registry.submit(op, done)

    def _end_lingering(self, mono: float) -> None:
        linger = self.config.linger
        for user in list(self.book.users.values()):
            if user.idle_since is not None and not user.clients and mono - user.idle_since >= linger:
                self.release_user(user)

    def _maintain_slots(self, mono: float, full: bool) -> None:
        """Session slots: top up for users that connected or disconnected here within `quota.linger` and
        are far from their limit; hand back the others'."""
        linger = self.config.linger
        for username, st in list(self.registry.slots.items()):
            self.registry.maintain(username, mono - st.last_used < linger, full)

    async def _report_sessions(self, now: float) -> None:
        updates = []
        clients = self.book.clients
        queue_depth = self.queue_depth
        for i, cq in enumerate(list(clients.values())):
            if i and i % REPORT_SLICE == 0:
                await asyncio.sleep(0)  # deliveries go on (one pass over 1,000 clients takes ms)
            if not cq.confirmed or clients.get(cq.client.client_id) is not cq:
                continue  # its registration is still queued (reported once it exists), or it has left
            fields: dict[str, Any] = dict(cq.usage)
            try:
                depth: tuple[int, int] | None = queue_depth(cq.client.client_id)
            except Exception:  # noqa: BLE001 - the engine's view is optional here
                depth = None
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
