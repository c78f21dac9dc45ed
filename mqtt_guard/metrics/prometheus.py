"""Prometheus exposition of one broker's live state, served by the broker itself on
`metrics.prometheus_bind` (docs/analytics.md lists every metric).

Why the broker: the counts, the connected clients, the queues and the event loop are in this process;
scraping each broker gives exact live numbers without a Redis round trip, and `sum()` in PromQL adds the
brokers up. Fleet-wide facts read from Redis (each broker's last heartbeat) are exported too, labelled by
broker, so one scrape shows whether the others are alive.

The HTTP server is a few lines of asyncio on the broker's own loop: the collector reads the counters
without locks because it runs on the thread that writes them. `render()` and `serve_metrics()` take any
prometheus_client registry, so another process (the sidecar) can serve its own metrics the same way.

Label sets are bounded by default: reasons come from fixed lists; per-client and per-user series only
exist for `metrics.per_client_allowlist` / `per_user_allowlist` and the `metrics.top_n` busiest clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from .. import __version__
from ..auth.authenticator import AuthResult, Outcome
from . import counters as C
from .health import Readiness, Route, health_routes, serve_http

if TYPE_CHECKING:
    from .rates import LoopLagMonitor
    from .service import MetricsService

log = logging.getLogger("mqtt_guard.metrics")

NS = "mqtt_guard"

# Counter name -> (metric name without _total, help). Each counter is exported once.
PLAIN_COUNTERS = {
    C.MSGS_IN: ("messages_received", "PUBLISH packets received from clients"),
    C.MSGS_OUT: ("messages_sent", "PUBLISH packets delivered to clients"),
    C.BYTES_IN: ("bytes_received", "payload bytes of PUBLISH packets received from clients"),
    C.BYTES_OUT: ("bytes_sent", "payload bytes of PUBLISH packets delivered to clients"),
    C.WITHHELD: ("deliveries_withheld", "deliveries not made because the receiver may not receive the topic"),
    C.DENIED_SUBSCRIBE: ("subscribe_denied", "SUBSCRIBE filters refused by the ACL"),
    C.PROTOCOL_ERRORS: ("protocol_errors", "connections closed for a protocol violation"),
    C.PLUGIN_ERRORS: ("plugin_errors", "exceptions raised by plugins"),
    C.CONNECTS: ("connects", "CONNECTs admitted"),
    C.REFUSED_FD_LIMIT: ("connections_refused_fd_limit", "connections refused at the open-files limit"),
    C.DURABLE_LOST: (
        "durable_writes_lost",
        "durable-state writes needing no acknowledgement (QoS 0 retained...) dropped while Redis was away",
    ),
}
DROP_REASONS = {C.DROPPED_QUEUE_FULL: "queue_full"}
# Per-client and per-user series (only for allow-listed and top-N clients, allow-listed users).
CLIENT_COUNTERS = (C.MSGS_IN, C.MSGS_OUT, C.BYTES_IN, C.BYTES_OUT, C.WITHHELD)
# Every reason a CONNECT can be refused for, so each series exists (at 0) before the first refusal.
AUTH_FAILURE_NAMES = tuple(
    [C.auth_failure_name(o) for o in Outcome if not AuthResult(o, None).ok]
    + [C.AUTH_FAILED_PREFIX + r for r in (C.REFUSED_BLOCKED, C.REFUSED_TOO_MANY_SESSIONS)]
    + [C.AUTH_FAILED_PREFIX + r for r in (C.REFUSED_CLIENT_ID_HELD, C.REFUSED_CLIENT_ID_PREFIX)]
)


def families_of_counts(
    counts: dict[str, int],
    prefix: str,
    label_names: list[str],
    label_values: list[str],
    fams: dict[str, CounterMetricFamily],
    names: Iterable[str] | None = None,
) -> None:
    """Add samples for `counts` to the counter families in `fams` (created on first use)."""

    def fam(metric: str, doc: str, extra: list[str]) -> CounterMetricFamily:
        f = fams.get(metric)
        if f is None:
            f = fams[metric] = CounterMetricFamily(metric, doc, labels=label_names + extra)
        return f

    wanted = set(names) if names is not None else None
    for name, value in sorted(counts.items()):
        if wanted is not None and name not in wanted:
            continue
        if name in PLAIN_COUNTERS:
            metric, doc = PLAIN_COUNTERS[name]
            fam(f"{NS}_{prefix}{metric}", doc, []).add_metric(label_values, value)
        elif name in C.PUBLISH_ERROR_REASONS:
            fam(f"{NS}_{prefix}publish_errors", "PUBLISH packets not routed, by reason", ["reason"]).add_metric(
                label_values + [C.PUBLISH_ERROR_REASONS[name]], value
            )
        elif name in DROP_REASONS:
            fam(f"{NS}_{prefix}messages_dropped", "deliveries dropped, by reason", ["reason"]).add_metric(
                label_values + [DROP_REASONS[name]], value
            )
        elif name.startswith(C.AUTH_FAILED_PREFIX):
            fam(f"{NS}_{prefix}auth_failures", "CONNECTs refused, by reason", ["reason"]).add_metric(
                label_values + [name[len(C.AUTH_FAILED_PREFIX) :]], value
            )
        elif name.startswith(C.KICKED_PREFIX):
            fam(f"{NS}_{prefix}kicks", "connections closed by the server, by reason", ["reason"]).add_metric(
                label_values + [name[len(C.KICKED_PREFIX) :]], value
            )
        else:  # a counter added later: still exported, under its own (code-defined, bounded) name
            fam(f"{NS}_{prefix}events", "other counted events, by name", ["name"]).add_metric(
                label_values + [name], value
            )


class GuardCollector:
    """prometheus_client collector over a MetricsService (called on the broker's event loop)."""

    def __init__(self, service: MetricsService) -> None:
        self.s = service

    def collect(self) -> Iterable[Metric]:
        s = self.s
        counters = s.counters
        now = time.time()
        yield from self._broker_counters(counters)
        yield _gauge("clients_connected", "clients connected to this broker", counters.connected_count())
        yield _gauge("clients_maximum", "most clients connected at once since start", counters.clients_maximum)
        sample = s.sample
        if s.probe is not None:
            yield _gauge(
                "clients_total",
                "sessions: connected plus persistent ones of disconnected clients",
                sample.sessions_total,
            )
            yield _gauge("subscriptions", "subscriptions held", sample.subscriptions)
            yield _gauge("retained_messages", "retained messages held", sample.retained)
            yield _gauge(
                "queued_messages",
                "messages waiting for delivery to connected clients",
                sum(sample.queue_depths.values()),
            )
        if s.cluster is not None:  # routing between brokers (docs/scaling.md): counts since start, and sizes
            for key, count in s.cluster().items():
                yield _gauge(key, "routing between brokers (docs/scaling.md)", count)
        load = GaugeMetricFamily(
            f"{NS}_load_per_minute",
            "mosquitto-style load: decaying average per minute over a window",
            labels=["counter", "window"],
        )
        for name, avg in s.load.items():
            for window, value in avg.as_dict().items():
                load.add_metric([name, window], value)
        yield load
        yield _gauge("uptime_seconds", "seconds since the broker started", now - s.started)
        yield _gauge("start_time_seconds", "unix time the broker started", s.started)
        info = GaugeMetricFamily(f"{NS}_build_info", "version of this broker", labels=["version", "broker"])
        info.add_metric([__version__, s.broker_id], 1)
        yield info
        yield from self._backend(now)
        yield from self._per_client()
        yield from self._per_user()

    def _broker_counters(self, counters: C.Counters) -> Iterable[Metric]:
        fams: dict[str, CounterMetricFamily] = {}
        # Every fixed-reason and plain series exists from the start, at 0, so rate() sees the first event.
        base: dict[str, int] = {name: 0 for name in (*PLAIN_COUNTERS, *C.PUBLISH_ERROR_REASONS, *DROP_REASONS)}
        base.update({C.KICKED_PREFIX + r: 0 for r in C.KICK_REASONS})
        base.update({name: 0 for name in AUTH_FAILURE_NAMES})
        base.update(counters.totals)
        families_of_counts(base, "", [], [], fams)
        yield from fams.values()

    def _backend(self, now: float) -> Iterable[Metric]:
        s = self.s
        yield _gauge("redis_up", "1 when the last stats flush reached Redis", 1 if s.redis_up else 0)
        if s.redis_latency is not None:
            yield _gauge("redis_latency_seconds", "round trip of the last PING to Redis", s.redis_latency)
        h = HistogramMetricFamily(
            f"{NS}_redis_command_duration_seconds", "Redis round trips of the stats flusher", labels=["op"]
        )
        for op, hist in s.latency.items():
            h.add_metric([op], hist.cumulative(), hist.sum)
        yield h
        yield CounterMetricFamily(f"{NS}_stats_flushes", "stats batches written to Redis", s.flushes)
        yield CounterMetricFamily(
            f"{NS}_stats_flush_failures", "stats flushes that failed (Redis unreachable)", s.flush_failures
        )
        yield CounterMetricFamily(
            f"{NS}_stats_dropped", "stats entries given up because the backlog was full", s.dropped
        )
        yield _gauge("stats_backlog", "stats entries waiting to be written to Redis", s.backlog.size())
        if s.last_flush is not None:
            yield _gauge(
                "stats_last_flush_timestamp_seconds", "unix time of the last complete stats flush", s.last_flush
            )
        yield _gauge(
            "event_loop_lag_seconds", "how late the broker's event loop woke a timer, last measurement", s.lag.lag
        )
        hb = GaugeMetricFamily(
            f"{NS}_broker_last_heartbeat_timestamp_seconds",
            "last stats heartbeat of each broker sharing this Redis",
            labels=["broker"],
        )
        age = GaugeMetricFamily(
            f"{NS}_broker_heartbeat_age_seconds", "seconds since each broker's last stats heartbeat", labels=["broker"]
        )
        for broker, t in sorted(s.fleet.items()):
            hb.add_metric([broker], t)
            age.add_metric([broker], max(0.0, now - t))
        yield hb
        yield age

    def _per_client(self) -> Iterable[Metric]:
        s = self.s
        ids = s.client_series()
        if not ids:
            return
        counters = s.counters
        fams: dict[str, CounterMetricFamily] = {}
        since = GaugeMetricFamily(
            f"{NS}_client_connected_since_seconds", "unix time the client connected", labels=["client_id", "username"]
        )
        depth = GaugeMetricFamily(
            f"{NS}_client_queue_depth", "messages waiting for the client", labels=["client_id", "username"]
        )
        rate = GaugeMetricFamily(
            f"{NS}_client_message_rate", "messages in+out per second, recent average", labels=["client_id", "username"]
        )
        for cid in ids:
            user = counters.usernames.get(cid) or ""
            counts = {n: 0 for n in CLIENT_COUNTERS}
            counts.update({n: 0 for n in C.PUBLISH_ERROR_REASONS})
            counts.update(counters.client(cid))
            families_of_counts(
                counts,
                "client_",
                ["client_id", "username"],
                [cid, user],
                fams,
                (*CLIENT_COUNTERS, *C.PUBLISH_ERROR_REASONS, *DROP_REASONS),
            )
            if cid in counters.connected_since:
                since.add_metric([cid, user], counters.connected_since[cid])
            g = counters.gauges.get(cid, {})
            if C.G_QUEUE_DEPTH in g:
                depth.add_metric([cid, user], float(g[C.G_QUEUE_DEPTH]))
            rate.add_metric([cid, user], s.recent.get(cid, 0.0))
        yield from fams.values()
        yield since
        yield depth
        yield rate

    def _per_user(self) -> Iterable[Metric]:
        s = self.s
        if not s.per_user:
            return
        fams: dict[str, CounterMetricFamily] = {}
        for user, counts in sorted(s.per_user.items()):
            base = {n: 0 for n in (*CLIENT_COUNTERS, *C.PUBLISH_ERROR_REASONS)}
            base.update(counts)
            families_of_counts(base, "user_", ["username"], [user], fams)
        yield from fams.values()


class LagCollector:
    """`<name>` gauge of a LoopLagMonitor, for processes other than the broker (e.g. the sidecar:
    `registry.register(LagCollector(monitor, "mqtt_guard_sidecar_loop_lag_seconds"))`)."""

    def __init__(self, monitor: LoopLagMonitor, name: str) -> None:
        self.monitor = monitor
        self.name = name

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.name, "how late the event loop woke a timer, last measurement", self.monitor.lag)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NS}_{name}", doc, value)


def broker_registry(service: MetricsService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GuardCollector(service))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry: Any, accept: str = "") -> tuple[bytes, str]:
    """The exposition body and its content type, negotiated like prometheus_client's own server."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def metrics_route(registry: Any) -> Route:
    def route(accept: str) -> tuple[int, bytes, str]:
        body, ctype = render(registry, accept)
        return 200, body, ctype

    return route


async def serve_metrics(bind: str, service: MetricsService, ready: Readiness) -> asyncio.AbstractServer:
    """/metrics and the health probes of a broker (metrics/health.py)."""
    registry = broker_registry(service)
    return await serve_http(bind, {"/metrics": metrics_route(registry), **health_routes(ready)})


async def start_endpoint(bind: str, service: MetricsService, ready: Readiness) -> asyncio.AbstractServer | None:
    """`serve_metrics`, logged; None when `bind` cannot be served (the broker runs on without it). The
    Guard starts it after the service and closes it first, so the service never imports this module
    (prometheus_client is only imported when an endpoint is configured)."""
    try:
        server = await serve_metrics(bind, service, ready)
    except OSError as exc:
        log.error("cannot serve /metrics on %s: %s (the broker runs on without it)", bind, exc.strerror or exc)
        return None
    log.info("serving Prometheus metrics on http://%s/metrics", bind)
    return server
