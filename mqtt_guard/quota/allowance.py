"""The allowance this broker holds for each user and window, spent in process: pure and synchronous.

Everything a message costs is decided here without awaiting anything: no asyncio, no Redis. The async
side (quota/sync.py: lease sync; heartbeat.py; kicks.py; reload.py; enforcer.py: CONNECT) fills and
refills the entries (`ledger.Entry`: what Redis lent this broker) and is told through two callbacks
what this side needs: `wake` (an entry ran low or a window rolled: sync `urgent` soon) and `exceeded`
(a client went over a limit with `on_exceed: disconnect`: kick and block it).

One implementation of the window arithmetic: `take` rolls the user's windows when they ended, works
out what is left of each (`Entry.available`, inlined: it runs per message) and spends all or nothing.
Every spend goes through it: a PUBLISH (`admit_publish`), a delivery (`admit_delivery`), a delivery to
several clients of one user at once (stretch.DeliveryGroup), and a read batch's reservation
(stretch.py, `reserve=True`: it takes only when HEADROOM times the amount is left, and asks for no
refill before it is settled).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from ..config import QuotaConfig
from ..guard_client import GuardClient
from ..logutil import RateLimitedLog
from ..metrics import counters as C
from ..metrics.counters import Counters
from ..reasons import quota_disconnect
from ..store.keys import Keys
from .bucket import TokenBucket
from .ledger import Entry, Verdict, lease_block, monotonic
from .limits import Limits
from .windows import utc

log = logging.getLogger("mqtt_guard.quota")
drop_log = RateLimitedLog(log)

METRICS = ("events", "bytes")
URGENT_GAP = 0.05  # an entry that ran short is synced at most this often outside the heartbeat
# A reservation takes at most 1/HEADROOM of what is held here (quota/stretch.py): the bound is far above
# what a run really carries, and exact checks later in the same run (a group that could not reserve)
# must still find the allowance they would have found without it.
HEADROOM = 2

Reservation = tuple[Entry | None, Entry | None, int, int]
"""What a reservation took: (events entry, bytes entry, events, bytes); `Allowances.release` settles it."""


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
    idle_since: float | None = None  # monotonic: its last client here left (lingering until quota.linger)


class Allowances:
    """The clients and users this broker accounts for, and the entries (user, metric, window) it holds.

    `wake()` is called when `urgent` gained keys that should be synced soon; `exceeded(cq, reason,
    block_until, code)` when a client with `on_exceed: disconnect` went over a limit (`cq.kicking` is set
    first; `block_until` 0: no block; `code`: the MQTT 5 DISCONNECT reason, reasons.quota_disconnect).
    `clock` is unix time (windows are aligned to UTC)."""

    __slots__ = (
        "config",
        "keys",
        "counters",
        "wake",
        "exceeded",
        "clock",
        "clients",
        "users",
        "entries",
        "urgent",
        "redis_ok",
        "version",
    )

    def __init__(
        self,
        config: QuotaConfig,
        keys: Keys,
        counters: Counters,
        wake: Callable[[], None],
        exceeded: Callable[[ClientQuota, str, float, int], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.keys = keys
        self.counters = counters
        self.wake = wake
        self.exceeded = exceeded
        self.clock = clock
        self.clients: dict[str, ClientQuota] = {}
        self.users: dict[str, UserQuota] = {}
        self.entries: dict[str, Entry] = {}  # usage key -> entry (also released ones until synced)
        self.urgent: set[str] = set()  # keys of entries to sync before the next heartbeat
        self.redis_ok = True  # the last sync reached Redis (else `on_redis_down` applies to what is short)
        # Bumped when a client's ClientQuota or UserQuota binding changes (attach, detach, take-over):
        # a DeliveryGroup built before is rebuilt.
        self.version = 0

    # -- per message ----------------------------------------------------------------------------------
    def admit_publish(self, client: GuardClient, topic: str, payload_len: int, qos: int) -> bool:
        cq = self.clients.get(client.client_id)
        if cq is None or cq.client is not client:
            return True
        bucket = cq.bucket
        if bucket is not None and not bucket.take():
            return self.refuse(cq, topic, "rate", f"rate {cq.user.limits.rate if cq.user else ''} exceeded", None)
        user = cq.user
        if user is not None and user.current and user.limits.counts_in:
            if not self.take(user, 1, payload_len) and not self.overdraft(cq, user, topic, 1, payload_len):
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
            if not self.take(user, 1, payload_len) and not self.overdraft(cq, user, topic, 1, payload_len):
                return False
        usage = cq.usage
        usage["events_out"] += 1
        usage["bytes_out"] += payload_len
        return True

    @overload
    def take(self, user: UserQuota, events: int, nbytes: int) -> bool: ...

    @overload
    def take(self, user: UserQuota, events: int, nbytes: int, reserve: Literal[True]) -> Reservation | None: ...

    def take(self, user: UserQuota, events: int, nbytes: int, reserve: bool = False) -> bool | Reservation | None:
        """Spend `events` and `nbytes` of the user's current windows when what this broker holds covers
        both; False, with nothing spent, otherwise. An exact take that leaves an entry low asks for a
        refill.

        With `reserve` (a read batch's reservation, quota/stretch.py): only when what is held covers
        HEADROOM times both; the Reservation to `release` when the batch is settled (which asks for a
        refill then), or None with nothing spent."""
        now = self.clock()
        current = user.current
        ev = current.get("events")
        if ev is not None and now >= ev.end:
            ev = self.roll(user, "events", now)
        by = current.get("bytes")
        if by is not None and now >= by.end:
            by = self.roll(user, "bytes", now)
        if ev is not None:
            ev_left = ev.held - ev.total + ev.reported  # Entry.available, inlined (per message)
            if ev_left < events:
                return None if reserve else False
        if by is not None:
            by_left = by.held - by.total + by.reported
            if by_left < nbytes:
                return None if reserve else False
        if reserve:
            if (ev is not None and ev_left < HEADROOM * events) or (by is not None and by_left < HEADROOM * nbytes):
                return None
            if ev is not None:
                ev.total += events
            if by is not None:
                by.total += nbytes
            return ev, by, events, nbytes
        if ev is not None:
            ev.total += events
            if ev_left - events <= (ev.block >> 2) and ev.low():
                self.want_sync(ev)
        if by is not None:
            by.total += nbytes
            if by_left - nbytes <= (by.block >> 2) and by.low():
                self.want_sync(by)
        return True

    def overdraft(self, cq: ClientQuota, user: UserQuota, topic: str, events: int, nbytes: int) -> bool:
        """A `take` for `cq` did not fit: refuse it (used up, or not held here yet: a refill is asked
        for), or, when Redis is down and `on_redis_down` is allow, spend it on credit (reported once
        Redis is back). Call right after the `take`: it rolled the windows."""
        ev = user.current.get("events")
        by = user.current.get("bytes")
        for entry, n in ((ev, events), (by, nbytes)):
            if entry is None or entry.available >= n:
                continue
            verdict = entry.refuse(n)  # not enough held here: used up, or held elsewhere (SHORT)
            if verdict is Verdict.EXHAUSTED:
                window = user.limits.allowance(entry.metric)
                return self.refuse(
                    cq, topic, entry.metric, f"{entry.metric} quota {window} used up until {utc(entry.end)}", entry
                )
            if not self.redis_ok and self.config.on_redis_down == "allow":
                continue
            self.want_sync(entry)
            return self.refuse(cq, topic, entry.metric, f"{entry.metric} allowance not held here yet", None, short=True)
        if ev is not None:
            ev.total += events
        if by is not None:
            by.total += nbytes
        return True

    def release(self, reservation: Reservation, used_events: int, used_bytes: int) -> None:
        """Keep what was used of a reservation, give the rest back, ask for a refill when it runs low."""
        ev, by, events, nbytes = reservation
        if ev is not None:
            ev.total -= events - used_events
            if used_events and ev.low():
                self.want_sync(ev)
        if by is not None:
            by.total -= nbytes - used_bytes
            if used_bytes and by.low():
                self.want_sync(by)

    def refuse(
        self, cq: ClientQuota, topic: str, what: str, reason: str, entry: Entry | None, *, short: bool = False
    ) -> bool:
        """Count and log a refused message; with `on_exceed: disconnect` (and not merely short here),
        have the client kicked, and blocked until the window ends (`entry`). Returns False."""
        client = cq.client
        self.counters.incr(client.client_id, C.OVER_QUOTA)
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
        self.exceeded(cq, reason, float(entry.end) if entry is not None else 0.0, quota_disconnect(what))
        return False

    # -- windows and entries ------------------------------------------------------------------------------
    def roll(self, user: UserQuota, metric: str, now: float) -> Entry:
        """The window ended: switch to the prefetched entry of the next window (or a fresh one)."""
        old = user.current[metric]
        allowance = user.limits.allowance(metric)
        assert allowance is not None
        entry = user.upcoming.pop(metric, None)
        if entry is None or not entry.start <= now < entry.end:
            entry = self.entry(
                user.username, metric, allowance.limit, allowance.window.start(now), allowance.window.seconds
            )
        user.current[metric] = entry
        if old is not entry:
            old.release = True
            self.urgent.add(old.key)
        if not entry.synced:
            self.want_sync(entry)
        return entry

    def entry(self, username: str, metric: str, limit: int, start: int, length: int) -> Entry:
        """The entry of one window (the live one if this broker holds it already), sized for `limit`."""
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

    def set_entries(self, user: UserQuota, now: float) -> None:
        """Point the user at the entries of the current windows of its limits (reusing live ones)."""
        for metric in METRICS:
            allowance = user.limits.allowance(metric)
            old = user.current.get(metric)
            if allowance is None:
                if old is not None:
                    old.release = True
                    del user.current[metric]
                user.upcoming.pop(metric, None)
                continue
            entry = self.entry(
                user.username, metric, allowance.limit, allowance.window.start(now), allowance.window.seconds
            )
            if old is not None and old is not entry:
                old.release = True
            user.current[metric] = entry
            nxt = user.upcoming.get(metric)
            if nxt is not None and (nxt.start != entry.end or nxt.limit != allowance.limit):
                nxt.release = True
                del user.upcoming[metric]

    def prefetch(self, now: float) -> None:
        """Take the next window's entry shortly before the window ends, so that its lease is synced by
        the heartbeat and the first messages of the new window do not wait for Redis."""
        horizon = now + 3 * self.config.sync_interval + 1.0
        for user in list(self.users.values()):
            for metric in list(user.current):
                entry = user.current[metric]
                if now >= entry.end:  # a window passed without a message: move on here, not on the hot path
                    entry = self.roll(user, metric, now)
                if entry.end > horizon or metric in user.upcoming:
                    continue
                allowance = user.limits.allowance(metric)
                if allowance is None:
                    continue
                user.upcoming[metric] = self.entry(
                    user.username, metric, allowance.limit, entry.end, allowance.window.seconds
                )

    def drop_user(self, user: UserQuota) -> None:
        """The user has no client here any more: its entries are reported and handed back (urgently)."""
        for entry in (*user.current.values(), *user.upcoming.values()):
            entry.release = True
            self.urgent.add(entry.key)
        if self.users.get(user.username) is user:
            del self.users[user.username]
        self.wake()

    def want_sync(self, entry: Entry) -> None:
        if entry.in_flight or monotonic() - entry.last_sync < URGENT_GAP:
            return
        self.urgent.add(entry.key)
        self.wake()

    # -- Redis health -----------------------------------------------------------------------------------
    def redis_lost(self, exc: BaseException) -> None:
        if self.redis_ok:
            log.warning(
                "quota: Redis unreachable (%s); spending local leases only (on_redis_down=%s)",
                exc or type(exc).__name__,
                self.config.on_redis_down,
            )
        self.redis_ok = False

    def redis_back(self) -> None:
        if not self.redis_ok:
            log.info("quota: Redis reachable again; usage reported")
        self.redis_ok = True
