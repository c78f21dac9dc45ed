"""The flusher against a real redis-server: exact counts in Redis, rate buckets with TTLs, several
brokers and restarts adding up, Redis outages (nothing lost, nothing doubled, memory bounded)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from mqtt_guard.config import GuardConfig, ListenerConfig, MetricsConfig, RedisConfig
from mqtt_guard.guard import Guard
from mqtt_guard.metrics import counters as C
from mqtt_guard.metrics.rates import RES_10S, bucket_start
from mqtt_guard.metrics.service import MetricsService, default_broker_id
from mqtt_guard.store.connection import make_async_client
from mqtt_guard.store.keys import Keys
from mqtt_guard.store.stats import KIND_CLIENT, KIND_USER, StatsReader
from tests.helpers.servers import RedisServer


def make_guard(url: str, prefix: str, broker_id: str, **metrics: object) -> Guard:
    config = GuardConfig(
        listeners=[ListenerConfig(bind="127.0.0.1:1")],
        redis=RedisConfig(url=url, prefix=prefix),
        metrics=MetricsConfig(broker_id=broker_id, **metrics),
    )  # type: ignore[arg-type]  # metrics settings of the test as loose keyword values
    return Guard(config)


async def close(guard: Guard) -> None:
    await guard.metrics.close(timeout=1)
    guard.authenticator.close()
    await guard.redis.aclose()


def ints(h: dict[str, str], *names: str) -> dict[str, int]:
    return {n: int(h.get(n, 0)) for n in names}


def test_two_brokers_and_a_restart_add_up_in_redis(redis_server, rds, prefix):
    async def main() -> None:
        a = make_guard(redis_server.url, prefix, "A")
        b = make_guard(redis_server.url, prefix, "B")
        a.counters.connected("dev-1", "alice")
        a.counters.incr("dev-1", C.MSGS_IN, 5)
        a.counters.incr("dev-1", C.BYTES_IN, 50)
        a.counters.incr("dev-1", C.DENIED_PUBLISH, 2)
        b.counters.connected("dev-2", "alice")
        b.counters.incr("dev-2", C.MSGS_IN, 3)
        b.counters.incr("dev-2", C.MSGS_OUT, 4)
        for g in (a, b):
            g.metrics.tick()
            assert await g.metrics.flush()
        # broker A restarts: a new process, new Counters, the same Redis
        await close(a)
        a2 = make_guard(redis_server.url, prefix, "A")
        a2.counters.connected("dev-1", "alice")
        a2.counters.incr("dev-1", C.MSGS_IN, 1)
        a2.metrics.tick()
        assert await a2.metrics.flush()
        await close(a2)
        await close(b)

    asyncio.run(main())
    k = Keys(prefix)
    names = (C.MSGS_IN, C.MSGS_OUT, C.BYTES_IN, C.DENIED_PUBLISH, C.CONNECTS)
    assert ints(rds.hgetall(k.stats_client("dev-1")), *names) == {
        C.MSGS_IN: 6,
        C.MSGS_OUT: 0,
        C.BYTES_IN: 50,
        C.DENIED_PUBLISH: 2,
        C.CONNECTS: 2,
    }
    assert ints(rds.hgetall(k.stats_user("alice")), *names) == {
        C.MSGS_IN: 9,
        C.MSGS_OUT: 4,
        C.BYTES_IN: 50,
        C.DENIED_PUBLISH: 2,
        C.CONNECTS: 3,
    }
    assert ints(rds.hgetall(k.stats_total()), *names) == {
        C.MSGS_IN: 9,
        C.MSGS_OUT: 4,
        C.BYTES_IN: 50,
        C.DENIED_PUBLISH: 2,
        C.CONNECTS: 3,
    }
    assert ints(rds.hgetall(k.stats_broker("A")), C.MSGS_IN)[C.MSGS_IN] == 6
    assert ints(rds.hgetall(k.stats_broker("B")), C.MSGS_IN)[C.MSGS_IN] == 3
    assert set(rds.zrange(k.stats_brokers(), 0, -1)) == {"A", "B"}
    assert rds.hget(k.stats_broker("A"), "heartbeat_at")
    client = rds.hgetall(k.stats_client("dev-1"))
    assert client[C.G_USERNAME] == "alice" and client[C.G_BROKER] == "A"
    assert 0 < rds.ttl(k.stats_client("dev-1")) <= 30 * 86400


def test_rate_history_lands_in_the_bucket_of_the_window_with_ttls(redis_server, rds, prefix):
    t0 = bucket_start(time.time(), 10) - 20 + 3.0  # inside a 10 s bucket that started 20 s ago

    async def main() -> tuple[list[int], list[int], list[int]]:
        g = make_guard(redis_server.url, prefix, "A")
        g.counters.connected("dev-1", "alice")
        g.counters.drain(now=t0)  # the next window starts at t0
        g.counters.incr("dev-1", C.MSGS_IN, 12)
        g.counters.incr("dev-1", C.MSGS_OUT, 5)
        g.metrics.tick(now=t0 + 2)
        g.counters.incr("dev-1", C.MSGS_IN, 1)
        g.metrics.tick(now=t0 + 12)  # the window [t0+2, t0+12) started in the same bucket
        assert await g.metrics.flush()
        history = await StatsReader(g.redis, g.keys).history(KIND_CLIENT, "dev-1", resolution=RES_10S)
        await close(g)
        return history

    starts, ins, outs = asyncio.run(main())
    k = Keys(prefix)
    bucket = bucket_start(t0, 10)
    assert rds.zscore(k.stats_rate("10s", "client", "in", bucket), "dev-1") == 13
    assert rds.zscore(k.stats_rate("10s", "client", "out", bucket), "dev-1") == 5
    assert rds.zscore(k.stats_rate("10s", "user", "in", bucket), "alice") == 13
    assert rds.zscore(k.stats_rate("1m", "client", "in", bucket_start(t0, 60)), "dev-1") == 13
    ttl10 = rds.ttl(k.stats_rate("10s", "client", "in", bucket))
    ttl1m = rds.ttl(k.stats_rate("1m", "client", "in", bucket_start(t0, 60)))
    assert 3500 < ttl10 <= 3610 and 86000 < ttl1m <= 86460
    i = starts.index(bucket)
    assert ins[i] == 13 and outs[i] == 5
    assert sum(ins) == 13 and sum(outs) == 5  # nothing in any other bucket


def test_disconnect_marks_the_client_and_drops_its_state_but_not_if_it_moved_to_another_broker(
    redis_server, rds, prefix
):
    async def main() -> tuple[Guard, Guard]:
        a = make_guard(redis_server.url, prefix, "A")
        b = make_guard(redis_server.url, prefix, "B")
        a.counters.connected("dev-1", "alice")
        a.counters.connected("dev-2", "alice")
        a.counters.incr("dev-1", C.MSGS_IN, 2)
        a.metrics.tick()
        assert await a.metrics.flush()
        b.counters.connected("dev-2", "alice")  # dev-2 moved to broker B before A noticed
        b.metrics.tick()
        assert await b.metrics.flush()
        a.counters.disconnected("dev-1")
        a.counters.disconnected("dev-2")
        a.metrics.tick()
        assert await a.metrics.flush()
        assert a.counters.client("dev-1") == {} and not a.counters.usernames
        await close(a)
        await close(b)
        return a, b

    asyncio.run(main())
    k = Keys(prefix)
    one = rds.hgetall(k.stats_client("dev-1"))
    assert one[C.G_CONNECTED] == "0" and float(one[C.G_DISCONNECTED_AT]) > 0
    two = rds.hgetall(k.stats_client("dev-2"))
    assert two[C.G_CONNECTED] == "1" and two[C.G_BROKER] == "B" and C.G_DISCONNECTED_AT not in two


def test_a_hand_edited_key_of_the_wrong_type_does_not_block_the_other_counts(redis_server, rds, prefix):
    k = Keys(prefix)
    rds.set(k.stats_user("alice"), "oops")

    async def main() -> bool:
        g = make_guard(redis_server.url, prefix, "A")
        g.counters.connected("dev-1", "alice")
        g.counters.incr("dev-1", C.MSGS_IN, 4)
        g.metrics.tick()
        ok = await g.metrics.flush()
        ok2 = await g.metrics.flush()  # nothing is retried twice
        await close(g)
        return ok and ok2

    assert asyncio.run(main())
    assert rds.hget(k.stats_client("dev-1"), C.MSGS_IN) == "4"
    assert rds.hget(k.stats_total(), C.MSGS_IN) == "4"


@pytest.fixture
def own_redis():
    server = RedisServer(persistent=True).start()  # survives its own restart, like production
    yield server
    server.cleanup()


def test_redis_outage_keeps_counts_and_writes_them_exactly_once_when_back(own_redis, prefix):
    async def main() -> None:
        g = make_guard(own_redis.url, prefix, "A")
        g.counters.connected("dev-1", "alice")
        g.counters.incr("dev-1", C.MSGS_IN, 3)
        g.metrics.tick()
        assert await g.metrics.flush()
        own_redis.stop()
        for _ in range(3):  # three flush periods while Redis is down
            g.counters.incr("dev-1", C.MSGS_IN, 10)
            g.counters.incr(None, C.PROTOCOL_ERRORS)
            g.metrics.tick()
            assert not await g.metrics.flush()
        assert g.metrics.redis_up is False and g.metrics.flush_failures >= 3
        assert g.metrics.backlog.size() > 0
        own_redis.start()  # the same port and data directory
        assert await g.metrics.flush()
        assert g.metrics.redis_up is True and g.metrics.backlog.empty()
        assert await g.metrics.flush()  # and nothing is written twice
        await close(g)

    asyncio.run(main())
    rds = own_redis.client()
    k = Keys(prefix)
    assert rds.hget(k.stats_client("dev-1"), C.MSGS_IN) == "33"  # 3 before the outage, 30 during it
    assert rds.hget(k.stats_total(), C.PROTOCOL_ERRORS) == "3"
    rds.close()


def test_backlog_is_bounded_while_redis_is_down_and_totals_stay_exact(own_redis, prefix):
    async def main() -> tuple[int, int]:
        g = make_guard(own_redis.url, prefix, "A", max_backlog=1000)
        own_redis.stop()
        for i in range(3000):
            g.counters.connected(f"dev-{i}", "fleet")
            g.counters.incr(f"dev-{i}", C.MSGS_IN)
        g.metrics.tick()
        assert not await g.metrics.flush()
        size, dropped = g.metrics.backlog.size(), g.metrics.dropped
        own_redis.start()
        assert await g.metrics.flush()
        await close(g)
        return size, dropped

    size, dropped = asyncio.run(main())
    assert size <= 1000 and dropped > 0
    rds = own_redis.client()
    k = Keys(prefix)
    assert rds.hget(k.stats_total(), C.MSGS_IN) == "3000"
    assert rds.hget(k.stats_user("fleet"), C.MSGS_IN) == "3000"
    rds.close()


def test_stats_reader_finds_clients_then_users(redis_server, rds, prefix):
    async def main() -> tuple[object, object, object]:
        g = make_guard(redis_server.url, prefix, "A")
        g.counters.connected("dev-1", "alice")
        g.counters.incr("dev-1", C.MSGS_IN, 2)
        g.metrics.tick()
        assert await g.metrics.flush()
        r = StatsReader(g.redis, g.keys)
        found = (await r.entity("dev-1"), await r.entity("alice"), await r.entity("nobody"))
        await close(g)
        return found

    client, user, nobody = asyncio.run(main())
    assert client.kind == KIND_CLIENT and user.kind == KIND_USER and nobody is None


class Depths:
    """The engine's queue-depth view, as the service sees it (ports.QueueDepths)."""

    def __init__(self, depths: dict[str, tuple[int, int]]) -> None:
        self.depths = depths

    def queue_depth(self, client_id: str) -> tuple[int, int]:
        return self.depths.get(client_id, (0, 0))

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        return dict(self.depths)


def test_the_service_runs_on_its_collaborators_alone(redis_server, rds, prefix):
    """No Guard: the metrics config, Redis, the key schema, the counters and a queue-depth view."""

    async def main() -> None:
        counters = C.Counters()
        redis = make_async_client(redis_server.url)
        service = MetricsService(
            MetricsConfig(), redis, Keys(prefix), counters, Depths({"dev-1": (3, 300)}), [ListenerConfig(bind=":1884")]
        )
        assert service.broker_id == default_broker_id([ListenerConfig(bind="0.0.0.0:1884")])
        counters.connected("dev-1", "alice")
        counters.incr("dev-1", C.MSGS_IN, 2)
        service.tick()
        assert counters.gauges["dev-1"][C.G_QUEUE_DEPTH] == 3
        assert await service.flush()
        await redis.aclose()

    asyncio.run(main())
    assert rds.hget(f"{prefix}stats:client:dev-1", C.MSGS_IN) == "2"
    assert rds.hget(f"{prefix}stats:client:dev-1", C.G_QUEUE_DEPTH) == "3"


def test_default_broker_id_is_the_host_and_the_first_listeners_port() -> None:
    host = socket.gethostname()
    assert (
        default_broker_id([ListenerConfig(bind="0.0.0.0:1884"), ListenerConfig(bind="0.0.0.0:8883")]) == f"{host}:1884"
    )
    assert default_broker_id([]) == host


def test_refused_connects_stay_bounded_in_the_backlog_and_in_redis(own_redis, prefix):
    from mqtt_guard.auth.authenticator import Outcome

    async def main() -> tuple[int, int]:
        g = make_guard(own_redis.url, prefix, "A", max_failed_addresses=3)
        own_redis.stop()
        for window in range(4):  # four flush windows while Redis is down, five addresses each
            for i in range(5):
                for _ in range(5 - i):
                    g.counters.auth_failed(None, Outcome.UNKNOWN_USER, known_user=False, address=f"10.0.{window}.{i}")
            g.metrics.tick()
            assert not await g.metrics.flush()
        kept = len(g.metrics.backlog.failed)
        own_redis.start()
        assert await g.metrics.flush()
        await close(g)
        return kept, g.metrics.dropped

    kept, dropped = asyncio.run(main())
    assert kept == 6 and dropped == 6  # 3 per window fit in memory; the backlog keeps the 6 largest
    rds = own_redis.client()
    k = Keys(prefix)
    ranking = dict(rds.zrange(k.stats_failed("addr", int(time.time() // 86400 * 86400)), 0, -1, withscores=True))
    # space-saving: a newcomer takes over the smallest count, so the ranking's sum is all that was written
    assert len(ranking) == 3 and sum(ranking.values()) == 4 * 5 + 2 * 4 and max(ranking.values()) >= 5
    assert rds.hget(k.stats_total(), C.FAILURES_UNTRACKED) == str(4 * 3)  # the 4th and 5th address of each window
    assert rds.hget(k.stats_total(), "auth_failed_unknown_user") == str(4 * 15)
    assert not list(rds.scan_iter(f"{prefix}stats:client:*")) and not list(rds.scan_iter(f"{prefix}stats:user:*"))
    rds.close()
