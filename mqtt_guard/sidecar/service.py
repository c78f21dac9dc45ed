"""The sidecar: evaluates the sessions that have work at each interval and kicks through Redis.

Work is found three ways (docs/quotas.md "How the sidecar finds work"): deadlines in `sidecar:due`
(written at connect, rewritten by each evaluation from `evaluate.next_check`, read with one range
query per tick), events (a queue crossing `max_queue`, reported by the broker's heartbeat into the same
set; changed limits, users and blocks, from Redis invalidations: work.py) and a rare reconciliation
sweep in slices. An idle fleet costs a few round trips per tick, whatever its size.

Only the leader acts: a sidecar holds `<prefix>sidecar:leader` (a key with a TTL it renews every
interval) while it evaluates; a second sidecar waits and takes over within `sidecar.leader_ttl` when
the leader stops. Each kick is one Lua script that checks the session is still the same connection,
marks it kicked and appends to the audit stream atomically, so even two sidecars that briefly both
believe they lead (a leader stalled past its TTL) kick a connection once.

The sidecar keeps no state of its own: restarting it loses nothing. Usage is counted by the brokers.

It acts only on this deployment's data: like a broker it knows the generation marker it first saw
(store/generation.py; it creates one on a Redis that has none), and while the marker is missing or
changed (Redis flushed, replaced, restarted empty) it decides nothing: no broker is reaped, nobody
kicked or blocked (an empty or foreign Redis would look like "every user deleted", "every broker
dead"). That is logged once as an ERROR; it acts again when the marker comes back (a restore) or after
`mqtt-guard store adopt`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from ..config import GuardConfig
from ..metrics.health import health_routes, serve_http
from ..quota.limits import Limits, parse_limits
from ..quota.plans import effective
from ..store import generation, schema
from ..store.connection import REDIS_ERRORS, make_async_client
from ..store.invalidation import InvalidationListener
from ..store.keys import USER_EXPIRES_AT, Keys
from ..store.quota import Block, QuotaStore
from .evaluate import Decision, Usage, evaluate, next_check
from .work import Sweep, Work

if TYPE_CHECKING:  # prometheus_client is imported only when sidecar.prometheus_bind is set
    from ..metrics.fleet import FleetEndpoint
    from ..metrics.rates import LoopLagMonitor

log = logging.getLogger("mqtt_guard.sidecar")

DUE_BATCH = 5000  # due sessions taken per tick (more wait for the next tick, earliest first)
EVAL_PART = 1000  # sessions per round of Redis reads when evaluating
RETIME_PART = 20_000  # sessions re-timed between two renewals of the lead (~0.4 s on this machine, loaded)


@dataclass
class TickReport:
    sessions: int = 0
    kicked: list[tuple[str, str]] = field(default_factory=list)  # (client id, reason)
    reaped: dict[str, int] = field(default_factory=dict)


class Sidecar:
    def __init__(self, config: GuardConfig, *, redis: aioredis.Redis | None = None) -> None:
        self.config = config
        self.interval = config.sidecar.interval
        self.keys = Keys(config.redis.prefix)
        self.redis = redis or make_async_client(config.redis.url)
        self.store = QuotaStore(self.redis, self.keys, audit_maxlen=config.quota.audit_maxlen)
        self.id = f"sidecar:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leading = False
        self.ticks = 0
        self._redis_ok = True
        self._stepped = False  # a step has run (readiness: the sidecar has reached Redis at least once)
        self.marker: generation.Generation | None = None  # the deployment's marker, as first seen
        self.distrusted = False  # the marker is missing or changed: nothing is decided
        self.work = Work(self.keys)  # users and client ids named by changed keys (work.py)
        self.sweep = Sweep(config.sidecar.sweep_interval, self.interval)
        self._listener: InvalidationListener | None = None  # set by `run`
        self._listening = False  # its first subscription seen (a sweep then)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("sidecar %s started (interval %.2fs, prefix %r)", self.id, self.interval, self.config.redis.prefix)
        metrics = await self._start_metrics()
        probes = await self._start_probes()
        listener = InvalidationListener(
            self.config.redis.url, self.work.prefixes(), self.work.changed, self.work.missed
        )
        listener.start()
        self._listener = listener
        try:
            while not stop.is_set():
                started = time.monotonic()
                await self.step()
                delay = max(0.0, self.interval - (time.monotonic() - started))
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            await listener.stop()
            if probes is not None:
                probes.close()
            if metrics is not None:
                endpoint, lag = metrics
                await endpoint.close()
                await lag.stop()
            if self.leading:
                try:
                    await self.store.resign(self.id)
                except REDIS_ERRORS:
                    pass
            await self.redis.aclose()
            log.info("sidecar %s stopped", self.id)

    async def _start_metrics(self) -> tuple[FleetEndpoint, LoopLagMonitor] | None:
        """The fleet's /metrics (all brokers' totals from Redis) when sidecar.prometheus_bind is set."""
        bind = self.config.sidecar.prometheus_bind
        if not bind:
            return None
        from ..metrics.fleet import serve_fleet_metrics  # (prometheus_client: only imported when used)
        from ..metrics.rates import LoopLagMonitor

        lag = LoopLagMonitor()
        lag.start()
        try:
            endpoint = await serve_fleet_metrics(bind, self.redis, self.keys, loop_lag=lag)
        except OSError as exc:  # e.g. the port is taken: as the broker does, run on without /metrics
            log.error("cannot serve /metrics on %s: %s (the sidecar runs on without it)", bind, exc.strerror or exc)
            await lag.stop()
            return None
        log.info("sidecar /metrics on http://%s/metrics", bind)
        return endpoint, lag

    async def _start_probes(self) -> asyncio.AbstractServer | None:
        """/livez, /readyz and /healthz alone on sidecar.health_bind (metrics/health.py), when it is set and
        is not prometheus_bind (which serves them with /metrics). A port that cannot be served is logged
        and the sidecar runs on without it, as a broker does."""
        bind = self.config.sidecar.health_bind
        if not bind or bind == self.config.sidecar.prometheus_bind:
            return None
        try:
            server = await serve_http(bind, health_routes(self.readiness))
        except OSError as exc:
            log.error("cannot serve the probes on %s: %s (the sidecar runs on without them)", bind, exc.strerror or exc)
            return None
        log.info("sidecar probes on http://%s/livez and /readyz", bind)
        return server

    def readiness(self) -> str | None:
        """What the health-only /readyz says: ready (None) once a step has reached Redis and while the last
        one did; /livez never looks at Redis (metrics/health.py)."""
        if not self._stepped:
            return "starting: Redis not reached yet\n"
        return None if self._redis_ok else "redis unreachable\n"

    async def step(self) -> TickReport | None:
        """One interval: renew or take leadership, and evaluate if leading."""
        try:
            if not await self._trusted():
                self.leading = False  # (the leader key runs out; leadership is taken again afterwards)
                return None
            listener = self._listener
            if listener is not None and not self._listening and listener.connected.is_set():
                # Tracking is on from now: a change written before it (while this sidecar started) reached
                # nobody, so one sweep looks at everything (the listener's own reset covers reconnects).
                self._listening = True
                self.work.missed()
            leading = await self.store.lead(self.id, self.config.sidecar.leader_ttl)
            if leading != self.leading:
                log.info("sidecar %s %s", self.id, "is the leader now" if leading else "is no longer the leader")
                if leading:  # what changed while another sidecar led (or none) is not known here
                    self.work.missed()
            self.leading = leading
            if not leading:
                self.work.drop()  # (the leader acts on them)
            report = await self.tick() if leading else None
            if not self._redis_ok:
                log.info("Redis reachable again")
            self._redis_ok = self._stepped = True
            return report
        except schema.SchemaMismatch:
            raise  # (only at start: a later change is `_trusted`'s)
        except REDIS_ERRORS as exc:
            if self._redis_ok:
                log.warning("Redis unreachable (%s); retrying every %.2fs", exc, self.interval)
            self._redis_ok = False
            self.leading = False
        except Exception:
            log.exception("sidecar tick failed")
            self.work.missed()  # (the events it had taken may be lost: a sweep at the next tick)
        return None

    async def _trusted(self) -> bool:
        """Whether Redis still holds the deployment whose marker this sidecar knows (the module docstring),
        in a key layout this release reads (store/schema.py: refused at start, idle if it changes later)."""
        if self.marker is None:
            self.marker = await generation.ensure(self.redis, self.keys, by=self.id)
            await schema.check(self.redis, self.keys)  # SchemaMismatch: the sidecar does not start
            return True
        try:
            await schema.check(self.redis, self.keys)
        except schema.SchemaMismatch as exc:
            if not self.distrusted:
                log.error("%s: the sidecar reaps no broker and kicks nobody meanwhile", exc)
            self.distrusted = True
            return False
        current = await generation.read(self.redis, self.keys)
        if generation.accepts(self.marker, current):
            assert current is not None  # (accepts() never accepts a missing marker)
            if current.token != self.marker.token:
                log.warning("Redis generation marker adopted: %s (was %s)", current.describe(), self.marker.describe())
            if self.distrusted:
                log.warning("Redis holds this deployment's data again: the sidecar acts again")
            self.marker, self.distrusted = current, False
            return True
        if not self.distrusted:
            what = "missing" if current is None else f"changed to {current.describe()}"
            log.error(
                "Redis lost this deployment's data (generation marker %s %s): the sidecar reaps no broker and "
                "kicks nobody until it comes back or `mqtt-guard store adopt`",
                self.marker.describe(),
                what,
            )
        self.distrusted = True
        return False

    async def tick(self) -> TickReport:
        """One tick of the leader: reap dead brokers, then evaluate only the sessions with work: those
        due in `sidecar:due` (one range query), those of users and client ids an invalidation named,
        and the current slice of the reconciliation sweep. Its cost follows what happens, not how many
        sessions are connected (docs/quotas.md "How the sidecar finds work")."""
        self.ticks += 1
        report = TickReport()
        report.reaped = {b: n for b, n in (await self.store.reap_dead(self.id)).items() if n >= 0}
        for broker_id, n in report.reaped.items():
            log.warning(
                "broker %s stopped heartbeating: removed its %d session(s) and returned its leases", broker_id, n
            )
        now = time.time()
        expected = dict(await self.store.due(now, DUE_BATCH))
        wanted: dict[str, None] = dict.fromkeys(expected)
        work = self.work
        users, clients = work.take()
        mono = time.monotonic()
        if work.default_changed:
            # Every session's deadline moves to the earliest the new defaults allow, in Redis, this tick
            # (a few microseconds each: 100,000 sessions in ~0.2 s, not 50 ticks of an evaluation each)
            work.default_changed = False
            default = parse_limits(None, await self.store.load_default())
            ids = await self.store.session_ids()
            for start in range(0, len(ids), RETIME_PART):
                if start and not await self._still_leading():
                    return report
                part = ids[start : start + RETIME_PART]
                await self.store.retime_earlier(part, default.session_time, default.max_queue, default.queue_grace)
        if work.sweep_now:
            work.sweep_now = False
            self.sweep.start(await self.store.session_ids(), mono, urgent=True)
        elif self.sweep.idle(mono):
            self.sweep.start(await self.store.session_ids(), mono, urgent=False)
        if users:
            await self._retime_users(sorted(users))
        work.name(sorted(clients))
        wanted.update(dict.fromkeys(work.take_named()))
        wanted.update(dict.fromkeys(self.sweep.take()))
        ids = list(wanted)
        report.sessions = len(ids)
        for start in range(0, len(ids), EVAL_PART):
            if start and not await self._still_leading():
                break
            await self._evaluate(ids[start : start + EVAL_PART], expected, report)
        return report

    async def _still_leading(self) -> bool:
        """Between the parts of a long tick: renew the lead, or stop the tick once it is lost (the next
        leader looks at everything, `missed`, and deadlines due meanwhile are not held up behind it)."""
        if await self.store.lead(self.id, self.config.sidecar.leader_ttl):
            return True
        log.warning("sidecar %s lost the lead during a tick; stopping it", self.id)
        self.leading = False
        return False

    async def _retime_users(self, usernames: list[str]) -> None:
        """Users whose limits, expiry or block changed: their sessions are named for evaluation (capped
        per tick), and their deadlines re-timed in Redis now, so a shorter `session_time` is met within a
        tick however many sessions the user has."""
        ids_of = await self._ids_by_user(usernames)
        limits = await self._limits([(u, "") for u in usernames if ids_of.get(u)])
        for user in usernames:
            ids = ids_of.get(user)
            if not ids:
                continue
            # (sessions whose token names a plan are evaluated this tick anyway: named below)
            lim = limits[(user, "")]
            await self.store.retime_earlier(ids, lim.session_time, lim.max_queue, lim.queue_grace)
            self.work.name(ids)

    async def _ids_by_user(self, usernames: list[str]) -> dict[str, list[str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for u in usernames:
                pipe.hkeys(self.keys.user_sessions(u))
            raw = await pipe.execute()
        return {u: sorted(ids) for u, ids in zip(usernames, raw, strict=True)}

    async def _evaluate(self, ids: list[str], expected: dict[str, float], report: TickReport) -> None:
        """Evaluate these sessions (one implementation for the deadline, event and sweep paths), kick
        where `evaluate` says so, and write each one's next deadline (`next_check`)."""
        sessions = await self.store.sessions(ids)
        found = {s.get("client_id", "") for s in sessions}
        # A due entry without a session (it left, its broker was reaped): nothing more is due for it.
        resched: list[tuple[str, float | None, float | None]] = [
            (cid, expected[cid], None) for cid in ids if cid not in found and cid in expected
        ]
        now = time.time()
        usernames = sorted({s["username"] for s in sessions if s.get("username")})
        # (user, plan claim of the session's token): the limits the broker applies to that connection
        pairs = sorted({(s["username"], s.get("plan") or "") for s in sessions if s.get("username")})
        limits = await self._limits(pairs)
        expires = await self._expiries(usernames)
        blocks = await self._blocks(sessions, usernames)
        usage = await self._usage(limits, now)
        retry = self.config.sidecar.kick_retry
        for s in sessions:
            cid, user = s.get("client_id", ""), s.get("username") or ""
            block = blocks.get(("client", cid)) or (blocks.get(("user", user)) if user else None)
            key = (user, s.get("plan") or "") if user else ("", "")
            lim = limits.get(key, Limits())
            decision = evaluate(s, lim, now=now, expires_at=expires.get(user), usage=usage.get(key), block=block)
            if decision is None:
                nxt = next_check(s, lim, now=now, expires_at=expires.get(user))
            else:
                if await self._kick(s, decision, retry):
                    report.kicked.append((cid, decision.reason))
                nxt = now + retry  # looked at again if it is still registered then (a kick not carried out)
            resched.append((cid, expected.get(cid), nxt))
        await self.store.reschedule(resched)

    async def _kick(self, session: dict[str, str], decision: Decision, retry: float) -> bool:
        client_id, user = session["client_id"], session.get("username") or ""
        block_key = self.keys.block_user(user) if decision.block_user and user else None
        queued, detail = await self.store.kick(
            client_id,
            decision.reason,
            self.id,
            broker_id=session.get("broker", ""),
            conn=session.get("conn", ""),
            dedupe=retry,
            block_key=block_key,
            block_until=decision.block_until,
            code=decision.code,
        )
        if queued:
            log.warning(
                "kicking client %r (user %r) on broker %s: %s%s",
                client_id,
                user or None,
                detail,
                decision.reason,
                f" (blocked until {decision.block_until:.0f})" if block_key else "",
            )
        return queued

    async def _limits(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Limits]:
        """The limits of each (user, token plan claim) pair, as the broker resolves them (quota/plans.py)."""
        sources = await self.store.load_plan_limits(pairs)
        out = {("", ""): parse_limits(None, None)}
        for pair in pairs:
            out[pair] = effective(sources[pair], pair[1] or None)
        return out

    async def _expiries(self, usernames: list[str]) -> dict[str, float]:
        if not usernames:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for u in usernames:
                pipe.hget(self.keys.user(u), USER_EXPIRES_AT)
            raw = await pipe.execute()
        out = {}
        for u, value in zip(usernames, raw, strict=True):
            try:
                if value not in (None, ""):
                    out[u] = float(value)
            except ValueError:
                pass
        return out

    async def _blocks(self, sessions: list[dict[str, str]], usernames: list[str]) -> dict[tuple[str, str], Block]:
        targets = [("client", s["client_id"]) for s in sessions] + [("user", u) for u in usernames]
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind, name in targets:
                key = self.keys.block_client(name) if kind == "client" else self.keys.block_user(name)
                pipe.hgetall(key)
                pipe.pttl(key)
            raw = await pipe.execute()
        now = time.time()
        out = {}
        for i, (kind, name) in enumerate(targets):
            h, pttl = raw[2 * i], raw[2 * i + 1]
            if h and pttl != -2:
                out[(kind, name)] = Block(
                    h.get("reason", "blocked"), now + pttl / 1000 if pttl > 0 else float("inf"), h.get("by", ""), ""
                )
        return out

    async def _usage(
        self, limits: dict[tuple[str, str], Limits], now: float
    ) -> dict[tuple[str, str], dict[str, Usage]]:
        """The usage of the current window of each (user, plan claim) whose limits disconnect."""
        wanted: list[tuple[tuple[str, str], str, int, int, int]] = []  # (pair, metric, limit, start, end)
        for pair, lim in limits.items():
            if not pair[0] or lim.on_exceed != "disconnect":
                continue
            for metric in ("events", "bytes"):
                allowance = lim.allowance(metric)
                if allowance is not None:
                    w = allowance.window
                    wanted.append((pair, metric, allowance.limit, w.start(now), w.end(now)))
        if not wanted:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for (u, _), metric, _, start, _ in wanted:
                pipe.hmget(self.keys.quota_usage(u, metric, start), "used", "refused")
            raw = await pipe.execute()
        out: dict[tuple[str, str], dict[str, Usage]] = {}
        for (pair, metric, limit, _start, end), (used, refused) in zip(wanted, raw, strict=True):
            out.setdefault(pair, {})[metric] = Usage(int(used or 0), int(refused or 0), limit, end)
        return out
