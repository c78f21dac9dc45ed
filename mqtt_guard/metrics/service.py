"""The Guard's analytics: flushes `Counters` to Redis in batches and heartbeats; the state /metrics reads.

Two tasks run on the broker's event loop:
- the ticker drains the counters every `metrics.flush_interval`, always also at every 10 s wall-clock
  boundary, so each drained window falls into exactly one rate-history bucket, and merges the window into
  the backlog (in memory, bounded by `metrics.max_backlog` entries);
- the writer sends the backlog to Redis (parts of FLUSH_CHUNK entries, each one call of a Lua script,
  `StatsWriter.write`; a round trip per part however many messages were counted), pings Redis and writes
  the heartbeat. When Redis is down the backlog is kept and retried with back-off; counts are added
  exactly once when it is back.

The hot path never waits for any of this: `Counters.incr` is a dict increment.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from .. import __version__
from ..config import ListenerConfig, MetricsConfig
from ..ports import QueueDepths
from ..store.keys import Keys
from ..store.stats import (
    HB_CLIENTS,
    HB_FLUSH_FAILURES,
    HB_HOST,
    HB_LOOP_LAG,
    HB_LOOP_LAG_MAX,
    HB_PID,
    HB_REDIS_RTT,
    HB_STARTED,
    HB_VERSION,
    Batch,
    StatsWriter,
    batch_from_drain,
)
from ..tasks import cancel_and_wait
from . import counters as C
from .counters import Counters
from .rates import RES_10S, LoadAverage, LoopLagMonitor, next_boundary

log = logging.getLogger("mqtt_guard.metrics")

# Histogram buckets of Redis round trips (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Counters that get mosquitto-style load averages ($SYS/broker/load/... and Prometheus gauges).
LOAD_COUNTERS = (C.MSGS_IN, C.MSGS_OUT, C.BYTES_IN, C.BYTES_OUT, C.DROPPED_QUEUE_FULL, C.CONNECTS)
RECENT_TAU = 10.0  # seconds: the per-client "recent rate" used to pick the top-N series
# Entries per part of a flush (one script call each, StatsWriter.split). The event loop does nothing else
# while a part is encoded and packed, ~1.6-2.2 µs of CPU per entry, so 500 entries stall message
# delivery for ~1 ms (tests/bench/bench_stats.py, CPU of the longest stall: 1,000-device case 0.8-1.0 ms,
# 2,000 new clients 1.0-1.2 ms) and keep Redis busy for ~3-5 ms per call. 1,000 would save ~0.4 µs per
# client but stall 1.6-2.3 ms, at the ~2 ms bound, and block Redis (and the CONNECTs' auth lookups
# queued behind the script) twice as long; 250 would cost ~1 µs per client more for no gain that
# matters. Before the script path (issue 9) an entry cost ~40 µs in redis-py, hence 250 then.
FLUSH_CHUNK = 500
GAUGE_SLICE = 1000  # per-client gauges set per step of a tick (the event loop runs between the steps)


@dataclass
class BrokerSample:
    """What only the broker object knows, sampled by the $SYS plugin at every tick."""

    sessions_total: int = 0  # connected + persistent sessions of disconnected clients
    subscriptions: int = 0
    retained: int = 0
    queue_depths: dict[str, int] = field(default_factory=dict)  # connected client id -> messages waiting


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.count += 1
        self.sum += v
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
                break

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=True):
            acc += c
            out.append((repr(b), acc))
        out.append(("+Inf", self.count))
        return out


def default_broker_id(listeners: Sequence[ListenerConfig]) -> str:
    """HOSTNAME:PORT of the first listener (the hostname alone without listeners): `metrics.broker_id`
    when it is not set."""
    port = listeners[0].bind.rpartition(":")[2] if listeners else ""
    return f"{socket.gethostname()}:{port}" if port else socket.gethostname()


class MetricsService:
    """Built by the Guard with what it reads: its config section, Redis and the key schema (through
    `StatsWriter`), the counters it drains, and the engine's queue depths (`queues`, read at every
    tick: the engine binds after the service is built). `listeners` only name the broker when
    `metrics.broker_id` is unset."""

    def __init__(
        self,
        config: MetricsConfig,
        redis: Redis,
        keys: Keys,
        counters: Counters,
        queues: QueueDepths,
        listeners: Sequence[ListenerConfig] = (),
    ) -> None:
        self.config = config
        self.counters = counters
        self.queues = queues
        self.broker_id = config.broker_id or default_broker_id(listeners)
        self.writer = StatsWriter(
            redis,
            keys,
            self.broker_id,
            ttl=config.stats_ttl,
            chunk=FLUSH_CHUNK,
            max_failed=config.max_failed_addresses,
        )
        self.started = time.time()
        self.backlog = Batch()
        self.dropped = 0  # backlog entries given up because of max_backlog
        self.flushes = 0
        self.flush_failures = 0
        self.redis_up: bool | None = None  # None until the first attempt
        self.redis_latency: float | None = None  # seconds, the last PING
        self.last_flush: float | None = None  # unix seconds of the last complete flush
        self.latency = {"ping": Histogram(), "flush": Histogram(), "heartbeat": Histogram()}
        self.fleet: dict[str, float] = {}  # broker id -> last heartbeat (unix seconds), from Redis
        self.load = {name: LoadAverage() for name in LOAD_COUNTERS}
        self.recent: dict[str, float] = {}  # client id -> messages (in+out) per second, decaying
        self.per_user: dict[str, dict[str, int]] = {}  # allow-listed users' counts in this process
        self.lag = LoopLagMonitor()
        self.probe: Callable[[], BrokerSample] | None = None  # set by the $SYS plugin
        # The cluster's counters (cluster/node.py `counters`), set when the broker joined one (docs/scaling.md)
        self.cluster: Callable[[], dict[str, int]] | None = None
        self.probe_steps: Callable[[], Generator[None, None, BrokerSample]] | None = None  # the same, in steps
        self.sample = BrokerSample()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle (Guard.start / Guard.close) -----------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        mono = time.monotonic()
        for name, avg in self.load.items():  # the load averages start from the counts at start
            avg.update(self.counters.total(name), mono)
        self.lag.start()
        try:  # a first heartbeat, so /healthz and the fleet view know this broker from the start
            await asyncio.wait_for(self.flush(), 2.0)
        except TimeoutError:
            pass
        self._tasks = [
            loop.create_task(self._ticker(), name="mqtt-guard-stats-ticker"),
            loop.create_task(self._writer(), name="mqtt-guard-stats-writer"),
        ]

    async def close(self, timeout: float = 3.0) -> None:
        """Stop; the last counts go to Redis if it answers within `timeout` seconds."""
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        await self.lag.stop()
        self.tick()
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            pass
        if not self.backlog.empty():
            log.warning("stopped with %d stats entries not written to Redis", self.backlog.size())

    # -- ticking ----------------------------------------------------------------------------------
    async def _ticker(self) -> None:
        interval = self.config.flush_interval
        while True:
            now = time.time()
            wake = min(now + interval, next_boundary(now, RES_10S[1]))
            await asyncio.sleep(max(0.0, wake - time.time()))
            try:
                for _ in self._tick_steps():
                    await asyncio.sleep(0)  # deliveries go on between the steps
            except Exception:  # analytics must never take the broker down
                log.exception("stats tick failed")
            self._wake.set()

    def tick(self, now: float | None = None) -> None:
        """Drain the counters into the backlog (no I/O)."""
        for _ in self._tick_steps(now):
            pass

    def _tick_steps(self, now: float | None = None) -> Iterator[None]:
        """`tick` in steps, for the ticker to give the event loop back between them: each step walks
        every client, and all of them in one go stopped deliveries for several ms with 1,000 active
        clients (the 1,000-device benchmark's p99). The drain is one snapshot; the steps after it only
        read that snapshot, and the backlog changes in the last step only."""
        now = time.time() if now is None else now
        if self.probe is not None:
            try:  # in steps (issue 15: one pass over 10,000 sessions was the p99 with them connected)
                if self.probe_steps is not None:
                    self.sample = yield from self.probe_steps()
                else:
                    self.sample = self.probe()
            except Exception:
                log.exception("broker sample failed")
            for i, (cid, depth) in enumerate(self.sample.queue_depths.items()):
                self.counters.set_gauge(cid, C.G_QUEUE_DEPTH, depth)
                if i % GAUGE_SLICE == GAUGE_SLICE - 1:
                    yield
        else:  # without the $SYS plugin: the engine's own queue depths (none before it is bound)
            try:
                for cid, (messages, _) in self.queues.queue_depths().items():
                    self.counters.set_gauge(cid, C.G_QUEUE_DEPTH, messages)
            except Exception:
                log.exception("queue depth sample failed")
        yield
        drain = self.counters.drain(now)
        mono = time.monotonic()
        for name, avg in self.load.items():
            avg.update(self.counters.total(name), mono)
        yield
        self._update_recent(drain)
        self._update_users(drain)
        yield
        batch = batch_from_drain(drain)
        if not batch.empty():
            if self.backlog.empty():  # the usual case: take the window as it is instead of copying it
                self.backlog = batch
            else:
                self.backlog.merge(batch)
            self._bound()

    def _update_recent(self, drain: C.Drain) -> None:
        dt = max(1e-3, drain.ended - drain.started)
        e = math.exp(-dt / RECENT_TAU)
        active: dict[str, float] = {}
        for (cid, _), counts in drain.clients.items():
            active[cid] = active.get(cid, 0.0) + (counts.get(C.MSGS_IN, 0) + counts.get(C.MSGS_OUT, 0)) / dt
        connected = self.counters.usernames
        for cid in list(self.recent):
            if cid not in active:
                v = self.recent[cid] * e
                if v < 0.01 or cid not in connected:
                    del self.recent[cid]
                else:
                    self.recent[cid] = v
        for cid, r in active.items():
            if cid in connected:
                self.recent[cid] = r + e * (self.recent.get(cid, 0.0) - r)

    def _update_users(self, drain: C.Drain) -> None:
        patterns = self.config.per_user_allowlist
        if not patterns:
            return
        for user, counts in drain.users.items():
            if user in self.per_user or any(fnmatch.fnmatchcase(user, p) for p in patterns):
                mine = self.per_user.setdefault(user, {})
                for name, v in counts.items():
                    mine[name] = mine.get(name, 0) + v

    def _bound(self) -> None:
        """Keep the backlog under max_backlog entries: give up the oldest rate buckets first, then
        per-client detail, connection events, then refused-CONNECT entries; per-user and broker totals are
        kept. The refused-CONNECT table also keeps at most what the day's rankings hold (addresses plus
        usernames), its largest entries: a long outage under attack does not grow it."""
        limit = self.config.max_backlog
        b = self.backlog
        self._trim_failed(len(b.failed) - 2 * self.config.max_failed_addresses)
        while b.size() > limit and b.rates:
            oldest = min(b.rates)
            self.dropped += len(b.rates.pop(oldest))
        if b.size() > limit and b.clients:
            extra = b.size() - limit
            for key in list(b.clients)[:extra]:
                del b.clients[key]
                self.dropped += 1
        if b.size() > limit and b.events:
            extra = b.size() - limit
            del b.events[:extra]
            self.dropped += extra
        self._trim_failed(b.size() - limit)

    def _trim_failed(self, extra: int) -> None:
        """Give up the `extra` smallest refused-CONNECT entries of the backlog (none when `extra` <= 0)."""
        failed = self.backlog.failed
        if extra > 0 and failed:
            for entry in sorted(failed, key=failed.__getitem__)[:extra]:
                del failed[entry]
                self.dropped += 1

    # -- writing ----------------------------------------------------------------------------------
    async def _writer(self) -> None:
        backoff = 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            if backoff:
                await asyncio.sleep(backoff)
            ok = await self.flush()
            backoff = 0.0 if ok else min(10.0, max(self.config.flush_interval, backoff * 2 or 0.5))

    async def flush(self) -> bool:
        """Ping, write the backlog, heartbeat. False when Redis failed (the backlog is kept)."""
        try:
            latency = await self.writer.ping()
        except Exception as exc:  # noqa: BLE001 - any failure is a failed flush: reported, retried
            self._failed(exc)
            return False
        self.redis_latency = latency
        self.latency["ping"].observe(latency)
        batch, self.backlog = self.backlog, Batch()
        if not batch.empty():
            parts = self.writer.split(batch)
            done = 0
            t0 = time.perf_counter()
            try:
                await asyncio.sleep(0)  # splitting and encoding the first part: two stalls, not one
                for part in parts:
                    await self.writer.write(part)
                    done += 1
            except BaseException as exc:
                # What is not in Redis goes back in front of what was counted meanwhile.
                rest = Batch()
                for part in parts[done:]:
                    rest.merge(part)
                rest.merge(self.backlog)
                self.backlog = rest
                if not isinstance(exc, Exception):
                    raise
                self._failed(exc)
                return False
            self.latency["flush"].observe(time.perf_counter() - t0)
        t0 = time.perf_counter()
        try:
            self.fleet = await self.writer.heartbeat(
                {
                    HB_HOST: socket.gethostname(),
                    HB_PID: os.getpid(),
                    HB_VERSION: __version__,
                    HB_STARTED: round(self.started, 3),
                    HB_CLIENTS: self.counters.connected_count(),
                    HB_LOOP_LAG: round(self.lag.lag * 1000, 2),
                    HB_LOOP_LAG_MAX: round(self.lag.max_lag * 1000, 2),
                    HB_REDIS_RTT: round(latency * 1000, 3),
                    HB_FLUSH_FAILURES: self.flush_failures,
                }
            )
        except Exception as exc:  # noqa: BLE001 - any failure is a failed flush: reported, retried
            self._failed(exc)
            return False
        self.latency["heartbeat"].observe(time.perf_counter() - t0)
        if self.redis_up is False:
            log.warning("Redis is reachable again: stats are flushed")
        self.redis_up = True
        self.flushes += 1
        self.last_flush = time.time()
        return True

    def _failed(self, exc: BaseException) -> None:
        self.flush_failures += 1
        if self.redis_up is not False:
            log.warning("cannot write stats to Redis (%s); keeping them in memory and retrying", exc)
        self.redis_up = False

    # -- views for the exporters --------------------------------------------------------------------
    def client_series(self) -> list[str]:
        """Client ids with their own Prometheus series: the allow-list plus this broker's top N."""
        chosen: list[str] = []
        patterns = self.config.per_client_allowlist
        if patterns:
            chosen = [cid for cid in self.counters.usernames if any(fnmatch.fnmatchcase(cid, p) for p in patterns)]
        n = self.config.top_n
        if n:
            busiest = sorted(self.recent.items(), key=lambda kv: -kv[1])[:n]
            chosen += [cid for cid, _ in busiest if cid not in chosen]
        return chosen


__all__ = ["MetricsService", "BrokerSample", "default_broker_id"]
