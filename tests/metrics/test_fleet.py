"""The fleet view a sidecar can serve: counters of all brokers added up in Redis, each broker's heartbeat,
and the caller's event-loop lag, scraped over HTTP."""

from __future__ import annotations

import asyncio
import threading

from mqtt_guard.metrics.fleet import serve_fleet_metrics
from mqtt_guard.metrics.rates import LoopLagMonitor
from mqtt_guard.store.connection import make_async_client
from mqtt_guard.store.keys import Keys
from tests.helpers.mqtt import connect
from tests.helpers.servers import free_port
from tests.helpers.wait import expect
from tests.metrics.conftest import metric, scrape


def test_fleet_metrics_add_up_two_brokers(metrics_broker, add_user, rds, prefix, redis_server):
    add_user("dev", "pw")
    rds.hset(f"{prefix}acl:user:dev", "a/#", "readwrite")
    brokers = [metrics_broker(), metrics_broker()]
    for i, b in enumerate(brokers):
        c = connect(b.port, "dev", "pw", client_id=f"dev-{i}")
        for _ in range(3 + i):
            c.publish("a/x", b"x", qos=1)
        c.close()
    expect(lambda: rds.hget(f"{prefix}stats:total", "messages_in") == "7")

    port = free_port()
    ready = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        redis = make_async_client(redis_server.url)
        lag = LoopLagMonitor(0.05)
        lag.start()
        endpoint = await serve_fleet_metrics(f"127.0.0.1:{port}", redis, Keys(prefix), loop_lag=lag, interval=0.2)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await endpoint.close()
        await lag.stop()
        await redis.aclose()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        m = scrape(port)
        assert metric(m, "mqtt_guard_fleet_messages_received_total") == 7
        assert metric(m, "mqtt_guard_fleet_redis_up") == 1
        ids = rds.zrange(f"{prefix}stats:brokers", 0, -1)
        assert len(ids) == 2
        assert all(metric(m, "mqtt_guard_fleet_broker_up", broker=b) == 1 for b in ids)
        assert metric(m, "mqtt_guard_sidecar_loop_lag_seconds") is not None
    finally:
        stop.set()
        thread.join(10)
