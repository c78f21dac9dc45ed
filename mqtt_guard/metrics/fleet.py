"""Fleet-wide metrics read from Redis, for a process that is not a broker (the sidecar).

The brokers export their own live state (mqtt_guard/metrics/prometheus.py). What only Redis knows is
the fleet: the counters of every broker added up (they survive restarts), each broker's last heartbeat,
whether Redis answers and how fast. `FleetMonitor` refreshes a snapshot every few seconds on the event
loop; `FleetCollector` exports the snapshot (collect() never does I/O).

Mounting it in the sidecar is one call:

    endpoint = await serve_fleet_metrics("0.0.0.0:9884", redis, keys, loop_lag=my_loop_lag_monitor)
    ...
    await endpoint.close()    # the HTTP server and the monitor
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..store.keys import Keys
from ..store.stats import StatsReader
from ..tasks import cancel_and_wait
from .health import health_routes, serve_http
from .prometheus import NS, LagCollector, families_of_counts, metrics_route
from .rates import LoopLagMonitor

log = logging.getLogger("mqtt_guard.metrics")

BROKER_DEAD_AFTER = 10.0  # seconds without a heartbeat after which a broker counts as down


class FleetMonitor:
    def __init__(self, redis: Any, keys: Keys, interval: float = 5.0) -> None:
        self.reader = StatsReader(redis, keys)
        self.redis = redis
        self.interval = interval
        self.totals: dict[str, int] = {}
        self.brokers: list[tuple[str, float, dict[str, str]]] = []
        self.redis_up = False
        self.latency: float | None = None
        self.refreshed: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        try:
            t0 = time.perf_counter()
            await self.redis.ping()
            self.latency = time.perf_counter() - t0
            raw = await self.reader.totals()
            self.brokers = await self.reader.brokers()
        except Exception as exc:  # noqa: BLE001 - any failure: Redis is reported down, retried next round
            if self.redis_up:
                log.warning("fleet metrics: Redis unreachable (%s)", exc)
            self.redis_up = False
            return False
        self.totals = {k: int(v) for k, v in raw.items() if v.lstrip("-").isdigit()}
        self.redis_up = True
        self.refreshed = time.time()
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-guard-fleet-metrics")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)


class FleetCollector:
    def __init__(self, monitor: FleetMonitor) -> None:
        self.m = monitor

    def collect(self) -> Iterable[Metric]:
        m = self.m
        now = time.time()
        fams: dict[str, CounterMetricFamily] = {}
        families_of_counts(m.totals, "fleet_", [], [], fams)
        yield from fams.values()
        yield GaugeMetricFamily(
            f"{NS}_fleet_redis_up", "1 when Redis answered the last refresh", 1 if m.redis_up else 0
        )
        if m.latency is not None:
            yield GaugeMetricFamily(f"{NS}_fleet_redis_latency_seconds", "round trip of the last PING", m.latency)
        hb = GaugeMetricFamily(
            f"{NS}_fleet_broker_last_heartbeat_timestamp_seconds",
            "last stats heartbeat of each broker",
            labels=["broker"],
        )
        up = GaugeMetricFamily(
            f"{NS}_fleet_broker_up",
            f"1 when the broker heartbeat is younger than {BROKER_DEAD_AFTER:.0f} s",
            labels=["broker"],
        )
        clients = GaugeMetricFamily(
            f"{NS}_fleet_broker_clients_connected",
            "clients connected to each broker at its last heartbeat",
            labels=["broker"],
        )
        for broker, t, h in m.brokers:
            hb.add_metric([broker], t)
            up.add_metric([broker], 1 if now - t < BROKER_DEAD_AFTER else 0)
            try:
                clients.add_metric([broker], float(h.get("clients_connected", 0) or 0))
            except ValueError:
                pass
        yield hb
        yield up
        yield clients
        if m.refreshed is not None:
            yield GaugeMetricFamily(
                f"{NS}_fleet_last_refresh_timestamp_seconds",
                "unix time of the last snapshot read from Redis",
                m.refreshed,
            )


@dataclass
class FleetEndpoint:
    """The fleet /metrics server and the monitor that feeds it, closed together."""

    server: asyncio.AbstractServer
    monitor: FleetMonitor

    async def close(self) -> None:
        self.server.close()
        await self.monitor.stop()


async def serve_fleet_metrics(
    bind: str,
    redis: Any,
    keys: Keys,
    *,
    loop_lag: LoopLagMonitor | None = None,
    lag_metric: str = f"{NS}_sidecar_loop_lag_seconds",
    interval: float = 5.0,
) -> FleetEndpoint:
    """Serve /metrics with the fleet view (and the caller's loop lag) on `bind`, and the health probes
    (ready while the monitor's last refresh reached Redis); starts the monitor."""
    monitor = FleetMonitor(redis, keys, interval)
    await monitor.refresh()
    monitor.start()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(monitor))
    if loop_lag is not None:
        registry.register(LagCollector(loop_lag, lag_metric))

    def ready() -> str | None:
        return None if monitor.redis_up else "redis unreachable\n"

    routes = {"/metrics": metrics_route(registry), **health_routes(ready)}
    server = await serve_http(bind, routes)
    return FleetEndpoint(server, monitor)
